// What a rate-limit store decides for one request. Stores are pure of Fastify: the plugin that
// wires them to routes (issue 4) reads only this interface.

import type { LimitAlgorithm } from '../../../src/config/route-file/index.js'
export type { LimitAlgorithm }

export interface LimitDecision {
  /** Whether this request is admitted. A rejected request consumes nothing. */
  allowed: boolean
  /** The limit's max. */
  limit: number
  /** Requests still admitted in the window after this one (0 when rejected). */
  remaining: number
  /** Milliseconds until the next slot frees (0 while remaining > 0): Retry-After for a 429. */
  retryAfterMs: number
  /** Milliseconds until every request counted now has left the window (the budget is whole again). */
  resetMs: number
}

export interface LimitStore {
  /** Counts one request against `key` (admitted or not) under `max` per `windowMs`. */
  hit: (key: string, max: number, windowMs: number, algorithm: LimitAlgorithm) => Promise<LimitDecision>
  close: () => Promise<void>
}
