// Prometheus metrics at /metrics. Gauges are read from the live route table at scrape time, so
// the request path does no metric bookkeeping of its own beyond the request histogram.
/* eslint-disable no-new -- prom-client metrics register themselves when constructed */
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fastifyMetrics from 'fastify-metrics'
import fp from 'fastify-plugin'
import type { Counter, Histogram } from 'prom-client'
import type { Target } from '../../src/upstream/target.js'
import type { CallObserver } from '../proxy/upstream-call.js'

const STATUS_CLASSES = ['0xx', '1xx', '2xx', '3xx', '4xx', '5xx']

declare module 'fastify' {
  interface FastifyInstance {
    /** Where the proxy reports each try and retry. */
    upstreamObserver: CallObserver
  }
}

async function observabilityPlugin (app: FastifyInstance): Promise<void> {
  // A CommonJS module whose plugin is its `default` export.
  await app.register(fastifyMetrics.default, {
    endpoint: '/metrics',
    clearRegisterOnInit: true,
    defaultMetrics: { enabled: true },
    routeMetrics: {
      enabled: { histogram: true, summary: false },
      routeBlacklist: ['/metrics', '/health', '/ready'],
      // Bounded labels: the upstream name, never the raw path.
      customLabels: { upstream: (request: FastifyRequest) => request.target?.upstream ?? '' }
    }
  })
  const client = app.metrics.client

  let active = 0
  app.addHook('onRequest', (request, reply, done) => {
    active++
    reply.raw.once('close', () => { active-- })
    done()
  })
  new client.Gauge({
    name: 'http_requests_active',
    help: 'Requests being served right now.',
    collect () { this.set(active) }
  })

  const targets = () => app.routeTable.table.targets.values()
  new client.Gauge({
    name: 'upstream_connection_saturation_ratio',
    help: 'In-flight requests divided by maxConnections, per target.',
    labelNames: ['upstream', 'target'],
    collect () {
      this.reset()
      for (const t of targets()) this.set({ upstream: t.upstream, target: t.origin }, t.saturation)
    }
  })
  new client.Gauge({
    name: 'upstream_active_connections',
    help: 'In-flight requests per target.',
    labelNames: ['upstream', 'target'],
    collect () {
      this.reset()
      for (const t of targets()) this.set({ upstream: t.upstream, target: t.origin }, t.inFlight)
    }
  })
  new client.Gauge({
    name: 'upstream_max_connections',
    help: 'maxConnections per target.',
    labelNames: ['upstream', 'target'],
    collect () {
      this.reset()
      for (const t of targets()) this.set({ upstream: t.upstream, target: t.origin }, t.maxConnections)
    }
  })
  const states = { closed: 0, open: 1, 'half-open': 2 }
  new client.Gauge({
    name: 'circuit_breaker_state',
    help: 'Breaker state per target: 0 closed, 1 open, 2 half-open.',
    labelNames: ['upstream', 'target'],
    collect () {
      this.reset()
      for (const t of targets()) this.set({ upstream: t.upstream, target: t.origin }, states[t.breaker.state])
    }
  })
  new client.Counter({
    name: 'circuit_breaker_transitions_total',
    help: 'Breaker transitions per target, by the state entered.',
    labelNames: ['upstream', 'target', 'to'],
    collect () {
      this.reset()
      for (const t of targets()) {
        for (const [to, n] of Object.entries(t.transitions)) this.inc({ upstream: t.upstream, target: t.origin, to }, n)
      }
    }
  })
  new client.Counter({
    name: 'upstream_retry_budget_exhausted_total',
    help: 'Retries not made because the upstream\'s retry budget was spent.',
    labelNames: ['upstream'],
    collect () {
      this.reset()
      for (const u of app.routeTable.table.upstreams) this.inc({ upstream: u.name }, u.budget.denied)
    }
  })
  const retries = new client.Counter({
    name: 'upstream_retries_total',
    help: 'Retries sent, by what the try before them ran into.',
    labelNames: ['upstream', 'reason']
  })
  const requests = new client.Counter({
    name: 'upstream_requests_total',
    help: 'Tries sent to each target, by outcome: ok, bad-status (a breaker failure status), connect-failure, reset, timeout, aborted (the client left).',
    labelNames: ['upstream', 'target', 'outcome']
  })
  const durations = new client.Histogram({
    name: 'upstream_request_duration_seconds',
    help: 'Time from sending a try to its response headers (or its failure), per target.',
    labelNames: ['upstream', 'target', 'status_class'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
  })
  // Label lookups hash their values on every call: keep each target's series at hand instead.
  const series = new WeakMap<Target, { requests: Map<string, Counter.Internal>, durations: Map<string, Histogram.Internal<string>> }>()
  app.decorate('upstreamObserver', {
    tryFinished (target, outcome, statusCode, seconds) {
      let own = series.get(target)
      if (own === undefined) {
        own = { requests: new Map(), durations: new Map() }
        series.set(target, own)
      }
      const labels = { upstream: target.upstream, target: target.origin }
      let counter = own.requests.get(outcome)
      if (counter === undefined) {
        counter = requests.labels({ ...labels, outcome })
        own.requests.set(outcome, counter)
      }
      counter.inc()
      const statusClass = statusCode === undefined ? 'error' : STATUS_CLASSES[Math.floor(statusCode / 100)] ?? 'error'
      let histogram = own.durations.get(statusClass)
      if (histogram === undefined) {
        histogram = durations.labels({ ...labels, status_class: statusClass })
        own.durations.set(statusClass, histogram)
      }
      histogram.observe(seconds)
    },
    retried (upstream, reason) {
      retries.inc({ upstream, reason })
    }
  } satisfies CallObserver)

  new client.Counter({
    name: 'config_reloads_total',
    help: 'Route reloads; failure: at least one file was rejected (its last good version kept serving).',
    labelNames: ['result'],
    collect () {
      this.reset()
      this.inc({ result: 'success' }, app.routeTable.reloads.success)
      this.inc({ result: 'failure' }, app.routeTable.reloads.failure)
    }
  })
  new client.Gauge({
    name: 'config_route_table_version',
    help: 'Version of the route table serving; goes up by one per reload.',
    collect () { this.set(app.routeTable.table.version) }
  })
}

export default fp(observabilityPlugin, { name: 'gatehouse-observability', fastify: '5.x', dependencies: ['gatehouse-route-table'] })
