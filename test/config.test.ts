import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { ConfigError, configChannels, formatPath, loadConfig, parseConfig } from '../src/core/config.js'

const minimal = { groupSize: 8, batchGroups: 16, objectives: [{ channel: 'accuracy' }] }

t.test('defaults are GRPO: group centre and scale, sample std, eps 1e-6, decoupled aggregation', (t) => {
  const config = parseConfig(minimal)
  t.same(config.normalize, { center: 'group', scale: 'group', std: 'sample', eps: 1e-6, minStd: 1e-6 })
  t.equal(config.aggregation, 'normalize-then-sum')
  t.equal(config.scaleByLambda, false)
  t.equal(config.whiten, 'none')
  t.equal(config.minGroupSize, 2)
  t.same(config.constraints, [])
  t.same(config.objectives, [{ channel: 'accuracy', weight: 1, normalize: config.normalize }])
  t.equal(parseConfig({ ...minimal, groupSize: 1 }).minGroupSize, 1)
  t.end()
})

t.test("the issue's example config, with per-channel overrides and every dual rule", (t) => {
  const config = parseConfig({
    ...minimal,
    normalize: { center: 'group', scale: 'group', std: 'sample', eps: 1e-6, minStd: 1e-6 },
    objectives: [{ channel: 'accuracy', weight: 1, normalize: { scale: 'none' } }],
    constraints: [
      { channel: 'consistency', sense: '>=', threshold: 0.95, sampleThreshold: 0.5, window: 1, dual: { rule: 'sgd', lr: 0.05, init: 0, max: 10 } },
      { channel: 'grounding', sense: '>=', threshold: 0.9, dual: { rule: 'pid' } },
      { channel: 'length', sense: '<=', threshold: 200, window: 4, normalize: { std: 'population' }, dual: { rule: 'log', lr: 0.01 } },
    ],
  })
  t.equal(config.objectives[0].normalize.scale, 'none')
  t.equal(config.objectives[0].normalize.center, 'group', 'an override replaces only the fields it names')
  const [sgd, pid, log] = config.constraints
  t.same(sgd.dual, { rule: 'sgd', lr: 0.05, init: 0, max: 10 })
  t.equal(pid.sampleThreshold, 0.9, 'sampleThreshold defaults to the threshold')
  t.same(pid.dual, { rule: 'pid', kp: 0.1, ki: 0.01, kd: 0.01, alphaP: 0.95, alphaD: 0.95, delay: 10, init: 0.001, max: Infinity })
  t.same(log.dual, { rule: 'log', lr: 0.01, init: 1, max: Infinity })
  t.equal(log.normalize.std, 'population')
  t.same(configChannels(config), ['accuracy', 'consistency', 'grounding', 'length'])
  t.end()
})

t.test('a bad config is refused with every problem listed by path', (t) => {
  const error = t.throws(() =>
    parseConfig(
      {
        groupSize: 4,
        minGroupSize: 5,
        batchGroups: 0,
        normalize: { center: 'middle' },
        objectives: [{ channel: 'accuracy' }, { channel: 'accuracy' }],
        constraints: [
          { channel: 'c', sense: '>=', threshold: 1, dual: { rule: 'sgd', lr: 0.1, init: 5, max: 1 } },
          { channel: 'd', sense: '>=', threshold: 1, treshold: 2, dual: { rule: 'sgd', lr: 0 } },
          { channel: 'e', sense: '>=', threshold: 1, dual: { rule: 'pid', alphaP: 1, delay: 0.5 } },
          { channel: 'f', sense: '>=', threshold: 1, dual: { rule: 'adam' } },
        ],
      },
      'fgrpo.json',
    ),
  ) as ConfigError
  t.type(error, ConfigError)
  t.same(
    error.problems.sort(),
    [
      'batchGroups: must be >= 1',
      'constraints[1]: Unrecognized key: "treshold"',
      'constraints[1].dual.lr: must be > 0',
      'constraints[2].dual.alphaP: must be in [0, 1)',
      'constraints[2].dual.delay: must be an integer',
      "constraints[3].dual.rule: Invalid discriminator value. Expected 'sgd' | 'log' | 'pid'",
      'normalize.center: Invalid option: expected one of "group"|"batch"',
    ].sort(),
  )
  t.match(error.message, /^invalid fgrpo\.json:\n {2}/)
  // cross-field checks run once the shape is valid
  const cross = t.throws(() =>
    parseConfig({
      groupSize: 4,
      minGroupSize: 5,
      batchGroups: 1,
      objectives: [{ channel: 'accuracy' }, { channel: 'accuracy' }],
      constraints: [{ channel: 'c', sense: '>=', threshold: 1, dual: { rule: 'sgd', lr: 0.1, init: 5, max: 1 } }],
    }),
  ) as ConfigError
  t.same(cross.problems, [
    'minGroupSize: must be <= groupSize (4)',
    'objectives[1].channel: channel "accuracy" is already used by objectives.0',
    'constraints[0].dual.init: must be <= dual.max (1)',
  ])
  t.same((t.throws(() => parseConfig([])) as ConfigError).problems, ['(root): Invalid input: expected object, received array'])
  t.same((t.throws(() => parseConfig({ groupSize: 2, batchGroups: 1, objectives: [{ channel: '__proto__' }] })) as ConfigError).problems, [
    'objectives[0].channel: "__proto__" cannot name a channel (it is the prototype accessor of JavaScript objects)',
  ])
  t.end()
})

t.test('formatPath', (t) => {
  t.equal(formatPath(['constraints', 1, 'dual', 'lr']), 'constraints[1].dual.lr')
  t.equal(formatPath([]), '(root)')
  t.end()
})

t.test('loadConfig names the file in every error', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dualstream-config-'))
  const good = join(dir, 'good.json')
  writeFileSync(good, JSON.stringify(minimal))
  t.equal(loadConfig(good).groupSize, 8)
  const broken = join(dir, 'broken.json')
  writeFileSync(broken, '{ "groupSize": ')
  t.throws(() => loadConfig(broken), { name: 'ConfigError', message: new RegExp(`invalid ${broken}:\\n  not valid JSON`) })
  t.throws(() => loadConfig(join(dir, 'missing.json')), { message: /missing\.json:\n {2}cannot read: ENOENT/ })
  t.end()
})
