// Active health checks against real upstreams: a failing /healthz takes a target out and passing
// probes bring it back, panic decides what happens when every target fails, a passing probe
// half-opens an open breaker, and probes never take a request slot.
import assert from 'node:assert/strict'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { echo, gateway, metric, send, until, upstream, writeRoutes, type GatewayProcess, type Upstream } from './helpers.js'

/** An upstream whose /healthz answers `health.status`; other paths echo (/slow after 1.5 s, /fail 503). */
async function instance (t: Parameters<typeof upstream>[0]): Promise<Upstream & { health: { status: number }, probes: () => number }> {
  const health = { status: 200 }
  const u = await upstream(t, async (req: IncomingMessage, res: ServerResponse, body, seen) => {
    if (req.url === '/healthz') {
      res.statusCode = health.status
      res.end('probe')
      return
    }
    if (req.url === '/api/slow') await sleep(1500)
    if (req.url === '/api/fail') res.statusCode = 503
    echo(req, res, body, seen)
  })
  return Object.assign(u, { health, probes: () => u.requests.filter(r => r.url === '/healthz').length })
}

function routes (targets: Upstream[], healthCheck: string, extra = ''): string {
  return [
    'targets:', ...targets.map(u => `  - { url: "${u.url}", maxConnections: 10 }`),
    'routes:', '  - path: /api',
    `healthCheck: { path: /healthz, interval: 200ms, timeout: 500ms, unhealthyThreshold: 3, healthyThreshold: 2${healthCheck} }`,
    'retry: { attempts: 0 }',
    extra, ''
  ].join('\n')
}

/** Requests to the target's own paths, probes left out. */
const real = (u: Upstream) => u.requests.filter(r => r.url !== '/healthz').length

async function healthy (gw: GatewayProcess, u: Upstream): Promise<number | undefined> {
  return await metric(gw, 'upstream_target_healthy', { target: u.url })
}

test('a target whose /healthz answers 500 gets none of the next 100 requests after 3 probes, and is back after 2 good ones; probes stop when it is removed', async t => {
  const a = await instance(t)
  const b = await instance(t)
  a.health.status = 500
  const gw = await gateway(t, { 'up.yaml': routes([a, b], '') })
  const out = await gw.waitForLog(l => l.msg === 'target fails its health checks: no requests are sent to it')
  assert.equal(out.target, a.url)
  assert.equal(out.result, 'status 500')
  assert.equal(out.level, 40)
  assert.ok(a.probes() >= 3)
  assert.equal(await healthy(gw, a), 0)
  assert.ok((await metric(gw, 'health_checks_total', { target: a.url, result: 'fail' }) ?? 0) >= 3)

  const before = real(a)
  for (let i = 0; i < 100; i++) assert.equal((await send(gw, '/api/x')).status, 200)
  assert.equal(real(a), before, 'no request reached the failing target')
  assert.equal(real(b), 100)

  a.health.status = 200
  const probesAtFix = a.probes()
  await gw.waitForLog(l => l.msg === 'target passes its health checks again' && l.target === a.url)
  assert.ok(a.probes() - probesAtFix >= 2, 'two passing probes bring it back, not one')
  assert.equal(await healthy(gw, a), 1)
  await until('requests reach it again', async () => (await send(gw, '/api/x')).status === 200 && real(a) > before)

  // A reload that removes the target stops its probes.
  await writeRoutes(gw.routesDir, { 'up.yaml': routes([b], '') })
  await gw.waitForLog(l => l.msg === 'route table reloaded')
  await sleep(300)
  const probesAfterRemoval = a.probes()
  await sleep(600)
  assert.equal(a.probes(), probesAfterRemoval, 'no probe reaches a removed target')
})

test('every target unhealthy: panic open serves and says so (upstream_panic_active 1); panic closed answers 503', async t => {
  const a = await instance(t)
  const b = await instance(t)
  a.health.status = 503
  b.health.status = 503
  const open = await gateway(t, { 'up.yaml': routes([a, b], '') })
  await open.waitForLog(l => typeof l.msg === 'string' && l.msg.startsWith('every target fails its health checks: panic'))
  assert.equal(await metric(open, 'upstream_panic_active', { upstream: 'up' }), 1)
  for (let i = 0; i < 10; i++) assert.equal((await send(open, '/api/x')).status, 200)

  const c = await instance(t)
  c.health.status = 503
  const closed = await gateway(t, { 'up.yaml': routes([c], ', panic: closed') })
  await closed.waitForLog(l => l.msg === 'every target fails its health checks: requests get 503 (panic: closed)')
  assert.equal(await metric(closed, 'upstream_panic_active', { upstream: 'up' }), 0)
  const refused = await send(closed, '/api/x')
  assert.equal(refused.status, 503)
  assert.equal(refused.json.code, 'GATEHOUSE_ERR_UPSTREAM_UNHEALTHY')
  assert.equal(refused.headers['retry-after'], '1')
  assert.equal(real(c), 0)

  // One target passing again ends the panic.
  a.health.status = 200
  await open.waitForLog(l => l.msg === 'a target passes its health checks again: those failing are left out')
  assert.equal(await metric(open, 'upstream_panic_active', { upstream: 'up' }), 0)
  const beforeB = real(b)
  for (let i = 0; i < 10; i++) assert.equal((await send(open, '/api/x')).status, 200)
  assert.equal(real(b), beforeB)
})

test('an open breaker and a passing probe: half-open at once (not after openFor), exactly one real request let through', async t => {
  const a = await instance(t)
  a.health.status = 500
  // The probes fail below their threshold: only the breaker judges, and openFor is long.
  const gw = await gateway(t, { 'up.yaml': routes([a], '', 'circuitBreaker: { consecutiveFailures: 1, openFor: 1m, closeAfter: 2 }').replace('unhealthyThreshold: 3', 'unhealthyThreshold: 1000') })
  assert.equal((await send(gw, '/api/fail')).status, 503)
  assert.equal(await metric(gw, 'circuit_breaker_state', { target: a.url }), 1)
  const refused = await send(gw, '/api/x')
  assert.equal(refused.json.code, 'GATEHOUSE_ERR_UPSTREAM_UNAVAILABLE')

  a.health.status = 200
  // openFor is a minute away: only the probe can have half-opened it.
  await until('half-open after a passing probe', async () => await metric(gw, 'circuit_breaker_state', { target: a.url }) === 2, 2000, 50)
  await sleep(500)
  assert.equal(await metric(gw, 'circuit_breaker_state', { target: a.url }), 2, 'half-open, never straight to closed by probes')
  const before = real(a)
  const replies = await Promise.all(new Array(5).fill(0).map(async () => await send(gw, '/api/slow')))
  assert.deepEqual(replies.map(r => r.status).sort(), [200, 503, 503, 503, 503])
  assert.equal(real(a) - before, 1, 'exactly one real request reached the half-open target')
})

test('probes never take a slot of maxConnections: a full target is still probed on a connection of its own', async t => {
  const a = await instance(t)
  const gw = await gateway(t, { 'up.yaml': routes([a], '').replace('maxConnections: 10', 'maxConnections: 1') })
  const slow = send(gw, '/api/slow')
  await until('the slow request holds the only slot', () => a.inFlight === 1)
  const probes = a.probes()
  await until('a probe arrives while the slot is held', () => a.probes() > probes, 2000)
  await until('the probe is answered; the slot is still the slow request\'s', () => a.inFlight === 1)
  const full = await send(gw, '/api/x')
  assert.equal(full.status, 503)
  assert.equal(full.json.code, 'GATEHOUSE_ERR_UPSTREAM_SATURATED')
  assert.equal((await slow).status, 200)
  const reals = a.requests.filter(r => r.url !== '/healthz')
  assert.equal(reals.length, 1)
  assert.equal(reals[0]?.headers['user-agent'], undefined)
  assert.equal(a.requests.find(r => r.url === '/healthz')?.headers['user-agent'], 'gatehouse-health-check')
  assert.ok((await metric(gw, 'health_check_duration_seconds_count', { upstream: 'up' }) ?? 0) >= 1)
})
