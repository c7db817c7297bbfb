// What happened to one target's tries, as plain numbers: the request path only adds to them and
// /metrics reads them when scraped, so no metric library runs per request.
import { DurationHistogram } from '../stats/duration-histogram.js'
import type { TryFailure } from './retry.js'

/** How one try ended: ok, a status that counts as a breaker failure, a failure, or the client left. */
export type TryOutcome = 'ok' | 'bad-status' | TryFailure | 'aborted'

const STATUS_CLASSES = ['error', '1xx', '2xx', '3xx', '4xx', '5xx']

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
