// Resilience end to end: a real gateway process in front of real upstream servers that refuse,
// recover, hang, answer 503, reset, or stall mid-body. One gateway serves the whole file; each
// case adds its own route file (its own upstream name, so its log lines and metrics are its own)
// and reloads. Route settings are small (breakers that open after 2 failures for 500 ms, 1 ms
// backoff) so the whole file stays fast.
import { strict as assert } from 'node:assert'
import { once } from 'node:events'
import http from 'node:http'
import { after, before, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import {
  closedPort, echo, metric, removeDir, routeDir, send, startGateway, until, upstream, within, writeRoutes, type GatewayProcess, type Reply, type Upstream, type UpstreamHandler
} from './helpers.js'

// ---- fixtures ---------------------------------------------------------------------------------

interface TargetSpec {
  url: string
  weight?: number
  maxConnections?: number
}

/** A route file for upstream `name`, served on /name, with these extra keys (retry, circuitBreaker, ...). */
function upstreamFile (name: string, targets: TargetSpec[], settings: Record<string, unknown> = {}): string {
  return JSON.stringify({ name, targets, routes: [{ path: `/${name}` }], ...settings })
}

/** Breakers that never open: for cases about retries alone. */
const NO_BREAKER = { consecutiveFailures: 0, failureRatio: 0 }

/**
 * Weights that make the first try go to the first target (its draw wins with probability
 * 1 - 1e-6, and on a tie the first draw wins); a retry, which excludes the target already
 * tried, then goes to the second.
 */
const FIRST = 1000
const SECOND = 0.001

let shared: GatewayProcess | undefined
let tableVersion = 1

before(async () => {
  // Reloads only when told (SIGUSR1), so each case knows which table version carries its file.
  // Breaker transitions between open and half-open are logged at debug: these cases read every one.
  shared = await startGateway(await routeDir(), { WATCH_ROUTES: 'false', LOG_LEVEL: 'debug' })
})

after(async () => {
  if (shared === undefined) return
  await shared.stop()
  await removeDir(shared.routesDir)
})

/** The shared gateway, once it serves these route files (added with a reload). */
async function gateway (files: Record<string, string>): Promise<GatewayProcess> {
  const gw = shared!
  await writeRoutes(gw.routesDir, files)
  const version = ++tableVersion
  gw.signal('SIGUSR1')
  const reloaded = await gw.waitForLog(l => l.msg === 'route table reloaded' && l.version === version)
  assert.deepEqual(reloaded.failed, [])
  assert.deepEqual([...reloaded.applied as string[]].sort(), Object.keys(files).sort())
  return gw
}

/** Answers 503, with a Retry-After when given. */
function unavailable (retryAfter?: string): UpstreamHandler {
  return (_req, res) => {
    res.statusCode = 503
    if (retryAfter !== undefined) res.setHeader('retry-after', retryAfter)
    res.setHeader('content-type', 'text/plain')
    res.end('upstream busy')
  }
}

/** Closes the connection once the whole request has arrived: no response at all. */
const reset: UpstreamHandler = req => { req.socket.destroy() }

/** Never answers. */
const hang: UpstreamHandler = () => {}

/** Sends the headers (Content-Length 1000) and 500 bytes of body, then nothing more. */
const stallMidBody: UpstreamHandler = (_req, res) => {
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '1000' })
  res.write('x'.repeat(500))
}

type Answer = 'echo' | '503'

/**
 * An upstream behaviour the test switches while it runs: answer (echo or 503) at once, or hold
 * each request until released. One Switch may serve several upstream servers.
 */
class Switch {
  mode: Answer | 'hold' = 'echo'
  /** Requests that arrived while holding. */
  arrived = 0
  private readonly held: Array<(how: Answer) => void> = []

  readonly handler: UpstreamHandler = (req, res, body, seen) => {
    if (this.mode !== 'hold') return this.answer(this.mode, req, res, body, seen)
    this.arrived++
    this.held.push(how => { this.answer(how, req, res, body, seen) })
  }

  get holding (): number {
    return this.held.length
  }

  /** Answers every held request `how`; later arrivals get `mode`. */
  release (how: Answer, mode: Answer | 'hold' = how): void {
    this.mode = mode
    for (const answer of this.held.splice(0)) answer(how)
  }

  private answer (how: Answer, ...args: Parameters<UpstreamHandler>): void {
    // Both answer synchronously.
    if (how === 'echo') echo(...args)
    else unavailable()(...args)
  }
}

// ---- client -----------------------------------------------------------------------------------

/** A request whose response the test reads by hand (or abandons). */
async function open (gw: GatewayProcess, path: string): Promise<{ req: http.ClientRequest, res: Promise<http.IncomingMessage> }> {
  const req = http.get({ host: '127.0.0.1', port: gw.port, path, agent: false })
  req.on('error', () => {}) // the test destroys it on purpose
  const res = once(req, 'response').then(([res]) => res as http.IncomingMessage)
  res.catch(() => {}) // a test that aborts before the response never awaits it
  return { req, res }
}

function assert200 (reply: Reply): void {
  assert.equal(reply.status, 200, `expected 200, got ${reply.status}: ${reply.body}`)
}

function assertGatewayError (reply: Reply, status: number, code: string): void {
  assert.equal(reply.status, status, reply.body)
  assert.equal(reply.json.statusCode, status)
  assert.equal(reply.json.code, code)
}

// ---- observation ------------------------------------------------------------------------------

/** The `from → to` of every breaker transition logged for this target, in order. */
function transitions (gw: GatewayProcess, upstreamName: string, target: string): string[] {
  return gw.logs
    .filter(l => l.msg === 'circuit breaker state changed' && l.upstream === upstreamName && l.target === target)
    .map(l => `${String(l.from)} → ${String(l.to)}`)
}

function breakerLog (gw: GatewayProcess, upstreamName: string, target: string, to: string): Record<string, unknown> | undefined {
  return gw.logs.find(l => l.msg === 'circuit breaker state changed' && l.upstream === upstreamName && l.target === target && l.to === to)
}

/**
 * Sends requests one at a time (each must succeed) until `target`'s breaker is in state `to`,
 * and waits for the log line of that transition; at most `max` requests. Returns how many were sent.
 */
async function driveUntil (gw: GatewayProcess, upstreamName: string, target: string, to: 'open' | 'half-open' | 'closed', request: (i: number) => Promise<Reply>, max = 100, pauseMs = 0): Promise<number> {
  // The state is read from /metrics, which tells it as it is at the scrape; log lines are written
  // asynchronously and may arrive after the next request has gone out.
  const state = { closed: 0, open: 1, 'half-open': 2 }[to]
  for (let i = 0; i < max; i++) {
    if (await metric(gw, 'circuit_breaker_state', { upstream: upstreamName, target }) === state) {
      await gw.waitForLog(l => l.msg === 'circuit breaker state changed' && l.upstream === upstreamName && l.target === target && l.to === to)
      return i
    }
    assert200(await request(i))
    if (pauseMs > 0) await sleep(pauseMs)
  }
  throw new Error(`${target} of ${upstreamName} never went ${to} in ${max} requests; transitions: ${transitions(gw, upstreamName, target).join(', ')}`)
}

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)] as number
}

const CASE = { timeout: 15_000 }

// ---- a dead target ----------------------------------------------------------------------------

for (const method of ['GET', 'POST']) {
  test(`a dead target of two: every ${method} gets 200, the dead target's breaker opens and it gets no more tries`, CASE, async t => {
    const live = await upstream(t)
    const dead = `http://127.0.0.1:${await closedPort()}`
    const name = `dead-${method.toLowerCase()}`
    const gw = await gateway({
      'dead.json': upstreamFile(name, [{ url: dead }, { url: live.url }], {
        retry: { backoff: '1ms' },
        circuitBreaker: { consecutiveFailures: 2, openFor: '30s' }
      })
    })
    const bodies: string[] = []
    const request = async (i: number): Promise<Reply> => {
      if (method === 'GET') return await send(gw, `/${name}/${i}`)
      const body = JSON.stringify({ n: i, text: 'grüße, 世界' })
      bodies.push(body)
      return await send(gw, `/${name}/${i}`, { method, body })
    }

    // Until it opens, about half of the first tries go to the dead target: each is retried on the live one.
    const before = await driveUntil(gw, name, dead, 'open', request)
    const opened = breakerLog(gw, name, dead, 'open')!
    assert.equal(opened.from, 'closed')
    assert.equal(opened.level, 40, 'opening is logged at warn')
    assert.equal(await metric(gw, 'circuit_breaker_state', { upstream: name, target: dead }), 1)
    assert.equal(await metric(gw, 'circuit_breaker_state', { upstream: name, target: live.url }), 0)
    assert.equal(await metric(gw, 'upstream_requests_total', { upstream: name, target: dead, outcome: 'connect-failure' }), 2)
    assert.ok((await metric(gw, 'upstream_retries_total', { upstream: name, reason: 'connect-failure' }) ?? 0) >= 2)

    for (let i = before; i < before + 20; i++) assert200(await request(i))
    // Open: not one more connection attempt.
    assert.equal(await metric(gw, 'upstream_requests_total', { upstream: name, target: dead }), 2)
    assert.equal(await metric(gw, 'circuit_breaker_state', { upstream: name, target: dead }), 1)
    // Every client request reached the live target exactly once, bodies intact.
    assert.equal(live.requests.length, before + 20)
    assert.ok(live.requests.every(r => r.method === method))
    if (method === 'POST') assert.deepEqual(live.requests.map(r => r.body), bodies)
  })
}

test('a recovered target is probed after openFor and takes traffic again: open → half-open → closed', CASE, async t => {
  const live = await upstream(t)
  const port = await closedPort()
  const back = `http://127.0.0.1:${port}`
  const gw = await gateway({
    'recover.json': upstreamFile('recover', [{ url: back }, { url: live.url }], {
      retry: { backoff: '1ms' },
      circuitBreaker: { consecutiveFailures: 2, openFor: '500ms', closeAfter: 2 }
    })
  })
  const request = async (i: number): Promise<Reply> => await send(gw, `/recover/${i}`)

  await driveUntil(gw, 'recover', back, 'open', request)
  const restarted = await upstream(t, echo, port)
  // No probe before openFor: the restarted server gets nothing for a while.
  for (let i = 0; i < 10; i++) assert200(await request(i))
  assert.equal(restarted.requests.length, 0)

  await driveUntil(gw, 'recover', back, 'closed', request, 200, 10)
  assert.deepEqual(transitions(gw, 'recover', back), ['closed → open', 'open → half-open', 'half-open → closed'])
  const openedAt = breakerLog(gw, 'recover', back, 'open')!.time as number
  const probedAt = breakerLog(gw, 'recover', back, 'half-open')!.time as number
  assert.ok(probedAt - openedAt >= 490, `first probe ${probedAt - openedAt} ms after opening, openFor is 500 ms`)
  assert.equal(restarted.requests.length, 2, 'two successful probes (closeAfter 2) closed it')
  assert.equal(await metric(gw, 'circuit_breaker_state', { upstream: 'recover', target: back }), 0)
  assert.equal(await metric(gw, 'circuit_breaker_transitions_total', { upstream: 'recover', target: back, to: 'closed' }), 1)

  for (let i = 0; i < 30; i++) assert200(await request(i))
  assert.ok(restarted.requests.length > 2, `the recovered target took ${restarted.requests.length - 2} of 30 requests`)
})

for (const probes of [1, 2]) {
  test(`half-open lets through at most halfOpenProbes (${probes}) at once: 20 concurrent requests, ${probes} reach the probed target, the rest the other`, CASE, async t => {
    const probed = new Switch()
    const other = new Switch()
    const probedUp = await upstream(t, probed.handler)
    const otherUp = await upstream(t, other.handler)
    t.after(() => { probed.release('echo'); other.release('echo') })
    const name = `probes-${probes}`
    const gw = await gateway({
      [`${name}.json`]: upstreamFile(name, [{ url: probedUp.url }, { url: otherUp.url }], {
        retry: { backoff: '1ms' },
        circuitBreaker: { consecutiveFailures: 2, openFor: '500ms', halfOpenProbes: probes, closeAfter: 5 }
      })
    })

    probed.mode = '503'
    await driveUntil(gw, name, probedUp.url, 'open', async i => await send(gw, `/${name}/${i}`))
    // Both hold from now on: with no limit, balancing would give the probed target about half.
    probed.mode = 'hold'
    other.mode = 'hold'
    probedUp.maxInFlight = 0
    await sleep(600)

    const replies = Promise.all(Array.from({ length: 20 }, async (_, i) => await send(gw, `/${name}/burst/${i}`)))
    await until('all 20 requests reached an upstream', () => probed.holding + other.holding === 20)
    await sleep(100)
    assert.equal(probed.arrived, probes)
    assert.equal(probedUp.maxInFlight, probes)
    assert.equal(other.arrived, 20 - probes)
    assert.equal(await metric(gw, 'circuit_breaker_state', { upstream: name, target: probedUp.url }), 2)

    probed.release('echo')
    other.release('echo')
    for (const reply of await replies) assert200(reply)
  })
}

// ---- what is retried, and how often -----------------------------------------------------------

for (const failure of ['503', 'reset'] as const) {
  const handler = failure === '503' ? unavailable() : reset
  test(`an upstream that ${failure === '503' ? 'answers 503' : 'resets the connection'}: a POST is sent once (client gets ${failure === '503' ? 'the 503' : '502'}), a GET is retried on the other target`, CASE, async t => {
    const failing = await upstream(t, handler)
    const fine = await upstream(t)
    const name = `once-${failure}`
    const gw = await gateway({
      [`${name}.json`]: upstreamFile(name, [{ url: failing.url, weight: FIRST }, { url: fine.url, weight: SECOND }], {
        retry: { backoff: '1ms', attempts: 3 },
        circuitBreaker: NO_BREAKER
      })
    })

    const post = await send(gw, `/${name}/orders`, { method: 'POST', body: '{"amount":10}' })
    if (failure === '503') {
      assert.equal(post.status, 503)
      assert.equal(post.body, 'upstream busy')
    } else {
      assertGatewayError(post, 502, 'GATEHOUSE_ERR_UPSTREAM_RESET')
    }
    assert.equal(failing.requests.length, 1)
    assert.equal(failing.requests[0]?.body, '{"amount":10}')
    assert.equal(fine.requests.length, 0)
    assert.equal(await metric(gw, 'upstream_retries_total', { upstream: name }), 0, 'no retry (the series exist from the start, at 0)')

    const get = await send(gw, `/${name}/orders`)
    assert200(get)
    assert.equal(get.json.port, fine.port)
    assert.equal(failing.requests.length, 2)
    assert.equal(fine.requests.length, 1)
    assert.equal(await metric(gw, 'upstream_retries_total', { upstream: name, reason: failure }), 1)
  })
}

test('a body that cannot be sent again is never retried: PUTs over the buffer (retry.bufferBody), chunked or not, get the 503 and the other target sees neither; PUTs within it, chunked or not, are retried whole', CASE, async t => {
  const busy = await upstream(t, unavailable())
  const fine = await upstream(t)
  const gw = await gateway({
    'replay.json': upstreamFile('replay', [{ url: busy.url, weight: FIRST }, { url: fine.url, weight: SECOND }], {
      retry: { backoff: '1ms', bufferBody: '1kb' },
      circuitBreaker: NO_BREAKER
    })
  })

  // Within the buffer: kept, and sent whole to the other target after the 503.
  const small = 'k'.repeat(1024)
  const kept = await send(gw, '/replay/kept', { method: 'PUT', body: small })
  assert200(kept)
  assert.equal(kept.json.port, fine.port)
  assert.equal(kept.json.body, small)
  assert.equal(busy.requests.at(-1)?.body, small)

  // Chunked and within the buffer: received whole, so it is kept and sent again too.
  const keptChunked = await send(gw, '/replay/kept-chunked', { method: 'PUT', chunks: ['first,', 'second'] })
  assert200(keptChunked)
  assert.equal(keptChunked.json.port, fine.port)
  assert.equal(keptChunked.json.body, 'first,second')

  // Chunked and past the buffer: streamed to the first target, whose 503 is the answer.
  const parts = ['c'.repeat(600), 'd'.repeat(600)]
  const chunked = await send(gw, '/replay/chunked', { method: 'PUT', chunks: parts })
  assert.equal(chunked.status, 503, chunked.body)
  assert.equal(chunked.body, 'upstream busy')
  assert.deepEqual([busy.requests.at(-1)?.url, busy.requests.at(-1)?.body], ['/replay/chunked', parts.join('')])

  // One byte over the buffer, with Content-Length: streamed too.
  const large = 'l'.repeat(1025)
  const big = await send(gw, '/replay/large', { method: 'PUT', body: large })
  assert.equal(big.status, 503, big.body)
  assert.equal(big.body, 'upstream busy')
  assert.deepEqual([busy.requests.at(-1)?.url, busy.requests.at(-1)?.body.length], ['/replay/large', 1025])

  assert.deepEqual(fine.requests.map(r => r.url), ['/replay/kept', '/replay/kept-chunked'], 'only the kept bodies were sent again')
  assert.equal(await metric(gw, 'upstream_retries_total', { upstream: 'replay' }), 2)
})

test('tries never exceed attempts + 1: every target answering 503 gets 3 requests in all with attempts 2, 1 with attempts 0', CASE, async t => {
  const a2 = [await upstream(t, unavailable()), await upstream(t, unavailable())]
  const a0 = [await upstream(t, unavailable()), await upstream(t, unavailable())]
  const gw = await gateway({
    'two.json': upstreamFile('two', a2.map(u => ({ url: u.url })), { retry: { attempts: 2, backoff: '1ms' }, circuitBreaker: NO_BREAKER }),
    'zero.json': upstreamFile('zero', a0.map(u => ({ url: u.url })), { retry: { attempts: 0, backoff: '1ms' }, circuitBreaker: NO_BREAKER })
  })
  const seen = (ups: Upstream[]): number => ups.reduce((n, u) => n + u.requests.length, 0)

  const two = await send(gw, '/two/x')
  assert.equal(two.status, 503)
  assert.equal(two.body, 'upstream busy')
  assert.equal(seen(a2), 3)
  assert.ok(a2.every(u => u.requests.length >= 1), 'the first retry goes to the other target')
  assert.equal(await metric(gw, 'upstream_retries_total', { upstream: 'two' }), 2)

  const zero = await send(gw, '/zero/x')
  assert.equal(zero.status, 503)
  assert.equal(seen(a0), 1)
  assert.equal(await metric(gw, 'upstream_retries_total', { upstream: 'zero' }), 0)
})

test('the retry budget: 20 concurrent requests failing with 503 get at most 3 retries (the floor), the others are refused a retry', CASE, async t => {
  // Budget 0.1 of 20 requests is 2, under the floor of 3. Retries count against the budget while
  // they run, and the held retries never finish during the check: exactly 3 can exist.
  const both = new Switch()
  both.mode = 'hold'
  const ups = [await upstream(t, both.handler), await upstream(t, both.handler)]
  t.after(() => both.release('503'))
  const gw = await gateway({
    'budget.json': upstreamFile('budget', ups.map(u => ({ url: u.url })), {
      retry: { attempts: 1, backoff: '1ms', budget: 0.1 },
      circuitBreaker: NO_BREAKER
    })
  })

  const settled: Reply[] = []
  const replies = Promise.all(Array.from({ length: 20 }, async (_, i) => {
    const reply = await send(gw, `/budget/${i}`)
    settled.push(reply)
    return reply
  }))
  await until('20 first tries held', () => both.holding === 20)
  // All 20 fail at once; retries arrive and are held.
  both.release('503', 'hold')
  await until('17 clients answered', () => settled.length === 17)
  await until('3 retries held', () => both.holding === 3)
  await sleep(200)
  assert.equal(both.holding, 3)
  assert.equal(ups[0]!.requests.length + ups[1]!.requests.length, 23)
  assert.ok(settled.every(r => r.status === 503))
  assert.equal(await metric(gw, 'upstream_retries_total', { upstream: 'budget' }), 3)
  assert.equal(await metric(gw, 'upstream_retry_budget_exhausted_total', { upstream: 'budget' }), 17)

  both.release('503')
  assert.deepEqual((await replies).map(r => r.status), Array(20).fill(503))
  assert.equal(await metric(gw, 'upstream_retries_total', { upstream: 'budget' }), 3)
})

test('Retry-After on a 503 is honoured when it fits the request timeout: Retry-After 1 → the retry comes ≥ 1 s later', CASE, async t => {
  let answeredAt = 0
  let retriedAt = 0
  const busy = await upstream(t, (req, res, body, seen) => {
    answeredAt = performance.now()
    unavailable('1')(req, res, body, seen)
  })
  const fine = await upstream(t, (req, res, body, seen) => {
    retriedAt = performance.now()
    echo(req, res, body, seen)
  })
  const gw = await gateway({
    'after.json': upstreamFile('after', [{ url: busy.url, weight: FIRST }, { url: fine.url, weight: SECOND }], {
      timeouts: { request: '5s' },
      retry: { backoff: '1ms' },
      circuitBreaker: NO_BREAKER
    })
  })

  const reply = await send(gw, '/after/x')
  assert200(reply)
  assert.equal(reply.json.port, fine.port)
  assert.equal(busy.requests.length, 1)
  assert.ok(retriedAt - answeredAt >= 990, `retry ${Math.round(retriedAt - answeredAt)} ms after the 503, Retry-After said 1 s`)
})

test('Retry-After on a 503 that does not fit the request timeout: Retry-After 60 → no retry, the client gets the 503 with its Retry-After', CASE, async t => {
  const busy = await upstream(t, unavailable('60'))
  const fine = await upstream(t)
  const gw = await gateway({
    'later.json': upstreamFile('later', [{ url: busy.url, weight: FIRST }, { url: fine.url, weight: SECOND }], {
      timeouts: { request: '5s' },
      retry: { backoff: '1ms' },
      circuitBreaker: NO_BREAKER
    })
  })

  const reply = await send(gw, '/later/x')
  assert.equal(reply.status, 503)
  assert.equal(reply.headers['retry-after'], '60')
  assert.equal(reply.body, 'upstream busy')
  assert.equal(busy.requests.length, 1)
  assert.equal(fine.requests.length, 0)
  assert.equal(await metric(gw, 'upstream_retries_total', { upstream: 'later' }), 0)
})

// ---- timeouts and aborts ----------------------------------------------------------------------

test('a hanging only target: 504 GATEHOUSE_ERR_UPSTREAM_TIMEOUT after two tries of the request timeout', CASE, async t => {
  const stuck = await upstream(t, hang)
  const gw = await gateway({
    'stuck.json': upstreamFile('stuck', [{ url: stuck.url }], { timeouts: { request: '300ms' }, retry: { backoff: '1ms' } })
  })

  const began = performance.now()
  const reply = await send(gw, '/stuck/x')
  const elapsed = performance.now() - began
  assertGatewayError(reply, 504, 'GATEHOUSE_ERR_UPSTREAM_TIMEOUT')
  assert.equal(stuck.requests.length, 2)
  // undici checks these timeouts on a ~0.5 s tick: a 300 ms timeout fires within about a second.
  assert.ok(elapsed >= 590 && elapsed < 1500, `answered after ${Math.round(elapsed)} ms; two tries of 300 ms`)
  assert.equal(await metric(gw, 'upstream_requests_total', { upstream: 'stuck', outcome: 'timeout' }), 2)
  await until('the upstream saw both requests end', () => stuck.inFlight === 0, 1000)
})

test('a hanging target of two: the request times out on it and succeeds on the other', CASE, async t => {
  const stuck = await upstream(t, hang)
  const fine = await upstream(t)
  const gw = await gateway({
    'half.json': upstreamFile('half', [{ url: stuck.url, weight: FIRST }, { url: fine.url, weight: SECOND }], {
      timeouts: { request: '300ms' },
      retry: { backoff: '1ms' }
    })
  })

  const began = performance.now()
  const reply = await send(gw, '/half/x')
  const elapsed = performance.now() - began
  assert200(reply)
  assert.equal(reply.json.port, fine.port)
  assert.equal(stuck.requests.length, 1)
  assert.equal(fine.requests.length, 1)
  assert.ok(elapsed >= 290 && elapsed < 2500, `answered after ${Math.round(elapsed)} ms; one try of 300 ms timed out`)
})

test('a sub-second request timeout is kept: request 300 ms, one try → 504 in under 700 ms', CASE, async t => {
  const stuck = await upstream(t, hang)
  const gw = await gateway({
    'precise.json': upstreamFile('precise', [{ url: stuck.url }], { timeouts: { request: '300ms' }, retry: { attempts: 0 } })
  })

  const began = performance.now()
  const reply = await send(gw, '/precise/x')
  const elapsed = performance.now() - began
  assertGatewayError(reply, 504, 'GATEHOUSE_ERR_UPSTREAM_TIMEOUT')
  assert.equal(stuck.requests.length, 1)
  assert.ok(elapsed >= 290 && elapsed < 700, `504 after ${Math.round(elapsed)} ms; request timeout 300 ms`)
})

test('a client abort while the upstream hangs: the upstream sees its request end within 500 ms, no in-flight left', CASE, async t => {
  let socketClosedAt = 0
  const stuck = await upstream(t, req => { req.socket.once('close', () => { socketClosedAt = performance.now() }) })
  const gw = await gateway({
    'abort.json': upstreamFile('abort', [{ url: stuck.url }], { timeouts: { request: '10s' } })
  })

  const began = performance.now()
  const { req } = await open(gw, '/abort/x')
  await until('the request reached the upstream', () => stuck.requests.length === 1)
  await sleep(Math.max(0, 200 - (performance.now() - began)))
  assert.equal(stuck.inFlight, 1)
  const abortedAt = performance.now()
  req.destroy()

  await until('upstream in-flight back to 0', () => stuck.inFlight === 0, 500)
  assert.ok(socketClosedAt >= abortedAt, 'the upstream saw its request socket close')
  await until('upstream_active_connections 0', async () => await metric(gw, 'upstream_active_connections', { upstream: 'abort' }) === 0, 500)
  assert.equal(await metric(gw, 'upstream_requests_total', { upstream: 'abort', outcome: 'aborted' }), 1)
  assert.equal(stuck.requests.length, 1, 'an aborted request is not retried')
})

test('a client abort while the response body streams: the upstream sees its response end within 500 ms, no in-flight left', CASE, async t => {
  const streaming = await upstream(t, stallMidBody)
  const gw = await gateway({
    'abortbody.json': upstreamFile('abortbody', [{ url: streaming.url }], { timeouts: { request: '10s', idle: '10s' } })
  })

  const { req, res } = await open(gw, '/abortbody/x')
  const response = await res
  assert.equal(response.statusCode, 200)
  await once(response, 'data')
  assert.equal(streaming.inFlight, 1)
  req.destroy()

  await until('upstream in-flight back to 0', () => streaming.inFlight === 0, 500)
  await until('upstream_active_connections 0', async () => await metric(gw, 'upstream_active_connections', { upstream: 'abortbody' }) === 0, 500)
  assert.equal(streaming.requests.length, 1)
})

test('a client abort while its request body streams: the upstream sees the request end within 500 ms, no in-flight left', CASE, async t => {
  // The body never ends, so the upstream never answers; it counts the request from its headers.
  const waiting = await upstream(t)
  const gw = await gateway({
    // requestBuffer 0: every body is streamed as it arrives.
    'abortupload.json': JSON.stringify({ name: 'abortupload', targets: [{ url: waiting.url }], routes: [{ path: '/abortupload', requestBuffer: 0 }], timeouts: { request: '10s', idle: '10s' } })
  })

  const req = http.request({ host: '127.0.0.1', port: gw.port, path: '/abortupload/x', method: 'POST', agent: false, headers: { 'transfer-encoding': 'chunked' } })
  req.on('error', () => {}) // destroyed on purpose
  req.write('{"part":1')
  await until('the streamed request reached the upstream', () => waiting.inFlight === 1)
  await sleep(200)
  assert.equal(waiting.inFlight, 1)
  req.destroy()

  await until('upstream in-flight back to 0', () => waiting.inFlight === 0, 500)
  await until('upstream_active_connections 0', async () => await metric(gw, 'upstream_active_connections', { upstream: 'abortupload' }) === 0, 500)
  assert.equal(waiting.requests.length, 0, 'the upstream never got the end of the body')
})

test('an upstream that stalls mid-body: the client response is cut after the idle timeout and the gateway keeps serving', CASE, async t => {
  const stalling = await upstream(t, stallMidBody)
  const fine = await upstream(t)
  const gw = await gateway({
    'stall.json': upstreamFile('stall', [{ url: stalling.url }], { timeouts: { idle: '300ms' } }),
    'fine.json': upstreamFile('fine', [{ url: fine.url }])
  })

  const began = performance.now()
  const { res } = await open(gw, '/stall/x')
  const response = await res
  assert.equal(response.statusCode, 200)
  let bytes = 0
  response.on('data', (c: Buffer) => { bytes += c.length })
  response.on('error', () => {}) // 'aborted': the cut this test expects
  await within(5000, 'the response is cut', new Promise(resolve => response.once('close', resolve)))
  const elapsed = performance.now() - began
  assert.equal(response.complete, false, 'the connection closed before the full body')
  assert.ok(bytes < 1000, `client got ${bytes} of 1000 bytes`)
  assert.ok(elapsed >= 290, `cut after ${Math.round(elapsed)} ms; idle timeout 300 ms`)
  await until('the stalled upstream request is let go', () => stalling.inFlight === 0, 1000)
  await until('upstream_active_connections 0', async () => await metric(gw, 'upstream_active_connections', { upstream: 'stall' }) === 0, 1000)

  assert.equal(gw.proc.exitCode, null)
  assert200(await send(gw, '/fine/x'))
  assert200(await send(gw, '/fine/y'))
  assert.equal(stalling.requests.length, 1, 'a response already under way is not retried')
})

// ---- every breaker open -----------------------------------------------------------------------

test('all targets open: 503 GATEHOUSE_ERR_UPSTREAM_UNAVAILABLE with Retry-After, in under 50 ms, and the upstreams see nothing', CASE, async t => {
  const ups = [await upstream(t, unavailable()), await upstream(t, unavailable())]
  const gw = await gateway({
    'down.json': upstreamFile('down', ups.map(u => ({ url: u.url })), {
      retry: { backoff: '1ms' },
      circuitBreaker: { consecutiveFailures: 1, openFor: '30s' }
    })
  })
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  t.after(() => agent.destroy())

  // One request opens both: a 503 on the first try, a 503 on the retry to the other.
  for (let i = 0; i < 5 && ups.some(u => breakerLog(gw, 'down', u.url, 'open') === undefined); i++) {
    await send(gw, `/down/${i}`, { agent })
  }
  for (const u of ups) assert.equal(transitions(gw, 'down', u.url)[0], 'closed → open')
  const seen = ups.map(u => u.requests.length)

  const times: number[] = []
  for (let i = 0; i < 9; i++) {
    const began = performance.now()
    const reply = await send(gw, `/down/after/${i}`, { agent })
    times.push(performance.now() - began)
    assertGatewayError(reply, 503, 'GATEHOUSE_ERR_UPSTREAM_UNAVAILABLE')
    assert.match(reply.json.message ?? '', /down/)
    const retryAfter = Number(reply.headers['retry-after'])
    assert.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 30, `Retry-After ${String(reply.headers['retry-after'])}`)
    assert.ok(reply.reused, 'measured on an already-open keep-alive connection')
  }
  assert.ok(median(times) < 50, `median ${median(times).toFixed(1)} ms`)
  assert.deepEqual(ups.map(u => u.requests.length), seen)
  for (const u of ups) assert.equal(await metric(gw, 'circuit_breaker_state', { upstream: 'down', target: u.url }), 1)
})

test('a dead target of three under a burst of 50 concurrent GETs: every request 200 (connect failures do not spend the retry budget)', CASE, async t => {
  const a = await upstream(t)
  const b = await upstream(t)
  const dead = `http://127.0.0.1:${await closedPort()}`
  const gw = await gateway({ 'burst.json': upstreamFile('burst', [{ url: a.url }, { url: b.url }, { url: dead }]) })

  const replies = await Promise.all(Array.from({ length: 50 }, () => send(gw, '/burst/x')))
  assert.deepEqual(replies.map(r => r.status), Array(50).fill(200))
  assert.equal(a.requests.length + b.requests.length, 50)
  const failures = await metric(gw, 'upstream_requests_total', { upstream: 'burst', target: dead, outcome: 'connect-failure' })
  assert.ok(failures !== undefined && failures >= 1, 'the burst did reach the dead target')
  assert.equal(await metric(gw, 'upstream_retry_budget_exhausted_total', { upstream: 'burst' }), 0)
})

test('metrics of tries: upstream_requests_total by outcome, upstream_retries_total by reason, and a well-formed upstream_request_duration_seconds histogram', CASE, async t => {
  const busy = await upstream(t, unavailable())
  const fine = await upstream(t)
  const gw = await gateway({
    'counted.json': upstreamFile('counted', [{ url: busy.url, weight: FIRST }, { url: fine.url, weight: SECOND }], { circuitBreaker: NO_BREAKER, retry: { backoff: '1ms' } })
  })
  for (let i = 0; i < 4; i++) assert.equal((await send(gw, '/counted/x')).status, 200)

  assert.equal(await metric(gw, 'upstream_requests_total', { upstream: 'counted', target: busy.url, outcome: 'bad-status' }), 4)
  assert.equal(await metric(gw, 'upstream_requests_total', { upstream: 'counted', target: fine.url, outcome: 'ok' }), 4)
  assert.equal(await metric(gw, 'upstream_retries_total', { upstream: 'counted', reason: '503' }), 4)
  assert.equal(await metric(gw, 'upstream_request_duration_seconds_count', { upstream: 'counted', target: busy.url, status_class: '5xx' }), 4)
  assert.equal(await metric(gw, 'upstream_request_duration_seconds_count', { upstream: 'counted', target: fine.url, status_class: '2xx' }), 4)

  // What Prometheus needs of a histogram: bounds that rise to +Inf, cumulative counts, +Inf equal
  // to _count, and a sum that is a plausible number of seconds.
  const text = await (await fetch(`${gw.url}/metrics`)).text()
  const series = `upstream="counted",target="${fine.url}",status_class="2xx"`
  const buckets = text.split('\n').filter(l => l.startsWith(`upstream_request_duration_seconds_bucket{${series},le=`))
    .map(l => /le="([^"]+)"\} (\S+)$/.exec(l) as RegExpExecArray)
    .map(([, le, count]) => ({ le: le === '+Inf' ? Infinity : Number(le), count: Number(count) }))
  assert.ok(buckets.length >= 2, `buckets: ${JSON.stringify(buckets)}`)
  assert.equal(buckets.at(-1)?.le, Infinity, 'the last bound is +Inf')
  assert.ok(buckets.every((b, i) => i === 0 || b.le > (buckets[i - 1] as { le: number }).le), `bounds rise: ${buckets.map(b => b.le).join(', ')}`)
  assert.ok(buckets.every((b, i) => i === 0 || b.count >= (buckets[i - 1] as { count: number }).count), 'cumulative')
  assert.equal(buckets.at(-1)?.count, 4)
  const sum = await metric(gw, 'upstream_request_duration_seconds_sum', { upstream: 'counted', target: fine.url, status_class: '2xx' })
  assert.ok(sum !== undefined && sum > 0 && sum < 4, `sum ${sum}`)
})

test('a dead target logs its breaker opening once and its recovery once, at info: the probes in between are at debug and counted in the recovery line', CASE, async t => {
  const port = await closedPort()
  const back = `http://127.0.0.1:${port}`
  // A gateway of its own at info: what an operator reads.
  const dir = await routeDir({ 'flap.yaml': `targets:\n  - url: ${back}\nroutes:\n  - path: /flap\nretry:\n  attempts: 0\ncircuitBreaker:\n  consecutiveFailures: 1\n  openFor: 100ms\n  maxOpenFor: 100ms\n` })
  t.after(async () => { await removeDir(dir) })
  const gw = await startGateway(dir, { WATCH_ROUTES: 'false' })
  t.after(async () => { await gw.stop() })
  // Down for about 1.5 s: each request after openFor is a probe that fails and re-opens.
  const deadline = Date.now() + 1500
  while (Date.now() < deadline) {
    await send(gw, '/flap/x')
    await sleep(50)
  }
  const reopened = await metric(gw, 'circuit_breaker_transitions_total', { upstream: 'flap', target: back, to: 'open' }) ?? 0
  assert.ok(reopened >= 5, `${reopened} openings counted`)
  const lines = () => gw.logs.filter(l => l.msg === 'circuit breaker state changed')
  assert.deepEqual(lines().map(l => `${String(l.from)} → ${String(l.to)} @${String(l.level)}`), ['closed → open @40'], 'one line while it was down')
  // It comes back: the next probe closes it, with one line that says how long and how many probes failed.
  const revived = await upstream(t, undefined, port)
  // closeAfter (2) successful probes close it.
  for (let i = 0; i < 100 && await metric(gw, 'circuit_breaker_state', { upstream: 'flap', target: back }) !== 0; i++) {
    await send(gw, '/flap/x')
    await sleep(20)
  }
  await gw.waitForLog(l => l.msg === 'circuit breaker state changed' && l.to === 'closed')
  assert.deepEqual(lines().map(l => `${String(l.from)} → ${String(l.to)} @${String(l.level)}`), ['closed → open @40', 'half-open → closed @30'])
  const closed = lines()[1] as Record<string, unknown>
  assert.ok((closed.downMs as number) >= 1500, `downMs ${String(closed.downMs)}`)
  assert.equal(closed.probesFailed, reopened - 1, 'every re-opening after the first was a failed probe')
  assert.ok(revived.requests.length >= 1)
})
