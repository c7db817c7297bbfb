// One origin of an upstream service: its connection pool and how loaded it is.
import { Pool } from 'undici'

export interface TargetOptions {
  upstream: string
  origin: string
  maxConnections: number
  weight: number
  connectTimeoutMs: number
}

export class Target {
  readonly upstream: string
  readonly origin: string
  readonly maxConnections: number
  weight: number
  /** Requests sent to this target whose response has not finished. */
  inFlight = 0
  readonly pool: Pool

  constructor (options: TargetOptions) {
    this.upstream = options.upstream
    this.origin = options.origin
    this.maxConnections = options.maxConnections
    this.weight = options.weight
    // The pool never opens more sockets than the cap, even if a client left early and its
    // request is still running upstream.
    this.pool = new Pool(options.origin, {
      connections: options.maxConnections,
      connect: { timeout: options.connectTimeoutMs }
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

  get full (): boolean {
    return this.inFlight >= this.maxConnections
  }
}
