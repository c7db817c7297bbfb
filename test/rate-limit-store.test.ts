// Rate-limit stores against a REAL redis-server that this file starts on an ephemeral port of
// 127.0.0.1 (never the shared one on 6379), plus the in-memory store with an injected clock.
// Every test uses its own key prefix. Windows are short (300-1000 ms) and waits bounded.
import { strict as assert } from 'node:assert'
import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { after, before, test, type TestContext } from 'node:test'
import { Redis } from 'ioredis'
import { MemoryLimitStore } from '../plugins/rate-limit/store/memory.js'
import { RedisLimitStore } from '../plugins/rate-limit/store/redis.js'
import { LimitStoreError } from '../src/errors.js'
import type { LimitDecision } from '../plugins/rate-limit/store/types.js'
import { parseRedisUrl } from '../src/config/redis-url.js'
import { redisCli, ROOT, startRedis, startRedisCluster, type RedisServer } from './helpers.js'

let server: RedisServer
let admin: Redis
let prefixes = 0

before(async () => {
  server = await startRedis()
  admin = new Redis(server.port, '127.0.0.1', { lazyConnect: true })
  await admin.connect()
})

after(async () => {
  admin?.disconnect()
  await server?.stop()
})

/** A prefix no other test uses. */
function prefix (): string {
  return `t${process.pid}-${++prefixes}:`
}

/** A store with its own fail-fast client (and a generous timeout: these tests are not about it). */
async function store (t: TestContext, keyPrefix: string, commandTimeoutMs = 2000): Promise<RedisLimitStore> {
  const s = new RedisLimitStore(server.url, { keyPrefix, commandTimeoutMs })
  t.after(() => s.close())
  await s.ready()
  return s
}

/** Redis's clock, µs. */
async function redisTimeUs (): Promise<number> {
  const [sec, usec] = await admin.time()
  return Number(sec) * 1_000_000 + Number(usec)
}

async function sequential (n: number, hit: () => Promise<LimitDecision>): Promise<LimitDecision[]> {
  const out: LimitDecision[] = []
  for (let i = 0; i < n; i++) out.push(await hit())
  return out
}

/** Sleeps until performance.now() reaches `at` (not at all if it has). */
async function sleepUntil (at: number): Promise<void> {
  const ms = at - performance.now()
  if (ms > 0) await sleep(ms)
}

const allowedCount = (ds: LimitDecision[]): number => ds.filter(d => d.allowed).length

test('sliding-log, max 5: exactly 5 of 20 admitted (remaining 4..0), rejects consume nothing, 5 again after the window', async t => {
  const s = await store(t, prefix())
  const window = 500
  const t0 = performance.now()
  const first = await sequential(20, () => s.hit('client-a', 5, window, 'sliding-log'))
  assert.deepEqual(first.map(d => d.allowed), [...Array(5).fill(true), ...Array(15).fill(false)])
  assert.deepEqual(first.slice(0, 5).map(d => d.remaining), [4, 3, 2, 1, 0])
  for (const d of first) assert.equal(d.limit, 5)
  for (const d of first.slice(0, 4)) assert.equal(d.retryAfterMs, 0, 'no wait while slots remain')
  for (const d of first.slice(5)) {
    assert.equal(d.remaining, 0)
    assert.ok(d.retryAfterMs > 0 && d.retryAfterMs <= window, `retryAfterMs ${d.retryAfterMs}`)
  }
  // More rejects half a window later. Had any reject been counted, it would still be in the
  // window once the 5 admitted ones have left it, and fewer than 5 would be admitted then.
  await sleepUntil(t0 + window / 2)
  const rejected = await sequential(10, () => s.hit('client-a', 5, window, 'sliding-log'))
  assert.equal(allowedCount(rejected), 0)

  await sleepUntil(t0 + window + 50)
  assert.ok(performance.now() < t0 + window * 1.5, 'still within the rejects\' window; the machine is too slow for this check')
  const second = await sequential(20, () => s.hit('client-a', 5, window, 'sliding-log'))
  assert.equal(allowedCount(second), 5)
  assert.deepEqual(second.slice(0, 5).map(d => d.remaining), [4, 3, 2, 1, 0])
  // Another key has its own budget.
  assert.equal((await s.hit('client-b', 5, window, 'sliding-log')).remaining, 4)
})

test('200 parallel hits with max 50 through 3 separate clients: exactly 50 admitted (both algorithms)', async t => {
  const p = prefix()
  const stores = await Promise.all([store(t, p), store(t, p), store(t, p)])
  for (const algorithm of ['sliding-log', 'sliding-window'] as const) {
    if (algorithm === 'sliding-window') {
      // A burst that straddles a fixed-window boundary may admit a little more by design: use a
      // 60 s window and stay clear of its end.
      const now = await redisTimeUs()
      const left = 60_000_000 - (now % 60_000_000)
      if (left < 2_000_000) await sleep(left / 1000 + 20)
    }
    const decisions = await Promise.all(Array.from({ length: 200 }, (_, i) =>
      (stores[i % 3] as RedisLimitStore).hit(`burst-${algorithm}`, 50, 60_000, algorithm)))
    assert.equal(allowedCount(decisions), 50, algorithm)
    // Atomic: each remaining value 49..0 was handed out exactly once.
    const remaining = decisions.filter(d => d.allowed).map(d => d.remaining).sort((a, b) => a - b)
    assert.deepEqual(remaining, Array.from({ length: 50 }, (_, i) => i), algorithm)
    // The rejects counted nothing either: the budget stays spent at exactly 50.
    assert.equal((await (stores[0] as RedisLimitStore).hit(`burst-${algorithm}`, 51, 60_000, algorithm)).allowed, true, `${algorithm}: the 51st slot of a larger max is free`)
  }
})

test('sliding-log: 50 pipelined hits, many in the same millisecond, each count: the 51st is refused', async t => {
  const s = await store(t, prefix())
  await s.hit('warm', 1, 1000, 'sliding-log') // the script is loaded, so the burst is all EVALSHA
  const before = await redisTimeUs()
  const decisions = await Promise.all(Array.from({ length: 50 }, () => s.hit('same-ms', 50, 10_000, 'sliding-log')))
  const after = await redisTimeUs()
  // The burst really had requests sharing a millisecond (else this test proved nothing): 50
  // decisions, all made between two readings of Redis's clock fewer than 50 ms apart.
  const millis = Math.floor(after / 1000) - Math.floor(before / 1000) + 1
  assert.ok(millis < 50, `the 50 decisions spread over ${millis} milliseconds; the machine is too slow for this check`)
  assert.equal(allowedCount(decisions), 50)
  assert.deepEqual(decisions.map(d => d.remaining).sort((a, b) => a - b), Array.from({ length: 50 }, (_, i) => i))
  const next = await s.hit('same-ms', 50, 10_000, 'sliding-log')
  assert.equal(next.allowed, false, 'two requests of one millisecond were counted as one')
})

/** A decision and the client's clock just before and just after it: Redis decided in between. */
interface Timed { d: LimitDecision, before: number, after: number }

async function timed (hit: () => Promise<LimitDecision>): Promise<Timed> {
  const before = performance.now()
  const d = await hit()
  return { d, before, after: performance.now() }
}

/**
 * Asserts that `ms`, told by decision `now`, is the time until `entry`'s request leaves a window
 * of `windowMs`: within the bounds the two brackets allow (whole ms, rounded up), however slow
 * the machine.
 */
function assertUntilLeaves (ms: number, what: string, entry: Timed, now: Timed, windowMs: number): void {
  const lo = Math.floor(entry.before + windowMs - now.after)
  const hi = Math.ceil(entry.after + windowMs - now.before) + 1
  assert.ok(ms >= lo && ms <= hi, `${what} ${ms}, expected ${lo}–${hi}`)
}

test('sliding-log, max 4 per 1 s: rejected at +0.5 s, one slot frees when the first request ages out', async t => {
  const s = await store(t, prefix())
  const hit = async (): Promise<Timed> => await timed(() => s.hit('slide', 4, 1000, 'sliding-log'))
  const a = await hit()
  assert.equal(a.d.remaining, 3)
  await sleep(300)
  const b = await hit()
  await hit()
  const d = await hit()
  assert.equal(d.d.allowed, true)
  assert.equal(d.d.remaining, 0)
  await sleepUntil(a.after + 500)
  const e = await hit()
  assert.equal(e.d.allowed, false)
  // The oldest (A) leaves a window after it was admitted: about 500 ms from now, not a whole window.
  assertUntilLeaves(e.d.retryAfterMs, 'retryAfterMs', a, e, 1000)

  await sleep(e.d.retryAfterMs + 30)
  const f = await hit()
  assert.equal(f.d.allowed, true, 'A left the window: one slot is free')
  assert.equal(f.d.remaining, 0, 'only one: B, C, D are still in the window')
  const g = await hit()
  assert.equal(g.d.allowed, false)
  // Next to leave is B.
  assertUntilLeaves(g.d.retryAfterMs, 'retryAfterMs', b, g, 1000)
})

test('sliding-log: retryAfterMs is the time until the oldest entry leaves (0 < it <= window), resetMs until the newest does', async t => {
  const s = await store(t, prefix())
  const hit = async (): Promise<Timed> => await timed(() => s.hit('retry', 2, 1000, 'sliding-log'))
  const a = await hit()
  assert.deepEqual([a.d.allowed, a.d.remaining, a.d.retryAfterMs, a.d.resetMs], [true, 1, 0, 1000])
  await sleep(400)
  const b = await hit()
  // Admitted but the last slot: it already says when the next one frees.
  assert.deepEqual([b.d.allowed, b.d.remaining], [true, 0])
  assertUntilLeaves(b.d.retryAfterMs, 'retryAfterMs', a, b, 1000)
  const c = await hit()
  assert.equal(c.d.allowed, false)
  assert.ok(c.d.retryAfterMs > 0 && c.d.retryAfterMs < 1000 - 300, `retryAfterMs ${c.d.retryAfterMs} is not the whole window`)
  assertUntilLeaves(c.d.retryAfterMs, 'retryAfterMs', a, c, 1000)
  assertUntilLeaves(c.d.resetMs, 'resetMs', b, c, 1000)
})

test('sliding-window: the previous window weighs by its overlap (prev 100 at fraction f admits ceil(100·f))', async t => {
  const s = await store(t, prefix())
  const W = 2_000_000 // µs
  const hit = async (): Promise<LimitDecision> => await s.hit('weighted', 100, W / 1000, 'sliding-window')
  // The previous window takes its full 100: sent early in a window (waiting for the next one if
  // this one is too far gone), and all of them in it.
  let now = await redisTimeUs()
  if (now % W > W / 4) {
    await sleep((W - (now % W)) / 1000 + 20)
    now = await redisTimeUs()
  }
  const previous = now - (now % W)
  const filled = await Promise.all(Array.from({ length: 100 }, hit))
  assert.equal(allowedCount(filled), 100)
  assert.ok(await redisTimeUs() < previous + W, 'the 100 did not fit in one window; the machine is too slow for this check')
  // A third of the way into the next window, a burst of 150.
  const start = previous + W
  await sleep(Math.max(0, start + W / 3 - await redisTimeUs()) / 1000)
  const t1 = await redisTimeUs()
  const decisions = await Promise.all(Array.from({ length: 150 }, hit))
  const t2 = await redisTimeUs()
  assert.ok(t2 < start + W, 'the burst ran into the window after; the machine is too slow for this check')
  const admitted = allowedCount(decisions)
  // Estimate = 100 × (1 − f) + admitted-so-far, admitted while < 100: i.e. while count < 100 f.
  const f1 = (t1 - start) / W
  const f2 = (t2 - start) / W
  assert.ok(admitted >= Math.ceil(100 * f1) && admitted <= Math.floor(100 * f2) + 1,
    `admitted ${admitted}, expected between ${Math.ceil(100 * f1)} and ${Math.floor(100 * f2) + 1}`)
  assert.ok(admitted < 100, 'the previous window counted')
  // A rejected request waits until the weight has fallen by one request: ≤ W/100 = 20 ms.
  const rejected = decisions.filter(d => !d.allowed)
  assert.ok(rejected.length > 0)
  for (const d of rejected) {
    assert.equal(d.remaining, 0)
    assert.ok(d.retryAfterMs >= 1 && d.retryAfterMs <= W / 100_000 + 1, `retryAfterMs ${d.retryAfterMs}`)
  }
  // resetMs: this window's requests weigh until the end of the next one.
  const last = decisions.at(-1) as LimitDecision
  const expectReset = (start + 2 * W - t2) / 1000
  assert.ok(last.resetMs >= expectReset && last.resetMs <= expectReset + (t2 - t1) / 1000 + 1, `resetMs ${last.resetMs}, expected ~${Math.round(expectReset)}`)
})

// Bound asserted for the approximation: every fixed (aligned) window admits at most max, so a run
// touching N aligned windows admits at most N × max (hence fewer than 2 × max in any rolling
// window); and it keeps admitting under continuous traffic: at least max/2 per full window.
test('sliding-window, max 10 per 300 ms, continuous traffic for ~1 s: at most max per fixed window, keeps admitting, O(1) keys', async t => {
  // A redis-server of its own, so its key count is this client's alone.
  const own = await startRedis()
  t.after(() => own.stop())
  const s = new RedisLimitStore(own.url, { keyPrefix: prefix(), commandTimeoutMs: 2000 })
  t.after(() => s.close())
  await s.ready()
  const W = 300
  const t0 = await redisTimeUs()
  const deadline = performance.now() + 1000
  const decisions: LimitDecision[] = []
  while (performance.now() < deadline) {
    decisions.push(await s.hit('steady', 10, W, 'sliding-window'))
    await sleep(2)
  }
  const t1 = await redisTimeUs()
  const touched = Math.floor(t1 / (W * 1000)) - Math.floor(t0 / (W * 1000)) + 1
  const admitted = allowedCount(decisions)
  assert.ok(admitted <= 10 * touched, `admitted ${admitted} in ${touched} windows`)
  // More than one window's worth: the budget came back as the window slid. (No tighter lower
  // bound: on a loaded machine this loop may send few requests per window.)
  assert.ok(admitted > 10, `admitted ${admitted} in ${touched} windows`)
  assert.ok(decisions.length > admitted, 'traffic exceeded the limit')
  // O(1) memory: however many requests, one client's limit holds at most two keys.
  const keys = Number((await redisCli(own.port, 'dbsize')).trim())
  assert.ok(keys >= 1 && keys <= 2, `${keys} keys after ${decisions.length} requests`)
})

test('scripts flushed from Redis (SCRIPT FLUSH): the next hit reloads them by itself and counts on', async t => {
  const p = prefix()
  const s = await store(t, p)
  const lua = await readFile(join(ROOT, 'plugins/rate-limit/store/sliding-log.lua'), 'utf8')
  const sha = createHash('sha1').update(lua).digest('hex')
  const noscript = async (): Promise<number> => Number(/errorstat_NOSCRIPT:count=(\d+)/.exec(await admin.info('errorstats'))?.[1] ?? 0)

  assert.equal((await s.hit('flush', 3, 10_000, 'sliding-log')).remaining, 2)
  assert.equal((await s.hit('flush', 3, 10_000, 'sliding-log')).remaining, 1) // by EVALSHA
  assert.deepEqual(await admin.script('EXISTS', sha), [1])
  const before = await noscript()
  await admin.script('FLUSH')
  assert.deepEqual(await admin.script('EXISTS', sha), [0])

  const d = await s.hit('flush', 3, 10_000, 'sliding-log')
  assert.deepEqual([d.allowed, d.remaining], [true, 0], 'counted on from the earlier two')
  assert.equal(await noscript(), before + 1, 'the EVALSHA met NOSCRIPT once')
  assert.deepEqual(await admin.script('EXISTS', sha), [1], 'the script is loaded again')
  assert.equal((await s.hit('flush', 3, 10_000, 'sliding-log')).allowed, false)
})

test('an event-loop stall longer than the timeout does not turn an answered hit into an error', async t => {
  const s = await store(t, prefix(), 50)
  await s.hit('stall', 10, 1000, 'sliding-log')
  const pending = s.hit('stall', 10, 1000, 'sliding-log')
  const until = performance.now() + 150
  while (performance.now() < until) { /* busy: Redis answers meanwhile, the timer expires */ }
  assert.equal((await pending).remaining, 8)
})

test('a Redis that stops answering (SIGSTOP): every hit of a batch rejects after the timeout, and hits after SIGCONT are answered', async t => {
  const own = await startRedis()
  t.after(() => own.stop())
  const s = new RedisLimitStore(own.url, { keyPrefix: prefix(), commandTimeoutMs: 100 })
  t.after(() => s.close())
  await s.ready()
  assert.equal((await s.hit('k', 5, 60_000, 'sliding-log')).remaining, 4)
  own.child.kill('SIGSTOP')
  t.after(() => own.child.kill('SIGCONT'))
  const t0 = performance.now()
  const results = await Promise.allSettled([s.hit('k', 5, 60_000, 'sliding-log'), s.hit('k', 5, 60_000, 'sliding-window'), s.hit('other', 5, 60_000, 'sliding-log')])
  const waited = performance.now() - t0
  for (const r of results) {
    assert.equal(r.status, 'rejected')
    assert.ok(r.reason instanceof LimitStoreError, String(r.reason))
    assert.match(r.reason.message, /redis sliding-(log|window) timed out after 100 ms/)
  }
  assert.ok(waited >= 95 && waited < 1000, `rejected after ${waited.toFixed(0)} ms`)
  own.child.kill('SIGCONT')
  // The stopped batch still ran once Redis woke up (a timed-out command is not cancelled): 2 of 5 used.
  const woke = await s.hit('k', 5, 60_000, 'sliding-log')
  assert.equal(woke.allowed, true)
  assert.equal(woke.remaining, 2)
})

test('Redis killed (SIGKILL): hit() rejects within milliseconds with LimitStoreError, never hangs', async t => {
  const own = await startRedis()
  t.after(() => own.stop())
  const owned = new RedisLimitStore(own.url, { keyPrefix: prefix() }) // default 50 ms timeout
  t.after(() => owned.close())
  await owned.ready()
  // A shared client with ioredis defaults (offline queue on, retries): only the store's timer stops it.
  const shared = new Redis(own.port, '127.0.0.1', { lazyConnect: true })
  shared.on('error', () => {})
  t.after(() => shared.disconnect())
  await shared.connect()
  const given = new RedisLimitStore(shared, { keyPrefix: prefix() })
  t.after(() => given.close())
  for (const s of [owned, given]) assert.equal((await s.hit('k', 5, 1000, 'sliding-log')).allowed, true)

  own.child.kill('SIGKILL')
  const timed = async (s: RedisLimitStore): Promise<number> => {
    const t0 = performance.now()
    await assert.rejects(s.hit('k', 5, 1000, 'sliding-log'), (err: unknown) => {
      assert.ok(err instanceof LimitStoreError, String(err))
      assert.equal(err.code, 'GATEHOUSE_ERR_RATE_LIMIT_STORE')
      assert.match(err.message, /^Rate-limit store failed: redis sliding-log (failed|timed out)/)
      return true
    })
    return performance.now() - t0
  }
  // While the kill lands, then once it has.
  const during = await Promise.all([timed(owned), timed(given)])
  if (own.child.exitCode === null && own.child.signalCode === null) await once(own.child, 'exit')
  const afterwards = await Promise.all([timed(owned), timed(given), timed(owned), timed(given)])
  for (const ms of [...during, ...afterwards]) assert.ok(ms < 500, `hit() took ${Math.round(ms)} ms to fail`)
  t.diagnostic(`hit() failed after ${[...during, ...afterwards].map(ms => ms.toFixed(1)).join(', ')} ms (owned, given, ...)`)

  const t0 = performance.now()
  await owned.close()
  assert.ok(performance.now() - t0 < 1500, 'close() of a store whose Redis is gone does not hang')
})

test('close() quits a client the store created, and leaves a given client open', async t => {
  const client = new Redis(server.port, '127.0.0.1', { lazyConnect: true, enableOfflineQueue: false })
  t.after(() => client.disconnect())
  await client.connect()
  const given = new RedisLimitStore(client, { keyPrefix: prefix() })
  await given.hit('k', 1, 1000, 'sliding-window')
  await given.close()
  assert.equal(client.status, 'ready')
  assert.equal(await client.ping(), 'PONG')

  const owned = new RedisLimitStore(server.url, { keyPrefix: prefix() })
  await owned.ready()
  await owned.close()
  await assert.rejects(owned.hit('k', 1, 1000, 'sliding-log'), LimitStoreError)
})

test('the keys of one limit stay in one Cluster slot: both algorithms decide on a three-master Cluster, for keys spread over every master', async t => {
  const nodes = await startRedisCluster(3)
  t.after(async () => { await Promise.all(nodes.map(async n => await n.stop())) })
  const s = new RedisLimitStore(parseRedisUrl(`redis+cluster://127.0.0.1:${(nodes[0] as RedisServer).port}`), { keyPrefix: prefix(), commandTimeoutMs: 2000 })
  t.after(() => s.close())
  await s.ready()
  // A script whose keys fell into two slots would fail with CROSSSLOT: every hit would reject.
  for (const algorithm of ['sliding-log', 'sliding-window'] as const) {
    for (let i = 0; i < 12; i++) {
      const ds = await sequential(3, () => s.hit(`user:${i}`, 2, 60_000, algorithm))
      assert.deepEqual(ds.map(d => d.allowed), [true, true, false], `${algorithm} user:${i}`)
    }
  }
  // Twelve limits (precondition): their keys landed on more than one master.
  const perMaster = await Promise.all(nodes.map(async n => Number((await redisCli(n.port, 'dbsize')).trim())))
  assert.ok(perMaster.filter(n => n > 0).length >= 2, `keys per master: ${perMaster.join(', ')}`)
})

test('bad arguments are refused by both stores', async t => {
  const s = await store(t, prefix())
  const memory = new MemoryLimitStore()
  t.after(() => memory.close())
  for (const st of [s, memory]) {
    await assert.rejects(st.hit('', 5, 1000, 'sliding-log'), TypeError)
    await assert.rejects(st.hit('k', 0, 1000, 'sliding-log'), RangeError)
    await assert.rejects(st.hit('k', 1.5, 1000, 'sliding-log'), RangeError)
    await assert.rejects(st.hit('k', 5, 0, 'sliding-log'), RangeError)
    await assert.rejects(st.hit('k', 1e9, 1e9, 'sliding-window'), RangeError)
    // @ts-expect-error: an algorithm the type does not allow
    await assert.rejects(st.hit('k', 5, 1000, 'fixed'), TypeError)
  }
})

test('memory store gives the same sliding-log decisions as Redis for the same request times', async t => {
  const redis = await store(t, prefix())
  let clock = 0
  const memory = new MemoryLimitStore({ now: () => clock })
  t.after(() => memory.close())
  // max 3 per 600 ms; bursts at ~0, 250, 850, 1100, 1600 ms: every entry is ≥ 150 ms away from
  // leaving the window when a burst comes, so both stores see the same entries.
  const schedule: Array<[atMs: number, hits: number]> = [[0, 4], [250, 1], [850, 4], [1100, 1], [1600, 2]]
  const t0 = performance.now()
  let compared = 0
  // The memory store is given the middle of the time Redis took to answer: Redis decided at most
  // half that span away. Times told are differences of two such instants.
  let widest = 0
  for (const [atMs, hits] of schedule) {
    await sleepUntil(t0 + atMs)
    for (let i = 0; i < hits; i++) {
      const before = performance.now()
      const r = await redis.hit('same', 3, 600, 'sliding-log')
      const after = performance.now()
      clock = (before + after) / 2
      widest = Math.max(widest, (after - before) / 2)
      const m = await memory.hit('same', 3, 600, 'sliding-log')
      const slack = 2 * widest + 2
      const where = `hit ${i} at ~${atMs} ms (slack ${slack.toFixed(1)} ms): redis ${JSON.stringify(r)}, memory ${JSON.stringify(m)}`
      assert.deepEqual([m.allowed, m.limit, m.remaining], [r.allowed, r.limit, r.remaining], where)
      assert.ok(Math.abs(m.retryAfterMs - r.retryAfterMs) <= slack, where)
      assert.ok(Math.abs(m.resetMs - r.resetMs) <= slack, where)
      compared++
    }
  }
  assert.equal(compared, 12)
})

test('memory store, sliding window with an injected clock: exact weights, retry and reset times', async t => {
  let now = 10_000
  const m = new MemoryLimitStore({ now: () => now })
  t.after(() => m.close())
  const hit = async (): Promise<LimitDecision> => await m.hit('w', 10, 1000, 'sliding-window')
  // Window [10000, 11000): 10 admitted, then rejected until the next window has begun (by 1 µs).
  now = 10_100
  const first = await sequential(11, hit)
  assert.deepEqual(first.map(d => d.remaining), [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0])
  assert.equal(first[10]?.allowed, false)
  assert.equal(first[10]?.retryAfterMs, 901)
  assert.equal(first[10]?.resetMs, 1900)
  // 25 % into [11000, 12000): the previous 10 weigh 7.5, so 3 more are admitted (7.5, 8.5, 9.5 < 10).
  now = 11_250
  const second = await sequential(4, hit)
  assert.deepEqual(second.map(d => [d.allowed, d.remaining]), [[true, 2], [true, 1], [true, 0], [false, 0]])
  // The estimate 10 × (1 − f) + 3 drops below 10 once f > 0.3: 50 ms (+1 µs) from now.
  assert.equal(second[3]?.retryAfterMs, 51)
  assert.equal(second[3]?.resetMs, 1750)
  // 60 % in: 10 × 0.4 + 3 = 7, so 3 more.
  now = 11_600
  assert.equal(allowedCount(await sequential(5, hit)), 3)
  // Two windows later nothing weighs any more: a full 10.
  now = 13_500
  assert.equal(allowedCount(await sequential(12, hit)), 10)
})

test('memory store: keys are swept once their requests have left the window', async t => {
  let now = 0
  const m = new MemoryLimitStore({ now: () => now, sweepIntervalMs: 60_000 })
  t.after(() => m.close())
  for (let i = 0; i < 100; i++) {
    await m.hit(`k${i}`, 5, 1000, 'sliding-log')
    await m.hit(`k${i}`, 5, 1000, 'sliding-window')
  }
  assert.equal(m.size, 200)
  now = 999
  m.sweep()
  assert.equal(m.size, 200, 'still in the window')
  now = 1000
  m.sweep()
  assert.equal(m.size, 100, 'logs gone; the window counters still weigh as "previous"')
  now = 2000
  m.sweep()
  assert.equal(m.size, 0)
  // A swept key starts afresh.
  assert.equal((await m.hit('k1', 5, 1000, 'sliding-log')).remaining, 4)
})
