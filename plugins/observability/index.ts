// Prometheus metrics at /metrics. Gauges are read from the live route table at scrape time, so
// the request path does no metric bookkeeping of its own beyond the request histogram.
/* eslint-disable no-new -- prom-client metrics register themselves when constructed */
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fastifyMetrics from 'fastify-metrics'
import fp from 'fastify-plugin'

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
