// Redis rate-limit store: each hit() is one EVALSHA of sliding-log.lua or sliding-window.lua, so
// every gateway replica shares one exact count and Redis's clock. Fails fast: a dead or slow
// Redis makes hit() reject within commandTimeoutMs, and the caller decides the fallback.
import { existsSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { Cluster, Redis, type RedisOptions } from 'ioredis'
import type { RedisConnection } from '../../../src/config/redis-url.js'
import { checkHitArgs } from './memory.js'
import { LimitStoreError } from '../../../src/errors.js'
import type { LimitAlgorithm, LimitDecision, LimitStore } from './types.js'

export interface RedisLimitStoreOptions {
  /** Prepended to every key. Default 'gatehouse:rl:'. */
  keyPrefix?: string
  /** Longest wait for one hit() before it rejects. Default 50 ms. */
  commandTimeoutMs?: number
}

// The scripts ship beside this module's source. tsc does not copy .lua files into dist/, so look
// next to the compiled module first (a build that copies them), then in the source tree.
function readScript (name: string): string {
  const candidates = [
    new URL(`./${name}`, import.meta.url),
    new URL(`../../../../plugins/rate-limit/store/${name}`, import.meta.url)
  ]
  for (const url of candidates) if (existsSync(url)) return readFileSync(url, 'utf8')
  throw new Error(`rate-limit script ${name} not found; looked in ${candidates.map(u => fileURLToPath(u)).join(', ')}`)
}

let scripts: { log: string, window: string, heartbeat: string } | undefined
function loadScripts (): { log: string, window: string, heartbeat: string } {
  scripts ??= { log: readScript('sliding-log.lua'), window: readScript('sliding-window.lua'), heartbeat: readScript('heartbeat.lua') }
  return scripts
}

/** What each script returns: allowed (0|1), remaining, retryAfterMs, resetMs. */
type ScriptReply = [number, number, number, number]

/** A hit waiting for its batch to be sent, then for its answer or the batch's deadline. */
interface PendingHit {
  base: string
  max: number
  windowMs: number
  algorithm: LimitAlgorithm
  resolve: (decision: LimitDecision) => void
  reject: (err: Error) => void
  settled: boolean
}

/** A pipeline of the client: defineCommand's commands are on it too (ioredis copies them). */
interface ScriptPipeline {
  gatehouseRlSlidingLog: (log: string, seq: string, max: number, windowMs: number) => ScriptPipeline
  gatehouseRlSlidingWindow: (cur: string, prev: string, max: number, windowMs: number) => ScriptPipeline
  exec: () => Promise<Array<[Error | null, unknown]> | null>
}

/** The commands defineCommand adds to the client (ioredis types them only at run time). */
interface ScriptCommands {
  gatehouseRlSlidingLog: (log: string, seq: string, max: number, windowMs: number) => Promise<ScriptReply>
  gatehouseRlSlidingWindow: (cur: string, prev: string, max: number, windowMs: number) => Promise<ScriptReply>
  gatehouseRlHeartbeat: (replicas: string, id: string, ttlMs: number) => Promise<number>
}

/** Redis's answers to a wrong user or password. */
const AUTH_FAILED = /WRONGPASS|NOAUTH|invalid (username-)?password/i

/**
 * What a Redis client error means, for an operator: ioredis reports a refused connection, a wrong
 * password and a Cluster without quorum in its own words, and a command sent while it is not
 * connected fails only with "Stream isn't writeable".
 */
export function redisCause (err: Error & { code?: string }): string {
  const message = err.message
  if (err.code === 'ECONNREFUSED') return `connection refused (${message})`
  if (AUTH_FAILED.test(message)) return `authentication failed (${message}): check the user and password of REDIS_URL`
  if (err.code === 'ENOTFOUND' || err.code === 'EAI_AGAIN') return `host not found (${message})`
  if (err.code === 'ETIMEDOUT' || /timed? ?out/i.test(message)) return `timeout (${message})`
  if (/CLUSTERDOWN|Failed to refresh slots cache/i.test(message)) return `cluster down (${message})`
  return message
}

/** A wrong password is not retried in a tight loop: ioredis would reconnect at once, forever. */
const AUTH_RETRY_MS = 5000

export class RedisLimitStore implements LimitStore {
  readonly #client: (Redis | Cluster) & ScriptCommands
  /** Why the client last failed to connect or authenticate; undefined once it is ready. */
  #cause: string | undefined
  readonly #owned: boolean
  readonly #prefix: string
  readonly #timeoutMs: number
  // Decisions asked for in one event-loop turn are sent together, after it: they leave in one
  // socket write and their answers come back in one read. One deadline covers the batch (a timer
  // and a race per request cost more than the rest of hit()).
  #batch: PendingHit[] = []
  readonly #send = (): void => {
    const batch = this.#batch
    this.#batch = []
    let unsettled = batch.length
    // After an event-loop stall the timer runs before pending socket reads; setImmediate lets
    // replies that already arrived settle first, so a stall alone is not reported as a timeout.
    const timer = setTimeout(() => {
      setImmediate(() => {
        for (const hit of batch) {
          if (hit.settled) continue
          hit.settled = true
          hit.reject(new LimitStoreError(`redis ${hit.algorithm} timed out after ${this.#timeoutMs} ms`))
        }
      })
    }, this.#timeoutMs)
    const settle = (hit: PendingHit, reply: ScriptReply | undefined, err?: unknown): void => {
      if (--unsettled === 0) clearTimeout(timer)
      if (hit.settled) return
      hit.settled = true
      if (reply === undefined) {
        // Not connected: the connection's own error says why, not "Stream isn't writeable".
        const message = this.#client.status !== 'ready' && this.#cause !== undefined ? this.#cause : err instanceof Error ? err.message : String(err)
        hit.reject(new LimitStoreError(`redis ${hit.algorithm} failed: ${message}`, { cause: err }))
        return
      }
      const [allowed, remaining, retryAfterMs, resetMs] = reply
      hit.resolve({ allowed: allowed === 1, limit: hit.max, remaining, retryAfterMs, resetMs })
    }
    const client = this.#client
    if (client instanceof Cluster) {
      // A Cluster pipeline must stay within one slot: each command goes alone, and the client's
      // auto-pipelining groups them by node.
      for (const hit of batch) {
        const base = hit.base
        const reply = hit.algorithm === 'sliding-log'
          ? client.gatehouseRlSlidingLog(`${base}:log`, `${base}:seq`, hit.max, hit.windowMs)
          : client.gatehouseRlSlidingWindow(`${base}:cur`, `${base}:prev`, hit.max, hit.windowMs)
        reply.then(r => { settle(hit, r) }, err => { settle(hit, undefined, err) })
      }
      return
    }
    // One node: the batch is one pipeline, one write and one promise (auto-pipelining would add
    // a promise and a callback per command, and wait one more event-loop turn).
    const pipeline = client.pipeline() as unknown as ScriptPipeline
    for (const hit of batch) {
      const base = hit.base
      if (hit.algorithm === 'sliding-log') pipeline.gatehouseRlSlidingLog(`${base}:log`, `${base}:seq`, hit.max, hit.windowMs)
      else pipeline.gatehouseRlSlidingWindow(`${base}:cur`, `${base}:prev`, hit.max, hit.windowMs)
    }
    pipeline.exec().then(results => {
      for (let i = 0; i < batch.length; i++) {
        const [err, reply] = results?.[i] ?? [new Error('no reply')]
        settle(batch[i] as PendingHit, err === null ? reply as ScriptReply : undefined, err)
      }
    }, err => { for (const hit of batch) settle(hit, undefined, err) })
  }

  /**
   * `client`: an ioredis client to share (left open by close(); give it `enableOfflineQueue: false`
   * so a hit that times out while Redis is down is not replayed later), or a redis:// URL or parsed
   * REDIS_URL, for which the store creates and owns a fail-fast client.
   */
  constructor (client: Redis | Cluster | RedisConnection | string, options: RedisLimitStoreOptions = {}) {
    this.#prefix = options.keyPrefix ?? 'gatehouse:rl:'
    this.#timeoutMs = options.commandTimeoutMs ?? 50
    if (!(this.#timeoutMs > 0)) throw new RangeError(`commandTimeoutMs must be > 0, got ${this.#timeoutMs}`)
    const { log, window, heartbeat } = loadScripts()
    const owned = typeof client === 'string' || !(client instanceof Redis || client instanceof Cluster)
    const redis = owned ? connect(typeof client === 'string' ? { mode: 'single', url: client } : client, this.#timeoutMs) : client
    this.#owned = owned
    // Registered once: ioredis sends EVALSHA and, on NOSCRIPT (restart, SCRIPT FLUSH, failover),
    // resends the script with EVAL by itself.
    redis.defineCommand('gatehouseRlSlidingLog', { numberOfKeys: 2, lua: log })
    redis.defineCommand('gatehouseRlSlidingWindow', { numberOfKeys: 2, lua: window })
    redis.defineCommand('gatehouseRlHeartbeat', { numberOfKeys: 1, lua: heartbeat })
    this.#client = redis as (Redis | Cluster) & ScriptCommands
    // Failures reach callers through hit() and ready(), with their cause kept from here.
    redis.on('error', (err: Error) => { this.#cause = redisCause(err) })
    redis.on('ready', () => { this.#cause = undefined })
  }

  /** Why Redis is not usable right now, as far as the client knows (for /ready and the logs). */
  get cause (): string | undefined {
    return this.#client.status === 'ready' ? undefined : this.#cause
  }

  /** Resolves once the client is connected (a created client connects in the background). */
  async ready (timeoutMs = 5000): Promise<void> {
    const client = this.#client
    if (client.status === 'ready') return
    let onReady = (): void => {}
    let onEnd = (): void => {}
    try {
      await this.#deadline(new Promise<void>((resolve, reject) => {
        onReady = resolve
        onEnd = () => reject(new Error('connection closed'))
        client.once('ready', onReady)
        client.once('end', onEnd)
      }), timeoutMs, 'connect')
    } catch (err) {
      // A timeout says little when the client knows why it could not connect.
      if (this.#cause !== undefined) throw new LimitStoreError(`redis connect failed: ${this.#cause}`, { cause: err })
      throw err
    } finally {
      client.off('ready', onReady)
      client.off('end', onEnd)
    }
  }

  hit (key: string, max: number, windowMs: number, algorithm: LimitAlgorithm): Promise<LimitDecision> {
    try {
      checkHitArgs(key, max, windowMs, algorithm)
    } catch (err) {
      return Promise.reject(err)
    }
    return new Promise<LimitDecision>((resolve, reject) => {
      // The hash tag {key} puts every key of one limit in one Redis Cluster slot.
      this.#batch.push({ base: `${this.#prefix}{${key}}`, max, windowMs, algorithm, resolve, reject, settled: false })
      if (this.#batch.length === 1) setImmediate(this.#send)
    })
  }

  /**
   * Records replica `id` as alive for `ttlMs` and returns how many replicas are alive: the
   * in-process fallback divides each limit by that number while Redis is away.
   */
  async heartbeat (id: string, ttlMs: number): Promise<number> {
    return await this.#deadline(this.#client.gatehouseRlHeartbeat(`${this.#prefix}replicas`, id, ttlMs), this.#timeoutMs, 'heartbeat')
  }

  /** Quits the client if the store created it; a client it was given stays open. */
  async close (): Promise<void> {
    if (!this.#owned) return
    const client = this.#client
    if (client.status === 'end') return
    try {
      await this.#deadline(client.quit(), Math.max(1000, this.#timeoutMs), 'quit')
    } catch {
      // Redis is unreachable or slow to answer QUIT: drop the connection instead.
    }
    client.disconnect()
  }

  // Rejects with a LimitStoreError when `work` fails or has not settled within `ms`. A command
  // that times out is not cancelled (Redis may still run it); its late answer is ignored.
  async #deadline<T> (work: Promise<T>, ms: number, what: string): Promise<T> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((resolve, reject) => {
      // After an event-loop stall the timer runs before pending socket reads; setImmediate lets
      // a reply that already arrived settle first, so a stall alone is not reported as a timeout.
      timer = setTimeout(() => {
        setImmediate(() => reject(new LimitStoreError(`redis ${what} timed out after ${ms} ms`)))
      }, ms)
    })
    try {
      return await Promise.race([work, timeout])
    } catch (err) {
      if (err instanceof LimitStoreError) throw err
      const message = err instanceof Error ? err.message : String(err)
      throw new LimitStoreError(`redis ${what} failed: ${message}`, { cause: err })
    } finally {
      clearTimeout(timer)
    }
  }
}

/** A fail-fast client for one node, a Cluster or a Sentinel-managed master. */
function connect (connection: RedisConnection, timeoutMs: number): Redis | Cluster {
  const failFast: RedisOptions = {
    // No ioredis `commandTimeout`: its timer rejects a command whose reply is already in the
    // socket buffer when the event loop was stalled; #deadline() covers every client instead.
    // Never queue while disconnected, never resend after a drop: reject at once instead.
    enableOfflineQueue: false,
    enableAutoPipelining: true,
    maxRetriesPerRequest: 0,
    connectTimeout: Math.max(1000, timeoutMs)
  }
  let client: Redis | Cluster
  if (connection.mode === 'single') {
    client = new Redis(connection.url, failFast)
  } else if (connection.mode === 'cluster') {
    const { nodes, tls, username, password } = connection
    const { enableOfflineQueue, enableAutoPipelining, ...nodeOptions } = failFast
    client = new Cluster(nodes, {
      enableOfflineQueue,
      enableAutoPipelining,
      redisOptions: { ...nodeOptions, username, password, ...(tls ? { tls: {} } : {}) },
      // A moved or failed-over slot is retried once the new owner is known, within the deadline.
      retryDelayOnFailover: 10,
      retryDelayOnClusterDown: 10,
      slotsRefreshTimeout: Math.max(1000, timeoutMs)
    })
  } else {
    const { sentinels, name, db, tls, username, password, sentinelUsername, sentinelPassword } = connection
    client = new Redis({
      ...failFast,
      sentinels,
      name,
      db,
      username,
      password,
      sentinelUsername,
      sentinelPassword,
      ...(tls ? { tls: {}, sentinelTLS: {}, enableTLSForSentinelMode: true } : {})
    })
  }
  // Reconnects back off (ioredis: 50 ms more per attempt, at most 2 s), and after a refused
  // password wait AUTH_RETRY_MS: the password will not have changed a few milliseconds later.
  let authFailed = false
  client.on('error', (err: Error) => { authFailed = AUTH_FAILED.test(err.message) })
  const retryStrategy = (times: number): number => authFailed ? AUTH_RETRY_MS : Math.min(times * 50, 2000)
  if (client instanceof Cluster) client.options.clusterRetryStrategy = retryStrategy
  else client.options.retryStrategy = retryStrategy
  return client
}
