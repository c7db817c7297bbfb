// /metrics and the metric table of docs/operations.md say the same thing: every metric the gateway exports is
// in the table (prom-client's process_* and nodejs_* defaults as one row), every row is exported,
// and no metric is exported without a series: counters whose labels the route table knows
// (rate-limited routes, authenticated routes and their refusal reasons) start at 0.
import { strict as assert } from 'node:assert'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { test } from 'node:test'
import { dnsServer } from './dns-server.js'
import { gateway, ROOT, send, upstream } from './helpers.js'

test('every exported metric is in the docs\' metric table and has a series; every row of the table is exported; known label sets start at 0', async t => {
  const origin = await upstream(t)
  const dns = await dnsServer(t)
  dns.set('probed.test', { A: ['127.0.0.1'], ttl: 60 })
  const gw = await gateway(t, {
    // Health checks (the first probe an hour away) and DNS discovery, so their series exist.
    'probed.yaml': `targets:\n  - url: ${origin.url}\n  - discover: { dns: probed.test, port: ${origin.port}, resolvers: ["${dns.address}"] }\nroutes:\n  - path: /probed\nhealthCheck: { path: /healthz, interval: 1h }\n`,
    'limited.yaml': `targets:\n  - url: ${origin.url}\nroutes:\n  - path: /limited\n    rateLimit: { max: 5, window: 1m }\n  - path: /open\n  - { path: /live, websocket: true }\n`,
    'secured.yaml': `targets:\n  - url: ${origin.url}\nroutes:\n  - path: /secured\n    auth:\n      jwt: { jwksUrl: https://issuer.example.com/jwks.json, issuer: https://issuer.example.com, audience: secured }\n`
  })
  // One proxied request, so the request histograms have something to say.
  assert.equal((await send(gw, '/open')).status, 200)
  const text = (await send(gw, '/metrics')).body
  const exported = new Map<string, number>()
  for (const line of text.split('\n')) {
    const type = /^# TYPE (\S+) /.exec(line)
    if (type !== null) { exported.set(type[1] as string, 0); continue }
    if (line === '' || line.startsWith('#')) continue
    const name = (line.split(/[{ ]/)[0] as string).replace(/_(bucket|sum|count)$/, '')
    const base = exported.has(name) ? name : (line.split(/[{ ]/)[0] as string)
    exported.set(base, (exported.get(base) ?? 0) + 1)
  }
  const page = await readFile(join(ROOT, 'docs', 'operations.md'), 'utf8')
  const section = page.slice(page.indexOf('## Metrics'), page.indexOf('## Tracing'))
  const documented = new Set([...section.matchAll(/^\| `([a-z_]+)`/gm)].map(m => m[1] as string))
  assert.ok(documented.size >= 20, `${documented.size} rows`)
  for (const [name, series] of exported) {
    assert.ok(documented.has(name) || /^(process|nodejs)_/.test(name), `${name} is exported but not in the metric table of docs/operations.md`)
    // Except GC pauses: observed from the process's first garbage collection on.
    if (name !== 'nodejs_gc_duration_seconds') assert.ok(series > 0, `${name} is exported with no series`)
  }
  for (const name of documented) assert.ok(exported.has(name), `${name} is in the metric table of docs/operations.md but not exported`)
  // Known before anything happened: the limited route at 0, every refusal reason of the secured route at 0.
  assert.match(text, /^rate_limiter_rejected_total\{route="limited-0"\} 0$/m)
  assert.doesNotMatch(text, /rate_limiter_rejected_total\{route="limited-1"\}/, 'a route without a limit has no series')
  for (const reason of ['missing_token', 'expired', 'insufficient_scope', 'keys_unavailable']) {
    assert.match(text, new RegExp(`^auth_failures_total\\{route="secured-0",reason="${reason}"\\} 0$`, 'm'))
  }
  // Every probe result of every probed target, discovered ones included, and DNS failures.
  for (const target of [origin.url, `http://127.0.0.1:${origin.port}`]) {
    for (const result of ['pass', 'fail', 'timeout', 'error']) assert.match(text, new RegExp(`^health_checks_total\\{upstream="probed",target="${target}",result="${result}"\\} 0$`, 'm'))
  }
  assert.match(text, /^upstream_panic_active\{upstream="probed"\} 0$/m)
  assert.match(text, /^dns_resolution_failures_total\{upstream="probed"\} 0$/m)
  // They count from there.
  assert.equal((await send(gw, '/secured')).status, 401)
  const after = (await send(gw, '/metrics')).body
  assert.match(after, /^auth_failures_total\{route="secured-0",reason="missing_token"\} 1$/m)
  // Requests are counted by the route that matched and its upstream, refusals included; no route, no labels.
  assert.equal((await send(gw, '/nowhere')).status, 404)
  const labelled = (await send(gw, '/metrics')).body
  assert.match(labelled, /^http_request_duration_seconds_count\{method="GET",route="secured-0",status_code="401",upstream="secured"\} 1$/m)
  assert.match(labelled, /^http_request_duration_seconds_count\{method="GET",route="limited-1",status_code="200",upstream="limited"\} 1$/m)
  assert.match(labelled, /^http_request_duration_seconds_count\{method="GET",route="",status_code="404",upstream=""\} 1$/m)
})
