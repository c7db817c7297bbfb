// The circuit breaker of one target: a pure state machine with an injected clock.
//   closed    → open       on `consecutiveFailures` in a row, or `failureRatio` of at least
//                          `minRequests` requests within `window`
//   open      → half-open  once `openFor` has passed (checked when a request asks), or at once
//                          when an active health check passes
//   half-open → closed     after `closeAfter` successful probes
//   half-open → open       on a failed probe; `openFor` doubles per consecutive re-open, up to `maxOpenFor`
// Half-open admits at most `halfOpenProbes` requests at a time.

export interface BreakerOptions {
  /** Failures in a row that open the breaker; 0 turns this rule off. Default 5. */
  consecutiveFailures: number
  /** Share of failed requests within the window that opens it; 0 turns this rule off. Default 0.5. */
  failureRatio: number
  /** Requests the window must hold before the ratio counts. Default 20. */
  minRequests: number
  /** Sliding window of the ratio rule, ms. Default 10 s. */
  windowMs: number
  /** Time open before the first probe, ms. Default 5 s. */
  openForMs: number
  /** Cap of the doubling open time, ms. Default: openForMs. */
  maxOpenForMs: number
  /** Concurrent trial requests while half-open. Default 1. */
  halfOpenProbes: number
  /** Successful probes that close it. Default 2. */
  closeAfter: number
}

export type BreakerState = 'closed' | 'open' | 'half-open'

export type TransitionListener = (from: BreakerState, to: BreakerState, cause: string) => void

const BUCKETS = 10

export class CircuitBreaker {
  state: BreakerState = 'closed'
  private options: BreakerOptions
  private consecutive = 0
  private openUntil = 0
  private reopens = 0
  private probes = 0
  private probeSuccesses = 0
  // The ratio window as BUCKETS buckets; each remembers which bucket period it counts.
  private readonly periods = new Array<number>(BUCKETS).fill(-1)
  private readonly successes = new Array<number>(BUCKETS).fill(0)
  private readonly failures = new Array<number>(BUCKETS).fill(0)

  constructor (options: BreakerOptions, private readonly onTransition: TransitionListener = () => {}, private readonly now: () => number = Date.now) {
    this.options = options
  }

  /** New settings from a reload; the state is kept. */
  configure (options: BreakerOptions): void {
    this.options = options
  }

  /** Whether a request may be sent now (takes nothing; see acquire). */
  admits (): boolean {
    if (this.state === 'closed') return true
    if (this.state === 'open') return this.now() >= this.openUntil
    return this.probes < this.options.halfOpenProbes
  }

  /**
   * Takes the right to send one request, after admits() said yes. Returns whether the request
   * is a half-open probe: pass that back to record() or release().
   */
  acquire (): boolean {
    if (this.state === 'closed') return false
    if (this.state === 'open') this.transition('half-open', 'open time elapsed')
    this.probes++
    return true
  }

  /** The outcome of a request that was acquired. */
  record (probe: boolean, ok: boolean, cause: string): void {
    if (probe) {
      this.probes--
      if (this.state !== 'half-open') return
      if (!ok) {
        this.reopens++
        this.open(`probe failed: ${cause}`)
      } else if (++this.probeSuccesses >= this.options.closeAfter) {
        this.transition('closed', `${this.probeSuccesses} probes succeeded`)
      }
      return
    }
    // A request sent while closed whose answer arrives after the breaker opened: too late to count.
    if (this.state !== 'closed') return
    const bucket = this.bucket()
    if (ok) {
      this.consecutive = 0
      this.successes[bucket]!++
      return
    }
    this.consecutive++
    this.failures[bucket]!++
    const { consecutiveFailures, failureRatio, minRequests } = this.options
    if (consecutiveFailures > 0 && this.consecutive >= consecutiveFailures) {
      this.open(`${this.consecutive} consecutive failures, last: ${cause}`)
      return
    }
    if (failureRatio > 0) {
      const [ok, failed] = this.windowCounts()
      if (ok + failed >= minRequests && failed / (ok + failed) >= failureRatio) {
        this.open(`${failed} of ${ok + failed} requests failed in the window, last: ${cause}`)
      }
    }
  }

  /**
   * An active health check passed: an open breaker goes to half-open at once, without waiting out
   * openFor, so real requests can probe it. Never straight to closed: only real traffic closes it.
   */
  healthCheckPassed (): void {
    if (this.state === 'open') this.transition('half-open', 'health check passed')
  }

  /** A request that was acquired but ended with no verdict on the target (the client left). */
  release (probe: boolean): void {
    if (probe) this.probes--
  }

  /** Milliseconds until the breaker lets a request through again (0 when it does now). */
  retryAfterMs (): number {
    if (this.state === 'open') return Math.max(0, this.openUntil - this.now())
    return 0
  }

  private open (cause: string): void {
    const { openForMs, maxOpenForMs } = this.options
    this.openUntil = this.now() + Math.min(openForMs * 2 ** this.reopens, Math.max(openForMs, maxOpenForMs))
    this.transition('open', cause)
  }

  private transition (to: BreakerState, cause: string): void {
    const from = this.state
    this.state = to
    if (to === 'closed') {
      this.reopens = 0
      this.consecutive = 0
      this.successes.fill(0)
      this.failures.fill(0)
    }
    if (to === 'half-open') this.probeSuccesses = 0
    this.onTransition(from, to, cause)
  }

  private bucket (): number {
    const period = Math.floor(this.now() / (this.options.windowMs / BUCKETS))
    const i = period % BUCKETS
    if (this.periods[i] !== period) {
      this.periods[i] = period
      this.successes[i] = 0
      this.failures[i] = 0
    }
    return i
  }

  private windowCounts (): [number, number] {
    const current = Math.floor(this.now() / (this.options.windowMs / BUCKETS))
    let ok = 0
    let failed = 0
    for (let i = 0; i < BUCKETS; i++) {
      if (current - (this.periods[i] as number) < BUCKETS) {
        ok += this.successes[i] as number
        failed += this.failures[i] as number
      }
    }
    return [ok, failed]
  }
}
