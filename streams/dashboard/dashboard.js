// The live dashboard: connects to /telemetry (JSON frames), keeps the series, and draws them
// with uPlot at most ten times a second. No build step: the engine serves this file as is.
// Frame format: README "Live telemetry" and streams/telemetry/frames.ts. The hello's `overview`
// (the whole run, downsampled by min/max) seeds every chart, so a page opened late, or after a
// restart, draws the run from its first step; the run chart on top zooms the others.
import uPlot from '/assets/uPlot.esm.js'
import { renderRollout } from '/rollout.js'

const PALETTE = ['#6ea8fe', '#f5b942', '#3ecf8e', '#ff6b6b', '#b58cff', '#3fd5e0', '#ff9f43', '#ff5fd2']
const MUTED = '#8a97b0'
const GRID = '#222c42'
/** Points kept per chart: beyond it the older half is thinned (every other point), so the whole run stays in view. */
const MAX_POINTS = 4000
const DRAW_EVERY_MS = 100
const TOKEN_KEY = 'dualstream.viewerToken'

const $ = (selector) => document.querySelector(selector)

// ---------------------------------------------------------------------------------------
// numbers

function fmt(v, digits = 3) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–'
  const a = Math.abs(v)
  if (a < 1e-12) return (0).toFixed(digits)
  if (a < 1e-3) return v.toExponential(2)
  if (a >= 1e6) return `${(v / 1e6).toFixed(2)} M`
  if (a >= 1e4) return Math.round(v).toLocaleString('en-US')
  if (a >= 100) return v.toFixed(0)
  if (a >= 10) return v.toFixed(1)
  return v.toFixed(digits)
}
const pct = (v) => (v === null || v === undefined ? '–' : `${(100 * v).toFixed(1)}%`)
const count = (v) => (v === null || v === undefined ? '–' : v.toLocaleString('en-US'))
const signed = (v) => (v === null || v === undefined ? '–' : `${v > 0 ? '+' : ''}${fmt(v)}`)

// ---------------------------------------------------------------------------------------
// series storage: columns [steps, ...values] and each step's wall time, bounded by thinning

class Columns {
  constructor(width) {
    this.cols = Array.from({ length: width }, () => [])
    /** Each point's wall time (ms since the epoch; null when unknown). */
    this.ts = []
    // the leading points seeded from the overview: already thinned by min/max (spikes kept), so never thinned again
    this.fixed = 0
    this.received = 0
    this.stride = 1
    // the newest point is kept even when off the stride, and replaced by the next one
    this.provisional = false
  }

  get length() {
    return this.cols[0].length
  }

  get lastStep() {
    const steps = this.cols[0]
    return steps.length === 0 ? null : steps[steps.length - 1]
  }

  /** The points before any live one (`rows` from overviewRows). */
  seed(rows) {
    if (this.length > 0) throw new Error(`Columns.seed: ${this.length} points are held already; seed an empty chart`)
    rows.cols.forEach((col, i) => this.cols[i].push(...col))
    this.ts.push(...rows.ts)
    this.fixed = this.length
  }

  push(row, ts = null) {
    if (this.provisional) for (const col of this.all()) col.pop()
    row.forEach((v, i) => this.cols[i].push(v))
    this.ts.push(ts)
    this.provisional = this.received % this.stride !== 0
    this.received++
    if (this.length - this.fixed > MAX_POINTS) this.thin()
  }

  all() {
    return [...this.cols, this.ts]
  }

  thin() {
    const tail = this.provisional ? this.all().map((col) => col.pop()) : undefined
    for (const col of this.all()) {
      let w = this.fixed
      for (let r = this.fixed; r < col.length; r += 2) col[w++] = col[r]
      col.length = w
    }
    this.stride *= 2
    if (tail !== undefined) this.all().forEach((col, i) => col.push(tail[i]))
  }
}

/**
 * A chart's points from the overview: every step at which one of `keys` has a point, before
 * step `before`, joined by step (null where a series has no point: the lines span the gaps).
 * A key is a series name, or `{ constant }` for a line drawn from the config (τ).
 */
function overviewRows(overview, keys, before) {
  const series = keys.map((key) => (typeof key === 'string' ? overview?.series?.[key] : undefined))
  const steps = new Set()
  for (const s of series) if (s !== undefined) for (const step of s.steps) if (step < before) steps.add(step)
  const x = [...steps].sort((a, b) => a - b)
  const row = new Map(x.map((step, i) => [step, i]))
  const cols = [x, ...keys.map((key) => new Array(x.length).fill(typeof key === 'string' ? null : key.constant))]
  const ts = new Array(x.length).fill(null)
  series.forEach((s, i) => {
    if (s === undefined) return
    for (let j = 0; j < s.steps.length; j++) {
      const r = row.get(s.steps[j])
      if (r === undefined) continue
      cols[i + 1][r] = s.values[j]
      ts[r] ??= s.ts[j]
    }
  })
  return { cols, ts }
}

// ---------------------------------------------------------------------------------------
// charts

/**
 * The panels for a config: each with its series, how to read a frame into a row (`row`) and
 * which overview series feed its columns (`keys`, in the same order).
 */
function panelsFor(hello) {
  const constraints = hello.config.constraints.map((c) => c.channel)
  const thresholds = hello.config.constraints.map((c) => c.threshold)
  const objectives = hello.config.objectives.map((o) => o.channel)
  const colour = (i) => PALETTE[i % PALETTE.length]
  const panels = []
  if (constraints.length > 0) {
    panels.push({
      id: 'lambda',
      title: 'λ per constraint',
      series: constraints.map((c, i) => ({ label: `λ ${c}`, stroke: colour(i) })),
      row: (f) => constraints.map((c) => f.constraints[c]?.lambda ?? null),
      keys: constraints.map((c) => `lambda.${c}`),
      floor: 0,
    })
    panels.push({
      id: 'constraints',
      title: 'constraint mean J vs threshold τ',
      series: constraints.flatMap((c, i) => [
        { label: `J ${c}`, stroke: colour(i) },
        { label: `τ ${c}`, stroke: colour(i), dash: [6, 5], width: 1.5 },
      ]),
      row: (f) => constraints.flatMap((c) => [f.constraints[c]?.mean ?? null, f.constraints[c]?.threshold ?? null]),
      keys: constraints.flatMap((c, i) => [`mean.${c}`, { constant: thresholds[i] }]),
    })
    panels.push({
      id: 'violation',
      title: 'per-sample violation rate',
      series: constraints.map((c, i) => ({ label: c, stroke: colour(i), value: (u, v) => pct(v) })),
      row: (f) => constraints.map((c) => f.constraints[c]?.sampleViolationRate ?? null),
      keys: constraints.map((c) => `sampleViolationRate.${c}`),
      floor: 0,
    })
  }
  panels.push({
    id: 'objectives',
    title: 'objective mean',
    series: objectives.map((o, i) => ({ label: o, stroke: colour(i + 2) })),
    row: (f) => objectives.map((o) => f.objectives[o] ?? null),
    keys: objectives.map((o) => `objective.${o}`),
  })
  panels.push({
    id: 'throughput',
    title: 'throughput and latency',
    series: [
      { label: 'rollouts/s', stroke: '#3fd5e0', value: (u, v) => fmt(v) },
      { label: hello.source === 'train' ? 'step ms' : 'batch latency ms', stroke: '#ff9f43', scale: 'ms', value: (u, v) => fmt(v) },
    ],
    row: (f) => [f.throughput.rolloutsPerSec, f.latencyMs],
    keys: ['rolloutsPerSec', 'latencyMs'],
    floor: 0,
    right: 'ms',
  })
  if (hello.source === 'train') {
    panels.push({
      id: 'learner',
      title: 'learner: gradient norm and clip fraction',
      series: [
        { label: 'grad norm', stroke: '#6ea8fe' },
        { label: 'clip fraction', stroke: '#f5b942', scale: 'frac', value: (u, v) => pct(v) },
      ],
      row: (f) => [f.learner?.gradNorm ?? null, f.learner?.clipFraction ?? null],
      keys: ['gradNorm', 'clipFraction'],
      floor: 0,
      right: 'frac',
    })
  }
  return panels
}

/** The whole-run chart: λ (left axis) and J (right axis) per constraint, and a training run's accuracy. */
function runChartFor(hello) {
  const constraints = hello.config.constraints.map((c) => c.channel)
  const colour = (i) => PALETTE[i % PALETTE.length]
  const accuracy = hello.source === 'train' || hello.overview?.series?.accuracy !== undefined
  const series = [
    ...constraints.map((c, i) => ({ label: `λ ${c}`, stroke: colour(i) })),
    // J is noisy batch to batch: thin and translucent, under the λ it drives
    ...constraints.map((c, i) => ({ label: `J ${c}`, stroke: `${colour(i)}8c`, width: 1, scale: 'J' })),
  ]
  const keys = [...constraints.map((c) => `lambda.${c}`), ...constraints.map((c) => `mean.${c}`)]
  if (accuracy) {
    series.push({ label: 'accuracy', stroke: '#3ecf8e', scale: 'J', value: (u, v) => pct(v) })
    keys.push('accuracy')
  }
  return {
    id: 'overview',
    title: 'whole run',
    hint: `${constraints.length > 0 ? `λ left axis, J${accuracy ? ' and accuracy' : ''} right · ` : ''}drag to zoom the charts below, double-click to reset`,
    series,
    row: (f) => [
      ...constraints.map((c) => f.constraints[c]?.lambda ?? null),
      ...constraints.map((c) => f.constraints[c]?.mean ?? null),
      ...(accuracy ? [f.metrics?.accuracy ?? null] : []),
    ],
    keys,
    floor: 0,
    right: 'J',
    whole: true,
  }
}

function range(floor) {
  return (u, min, max) => {
    if (min === null || max === null) return [floor ?? 0, 1]
    let lo = floor !== undefined ? Math.min(floor, min) : min
    let hi = max
    if (hi - lo < 1e-9) {
      const pad = Math.abs(hi) > 0 ? Math.abs(hi) * 0.1 : 1
      hi += pad
      if (floor === undefined) lo -= pad
    }
    const pad = (hi - lo) * 0.06
    return [floor !== undefined && lo >= floor ? lo : lo - pad, hi + pad]
  }
}

/** Tick labels with as many decimals as the spacing of the ticks needs (tiny losses included). */
function ticks(u, splits, axisIdx, space, incr) {
  const step = incr > 0 ? incr : splits.length > 1 ? Math.abs(splits[1] - splits[0]) : 1
  let digits = 0
  while (digits < 8 && Math.abs(step * 10 ** digits - Math.round(step * 10 ** digits)) > 1e-6 * step * 10 ** digits) digits++
  return splits.map((v) => (Math.abs(v) >= 1e4 ? Math.round(v).toLocaleString('en-US') : (v === 0 ? 0 : v).toFixed(digits)))
}

function axis(extra = {}) {
  return { stroke: MUTED, grid: { stroke: GRID, width: 1 }, ticks: { stroke: GRID, width: 1 }, font: '11px system-ui, sans-serif', values: ticks, ...extra }
}

/** A wall time (ms since the epoch) as local `HH:MM:SS`, with the date when it is not today. */
function wallTime(ts) {
  if (ts === null || ts === undefined || !Number.isFinite(ts)) return ''
  const d = new Date(ts)
  const two = (n) => String(n).padStart(2, '0')
  const time = `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`
  const today = new Date()
  const sameDay = d.getFullYear() === today.getFullYear() && d.getMonth() === today.getMonth() && d.getDate() === today.getDate()
  return sameDay ? time : `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${time}`
}

/**
 * The x range (steps): the selected range when zoomed, else the whole run, from its first step
 * (a chart whose own series start later, or are live-only, still lines up with the others).
 */
function xRange(zoomable) {
  return (u, min, max) => {
    if (zoomable && state.zoom !== null) return [state.zoom.min, state.zoom.max]
    const lo = state.first ?? min
    const hi = Math.max(state.last ?? max ?? -Infinity, max ?? -Infinity)
    if (lo === null || lo === undefined || !Number.isFinite(hi)) return [0, 1]
    return hi > lo ? [lo, hi] : [lo, lo + 1]
  }
}

class Panel {
  /** `spec.whole`: the whole-run chart (drag selects the range the other charts show); else a live chart. */
  constructor(spec, place) {
    this.spec = spec
    this.columns = new Columns(spec.series.length + 1)
    this.el = document.createElement('div')
    this.el.className = spec.whole ? 'card run-chart' : 'card panel'
    this.el.dataset.chart = spec.id
    this.el.dataset.points = '0'
    const h = document.createElement('h2')
    h.textContent = spec.title
    if (spec.hint !== undefined) {
      const hint = document.createElement('span')
      hint.className = 'sub'
      hint.textContent = spec.hint
      h.append(hint)
    }
    this.el.append(h)
    const plot = document.createElement('div')
    plot.className = 'plot'
    this.el.append(plot)
    place(this.el)
    const height = spec.whole ? 220 : 200
    const scales = { x: { time: false, range: xRange(!spec.whole) }, y: { range: range(spec.floor) } }
    const axes = [axis({ label: 'step', labelSize: 16, labelFont: '11px system-ui, sans-serif' }), axis({ size: 56, space: 22 })]
    if (spec.right !== undefined) {
      scales[spec.right] = { range: range(spec.whole ? undefined : 0) }
      axes.push(axis({ scale: spec.right, side: 1, grid: { show: false }, size: 56, space: 22 }))
    }
    const width = Math.max(280, plot.clientWidth || 440)
    this.plot = new uPlot(
      {
        width,
        height,
        scales,
        axes,
        legend: { show: true, live: true },
        // the run chart selects a range (kept drawn, its own scale unchanged); the live charts share the pointer's step
        cursor: spec.whole ? { drag: { x: true, y: false, setScale: false } } : { drag: { x: false, y: false }, sync: { key: 'dualstream-steps' } },
        hooks: {
          setSelect: spec.whole ? [(u) => this.selected(u)] : [],
          // the pointer left: the legend shows the latest values again
          setCursor: [() => this.showLatest()],
          setScale: [
            (u, key) => {
              if (key !== 'x') return
              this.el.dataset.xMin = String(u.scales.x.min)
              this.el.dataset.xMax = String(u.scales.x.max)
            },
          ],
        },
        series: [
          {
            label: 'step',
            // the step, and when it was (the wall time of the legend's point)
            value: (u, v, si, idx) => {
              if (v === null || v === undefined) return '–'
              const when = idx === null || idx === undefined ? '' : wallTime(this.columns.ts[idx])
              return when === '' ? count(v) : `${count(v)} · ${when}`
            },
          },
          ...spec.series.map((s) => ({
            label: s.label,
            stroke: s.stroke,
            width: s.width ?? 2,
            dash: s.dash,
            scale: s.scale ?? 'y',
            spanGaps: true,
            points: { show: false },
            value: s.value ?? ((u, v) => fmt(v)),
          })),
        ],
      },
      this.columns.cols,
      plot,
    )
    // a double-click on any chart shows the whole run again
    this.plot.over.addEventListener('dblclick', () => zoomTo(null))
    this.resizer = new ResizeObserver(() => {
      const w = plot.clientWidth
      if (w > 0 && w !== this.plot.width) this.plot.setSize({ width: w, height })
    })
    this.resizer.observe(plot)
  }

  /** The overview's points before step `before` (the first step the frames will bring). */
  seed(overview, before) {
    if (overview === undefined || overview === null) return
    this.columns.seed(overviewRows(overview, this.spec.keys, before))
  }

  add(frame) {
    // a frame at or before the newest point is drawn already (from the overview)
    const last = this.columns.lastStep
    if (last !== null && frame.step <= last) return
    this.columns.push([frame.step, ...this.spec.row(frame)], frame.ts ?? null)
  }

  /** The run chart's selection (pixels) becomes the live charts' range (steps). */
  selected(u) {
    if (u.select.width < 2) return
    const min = u.posToVal(u.select.left, 'x')
    const max = u.posToVal(u.select.left + u.select.width, 'x')
    zoomTo({ min, max })
  }

  draw() {
    this.plot.setData(this.columns.cols)
    this.showLatest()
    if (this.spec.whole) this.showSelection()
    this.el.dataset.points = String(this.columns.length)
    const steps = this.columns.cols[0]
    this.el.dataset.firstStep = steps.length === 0 ? '' : String(steps[0])
    this.el.dataset.lastStep = steps.length === 0 ? '' : String(steps[steps.length - 1])
  }

  /** The legend shows the latest values unless the pointer is on the chart (or on one in step with it). */
  showLatest() {
    // (uPlot moves its cursor while it is being built, before this.plot is set)
    if (this.plot !== undefined && this.columns.length > 0 && !(this.plot.cursor.left >= 0)) this.plot.setLegend({ idx: this.columns.length - 1 })
  }

  /** Keeps the zoomed range marked on the run chart (it moves as the run grows and on resizes). */
  showSelection() {
    const u = this.plot
    if (state.zoom === null) {
      if (u.select.width > 0) u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false)
      return
    }
    const left = u.valToPos(state.zoom.min, 'x')
    const right = u.valToPos(state.zoom.max, 'x')
    u.setSelect({ left, top: 0, width: Math.max(1, right - left), height: u.over.clientHeight }, false)
  }

  destroy() {
    this.resizer.disconnect()
    this.plot.destroy()
    this.el.remove()
  }
}

/** Shows the steps `range` ({min, max}) on the live charts, or the whole run (null). */
function zoomTo(range) {
  state.zoom = range === null || !(range.max > range.min) ? null : { min: range.min, max: range.max }
  for (const p of state.panels) {
    const [min, max] = state.zoom === null ? p.plot.scales.x.range(p.plot, null, null, 'x') : [state.zoom.min, state.zoom.max]
    p.plot.setScale('x', { min, max })
  }
  if (state.runChart !== null) state.runChart.showSelection()
  document.body.dataset.zoom = state.zoom === null ? '' : `${Math.round(state.zoom.min)}-${Math.round(state.zoom.max)}`
}

// ---------------------------------------------------------------------------------------
// the state of the page

const state = {
  hello: null,
  latest: null,
  panels: [],
  /** The whole-run chart. */
  runChart: null,
  /** The run's first and latest step (the charts' x range), and the steps selected on the run chart (null: the whole run). */
  first: null,
  last: null,
  zoom: null,
  sample: null,
  sampleStep: null,
  sampleDrawn: null,
  lost: 0,
  phase: '',
  dirty: false,
  lastDraw: 0,
}
// for debugging from the console (and the browser test): the page's state, series included
window.dualstream = state

function onHello(hello) {
  for (const p of state.panels) p.destroy()
  state.runChart?.destroy()
  state.hello = hello
  const overview = hello.overview ?? null
  state.first = overview?.first ?? hello.history[0]?.step ?? null
  state.last = Math.max(hello.step, hello.history.at(-1)?.step ?? 0, overview?.last ?? 0)
  state.zoom = null
  document.body.dataset.zoom = ''
  // the panels go before the sample and batch cards, which end the grid
  state.panels = panelsFor(hello).map((spec) => new Panel(spec, (el) => $('#charts').insertBefore(el, $('#sample-card'))))
  state.runChart = new Panel(runChartFor(hello), (el) => $('#run').replaceChildren(el))
  // the overview draws the steps before the history's, the history those before the live frames'
  const firstFrame = hello.history[0]?.step ?? Infinity
  for (const p of state.panels) p.seed(overview, firstFrame)
  state.runChart.seed(overview, Infinity)
  state.latest = null
  state.lost = 0
  state.sample = hello.sample
  state.sampleStep = hello.sample === null ? null : hello.step
  state.phase = hello.phase ?? ''
  $('#source').textContent = hello.source === 'train' ? 'built-in training' : 'serve'
  document.body.dataset.source = hello.source
  if (hello.cluster !== undefined) showCluster(hello.cluster)
  const c = hello.config
  $('#config-line').textContent =
    `${c.batchGroups} groups × ${c.groupSize} per batch · ${c.aggregation}${c.maxStaleness === null ? '' : ` · max staleness ${c.maxStaleness}`}`
  buildConstraintRows(hello)
  for (const frame of hello.history) addFrame(frame)
  schedule()
}

function addFrame(frame) {
  for (const p of state.panels) p.add(frame)
  state.runChart.add(frame)
  state.first ??= frame.step
  state.last = Math.max(state.last ?? frame.step, frame.step)
  state.latest = frame
  if (frame.sample !== undefined) {
    state.sample = frame.sample
    state.sampleStep = frame.step
  }
}

function onFrame(frame) {
  switch (frame.type) {
    case 'hello':
      onHello(frame)
      break
    case 'batch':
      if (state.hello === null) return
      addFrame(frame)
      if (state.hello.source === 'train') state.phase = 'RL'
      break
    case 'status':
      state.phase = frame.total === undefined ? frame.phase : `${frame.phase} ${frame.done}/${frame.total}`
      break
    case 'dropped':
      state.lost = frame.frames
      break
    case 'cluster':
      showCluster(frame)
      break
  }
  schedule()
}

/** A cluster node (serve --nats): the run and this node in the badge, the sequencer and this node's roles beside it. */
function showCluster(cluster) {
  $('#source').textContent = `cluster ${cluster.run} · node ${cluster.node}`
  const mine = cluster.roles.partitions.length === 0 ? 'no partitions' : `partitions ${cluster.roles.partitions.join(', ')} of ${cluster.partitions}`
  const sequencer = cluster.sequencer === null ? 'no sequencer right now' : `sequencer ${cluster.sequencer}${cluster.roles.sequencer ? ' (this node)' : ''}`
  state.cluster = `${sequencer} · ${mine} here · ${cluster.nodes} node${cluster.nodes === 1 ? '' : 's'} up`
  document.body.dataset.cluster = cluster.node
}

// ---------------------------------------------------------------------------------------
// drawing, at most every DRAW_EVERY_MS

function schedule() {
  if (state.dirty) return
  state.dirty = true
  requestAnimationFrame(tick)
}

function tick(t) {
  if (t - state.lastDraw < DRAW_EVERY_MS) {
    requestAnimationFrame(tick)
    return
  }
  state.lastDraw = t
  state.dirty = false
  draw()
}

function buildConstraintRows(hello) {
  const body = $('#constraints tbody')
  body.replaceChildren()
  hello.config.constraints.forEach((c, i) => {
    const tr = document.createElement('tr')
    tr.dataset.constraint = c.channel
    tr.dataset.lambda = String(hello.lambda[c.channel] ?? 0)
    tr.innerHTML =
      '<td class="name"><span class="swatch"></span><span></span></td><td class="target"></td><td class="num mean"></td><td class="num violation"></td><td class="num rate"></td><td class="num lambda"></td><td class="status"></td>'
    tr.querySelector('.swatch').style.background = PALETTE[i % PALETTE.length]
    tr.querySelector('.name span:last-child').textContent = c.channel
    tr.querySelector('.target').textContent = `${c.sense === '>=' ? '≥' : '≤'} ${c.threshold}`
    tr.querySelector('.lambda').textContent = fmt(hello.lambda[c.channel] ?? 0, 4)
    body.append(tr)
  })
  $('#constraints').hidden = hello.config.constraints.length === 0
  $('#no-constraints').hidden = hello.config.constraints.length > 0
}

function tiles(f, hello) {
  const c = f?.counts ?? hello.counts
  const t = f?.throughput
  const train = hello.source === 'train'
  const list = [
    ['rollouts/s', fmt(t?.rolloutsPerSec ?? null, 0)],
    [train ? 'steps/s' : 'batches/s', fmt(t?.batchesPerSec ?? null, 1)],
    [train ? 'step time' : 'batch latency', f?.latencyMs == null ? '–' : `${fmt(f.latencyMs, 1)} ms`],
    [train ? 'rollouts' : 'ingested', count(c?.ingested)],
  ]
  if (!train) {
    list.push(
      ['rejected', count(c?.rejected), c?.rejected > 0],
      ['duplicate', count(c?.duplicate)],
      ['stale', count(c?.stale)],
      ['groups dropped', count(c?.droppedGroups), c?.droppedGroups > 0],
      ['pending', count(c?.pending)],
      ['outbox', count(c?.outbox)],
    )
  } else {
    list.push(
      ['policy version', f?.policyVersion ?? '–'],
      ['accuracy', pct(f?.metrics?.accuracy)],
      ['inconsistency', pct(f?.metrics?.inconsistencyRate)],
      ['grounding', pct(f?.metrics?.grounding)],
    )
  }
  list.push(['frames lost', count(state.lost), state.lost > 0])
  const root = $('#tiles')
  if (root.children.length !== list.length) {
    root.replaceChildren(
      ...list.map(() => {
        const d = document.createElement('div')
        d.className = 'tile'
        d.innerHTML = '<div class="k"></div><div class="v"></div>'
        return d
      }),
    )
  }
  list.forEach(([k, v, bad], i) => {
    const tile = root.children[i]
    tile.dataset.tile = k
    tile.classList.toggle('bad', bad === true)
    tile.querySelector('.k').textContent = k
    tile.querySelector('.v').textContent = String(v)
  })
}

function batchTable(f, hello) {
  const rows = []
  if (f !== null) {
    rows.push(['rollouts / groups', `${f.rollouts} / ${f.groups}${f.partialGroups > 0 ? ` (${f.partialGroups} partial)` : ''}`])
    rows.push(['advantage mean ± std', `${fmt(f.advantage.mean)} ± ${fmt(f.advantage.std)}`])
    for (const [channel, v] of Object.entries(f.fracZeroStd)) rows.push([`no-signal groups · ${channel}`, pct(v)])
    if (f.learner !== undefined) {
      rows.push(
        ['loss', fmt(f.learner.loss, 4)],
        ['clip fraction', pct(f.learner.clipFraction)],
        ['mean ratio', fmt(f.learner.meanRatio, 4)],
        ['grad norm', fmt(f.learner.gradNorm, 4)],
      )
    }
  } else {
    rows.push(['', hello.source === 'train' ? 'waiting for the first RL step…' : 'waiting for the first batch…'])
  }
  const body = $('#batch tbody')
  body.replaceChildren(
    ...rows.map(([k, v]) => {
      const tr = document.createElement('tr')
      const a = document.createElement('td')
      const b = document.createElement('td')
      a.textContent = k
      b.textContent = v
      b.className = 'num'
      tr.append(a, b)
      return tr
    }),
  )
}

function draw() {
  const hello = state.hello
  if (hello === null) return
  const f = state.latest
  for (const p of state.panels) p.draw()
  state.runChart.draw()
  const step = f?.step ?? hello.step
  $('#step').textContent = count(step)
  $('#step').dataset.step = String(step)
  $('#rate').textContent = fmt(f?.throughput.rolloutsPerSec ?? null, 0)
  $('#phase').textContent = state.cluster ?? state.phase
  for (const tr of document.querySelectorAll('#constraints tbody tr')) {
    const name = tr.dataset.constraint
    const c = f?.constraints[name]
    const lambda = c?.lambda ?? hello.lambda[name] ?? 0
    tr.dataset.lambda = String(lambda)
    tr.querySelector('.lambda').textContent = fmt(lambda, 4)
    if (c === undefined) continue
    tr.dataset.mean = String(c.mean)
    tr.querySelector('.mean').textContent = fmt(c.mean)
    const v = tr.querySelector('.violation')
    v.textContent = signed(c.violation)
    v.style.color = c.violation === null ? '' : c.violation > 0 ? 'var(--bad)' : 'var(--good)'
    tr.querySelector('.rate').textContent = pct(c.sampleViolationRate)
    const chip = c.violation === null ? ['none', 'no data'] : c.violation > 0 ? ['violated', 'violated'] : ['met', 'met']
    tr.querySelector('.status').innerHTML = `<span class="chip ${chip[0]}">${chip[1]}</span>`
  }
  tiles(f, hello)
  batchTable(f, hello)
  $('#frames-lost').textContent = state.lost > 0 ? `${count(state.lost)} frames lost (this page read too slowly)` : ''
  if (state.sample !== null && state.sample !== state.sampleDrawn) {
    state.sampleDrawn = state.sample
    $('#sample-card').hidden = false
    $('#sample-step').textContent = `step ${count(state.sampleStep)}`
    renderRollout($('#sample'), state.sample, state.sampleStep)
  }
}

// ---------------------------------------------------------------------------------------
// the connection, and the viewer token

function connStatus(kind, text) {
  document.body.dataset.state = kind
  $('#conn-text').textContent = text
}

function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY) ?? ''
}

/** The header's CSV link: the whole run's series, with the viewer token when the page has one. */
function csvLink(token) {
  $('#csv').setAttribute('href', `/history?format=csv${token === '' ? '' : `&token=${encodeURIComponent(token)}`}`)
}

// a token in the page's own URL (?token=…) is taken once, then kept out of the address bar
{
  const url = new URL(location.href)
  const token = url.searchParams.get('token')
  if (token !== null) {
    sessionStorage.setItem(TOKEN_KEY, token)
    url.searchParams.delete('token')
    history.replaceState(null, '', url)
  }
}

let backoff = 500
let socket = null

function connect() {
  const token = storedToken()
  csvLink(token)
  const url = new URL('/telemetry', location.href)
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:'
  url.searchParams.set('format', 'json')
  if (token !== '') url.searchParams.set('token', token)
  connStatus('connecting', 'connecting…')
  let opened = false
  const ws = new WebSocket(url)
  socket = ws
  ws.onopen = () => {
    opened = true
    backoff = 500
    connStatus('live', 'live')
  }
  ws.onmessage = (event) => onFrame(JSON.parse(event.data))
  ws.onclose = () => {
    if (socket !== ws) return
    socket = null
    if (opened) {
      connStatus('disconnected', 'disconnected — reconnecting')
      retry()
    } else {
      checkToken(token)
    }
  }
}

function retry() {
  setTimeout(connect, backoff)
  backoff = Math.min(backoff * 2, 5000)
}

/** The upgrade failed: a refused token, or a server that is away? */
async function checkToken(token) {
  try {
    const response = await fetch('/telemetry/auth', { headers: token === '' ? {} : { Authorization: `Bearer ${token}` }, cache: 'no-store' })
    if (response.status === 401) {
      const body = await response.json().catch(() => ({}))
      askToken(
        token === '' ? 'This dashboard needs the viewer token (DUALSTREAM_VIEWER_TOKEN).' : `The token was refused: ${body.error ?? 'wrong token'}.`,
        token !== '',
      )
      return
    }
    connStatus('disconnected', 'cannot connect — retrying')
  } catch {
    connStatus('disconnected', 'server unreachable — retrying')
  }
  retry()
}

function askToken(message, isError) {
  connStatus('token', 'viewer token needed')
  const dialog = $('#token-dialog')
  const text = $('#token-message')
  text.textContent = message
  text.classList.toggle('error', isError)
  $('#token').value = ''
  if (!dialog.open) dialog.showModal()
  $('#token').focus()
}

$('#token-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const token = $('#token').value.trim()
  if (token === '') return
  sessionStorage.setItem(TOKEN_KEY, token)
  $('#token-dialog').close()
  connect()
})
// the dialog cannot be dismissed without a token: there is nothing to show without one
$('#token-dialog').addEventListener('cancel', (event) => event.preventDefault())

connect()
