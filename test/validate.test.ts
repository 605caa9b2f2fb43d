import fc from 'fast-check'
import t from 'tap'
import { DEFAULT_LIMITS, formatFieldError, validateRollout } from '../src/core/validate.js'

t.test('a good rollout comes back clean, with only the known fields', (t) => {
  const result = validateRollout({
    id: 'r1',
    promptId: 'p1',
    rewards: { accuracy: 1, judge: null, skip: undefined },
    policyVersion: 3,
    groupSize: 8,
    ts: 12.5,
    payload: { tokens: [1, 2] },
    seq: 99,
    extra: true,
  })
  t.same(result, {
    ok: true,
    rollout: {
      id: 'r1',
      promptId: 'p1',
      rewards: { accuracy: 1, judge: null, skip: null },
      policyVersion: 3,
      groupSize: 8,
      ts: 12.5,
      payload: { tokens: [1, 2] },
    },
  })
  t.same(validateRollout({ id: 'r', promptId: 'p', rewards: {}, policyVersion: null, groupSize: null, ts: null }), {
    ok: true,
    rollout: { id: 'r', promptId: 'p', rewards: {} },
  })
  t.end()
})

t.test('every problem is reported with the id and the field', (t) => {
  const result = validateRollout({
    id: 'r9',
    promptId: '',
    rewards: { accuracy: NaN, c: Infinity, d: '1', e: [1] },
    policyVersion: -1,
    groupSize: 1.5,
    ts: 'now',
  })
  t.same(result, {
    ok: false,
    errors: [
      { id: 'r9', field: 'promptId', reason: 'must be a non-empty string' },
      { id: 'r9', field: 'rewards.accuracy', reason: 'not a finite number (NaN)' },
      { id: 'r9', field: 'rewards.c', reason: 'not a finite number (Infinity)' },
      { id: 'r9', field: 'rewards.d', reason: 'must be a finite number or null, got the string "1"' },
      { id: 'r9', field: 'rewards.e', reason: 'must be a finite number or null, got an array' },
      { id: 'r9', field: 'policyVersion', reason: 'must be an integer >= 0, got -1' },
      { id: 'r9', field: 'groupSize', reason: 'must be an integer >= 1, got 1.5' },
      { id: 'r9', field: 'ts', reason: 'must be a finite number (ms), got the string "now"' },
    ],
  })
  t.same(validateRollout({ id: 7, promptId: 'p', rewards: null }), {
    ok: false,
    errors: [
      { field: 'id', reason: 'must be a non-empty string, got 7' },
      { field: 'rewards', reason: 'must be an object of channel → number | null, got null' },
    ],
  })
  t.same(validateRollout([1]), { ok: false, errors: [{ field: '(rollout)', reason: 'must be an object, got an array' }] })
  t.same(validateRollout('x'.repeat(50)), { ok: false, errors: [{ field: '(rollout)', reason: `must be an object, got the string "${'x'.repeat(40)}…"` }] })
  t.end()
})

t.test('hostile sizes cost no more than normal ones', (t) => {
  const long = 'x'.repeat(DEFAULT_LIMITS.maxIdLength + 1)
  const wide = Object.fromEntries(Array.from({ length: DEFAULT_LIMITS.maxChannels + 1 }, (_, i) => [`c${i}`, 1]))
  const result = validateRollout({ id: long, promptId: 'p', rewards: wide })
  t.same(result, {
    ok: false,
    errors: [
      { field: 'id', reason: `is ${long.length} characters long, at most 512 are accepted` },
      { field: 'rewards', reason: 'has 257 channels, at most 256 are accepted' },
    ],
  })
  t.end()
})

t.test('formatFieldError', (t) => {
  t.equal(
    formatFieldError({ id: 'r9', field: 'rewards.accuracy', reason: 'not a finite number (NaN)' }),
    'rollout "r9": rewards.accuracy: not a finite number (NaN)',
  )
  t.equal(formatFieldError({ field: 'id', reason: 'missing' }), 'rollout: id: missing')
  t.end()
})

t.test('never throws, whatever arrives', (t) => {
  fc.assert(
    fc.property(fc.anything({ withTypedArray: true, withMap: true, withSet: true, withBigInt: true, withNullPrototype: true }), (value) => {
      const result = validateRollout(value)
      return result.ok === true || result.errors.length > 0
    }),
  )
  t.end()
})

t.test('adopting a clean item returns it as it is; anything else gives exactly what the copying path gives', (t) => {
  const clean = { id: 'r', promptId: 'p', rewards: { a: 1, b: null }, policyVersion: 2, groupSize: 4, ts: 5 }
  const adopted = validateRollout(clean, DEFAULT_LIMITS, true)
  t.ok(adopted.ok && adopted.rollout === clean)
  fc.assert(
    fc.property(
      fc.record(
        {
          id: fc.oneof(fc.string(), fc.integer()),
          promptId: fc.oneof(fc.string({ minLength: 1 }), fc.constant(null)),
          rewards: fc.oneof(fc.dictionary(fc.string(), fc.oneof(fc.double(), fc.constant(null), fc.constant(undefined), fc.string())), fc.constant([])),
          policyVersion: fc.oneof(fc.integer({ min: -2, max: 5 }), fc.constant(null), fc.double()),
          groupSize: fc.oneof(fc.integer({ min: -1, max: 9 }), fc.constant(null)),
          ts: fc.oneof(fc.double(), fc.constant('now'), fc.constant(null)),
        },
        { requiredKeys: ['id', 'promptId', 'rewards'] },
      ),
      (item) => {
        const copied = validateRollout(item)
        const viaAdopt = validateRollout(item, DEFAULT_LIMITS, true)
        if (!copied.ok || !viaAdopt.ok) return JSON.stringify(copied) === JSON.stringify(viaAdopt)
        return JSON.stringify(copied.rollout) === JSON.stringify({ ...viaAdopt.rollout })
      },
    ),
  )
  t.same(
    validateRollout({ id: 'r', promptId: 'p', rewards: Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`c${i}`, 1])) }, DEFAULT_LIMITS, true).ok,
    false,
  )
  t.end()
})
