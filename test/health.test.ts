// /health under pressure, end to end: a real gateway process whose heap is over a tiny limit, or
// whose event loop really stops (SIGSTOP, then SIGCONT: the process does not run at all for that
// long). The gateway samples its pressure once a second, so each case polls for the answer.
import { strict as assert } from 'node:assert'
import { test, type TestContext } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { gateway, routeFile, send, upstream, type GatewayProcess, type Reply, type Upstream } from './helpers.js'

/** GETs `path` every 50 ms until `match` holds; the matching reply, or a failure after `timeoutMs`. */
async function poll (gw: GatewayProcess, path: string, match: (r: Reply) => boolean, what: string, timeoutMs: number): Promise<Reply> {
  const deadline = Date.now() + timeoutMs
  const seen = new Set<number>()
  for (;;) {
    const reply = await send(gw, path, { timeoutMs: 10_000 })
    if (match(reply)) return reply
    seen.add(reply.status)
    if (Date.now() > deadline) assert.fail(`${what}: not within ${timeoutMs} ms (statuses seen: ${[...seen].join(', ')})`)
    await sleep(50)
  }
}

async function setup (t: TestContext, env: Record<string, string>): Promise<{ gw: GatewayProcess, upstream: Upstream }> {
  const origin = await upstream(t)
  const gw = await gateway(t, { 'app.yaml': routeFile([origin.url], ['/api']) }, env)
  return { gw, upstream: origin }
}

/** What the README promises of a 503 under pressure: JSON, with a Retry-After. */
function assertShed (reply: Reply, where: string): void {
  assert.equal(reply.status, 503, `${where}: ${reply.body}`)
  assert.match(String(reply.headers['retry-after']), /^[1-9]\d*$/, `${where}: Retry-After`)
  assert.equal(reply.json.statusCode, 503)
}

test('heap over MAX_HEAP_USED_BYTES: /health answers 503 with Retry-After, and every route sheds load (the upstream sees nothing)', async t => {
  // No Node process runs in 1 kB of heap: the first sample finds the gateway over the limit.
  const { gw, upstream } = await setup(t, { MAX_HEAP_USED_BYTES: '1kb' })
  const health = await poll(gw, '/health', r => r.status !== 200, '/health leaves 200', 5000)
  assertShed(health, '/health')
  const seen = upstream.requests.length
  assertShed(await send(gw, '/api/x'), 'a proxied route')
  assert.equal(upstream.requests.length, seen, 'a shed request never reaches the upstream')
  assert.equal(gw.proc.exitCode, null, 'the gateway keeps running')
})

test('the same gateway without the limit: /health 200 and the route proxies (the 503 above is the limit\'s doing)', async t => {
  const { gw, upstream } = await setup(t, { MAX_HEAP_USED_BYTES: '0' })
  await sleep(1200) // past the first sample
  const health = await send(gw, '/health')
  assert.equal(health.status, 200)
  assert.deepEqual(health.json, { status: 'ok' })
  assert.equal((await send(gw, '/api/x')).status, 200)
  assert.equal(upstream.requests.length, 1)
})

test('an event loop that stood still for 4 s (SIGSTOP) is over MAX_EVENT_LOOP_DELAY=25ms: /health 503, then 200 again once it runs freely', { timeout: 30_000 }, async t => {
  // The delay is the mean over one sampling second: a 4 s stop weighs at least ~40 ms in it.
  const { gw } = await setup(t, { MAX_EVENT_LOOP_DELAY: '25ms' })
  await sleep(1200) // the first sample is taken
  gw.signal('SIGSTOP')
  await sleep(4000)
  gw.signal('SIGCONT')
  const health = await poll(gw, '/health', r => r.status !== 200, '/health leaves 200 after the stop', 5000)
  assertShed(health, '/health')
  await poll(gw, '/health', r => r.status === 200, '/health back to 200', 10_000)
})
