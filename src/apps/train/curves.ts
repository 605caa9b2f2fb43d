/**
 * The ablation's picture: batch accuracy, inconsistency rate and λ over RL steps for the main
 * rows, as a self-contained SVG (no dependency: a few polylines, axes and a legend).
 */
import type { AblationLevelReport } from './ablation.js'
import { ABLATION_ROWS } from './ablation.js'
import type { EvalRunResult } from './evalWorker.js'

const COLOURS = ['#444444', '#d62728', '#ff7f0e', '#1f77b4', '#2ca02c', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#bcbd22']
const PANEL = { width: 300, height: 190, left: 44, top: 34, right: 12, bottom: 34 }

export interface Curve {
  label: string
  colour: string
  dash?: string
  steps: number[]
  values: number[]
}

/** Mean over runs of one history series (runs of a row share their windows). */
function meanSeries(runs: EvalRunResult[], pick: (r: EvalRunResult) => number[] | undefined): { steps: number[]; values: number[] } | undefined {
  const series = runs.map(pick).filter((s): s is number[] => s !== undefined && s.length > 0)
  const steps = runs[0]?.history?.step
  if (series.length === 0 || steps === undefined) return undefined
  const n = Math.min(...series.map((s) => s.length))
  return { steps: steps.slice(0, n), values: Array.from({ length: n }, (_, i) => series.reduce((a, s) => a + s[i], 0) / series.length) }
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
const num = (x: number) => (Math.round(x * 10) / 10).toString()

/** One panel: axes from 0 to the last step and from 0 to `yMax`, ticks, title, curves. */
export function panelSvg(x0: number, title: string, curves: Curve[], yMax: number, yFormat: (v: number) => string): string {
  const { width, height, left, top, right, bottom } = PANEL
  const plotW = width - left - right
  const plotH = height - top - bottom
  const xMax = Math.max(1, ...curves.flatMap((c) => c.steps))
  const px = (s: number) => x0 + left + (s / xMax) * plotW
  const py = (v: number) => top + plotH - (Math.min(Math.max(v, 0), yMax) / yMax) * plotH
  const out: string[] = [`<text x="${num(x0 + left + plotW / 2)}" y="18" text-anchor="middle" font-weight="bold">${esc(title)}</text>`]
  for (let i = 0; i <= 4; i++) {
    const v = (yMax * i) / 4
    out.push(`<line x1="${num(px(0))}" y1="${num(py(v))}" x2="${num(px(xMax))}" y2="${num(py(v))}" stroke="#e5e5e5"/>`)
    out.push(`<text x="${num(px(0) - 4)}" y="${num(py(v) + 4)}" text-anchor="end">${esc(yFormat(v))}</text>`)
  }
  for (let i = 0; i <= 4; i++) {
    const s = (xMax * i) / 4
    out.push(`<text x="${num(px(s))}" y="${num(top + plotH + 14)}" text-anchor="middle">${Math.round(s)}</text>`)
  }
  out.push(`<text x="${num(x0 + left + plotW / 2)}" y="${num(height - 4)}" text-anchor="middle">RL step</text>`)
  out.push(`<rect x="${num(px(0))}" y="${top}" width="${num(plotW)}" height="${num(plotH)}" fill="none" stroke="#999"/>`)
  for (const c of curves) {
    const points = c.steps.map((s, i) => `${num(px(s))},${num(py(c.values[i]))}`).join(' ')
    out.push(`<polyline fill="none" stroke="${c.colour}" stroke-width="1.5"${c.dash === undefined ? '' : ` stroke-dasharray="${c.dash}"`} points="${points}"/>`)
  }
  return out.join('\n')
}

/**
 * The SVG of one level: three panels (accuracy, inconsistency rate, λ) over RL steps, one curve
 * per main row (mean over seeds of the batch means in each window); λ of consistency solid,
 * of grounding dashed.
 */
export function ablationSvg(report: AblationLevelReport, rows = ABLATION_ROWS.filter((r) => r.main)): string {
  const accuracy: Curve[] = []
  const inconsistency: Curve[] = []
  const lambda: Curve[] = []
  const legend: { label: string; colour: string }[] = []
  rows.forEach((row, i) => {
    const runs = report.runs.filter((r) => r.method === row.id)
    const colour = COLOURS[i % COLOURS.length]
    const acc = meanSeries(runs, (r) => r.history?.accuracy)
    if (acc === undefined) return
    legend.push({ label: row.label, colour })
    accuracy.push({ label: row.label, colour, ...acc })
    inconsistency.push({ label: row.label, colour, ...meanSeries(runs, (r) => r.history?.inconsistencyRate)! })
    // a curve exists, so the runs have their history
    const channels = Object.keys(runs[0].history!.lambda)
    channels.forEach((channel, k) => {
      const series = meanSeries(runs, (r) => r.history?.lambda[channel])!
      lambda.push({ label: `${row.label} λ ${channel}`, colour, ...(k === 0 ? {} : { dash: '4 3' }), ...series })
    })
    if (row.fixedLambda !== undefined && channels.length === 0)
      lambda.push({ label: `${row.label} (fixed)`, colour, dash: '1 3', steps: acc.steps, values: acc.steps.map(() => row.fixedLambda!) })
  })
  const lambdaMax = Math.max(1, ...lambda.flatMap((c) => c.values))
  const width = 3 * PANEL.width
  const legendTop = PANEL.height + 8
  const height = legendTop + 16 * legend.length + 26
  const pct = (v: number) => `${Math.round(100 * v)}%`
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    panelSvg(0, `accuracy (batch), level ${report.level}`, accuracy, 1, pct),
    panelSvg(PANEL.width, 'inconsistency rate (batch)', inconsistency, 1, pct),
    panelSvg(2 * PANEL.width, 'λ (consistency solid, grounding dashed)', lambda, lambdaMax, (v) => v.toFixed(2)),
    ...legend.map(
      (l, i) =>
        `<line x1="${PANEL.left}" y1="${legendTop + 16 * i + 8}" x2="${PANEL.left + 24}" y2="${legendTop + 16 * i + 8}" stroke="${l.colour}" stroke-width="2"/>` +
        `<text x="${PANEL.left + 30}" y="${legendTop + 16 * i + 12}">${esc(l.label)}</text>`,
    ),
    `<text x="${PANEL.left}" y="${height - 8}" fill="#666">${report.steps} RL steps, means over seeds of windows of ${report.runs[0]?.historyEvery ?? '?'} steps</text>`,
    '</svg>',
    '',
  ].join('\n')
}
