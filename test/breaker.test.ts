// CircuitBreaker: every transition rule, with an injected clock (no timers, no sleeping).
import { strict as assert } from 'node:assert'
import { test } from 'node:test'
import { CircuitBreaker, type BreakerOptions, type BreakerState } from '../src/upstream/breaker.js'

/** Small numbers so each rule is reached in a few steps; each test overrides what it is about. */
const BASE: BreakerOptions = {
  consecutiveFailures: 3,
  failureRatio: 0,
  minRequests: 4,
  windowMs: 1000,
  openForMs: 100,
  maxOpenForMs: 100,
  halfOpenProbes: 1,
  closeAfter: 2
}

type Transition = [from: BreakerState, to: BreakerState, cause: string]

interface Rig {
  breaker: CircuitBreaker
  /** Every call of the transition listener, in order. */
  transitions: Transition[]
  /** Sets the injected clock, ms. */
  at: (ms: number) => void
}

function rig (options: Partial<BreakerOptions> = {}): Rig {
  let now = 0
  const transitions: Transition[] = []
  const breaker = new CircuitBreaker({ ...BASE, ...options }, (from, to, cause) => { transitions.push([from, to, cause]) }, () => now)
  return { breaker, transitions, at: ms => { now = ms } }
}

/** One request through the breaker as the proxy does it: admits(), acquire(), record(). */
function request (breaker: CircuitBreaker, ok: boolean, cause = ok ? 'status 200' : 'timeout'): void {
  assert.ok(breaker.admits(), `breaker (${breaker.state}) refused a request the test expected it to admit`)
  breaker.record(breaker.acquire(), ok, cause)
}

function requests (breaker: CircuitBreaker, n: number, ok: boolean): void {
  for (let i = 0; i < n; i++) request(breaker, ok)
}

/** Opens a closed breaker with consecutive failures (BASE: 3). */
function open (r: Rig): void {
  requests(r.breaker, 3, false)
  assert.equal(r.breaker.state, 'open')
}

// ---- closed → open --------------------------------------------------------------------------

test('closed: 3 failures in a row open it; a success in between starts the count again', () => {
  const { breaker, transitions } = rig()
  request(breaker, false)
  request(breaker, false)
  request(breaker, true)
  request(breaker, false)
  request(breaker, false)
  assert.equal(breaker.state, 'closed')
  assert.deepEqual(transitions, [])
  request(breaker, false, 'status 503')
  assert.equal(breaker.state, 'open')
  assert.equal(breaker.admits(), false)
  assert.deepEqual(transitions, [['closed', 'open', '3 consecutive failures, last: status 503']])
})

test('closed: consecutiveFailures 0 and failureRatio 0 turn both rules off: 100 failures leave it closed', () => {
  const { breaker, transitions } = rig({ consecutiveFailures: 0, failureRatio: 0 })
  requests(breaker, 100, false)
  assert.equal(breaker.state, 'closed')
  assert.equal(breaker.admits(), true)
  assert.deepEqual(transitions, [])
})

test('ratio: 4 of 4 failed opens it only once minRequests (4) are in the window; 3 of 3 does not', () => {
  const { breaker, transitions } = rig({ consecutiveFailures: 0, failureRatio: 0.5, minRequests: 4 })
  requests(breaker, 3, false)
  assert.equal(breaker.state, 'closed')
  request(breaker, false, 'reset')
  assert.equal(breaker.state, 'open')
  assert.deepEqual(transitions, [['closed', 'open', '4 of 4 requests failed in the window, last: reset']])
})

test('ratio: below failureRatio stays closed, reaching it exactly opens', () => {
  const { breaker, transitions } = rig({ consecutiveFailures: 0, failureRatio: 0.5, minRequests: 4 })
  requests(breaker, 3, true)
  request(breaker, false)
  request(breaker, false)
  // 2 of 5 = 0.4.
  assert.equal(breaker.state, 'closed')
  request(breaker, false)
  // 3 of 6 = 0.5.
  assert.equal(breaker.state, 'open')
  assert.deepEqual(transitions, [['closed', 'open', '3 of 6 requests failed in the window, last: timeout']])
})

test('ratio: requests older than the window slide out of it', () => {
  // Window 1000 ms in 10 buckets of 100 ms; ratio 0.6 of at least 4.
  const history = (r: Rig): void => {
    r.at(0)
    requests(r.breaker, 4, true)
    r.at(500)
    requests(r.breaker, 3, false)
    assert.equal(r.breaker.state, 'closed')
  }
  // Still inside the window: 4 of 8 = 0.5 < 0.6.
  const inside = rig({ consecutiveFailures: 0, failureRatio: 0.6, minRequests: 4 })
  history(inside)
  inside.at(999)
  request(inside.breaker, false)
  assert.equal(inside.breaker.state, 'closed')

  // At 1000 ms the bucket of the 4 successes has left: 4 of 4 failed.
  const slid = rig({ consecutiveFailures: 0, failureRatio: 0.6, minRequests: 4 })
  history(slid)
  slid.at(1000)
  request(slid.breaker, false)
  assert.equal(slid.breaker.state, 'open')
  assert.deepEqual(slid.transitions, [['closed', 'open', '4 of 4 requests failed in the window, last: timeout']])
})

test('ratio: failures that have all slid out no longer count towards minRequests', () => {
  const r = rig({ consecutiveFailures: 0, failureRatio: 0.5, minRequests: 4 })
  requests(r.breaker, 3, false)
  // A whole window later the bucket index of 0 ms is reused: its old counts must not come back.
  r.at(1000)
  request(r.breaker, false)
  r.at(1550)
  request(r.breaker, false)
  assert.equal(r.breaker.state, 'closed')
  request(r.breaker, false)
  request(r.breaker, false)
  assert.equal(r.breaker.state, 'open')
  assert.deepEqual(r.transitions, [['closed', 'open', '4 of 4 requests failed in the window, last: timeout']])
})

// ---- open → half-open -----------------------------------------------------------------------

test('open: admits nothing until openFor has passed; then the next request is a half-open probe', () => {
  const r = rig({ openForMs: 100 })
  r.at(1000)
  open(r)
  for (const ms of [1000, 1050, 1099]) {
    r.at(ms)
    assert.equal(r.breaker.admits(), false, `at ${ms} ms`)
    assert.equal(r.breaker.state, 'open')
  }
  r.at(1100)
  assert.equal(r.breaker.admits(), true)
  // Asking does not change the state; taking the request does.
  assert.equal(r.breaker.state, 'open')
  assert.equal(r.breaker.acquire(), true)
  assert.equal(r.breaker.state, 'half-open')
  assert.deepEqual(r.transitions.slice(1), [['open', 'half-open', 'open time elapsed']])
})

test('retryAfterMs: 0 while closed, the time left while open, 0 once it admits and while half-open', () => {
  const r = rig({ openForMs: 100 })
  assert.equal(r.breaker.retryAfterMs(), 0)
  r.at(1000)
  open(r)
  assert.equal(r.breaker.retryAfterMs(), 100)
  r.at(1060)
  assert.equal(r.breaker.retryAfterMs(), 40)
  r.at(1100)
  assert.equal(r.breaker.retryAfterMs(), 0)
  r.at(5000)
  assert.equal(r.breaker.retryAfterMs(), 0)
  r.breaker.acquire()
  assert.equal(r.breaker.state, 'half-open')
  assert.equal(r.breaker.retryAfterMs(), 0)
})

// ---- half-open ------------------------------------------------------------------------------

test('half-open: at most halfOpenProbes (2) probes at once; a finished probe frees its slot', () => {
  const r = rig({ halfOpenProbes: 2, closeAfter: 3 })
  open(r)
  r.at(100)
  assert.equal(r.breaker.admits(), true)
  const first = r.breaker.acquire()
  assert.equal(r.breaker.admits(), true)
  const second = r.breaker.acquire()
  assert.deepEqual([first, second], [true, true])
  assert.equal(r.breaker.admits(), false)
  r.breaker.record(first, true, 'status 200')
  assert.equal(r.breaker.state, 'half-open')
  assert.equal(r.breaker.admits(), true)
  r.breaker.acquire()
  assert.equal(r.breaker.admits(), false)
})

test('half-open: closeAfter (2) successful probes close it; after that requests are no probes', () => {
  const r = rig({ closeAfter: 2 })
  open(r)
  r.at(100)
  request(r.breaker, true)
  assert.equal(r.breaker.state, 'half-open')
  request(r.breaker, true)
  assert.equal(r.breaker.state, 'closed')
  assert.deepEqual(r.transitions.slice(2), [['half-open', 'closed', '2 probes succeeded']])
  assert.equal(r.breaker.admits(), true)
  assert.equal(r.breaker.acquire(), false)
})

test('closing forgets the failures before it: it takes 3 new failures in a row to open again', () => {
  const r = rig()
  request(r.breaker, true)
  open(r)
  r.at(100)
  requests(r.breaker, 2, true)
  assert.equal(r.breaker.state, 'closed')
  requests(r.breaker, 2, false)
  assert.equal(r.breaker.state, 'closed')
  request(r.breaker, false)
  assert.equal(r.breaker.state, 'open')
})

test('closing clears the ratio window: the failures that opened it do not count again', () => {
  const r = rig({ consecutiveFailures: 0, failureRatio: 0.5, minRequests: 4 })
  requests(r.breaker, 4, false)
  assert.equal(r.breaker.state, 'open')
  r.at(100)
  requests(r.breaker, 2, true)
  assert.equal(r.breaker.state, 'closed')
  // Within the same window: had the 4 failures stayed, 1 more would make 5 of 5.
  r.at(200)
  request(r.breaker, false)
  assert.equal(r.breaker.state, 'closed')
})

test('a failed probe after a successful one: the next half-open period needs closeAfter (2) successes again', () => {
  const r = rig({ closeAfter: 2 })
  open(r)
  r.at(100)
  request(r.breaker, true)
  request(r.breaker, false)
  assert.equal(r.breaker.state, 'open')
  r.at(200)
  request(r.breaker, true)
  assert.equal(r.breaker.state, 'half-open')
  request(r.breaker, true)
  assert.equal(r.breaker.state, 'closed')
})

test('a failed probe re-opens it with openFor doubled per re-open (100, 200, 400), capped at maxOpenFor (400)', () => {
  const r = rig({ openForMs: 100, maxOpenForMs: 400 })
  open(r)
  assert.equal(r.breaker.retryAfterMs(), 100)
  let now = 100
  for (const openFor of [200, 400, 400, 400]) {
    r.at(now)
    request(r.breaker, false, 'status 502')
    assert.equal(r.breaker.state, 'open')
    assert.equal(r.breaker.retryAfterMs(), openFor)
    r.at(now + openFor - 1)
    assert.equal(r.breaker.admits(), false)
    now += openFor
  }
  assert.deepEqual(r.transitions.slice(0, 3), [
    ['closed', 'open', '3 consecutive failures, last: timeout'],
    ['open', 'half-open', 'open time elapsed'],
    ['half-open', 'open', 'probe failed: status 502']
  ])
})

test('maxOpenFor equal to openFor (the default) or below it: every open lasts openFor', () => {
  for (const maxOpenForMs of [100, 50]) {
    const r = rig({ openForMs: 100, maxOpenForMs })
    open(r)
    for (let i = 1; i <= 3; i++) {
      r.at(i * 100)
      request(r.breaker, false)
      assert.equal(r.breaker.retryAfterMs(), 100, `maxOpenFor ${maxOpenForMs}, re-open ${i}`)
    }
  }
})

test('the doubling starts over after the breaker closed', () => {
  const r = rig({ openForMs: 100, maxOpenForMs: 1000 })
  open(r)
  r.at(100)
  request(r.breaker, false)
  assert.equal(r.breaker.retryAfterMs(), 200)
  r.at(300)
  requests(r.breaker, 2, true)
  assert.equal(r.breaker.state, 'closed')
  open(r)
  assert.equal(r.breaker.retryAfterMs(), 100)
  // And the first failed probe after that doubles from 100 again.
  r.at(400)
  request(r.breaker, false)
  assert.equal(r.breaker.retryAfterMs(), 200)
})

// ---- late results, release ------------------------------------------------------------------

test('results of requests sent while closed that arrive after it opened are ignored', () => {
  const r = rig({ closeAfter: 2 })
  // Five requests go out while closed; three fail and open the breaker.
  const sent = [0, 1, 2, 3, 4].map(() => { assert.ok(r.breaker.admits()); return r.breaker.acquire() })
  assert.deepEqual(sent, [false, false, false, false, false])
  for (let i = 0; i < 3; i++) r.breaker.record(false, false, 'timeout')
  assert.equal(r.breaker.state, 'open')
  // A late failure does not re-open or extend it, a late success does not close it.
  r.at(50)
  r.breaker.record(false, false, 'timeout')
  assert.equal(r.breaker.state, 'open')
  assert.equal(r.breaker.retryAfterMs(), 50)
  // Half-open: a late success does not count as a probe success, a late failure does not re-open.
  r.at(100)
  request(r.breaker, true)
  r.breaker.record(false, true, 'status 200')
  assert.equal(r.breaker.state, 'half-open')
  r.breaker.record(false, false, 'timeout')
  assert.equal(r.breaker.state, 'half-open')
  request(r.breaker, true)
  assert.equal(r.breaker.state, 'closed')
  assert.deepEqual(r.transitions.map(([from, to]) => `${from}→${to}`), ['closed→open', 'open→half-open', 'half-open→closed'])
})

test('a probe whose result arrives after another probe re-opened it: ignored, and its slot is freed', () => {
  const r = rig({ halfOpenProbes: 2, closeAfter: 1 })
  open(r)
  r.at(100)
  const a = r.breaker.acquire()
  const b = r.breaker.acquire()
  r.breaker.record(a, false, 'reset')
  assert.equal(r.breaker.state, 'open')
  r.breaker.record(b, true, 'status 200')
  assert.equal(r.breaker.state, 'open')
  // Both slots are free for the next half-open period.
  r.at(100 + 100)
  assert.equal(r.breaker.acquire(), true)
  assert.equal(r.breaker.admits(), true)
  assert.equal(r.breaker.acquire(), true)
  assert.equal(r.breaker.admits(), false)
})

test('release() frees a probe slot with no verdict: neither a success nor a failure', () => {
  const r = rig({ closeAfter: 2 })
  open(r)
  r.at(100)
  const probe = r.breaker.acquire()
  assert.equal(r.breaker.admits(), false)
  r.breaker.release(probe)
  assert.equal(r.breaker.state, 'half-open')
  assert.equal(r.breaker.admits(), true)
  // Not a success: two more successful probes are still needed.
  request(r.breaker, true)
  assert.equal(r.breaker.state, 'half-open')
  request(r.breaker, true)
  assert.equal(r.breaker.state, 'closed')
  assert.equal(r.transitions.length, 3)
})

test('release() of a closed-state request: the consecutive-failure count goes on as if it never happened', () => {
  const r = rig()
  requests(r.breaker, 2, false)
  r.breaker.release(r.breaker.acquire())
  assert.equal(r.breaker.state, 'closed')
  request(r.breaker, false)
  assert.equal(r.breaker.state, 'open')
})

// ---- listener, configure --------------------------------------------------------------------

test('the transition listener gets (from, to, cause) once per transition over a full cycle', () => {
  const r = rig({ openForMs: 100, maxOpenForMs: 400, closeAfter: 2 })
  requests(r.breaker, 3, false)
  r.at(100)
  request(r.breaker, false, 'connect-failure')
  r.at(300)
  request(r.breaker, true)
  request(r.breaker, true)
  assert.deepEqual(r.transitions, [
    ['closed', 'open', '3 consecutive failures, last: timeout'],
    ['open', 'half-open', 'open time elapsed'],
    ['half-open', 'open', 'probe failed: connect-failure'],
    ['open', 'half-open', 'open time elapsed'],
    ['half-open', 'closed', '2 probes succeeded']
  ])
})

test('configure(): new settings keep the state; the next open uses the new openFor', () => {
  const r = rig({ consecutiveFailures: 3, openForMs: 100 })
  // The count of failures in a row survives a configure().
  requests(r.breaker, 2, false)
  r.breaker.configure({ ...BASE, consecutiveFailures: 3, openForMs: 1000, maxOpenForMs: 1000 })
  assert.equal(r.breaker.state, 'closed')
  request(r.breaker, false)
  assert.equal(r.breaker.state, 'open')
  assert.equal(r.breaker.retryAfterMs(), 1000)
  // An open breaker stays open, until the same instant, across a configure().
  r.at(400)
  r.breaker.configure({ ...BASE, openForMs: 50, maxOpenForMs: 50, halfOpenProbes: 2 })
  assert.equal(r.breaker.state, 'open')
  assert.equal(r.breaker.retryAfterMs(), 600)
  assert.equal(r.breaker.admits(), false)
  // Half-open now allows the new halfOpenProbes (2).
  r.at(1000)
  r.breaker.acquire()
  assert.equal(r.breaker.admits(), true)
  assert.equal(r.transitions.length, 2)
})
