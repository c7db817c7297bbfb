// In-process rate-limit store: the same decisions as the Redis scripts (sliding-log.lua,
// sliding-window.lua), exact within one process, for a single gateway or as a fallback. Times are
// kept in integer microseconds, as in the scripts, so both stores compute the same numbers.
import type { LimitAlgorithm, LimitDecision, LimitStore } from './types.js'

export interface MemoryLimitStoreOptions {
  /** Wall-clock milliseconds; injected by tests. Default Date.now. */
  now?: () => number
  /** How often expired keys are dropped. Default 60 s. The timer never keeps the process alive. */
  sweepIntervalMs?: number
}

const ALGORITHMS: ReadonlySet<string> = new Set<LimitAlgorithm>(['sliding-log', 'sliding-window'])

/**
 * Throws (TypeError / RangeError) unless the arguments of LimitStore.hit() are usable. Shared by
 * both stores so they refuse the same things. max × windowMs × 1000 must stay below 2^53: the
 * sliding window computes in count × microseconds and must stay exact.
 */
export function checkHitArgs (key: string, max: number, windowMs: number, algorithm: LimitAlgorithm): void {
  if (typeof key !== 'string' || key === '') throw new TypeError('rate-limit key must be a non-empty string')
  if (!Number.isSafeInteger(max) || max < 1) throw new RangeError(`rate-limit max must be an integer >= 1, got ${max}`)
  if (!Number.isSafeInteger(windowMs) || windowMs < 1) throw new RangeError(`rate-limit windowMs must be an integer >= 1, got ${windowMs}`)
  if (max * windowMs * 1000 > Number.MAX_SAFE_INTEGER) throw new RangeError(`rate-limit max × windowMs is too large (${max} × ${windowMs} ms)`)
  if (!ALGORITHMS.has(algorithm)) throw new TypeError(`rate-limit algorithm must be sliding-log or sliding-window, got ${String(algorithm)}`)
}

/** floor(a / b) for non-negative integers, exact even where the float quotient rounds up. */
function idiv (a: number, b: number): number {
  let q = Math.floor(a / b)
  if (q * b > a) q--
  else if ((q + 1) * b <= a) q++
  return q
}

/** Whole milliseconds, rounded up, from microseconds, kept within [lo, hi]. */
function ms (us: number, lo = 0, hi = Infinity): number {
  return Math.min(hi, Math.max(lo, Math.ceil(us / 1000)))
}

interface Log {
  /** Admit times (µs), ascending; entries before `head` have left the window. */
  times: number[]
  head: number
  /** When the newest entry leaves the window (µs): the key can be dropped. */
  expiresAt: number
}

interface Counters {
  /** Start (µs) of the window `cur` counts, or undefined when nothing was counted in it yet. */
  curStart: number | undefined
  cur: number
  prevStart: number | undefined
  prev: number
  /** End of the window after the last counted one (µs): nothing weighs any more. */
  expiresAt: number
}

export class MemoryLimitStore implements LimitStore {
  readonly #now: () => number
  readonly #logs = new Map<string, Log>()
  readonly #counters = new Map<string, Counters>()
  readonly #timer: NodeJS.Timeout

  constructor (options: MemoryLimitStoreOptions = {}) {
    this.#now = options.now ?? Date.now
    const every = options.sweepIntervalMs ?? 60_000
    this.#timer = setInterval(() => { this.sweep() }, every)
    this.#timer.unref()
  }

  /** Keys held now (both algorithms). */
  get size (): number {
    return this.#logs.size + this.#counters.size
  }

  /** Drops every key whose requests have all left their window. Runs on the sweep timer. */
  sweep (): void {
    const now = this.#nowUs()
    for (const [key, log] of this.#logs) if (log.expiresAt <= now) this.#logs.delete(key)
    for (const [key, c] of this.#counters) if (c.expiresAt <= now) this.#counters.delete(key)
  }

  async hit (key: string, max: number, windowMs: number, algorithm: LimitAlgorithm): Promise<LimitDecision> {
    return this.decide(key, max, windowMs, algorithm)
  }

  /** hit(), answered at once: the limiter's hook needs no promise for a decision made in memory. */
  decide (key: string, max: number, windowMs: number, algorithm: LimitAlgorithm): LimitDecision {
    checkHitArgs(key, max, windowMs, algorithm)
    const now = this.#nowUs()
    return algorithm === 'sliding-log'
      ? this.#slidingLog(key, max, windowMs, now)
      : this.#slidingWindow(key, max, windowMs, now)
  }

  async close (): Promise<void> {
    clearInterval(this.#timer)
    this.#logs.clear()
    this.#counters.clear()
  }

  #nowUs (): number {
    return Math.round(this.#now() * 1000)
  }

  // Mirrors sliding-log.lua step by step.
  #slidingLog (key: string, limit: number, windowMs: number, now: number): LimitDecision {
    const window = windowMs * 1000
    let log = this.#logs.get(key)
    if (log === undefined) {
      log = { times: [], head: 0, expiresAt: 0 }
      this.#logs.set(key, log)
    }
    // Trim: an entry admitted at s counts while now < s + window.
    const { times } = log
    while (log.head < times.length && (times[log.head] as number) <= now - window) log.head++
    if (log.head === times.length) {
      times.length = 0
      log.head = 0
    } else if (log.head > 64 && log.head * 2 > times.length) {
      times.splice(0, log.head)
      log.head = 0
    }
    let count = times.length - log.head
    let allowed = false
    if (count < limit) {
      // Keep ascending order even if the clock stepped back.
      let at = times.length
      while (at > log.head && (times[at - 1] as number) > now) at--
      // splice() would allocate its (empty) result on every admitted request.
      if (at === times.length) times.push(now)
      else times.splice(at, 0, now)
      log.expiresAt = Math.max(log.expiresAt, now + window)
      count++
      allowed = true
    }
    const remaining = Math.max(0, limit - count)
    let retryAfterMs = 0
    if (remaining === 0) retryAfterMs = ms((times[log.head + count - limit] as number) + window - now, 1, windowMs)
    const newest = times[times.length - 1]
    const resetMs = newest === undefined ? 0 : ms(newest + window - now, 0, windowMs)
    return { allowed, limit, remaining, retryAfterMs, resetMs }
  }

  // Mirrors sliding-window.lua step by step.
  #slidingWindow (key: string, limit: number, windowMs: number, now: number): LimitDecision {
    const window = windowMs * 1000
    let start = now - (now % window)
    let c = this.#counters.get(key)
    if (c === undefined) {
      c = { curStart: undefined, cur: 0, prevStart: undefined, prev: 0, expiresAt: 0 }
      this.#counters.set(key, c)
    }
    // Roll over when the counter belongs to an earlier window.
    if (c.curStart !== undefined && c.curStart !== start) {
      if (c.curStart > start) {
        start = c.curStart
      } else if (c.curStart === start - window) {
        c.prevStart = c.curStart
        c.prev = c.cur
      } else {
        c.prevStart = undefined
        c.prev = 0
      }
      if (c.curStart !== start) {
        c.curStart = undefined
        c.cur = 0
      }
    }
    const prevCount = c.prevStart === start - window ? c.prev : 0
    const elapsed = Math.max(0, now - start)
    let scaled = prevCount * (window - elapsed) + c.cur * window
    const budget = limit * window
    let allowed = false
    if (scaled < budget) {
      c.cur++
      c.curStart = start
      c.expiresAt = start + 2 * window
      scaled += window
      allowed = true
    }
    const remaining = scaled < budget ? idiv(budget - scaled + window - 1, window) : 0
    let retryAfterMs = 0
    if (remaining === 0) {
      let waitUs: number
      if (c.cur >= limit || prevCount === 0) {
        const e = Math.max(0, window - idiv(budget, Math.max(1, c.cur)))
        waitUs = (start + window - now) + e + 1
      } else {
        const e = window - idiv((limit - c.cur) * window, prevCount)
        waitUs = e + 1 - elapsed
      }
      retryAfterMs = ms(Math.max(1, waitUs))
    }
    let resetMs = 0
    if (c.cur > 0) resetMs = ms(start + 2 * window - now)
    else if (prevCount > 0) resetMs = ms(start + window - now)
    if (c.cur === 0 && prevCount === 0) this.#counters.delete(key)
    return { allowed, limit, remaining, retryAfterMs, resetMs }
  }
}
