// Route rate limits end to end: real gateway processes, real upstreams, and for the shared store a
// real redis-server that this file starts on a free port of 127.0.0.1 (never the one on 6379).
// A gateway gets Redis only when its test passes REDIS_URL (helpers.childEnv drops the caller's).
import { strict as assert } from 'node:assert'
import { once } from 'node:events'
import http, { type IncomingHttpHeaders } from 'node:http'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { test, type TestContext } from 'node:test'
import { closedPort, redisCli, removeDir, routeDir, startGateway, startRedis, startRedisCluster, startSentinel, startUpstream, type GatewayProcess, type RedisServer, type Upstream } from './helpers.js'

const FALLBACK_MSG = 'rate-limit store failed: routes fall back to their onStoreError policy'

/**
 * For tests of exact shared budgets, not of the deadline: on a loaded machine a 50 ms deadline
 * (the default) can pass while Redis answers, and the local fallback then admits on its own.
 */
const PATIENT = { REDIS_TIMEOUT: '2s' }

interface Res {
  status: number
  headers: IncomingHttpHeaders
  body: string
  /** Wall time from sending to the end of the body. */
  ms: number
}

/** One GET on its own connection (so `localAddress` is honoured), bounded at 5 s. */
async function get (url: string, headers: Record<string, string> = {}, localAddress?: string): Promise<Res> {
  const t0 = performance.now()
  return await new Promise<Res>((resolve, reject) => {
    const req = http.request(url, { headers, localAddress, agent: false }, res => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString(), ms: performance.now() - t0 }))
      res.on('error', reject)
    })
    req.setTimeout(5000, () => req.destroy(new Error(`GET ${url} got no answer in 5 s`)))
    req.on('error', reject)
    req.end()
  })
}

const json = (r: Res): Record<string, unknown> => JSON.parse(r.body) as Record<string, unknown>

async function readyStore (gw: GatewayProcess): Promise<unknown> {
  return json(await get(`${gw.url}/ready`)).rateLimitStore
}

const RATE_HEADERS = ['x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-reset', 'ratelimit', 'ratelimit-policy', 'retry-after']

function assertNoRateHeaders (r: Res, where: string): void {
  for (const h of RATE_HEADERS) assert.equal(r.headers[h], undefined, `${where}: ${h}`)
}

function assertRefused (r: Res, max: number, window: string, maxRetrySeconds: number): number {
  assert.equal(r.status, 429)
  assert.match(String(r.headers['content-type']), /^application\/json/)
  assert.deepEqual(json(r), {
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

async function upstreamFor (t: TestContext): Promise<Upstream> {
  const upstream = await startUpstream()
  t.after(() => upstream.close())
  return upstream
}

async function gatewayFor (t: TestContext, files: Record<string, string>, env: Record<string, string> = {}): Promise<GatewayProcess> {
  const dir = await routeDir(files)
  t.after(() => removeDir(dir))
  const gw = await startGateway(dir, env)
  t.after(() => gw.stop())
  return gw
}

test('memory store, max 3 per 10s: three 200s counting down, then 429 JSON with Retry-After; the upstream sees 3; an unlimited route has no rate headers', async t => {
  const upstream = await upstreamFor(t)
  const gw = await gatewayFor(t, {
    'api.yaml': limitedFile(upstream.url, [['/limited', 'max: 3\nwindow: 10s'], ['/free', '']])
  })
  assert.equal(await readyStore(gw), 'memory')

  for (const remaining of [2, 1, 0]) {
    const r = await get(`${gw.url}/limited/x`)
    assert.equal(r.status, 200, r.body)
    assert.equal(r.headers['x-ratelimit-limit'], '3')
    assert.equal(r.headers['x-ratelimit-remaining'], String(remaining))
    assert.equal(r.headers['x-ratelimit-reset'], '10')
    assert.equal(r.headers['ratelimit-policy'], '"api-0";q=3;w=10')
    assert.equal(r.headers.ratelimit, `"api-0";r=${remaining};t=10`)
    assert.equal(r.headers['retry-after'], undefined)
  }
  const refused = await get(`${gw.url}/limited/x`)
  const retry = assertRefused(refused, 3, '10s', 10)
  assert.equal(refused.headers['x-ratelimit-limit'], '3')
  assert.equal(refused.headers['x-ratelimit-remaining'], '0')
  assert.equal(refused.headers['x-ratelimit-reset'], String(retry))
  assert.equal(refused.headers['ratelimit-policy'], '"api-0";q=3;w=10')
  assert.equal(refused.headers.ratelimit, `"api-0";r=0;t=${retry}`)
  assert.equal(upstream.requests.length, 3, 'the refused request never reached the upstream')

  // Another route of the same upstream, without rateLimit: never limited, no headers.
  for (let i = 0; i < 5; i++) {
    const r = await get(`${gw.url}/free/x`)
    assert.equal(r.status, 200)
    assertNoRateHeaders(r, `/free request ${i}`)
  }
  assert.equal(upstream.requests.length, 8)

  // Metrics: one rejection on this limit, one timed decision per limited request, none for /free.
  const metrics = await (await fetch(`${gw.url}/metrics`)).text()
  const value = (line: string) => Number(metrics.split('\n').find(l => l.startsWith(line + ' '))?.slice(line.length + 1))
  assert.equal(value('rate_limiter_rejected_total{route="api-0"}'), 1)
  assert.equal(value('rate_limiter_duration_seconds_count'), 4)
  assert.equal(value('rate_limiter_duration_seconds_bucket{le="+Inf"}'), 4)
  assert.equal(value('rate_limiter_store_errors_total'), 0)
  assert.equal(value('rate_limiter_fallback_active'), 0)
})

test('key header:x-api-key: each key has its own budget; requests without the header share one empty key', async t => {
  const upstream = await upstreamFor(t)
  const gw = await gatewayFor(t, { 'keyed.yaml': limitedFile(upstream.url, [['/k', 'max: 2\nwindow: 10s\nkey: header:x-api-key']]) })
  const status = async (headers: Record<string, string> = {}): Promise<number> => (await get(`${gw.url}/k`, headers)).status

  assert.deepEqual([await status({ 'x-api-key': 'alice' }), await status({ 'x-api-key': 'alice' }), await status({ 'x-api-key': 'alice' })], [200, 200, 429])
  const bob = await get(`${gw.url}/k`, { 'x-api-key': 'bob' })
  assert.equal(bob.status, 200, 'bob is not charged for alice')
  assert.equal(bob.headers['x-ratelimit-remaining'], '1')
  assert.deepEqual([await status(), await status(), await status()], [200, 200, 429], 'no header: one shared budget')
  assert.equal(await status({ 'x-api-key': '' }), 429, 'an empty header is the same empty key')
  assert.equal(await status({ 'x-api-key': 'bob' }), 200)
  assert.equal(upstream.requests.length, 6)
})

test('key ip: the budget follows the client address; X-Forwarded-For from an untrusted peer does not buy a new one', async t => {
  const upstream = await upstreamFor(t)
  const gw = await gatewayFor(t, { 'byip.yaml': limitedFile(upstream.url, [['/ip', 'max: 2\nwindow: 10s']]) })
  const status = async (from: string, headers: Record<string, string> = {}): Promise<number> => (await get(`${gw.url}/ip`, headers, from)).status

  assert.deepEqual([await status('127.0.0.1'), await status('127.0.0.1'), await status('127.0.0.1')], [200, 200, 429])
  assert.equal(await status('127.0.0.1', { 'x-forwarded-for': '10.9.9.9' }), 429)
  assert.deepEqual([await status('127.0.0.2'), await status('127.0.0.2'), await status('127.0.0.2')], [200, 200, 429])
  assert.equal(upstream.requests.length, 4)
})

test('the window slides: max 2 per 1s refuses the 3rd with Retry-After 1, then frees one slot when the oldest request leaves', async t => {
  const upstream = await upstreamFor(t)
  const gw = await gatewayFor(t, { 'slide.yaml': limitedFile(upstream.url, [['/s', 'max: 2\nwindow: 1s']]) })
  const url = `${gw.url}/s`

  const t0 = performance.now()
  assert.equal((await get(url)).status, 200)
  await sleep(500)
  assert.equal((await get(url)).status, 200)
  const third = await get(url)
  assertRefused(third, 2, '1s', 1)
  assert.equal(third.headers['retry-after'], '1')
  // At ~1.1 s the first request has left the window, the second (at ~0.5 s) has not: one slot.
  await sleep(Math.max(0, t0 + 1100 - performance.now()))
  assert.equal((await get(url)).status, 200, 'a slot freed once the oldest request left the window')
  const again = await get(url)
  assert.ok(performance.now() - t0 < 1450, 'still inside the second request\'s window; the machine is too slow for this check')
  assertRefused(again, 2, '1s', 1)
  assert.equal(upstream.requests.length, 3)
})

test('three gateways sharing one Redis, max 10: 30 round-robin requests give exactly 10 × 200 and 20 × 429; a concurrent burst of 60 admits exactly 10', async t => {
  const redis = await startRedis()
  t.after(() => redis.stop())
  const upstream = await upstreamFor(t)
  const files = { 'shared.yaml': limitedFile(upstream.url, [['/shared', 'max: 10\nwindow: 60s\nkey: header:x-api-key']]) }
  const gws = await Promise.all([0, 1, 2].map(async () => await gatewayFor(t, files, { REDIS_URL: redis.url, ...PATIENT })))
  for (const gw of gws) assert.equal(await readyStore(gw), 'redis')

  const sequential: Res[] = []
  for (let i = 0; i < 30; i++) sequential.push(await get(`${(gws[i % 3] as GatewayProcess).url}/shared`, { 'x-api-key': 'round-robin' }))
  assert.deepEqual(sequential.map(r => r.status), [...Array(10).fill(200), ...Array(20).fill(429)])
  // One budget counted down across the three processes.
  assert.deepEqual(sequential.slice(0, 10).map(r => r.headers['x-ratelimit-remaining']), ['9', '8', '7', '6', '5', '4', '3', '2', '1', '0'])
  for (const r of sequential.slice(10)) assertRefused(r, 10, '60s', 60)
  assert.equal(upstream.requests.length, 10)

  const burst = await Promise.all(Array.from({ length: 60 }, async (_, i) => await get(`${(gws[i % 3] as GatewayProcess).url}/shared`, { 'x-api-key': 'burst' })))
  const counts = new Map<number, number>()
  for (const r of burst) counts.set(r.status, (counts.get(r.status) ?? 0) + 1)
  assert.deepEqual(Object.fromEntries(counts), { 200: 10, 429: 50 })
  assert.deepEqual(burst.filter(r => r.status === 200).map(r => Number(r.headers['x-ratelimit-remaining'])).sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
  assert.equal(upstream.requests.length, 20)
  for (const gw of gws) assert.equal(gw.logs.filter(l => l.msg === FALLBACK_MSG).length, 0, 'every decision was Redis\'s')
})

test('Redis killed under load: no 5xx and no slow answers, local limits apply, open admits, closed answers 503; after Redis restarts, limits go through it again', async t => {
  let redis = await startRedis()
  t.after(() => redis.stop())
  const upstream = await upstreamFor(t)
  const files = {
    'store.yaml': limitedFile(upstream.url, [
      ['/local', 'max: 5\nwindow: 10s\nkey: header:x-api-key\nonStoreError: local'],
      ['/open', 'max: 2\nwindow: 10s\nkey: header:x-api-key\nonStoreError: open'],
      ['/closed', 'max: 2\nwindow: 10s\nkey: header:x-api-key\nonStoreError: closed']
    ])
  }
  const gw = await gatewayFor(t, files, { REDIS_URL: redis.url })
  assert.equal(await readyStore(gw), 'redis')
  assert.equal((await get(`${gw.url}/closed`, { 'x-api-key': 'c' })).status, 200, 'closed passes while Redis is up')

  // Four clients hammer /local; Redis is SIGKILLed in the middle.
  const answers: Array<{ worker: number, res: Res }> = []
  const load = { running: true }
  const worker = async (n: number): Promise<void> => {
    while (load.running) answers.push({ worker: n, res: await get(`${gw.url}/local`, { 'x-api-key': `load-${n}` }) })
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
  const local: Res[] = []
  for (let i = 0; i < 7; i++) local.push(await get(`${gw.url}/local`, { 'x-api-key': 'after-kill' }))
  assert.deepEqual(local.map(r => r.status), [200, 200, 200, 200, 200, 429, 429])
  assert.deepEqual(local.slice(0, 5).map(r => r.headers['x-ratelimit-remaining']), ['4', '3', '2', '1', '0'])
  assertRefused(local[5] as Res, 5, '10s', 10)
  assert.equal(await readyStore(gw), 'fallback')

  const open = await Promise.all([1, 2, 3, 4].map(async () => await get(`${gw.url}/open`, { 'x-api-key': 'o' })))
  assert.deepEqual(open.map(r => r.status), [200, 200, 200, 200], 'open: admitted past max while the store is down')

  const closed = await get(`${gw.url}/closed`, { 'x-api-key': 'c' })
  assert.equal(closed.status, 503)
  assert.deepEqual(json(closed), {
    statusCode: 503,
    code: 'GATEHOUSE_ERR_RATE_LIMIT_UNAVAILABLE',
    error: 'Service Unavailable',
    message: 'The rate-limit store is unavailable and this route fails closed'
  })
  assert.ok(closed.ms < 1000)
  assert.equal(gw.logs.filter(l => l.msg === FALLBACK_MSG).length, 1, 'the failure is logged once, not per request')

  // Redis comes back on the same port, empty: the gateway reconnects by itself.
  redis = await startRedis(redis.port)
  const deadline = performance.now() + 8000
  let store: unknown
  do {
    await sleep(100)
    await get(`${gw.url}/local`, { 'x-api-key': 'probe' })
    store = await readyStore(gw)
  } while (store !== 'redis' && performance.now() < deadline)
  assert.equal(store, 'redis', 'the gateway went back to Redis within 8 s')
  await gw.waitForLog(l => l.msg === 'rate-limit store recovered', 1000)

  const back: Res[] = []
  for (let i = 0; i < 6; i++) back.push(await get(`${gw.url}/local`, { 'x-api-key': 'back' }))
  assert.deepEqual(back.map(r => r.status), [200, 200, 200, 200, 200, 429])
  // Counted in Redis, not in this process: another replica on the same Redis finds the budget spent.
  const other = await gatewayFor(t, files, { REDIS_URL: redis.url, ...PATIENT })
  assert.equal(await readyStore(other), 'redis')
  assertRefused(await get(`${other.url}/local`, { 'x-api-key': 'back' }), 5, '10s', 10)
  assert.equal((await get(`${gw.url}/closed`, { 'x-api-key': 'c2' })).status, 200, 'closed passes again')
  assert.equal(await readyStore(gw), 'redis')
  assert.equal(gw.logs.filter(l => l.msg === FALLBACK_MSG).length, 1)
})

test('local fallback divides max by the live replicas: two gateways on one Redis, max 10, Redis killed → 5 per gateway', async t => {
  const redis = await startRedis()
  t.after(() => redis.stop())
  const upstream = await upstreamFor(t)
  const files = { 'pair.yaml': limitedFile(upstream.url, [['/pair', 'max: 10\nwindow: 10s\nkey: header:x-api-key']]) }
  const a = await gatewayFor(t, files, { REDIS_URL: redis.url, ...PATIENT })
  const b = await gatewayFor(t, files, { REDIS_URL: redis.url, ...PATIENT })
  // Both have sent a heartbeat at start: each counts two replicas (the second at once, the first
  // on its next beat within 5 s).
  for (let i = 0; i < 120 && (await replicasOf(a) !== 2 || await replicasOf(b) !== 2); i++) await sleep(100)
  assert.deepEqual([await replicasOf(a), await replicasOf(b)], [2, 2], 'each gateway counts both')

  redis.child.kill('SIGKILL')
  await once(redis.child, 'exit')
  for (const gw of [a, b]) {
    const statuses: number[] = []
    for (let i = 0; i < 7; i++) statuses.push((await get(`${gw.url}/pair`, { 'x-api-key': 'k' })).status)
    assert.deepEqual(statuses, [200, 200, 200, 200, 200, 429, 429], 'max 10 split over 2 live replicas')
  }
})

/** rate_limiter_replicas of a gateway: the live replicas it last counted in Redis. */
async function replicasOf (gw: GatewayProcess): Promise<number> {
  const text = await (await fetch(`${gw.url}/metrics`)).text()
  return Number(text.split('\n').find(l => l.startsWith('rate_limiter_replicas '))?.slice('rate_limiter_replicas '.length))
}

test('a replica that stops beating stops counting: after 15 s the survivor counts one replica, and with Redis gone it applies the whole max', { timeout: 60_000 }, async t => {
  const redis = await startRedis()
  t.after(() => redis.stop())
  const upstream = await upstreamFor(t)
  const files = { 'beat.yaml': limitedFile(upstream.url, [['/beat', 'max: 6\nwindow: 10s\nkey: header:x-api-key']]) }
  const survivor = await gatewayFor(t, files, { REDIS_URL: redis.url, ...PATIENT })
  const gone = await gatewayFor(t, files, { REDIS_URL: redis.url, ...PATIENT })
  for (let i = 0; i < 120 && (await replicasOf(survivor) !== 2 || await replicasOf(gone) !== 2); i++) await sleep(100)
  assert.deepEqual([await replicasOf(survivor), await replicasOf(gone)], [2, 2], 'each gateway counts both')

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
  for (let i = 0; i < 8; i++) statuses.push((await get(`${survivor.url}/beat`, { 'x-api-key': 'k' })).status)
  assert.deepEqual(statuses, [200, 200, 200, 200, 200, 200, 429, 429], 'max 6 over 1 live replica')
  assert.equal(await readyStore(survivor), 'fallback')
})

test('a gateway that starts while its Redis is down serves on the fallback, and goes to Redis once Redis comes up', { timeout: 30_000 }, async t => {
  const port = await closedPort()
  const upstream = await upstreamFor(t)
  const files = { 'late.yaml': limitedFile(upstream.url, [['/late', 'max: 3\nwindow: 10s\nkey: header:x-api-key']]) }
  const url = `redis://127.0.0.1:${port}`
  const gw = await gatewayFor(t, files, { REDIS_URL: url, ...PATIENT })
  assert.equal(await readyStore(gw), 'fallback')
  assert.equal((await get(`${gw.url}/health`)).status, 200, 'liveness is not Redis')
  const local: number[] = []
  for (let i = 0; i < 4; i++) local.push((await get(`${gw.url}/late`, { 'x-api-key': 'early' })).status)
  assert.deepEqual(local, [200, 200, 200, 429], 'the local limit, same max')
  assert.equal(gw.logs.filter(l => l.msg === FALLBACK_MSG).length, 1, 'logged once')

  // Redis comes up on that port: the gateway connects by itself.
  const redis = await startRedis(port)
  t.after(() => redis.stop())
  const deadline = performance.now() + 10_000
  let store: unknown
  do {
    await sleep(100)
    await get(`${gw.url}/late`, { 'x-api-key': 'probe' })
    store = await readyStore(gw)
  } while (store !== 'redis' && performance.now() < deadline)
  assert.equal(store, 'redis', 'the gateway went to Redis within 10 s')
  await gw.waitForLog(l => l.msg === 'rate-limit store recovered', 1000)

  // Now counted in Redis: another replica on it finds the budget this one spent.
  const spent: number[] = []
  for (let i = 0; i < 4; i++) spent.push((await get(`${gw.url}/late`, { 'x-api-key': 'shared' })).status)
  assert.deepEqual(spent, [200, 200, 200, 429])
  const other = await gatewayFor(t, files, { REDIS_URL: url, ...PATIENT })
  assert.equal(await readyStore(other), 'redis')
  assertRefused(await get(`${other.url}/late`, { 'x-api-key': 'shared' }), 3, '10s', 10)
})

test('a Redis Cluster of three masters, given one seed node: two gateways share each budget, and the budgets spread over the masters', async t => {
  const nodes = await startRedisCluster(3)
  t.after(async () => { await Promise.all(nodes.map(async n => await n.stop())) })
  const upstream = await upstreamFor(t)
  const files = { 'cluster.yaml': limitedFile(upstream.url, [['/cluster', 'max: 3\nwindow: 60s\nkey: header:x-api-key']]) }
  const env = { REDIS_URL: `redis+cluster://127.0.0.1:${(nodes[0] as RedisServer).port}`, ...PATIENT }
  const gws = [await gatewayFor(t, files, env), await gatewayFor(t, files, env)]
  for (const gw of gws) assert.equal(await readyStore(gw), 'redis')

  const clients = Array.from({ length: 12 }, (_, i) => `client-${i}`)
  for (const client of clients) {
    const statuses: number[] = []
    for (let i = 0; i < 5; i++) statuses.push((await get(`${(gws[i % 2] as GatewayProcess).url}/cluster`, { 'x-api-key': client })).status)
    assert.deepEqual(statuses, [200, 200, 200, 429, 429], client)
  }
  assert.equal(upstream.requests.length, 36)
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
  const upstream = await upstreamFor(t)
  const gw = await gatewayFor(t, { 'sentinel.yaml': limitedFile(upstream.url, [['/sentinel', 'max: 2\nwindow: 60s']]) }, {
    REDIS_URL: `redis+sentinel://127.0.0.1:${sentinel.port}/gatehouse`,
    ...PATIENT
  })
  assert.equal(await readyStore(gw), 'redis')
  const statuses: number[] = []
  for (let i = 0; i < 4; i++) statuses.push((await get(`${gw.url}/sentinel`)).status)
  assert.deepEqual(statuses, [200, 200, 429, 429])
  // The budget was spent on the master: a gateway that talks to the master directly finds it spent.
  const direct = await gatewayFor(t, { 'sentinel.yaml': limitedFile(upstream.url, [['/sentinel', 'max: 2\nwindow: 60s']]) }, { REDIS_URL: master.url, ...PATIENT })
  assert.equal(await readyStore(direct), 'redis')
  assertRefused(await get(`${direct.url}/sentinel`), 2, '60s', 60)
  assert.equal(upstream.requests.length, 2)
})
