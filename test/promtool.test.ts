// /metrics must pass `promtool check metrics` (Prometheus's own linter), with every family of
// the gateway populated: proxied, retried, limited, refused and authenticated traffic.
import { strict as assert } from 'node:assert'
import { execFile, execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { closedPort, removeDir, ROOT, routeDir, startGateway, startUpstream } from './helpers.js'

const { version } = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }

const promtool = (() => {
  try {
    execFileSync('promtool', ['--version'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
})()

test('/metrics passes promtool check metrics', { skip: !promtool && 'promtool is not installed (.ci/run installs it)' }, async t => {
  const upstream = await startUpstream()
  t.after(() => upstream.close())
  const dead = await closedPort()
  const dir = await routeDir({
    'app.yaml': [
      'targets:',
      `  - url: ${upstream.url}`,
      `  - url: http://127.0.0.1:${dead}`,
      'routes:',
      '  - path: /api',
      '    rateLimit: { max: 3, window: 1m }',
      '  - path: /private',
      '    auth:',
      '      jwt: { jwksUrl: "http://127.0.0.1:1/jwks.json", issuer: i, audience: a }'
    ].join('\n') + '\n'
  })
  t.after(() => removeDir(dir))
  const gw = await startGateway(dir)
  t.after(() => gw.stop())
  for (let i = 0; i < 6; i++) await (await fetch(`${gw.url}/api/${i}`)).text()
  await (await fetch(`${gw.url}/private`)).text()
  const text = await (await fetch(`${gw.url}/metrics`)).text()
  for (const family of ['rate_limiter_rejected_total', 'auth_failures_total', 'upstream_requests_total', 'circuit_breaker_state', 'http_request_duration_seconds_bucket']) {
    assert.ok(text.includes(family), `${family} is missing`)
  }
  assert.match(text, new RegExp(`^gateway_build_info\\{version="${version}",node="${process.version}"\\} 1$`, 'm'))
  assert.match(text, new RegExp(`^upstream_target_healthy\\{upstream="app",target="${upstream.url}"\\} 1$`, 'm'))
  const { code, output } = await new Promise<{ code: number, output: string }>(resolve => {
    const child = execFile('promtool', ['check', 'metrics'], { timeout: 10_000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : (typeof err.code === 'number' ? err.code : 1), output: stdout + stderr })
    })
    child.stdin?.end(text)
  })
  assert.equal(code, 0, output)
})

async function promtoolRun (...args: string[]): Promise<{ code: number, output: string }> {
  return await new Promise(resolve => {
    execFile('promtool', args, { timeout: 20_000, cwd: join(ROOT, 'deploy', 'prometheus') }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : (typeof err.code === 'number' ? err.code : 1), output: stdout + stderr })
    })
  })
}

test('deploy/prometheus/alerts.yml passes promtool check rules, and its unit tests (saturation 1 m, breaker open 5 m, reload failure, store fallback) pass', { skip: !promtool && 'promtool is not installed (.ci/run installs it)' }, async () => {
  const check = await promtoolRun('check', 'rules', 'alerts.yml')
  assert.equal(check.code, 0, check.output)
  assert.match(check.output, /SUCCESS: 4 rules found/)
  const unit = await promtoolRun('test', 'rules', 'alerts.test.yml')
  assert.equal(unit.code, 0, unit.output)
})
