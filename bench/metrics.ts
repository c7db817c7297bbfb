// The bench's view of a gateway's /metrics: fetch the Prometheus text and pick samples out of it.
import http from 'node:http'

export interface MetricSample {
  name: string
  labels: Record<string, string>
  value: number
}

/** GET http://127.0.0.1:<port>/metrics as text (bounded by `timeoutMs`). */
export function scrape (port: number, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/metrics', agent: false, timeout: timeoutMs }, res => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { text += chunk })
      res.once('end', () => {
        if (res.statusCode === 200) resolve(text)
        else reject(new Error(`/metrics answered ${res.statusCode}`))
      })
      res.once('error', reject)
    })
    req.once('timeout', () => req.destroy(new Error('/metrics: timeout')))
    req.once('error', reject)
  })
}

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g

/** The samples of the metric `name` in Prometheus text exposition format. */
export function samples (text: string, name: string): MetricSample[] {
  const found: MetricSample[] = []
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue
    const m = SAMPLE.exec(line)
    if (m === null || m[1] !== name) continue
    const labels: Record<string, string> = {}
    for (const [, key, value] of (m[2] ?? '').matchAll(LABEL)) {
      labels[key as string] = (value as string).replace(/\\(.)/g, (_all, c: string) => c === 'n' ? '\n' : c)
    }
    found.push({ name, labels, value: Number(m[3]) })
  }
  return found
}

/** Sum of the samples of `name` whose labels include all of `match`. */
export function total (text: string, name: string, match: Record<string, string> = {}): number {
  return samples(text, name)
    .filter(s => Object.entries(match).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0)
}

/** A Prometheus histogram as scraped: cumulative bucket counts by upper bound (seconds). */
export interface ScrapedHistogram {
  buckets: Array<{ le: number, count: number }>
  sum: number
  count: number
}

/** The histogram `name` (its `_bucket`, `_sum` and `_count` samples whose labels include `match`). */
export function histogram (text: string, name: string, match: Record<string, string> = {}): ScrapedHistogram {
  const byLe = new Map<number, number>()
  for (const s of samples(text, `${name}_bucket`)) {
    if (!Object.entries(match).every(([k, v]) => s.labels[k] === v)) continue
    const le = s.labels.le === '+Inf' ? Infinity : Number(s.labels.le)
    byLe.set(le, (byLe.get(le) ?? 0) + s.value)
  }
  return {
    buckets: [...byLe].map(([le, count]) => ({ le, count })).sort((a, b) => a.le - b.le),
    sum: total(text, `${name}_sum`, match),
    count: total(text, `${name}_count`, match)
  }
}

/** What was observed between two scrapes of the same histogram (`after` minus `before`). */
export function histogramDelta (after: ScrapedHistogram, before: ScrapedHistogram): ScrapedHistogram {
  const earlier = new Map(before.buckets.map(b => [b.le, b.count]))
  return {
    buckets: after.buckets.map(b => ({ le: b.le, count: b.count - (earlier.get(b.le) ?? 0) })),
    sum: after.sum - before.sum,
    count: after.count - before.count
  }
}

/** Two histograms of the same buckets added up (e.g. the deltas of several intervals). */
export function histogramSum (a: ScrapedHistogram, b: ScrapedHistogram): ScrapedHistogram {
  const other = new Map(b.buckets.map(x => [x.le, x.count]))
  return {
    buckets: a.buckets.map(x => ({ le: x.le, count: x.count + (other.get(x.le) ?? 0) })),
    sum: a.sum + b.sum,
    count: a.count + b.count
  }
}

/**
 * The upper bound (seconds) of the bucket that holds quantile `q`: all a histogram can say for
 * sure (interpolating inside a bucket, as Prometheus does, assumes an even spread). Null when empty.
 */
export function quantileBound (h: ScrapedHistogram, q: number): number | null {
  if (h.count <= 0) return null
  const rank = q * h.count
  return h.buckets.find(b => b.count >= rank)?.le ?? Infinity
}
