// Balancing across targets: weighted spread, the maxConnections cap under concurrency, 503 when
// every target is full (at once, never queued), and least-saturated choice. One gateway process,
// each case with its own upstream and targets.
import { strict as assert } from 'node:assert'
import http from 'node:http'
import { test } from 'node:test'
import { echo, gateway, send, upstream, type GatewayProcess, type Reply, type UpstreamHandler } from './helpers.js'

// ---- fixtures ---------------------------------------------------------------------------------

interface TargetSpec {
  url: string
  maxConnections?: number
  weight?: number
}

function jsonRoute (name: string, targets: TargetSpec[], path: string): string {
  return JSON.stringify({ name, targets, routes: [{ path }] })
}

/** An upstream that holds every request (unanswered) while `hold` is on; echo otherwise. */
interface Holding {
  handler: UpstreamHandler
  /** Requests that arrived while holding, answered or not. */
  arrived: number
  held: number
  hold: boolean
  /** Answers every held request (echo) and stops holding. */
  release: () => void
  /** Resolves once `n` requests have arrived while holding. */
  arrivals: (n: number) => Promise<void>
}

function holding (): Holding {
  const queue: Array<() => void> = []
  const waiters: Array<{ n: number, resolve: () => void }> = []
  const h: Holding = {
    arrived: 0,
    hold: true,
    get held () { return queue.length },
    handler: (req, res, body, seen) => {
      if (!h.hold) return echo(req, res, body, seen)
      queue.push(() => { echo(req, res, body, seen) })
      h.arrived++
      for (const w of [...waiters]) {
        if (h.arrived >= w.n) {
          waiters.splice(waiters.indexOf(w), 1)
          w.resolve()
        }
      }
    },
    release: () => {
      h.hold = false
      for (const answer of queue.splice(0)) answer()
    },
    arrivals: async n => {
      if (h.arrived >= n) return
      await new Promise<void>(resolve => waiters.push({ n, resolve }))
    }
  }
  return h
}

// ---- clients ----------------------------------------------------------------------------------

/** Port of the upstream that answered (echo reports it). */
function portOf (reply: Reply): number {
  assert.equal(reply.status, 200, `expected 200, got ${reply.status}: ${reply.body}`)
  return (JSON.parse(reply.body) as { port: number }).port
}

function assertSaturated (reply: Reply, upstreamName: string): void {
  assert.equal(reply.status, 503, reply.body)
  assert.equal(reply.headers['retry-after'], '1')
  const body = JSON.parse(reply.body) as { statusCode: number, code: string, message: string }
  assert.equal(body.statusCode, 503)
  assert.equal(body.code, 'GATEHOUSE_ERR_UPSTREAM_SATURATED')
  assert.match(body.message, new RegExp(upstreamName))
}

/** Requests fired together, with a way to wait until `n` of them have been answered. */
class Burst {
  readonly settled: Reply[] = []
  readonly all: Promise<Reply[]>
  private readonly waiters: Array<{ n: number, resolve: () => void }> = []

  constructor (requests: Array<Promise<Reply>>) {
    this.all = Promise.all(requests.map(async p => {
      const reply = await p
      this.settled.push(reply)
      for (const w of [...this.waiters]) {
        if (this.settled.length >= w.n) {
          this.waiters.splice(this.waiters.indexOf(w), 1)
          w.resolve()
        }
      }
      return reply
    }))
  }

  async answered (n: number): Promise<Reply[]> {
    if (this.settled.length < n) await new Promise<void>(resolve => this.waiters.push({ n, resolve }))
    return this.settled.slice(0, n)
  }
}

/** upstream_active_connections per target origin of one upstream, from /metrics. */
async function activeConnections (gw: GatewayProcess, upstreamName: string): Promise<Record<string, number>> {
  const text = await (await fetch(`${gw.url}/metrics`)).text()
  const out: Record<string, number> = {}
  for (const line of text.split('\n')) {
    if (!line.startsWith('upstream_active_connections{') || !line.includes(`upstream="${upstreamName}"`)) continue
    const target = /target="([^"]+)"/.exec(line)?.[1]
    if (target !== undefined) out[target] = Number(line.slice(line.lastIndexOf(' ') + 1))
  }
  return out
}

/**
 * Polls /metrics until the gauge shows `expected` (the gateway counts a request done when its
 * response closes, which may be a moment after the client has read it). Fails after 5 s.
 */
async function waitForActive (gw: GatewayProcess, upstreamName: string, expected: Record<string, number>): Promise<void> {
  let last: Record<string, number> = {}
  for (let i = 0; i < 100; i++) {
    last = sorted(await activeConnections(gw, upstreamName))
    if (JSON.stringify(last) === JSON.stringify(sorted(expected))) return
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  assert.deepEqual(last, expected)
}

function sorted (record: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(record).sort(([a], [b]) => a.localeCompare(b)))
}

const SUBTEST = { timeout: 15_000 }

// ---- the cases --------------------------------------------------------------------------------

test('balancing and saturation across targets', { timeout: 60_000 }, async t => {
  const evenA = await upstream(t)
  const evenB = await upstream(t)
  const heavy = await upstream(t)
  const light = await upstream(t)
  const capped = holding()
  const cappedUp = await upstream(t, capped.handler)
  const fullA = holding()
  const fullB = holding()
  const fullAUp = await upstream(t, fullA.handler)
  const fullBUp = await upstream(t, fullB.handler)
  const slow = holding()
  const idle = holding()
  const slowUp = await upstream(t, slow.handler)
  const idleUp = await upstream(t, idle.handler)
  // Every held request is answered before the upstreams close.
  t.after(() => { for (const h of [capped, fullA, fullB, slow, idle]) h.release() })

  const gw = await gateway(t, {
    'even.json': jsonRoute('even', [{ url: evenA.url }, { url: evenB.url }], '/even'),
    'weighted.json': jsonRoute('weighted', [{ url: heavy.url, weight: 3 }, { url: light.url, weight: 1 }], '/weighted'),
    'capped.json': jsonRoute('capped', [{ url: cappedUp.url, maxConnections: 5 }], '/capped'),
    'full.json': jsonRoute('full', [{ url: fullAUp.url, maxConnections: 2 }, { url: fullBUp.url, maxConnections: 2 }], '/full'),
    'least.json': jsonRoute('least', [{ url: slowUp.url, maxConnections: 10 }, { url: idleUp.url, maxConnections: 10 }], '/least')
  })
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 })
  t.after(() => agent.destroy())

  await t.test('two targets of equal weight both get traffic: 200 requests, each gets 35–65 %', SUBTEST, async () => {
    const counts = new Map<number, number>()
    for (let i = 0; i < 200; i++) {
      const port = portOf(await send(gw, `/even/${i}`, { agent }))
      counts.set(port, (counts.get(port) ?? 0) + 1)
    }
    assert.deepEqual([...counts.keys()].sort(), [evenA.port, evenB.port].sort())
    for (const [port, n] of counts) assert.ok(n >= 70 && n <= 130, `target ${port} got ${n} of 200`)
    assert.equal(evenA.requests.length + evenB.requests.length, 200)
  })

  await t.test('weights 3:1 bias the traffic accordingly: the weight-3 target gets 62–88 % of 400 requests', SUBTEST, async () => {
    for (let i = 0; i < 400; i++) {
      const port = portOf(await send(gw, `/weighted/${i}`, { agent }))
      assert.ok(port === heavy.port || port === light.port)
    }
    const share = heavy.requests.length / 400
    assert.equal(heavy.requests.length + light.requests.length, 400)
    assert.ok(share >= 0.62 && share <= 0.88, `weight-3 target got ${heavy.requests.length} of 400`)
  })

  await t.test('maxConnections 5 is never exceeded under 40 concurrent requests: 5 reach the upstream, 35 get 503 at once', SUBTEST, async () => {
    const burst = new Burst(Array.from({ length: 40 }, async (_, i) => await send(gw, `/capped/${i}`, { agent })))
    await capped.arrivals(5)
    // The 35 answered while the upstream still holds its 5: refused, not queued.
    const early = await burst.answered(35)
    for (const reply of early) assertSaturated(reply, 'capped')
    assert.equal(capped.held, 5)
    assert.equal(cappedUp.inFlight, 5)
    assert.equal(cappedUp.maxInFlight, 5)
    assert.deepEqual(await activeConnections(gw, 'capped'), { [cappedUp.url]: 5 })

    capped.release()
    const replies = await burst.all
    assert.equal(replies.filter(r => r.status === 200).length, 5)
    assert.equal(replies.filter(r => r.status === 503).length, 35)
    assert.equal(cappedUp.maxInFlight, 5)
    assert.equal(cappedUp.requests.length, 5)
    await waitForActive(gw, 'capped', { [cappedUp.url]: 0 })
  })

  await t.test('all targets full: 503 with Retry-After and GATEHOUSE_ERR_UPSTREAM_SATURATED, no wait; after release requests succeed again', SUBTEST, async () => {
    const held = new Burst(Array.from({ length: 4 }, async (_, i) => await send(gw, `/full/held/${i}`, { agent })))
    await Promise.all([fullA.arrivals(2), fullB.arrivals(2)])
    assert.deepEqual(await activeConnections(gw, 'full'), { [fullAUp.url]: 2, [fullBUp.url]: 2 })

    for (let i = 0; i < 3; i++) assertSaturated(await send(gw, `/full/extra/${i}`, { agent }), 'full')
    // The ordering is the proof: the 503s came back while every held request is still held.
    assert.equal(held.settled.length, 0)
    assert.equal(fullA.held + fullB.held, 4)
    assert.equal(fullAUp.requests.length + fullBUp.requests.length, 4)

    fullA.release()
    fullB.release()
    const replies = await held.all
    assert.deepEqual(replies.map(r => r.status), [200, 200, 200, 200])
    await waitForActive(gw, 'full', { [fullAUp.url]: 0, [fullBUp.url]: 0 })

    for (let i = 0; i < 4; i++) {
      const port = portOf(await send(gw, `/full/after/${i}`, { agent }))
      assert.ok(port === fullAUp.port || port === fullBUp.port)
    }
    assert.equal(fullAUp.maxInFlight, 2)
    assert.equal(fullBUp.maxInFlight, 2)
  })

  await t.test('the least saturated target wins: with one target holding 4 slow requests and the other idle, new requests go to the idle one', SUBTEST, async () => {
    // 8 held requests spread 4 and 4 (each goes to the less loaded target)...
    const burst = new Burst(Array.from({ length: 8 }, async (_, i) => await send(gw, `/least/held/${i}`, { agent })))
    for (let i = 0; i < 500 && slow.arrived + idle.arrived < 8; i++) await new Promise(resolve => setTimeout(resolve, 10))
    assert.equal(slow.arrived, 4)
    assert.equal(idle.arrived, 4)
    // ...then one target answers its 4 and goes idle; the other keeps holding 4.
    idle.release()
    const answered = await burst.answered(4)
    assert.ok(answered.every(r => portOf(r) === idleUp.port))
    await waitForActive(gw, 'least', { [slowUp.url]: 4, [idleUp.url]: 0 })

    for (let i = 0; i < 20; i++) assert.equal(portOf(await send(gw, `/least/new/${i}`, { agent })), idleUp.port)
    assert.equal(slowUp.requests.length, 4)
    assert.equal(slow.held, 4)

    slow.release()
    assert.ok((await burst.all).every(r => r.status === 200))
  })
})
