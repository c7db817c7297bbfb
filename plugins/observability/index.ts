// Prometheus metrics at /metrics. Gauges are read from the live route table at scrape time, so
// the request path does no metric bookkeeping of its own beyond the request histogram.
/* eslint-disable no-new -- prom-client metrics register themselves when constructed */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fastifyMetrics from 'fastify-metrics'
import fp from 'fastify-plugin'
import type { Metric, Registry } from 'prom-client'
import type { Target } from '../../src/upstream/target.js'
import { PROBE_RESULTS } from '../../src/upstream/health-check.js'
import { responseDelivered } from '../../src/http/client-stream.js'
import { answeredInFlight } from '../../src/http/parser-answer.js'
import { repoRoot } from '../../src/repo-root.js'
import { DURATION_BUCKETS, DurationHistogram } from '../../src/stats/duration-histogram.js'
import { AUTH_FAILURE_REASONS } from '../auth/verifier.js'
import { UPGRADE_OUTCOMES } from '../websocket/index.js'
import { AccessLog, type AccessLogOptions } from './access-log.js'

// The version of package.json, read once (the package is not imported as JSON to keep dist/ flat;
// found by walking up, so it is the same from dist/ and from the sources under tsx).
const GATEHOUSE_VERSION = (JSON.parse(readFileSync(join(repoRoot(import.meta.url), 'package.json'), 'utf8')) as { version: string }).version

export interface ObservabilityOptions {
  /** Serve /metrics on this port of `adminHost` instead of the main port; undefined: main port. */
  adminPort: number | undefined
  adminHost: string
  /** Undefined: no access lines (LOG_LEVEL above info, or a test's own logger). */
  accessLog: AccessLogOptions | undefined
}

const CLIENT_CLOSED = { code: 'GATEHOUSE_ERR_CLIENT_CLOSED', message: 'the client closed the connection before the response was complete' }
const LEVELS: Record<string, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60, silent: Infinity }

async function observabilityPlugin (app: FastifyInstance, opts: ObservabilityOptions): Promise<void> {
  // A CommonJS module whose plugin is its `default` export.
  // fastify-metrics serves /metrics and Node's default metrics. Its per-route histogram is off: it
  // costs a prom-client observation with label hashing per request (measured in
  // docs/benchmarks.md); the request histogram below is counted in plain arrays and read at scrape.
  await app.register(fastifyMetrics.default, {
    endpoint: opts.adminPort === undefined ? '/metrics' : null,
    clearRegisterOnInit: true,
    defaultMetrics: { enabled: true },
    routeMetrics: { enabled: false }
  })
  const client = app.metrics.client
  if (opts.adminPort !== undefined) serveAdmin(app, client.register, opts.adminPort, opts.adminHost)
  // prom-client's totals of these gauges end in _total, which Prometheus reserves for counters
  // (promtool refuses them); the same figures stay available per type, and summed in PromQL.
  // nodejs_active_requests (libuv requests by type) is empty whenever none is pending: no series.
  for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total', 'nodejs_active_requests']) {
    client.register.removeSingleMetric(name)
  }

  // Every request: its id on the response, and when it ends (completed, or the client gone), one
  // access line and one observation, unless its route logs above info (health, readiness, metrics).
  const accessLog = opts.accessLog === undefined ? undefined : new AccessLog(opts.accessLog)
  const durations = new RequestDurations()
  /** Requests by HTTP version (1.0, 1.1, 2.0): a counter of its own, not a label of the histogram (that would double its series). */
  const versions = new Map<string, number>()
  let active = 0
  const ended = (request: FastifyRequest, reply: FastifyReply): void => {
    active--
    // A proxied request always counts; others only when their route logs at info.
    if (request.match === null && LEVELS[request.routeOptions.logLevel ?? 'info']! > 30) return
    const res = reply.raw
    let statusCode = res.statusCode
    let failure = request.failure
    // Not finished: the client left (499), unless the gateway cut the response (failure says why)
    // or answered the request's broken-off body itself (the client-error handler).
    if (!responseDelivered(request.raw, res) && failure === null) {
      const answer = answeredInFlight(request.raw)
      statusCode = answer?.statusCode ?? 499
      failure = answer ?? CLIENT_CLOSED
    }
    // The route that matched, refused requests included (401, 403, 429, a saturated 503).
    const route = request.match?.route
    durations.observe(route?.id ?? '', route?.upstream.name ?? '', request.method, statusCode, reply.elapsedTime / 1000)
    const version = request.raw.httpVersion
    versions.set(version, (versions.get(version) ?? 0) + 1)
    accessLog?.write(request, reply, statusCode, failure)
  }
  const observe = (request: FastifyRequest, reply: FastifyReply): void => {
    active++
    reply.header('x-request-id', request.id)
    reply.raw.once('close', () => ended(request, reply))
  }
  app.decorate('observeRequest', observe)
  app.addHook('onRequest', (request, reply, done) => {
    observe(request, reply)
    done()
  })
  new client.Counter({
    name: 'http_requests_by_version_total',
    help: 'Requests served (those with an access line), by HTTP version: 1.0, 1.1 or 2.0.',
    labelNames: ['http_version'],
    collect () {
      this.reset()
      for (const [version, n] of versions) this.inc({ http_version: version }, n)
    }
  })
  new client.Gauge({
    name: 'http_requests_active',
    help: 'Requests being served right now.',
    collect () { this.set(active) }
  })

  const targets = () => app.routeTable.table.targets.values()
  const limiter = () => app.rateLimitState
  // One gauge per target property, read from the live table at scrape time.
  const perTarget = (name: string, help: string, value: (t: Target) => number): void => {
    new client.Gauge({
      name,
      help,
      labelNames: ['upstream', 'target'],
      collect () {
        this.reset()
        for (const t of targets()) this.set({ upstream: t.upstream, target: t.origin }, value(t))
      }
    })
  }
  const states = { closed: 0, open: 1, 'half-open': 2 }
  perTarget('upstream_connection_saturation_ratio', 'In-flight requests divided by maxConnections, per target.', t => t.saturation)
  perTarget('upstream_active_connections', 'In-flight requests per target.', t => t.inFlight)
  perTarget('upstream_max_connections', 'maxConnections per target.', t => t.maxConnections)
  perTarget('circuit_breaker_state', 'Breaker state per target: 0 closed, 1 open, 2 half-open.', t => states[t.breaker.state])
  perTarget('upstream_target_healthy', '1 while the target\'s breaker is closed and it passes its active health checks (if any), 0 otherwise.', t => t.breaker.state === 'closed' && !t.unhealthy ? 1 : 0)
  // A counter read from state at scrape time: `totals` yields every label set with its count so far.
  const counter = (name: string, help: string, labelNames: string[], totals: () => Iterable<[Record<string, string>, number]>): void => {
    new client.Counter({
      name,
      help,
      labelNames,
      collect () {
        this.reset()
        for (const [labels, n] of totals()) this.inc(labels, n)
      }
    })
  }
  const upstreams = () => app.routeTable.table.upstreams
  counter('circuit_breaker_transitions_total', 'Breaker transitions per target, by the state entered.', ['upstream', 'target', 'to'], function * () {
    for (const t of targets()) {
      for (const [to, n] of Object.entries(t.transitions)) yield [{ upstream: t.upstream, target: t.origin, to }, n]
    }
  })
  counter('upstream_retry_budget_exhausted_total', 'Retries not made because the upstream\'s retry budget was spent.', ['upstream'], function * () {
    for (const u of upstreams()) yield [{ upstream: u.name }, u.budget.denied]
  })
  counter('upstream_retries_total', 'Retries sent, by what the try before them ran into.', ['upstream', 'reason'], function * () {
    for (const u of upstreams()) {
      const retries = u.budget.retries
      // What the upstream retries on (retry.on) is known: those series start at 0.
      for (const reason of u.retry.on) if (!(String(reason) in retries)) yield [{ upstream: u.name, reason: String(reason) }, 0]
      for (const [reason, n] of Object.entries(retries)) yield [{ upstream: u.name, reason }, n]
    }
  })
  counter('upstream_requests_total', 'Tries sent to each target, by outcome: ok, bad-status (a breaker failure status), connect-failure, reset, timeout, aborted (the client left).', ['upstream', 'target', 'outcome'], function * () {
    for (const t of targets()) {
      for (const [outcome, n] of Object.entries(t.tries.outcomes)) yield [{ upstream: t.upstream, target: t.origin, outcome }, n]
    }
  })
  counter('health_checks_total', 'Active health probes per target, by result: pass (an expected status), fail (another status), timeout, error (no connection).', ['upstream', 'target', 'result'], function * () {
    for (const u of upstreams()) {
      for (const [t, results] of u.health?.results ?? []) {
        for (const result of PROBE_RESULTS) yield [{ upstream: u.name, target: t.origin, result }, results[result]]
      }
    }
  })
  new client.Gauge({
    name: 'upstream_panic_active',
    help: '1 while every target of the upstream fails its health checks and healthCheck.panic is open (the probes are ignored), else 0; upstreams with healthCheck only.',
    labelNames: ['upstream'],
    collect () {
      this.reset()
      for (const u of upstreams()) if (u.health !== undefined) this.set({ upstream: u.name }, u.health.panic ? 1 : 0)
    }
  })
  counter('dns_resolution_failures_total', 'DNS resolutions of discover entries that failed: an error, NXDOMAIN, or no addresses (the last known addresses keep serving unless onEmpty: clear).', ['upstream'], function * () {
    for (const [upstream, n] of app.routeTable.discovery.failures) yield [{ upstream }, n]
  })
  new client.Gauge({
    name: 'websocket_connections_active',
    help: 'Open WebSocket tunnels per target, for upstreams with a websocket route.',
    labelNames: ['upstream', 'target'],
    collect () {
      this.reset()
      for (const u of upstreams()) {
        if (u.tunnels !== undefined) for (const t of u.targets) this.set({ upstream: u.name, target: t.origin }, t.tunnels.open.size)
      }
    }
  })
  counter('websocket_upgrades_total', 'WebSocket handshakes by outcome: upgraded (the upstream answered 101), refused (it answered otherwise), failed (unreachable, timed out, reset), unavailable (no target could take a tunnel, or shutting down), rejected (the gateway refused: a route without websocket, auth, rate limit).', ['upstream', 'outcome'], function * () {
    const counted = app.websocket.upgrades
    for (const u of upstreams()) {
      if (u.tunnels !== undefined && !counted.has(u.name)) for (const outcome of UPGRADE_OUTCOMES) yield [{ upstream: u.name, outcome }, 0]
    }
    for (const [upstream, counts] of counted) {
      for (const outcome of UPGRADE_OUTCOMES) yield [{ upstream, outcome }, counts[outcome]]
    }
  })
  // The registry reads only name, help, type and get(); its types list only prom-client's own classes.
  const histogram = (h: ScrapedHistogram) => client.register.registerMetric(h as unknown as Metric)
  histogram(new ScrapedHistogram('upstream_request_duration_seconds', 'Time from sending a try to its response headers (or its failure), per target and status class.', function * () {
    for (const t of targets()) {
      for (const [statusClass, h] of Object.entries(t.tries.durations)) {
        if (h !== undefined) yield [{ upstream: t.upstream, target: t.origin, status_class: statusClass }, h]
      }
    }
  }))
  histogram(new ScrapedHistogram('health_check_duration_seconds', 'Time of one active health probe, to its whole answer or its failure, per upstream.', function * () {
    for (const u of upstreams()) if (u.health !== undefined) yield [{ upstream: u.name }, u.health.latency]
  }))
  histogram(new ScrapedHistogram('http_request_duration_seconds', 'Requests by method, status code, route (<upstream>-<route index>) and its upstream, requests the gateway refused on a route included; both empty when no route matched.', () => durations.series()))
  histogram(new ScrapedHistogram('rate_limiter_duration_seconds', 'Time of one rate-limit decision by the store (Redis or memory; fallbacks included).', function * () {
    yield [{}, limiter().latency]
  }))

  // Every limited and every authenticated route of the table has its series from the start (at 0),
  // so rate() works from the first scrape; a route a reload removed keeps its count.
  counter('rate_limiter_rejected_total', 'Requests refused with 429, by route limit (<upstream>-<route index>); never by client key.', ['route'], function * () {
    const rejected = limiter().rejected
    for (const route of app.routeTable.table.limits.keys()) if (!rejected.has(route)) yield [{ route }, 0]
    for (const [route, n] of rejected) yield [{ route }, n]
  })
  counter('rate_limiter_store_errors_total', 'Rate-limit store (Redis) calls that failed or timed out.', [], () => [[{}, limiter().storeErrors]])
  new client.Gauge({
    name: 'rate_limiter_replicas',
    help: 'Live gateway replicas last counted in Redis (heartbeats); the local fallback divides each max by it.',
    collect () { this.set(limiter().replicas) }
  })
  new client.Gauge({
    name: 'rate_limiter_fallback_active',
    help: '1 while the rate-limit store is failing and routes use their onStoreError policy.',
    collect () { this.set(limiter().store === 'fallback' ? 1 : 0) }
  })
  counter('auth_failures_total', 'Requests refused by edge authentication, by route (<upstream>-<route index>) and reason.', ['route', 'reason'], function * () {
    const failures = app.authState.failures
    for (const route of app.routeTable.table.authenticated) {
      const byReason = failures.get(route)
      for (const reason of AUTH_FAILURE_REASONS) if (byReason?.has(reason) !== true) yield [{ route, reason }, 0]
    }
    for (const [route, byReason] of failures) {
      for (const [reason, n] of byReason) yield [{ route, reason }, n]
    }
  })
  counter('jwks_fetches_total', 'JWKS fetches, by result (ok, error); a failed fetch keeps the last good key set.', ['result'], () => [
    [{ result: 'ok' }, app.authState.jwksFetches.ok],
    [{ result: 'error' }, app.authState.jwksFetches.error]
  ])
  counter('client_slow_total', 'Clients cut for sending a body the gateway keeps (request) or reading their response (response) slower than MIN_DATA_RATE.', ['direction'], () => [
    [{ direction: 'request' }, app.clientRate.slow.request],
    [{ direction: 'response' }, app.clientRate.slow.response]
  ])
  new client.Gauge({
    name: 'client_buffer_bytes',
    help: 'Memory holding what slow clients have not sent or read: request bodies being received whole (request, within REQUEST_BUFFER_MEMORY) and responses read ahead of their clients (response, within RESPONSE_BUFFER_MEMORY).',
    labelNames: ['direction'],
    collect () {
      this.set({ direction: 'request' }, app.clientRate.memory.request.used)
      this.set({ direction: 'response' }, app.clientRate.memory.response.used)
    }
  })
  counter('config_reloads_total', 'Route reloads; failure: at least one file was rejected (its last good version kept serving).', ['result'], () => [
    [{ result: 'success' }, app.routeTable.reloads.success],
    [{ result: 'failure' }, app.routeTable.reloads.failure]
  ])
  new client.Gauge({
    name: 'gateway_build_info',
    help: 'Always 1; the labels say which Gatehouse and Node.js serve.',
    labelNames: ['version', 'node'],
    collect () { this.set({ version: GATEHOUSE_VERSION, node: process.version }, 1) }
  })
  new client.Gauge({
    name: 'config_route_table_version',
    help: 'Version of the route table serving; goes up by one per reload, and per change of a DNS name\'s addresses.',
    collect () { this.set(app.routeTable.table.version) }
  })
}

/**
 * /metrics on a port of its own, so it need not be public: a bare node:http server (nothing of the
 * gateway's request path runs for a scrape). It listens when the app does and closes with it.
 */
function serveAdmin (app: FastifyInstance, registry: Registry, port: number, host: string): void {
  const server = createServer((req, res) => {
    if (req.method !== 'GET' || req.url?.split('?')[0] !== '/metrics') {
      res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ statusCode: 404, error: 'Not Found', message: 'The admin port serves GET /metrics only' }))
      return
    }
    registry.metrics().then(text => {
      res.writeHead(200, { 'content-type': registry.contentType }).end(text)
    }, (err: Error) => {
      app.log.error({ err }, 'metrics collection failed')
      res.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ statusCode: 500, error: 'Internal Server Error', message: 'metrics collection failed' }))
    })
  })
  app.addHook('onListen', async () => {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, host, () => {
        server.removeListener('error', reject)
        resolve()
      })
    })
    const address = server.address() as AddressInfo
    app.log.info({ adminPort: address.port, host }, 'metrics listening on the admin port')
  })
  app.addHook('onClose', async () => {
    server.closeAllConnections()
    await new Promise<void>(resolve => server.close(() => resolve()))
  })
}

/** Request durations by upstream, method and status, counted without building a key string per request. */
class RequestDurations {
  /** By route id ('' when no route matched), with the route's upstream. */
  private readonly byRoute = new Map<string, { upstream: string, byKey: Map<number, { method: string, status: number, h: DurationHistogram }> }>()
  private readonly methods = new Map<string, number>()

  observe (route: string, upstream: string, method: string, status: number, seconds: number): void {
    let ofRoute = this.byRoute.get(route)
    if (ofRoute === undefined) this.byRoute.set(route, ofRoute = { upstream, byKey: new Map() })
    const byKey = ofRoute.byKey
    let m = this.methods.get(method)
    if (m === undefined) this.methods.set(method, m = this.methods.size)
    const key = status * 64 + m
    let entry = byKey.get(key)
    if (entry === undefined) byKey.set(key, entry = { method, status, h: new DurationHistogram() })
    entry.h.observe(seconds)
  }

  * series (): Iterable<[Record<string, string>, DurationHistogram]> {
    for (const [route, { upstream, byKey }] of this.byRoute) {
      for (const { method, status, h } of byKey.values()) yield [{ method, route, status_code: String(status), upstream }, h]
    }
  }
}

/**
 * A histogram built at scrape time from bucket counts kept by the code that measures (a
 * prom-client Histogram would hash its labels on every observation).
 */
class ScrapedHistogram {
  readonly type = 'histogram'
  readonly aggregator = 'sum'

  constructor (
    readonly name: string,
    readonly help: string,
    private readonly series: () => Iterable<[Record<string, string>, DurationHistogram]>
  ) {}

  async get () {
    const values: Array<{ metricName: string, labels: Record<string, string | number>, value: number }> = []
    for (const [labels, h] of this.series()) {
      let cumulative = 0
      DURATION_BUCKETS.forEach((le, i) => {
        cumulative += h.counts[i] as number
        values.push({ metricName: `${this.name}_bucket`, labels: { ...labels, le }, value: cumulative })
      })
      values.push({ metricName: `${this.name}_bucket`, labels: { ...labels, le: '+Inf' }, value: h.count })
      values.push({ metricName: `${this.name}_sum`, labels, value: h.sum })
      values.push({ metricName: `${this.name}_count`, labels, value: h.count })
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values }
  }
}

declare module 'fastify' {
  interface FastifyInstance {
    /** Gives a request its id header, access line and observation: the onRequest hook does, and so must whatever answers before the hooks run (Fastify's framework errors). */
    observeRequest?: (request: FastifyRequest, reply: FastifyReply) => void
  }
}

export default fp(observabilityPlugin, { name: 'gatehouse-observability', fastify: '5.x', dependencies: ['gatehouse-route-table', 'gatehouse-auth', 'gatehouse-rate-limit', 'gatehouse-client-rate', 'gatehouse-websocket'] })
