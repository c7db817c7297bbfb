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
