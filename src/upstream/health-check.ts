// Active health checks of one upstream's targets: each target is probed on a connection of its
// own, and taken out of selection after unhealthyThreshold failed probes in a row, back after
// healthyThreshold passing ones. Probes and the breaker are separate states: a target is chosen
// only when it is not ejected here and its breaker admits. A passing probe moves an open breaker
// to half-open; real traffic then closes it. When every target fails, panic decides (Envoy's
// panic threshold): open ignores the probes, closed leaves the upstream without targets (503).
import type { Dispatcher } from 'undici'
import type { HealthCheckConfig } from '../config/route-file/index.js'
import { DurationHistogram } from '../stats/duration-histogram.js'
import type { DiscoveryLog } from './discovery.js'
import type { Target } from './target.js'

/** How a probe ended: an expected status, another status, no answer in time, no connection. */
export const PROBE_RESULTS = ['pass', 'fail', 'timeout', 'error'] as const
export type ProbeResult = typeof PROBE_RESULTS[number]

// Each wait between probes is up to this share shorter or longer, at random.
const JITTER = 0.1
const PROBE_BODY_LIMIT = 64 * 1024

export class HealthChecker {
  /** Time of each probe to its whole answer (or failure). */
  readonly latency = new DurationHistogram()
  /** Probes per target, by result (health_checks_total). */
  readonly results = new Map<Target, Record<ProbeResult, number>>()
  private options: HealthCheckConfig
  private allFailing = false
  private readonly probers = new Map<Target, Prober>()

  constructor (readonly upstream: string, options: HealthCheckConfig, readonly log: DiscoveryLog) {
    this.options = options
  }

  get config (): HealthCheckConfig {
    return this.options
  }

  /** Every target fails its probes and panic is open: probes are ignored until one passes again. */
  get panic (): boolean {
    return this.allFailing && this.options.panic === 'open'
  }

  /** New settings from a reload: the targets' states are kept. */
  configure (options: HealthCheckConfig): void {
    this.options = options
    this.update()
  }

  /** The upstream's targets now: probes start for new ones and stop for those gone. */
  track (targets: readonly Target[]): void {
    const now = new Set(targets)
    for (const [target, prober] of this.probers) {
      if (!now.has(target)) {
        prober.stop()
        this.probers.delete(target)
        this.results.delete(target)
      }
    }
    for (const target of targets) {
      if (this.probers.has(target)) continue
      this.results.set(target, { pass: 0, fail: 0, timeout: 0, error: 0 })
      const prober = new Prober(target, this)
      this.probers.set(target, prober)
      // The first probe of a target comes soon, spread over the first tenth of an interval.
      prober.schedule(Math.random() * this.options.intervalMs * JITTER)
    }
    this.update()
  }

  /** No more probes; the targets are judged by their breakers alone again. */
  stop (): void {
    for (const [target, prober] of this.probers) {
      prober.stop()
      target.unhealthy = false
      target.ejected = false
    }
    this.probers.clear()
    this.results.clear()
    this.allFailing = false
  }

  /** Next wait between two probes of a target. */
  nextWaitMs (): number {
    return this.options.intervalMs * (1 + (Math.random() * 2 - 1) * JITTER)
  }

  /** Re-decides panic and which targets selection skips; called when a target changes state. */
  update (): void {
    const targets = [...this.probers.keys()]
    const allFailing = targets.length > 0 && targets.every(t => t.unhealthy)
    if (allFailing !== this.allFailing) {
      this.allFailing = allFailing
      const fields = { upstream: this.upstream, targets: targets.length, panic: this.options.panic }
      if (!allFailing) this.log.info(fields, 'a target passes its health checks again: those failing are left out')
      else if (this.options.panic === 'open') this.log.warn(fields, 'every target fails its health checks: panic, the probes are ignored and targets are chosen by their breakers alone')
      else this.log.warn(fields, 'every target fails its health checks: requests get 503 (panic: closed)')
    }
    const panic = this.panic
    for (const t of targets) t.ejected = t.unhealthy && !panic
  }
}

/** The probe loop of one target. */
class Prober {
  private client: Dispatcher | undefined
  private timer: NodeJS.Timeout | undefined
  private stopped = false
  private passes = 0
  private failures = 0

  constructor (private readonly target: Target, private readonly checker: HealthChecker) {}

  schedule (ms: number): void {
    this.timer = setTimeout(() => { this.probe().catch(() => {}) }, ms)
    this.timer.unref()
  }

  stop (): void {
    this.stopped = true
    clearTimeout(this.timer)
    this.client?.destroy().catch(() => {})
  }

  private async probe (): Promise<void> {
    const options = this.checker.config
    const target = this.target
    const started = performance.now()
    let result: ProbeResult
    let detail: string
    try {
      this.client ??= target.newClient()
      const res = await this.client.request({
        method: 'GET',
        path: options.path,
        headers: { 'user-agent': 'gatehouse-health-check', ...options.headers, host: target.host },
        headersTimeout: options.timeoutMs,
        bodyTimeout: options.timeoutMs,
        signal: AbortSignal.timeout(options.timeoutMs)
      })
      await res.body.dump({ limit: PROBE_BODY_LIMIT })
      const status = res.statusCode
      result = options.expectStatus.some(([lo, hi]) => status >= lo && status <= hi) ? 'pass' : 'fail'
      detail = `status ${status}`
    } catch (err) {
      const e = err as Error & { code?: string }
      result = e.name === 'TimeoutError' || e.code === 'UND_ERR_HEADERS_TIMEOUT' || e.code === 'UND_ERR_BODY_TIMEOUT' ? 'timeout' : 'error'
      detail = result === 'timeout' ? `no answer within ${options.timeoutMs} ms` : e.code ?? e.message
    }
    if (this.stopped) return
    // The next probe is scheduled first: whatever this result sets off cannot stop the probes.
    this.schedule(this.checker.nextWaitMs())
    this.checker.latency.observe((performance.now() - started) / 1000)
    const counts = this.checker.results.get(target)
    if (counts !== undefined) counts[result]++
    this.record(result === 'pass', detail)
  }

  private record (passed: boolean, detail: string): void {
    const target = this.target
    const options = this.checker.config
    const fields = { upstream: target.upstream, target: target.origin, probe: options.path, result: detail }
    if (passed) {
      this.failures = 0
      this.passes++
      // An open breaker may probe at once with real traffic; only that traffic closes it.
      target.breaker.healthCheckPassed()
      if (target.unhealthy && this.passes >= options.healthyThreshold) {
        target.unhealthy = false
        this.checker.log.info({ ...fields, passes: this.passes }, 'target passes its health checks again')
        this.checker.update()
      }
      return
    }
    this.passes = 0
    this.failures++
    if (!target.unhealthy && this.failures >= options.unhealthyThreshold) {
      target.unhealthy = true
      this.checker.log.warn({ ...fields, failures: this.failures }, 'target fails its health checks: no requests are sent to it')
      this.checker.update()
    }
  }
}
