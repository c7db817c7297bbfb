// Traces across the hop: a real OTLP/HTTP receiver (a small server here), real upstreams and a
// real gateway process configured by OTEL_* variables only. The receiver keeps what the exporter
// posts; the upstream keeps the traceparent it was sent.
import { strict as assert } from 'node:assert'
import { once } from 'node:events'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { test, type TestContext } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { tracingConfigured } from '../src/tracing.js'
import { closedPort, gateway, upstream, writeRoutes } from './helpers.js'

const SPAN_KIND = { server: 2, client: 3 }
const STATUS_ERROR = 2
const CLIENT_TRACE = '0af7651916cd43dd8448eb211c80319c'
const CLIENT_PARENT = 'b7ad6b7169203331'

type AttributeValue = { stringValue?: string, intValue?: number | string, boolValue?: boolean, doubleValue?: number }
interface OtlpSpan {
  traceId: string
  spanId: string
  parentSpanId?: string
  traceState?: string
  name: string
  kind: number
  attributes: Array<{ key: string, value: AttributeValue }>
  events?: Array<{ name: string, attributes: OtlpSpan['attributes'] }>
  status?: { code?: number }
}

interface Receiver {
  url: string
  spans: OtlpSpan[]
  /** Every export request: its content type and raw body. */
  posts: Array<{ path: string, contentType: string, body: Buffer }>
  /** Resolves once the spans of this trace include `count` that match. */
  waitFor: (match: (s: OtlpSpan) => boolean, count?: number, timeoutMs?: number) => Promise<OtlpSpan[]>
  close: () => Promise<void>
}

/** An OTLP/HTTP receiver: POST /v1/traces, JSON bodies parsed, every body kept. */
async function startReceiver (t: TestContext): Promise<Receiver> {
  const spans: OtlpSpan[] = []
  const posts: Receiver['posts'] = []
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const body = Buffer.concat(chunks)
      const contentType = req.headers['content-type'] ?? ''
      posts.push({ path: req.url ?? '', contentType, body })
      if (req.method === 'POST' && req.url === '/v1/traces' && contentType.startsWith('application/json')) {
        const doc = JSON.parse(body.toString()) as { resourceSpans: Array<{ scopeSpans: Array<{ spans: OtlpSpan[] }> }> }
        for (const rs of doc.resourceSpans) for (const ss of rs.scopeSpans) spans.push(...ss.spans)
      }
      res.setHeader('content-type', contentType.startsWith('application/json') ? 'application/json' : 'application/x-protobuf')
      res.end(contentType.startsWith('application/json') ? '{}' : '')
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const close = async () => {
    server.closeAllConnections()
    await new Promise<void>(resolve => server.close(() => resolve()))
  }
  t.after(close)
  const waitFor = async (match: (s: OtlpSpan) => boolean, count = 1, timeoutMs = 5000): Promise<OtlpSpan[]> => {
    const until = Date.now() + timeoutMs
    for (;;) {
      const found = spans.filter(match)
      if (found.length >= count) return found
      if (Date.now() > until) throw new Error(`${found.length} of ${count} matching spans after ${timeoutMs} ms; got: ${spans.map(s => `${s.name}/${s.kind}/${s.traceId}`).join(', ')}`)
      await sleep(25)
    }
  }
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, spans, posts, waitFor, close }
}

type Attributes = OtlpSpan['attributes']

/** OTLP attributes as a plain object (int64 values come as strings or numbers). */
function attrs (list: Attributes): Record<string, string | number | boolean | undefined> {
  return Object.fromEntries(list.map(({ key, value: v }) => [key, v.intValue !== undefined ? Number(v.intValue) : v.stringValue ?? v.boolValue ?? v.doubleValue]))
}

function attr (span: OtlpSpan, key: string): string | number | boolean | undefined {
  return attrs(span.attributes)[key]
}

/** traceparent → [trace id, parent span id]. */
function parseTraceparent (value: string | string[] | undefined): [string, string] {
  assert.equal(typeof value, 'string', 'the upstream got no traceparent')
  const m = /^00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]$/.exec(value as string)
  assert.ok(m !== null, `not a traceparent: ${String(value)}`)
  return [m[1] as string, m[2] as string]
}

/** Tracing to this receiver as OTLP/HTTP JSON, exported every 50 ms. */
function otel (receiver: Receiver, extra: Record<string, string> = {}): Record<string, string> {
  return { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_BSP_SCHEDULE_DELAY: '50', ...extra }
}

/** Breakers that never open: for cases about retries alone. */
const NO_BREAKER = { consecutiveFailures: 0, failureRatio: 0 }

test('a client traceparent: the upstream sees the same trace id with the gateway\'s client span as parent; one server span and a client span per try reach the receiver; the log line carries the trace id', async t => {
  const receiver = await startReceiver(t)
  let calls = 0
  // The first try gets 503, the retry 200: two tries, two client spans.
  const u = await upstream(t, (_req, res) => {
    res.statusCode = ++calls === 1 ? 503 : 200
    res.end(String(res.statusCode))
  })
  const gw = await gateway(t, {
    'svc.json': JSON.stringify({ name: 'svc', targets: [{ url: u.url }], routes: [{ path: '/svc' }], retry: { backoff: '1ms' }, circuitBreaker: NO_BREAKER })
  }, otel(receiver))

  // Probes are not traced: they would be most of the traces.
  assert.equal((await fetch(`${gw.url}/health`)).status, 200)
  const res = await fetch(`${gw.url}/svc/orders?id=7`, { headers: { traceparent: `00-${CLIENT_TRACE}-${CLIENT_PARENT}-01`, tracestate: 'vendor=abc' } })
  assert.equal(res.status, 200)
  assert.equal(await res.text(), '200')

  assert.equal(u.requests.length, 2)
  const seen = u.requests.map(r => parseTraceparent(r.headers.traceparent))
  for (const [traceId] of seen) assert.equal(traceId, CLIENT_TRACE, 'the upstream is in the client\'s trace')
  for (const r of u.requests) assert.equal(r.headers.tracestate, 'vendor=abc')
  assert.notEqual(seen[0]?.[1], seen[1]?.[1], 'each try has a span of its own')
  assert.notEqual(seen[0]?.[1], CLIENT_PARENT, 'the client\'s span id is not passed through')

  const [server] = await receiver.waitFor(s => s.traceId === CLIENT_TRACE && s.kind === SPAN_KIND.server)
  const clients = await receiver.waitFor(s => s.traceId === CLIENT_TRACE && s.kind === SPAN_KIND.client, 2)
  assert.ok(server !== undefined)
  assert.equal(server.parentSpanId, CLIENT_PARENT, 'the server span\'s parent is the client\'s span')
  assert.equal(server.name, 'GET /svc')
  assert.equal(attr(server, 'http.route'), '/svc')
  assert.equal(attr(server, 'gatehouse.route'), 'svc-0')
  assert.equal(attr(server, 'gatehouse.upstream'), 'svc')
  assert.equal(attr(server, 'gatehouse.target'), u.url)
  assert.equal(attr(server, 'http.response.status_code'), 200)
  assert.equal(clients.length, 2, 'no span beyond the two tries')
  // In the order the upstream saw them: the parent it was sent is each try's span.
  const bySpanId = new Map(clients.map(c => [c.spanId, c]))
  const [first, retry] = seen.map(([, parent]) => bySpanId.get(parent))
  assert.ok(first !== undefined && retry !== undefined, 'the upstream\'s parents are the exported client spans')
  for (const c of [first, retry]) {
    assert.equal(c.parentSpanId, server.spanId)
    assert.equal(c.name, 'GET')
    assert.equal(c.traceState, 'vendor=abc')
    assert.equal(attr(c, 'url.full'), `${u.url}/svc/orders`, 'no query string in the client span')
    assert.equal(attr(c, 'server.port'), u.port)
  }
  assert.equal(attr(first, 'http.response.status_code'), 503)
  assert.equal(first.status?.code, STATUS_ERROR)
  assert.equal(attr(first, 'http.request.resend_count'), undefined)
  assert.equal(attr(retry, 'http.response.status_code'), 200)
  assert.equal(attr(retry, 'http.request.resend_count'), 1)
  assert.ok(!receiver.spans.some(s => attr(s, 'url.path') === '/health'), '/health is not traced')

  const line = await gw.waitForLog(l => l.msg === 'request completed' && l.url === '/svc/orders?id=7')
  assert.equal(line.trace_id, CLIENT_TRACE)
  assert.equal(line.span_id, server.spanId)
})

test('no traceparent: the gateway starts the trace, and the upstream sees its id', async t => {
  const receiver = await startReceiver(t)
  const u = await upstream(t)
  const gw = await gateway(t, { 'svc.yaml': `targets:\n  - url: ${u.url}\nroutes:\n  - path: /svc\n` }, otel(receiver))
  assert.equal((await fetch(`${gw.url}/svc`)).status, 200)
  const [traceId, parent] = parseTraceparent(u.requests[0]?.headers.traceparent)
  const [server] = await receiver.waitFor(s => s.traceId === traceId && s.kind === SPAN_KIND.server)
  const [client] = await receiver.waitFor(s => s.spanId === parent)
  assert.equal(server?.parentSpanId || undefined, undefined, 'a root span')
  assert.equal(client?.parentSpanId, server?.spanId)
  assert.equal(u.requests[0]?.headers.tracestate, undefined)
})

test('an unsampled request: the upstream gets the client\'s trace id with the sampled flag off and its tracestate, and no span is exported', async t => {
  const receiver = await startReceiver(t)
  const u = await upstream(t)
  const gw = await gateway(t, { 'svc.yaml': `targets:\n  - url: ${u.url}\nroutes:\n  - path: /svc\n` }, otel(receiver, { OTEL_TRACES_SAMPLER: 'parentbased_always_on' }))
  // The client's flags say "not sampled": a parent-based sampler follows them.
  const response = await fetch(`${gw.url}/svc`, { headers: { traceparent: `00-${CLIENT_TRACE}-${CLIENT_PARENT}-00`, tracestate: 'vendor=1' } })
  assert.equal(response.status, 200)
  const traceparent = u.requests[0]?.headers.traceparent
  const [traceId, parent] = parseTraceparent(traceparent)
  assert.equal(traceId, CLIENT_TRACE)
  assert.notEqual(parent, CLIENT_PARENT, 'the gateway is the upstream\'s parent')
  assert.ok((traceparent as string).endsWith('-00'), `sampled flag off: ${String(traceparent)}`)
  assert.equal(u.requests[0]?.headers.tracestate, 'vendor=1')
  // A sampled request after it proves the exporter works: only its spans arrive.
  assert.equal((await fetch(`${gw.url}/svc`)).status, 200)
  const [sampledTrace] = parseTraceparent(u.requests[1]?.headers.traceparent)
  await receiver.waitFor(s => s.traceId === sampledTrace, 2)
  assert.deepEqual(receiver.spans.filter(s => s.traceId === CLIENT_TRACE), [])
})

test('events: a rate-limit rejection on the server span; a breaker that opens on the try\'s span, and its rejections on the server span', async t => {
  const receiver = await startReceiver(t)
  const u = await upstream(t)
  const dead = `http://127.0.0.1:${await closedPort()}`
  const gw = await gateway(t, {
    'limited.yaml': `targets:\n  - url: ${u.url}\nroutes:\n  - path: /limited\n    rateLimit:\n      max: 1\n      window: 1m\n`,
    'dead.json': JSON.stringify({ name: 'dead', targets: [{ url: dead }], routes: [{ path: '/dead' }], retry: { attempts: 0 }, circuitBreaker: { consecutiveFailures: 1, openFor: '1m' } })
  }, otel(receiver))

  assert.equal((await fetch(`${gw.url}/limited`)).status, 200)
  assert.equal((await fetch(`${gw.url}/limited`)).status, 429)
  const [refused] = await receiver.waitFor(s => s.kind === SPAN_KIND.server && attr(s, 'http.response.status_code') === 429)
  const event = refused?.events?.find(e => e.name === 'rate_limit.rejected')
  assert.ok(event !== undefined, 'a rate_limit.rejected event')
  assert.deepEqual(attrs(event.attributes), { 'gatehouse.rate_limit.id': 'limited-0', 'gatehouse.rate_limit.max': 1, 'gatehouse.rate_limit.window_s': 60 })
  const [allowed] = await receiver.waitFor(s => s.kind === SPAN_KIND.server && attr(s, 'http.response.status_code') === 200)
  assert.equal(allowed?.events?.length ?? 0, 0)

  assert.equal((await fetch(`${gw.url}/dead`)).status, 502)
  assert.equal((await fetch(`${gw.url}/dead`)).status, 503)
  const [tried] = await receiver.waitFor(s => s.kind === SPAN_KIND.client && attr(s, 'gatehouse.target') === dead)
  assert.equal(attr(tried!, 'error.type'), 'connect-failure')
  assert.equal(tried?.status?.code, STATUS_ERROR)
  const opened = tried?.events?.find(e => e.name === 'circuit_breaker.transition')
  assert.deepEqual(attrs(opened?.attributes ?? []), { 'circuit_breaker.state.before': 'closed', 'circuit_breaker.state': 'open' })
  const [rejected] = await receiver.waitFor(s => s.kind === SPAN_KIND.server && attr(s, 'http.response.status_code') === 503)
  assert.ok(rejected?.events?.some(e => e.name === 'circuit_breaker.rejected'), 'a circuit_breaker.rejected event')
  assert.equal(receiver.spans.filter(s => s.kind === SPAN_KIND.client && attr(s, 'gatehouse.target') === dead).length, 1, 'the open breaker sent no second try')

  // A target that answers 503 once, then recovers: its breaker opens, and the probe closes it.
  let healthy = false
  const flaky = await upstream(t, (_req, res) => { res.statusCode = healthy ? 200 : 503; res.end() })
  await writeRoutes(gw.routesDir, { 'flaky.json': JSON.stringify({ name: 'flaky', targets: [{ url: flaky.url }], routes: [{ path: '/flaky' }], retry: { attempts: 0 }, circuitBreaker: { consecutiveFailures: 1, openFor: '200ms', closeAfter: 1 } }) })
  gw.signal('SIGHUP')
  await gw.waitForLog(l => l.msg === 'route table reloaded' && JSON.stringify(l).includes('flaky'))
  assert.equal((await fetch(`${gw.url}/flaky`)).status, 503)
  healthy = true
  await sleep(250)
  assert.equal((await fetch(`${gw.url}/flaky`)).status, 200)
  const probes = await receiver.waitFor(s => s.kind === SPAN_KIND.client && attr(s, 'gatehouse.target') === flaky.url, 2)
  const failed = probes.find(s => attr(s, 'http.response.status_code') === 503)
  const probe = probes.find(s => attr(s, 'http.response.status_code') === 200)
  assert.deepEqual(failed?.events?.map(e => [e.name, attrs(e.attributes)]), [['circuit_breaker.transition', { 'circuit_breaker.state.before': 'closed', 'circuit_breaker.state': 'open' }]])
  assert.deepEqual(probe?.events?.map(e => [e.name, attrs(e.attributes)]), [
    ['circuit_breaker.probe', {}],
    ['circuit_breaker.transition', { 'circuit_breaker.state.before': 'half-open', 'circuit_breaker.state': 'closed' }]
  ])
})

test('the default OTLP protocol (http/protobuf) exports too, and SIGTERM flushes spans still queued', async t => {
  const receiver = await startReceiver(t)
  const u = await upstream(t)
  // A minute between exports: only the flush at shutdown can deliver this span in time.
  const gw = await gateway(t, { 'svc.yaml': `targets:\n  - url: ${u.url}\nroutes:\n  - path: /svc\n` }, {
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
    OTEL_BSP_SCHEDULE_DELAY: '60000'
  })
  assert.equal((await fetch(`${gw.url}/svc`)).status, 200)
  const [traceId] = parseTraceparent(u.requests[0]?.headers.traceparent)
  await sleep(200)
  assert.equal(receiver.posts.length, 0, 'nothing exported before the schedule or the stop')
  gw.signal('SIGTERM')
  assert.equal(await gw.exit, 0)
  const traces = receiver.posts.filter(p => p.path === '/v1/traces')
  assert.equal(traces.length, 1)
  assert.equal(traces[0]?.contentType, 'application/x-protobuf')
  assert.ok(traces[0]?.body.includes(Buffer.from(traceId, 'hex')), 'the request\'s trace id is in the export')
  assert.equal(receiver.posts.filter(p => p.path !== '/v1/traces').length, 0, 'no metrics or logs over OTLP')
})

test('off unless configured: the client\'s traceparent passes through unchanged and log lines have no trace id', async t => {
  const u = await upstream(t)
  const gw = await gateway(t, { 'svc.yaml': `targets:\n  - url: ${u.url}\nroutes:\n  - path: /svc\n` }, {})
  const traceparent = `00-${CLIENT_TRACE}-${CLIENT_PARENT}-01`
  assert.equal((await fetch(`${gw.url}/svc`, { headers: { traceparent } })).status, 200)
  assert.equal(u.requests[0]?.headers.traceparent, traceparent)
  const line = await gw.waitForLog(l => l.msg === 'request completed')
  assert.equal(line.trace_id, undefined)
})

test('tracingConfigured: an OTLP endpoint or a traces exporter switches tracing on; none and OTEL_SDK_DISABLED keep it off', () => {
  assert.equal(tracingConfigured({}), false)
  assert.equal(tracingConfigured({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://jaeger:4318' }), true)
  assert.equal(tracingConfigured({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://jaeger:4318/v1/traces' }), true)
  assert.equal(tracingConfigured({ OTEL_EXPORTER_OTLP_ENDPOINT: ' ' }), false)
  assert.equal(tracingConfigured({ OTEL_TRACES_EXPORTER: 'console' }), true)
  assert.equal(tracingConfigured({ OTEL_TRACES_EXPORTER: 'none', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://jaeger:4318' }), false)
  assert.equal(tracingConfigured({ OTEL_SDK_DISABLED: 'true', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://jaeger:4318' }), false)
  assert.equal(tracingConfigured({ OTEL_METRICS_EXPORTER: 'otlp' }), false, 'metrics alone are not traces')
})
