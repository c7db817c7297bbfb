// Retry policy: which tries may be repeated, the jittered backoff, Retry-After, and the budget.
import { strict as assert } from 'node:assert'
import { test } from 'node:test'
import { backoffMs, retryable, retryAfterMs, RetryBudget, type TryFailure } from '../src/upstream/retry.js'

/** The route-file default of retry.on. */
const DEFAULT_ON: ReadonlyArray<TryFailure | number> = ['connect-failure', 'reset', 'timeout', 502, 503, 504]
const IDEMPOTENT = ['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE']

// ---- retryable ------------------------------------------------------------------------------

test('POST and PATCH after a connect failure: retried (the request never left)', () => {
  for (const method of ['POST', 'PATCH']) assert.equal(retryable(method, 'connect-failure', DEFAULT_ON), true, method)
})

test('POST and PATCH after a 502, 503, 504, reset or timeout: not retried (they may have reached the upstream)', () => {
  for (const method of ['POST', 'PATCH']) {
    for (const why of ['reset', 'timeout', 502, 503, 504] as const) {
      assert.equal(retryable(method, why, DEFAULT_ON), false, `${method} ${why}`)
    }
  }
})

test('idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE): retried on every configured condition', () => {
  for (const method of IDEMPOTENT) {
    for (const why of DEFAULT_ON) assert.equal(retryable(method, why, DEFAULT_ON), true, `${method} ${why}`)
  }
})

test('a condition not in retry.on is never retried, whatever the method', () => {
  for (const method of [...IDEMPOTENT, 'POST']) {
    for (const why of [500, 501, 505, 599]) assert.equal(retryable(method, why, DEFAULT_ON), false, `${method} ${why}`)
  }
  // A narrower list: only what it names.
  const on: ReadonlyArray<TryFailure | number> = ['timeout', 500]
  assert.equal(retryable('GET', 'timeout', on), true)
  assert.equal(retryable('GET', 500, on), true)
  assert.equal(retryable('GET', 503, on), false)
  assert.equal(retryable('GET', 'reset', on), false)
  assert.equal(retryable('GET', 'connect-failure', on), false)
  assert.equal(retryable('POST', 'connect-failure', on), false)
  // retry.on: [] turns retries off.
  for (const why of DEFAULT_ON) assert.equal(retryable('GET', why, []), false, String(why))
})

// ---- backoffMs ------------------------------------------------------------------------------

const BACKOFF = { backoffMs: 25, maxBackoffMs: 250 }

test('backoff with random() 0: no wait, for every retry number', () => {
  for (let retry = 1; retry <= 10; retry++) assert.equal(backoffMs(retry, BACKOFF, () => 0), 0, `retry ${retry}`)
})

test('backoff with random() 0.999: just under min(cap, base × 2^(retry-1)): 24, 49, 99, 199, then 249 at the cap', () => {
  const got = [1, 2, 3, 4, 5, 6, 10].map(retry => backoffMs(retry, BACKOFF, () => 0.999))
  assert.deepEqual(got, [24, 49, 99, 199, 249, 249, 249])
})

test('backoff stays within [0, min(cap, base × 2^(retry-1))) and is whole milliseconds, over evenly spread randoms', () => {
  for (let retry = 1; retry <= 8; retry++) {
    const ceiling = Math.min(250, 25 * 2 ** (retry - 1))
    const seen = new Set<number>()
    for (let i = 0; i < 1000; i++) {
      const ms = backoffMs(retry, BACKOFF, () => i / 1000)
      assert.ok(Number.isInteger(ms) && ms >= 0 && ms < ceiling, `retry ${retry}, random ${i / 1000}: ${ms}`)
      seen.add(ms)
    }
    // Full jitter: every whole millisecond below the ceiling is reachable.
    assert.equal(seen.size, ceiling, `retry ${retry}`)
  }
})

test('backoff cap below the base: the cap wins from the first retry', () => {
  assert.equal(backoffMs(1, { backoffMs: 100, maxBackoffMs: 40 }, () => 0.5), 20)
})

// ---- retryAfterMs ---------------------------------------------------------------------------

const NOW = Date.parse('Wed, 21 Oct 2015 07:28:00 GMT')

test('Retry-After in seconds: 0, 3 and 120 give 0, 3000 and 120000 ms', () => {
  assert.equal(retryAfterMs('0', NOW), 0)
  assert.equal(retryAfterMs('3', NOW), 3000)
  assert.equal(retryAfterMs('120', NOW), 120_000)
})

test('Retry-After as an HTTP-date: the time until then; a date in the past gives 0', () => {
  assert.equal(retryAfterMs('Wed, 21 Oct 2015 07:28:05 GMT', NOW), 5000)
  assert.equal(retryAfterMs('Wed, 21 Oct 2015 08:28:00 GMT', NOW), 3_600_000)
  // The obsolete RFC 850 form (RFC 9110 §5.6.7) is understood too.
  assert.equal(retryAfterMs('Wednesday, 21-Oct-15 07:28:10 GMT', NOW), 10_000)
  assert.equal(retryAfterMs('Tue, 20 Oct 2015 07:28:00 GMT', NOW), 0)
  assert.equal(retryAfterMs('Wed, 21 Oct 2015 07:28:00 GMT', NOW), 0)
})

test('Retry-After that is neither seconds nor a date (soon, empty, 10 seconds, 1e3): undefined', () => {
  for (const value of ['soon', '', '10 seconds', '1e3', '0x10', 'Tuesday']) {
    assert.equal(retryAfterMs(value, NOW), undefined, JSON.stringify(value))
  }
})

test('Retry-After with a fraction or a sign (1.5, -1, +3): undefined, not read as a date', () => {
  for (const value of ['1.5', '-1', '+3']) {
    assert.equal(retryAfterMs(value, NOW), undefined, JSON.stringify(value))
  }
})

test('Retry-After repeated (an array) or absent: undefined', () => {
  assert.equal(retryAfterMs(['3', '4'], NOW), undefined)
  assert.equal(retryAfterMs(['3'], NOW), undefined)
  assert.equal(retryAfterMs(undefined, NOW), undefined)
})

// ---- RetryBudget ----------------------------------------------------------------------------

test('budget of a quiet upstream: the floor of 3 retries at once, a 4th is refused', () => {
  const budget = new RetryBudget(0.2)
  assert.equal(budget.active, 0)
  assert.equal(budget.denied, 0)
  for (let retrying = 0; retrying < 3; retrying++) {
    budget.retrying = retrying
    assert.equal(budget.allows(), true, `${retrying} retrying`)
  }
  budget.retrying = 3
  assert.equal(budget.allows(), false)
  // 10 active × 0.2 = 2, still below the floor.
  budget.active = 10
  assert.equal(budget.allows(), false)
  budget.retrying = 2
  assert.equal(budget.allows(), true)
})

test('budget of a busy upstream: share × active (100 × 0.2 = 20) retries at once', () => {
  const budget = new RetryBudget(0.2)
  budget.active = 100
  budget.retrying = 19
  assert.equal(budget.allows(), true)
  budget.retrying = 20
  assert.equal(budget.allows(), false)
  // 20 active × 0.2 = 4: above the floor, so a 4th retry fits but not a 5th.
  budget.active = 20
  budget.retrying = 3
  assert.equal(budget.allows(), true)
  budget.retrying = 4
  assert.equal(budget.allows(), false)
})

test('budget share changed by a reload applies at once; share 0 leaves only the floor', () => {
  const budget = new RetryBudget(0.2)
  budget.active = 100
  budget.retrying = 30
  assert.equal(budget.allows(), false)
  budget.share = 0.5
  assert.equal(budget.allows(), true)
  budget.share = 0
  budget.retrying = 2
  assert.equal(budget.allows(), true)
  budget.retrying = 3
  assert.equal(budget.allows(), false)
})

test('budget with floor 0 and no active requests: no retry fits', () => {
  const budget = new RetryBudget(0.2, 0)
  assert.equal(budget.allows(), false)
  budget.active = 5
  assert.equal(budget.allows(), true)
  budget.retrying = 1
  assert.equal(budget.allows(), false)
})
