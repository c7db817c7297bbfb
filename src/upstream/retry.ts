// Retry policy: which failures are retried, how long to wait, and how many retries an upstream
// may have going at once.

/** What went wrong with one try. */
export type TryFailure = 'connect-failure' | 'reset' | 'timeout'

export interface RetryOptions {
  /** Retries after the first try; 0 disables. Default 1. */
  attempts: number
  /** Base of exponential backoff with full jitter, ms. Default 25. */
  backoffMs: number
  /** Cap of the backoff, ms. Default 250. */
  maxBackoffMs: number
  /** Failures and statuses that are retried. Default connect-failure, reset, timeout, 502, 503, 504. */
  on: ReadonlyArray<TryFailure | number>
  /** Retries may add at most this share of the upstream's active requests. Default 0.2. */
  budget: number
  /** Deprecated: the default requestBuffer of the file's routes (bodies kept, and replayed by retries). */
  bufferBody: number | undefined
}

// RFC 9110 §9.2.2: methods whose repetition has the same effect. POST and PATCH are not.
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE'])

/**
 * Whether a try that ended in `why` may be tried again. A connect failure means the request
 * never left, so any method may go again; anything else reached the upstream, and only
 * idempotent methods are sent twice.
 */
export function retryable (method: string, why: TryFailure | number, on: ReadonlyArray<TryFailure | number>): boolean {
  if (!on.includes(why)) return false
  return why === 'connect-failure' || IDEMPOTENT.has(method)
}

/** Backoff before retry number `retry` (1 for the first): full jitter, random() × min(cap, base × 2^(retry-1)). */
export function backoffMs (retry: number, options: Pick<RetryOptions, 'backoffMs' | 'maxBackoffMs'>, random: () => number = Math.random): number {
  return Math.floor(random() * Math.min(options.maxBackoffMs, options.backoffMs * 2 ** (retry - 1)))
}

// HTTP-date (RFC 9110 §5.6.7): IMF-fixdate, RFC 850 and asctime. Date.parse alone would also
// take "1.5" or "-1" for dates.
const HTTP_DATE = /^(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT|(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day, \d{2}-[A-Z][a-z]{2}-\d{2} \d{2}:\d{2}:\d{2} GMT|(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) [A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2} \d{4})$/

/** A Retry-After header (delay-seconds or HTTP-date, RFC 9110 §10.2.3) in ms, or undefined. */
export function retryAfterMs (value: string | string[] | undefined, now: number = Date.now()): number | undefined {
  if (typeof value !== 'string') return undefined
  if (/^\d+$/.test(value)) return Number(value) * 1000
  if (!HTTP_DATE.test(value)) return undefined
  // asctime carries no zone but means GMT; Date.parse would read it as local time.
  const date = Date.parse(value.endsWith('GMT') ? value : `${value} GMT`)
  return Number.isNaN(date) ? undefined : Math.max(0, date - now)
}

/**
 * Envoy-style retry budget of one upstream: retries in progress may not exceed `share` of the
 * requests in progress, with a floor so a quiet upstream can still retry at all.
 */
export class RetryBudget {
  /** Client requests to this upstream in progress. */
  active = 0
  /** Retries in progress. */
  retrying = 0
  /** Retries refused because the budget was spent (for metrics). */
  denied = 0
  /** Retries sent, by what the try before them ran into (for metrics). */
  readonly retries: Record<string, number> = {}

  constructor (public share: number, private readonly floor = 3) {}

  /** Whether one more retry fits now. */
  allows (): boolean {
    return this.retrying < Math.max(this.floor, this.share * this.active)
  }
}
