// Durations counted in fixed buckets, as plain numbers that /metrics reads when scraped: upstream
// tries (src/upstream/try-stats.ts), rate-limit store calls and proxied requests use the one shape.

/** Upper bounds (seconds) of every duration histogram. */
export const DURATION_BUCKETS: readonly number[] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]

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
