// One origin of an upstream service: its connection pool, its load and its breaker.
import { Pool } from 'undici'
import { CircuitBreaker, type BreakerOptions, type BreakerState } from './breaker.js'
import { TryStats } from './try-stats.js'

export interface TargetOptions {
  upstream: string
  origin: string
  maxConnections: number
  weight: number
  connectTimeoutMs: number
  breaker: BreakerOptions
}

export type TargetTransitionListener = (target: Target, from: BreakerState, to: BreakerState, cause: string) => void

export class Target {
  readonly upstream: string
  readonly origin: string
  readonly maxConnections: number
  weight: number
  /** Requests sent to this target whose response has not finished. */
  inFlight = 0
  readonly pool: Pool
  readonly breaker: CircuitBreaker
  /** Tries sent to this target and how they ended (for metrics). */
  readonly tries = new TryStats()
  /** Breaker transitions since start, by the state entered (for metrics). */
  readonly transitions: Record<BreakerState, number> = { closed: 0, open: 0, 'half-open': 0 }

  constructor (options: TargetOptions, onTransition: TargetTransitionListener = () => {}) {
    this.upstream = options.upstream
    this.origin = options.origin
    this.maxConnections = options.maxConnections
    this.weight = options.weight
    // The pool never opens more sockets than the cap.
    this.pool = new Pool(options.origin, {
      connections: options.maxConnections,
      connect: { timeout: options.connectTimeoutMs }
    })
    this.breaker = new CircuitBreaker(options.breaker, (from, to, cause) => {
      this.transitions[to]++
      onTransition(this, from, to, cause)
    })
  }

  /** Identity across reloads: same upstream, origin and pool settings keep the same Target. */
  static key (options: TargetOptions): string {
    return `${options.upstream} ${options.origin} ${options.maxConnections} ${options.connectTimeoutMs}`
  }

  /** in-flight ÷ maxConnections: 0 idle, 1 full. */
  get saturation (): number {
    return this.inFlight / this.maxConnections
  }

  /** Not full, and its breaker lets a request through. */
  admits (): boolean {
    return this.inFlight < this.maxConnections && this.breaker.admits()
  }
}
