// The picture of one SpatialGrid rollout (the `sample` of a training frame, see
// src/spatialgrid/render.ts `describeRollout`): the scene on its grid, the queried axis,
// each claim marked true or false where it points, the answer and whether it is right.

const NS = 'http://www.w3.org/2000/svg'

const COLOURS = {
  red: '#ff6b6b',
  blue: '#5b9dff',
  green: '#3ecf8e',
  yellow: '#f5d142',
  purple: '#b58cff',
  orange: '#ff9f43',
  cyan: '#3fd5e0',
  magenta: '#ff5fd2',
}
const GOOD = '#3ecf8e'
const BAD = '#ff6b6b'
const MUTED = '#8a97b0'
const TEXT = '#e4e9f2'

const colourOf = (name) => COLOURS[name] ?? '#c0c8d8'

function el(name, attrs = {}, text) {
  const node = document.createElementNS(NS, name)
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v))
  if (text !== undefined) node.textContent = text
  return node
}

/** A marker shape per object type: circle, square, triangle, diamond, then again. */
function shape(type, cx, cy, r, fill) {
  const attrs = { fill, stroke: '#0b1020', 'stroke-width': 2 }
  switch (type % 4) {
    case 0:
      return el('circle', { cx, cy, r, ...attrs })
    case 1:
      return el('rect', { x: cx - r * 0.85, y: cy - r * 0.85, width: r * 1.7, height: r * 1.7, rx: 4, ...attrs })
    case 2:
      return el('polygon', { points: `${cx},${cy - r} ${cx + r},${cy + r * 0.8} ${cx - r},${cy + r * 0.8}`, ...attrs })
    default:
      return el('polygon', { points: `${cx},${cy - r} ${cx + r},${cy} ${cx},${cy + r} ${cx - r},${cy}`, ...attrs })
  }
}

/**
 * Draws `d` (a RolloutDescription) into `container`, replacing what was there.
 * @param {HTMLElement} container
 * @param {object} d
 * @param {number} step the RL step the sample comes from
 */
export function renderRollout(container, d, step) {
  const cell = 70
  const n = d.grid
  const gx = 44 // grid origin (room for the rulers)
  const gy = 52
  const size = n * cell
  const width = 700
  const height = Math.max(gy + size + 40, 340)
  const svg = el('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': `sample rollout: ${d.text}`, 'data-step': step })
  svg.append(el('rect', { x: 0, y: 0, width, height, fill: '#121927', rx: 8 }))

  // grid and rulers (x across the top, y down the left; y = 0 is the top row)
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      svg.append(el('rect', { x: gx + i * cell + 1, y: gy + j * cell + 1, width: cell - 2, height: cell - 2, rx: 6, fill: '#1a2338', stroke: '#26324a' }))
    }
    svg.append(el('text', { x: gx + i * cell + cell / 2, y: gy - 26, fill: MUTED, 'font-size': 12, 'text-anchor': 'middle' }, String(i)))
    svg.append(el('text', { x: gx - 26, y: gy + i * cell + cell / 2 + 4, fill: MUTED, 'font-size': 12, 'text-anchor': 'middle' }, String(i)))
  }
  svg.append(el('text', { x: gx + size + 8, y: gy - 22, fill: MUTED, 'font-size': 12 }, 'x →'))
  svg.append(el('text', { x: gx - 34, y: gy + size + 18, fill: MUTED, 'font-size': 12 }, 'y ↓'))

  const byName = new Map(d.objects.map((o) => [o.name, o]))
  const centre = (o) => [gx + o.x * cell + cell / 2, gy + o.y * cell + cell / 2]
  const queried = [d.question.a, d.question.b]

  // the queried axis: guides from the two queried objects to the ruler they are compared on
  for (const name of queried) {
    const o = byName.get(name)
    if (o === undefined) continue
    const [cx, cy] = centre(o)
    const line = d.question.axis === 'x' ? { x1: cx, y1: cy, x2: cx, y2: gy - 14 } : { x1: cx, y1: cy, x2: gx - 14, y2: cy }
    svg.append(el('line', { ...line, stroke: colourOf(name), 'stroke-width': 1.5, 'stroke-dasharray': '4 4', opacity: 0.8 }))
  }

  // the objects, queried ones ringed
  for (const o of d.objects) {
    const [cx, cy] = centre(o)
    if (queried.includes(o.name)) svg.append(el('circle', { cx, cy, r: 23, fill: 'none', stroke: TEXT, 'stroke-width': 1.5, opacity: 0.8 }))
    svg.append(shape(o.type, cx, cy, 15, colourOf(o.name)))
    svg.append(el('text', { x: cx, y: cy + 33, fill: MUTED, 'font-size': 10, 'text-anchor': 'middle' }, o.name))
  }

  // each claim where it points on its ruler: numbered, green when true, red when false
  d.claims.forEach((c, k) => {
    const at = gx + c.value * cell + cell / 2
    const pos = c.axis === 'x' ? { cx: at + (k === 0 ? -9 : 9), cy: gy - 12 } : { cx: gx - 12, cy: gy + c.value * cell + cell / 2 + (k === 0 ? -9 : 9) }
    const colour = c.true ? GOOD : BAD
    const marker = el('g', { 'data-claim': k + 1, 'data-true': c.true })
    marker.append(el('circle', { ...pos, r: 8, fill: colour, opacity: 0.9 }))
    marker.append(el('text', { x: pos.cx, y: pos.cy + 4, fill: '#0b1020', 'font-size': 10, 'font-weight': 700, 'text-anchor': 'middle' }, String(k + 1)))
    svg.append(marker)
  })

  // the text: question, claims, answer, judges
  const tx = gx + size + 56
  let ty = gy
  const line = (text, attrs = {}) => {
    svg.append(el('text', { x: tx, y: ty, fill: TEXT, 'font-size': 14, ...attrs }, text))
    ty += attrs['font-size'] === 12 ? 20 : 24
  }
  line('QUESTION', { fill: MUTED, 'font-size': 12, 'letter-spacing': 1 })
  const q = el('text', { x: tx, y: ty, fill: TEXT, 'font-size': 15 })
  q.append(el('tspan', { fill: colourOf(d.question.a), 'font-weight': 700 }, d.question.a))
  q.append(el('tspan', {}, `.${d.question.axis} < or > `))
  q.append(el('tspan', { fill: colourOf(d.question.b), 'font-weight': 700 }, d.question.b))
  q.append(el('tspan', {}, `.${d.question.axis} ?`))
  svg.append(q)
  ty += 34
  line('CLAIMS', { fill: MUTED, 'font-size': 12, 'letter-spacing': 1 })
  d.claims.forEach((c, k) => {
    const t = el('text', { x: tx, y: ty, 'font-size': 15, fill: TEXT })
    t.append(el('tspan', { fill: MUTED }, `${k + 1}  `))
    t.append(el('tspan', { fill: colourOf(c.subject), 'font-weight': 700 }, c.subject))
    t.append(el('tspan', {}, `.${c.axis} = ${c.value}   `))
    t.append(el('tspan', { fill: c.true ? GOOD : BAD, 'font-weight': 700 }, c.true ? '✓ true' : '✗ false'))
    svg.append(t)
    ty += 24
  })
  ty += 10
  line('ANSWER', { fill: MUTED, 'font-size': 12, 'letter-spacing': 1 })
  const right = d.answer === d.correctAnswer
  const a = el('text', { x: tx, y: ty, 'font-size': 17, fill: TEXT, 'data-answer': d.answer, 'data-right': right })
  a.append(el('tspan', { 'font-weight': 700 }, d.answer))
  a.append(el('tspan', { fill: right ? GOOD : BAD, 'font-weight': 700 }, right ? '   ✓ right' : `   ✗ wrong (${d.correctAnswer})`))
  svg.append(a)
  ty += 36
  // the three judges as chips
  let cx = tx
  for (const [name, value] of [
    ['accuracy', d.judgement.accuracy],
    ['grounding', d.judgement.grounding],
    ['consistency', d.judgement.consistency],
  ]) {
    const label = `${name} ${Number.isInteger(value) ? value : value.toFixed(2)}`
    const w = label.length * 7 + 18
    const colour = value >= 1 ? GOOD : value > 0 ? '#f5b942' : BAD
    svg.append(el('rect', { x: cx, y: ty - 15, width: w, height: 22, rx: 11, fill: colour, opacity: 0.16 }))
    svg.append(el('text', { x: cx + w / 2, y: ty + 1, fill: colour, 'font-size': 12, 'font-weight': 600, 'text-anchor': 'middle' }, label))
    cx += w + 8
  }
  container.replaceChildren(svg)
}
