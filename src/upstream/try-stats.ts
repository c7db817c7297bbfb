// What happened to one target's tries, as plain numbers: the request path only adds to them and
// /metrics reads them when scraped, so no metric library runs per request.
import type { TryFailure } from './retry.js'

/** How one try ended: ok, a status that counts as a breaker failure, a failure, or the client left. */
export type TryOutcome = 'ok' | 'bad-status' | TryFailure | 'aborted'

/** Upper bounds (seconds) of the try-duration histogram. */
export const DURATION_BUCKETS: readonly number[] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]

const STATUS_CLASSES = ['error', '1xx', '2xx', '3xx', '4xx', '5xx']

export class DurationHistogram {
  /** Per bucket, not cumulative; the last slot counts what is above every bound. */
  readonly counts: number[] = new Array<number>(DURATION_BUCKETS.length + 1).fill(0)
  sum = 0
  count = 0

  observe (seconds: number): void {
    let i = 0
    while (i < DURATION_BUCKETS.length && seconds > (DURATION_BUCKETS[i] as number)) i++
    this.counts[i]!++
    this.sum += seconds
    this.count++
  }
}

export class TryStats {
  readonly outcomes: Partial<Record<TryOutcome, number>> = {}
  /** By status class (`2xx` … `5xx`, or `error` when there was no response). */
  readonly durations: Partial<Record<string, DurationHistogram>> = {}

  record (outcome: TryOutcome, statusCode: number | undefined, seconds: number): void {
    this.outcomes[outcome] = (this.outcomes[outcome] ?? 0) + 1
    const statusClass = STATUS_CLASSES[statusCode === undefined ? 0 : Math.floor(statusCode / 100)] ?? 'error'
    ;(this.durations[statusClass] ??= new DurationHistogram()).observe(seconds)
  }
}
