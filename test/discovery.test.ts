// DNS service discovery against a real DNS server on 127.0.0.1 (test/dns-server.ts) and real
// upstreams on several loopback addresses: addresses become targets, come and go with DNS,
// drain when they leave, survive a dead resolver, and SRV weights hold.
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import https from 'node:https'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import type { TLSSocket } from 'node:tls'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseRouteFile } from '../src/config/route-file/index.js'
import { dnsServer, type TestDnsServer } from './dns-server.js'
import { echo, gateway, metric, runCli, send, tempDir, until, upstream, type GatewayProcess, type Upstream } from './helpers.js'

/** A route file whose targets are the addresses of `name` (extra: more keys of the discover block). */
function discoverRoutes (dns: TestDnsServer, name: string, discover: string, fileExtra = ''): string {
  return [
    'targets:',
    `  - discover: { dns: ${name}, resolvers: ["${dns.address}"], ${discover} }`,
    'routes:',
    '  - path: /api',
    'retry: { attempts: 0 }',
    fileExtra,
    ''
  ].join('\n')
}

/** Upstreams on 127.0.0.1, 127.0.0.2...: the same port on several addresses, as a DNS name's instances. */
async function instances (t: Parameters<typeof upstream>[0], count: number, handler = echo): Promise<Upstream[]> {
  const first = await upstream(t, handler)
  const rest = []
  for (let i = 2; i <= count; i++) rest.push(await upstream(t, handler, first.port, `127.0.0.${i}`))
  return [first, ...rest]
}

async function served (gw: GatewayProcess, n: number): Promise<number[]> {
  const statuses = []
  for (let i = 0; i < n; i++) statuses.push((await send(gw, '/api/x')).status)
  return statuses
}

test('A records: each address is a target, Host stays the DNS name, an address added is served within 2 s (TTL 1 s)', async t => {
  const dns = await dnsServer(t)
  const [a, b] = await instances(t, 2)
  dns.set('orders.test', { A: ['127.0.0.1'], ttl: 1 })
  const gw = await gateway(t, { 'orders.yaml': discoverRoutes(dns, 'orders.test', `port: ${a!.port}`) })

  const first = await send(gw, '/api/x')
  assert.equal(first.status, 200)
  assert.equal(a!.requests.at(-1)?.headers.host, `orders.test:${a!.port}`)
  assert.equal(await metric(gw, 'upstream_max_connections', { upstream: 'orders', target: `http://127.0.0.1:${a!.port}` }), 100)

  dns.set('orders.test', { A: ['127.0.0.1', '127.0.0.2'], ttl: 1 })
  const changed = Date.now()
  await until('the added address gets requests', async () => (await send(gw, '/api/x')).status === 200 && b!.requests.length > 0, 2000, 20)
  assert.ok(Date.now() - changed <= 2000)
  assert.equal(b!.requests[0]?.headers.host, `orders.test:${a!.port}`)
  await gw.waitForLog(l => l.msg === 'DNS addresses changed' && JSON.stringify(l.added) === JSON.stringify([`127.0.0.2:${a!.port}`]))
})

test('an address removed from DNS drains: its request in flight completes, nothing new reaches it', async t => {
  const dns = await dnsServer(t)
  const [a, b] = await instances(t, 2, async (req, res, body, seen) => {
    if (req.url === '/api/slow') await sleep(1500)
    echo(req, res, body, seen)
  })
  dns.set('orders.test', { A: ['127.0.0.2'], ttl: 1 })
  const gw = await gateway(t, { 'orders.yaml': discoverRoutes(dns, 'orders.test', `port: ${a!.port}`) })

  const slow = send(gw, '/api/slow')
  await until('the slow request reached the old address', () => b!.inFlight === 1)
  dns.set('orders.test', { A: ['127.0.0.1'], ttl: 1 })
  await gw.waitForLog(l => l.msg === 'DNS addresses changed' && JSON.stringify(l.removed) === JSON.stringify([`127.0.0.2:${a!.port}`]))
  const seenByB = b!.requests.length
  assert.deepEqual(await served(gw, 20), new Array(20).fill(200))
  const reply = await slow
  assert.equal(reply.status, 200, 'the request in flight on the removed address completes')
  assert.equal(b!.requests.length, seenByB, 'nothing new reached the removed address')
  assert.equal(a!.requests.length, 20)
  // Gone from the metrics with its pool.
  assert.equal(await metric(gw, 'upstream_max_connections', { target: `http://127.0.0.2:${a!.port}` }), undefined)
})

test('a target that stays keeps its breaker across DNS changes; an address that leaves and returns starts afresh', async t => {
  const dns = await dnsServer(t)
  const [a, b] = await instances(t, 2, (req, res, body, seen) => {
    if (req.url === '/api/fail') res.statusCode = 503
    echo(req, res, body, seen)
  })
  dns.set('orders.test', { A: ['127.0.0.1'], ttl: 1 })
  const gw = await gateway(t, { 'orders.yaml': discoverRoutes(dns, 'orders.test', `port: ${a!.port}`, 'circuitBreaker: { consecutiveFailures: 1, openFor: 1m }') })
  const targetA = { target: `http://127.0.0.1:${a!.port}` }
  assert.equal((await send(gw, '/api/fail')).status, 503)
  assert.equal(await metric(gw, 'circuit_breaker_state', targetA), 1)

  dns.set('orders.test', { A: ['127.0.0.1', '127.0.0.2'], ttl: 1 })
  await gw.waitForLog(l => l.msg === 'DNS addresses changed' && JSON.stringify(l.added) === JSON.stringify([`127.0.0.2:${a!.port}`]))
  assert.equal(await metric(gw, 'circuit_breaker_state', targetA), 1, 'the kept target is still open')
  assert.deepEqual(await served(gw, 10), new Array(10).fill(200))
  assert.equal(b!.requests.length, 10)

  dns.set('orders.test', { A: ['127.0.0.2'], ttl: 1 })
  await until('the address left', async () => await metric(gw, 'circuit_breaker_state', targetA) === undefined, 3000, 50)
  dns.set('orders.test', { A: ['127.0.0.1', '127.0.0.2'], ttl: 1 })
  await until('the address is back', async () => await metric(gw, 'circuit_breaker_state', targetA) !== undefined, 3000, 50)
  assert.equal(await metric(gw, 'circuit_breaker_state', targetA), 0, 'a returning address starts with a closed breaker')
  const seenByA = a!.requests.length
  await until('requests reach it again', async () => (await send(gw, '/api/x')).status === 200 && a!.requests.length > seenByA)
})

test('DNS down: the last known targets keep serving, failures are counted and logged once', async t => {
  const dns = await dnsServer(t)
  const [a] = await instances(t, 1)
  dns.set('orders.test', { A: ['127.0.0.1'], ttl: 1 })
  const gw = await gateway(t, { 'orders.yaml': discoverRoutes(dns, 'orders.test', `port: ${a!.port}, minRefresh: 200ms, maxRefresh: 400ms`) })
  assert.equal(await metric(gw, 'dns_resolution_failures_total', { upstream: 'orders' }), 0)
  await dns.stop()
  await until('three failed resolutions', async () => (await metric(gw, 'dns_resolution_failures_total', { upstream: 'orders' }) ?? 0) >= 3, 5000, 50)
  assert.deepEqual(await served(gw, 5), [200, 200, 200, 200, 200])
  const warned = gw.logs.filter(l => typeof l.msg === 'string' && l.msg.startsWith('DNS resolution failed'))
  assert.equal(warned.length, 1, 'one line per change of state, not per failure')
  assert.equal(warned[0]?.level, 40)
  assert.equal(warned[0]?.msg, 'DNS resolution failed: the last known addresses keep serving')
})

test('NXDOMAIN keeps the last addresses by default; onEmpty: clear drains them and the routes answer 503 naming the name', async t => {
  const dns = await dnsServer(t)
  const [a] = await instances(t, 1)
  dns.set('keep.test', { A: ['127.0.0.1'], ttl: 1 })
  dns.set('clear.test', { A: ['127.0.0.1'], ttl: 1 })
  const keep = await gateway(t, { 'keep.yaml': discoverRoutes(dns, 'keep.test', `port: ${a!.port}, minRefresh: 200ms`) })
  const clear = await gateway(t, { 'clear.yaml': discoverRoutes(dns, 'clear.test', `port: ${a!.port}, minRefresh: 200ms, onEmpty: clear`) })
  dns.delete('keep.test')
  dns.delete('clear.test')
  await clear.waitForLog(l => l.msg === 'DNS name has no addresses: its targets are drained (onEmpty: clear)')
  await keep.waitForLog(l => l.msg === 'DNS resolution failed: the last known addresses keep serving' && l.failure === 'NXDOMAIN')
  assert.equal((await send(keep, '/api/x')).status, 200)
  const refused = await send(clear, '/api/x')
  assert.equal(refused.status, 503)
  assert.equal(refused.json.code, 'GATEHOUSE_ERR_UPSTREAM_NO_TARGETS')
  assert.equal(refused.json.message, 'Upstream clear has no targets: its DNS names have no addresses: clear.test (NXDOMAIN)')
  dns.set('clear.test', { A: ['127.0.0.1'], ttl: 1 })
  await until('the name is back', async () => (await send(clear, '/api/x')).status === 200, 3000, 50)
})

test('a name that does not resolve at start: the gateway starts, warns, answers 503, and serves once it resolves; check fails naming the file and field', async t => {
  const dns = await dnsServer(t)
  const [a] = await instances(t, 1)
  const file = discoverRoutes(dns, 'late.test', `port: ${a!.port}, minRefresh: 200ms, maxRefresh: 500ms`)
  const gw = await gateway(t, { 'late.yaml': file })
  const warning = await gw.waitForLog(l => typeof l.msg === 'string' && l.msg.startsWith('DNS name has no addresses: they become targets when it resolves'))
  assert.equal(warning.level, 40)
  assert.equal(warning.dns, 'late.test')
  assert.equal(warning.failure, 'NXDOMAIN')
  const refused = await send(gw, '/api/x')
  assert.equal(refused.status, 503)
  assert.match(refused.json.message ?? '', /late\.test \(NXDOMAIN\)/)

  const dir = await tempDir(t, { 'late.yaml': file })
  const check = await runCli(['check', dir])
  assert.equal(check.code, 1)
  assert.match(check.stderr, /late\.yaml: \/targets\/0\/discover\/dns: A late\.test has no address \(NXDOMAIN\)/)

  dns.set('late.test', { A: ['127.0.0.1'], ttl: 1 })
  await until('served once the name resolves', async () => (await send(gw, '/api/x')).status === 200, 3000, 50)
  assert.equal((await runCli(['check', dir])).code, 0)
})

test('SRV: the lowest priority is used, weights 3:1 give 3:1 ± 10 % over 4,000 requests, SRV ports win', async t => {
  const dns = await dnsServer(t)
  const heavy = await upstream(t)
  const light = await upstream(t)
  const backup = await upstream(t)
  dns.set('_http._tcp.pay.test', {
    SRV: [
      { priority: 10, weight: 3, port: heavy.port, target: 'pay-1.pay.test' },
      { priority: 10, weight: 1, port: light.port, target: 'pay-2.pay.test' },
      { priority: 20, weight: 100, port: backup.port, target: 'pay-3.pay.test' }
    ],
    ttl: 30
  })
  dns.set('pay-1.pay.test', { A: ['127.0.0.1'], ttl: 30 })
  dns.set('pay-2.pay.test', { A: ['127.0.0.1'], ttl: 30 })
  dns.set('pay-3.pay.test', { A: ['127.0.0.1'], ttl: 30 })
  const gw = await gateway(t, { 'pay.yaml': discoverRoutes(dns, '_http._tcp.pay.test', 'type: SRV') })
  const agent = new (await import('node:http')).Agent({ keepAlive: true, maxSockets: 4 })
  t.after(() => agent.destroy())
  let sent = 0
  await Promise.all(new Array(4).fill(0).map(async () => {
    while (sent < 4000) {
      sent++
      assert.equal((await send(gw, '/api/x', { agent })).status, 200)
    }
  }))
  const ratio = heavy.requests.length / light.requests.length
  assert.equal(heavy.requests.length + light.requests.length, 4000)
  assert.equal(backup.requests.length, 0, 'a higher priority serves only when no lower one is present')
  assert.ok(ratio >= 2.7 && ratio <= 3.3, `heavy:light = ${heavy.requests.length}:${light.requests.length} = ${ratio.toFixed(2)}`)
  assert.equal(heavy.requests[0]?.headers.host, `pay.test:${heavy.port}`, 'Host is the service name without _service._proto')
})

test('AAAA: an IPv6 address is a target', async t => {
  const dns = await dnsServer(t)
  const v6 = await upstream(t, echo, 0, '::1')
  dns.set('six.test', { AAAA: ['::1'], ttl: 1 })
  const gw = await gateway(t, { 'six.yaml': discoverRoutes(dns, 'six.test', `type: AAAA, port: ${v6.port}`) })
  assert.equal((await send(gw, '/api/x')).status, 200)
  assert.equal(v6.requests[0]?.headers.host, `six.test:${v6.port}`)
  assert.equal(await metric(gw, 'upstream_max_connections', { target: `http://[::1]:${v6.port}` }), 100)
})

test('https: each address is dialled by IP, while SNI and the certificate check use the DNS name', async t => {
  const dns = await dnsServer(t)
  // A certificate for secure.test only: no IP in it, so only a check against the name passes.
  const dir = await mkdtemp(join(tmpdir(), 'gatehouse-dns-tls-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const cert = join(dir, 'cert.pem')
  const key = join(dir, 'key.pem')
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert,
    '-days', '2', '-subj', '/CN=secure.test', '-addext', 'subjectAltName=DNS:secure.test'], { stdio: 'ignore' })
  const server = https.createServer({ cert: await readFile(cert), key: await readFile(key) }, (req, res) => {
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify({ servername: (req.socket as TLSSocket).servername, host: req.headers.host }))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.after(() => { server.closeAllConnections(); server.close() })
  const port = (server.address() as AddressInfo).port
  dns.set('secure.test', { A: ['127.0.0.1'], ttl: 30 })
  dns.set('wrong.test', { A: ['127.0.0.1'], ttl: 30 })
  const file = (name: string) => [
    'targets:', `  - discover: { dns: ${name}, port: ${port}, scheme: https, resolvers: ["${dns.address}"] }`, `    tls: { ca: ${cert} }`,
    'routes:', `  - path: /${name.split('.')[0] ?? ''}`, 'retry: { attempts: 0 }', ''
  ].join('\n')
  const gw = await gateway(t, { 'secure.yaml': file('secure.test'), 'wrong.yaml': file('wrong.test') })
  const ok = await send(gw, '/secure')
  assert.equal(ok.status, 200)
  assert.deepEqual(ok.json, { servername: 'secure.test', host: `secure.test:${port}` })
  const refused = await send(gw, '/wrong')
  assert.equal(refused.status, 502)
  assert.equal(refused.json.code, 'GATEHOUSE_ERR_UPSTREAM_TLS')
  assert.match(refused.json.message ?? '', /wrong \(https:\/\/127\.0\.0\.1:\d+\)/)
})

test('route file: discover entries are checked, each problem naming its field', () => {
  const file = (targets: string, extra = '') => `targets:\n${targets}\nroutes:\n  - path: /a\n${extra}`
  const problems = (text: string): string => {
    try {
      parseRouteFile('up.yaml', text)
    } catch (err) {
      return (err as Error).message
    }
    return ''
  }
  assert.match(problems(file('  - { url: "http://10.0.0.1:80", discover: { dns: a.test } }')), /up\.yaml: \/targets\/0: has both url and discover/)
  assert.match(problems(file('  - { maxConnections: 5 }')), /up\.yaml: \/targets\/0: needs url .* or discover/)
  assert.match(problems(file('  - { discover: { dns: a.test, resolvers: ["10.0.0.300"] } }')), /\/targets\/0\/discover\/resolvers\/0: 10\.0\.0\.300 is not an IP address/)
  assert.match(problems(file('  - { discover: { dns: a.test, type: MX } }')), /\/targets\/0\/discover\/type: must be one of A, AAAA, A\+AAAA, SRV/)
  assert.match(problems(file('  - { discover: { dns: "_http._tcp.a.test" } }')), /looks like an SRV name .* set type: SRV/)
  assert.match(problems(file('  - { discover: { dns: a.test }, protocol: h2 }')), /\/targets\/0\/protocol: h2 needs scheme: https/)
  assert.match(problems(file('  - { discover: { dns: a.test, minRefresh: 5s, maxRefresh: 1s } }')), /\/targets\/0\/discover\/maxRefresh: 1s is below minRefresh \(5s\)/)
  assert.match(problems(file('  - { discover: { dns: a.test } }\n  - { discover: { dns: A.test. } }')), /\/targets\/1\/discover\/dns: A a\.test is already discovered by \/targets\/0/)
  assert.match(problems(file('  - { discover: { dns: a.test } }', 'healthCheck: { path: /h, expectStatus: [399-200] }\n')), /\/healthCheck\/expectStatus\/0: 399-200 is an empty range/)
  assert.match(problems(file('  - { discover: { dns: a.test } }', 'healthCheck: { path: /h, headers: { Host: x } }\n')), /\/healthCheck\/headers\/host: the Host of a probe is the target's/)
  const config = parseRouteFile('up.yaml', file('  - { discover: { dns: Orders.Test., scheme: https }, group: canary }'))
  assert.deepEqual({ ...config.discover[0], tls: undefined }, {
    at: '/targets/0', dns: 'orders.test', type: 'A', scheme: 'https', port: 443, refresh: 'ttl', minRefreshMs: 1000, maxRefreshMs: 30_000, onEmpty: 'keep', resolvers: undefined, maxConnections: 100, weight: 1, protocol: 'http1', group: 'canary', tls: undefined
  })
})
