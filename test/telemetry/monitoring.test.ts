/**
 * The Grafana dashboard (examples/grafana/dualstream.json) and the Prometheus alerts
 * (examples/prometheus/alerts.yml) against the metrics the server really registers: every
 * PromQL expression is parsed (a small parser for the PromQL they use), and each metric, each
 * label matcher, each `by`/`on`/`group_left` label, each legend's `{{label}}` and each alert's
 * `$labels.x` must exist where it is used. A misspelt metric or label in either file fails here
 * rather than as an empty panel or an alert that can never fire.
 */
import { execFileSync } from 'node:child_process'
import { accessSync, constants, readFileSync } from 'node:fs'
import { delimiter, join } from 'node:path'
import t from 'tap'
import { parse as parseYaml } from 'yaml'
import { parseConfig } from '../../src/core/config.js'
import { Telemetry, TrainingTelemetry } from '../../streams/telemetry/telemetry.js'

const root = new URL('../../', import.meta.url).pathname
const DASHBOARD = join(root, 'examples/grafana/dualstream.json')
const ALERTS = join(root, 'examples/prometheus/alerts.yml')

// ---------------------------------------------------------------------------------------------
// The metrics the server exports

interface MetricInfo {
  type: string
  labels: string[]
}
type Catalogue = Map<string, MetricInfo>

/** Labels Prometheus adds to every scraped series. */
const TARGET_LABELS = ['job', 'instance']

const config = parseConfig({
  groupSize: 2,
  batchGroups: 1,
  objectives: [{ channel: 'accuracy' }],
  constraints: [{ channel: 'consistency', sense: '>=', threshold: 0.9, dual: { rule: 'sgd', lr: 0.05, max: 10 } }],
})

/**
 * Every metric of both kinds of run, built the way telemetry.ts builds them: `serve` (with the
 * disk watched, as EngineTelemetry does when the engine has a disk) and `train`, Node's process
 * metrics included.
 */
async function catalogue(): Promise<Catalogue> {
  const serve = new Telemetry('serve', config, () => ({ step: 0, lambda: {}, counts: null }))
  serve.metrics.watchDisk(() => ({ free: 1e9, reserve: 1e8, full: false }))
  const train = new TrainingTelemetry(config, { step: 0, lambda: {} })
  const metrics: Catalogue = new Map()
  try {
    for (const { registry } of [serve.metrics, train.metrics]) {
      for (const { name, type } of await registry.getMetricsAsJSON()) {
        const labels = (registry.getSingleMetric(name) as unknown as { labelNames: string[] }).labelNames
        const known = metrics.get(name)
        metrics.set(name, { type: String(type), labels: [...new Set([...(known?.labels ?? []), ...labels])] })
      }
    }
  } finally {
    serve.close()
    train.close()
  }
  return metrics
}

// ---------------------------------------------------------------------------------------------
// A PromQL parser for the subset monitoring files use: selectors with matchers, range vectors,
// subqueries, offset, function calls, aggregations with by/without, binary operators with
// bool/on/ignoring/group_left/group_right, in PromQL's precedence.

type Node =
  | { kind: 'number' }
  | { kind: 'string'; value: string }
  | { kind: 'selector'; name: string; matchers: string[] }
  | { kind: 'call'; name: string; args: Node[] }
  | { kind: 'aggregate'; op: string; grouping: { without: boolean; labels: string[] } | null; args: Node[] }
  | {
      kind: 'binary'
      op: string
      bool: boolean
      left: Node
      right: Node
      on: { ignoring: boolean; labels: string[] } | null
      group: { side: 'left' | 'right'; labels: string[] } | null
    }

const AGGREGATIONS = new Set([
  'sum',
  'avg',
  'min',
  'max',
  'count',
  'stddev',
  'stdvar',
  'group',
  'topk',
  'bottomk',
  'quantile',
  'count_values',
  'limitk',
  'limit_ratio',
])
const FUNCTIONS = new Set([
  'abs',
  'absent',
  'absent_over_time',
  'avg_over_time',
  'ceil',
  'changes',
  'clamp',
  'clamp_max',
  'clamp_min',
  'count_over_time',
  'delta',
  'deriv',
  'exp',
  'floor',
  'histogram_quantile',
  'idelta',
  'increase',
  'irate',
  'label_join',
  'label_replace',
  'last_over_time',
  'ln',
  'log10',
  'log2',
  'max_over_time',
  'min_over_time',
  'predict_linear',
  'quantile_over_time',
  'rate',
  'resets',
  'round',
  'scalar',
  'sgn',
  'sort',
  'sort_desc',
  'sqrt',
  'stddev_over_time',
  'sum_over_time',
  'time',
  'timestamp',
  'vector',
])
/** Binary operators by precedence, lowest first (`^` is right-associative). */
const PRECEDENCE: string[][] = [['or'], ['and', 'unless'], ['==', '!=', '<=', '<', '>=', '>'], ['+', '-'], ['*', '/', '%', 'atan2'], ['^']]
const COMPARISONS = new Set(PRECEDENCE[2])
const SELECTING = new Set(['topk', 'bottomk', 'limitk', 'limit_ratio'])
const SET_OPERATORS = new Set(['and', 'or', 'unless'])

type Token = { type: 'ident' | 'number' | 'duration' | 'string' | 'op'; text: string; at: number }

function tokenize(expr: string): Token[] {
  const tokens: Token[] = []
  const patterns: [Token['type'], RegExp][] = [
    ['string', /^"(?:[^"\\]|\\.)*"|^'(?:[^'\\]|\\.)*'|^`[^`]*`/],
    ['duration', /^(?:\d+(?:ms|[smhdwy]))+(?![A-Za-z0-9_])/],
    ['number', /^(?:0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)/],
    // a metric name may hold colons (recording rules), but not begin with one: `[1h:1m]`
    ['ident', /^[A-Za-z_][A-Za-z0-9_:]*/],
    ['op', /^(?:==|!=|<=|>=|=~|!~|[-+*/%^<>=(){}[\],:@])/],
  ]
  let at = 0
  while (at < expr.length) {
    const space = /^\s+/.exec(expr.slice(at))
    if (space !== null) {
      at += space[0].length
      continue
    }
    const found = patterns.map(([type, re]) => [type, re.exec(expr.slice(at))] as const).find(([, m]) => m !== null)
    if (found === undefined) throw new Error(`unexpected character ${JSON.stringify(expr[at])} at ${at} in: ${expr}`)
    const [type, match] = found
    tokens.push({ type, text: match![0], at })
    at += match![0].length
  }
  return tokens
}

/** Parses a PromQL expression; throws with the position on anything outside the subset. */
function parsePromQL(expr: string): Node {
  const tokens = tokenize(expr)
  let i = 0
  const peek = (): Token | undefined => tokens[i]
  const fail = (what: string): never => {
    const token = peek()
    throw new Error(`${what} at ${token === undefined ? 'the end' : `${JSON.stringify(token.text)} (offset ${token.at})`} in: ${expr}`)
  }
  const next = (): Token => peek() ?? fail('unexpected end')
  const is = (text: string): boolean => peek()?.text === text
  const expect = (text: string): Token => (is(text) ? tokens[i++] : fail(`expected ${JSON.stringify(text)}`))
  const accept = (text: string): boolean => {
    if (!is(text)) return false
    i++
    return true
  }
  const labelList = (): string[] => {
    expect('(')
    const labels: string[] = []
    while (!is(')')) {
      const token = next()
      if (token.type !== 'ident') fail('expected a label name')
      labels.push(token.text)
      i++
      if (!accept(',')) break
    }
    expect(')')
    return labels
  }
  const duration = (): void => {
    if (next().type !== 'duration') fail('expected a duration')
    i++
  }

  const args = (): Node[] => {
    expect('(')
    const list: Node[] = []
    while (!is(')')) {
      list.push(binary(0))
      if (!accept(',')) break
    }
    expect(')')
    return list
  }

  const primary = (): Node => {
    const token = next()
    if (token.type === 'number' || token.type === 'string') {
      i++
      return token.type === 'number' ? { kind: 'number' } : { kind: 'string', value: token.text.slice(1, -1) }
    }
    if (accept('(')) {
      const inner = binary(0)
      expect(')')
      return inner
    }
    if (token.type !== 'ident') return fail('expected an expression')
    i++
    const name = token.text
    if (AGGREGATIONS.has(name) && (is('(') || is('by') || is('without'))) {
      const groupingClause = () => {
        const without = next().text === 'without'
        i++
        return { without, labels: labelList() }
      }
      let grouping = is('by') || is('without') ? groupingClause() : null
      const list = args()
      if (grouping === null && (is('by') || is('without'))) grouping = groupingClause()
      return { kind: 'aggregate', op: name, grouping, args: list }
    }
    if (is('(')) {
      if (!FUNCTIONS.has(name)) fail(`unknown function ${name}`)
      return { kind: 'call', name, args: args() }
    }
    const matchers: string[] = []
    if (accept('{')) {
      while (!is('}')) {
        const label = next()
        if (label.type !== 'ident') fail('expected a label name')
        i++
        if (!['=', '!=', '=~', '!~'].includes(next().text)) fail('expected a label matcher operator')
        i++
        if (next().type !== 'string') fail('expected a quoted label value')
        i++
        matchers.push(label.text)
        if (!accept(',')) break
      }
      expect('}')
    }
    return { kind: 'selector', name, matchers }
  }

  // range vectors, subqueries, offset and @ after a primary
  const postfix = (): Node => {
    const node = primary()
    for (;;) {
      if (accept('[')) {
        duration()
        if (accept(':') && !is(']')) duration()
        expect(']')
      } else if (accept('offset')) {
        accept('-')
        duration()
      } else if (accept('@')) {
        if (accept('start') || accept('end')) {
          expect('(')
          expect(')')
        } else if (next().type === 'number') i++
        else fail('expected a timestamp after @')
      } else return node
    }
  }

  const unary = (): Node => {
    if (accept('-') || accept('+')) return unary()
    return postfix()
  }

  const binary = (level: number): Node => {
    if (level === PRECEDENCE.length) return unary()
    let left = binary(level + 1)
    while (peek() !== undefined && PRECEDENCE[level].includes(peek()!.text)) {
      const op = next().text
      i++
      const bool = accept('bool')
      if (bool && !COMPARISONS.has(op)) fail(`bool after ${op}`)
      let on: { ignoring: boolean; labels: string[] } | null = null
      let group: { side: 'left' | 'right'; labels: string[] } | null = null
      if (is('on') || is('ignoring')) {
        const ignoring = next().text === 'ignoring'
        i++
        on = { ignoring, labels: labelList() }
        if (is('group_left') || is('group_right')) {
          const side = next().text === 'group_left' ? 'left' : 'right'
          i++
          group = { side, labels: is('(') ? labelList() : [] }
        }
      }
      // `^` is right-associative, the others left
      const right = op === '^' ? binary(level) : binary(level + 1)
      left = { kind: 'binary', op, bool, left, right, on, group }
      if (op === '^') break
    }
    return left
  }

  const node = binary(0)
  if (i < tokens.length) fail('unexpected token')
  return node
}

// ---------------------------------------------------------------------------------------------
// Checking an expression against the catalogue

/** The labels of an expression's result: null for a scalar or a string. */
type Labels = Set<string> | null

/** Problems with one expression: unknown metrics, labels that are not there, vector matches that cannot match. */
function checkExpr(expr: string, metrics: Catalogue, used: Set<string>): { problems: string[]; labels: Labels } {
  const problems: string[] = []
  let node: Node
  try {
    node = parsePromQL(expr)
  } catch (error) {
    return { problems: [(error as Error).message], labels: null }
  }
  const missing = (labels: string[], have: Labels, where: string) => {
    for (const label of labels)
      if (have === null || !have.has(label))
        problems.push(`${where}: label "${label}" is not there (${have === null ? 'a scalar' : [...have].sort().join(', ')})`)
  }

  const selector = (name: string, matchers: string[]): Labels => {
    let info = metrics.get(name)
    let extra: string[] = []
    const histogram = /^(.*)_(bucket|sum|count)$/.exec(name)
    if (info === undefined && histogram !== null && metrics.get(histogram[1])?.type === 'histogram') {
      info = metrics.get(histogram[1])
      used.add(histogram[1])
      if (histogram[2] === 'bucket') extra = ['le']
    } else used.add(name)
    if (info === undefined) {
      problems.push(`metric ${name} is not one the server registers`)
      return new Set()
    }
    if (info.type === 'histogram' && extra.length === 0 && histogram === null) problems.push(`${name} is a histogram: use ${name}_bucket, _sum or _count`)
    const labels = new Set([...info.labels, ...TARGET_LABELS, ...extra])
    missing(matchers, labels, name)
    return labels
  }

  const labelsOf = (node: Node): Labels => {
    switch (node.kind) {
      case 'number':
      case 'string':
        return null
      case 'selector':
        return selector(node.name, node.matchers)
      case 'call': {
        const vectors = node.args.map(labelsOf).filter((l): l is Set<string> => l !== null)
        if (node.name === 'vector' || node.name === 'time' || node.name === 'scalar') return node.name === 'vector' ? new Set() : null
        const labels = new Set(vectors[0])
        if (node.name === 'histogram_quantile') {
          missing(['le'], labels, 'histogram_quantile')
          labels.delete('le')
        }
        return labels
      }
      case 'aggregate': {
        const labels = node.args.map(labelsOf).at(-1) ?? null
        // these pick series and keep their labels; the grouping only says among which
        if (SELECTING.has(node.op)) return labels
        if (node.grouping === null) return new Set()
        missing(node.grouping.labels, labels, `${node.op} ${node.grouping.without ? 'without' : 'by'}`)
        if (!node.grouping.without) return new Set(node.grouping.labels)
        return new Set([...(labels ?? [])].filter((l) => !node.grouping!.labels.includes(l)))
      }
      case 'binary': {
        const left = labelsOf(node.left)
        const right = labelsOf(node.right)
        if (left === null || right === null) return left ?? right
        if (node.on !== null && !node.on.ignoring) {
          missing(node.on.labels, left, `left of ${node.op} on`)
          missing(node.on.labels, right, `right of ${node.op} on`)
        }
        if (node.group !== null) missing(node.group.labels, node.group.side === 'left' ? right : left, `${node.op} group_${node.group.side}`)
        if (node.op === 'or') return new Set([...left, ...right])
        if (node.on === null) {
          // matching on every label: two different label sets never match
          const same = left.size === right.size && [...left].every((l) => right.has(l))
          if (!same) problems.push(`${node.op} between {${[...left].sort()}} and {${[...right].sort()}} matches nothing without on()/ignoring()`)
          return left
        }
        if (SET_OPERATORS.has(node.op) || (COMPARISONS.has(node.op) && !node.bool)) return left
        if (node.group !== null) {
          const kept = node.group.side === 'left' ? left : right
          return new Set([...kept, ...node.group.labels])
        }
        return node.on.ignoring ? new Set([...left].filter((l) => !node.on!.labels.includes(l))) : new Set(node.on.labels)
      }
    }
  }

  const labels = labelsOf(node)
  return { problems, labels }
}

/** `{{label}}` in a legend, `{{ $labels.label }}` in an annotation. */
const templateLabels = (text: string, pattern: RegExp): string[] => [...text.matchAll(pattern)].map((m) => m[1])

// ---------------------------------------------------------------------------------------------
// The two files

interface Panel {
  id?: number
  type: string
  title?: string
  datasource?: { type: string; uid: string }
  fieldConfig?: { defaults?: { unit?: string } }
  targets?: { expr?: string; legendFormat?: string; refId?: string }[]
  panels?: Panel[]
}

interface Dashboard {
  schemaVersion: number
  __inputs: { name: string; type: string; pluginId: string }[]
  templating: { list: { name: string; type: string; query: string | { query: string }; definition?: string }[] }
  panels: Panel[]
}

/** Grafana's variables in a query, replaced by what Prometheus would see. */
const substitute = (expr: string): string =>
  expr.replace(/\$\{?(\w+)\}?/g, (_, name: string) => (['__rate_interval', '__interval', '__range'].includes(name) ? '5m' : '.*'))

/** Every problem with the dashboard; `used` collects the metrics it shows. */
function checkDashboard(dashboard: Dashboard, metrics: Catalogue, used = new Set<string>()): string[] {
  const problems: string[] = []
  if (dashboard.schemaVersion !== 39) problems.push(`schemaVersion is ${dashboard.schemaVersion}, not 39`)
  if (!dashboard.__inputs?.some((input) => input.name === 'DS_PROMETHEUS' && input.type === 'datasource' && input.pluginId === 'prometheus')) {
    problems.push('no DS_PROMETHEUS datasource input in __inputs')
  }
  const variables = dashboard.templating.list
  if (!variables.some((v) => v.name === 'datasource' && v.type === 'datasource' && v.query === 'prometheus'))
    problems.push('no datasource variable of type prometheus')
  for (const variable of variables.filter((v) => v.type === 'query')) {
    const query = typeof variable.query === 'string' ? variable.query : variable.query.query
    // Grafana shows the definition and runs the query: they must say the same
    if (variable.definition !== undefined && variable.definition !== query)
      problems.push(`variable ${variable.name}: definition ${variable.definition} is not its query ${query}`)
    const match = /^label_values\((.*),\s*(\w+)\)$/.exec(query)
    if (match === null) {
      problems.push(`variable ${variable.name}: ${query} is not label_values(metric, label)`)
      continue
    }
    const result = checkExpr(substitute(match[1]), metrics, used)
    problems.push(...result.problems.map((p) => `variable ${variable.name}: ${p}`))
    if (result.labels !== null && !result.labels.has(match[2])) problems.push(`variable ${variable.name}: label "${match[2]}" is not on ${match[1]}`)
  }

  const ids = new Set<number>()
  const walk = (panels: Panel[]) => {
    for (const panel of panels) {
      const where = `panel "${panel.title}"`
      if (panel.id === undefined || ids.has(panel.id)) problems.push(`${where}: missing or repeated id ${panel.id}`)
      ids.add(panel.id!)
      if (panel.type === 'row') {
        walk(panel.panels ?? [])
        continue
      }
      if (panel.datasource?.uid !== '${datasource}') problems.push(`${where}: datasource is not the $datasource variable`)
      if (panel.fieldConfig?.defaults?.unit === undefined) problems.push(`${where}: no unit`)
      const targets = panel.targets ?? []
      if (targets.length === 0) problems.push(`${where}: no queries`)
      if (new Set(targets.map((target) => target.refId)).size !== targets.length) problems.push(`${where}: repeated refId`)
      for (const target of targets) {
        const result = checkExpr(substitute(target.expr ?? ''), metrics, used)
        problems.push(...result.problems.map((p) => `${where}: ${p}`))
        const legend = templateLabels(target.legendFormat ?? '', /\{\{\s*(\w+)\s*\}\}/g)
        for (const label of legend)
          if (result.labels === null || !result.labels.has(label)) problems.push(`${where}: legend {{${label}}} is not a label of ${target.expr}`)
      }
    }
  }
  walk(dashboard.panels)
  return problems
}

interface Rule {
  alert?: string
  record?: string
  expr: string
  for?: string
  labels?: Record<string, string>
  annotations?: Record<string, string>
}
interface RuleFile {
  groups: { name: string; rules: Rule[] }[]
}

const SEVERITIES = ['critical', 'warning', 'info']

/** Every problem with the rules file; `alerts` collects the alert names. */
function checkAlerts(file: RuleFile, metrics: Catalogue, alerts: string[] = []): string[] {
  const problems: string[] = []
  const groups = new Set<string>()
  for (const group of file.groups) {
    if (groups.has(group.name)) problems.push(`group ${group.name} is repeated`)
    groups.add(group.name)
    for (const rule of group.rules) {
      const where = `${group.name}/${rule.alert ?? rule.record}`
      if (rule.alert === undefined) {
        problems.push(`${where}: not an alert`)
        continue
      }
      if (alerts.includes(rule.alert)) problems.push(`${where}: alert name repeated`)
      alerts.push(rule.alert)
      const used = new Set<string>()
      const result = checkExpr(String(rule.expr), metrics, used)
      problems.push(...result.problems.map((p) => `${where}: ${p}`))
      if (used.size === 0) problems.push(`${where}: uses no metric of the server`)
      if (rule.for !== undefined && !/^(\d+(ms|[smhdwy]))+$/.test(rule.for)) problems.push(`${where}: for: ${rule.for} is not a duration`)
      if (!SEVERITIES.includes(rule.labels?.severity ?? '')) problems.push(`${where}: severity ${rule.labels?.severity} is not one of ${SEVERITIES.join(', ')}`)
      for (const key of ['summary', 'description']) if (!rule.annotations?.[key]?.trim()) problems.push(`${where}: no ${key} annotation`)
      for (const text of Object.values(rule.annotations ?? {})) {
        for (const label of templateLabels(text, /\$labels\.(\w+)/g)) {
          if (result.labels === null || !result.labels.has(label)) problems.push(`${where}: $labels.${label} is not a label of the result`)
        }
      }
    }
  }
  return problems
}

const readDashboard = (): Dashboard => JSON.parse(readFileSync(DASHBOARD, 'utf8'))
const readAlerts = (): RuleFile => parseYaml(readFileSync(ALERTS, 'utf8'))

// ---------------------------------------------------------------------------------------------

t.test('the PromQL parser reads what the files use and refuses what it does not know', async (t) => {
  const metrics = await catalogue()
  const ok = (expr: string) => t.same(checkExpr(expr, metrics, new Set()).problems, [], expr)
  ok('histogram_quantile(0.99, sum by (le, job) (rate(dualstream_batch_latency_seconds_bucket{job=~"a"}[5m])))')
  ok('sum(rate(dualstream_rollouts_rejected_total[5m] offset 1h)) by (reason)')
  ok('max_over_time(dualstream_lambda[1h:1m]) / on(constraint, job, instance) group_left dualstream_lambda_max')
  ok('dualstream_constraint_threshold * on(constraint) group_right(sense) dualstream_lambda')
  ok('dualstream_lambda - ignoring(constraint) group_left sum without (constraint) (dualstream_lambda)')
  ok('-dualstream_step ^ 2 ^ 0.5 > bool 1e3 or vector(0)')
  ok('sum by (job, instance) (dualstream_step) unless dualstream_step @ end()')
  ok('topk(3, dualstream_lambda) @ 1700000000 + time()')
  ok('dualstream_step offset -5m + scalar(dualstream_outbox_batches)')
  const bad = (expr: string, problem: RegExp) => t.match(checkExpr(expr, metrics, new Set()).problems.join('\n'), problem, expr)
  bad('dualstream_stepp', /metric dualstream_stepp is not one the server registers/)
  bad('dualstream_batch_latency_seconds', /is a histogram/)
  bad('dualstream_lambda{constraint="a", channel="b"}', /label "channel" is not there/)
  bad('sum by (reason) (dualstream_lambda)', /sum by: label "reason"/)
  bad('sum without (reason) (dualstream_lambda)', /sum without: label "reason"/)
  bad('histogram_quantile(0.5, rate(dualstream_batch_latency_seconds_sum[5m]))', /histogram_quantile: label "le"/)
  bad('dualstream_lambda > dualstream_step', /matches nothing/)
  bad('dualstream_lambda > on(sense) dualstream_constraint_threshold', /left of > on: label "sense"/)
  bad('dualstream_lambda > on(constraint) group_left(sense) dualstream_lambda_max', /group_left: label "sense"/)
  bad('dualstream_lambda > bool on(job) group_right(client) dualstream_step', /group_right: label "client"/)
  bad('frobnicate(dualstream_step)', /unknown function frobnicate/)
  bad('dualstream_step +', /unexpected end/)
  bad('dualstream_step )', /unexpected token/)
  bad('rate(dualstream_batches_total[5])', /expected a duration/)
  bad('dualstream_step{job~"a"}', /unexpected character "~"|expected a label matcher operator/)
  bad('dualstream_step{"job"="a"}', /expected a label name/)
  bad('dualstream_step{job=a}', /expected a quoted label value/)
  bad('sum by ("job") (dualstream_step)', /expected a label name/)
  bad('dualstream_step and bool dualstream_step', /bool after and/)
  bad('dualstream_step @ foo', /expected a timestamp/)
  bad('dualstream_step # comment', /unexpected character "#"/)
  bad(', dualstream_step', /expected an expression/)
})

t.test('the dashboard shows only metrics and labels the server exports, and all of them', async (t) => {
  const metrics = await catalogue()
  const dashboard = readDashboard()
  const used = new Set<string>()
  t.same(checkDashboard(dashboard, metrics, used), [], 'no problems')
  const exported = [...metrics.keys()].filter((name) => name.startsWith('dualstream_'))
  t.same(
    exported.filter((name) => !used.has(name)),
    [],
    'every dualstream metric has a panel',
  )
  t.ok(used.has('dualstream_constraint_violated_steps') && used.has('dualstream_lambda_max'), 'the new constraint metrics are shown')

  // the checks bite: a misspelt metric, label, legend or variable in a copy is reported
  const text = readFileSync(DASHBOARD, 'utf8')
  const broken = (from: string, to: string, problem: RegExp) => {
    t.ok(text.includes(from), `the dashboard has ${from}`)
    t.match(checkDashboard(JSON.parse(text.replaceAll(from, to)), metrics).join('\n'), problem, `${from} → ${to} is caught`)
  }
  broken('dualstream_outbox_batches{', 'dualstream_outbox_batchez{', /dualstream_outbox_batchez is not one the server registers/)
  broken('sum by (reason)', 'sum by (reasons)', /label "reasons" is not there/)
  broken('"{{constraint}}"', '"{{constrain}}"', /legend \{\{constrain\}\}/)
  broken('label_values(dualstream_step, job)', 'label_values(dualstream_step, jobs)', /variable job: label "jobs"/)
  broken('label_values(dualstream_step, job)', 'dualstream_step', /is not label_values/)
  broken('"schemaVersion": 39', '"schemaVersion": 38', /schemaVersion is 38/)
  broken('"DS_PROMETHEUS"', '"DS_PROM"', /no DS_PROMETHEUS/)
  broken('"query": "prometheus"', '"query": "loki"', /no datasource variable/)
  const mutated = (change: (d: Dashboard) => void, problem: RegExp, what: string) => {
    const copy = readDashboard()
    change(copy)
    t.match(checkDashboard(copy, metrics).join('\n'), problem, what)
  }
  const firstChart = (d: Dashboard): Panel => d.panels.find((p) => p.type === 'timeseries' && (p.targets ?? []).length > 1)!
  mutated((d) => delete firstChart(d).fieldConfig!.defaults!.unit, /no unit/, 'a panel without a unit')
  mutated((d) => (firstChart(d).datasource = { type: 'prometheus', uid: 'prom' }), /datasource is not the \$datasource variable/, 'a fixed datasource')
  mutated((d) => (firstChart(d).targets![1].refId = 'A'), /repeated refId/, 'two queries with one refId')
  mutated((d) => (d.panels[2].id = d.panels[1].id), /repeated id/, 'two panels with one id')
  mutated(
    (d) => (d.templating.list[1].definition = 'label_values(dualstream_lambda, job)'),
    /definition .* is not its query/,
    'a definition that is not the query',
  )
  const noQueries = readDashboard()
  noQueries.panels[1].targets = undefined
  t.match(checkDashboard(noQueries, metrics).join('\n'), /no queries/)
  const plainRows = readDashboard()
  for (const panel of plainRows.panels) {
    panel.panels = undefined
    panel.targets?.forEach((target) => (target.expr = undefined))
  }
  t.match(checkDashboard(plainRows, metrics).join('\n'), /unexpected end/, 'a target without expr is an error')
  const queryString = readDashboard()
  for (const v of queryString.templating.list) if (typeof v.query === 'object') v.query = v.query.query
  t.same(checkDashboard(queryString, metrics), [], 'a variable query may also be a plain string')
})

t.test('the alerts use only metrics and labels the server exports, with a severity and a summary', async (t) => {
  const metrics = await catalogue()
  const alerts: string[] = []
  t.same(checkAlerts(readAlerts(), metrics, alerts), [], 'no problems')
  for (const name of [
    'DualstreamConstraintViolated',
    'DualstreamLambdaAtMax',
    'DualstreamTrainerLagging',
    'DualstreamTrainerNotAcknowledging',
    'DualstreamEngineNotProgressing',
    'DualstreamStaleRollouts',
    'DualstreamTelemetryFramesDropped',
    'DualstreamDiskFull',
    'DualstreamDiskNearReserve',
  ]) {
    t.ok(alerts.includes(name), name)
  }

  const text = readFileSync(ALERTS, 'utf8')
  const broken = (from: string, to: string, problem: RegExp) => {
    t.ok(text.includes(from), `the rules have ${from}`)
    t.match(checkAlerts(parseYaml(text.replace(from, to)), metrics).join('\n'), problem, `${from} → ${to} is caught`)
  }
  broken('dualstream_constraint_violated_steps >=', 'dualstream_constraint_violated_step >=', /dualstream_constraint_violated_step is not one/)
  broken('{{ $labels.constraint }} violated', '{{ $labels.constraints }} violated', /\$labels\.constraints is not a label/)
  broken('sum by (job, instance, reason)', 'sum by (job, instance)', /\$labels\.reason is not a label/)
  broken('severity: critical', 'severity: page', /severity page is not one of/)
  broken('for: 10m', 'for: ten minutes', /is not a duration/)
  broken('          summary: ', '          summry: ', /no summary annotation/)
  broken('- alert: DualstreamLambdaAtMax', '- alert: DualstreamConstraintViolated', /alert name repeated/)
  broken('- name: dualstream-trainer', '- name: dualstream-constraints', /group dualstream-constraints is repeated/)
  broken('expr: dualstream_disk_full == 1', 'expr: vector(1)', /uses no metric/)
  broken('expr: dualstream_disk_full == 1', 'expr: dualstream_disk_full ==', /unexpected end/)
  t.match(checkAlerts({ groups: [{ name: 'g', rules: [{ record: 'r', expr: 'dualstream_step' }] }] }, metrics).join('\n'), /g\/r: not an alert/)
  const bare = checkAlerts({ groups: [{ name: 'g', rules: [{ alert: 'A', expr: 'dualstream_step' }] }] }, metrics).join('\n')
  t.match(bare, /severity undefined/)
  t.match(bare, /no summary/)
  t.match(bare, /no description/)
})

t.test('promtool accepts the rules', async (t) => {
  const promtool = ['/usr/bin/promtool', ...(process.env.PATH ?? '').split(delimiter).map((dir) => join(dir, 'promtool'))].find((path) => {
    try {
      accessSync(path, constants.X_OK)
      return true
    } catch {
      return false
    }
  })
  if (promtool === undefined) {
    t.comment('promtool not found (Debian package prometheus): the rules were checked by the parser above only')
    return
  }
  t.match(execFileSync(promtool, ['check', 'rules', ALERTS], { encoding: 'utf8' }), /SUCCESS/, `${promtool} check rules`)
})
