// /metrics must pass `promtool check metrics` (Prometheus's own linter), with every family of
// the gateway populated: proxied, retried, limited, refused and authenticated traffic.
import { strict as assert } from 'node:assert'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { closedPort, gateway, promtool, PROMTOOL_MISSING, ROOT, upstream } from './helpers.js'

const RULES = join(ROOT, 'deploy', 'prometheus')
const { version } = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }

test('/metrics passes promtool check metrics', { skip: PROMTOOL_MISSING }, async t => {
  const origin = await upstream(t)
  const dead = await closedPort()
  const gw = await gateway(t, {
    'app.yaml': [
      'targets:',
      `  - url: ${origin.url}`,
      `  - url: http://127.0.0.1:${dead}`,
      'routes:',
      '  - path: /api',
      '    rateLimit: { max: 3, window: 1m }',
      '  - path: /private',
      '    auth:',
      '      jwt: { jwksUrl: "http://127.0.0.1:1/jwks.json", issuer: i, audience: a }'
    ].join('\n') + '\n'
  })
  for (let i = 0; i < 6; i++) await (await fetch(`${gw.url}/api/${i}`)).text()
  await (await fetch(`${gw.url}/private`)).text()
  const text = await (await fetch(`${gw.url}/metrics`)).text()
  for (const family of ['rate_limiter_rejected_total', 'auth_failures_total', 'upstream_requests_total', 'circuit_breaker_state', 'http_request_duration_seconds_bucket']) {
    assert.ok(text.includes(family), `${family} is missing`)
  }
  assert.match(text, new RegExp(`^gateway_build_info\\{version="${version}",node="${process.version}"\\} 1$`, 'm'))
  assert.match(text, new RegExp(`^upstream_target_healthy\\{upstream="app",target="${origin.url}"\\} 1$`, 'm'))
  const { code, output } = await promtool(['check', 'metrics'], { input: text })
  assert.equal(code, 0, output)
})

test('deploy/prometheus/alerts.yml passes promtool check rules, and its unit tests (saturation 1 m, breaker open 5 m, reload failure, store fallback, upstream panic 2 m, DNS failing 5 m) pass', { skip: PROMTOOL_MISSING }, async () => {
  const check = await promtool(['check', 'rules', 'alerts.yml'], { cwd: RULES })
  assert.equal(check.code, 0, check.output)
  assert.match(check.output, /SUCCESS: 6 rules found/)
  const unit = await promtool(['test', 'rules', 'alerts.test.yml'], { cwd: RULES })
  assert.equal(unit.code, 0, unit.output)
})
