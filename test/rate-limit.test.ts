// Route rate limits end to end: real gateway processes, real upstreams, and for the shared store a
// real redis-server that this file starts on a free port of 127.0.0.1 (never the one on 6379).
// A gateway gets Redis only when its test passes REDIS_URL (helpers.childEnv drops the caller's).
import { strict as assert } from 'node:assert'
import { once } from 'node:events'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { test, type TestContext } from 'node:test'
import { closedPort, gateway, metric, redisCli, send, writeRoutes, startRedis, startRedisCluster, startSentinel, upstream, type GatewayProcess, type RedisServer, type Reply } from './helpers.js'

const FALLBACK_MSG = 'rate-limit store failed: routes fall back to their onStoreError policy'

/**
 * For tests of exact shared budgets, not of the deadline: on a loaded machine a 50 ms deadline
 * (the default) can pass while Redis answers, and the local fallback then admits on its own.
 */
const PATIENT = { REDIS_TIMEOUT: '2s' }

async function readyStore (gw: GatewayProcess): Promise<unknown> {
  return (await send(gw, '/ready')).json.rateLimitStore
}

/**
 * Sends a request to `path` every 100 ms until /ready says the limiter is on Redis again; fails
 * after `timeoutMs`. Then the recovery must have been logged.
 */
async function backOnRedis (gw: GatewayProcess, path: string, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs
  let store: unknown
  do {
    await sleep(100)
    await send(gw, path, { headers: { 'x-api-key': 'probe' } })
    store = await readyStore(gw)
  } while (store !== 'redis' && performance.now() < deadline)
  assert.equal(store, 'redis', `the gateway went (back) to Redis within ${timeoutMs} ms`)
  await gw.waitForLog(l => l.msg === 'rate-limit store recovered', 1000)
}

const RATE_HEADERS = ['x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-reset', 'ratelimit', 'ratelimit-policy', 'retry-after']

function assertNoRateHeaders (r: Reply, where: string): void {
  for (const h of RATE_HEADERS) assert.equal(r.headers[h], undefined, `${where}: ${h}`)
}

function assertRefused (r: Reply, max: number, window: string, maxRetrySeconds: number): number {
  assert.equal(r.status, 429)
  assert.match(String(r.headers['content-type']), /^application\/json/)
  assert.deepEqual(r.json, {
    statusCode: 429,
    code: 'GATEHOUSE_ERR_RATE_LIMITED',
    error: 'Too Many Requests',
    message: `Rate limit of ${max} requests per ${window} reached; see Retry-After`
  })
  const retry = String(r.headers['retry-after'])
  assert.match(retry, /^\d+$/, `Retry-After ${retry}`)
  const seconds = Number(retry)
  assert.ok(seconds >= 1 && seconds <= maxRetrySeconds, `Retry-After ${seconds}`)
  return seconds
}

/** A YAML route file: one route per [path, rateLimit YAML lines or ''] pair. */
function limitedFile (target: string, routes: Array<[path: string, rateLimit: string]>): string {
  const lines = ['targets:', `  - url: ${target}`, 'routes:']
  for (const [path, limit] of routes) {
    lines.push(`  - path: ${path}`)
    if (limit !== '') lines.push('    rateLimit:', ...limit.split('\n').map(l => `      ${l}`))
  }
  return lines.join('\n') + '\n'
}

test('memory store, max 3 per 10s: three 200s counting down, then 429 JSON with Retry-After; the upstream sees 3; an unlimited route has no rate headers', async t => {
  const origin = await upstream(t)
  const gw = await gateway(t, {
    'api.yaml': limitedFile(origin.url, [['/limited', 'max: 3\nwindow: 10s'], ['/free', '']])
  })
  assert.equal(await readyStore(gw), 'memory')

  for (const remaining of [2, 1, 0]) {
    const r = await send(gw, '/limited/x')
    assert.equal(r.status, 200, r.body)
    assert.equal(r.headers['x-ratelimit-limit'], '3')
    assert.equal(r.headers['x-ratelimit-remaining'], String(remaining))
    assert.equal(r.headers['x-ratelimit-reset'], '10')
    assert.equal(r.headers['ratelimit-policy'], '"api-0";q=3;w=10')
    assert.equal(r.headers['retry-after'], undefined)
  }
  const refused = await send(gw, '/limited/x')
  const retry = assertRefused(refused, 3, '10s', 10)
  assert.equal(refused.headers['x-ratelimit-limit'], '3')
  assert.equal(refused.headers['x-ratelimit-remaining'], '0')
  assert.equal(refused.headers['x-ratelimit-reset'], String(retry))
  assert.equal(refused.headers['ratelimit-policy'], '"api-0";q=3;w=10')
  assert.equal(origin.requests.length, 3, 'the refused request never reached the upstream')

  // Another route of the same upstream, without rateLimit: never limited, no headers.
  for (let i = 0; i < 5; i++) {
    const r = await send(gw, '/free/x')
    assert.equal(r.status, 200)
    assertNoRateHeaders(r, `/free request ${i}`)
  }
  assert.equal(origin.requests.length, 8)

  // Metrics: one rejection on this limit, one timed decision per limited request, none for /free.
  assert.equal(await metric(gw, 'rate_limiter_rejected_total', { route: 'api-0' }), 1)
  assert.equal(await metric(gw, 'rate_limiter_duration_seconds_count'), 4)
  assert.equal(await metric(gw, 'rate_limiter_duration_seconds_bucket', { le: '+Inf' }), 4)
  assert.equal(await metric(gw, 'rate_limiter_store_errors_total'), 0)
  assert.equal(await metric(gw, 'rate_limiter_fallback_active'), 0)
})

test('key header:x-api-key: each key has its own budget; requests without the header share one empty key', async t => {
  const origin = await upstream(t)
  const gw = await gateway(t, { 'keyed.yaml': limitedFile(origin.url, [['/k', 'max: 2\nwindow: 10s\nkey: header:x-api-key']]) })
  const status = async (headers: Record<string, string> = {}): Promise<number> => (await send(gw, '/k', { headers })).status

  assert.deepEqual([await status({ 'x-api-key': 'alice' }), await status({ 'x-api-key': 'alice' }), await status({ 'x-api-key': 'alice' })], [200, 200, 429])
  const bob = await send(gw, '/k', { headers: { 'x-api-key': 'bob' } })
  assert.equal(bob.status, 200, 'bob is not charged for alice')
  assert.equal(bob.headers['x-ratelimit-remaining'], '1')
  assert.deepEqual([await status(), await status(), await status()], [200, 200, 429], 'no header: one shared budget')
  assert.equal(await status({ 'x-api-key': '' }), 429, 'an empty header is the same empty key')
  assert.equal(await status({ 'x-api-key': 'bob' }), 200)
  assert.equal(origin.requests.length, 6)
})

test('key ip: the budget follows the client address; X-Forwarded-For from an untrusted peer does not buy a new one', async t => {
  const origin = await upstream(t)
  const gw = await gateway(t, { 'byip.yaml': limitedFile(origin.url, [['/ip', 'max: 2\nwindow: 10s']]) })
  const status = async (from: string, headers: Record<string, string> = {}): Promise<number> => (await send(gw, '/ip', { headers, localAddress: from })).status

  assert.deepEqual([await status('127.0.0.1'), await status('127.0.0.1'), await status('127.0.0.1')], [200, 200, 429])
  assert.equal(await status('127.0.0.1', { 'x-forwarded-for': '10.9.9.9' }), 429)
  assert.deepEqual([await status('127.0.0.2'), await status('127.0.0.2'), await status('127.0.0.2')], [200, 200, 429])
  assert.equal(origin.requests.length, 4)
})

test('the window slides: max 2 per 1s refuses the 3rd with Retry-After 1, then frees one slot when the oldest request leaves', async t => {
  const origin = await upstream(t)
  const gw = await gateway(t, { 'slide.yaml': limitedFile(origin.url, [['/s', 'max: 2\nwindow: 1s']]) })
  const url = '/s'

  const t0 = performance.now()
  assert.equal((await send(gw, url)).status, 200)
  await sleep(500)
  assert.equal((await send(gw, url)).status, 200)
  const third = await send(gw, url)
  assertRefused(third, 2, '1s', 1)
  assert.equal(third.headers['retry-after'], '1')
  // At ~1.1 s the first request has left the window, the second (at ~0.5 s) has not: one slot.
  await sleep(Math.max(0, t0 + 1100 - performance.now()))
  assert.equal((await send(gw, url)).status, 200, 'a slot freed once the oldest request left the window')
  const again = await send(gw, url)
  assert.ok(performance.now() - t0 < 1450, 'still inside the second request\'s window; the machine is too slow for this check')
  assertRefused(again, 2, '1s', 1)
  assert.equal(origin.requests.length, 3)
})

test('a reload that changes max: the next request counts against the new max, in the same budget', async t => {
  const origin = await upstream(t)
  const gw = await gateway(t, { 'r.yaml': limitedFile(origin.url, [['/r', 'max: 2\nwindow: 60s']]) }, { WATCH_ROUTES: 'false' })
  assert.deepEqual([(await send(gw, '/r')).status, (await send(gw, '/r')).status, (await send(gw, '/r')).status], [200, 200, 429])
  await writeRoutes(gw.routesDir, { 'r.yaml': limitedFile(origin.url, [['/r', 'max: 5\nwindow: 60s']]) })
  gw.signal('SIGHUP')
  await gw.waitForLog(l => l.msg === 'route table reloaded')
  const next = await send(gw, '/r')
  assert.equal(next.status, 200)
  assert.equal(next.headers['x-ratelimit-limit'], '5')
  assert.equal(next.headers['x-ratelimit-remaining'], '2', 'the 2 admitted before the reload still count')
})

test('three gateways sharing one Redis, max 10: 30 round-robin requests give exactly 10 × 200 and 20 × 429; a concurrent burst of 60 admits exactly 10', async t => {
  const redis = await startRedis()
  t.after(() => redis.stop())
  const origin = await upstream(t)
  const files = { 'shared.yaml': limitedFile(origin.url, [['/shared', 'max: 10\nwindow: 60s\nkey: header:x-api-key']]) }
  const gws = await Promise.all([0, 1, 2].map(async () => await gateway(t, files, { REDIS_URL: redis.url, ...PATIENT })))
  for (const gw of gws) assert.equal(await readyStore(gw), 'redis')

  const sequential: Reply[] = []
  for (let i = 0; i < 30; i++) sequential.push(await send(gws[i % 3] as GatewayProcess, '/shared', { headers: { 'x-api-key': 'round-robin' } }))
  assert.deepEqual(sequential.map(r => r.status), [...Array(10).fill(200), ...Array(20).fill(429)])
  // One budget counted down across the three processes.
  assert.deepEqual(sequential.slice(0, 10).map(r => r.headers['x-ratelimit-remaining']), ['9', '8', '7', '6', '5', '4', '3', '2', '1', '0'])
  for (const r of sequential.slice(10)) assertRefused(r, 10, '60s', 60)
  assert.equal(origin.requests.length, 10)

  const burst = await Promise.all(Array.from({ length: 60 }, async (_, i) => await send(gws[i % 3] as GatewayProcess, '/shared', { headers: { 'x-api-key': 'burst' } })))
  const counts = new Map<number, number>()
  for (const r of burst) counts.set(r.status, (counts.get(r.status) ?? 0) + 1)
  assert.deepEqual(Object.fromEntries(counts), { 200: 10, 429: 50 })
  assert.deepEqual(burst.filter(r => r.status === 200).map(r => Number(r.headers['x-ratelimit-remaining'])).sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
  assert.equal(origin.requests.length, 20)
  for (const gw of gws) assert.equal(gw.logs.filter(l => l.msg === FALLBACK_MSG).length, 0, 'every decision was Redis\'s')
})

test('REDIS_KEY_PREFIX: gateways with another prefix on the same Redis keep budgets and heartbeats of their own; the same prefix shares them', async t => {
  const redis = await startRedis()
  t.after(() => redis.stop())
  const origin = await upstream(t)
  const files = { 'prefixed.yaml': limitedFile(origin.url, [['/p', 'max: 2\nwindow: 60s\nkey: header:x-api-key']]) }
  const [staging, production, production2] = await Promise.all(['staging:', 'production:', 'production:'].map(async prefix =>
    await gateway(t, files, { REDIS_URL: redis.url, REDIS_KEY_PREFIX: prefix, ...PATIENT })))
  const statuses = async (gw: GatewayProcess, n: number): Promise<number[]> => {
    const out: number[] = []
    for (let i = 0; i < n; i++) out.push((await send(gw, '/p', { headers: { 'x-api-key': 'k' } })).status)
    return out
  }
  assert.deepEqual(await statuses(staging as GatewayProcess, 3), [200, 200, 429])
  // The staging budget is spent; production's is whole, and shared by both of its gateways.
  assert.deepEqual(await statuses(production as GatewayProcess, 1), [200])
  assert.deepEqual(await statuses(production2 as GatewayProcess, 2), [200, 429])
  // Every key is under one of the two prefixes.
  const count = async (pattern: string): Promise<number> => Number(await redisCli(redis.port, 'EVAL', "return #redis.call('KEYS', ARGV[1])", '0', pattern))
  const [all, ofStaging, ofProduction] = await Promise.all([count('*'), count('staging:*'), count('production:*')])
  assert.ok(ofStaging > 0 && ofProduction > 0)
  assert.equal(ofStaging + ofProduction, all)
  // Heartbeats too: the production gateways count two replicas, staging one.
  for (let i = 0; i < 120 && (await replicasOf(production as GatewayProcess)) !== 2; i++) await sleep(100)
  assert.deepEqual([await replicasOf(staging as GatewayProcess), await replicasOf(production as GatewayProcess)], [1, 2])
})

test('Redis killed under load: no 5xx and no slow answers, local limits apply, open admits, closed answers 503; after Redis restarts, limits go through it again', async t => {
  let redis = await startRedis()
  t.after(() => redis.stop())
  const origin = await upstream(t)
  const files = {
    'store.yaml': limitedFile(origin.url, [
      ['/local', 'max: 5\nwindow: 10s\nkey: header:x-api-key\nonStoreError: local'],
      ['/open', 'max: 2\nwindow: 10s\nkey: header:x-api-key\nonStoreError: open'],
      ['/closed', 'max: 2\nwindow: 10s\nkey: header:x-api-key\nonStoreError: closed']
    ])
  }
  const gw = await gateway(t, files, { REDIS_URL: redis.url })
  assert.equal(await readyStore(gw), 'redis')
  assert.equal((await send(gw, '/closed', { headers: { 'x-api-key': 'c' } })).status, 200, 'closed passes while Redis is up')

  // Four clients hammer /local; Redis is SIGKILLed in the middle.
  const answers: Array<{ worker: number, res: Reply }> = []
  const load = { running: true }
  const worker = async (n: number): Promise<void> => {
    while (load.running) answers.push({ worker: n, res: await send(gw, '/local', { headers: { 'x-api-key': `load-${n}` } }) })
  }
  const workers = [0, 1, 2, 3].map(worker)
  await sleep(250)
  const before = answers.length
  redis.child.kill('SIGKILL')
  await once(redis.child, 'exit')
  await redis.stop() // only its data folder is left to remove
  await sleep(600)
  load.running = false
  await Promise.all(workers)
  assert.ok(before > 0 && answers.length > before + 8, `load before/after the kill: ${before}/${answers.length - before}`)
  const statuses = new Set(answers.map(a => a.res.status))
  assert.ok([...statuses].every(s => s === 200 || s === 429), `statuses: ${[...statuses].join(', ')}`)
  const slowest = Math.max(...answers.map(a => a.res.ms))
  assert.ok(slowest < 1000, `slowest answer ${Math.round(slowest)} ms`)
  t.diagnostic(`${answers.length} requests under load, slowest ${slowest.toFixed(1)} ms`)
  for (const n of [0, 1, 2, 3]) {
    const admitted = answers.filter(a => a.worker === n && a.res.status === 200).length
    // At most 5 through Redis before the kill plus 5 from the fresh local count after it.
    assert.ok(admitted >= 5 && admitted <= 10, `worker ${n} admitted ${admitted}`)
  }

  // The local limit: same max and window, in this process.
  const local: Reply[] = []
  for (let i = 0; i < 7; i++) local.push(await send(gw, '/local', { headers: { 'x-api-key': 'after-kill' } }))
  assert.deepEqual(local.map(r => r.status), [200, 200, 200, 200, 200, 429, 429])
  assert.deepEqual(local.slice(0, 5).map(r => r.headers['x-ratelimit-remaining']), ['4', '3', '2', '1', '0'])
  assertRefused(local[5] as Reply, 5, '10s', 10)
  assert.equal(await readyStore(gw), 'fallback')

  const open = await Promise.all([1, 2, 3, 4].map(async () => await send(gw, '/open', { headers: { 'x-api-key': 'o' } })))
  assert.deepEqual(open.map(r => r.status), [200, 200, 200, 200], 'open: admitted past max while the store is down')

  const closed = await send(gw, '/closed', { headers: { 'x-api-key': 'c' } })
  assert.equal(closed.status, 503)
  assert.deepEqual(closed.json, {
    statusCode: 503,
    code: 'GATEHOUSE_ERR_RATE_LIMIT_UNAVAILABLE',
    error: 'Service Unavailable',
    message: 'The rate-limit store is unavailable and this route fails closed'
  })
  assert.ok(closed.ms < 1000)
  assert.equal(gw.logs.filter(l => l.msg === FALLBACK_MSG).length, 1, 'the failure is logged once, not per request')

  // Redis comes back on the same port, empty: the gateway reconnects by itself.
  redis = await startRedis(redis.port)
  await backOnRedis(gw, '/local', 8000)

  const back: Reply[] = []
  for (let i = 0; i < 6; i++) back.push(await send(gw, '/local', { headers: { 'x-api-key': 'back' } }))
  assert.deepEqual(back.map(r => r.status), [200, 200, 200, 200, 200, 429])
  // Counted in Redis, not in this process: another replica on the same Redis finds the budget spent.
  const other = await gateway(t, files, { REDIS_URL: redis.url, ...PATIENT })
  assert.equal(await readyStore(other), 'redis')
  assertRefused(await send(other, '/local', { headers: { 'x-api-key': 'back' } }), 5, '10s', 10)
  assert.equal((await send(gw, '/closed', { headers: { 'x-api-key': 'c2' } })).status, 200, 'closed passes again')
  assert.equal(await readyStore(gw), 'redis')
  assert.equal(gw.logs.filter(l => l.msg === FALLBACK_MSG).length, 1)
})

/** rate_limiter_replicas of a gateway: the live replicas it last counted in Redis. */
async function replicasOf (gw: GatewayProcess): Promise<number | undefined> {
  return await metric(gw, 'rate_limiter_replicas')
}

/** A redis-server of its own and two gateways serving `files` on it, once each counts both. */
async function twoReplicas (t: TestContext, files: Record<string, string>): Promise<{ redis: RedisServer, a: GatewayProcess, b: GatewayProcess }> {
  const redis = await startRedis()
  t.after(() => redis.stop())
  const a = await gateway(t, files, { REDIS_URL: redis.url, ...PATIENT })
  const b = await gateway(t, files, { REDIS_URL: redis.url, ...PATIENT })
  // Both send a heartbeat at start: the second counts two at once, the first on its next beat (5 s).
  for (let i = 0; i < 120 && (await replicasOf(a) !== 2 || await replicasOf(b) !== 2); i++) await sleep(100)
  assert.deepEqual([await replicasOf(a), await replicasOf(b)], [2, 2], 'each gateway counts both')
  return { redis, a, b }
}

test('local fallback divides max by the live replicas: two gateways on one Redis, max 10, Redis killed → 5 per gateway', async t => {
  const origin = await upstream(t)
  const { redis, a, b } = await twoReplicas(t, { 'pair.yaml': limitedFile(origin.url, [['/pair', 'max: 10\nwindow: 10s\nkey: header:x-api-key']]) })

  redis.child.kill('SIGKILL')
  await once(redis.child, 'exit')
  for (const gw of [a, b]) {
    const statuses: number[] = []
    for (let i = 0; i < 7; i++) statuses.push((await send(gw, '/pair', { headers: { 'x-api-key': 'k' } })).status)
    assert.deepEqual(statuses, [200, 200, 200, 200, 200, 429, 429], 'max 10 split over 2 live replicas')
  }
})

test('a replica that stops beating stops counting: after 15 s the survivor counts one replica, and with Redis gone it applies the whole max', { timeout: 60_000 }, async t => {
  const origin = await upstream(t)
  const { redis, a: survivor, b: gone } = await twoReplicas(t, { 'beat.yaml': limitedFile(origin.url, [['/beat', 'max: 6\nwindow: 10s\nkey: header:x-api-key']]) })

  // SIGKILL: no goodbye, the heartbeats just stop. A heartbeat counts for 15 s, and both beat
  // every 5 s: the survivor counts itself alone within 20 s, and not before 10 s (the last beat
  // of the dead one may be 5 s old when it dies).
  const killedAt = performance.now()
  await gone.stop()
  while (await replicasOf(survivor) !== 1) {
    assert.ok(performance.now() - killedAt < 25_000, 'the survivor still counts two replicas 25 s after one died')
    await sleep(250)
  }
  const alone = performance.now() - killedAt
  assert.ok(alone > 9_500, `counted alone ${Math.round(alone)} ms after the kill: a heartbeat counts for 15 s`)
  t.diagnostic(`the survivor counted one replica ${Math.round(alone)} ms after the other was killed`)

  // What it is for: with Redis gone, the local fallback divides max by the replicas still alive.
  redis.child.kill('SIGKILL')
  await once(redis.child, 'exit')
  const statuses: number[] = []
  for (let i = 0; i < 8; i++) statuses.push((await send(survivor, '/beat', { headers: { 'x-api-key': 'k' } })).status)
  assert.deepEqual(statuses, [200, 200, 200, 200, 200, 200, 429, 429], 'max 6 over 1 live replica')
  assert.equal(await readyStore(survivor), 'fallback')
})

test('a gateway that starts while its Redis is down serves on the fallback, and goes to Redis once Redis comes up', { timeout: 30_000 }, async t => {
  const port = await closedPort()
  const origin = await upstream(t)
  const files = { 'late.yaml': limitedFile(origin.url, [['/late', 'max: 3\nwindow: 10s\nkey: header:x-api-key']]) }
  const url = `redis://127.0.0.1:${port}`
  const gw = await gateway(t, files, { REDIS_URL: url, ...PATIENT })
  assert.equal(await readyStore(gw), 'fallback')
  assert.equal((await send(gw, '/health')).status, 200, 'liveness is not Redis')
  const local: number[] = []
  for (let i = 0; i < 4; i++) local.push((await send(gw, '/late', { headers: { 'x-api-key': 'early' } })).status)
  assert.deepEqual(local, [200, 200, 200, 429], 'the local limit, same max')
  const fallback = gw.logs.filter(l => l.msg === FALLBACK_MSG)
  assert.equal(fallback.length, 1, 'logged once')
  assert.match(String(fallback[0]?.error), /^Rate-limit store failed: redis connect failed: connection refused \(connect ECONNREFUSED 127\.0\.0\.1:\d+\)$/, 'the cause, not a timeout')
  assert.ok(!JSON.stringify(fallback[0]).includes('"stack"'), 'no stack')
  assert.match(String((await send(gw, '/ready')).json.rateLimitStoreError), /^connection refused/)

  // Redis comes up on that port: the gateway connects by itself.
  const redis = await startRedis(port)
  t.after(() => redis.stop())
  await backOnRedis(gw, '/late', 10_000)
  assert.equal((await send(gw, '/ready')).json.rateLimitStoreError, undefined, 'no cause once Redis answers')

  // Now counted in Redis: another replica on it finds the budget this one spent.
  const spent: number[] = []
  for (let i = 0; i < 4; i++) spent.push((await send(gw, '/late', { headers: { 'x-api-key': 'shared' } })).status)
  assert.deepEqual(spent, [200, 200, 200, 429])
  const other = await gateway(t, files, { REDIS_URL: url, ...PATIENT })
  assert.equal(await readyStore(other), 'redis')
  assertRefused(await send(other, '/late', { headers: { 'x-api-key': 'shared' } }), 3, '10s', 10)
})

test('a Redis Cluster of three masters, given one seed node: two gateways share each budget, and the budgets spread over the masters', async t => {
  const nodes = await startRedisCluster(3)
  t.after(async () => { await Promise.all(nodes.map(async n => await n.stop())) })
  const origin = await upstream(t)
  const files = { 'cluster.yaml': limitedFile(origin.url, [['/cluster', 'max: 3\nwindow: 60s\nkey: header:x-api-key']]) }
  const env = { REDIS_URL: `redis+cluster://127.0.0.1:${(nodes[0] as RedisServer).port}`, ...PATIENT }
  const gws = [await gateway(t, files, env), await gateway(t, files, env)]
  for (const gw of gws) assert.equal(await readyStore(gw), 'redis')

  const clients = Array.from({ length: 12 }, (_, i) => `client-${i}`)
  for (const client of clients) {
    const statuses: number[] = []
    for (let i = 0; i < 5; i++) statuses.push((await send(gws[i % 2] as GatewayProcess, '/cluster', { headers: { 'x-api-key': client } })).status)
    assert.deepEqual(statuses, [200, 200, 200, 429, 429], client)
  }
  assert.equal(origin.requests.length, 36)
  // Each budget lives in one slot (its hash tag); twelve budgets land on more than one master.
  const keysPerMaster = await Promise.all(nodes.map(async n => Number((await redisCli(n.port, 'dbsize')).trim())))
  assert.ok(keysPerMaster.filter(n => n > 0).length >= 2, `keys per master: ${keysPerMaster.join(', ')}`)
  for (const gw of gws) {
    assert.equal(await readyStore(gw), 'redis')
    assert.equal(gw.logs.filter(l => l.msg === FALLBACK_MSG).length, 0)
  }
})

test('Redis Sentinel (redis+sentinel://…/master-name): the gateway finds the master through the sentinel and limits there', async t => {
  const master = await startRedis()
  t.after(() => master.stop())
  const sentinel = await startSentinel(master.port, 'gatehouse')
  t.after(() => sentinel.stop())
  const origin = await upstream(t)
  const gw = await gateway(t, { 'sentinel.yaml': limitedFile(origin.url, [['/sentinel', 'max: 2\nwindow: 60s']]) }, {
    REDIS_URL: `redis+sentinel://127.0.0.1:${sentinel.port}/gatehouse`,
    ...PATIENT
  })
  assert.equal(await readyStore(gw), 'redis')
  const statuses: number[] = []
  for (let i = 0; i < 4; i++) statuses.push((await send(gw, '/sentinel')).status)
  assert.deepEqual(statuses, [200, 200, 429, 429])
  // The budget was spent on the master: a gateway that talks to the master directly finds it spent.
  const direct = await gateway(t, { 'sentinel.yaml': limitedFile(origin.url, [['/sentinel', 'max: 2\nwindow: 60s']]) }, { REDIS_URL: master.url, ...PATIENT })
  assert.equal(await readyStore(direct), 'redis')
  assertRefused(await send(direct, '/sentinel'), 2, '60s', 60)
  assert.equal(origin.requests.length, 2)
})

test('a wrong Redis password: the fallback line and /ready say authentication failed, and the gateway does not retry it in a tight loop', { timeout: 30_000 }, async t => {
  const redis = await startRedis(undefined, ['--requirepass', 'right-password'])
  t.after(() => redis.stop())
  const origin = await upstream(t)
  const files = { 'auth.yaml': limitedFile(origin.url, [['/auth', 'max: 3\nwindow: 10s']]) }
  const connections = async (): Promise<number> => Number(/total_connections_received:(\d+)/.exec(await redisCli(redis.port, '-a', 'right-password', '--no-auth-warning', 'INFO', 'stats'))?.[1])
  const gw = await gateway(t, files, { REDIS_URL: `redis://:wrong-password@127.0.0.1:${redis.port}`, ...PATIENT })
  assert.equal(await readyStore(gw), 'fallback')
  const fallback = gw.logs.filter(l => l.msg === FALLBACK_MSG)
  assert.equal(fallback.length, 1)
  assert.match(String(fallback[0]?.error), /authentication failed \(WRONGPASS[^)]*\): check the user and password of REDIS_URL/)
  assert.match(String((await send(gw, '/ready')).json.rateLimitStoreError), /^authentication failed/)
  assert.equal((await send(gw, '/auth')).status, 200, 'served on the local fallback')
  const before = await connections()
  await sleep(3000)
  const attempts = (await connections()) - before - 1
  assert.ok(attempts <= 1, `${attempts} connection attempts in 3 s with a wrong password`)
})

test('Redis keys are readable: no control characters, a client value\'s tab and % percent-encoded, and redis-cli can find and delete them', async t => {
  const redis = await startRedis()
  t.after(() => redis.stop())
  const origin = await upstream(t)
  const files = { 'keys.yaml': limitedFile(origin.url, [['/k', 'max: 1\nwindow: 60s\nkey: header:x-api-key'], ['/i', 'max: 5\nwindow: 60s']]) }
  const gw = await gateway(t, files, { REDIS_URL: redis.url, REDIS_KEY_PREFIX: 'readable:', ...PATIENT })
  assert.equal((await send(gw, '/k', { headers: { 'x-api-key': 'a\tb%c' } })).status, 200)
  assert.equal((await send(gw, '/k', { headers: { 'x-api-key': 'a\tb%c' } })).status, 429)
  assert.equal((await send(gw, '/k', { headers: { 'x-api-key': 'a%09b%25c' } })).status, 200, 'the escaped spelling is another client')
  assert.equal((await send(gw, '/i')).status, 200)
  const keys = (await redisCli(redis.port, '--scan', '--pattern', 'readable:{*')).trim().split('\n').sort()
  assert.deepEqual(keys, ['a%09b%25c', 'a%2509b%2525c'].flatMap(k => [`readable:{keys-0:h:${k}}:log`, `readable:{keys-0:h:${k}}:seq`]).concat(['readable:{keys-1:127.0.0.1}:log', 'readable:{keys-1:127.0.0.1}:seq']))
  // Deleting a client's keys by name gives that client its budget back.
  assert.equal((await redisCli(redis.port, 'DEL', 'readable:{keys-0:h:a%09b%25c}:log', 'readable:{keys-0:h:a%09b%25c}:seq')).trim(), '2')
  assert.equal((await send(gw, '/k', { headers: { 'x-api-key': 'a\tb%c' } })).status, 200)
})
