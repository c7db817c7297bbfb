// TLS to upstreams, end to end: certificates made with the openssl CLI, real node:https upstreams,
// a real gateway process. Verification is on by default and cannot be turned off; a failed
// verification is a 502 and the upstream's application never sees the request.
import { strict as assert } from 'node:assert'
import { execFile } from 'node:child_process'
import { mkdtemp, readFile, writeFile } from 'node:fs/promises'
import https from 'node:https'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { TLSSocket } from 'node:tls'
import { test, type TestContext } from 'node:test'
import { parseRouteFile, RouteFileError } from '../src/config/route-file/index.js'
import { Target } from '../src/upstream/target.js'
import { gateway, removeDir, routeDir, runCli, send, writeRoutes, type GatewayProcess, type Reply } from './helpers.js'

// ---- certificates -----------------------------------------------------------------------------

const OPENSSL_CNF = `[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ip]
basicConstraints = CA:FALSE
subjectAltName = IP:127.0.0.1,DNS:localhost
extendedKeyUsage = serverAuth
[server_dns]
basicConstraints = CA:FALSE
subjectAltName = DNS:upstream.test
extendedKeyUsage = serverAuth
[client]
basicConstraints = CA:FALSE
extendedKeyUsage = clientAuth
`

interface Pki {
  dir: string
  /** Absolute path of `<name>.pem` / `<name>.key` in dir. */
  pem: (name: string) => string
  key: (name: string) => string
  read: (file: string) => Promise<string>
}

function openssl (cwd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('/usr/bin/openssl', args, { cwd, timeout: 20_000 }, (err, _stdout, stderr) => {
      if (err !== null) reject(new Error(`openssl ${args.join(' ')}: ${err.message}\n${stderr}`))
      else resolve()
    })
  })
}

/**
 * A private CA and what it signs: `server` (127.0.0.1 and localhost), `dns` (upstream.test only),
 * `client` (CN=gatehouse-client, for mTLS); plus `self`, a self-signed 127.0.0.1 certificate no one
 * vouches for, and `stranger`, a client certificate of its own (self-signed) making.
 */
async function makePki (): Promise<Pki> {
  const dir = await mkdtemp(join(tmpdir(), 'gatehouse-pki-'))
  await writeFile(join(dir, 'openssl.cnf'), OPENSSL_CNF)
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes']
  const selfSigned = (name: string, cn: string, ext: string) =>
    openssl(dir, ['req', '-x509', '-config', 'openssl.cnf', '-extensions', ext, ...ec, '-keyout', `${name}.key`, '-out', `${name}.pem`, '-days', '2', '-subj', `/CN=${cn}`])
  const signed = async (name: string, cn: string, ext: string) => {
    await openssl(dir, ['req', '-new', '-config', 'openssl.cnf', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`])
    await openssl(dir, ['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-set_serial', String(Date.now() % 1e9 + name.length),
      '-out', `${name}.pem`, '-days', '2', '-extfile', 'openssl.cnf', '-extensions', ext])
  }
  await selfSigned('ca', 'Gatehouse Test CA', 'ca')
  await Promise.all([
    signed('server', 'localhost', 'server_ip'),
    signed('dns', 'upstream.test', 'server_dns'),
    signed('client', 'gatehouse-client', 'client'),
    selfSigned('self', 'localhost', 'server_ip'),
    selfSigned('stranger', 'stranger', 'client')
  ])
  return {
    dir,
    pem: name => join(dir, `${name}.pem`),
    key: name => join(dir, `${name}.key`),
    read: file => readFile(file, 'utf8')
  }
}

// ---- upstreams --------------------------------------------------------------------------------

interface TlsUpstream {
  url: string
  port: number
  /** Requests the application handler ran for. */
  requests: Array<{ url: string, servername: string | false | null, client: string | undefined }>
  /** TCP connections accepted, and TLS handshakes completed on them. */
  connections: number
  handshakes: number
}

interface Answer {
  url: string
  servername: string | false | null
  client: string | null
}

/** A node:https server on 127.0.0.1:0 answering with what it saw of the TLS session. */
async function httpsUpstream (t: TestContext, options: https.ServerOptions): Promise<TlsUpstream> {
  const upstream: TlsUpstream = { url: '', port: 0, requests: [], connections: 0, handshakes: 0 }
  const server = https.createServer(options, (req, res) => {
    const socket = req.socket as TLSSocket
    const peer = socket.getPeerCertificate()
    const cn = peer !== null && typeof peer.subject === 'object' ? peer.subject.CN : undefined
    const client = Array.isArray(cn) ? cn.join(',') : cn
    upstream.requests.push({ url: req.url ?? '', servername: socket.servername, client })
    req.resume()
    req.on('end', () => {
      res.setHeader('content-type', 'application/json')
      res.end(JSON.stringify({ url: req.url, servername: socket.servername, client: client ?? null }))
    })
  })
  server.on('connection', () => { upstream.connections++ })
  server.on('secureConnection', () => { upstream.handshakes++ })
  server.on('tlsClientError', () => {})
  server.listen(0, '127.0.0.1')
  await new Promise(resolve => server.once('listening', resolve))
  upstream.port = (server.address() as AddressInfo).port
  upstream.url = `https://127.0.0.1:${upstream.port}`
  t.after(async () => {
    server.closeAllConnections()
    await new Promise(resolve => server.close(resolve))
  })
  return upstream
}

// ---- clients ----------------------------------------------------------------------------------

function answer (reply: Reply): Answer {
  assert.equal(reply.status, 200, `expected 200 from the upstream, got ${reply.status}: ${reply.body}`)
  return JSON.parse(reply.body) as Answer
}

/** A gateway JSON error with this status and one of these codes; returns its message. */
function assertError (reply: Reply, status: number, codes: string[]): string {
  assert.equal(reply.status, status, `expected ${status}, got ${reply.status}: ${reply.body}`)
  assert.match(String(reply.headers['content-type']), /^application\/json/)
  const body = JSON.parse(reply.body) as { code: string, statusCode: number, message: string }
  assert.ok(codes.includes(body.code), `expected ${codes.join(' or ')}: ${reply.body}`)
  assert.equal(body.statusCode, status)
  return body.message
}

/** The upstream's application never ran, and no TLS session to it was ever established — yet the gateway did try. */
function assertNothingSent (u: TlsUpstream): void {
  assert.ok(u.connections >= 1, 'the gateway never even connected: the test proves nothing')
  assert.equal(u.handshakes, 0, 'a TLS session was established: request bytes could have reached the upstream')
  assert.deepEqual(u.requests, [], 'the upstream application received a request')
}

/**
 * A GET of `path` to a target on an upstream other routes share: 502 TLS, no new TLS session
 * there, and no request under the path's first segment reached its application.
 */
async function assertRefusedAtHandshake (gw: GatewayProcess, u: TlsUpstream, path: string): Promise<void> {
  const handshakes = u.handshakes
  assertError(await send(gw, path), 502, TLS)
  assert.equal(u.handshakes, handshakes, 'a TLS session was established')
  const prefix = path.slice(0, path.indexOf('/', 1))
  assert.equal(u.requests.filter(r => r.url.startsWith(prefix)).length, 0, 'the upstream application received a request')
}

/** A YAML route file: one target with an optional tls block, one route. */
function tlsRoute (url: string, path: string, tls: Record<string, string> = {}, extra = ''): string {
  const lines = ['targets:', `  - url: ${url}`]
  if (Object.keys(tls).length > 0) {
    lines.push('    tls:')
    for (const [k, v] of Object.entries(tls)) lines.push(`      ${k}: ${JSON.stringify(v)}`)
  }
  lines.push('routes:', `  - path: ${path}`, extra)
  return lines.join('\n') + '\n'
}

const SUBTEST = { timeout: 15_000 }
const TLS = ['GATEHOUSE_ERR_UPSTREAM_TLS']

// ---- end to end -------------------------------------------------------------------------------

test('upstream TLS through a gateway process', { timeout: 90_000 }, async t => {
  const pki = await makePki()
  t.after(() => removeDir(pki.dir))
  const serverIdentity = { key: await pki.read(pki.key('server')), cert: await pki.read(pki.pem('server')) }
  const selfSigned = await httpsUpstream(t, { key: await pki.read(pki.key('self')), cert: await pki.read(pki.pem('self')) })
  const privateCa = await httpsUpstream(t, serverIdentity)
  const dnsOnly = await httpsUpstream(t, { key: await pki.read(pki.key('dns')), cert: await pki.read(pki.pem('dns')) })
  const mutual = await httpsUpstream(t, { ...serverIdentity, ca: await pki.read(pki.pem('ca')), requestCert: true, rejectUnauthorized: true })
  const rotatingCa = join(pki.dir, 'rotating-ca.pem')
  await writeFile(rotatingCa, await pki.read(pki.pem('self')))

  const ca = pki.pem('ca')
  const files: Record<string, string> = {
    'self.yaml': tlsRoute(selfSigned.url, '/self'),
    'private-default.yaml': tlsRoute(privateCa.url, '/private-default'),
    'ca-right.yaml': tlsRoute(privateCa.url, '/ca-right', { ca }),
    'ca-wrong.yaml': tlsRoute(privateCa.url, '/ca-wrong', { ca: pki.pem('self') }),
    'sn-missing.yaml': tlsRoute(dnsOnly.url, '/sn-missing', { ca }),
    'sn-right.yaml': tlsRoute(dnsOnly.url, '/sn-right', { ca, servername: 'upstream.test' }),
    // The URL's host (localhost) is what undici would send as SNI: the configured name must win.
    'sn-right-named.yaml': tlsRoute(`https://localhost:${dnsOnly.port}`, '/sn-right-named', { ca, servername: 'upstream.test' }),
    'sn-wrong.yaml': tlsRoute(privateCa.url, '/sn-wrong', { ca, servername: 'upstream.test' }),
    'mtls-none.yaml': tlsRoute(mutual.url, '/mtls-none', { ca }),
    'mtls-stranger.yaml': tlsRoute(mutual.url, '/mtls-stranger', { ca, cert: pki.pem('stranger'), key: pki.key('stranger') }),
    'mtls.yaml': tlsRoute(mutual.url, '/mtls', { ca, cert: pki.pem('client'), key: pki.key('client') }),
    'rotate.yaml': tlsRoute(privateCa.url, '/rotate', { ca: rotatingCa }, '# v1')
  }
  const gw = await gateway(t, files, { WATCH_ROUTES: 'false' })

  await t.test('no tls key, self-signed upstream: 502 GATEHOUSE_ERR_UPSTREAM_TLS, no TLS session, the handler never ran (GET and POST)', SUBTEST, async () => {
    const message = assertError(await send(gw, '/self/x'), 502, TLS)
    assert.match(message, /DEPTH_ZERO_SELF_SIGNED_CERT/)
    assertError(await send(gw, '/self/x', { method: 'POST', body: '{"pay":100}' }), 502, TLS)
    assertNothingSent(selfSigned)
  })

  await t.test('no tls key, upstream signed by a private CA: 502 (the public roots do not know it)', SUBTEST, async () => {
    await assertRefusedAtHandshake(gw, privateCa, '/private-default/x')
  })

  await t.test('tls.ca with the CA that signed the upstream: 200', SUBTEST, async () => {
    assert.equal(answer(await send(gw, '/ca-right/x')).url, '/ca-right/x')
  })

  await t.test('tls.ca with an unrelated certificate: 502, the upstream application never sees the request', SUBTEST, async () => {
    await assertRefusedAtHandshake(gw, privateCa, '/ca-wrong/x')
  })

  await t.test('servername: a certificate for upstream.test at 127.0.0.1 fails without it and passes with it; another name fails', SUBTEST, async () => {
    const message = assertError(await send(gw, '/sn-missing/x'), 502, TLS)
    assert.match(message, /ERR_TLS_CERT_ALTNAME_INVALID/)
    assert.equal(dnsOnly.handshakes, 0)
    const right = answer(await send(gw, '/sn-right/x'))
    assert.equal(right.servername, 'upstream.test', 'the configured name is sent as SNI')
    assert.equal(answer(await send(gw, '/sn-right-named/x')).servername, 'upstream.test')
    // The 127.0.0.1/localhost certificate does not hold upstream.test.
    await assertRefusedAtHandshake(gw, privateCa, '/sn-wrong/x')
  })

  await t.test('mTLS: without a client certificate or with one the upstream does not trust: 502 and no request; with cert/key: 200 and the upstream sees its subject', SUBTEST, async () => {
    // TLS 1.3: the upstream refuses after the gateway's Finished, so the gateway sees the
    // connection close (RESET) rather than a verification error of its own.
    assertError(await send(gw, '/mtls-none/x'), 502, ['GATEHOUSE_ERR_UPSTREAM_TLS', 'GATEHOUSE_ERR_UPSTREAM_RESET'])
    assertError(await send(gw, '/mtls-stranger/x'), 502, ['GATEHOUSE_ERR_UPSTREAM_TLS', 'GATEHOUSE_ERR_UPSTREAM_RESET'])
    assert.equal(mutual.handshakes, 0)
    assert.equal(mutual.requests.length, 0, 'the upstream application received a request')
    const reply = answer(await send(gw, '/mtls/x'))
    assert.equal(reply.client, 'gatehouse-client')
    assert.deepEqual(mutual.requests.map(r => r.client), ['gatehouse-client'])
  })

  await t.test('a changed CA file makes a new pool: after a reload with the right CA in the same path, 200', SUBTEST, async () => {
    assertError(await send(gw, '/rotate/x'), 502, TLS)
    await writeFile(rotatingCa, await pki.read(ca))
    // The route file must change for a reload to read it again (a comment is enough).
    await writeRoutes(gw.routesDir, { 'rotate.yaml': tlsRoute(privateCa.url, '/rotate', { ca: rotatingCa }, '# v2') })
    gw.signal('SIGHUP')
    await gw.waitForLog(l => l.msg === 'route table reloaded' && Array.isArray(l.applied) && l.applied.includes('rotate.yaml'))
    assert.equal(answer(await send(gw, '/rotate/x')).url, '/rotate/x')
  })

  await t.test('no key material in the logs', SUBTEST, async () => {
    const text = JSON.stringify(gw.logs)
    assert.ok(!text.includes('PRIVATE KEY') && !text.includes('BEGIN CERTIFICATE'), 'PEM text in a log line')
  })
})

test('NODE_TLS_REJECT_UNAUTHORIZED=0 in the gateway environment does not turn verification off', { timeout: 60_000 }, async t => {
  const pki = await makePki()
  t.after(() => removeDir(pki.dir))
  const selfSigned = await httpsUpstream(t, { key: await pki.read(pki.key('self')), cert: await pki.read(pki.pem('self')) })
  const gw = await gateway(t, { 'self.yaml': tlsRoute(selfSigned.url, '/self') }, { WATCH_ROUTES: 'false', NODE_TLS_REJECT_UNAUTHORIZED: '0' })
  assertError(await send(gw, '/self/x'), 502, TLS)
  assertNothingSent(selfSigned)
})

// ---- route files ------------------------------------------------------------------------------

/** The problems `text` is refused with. */
function problems (text: string): string[] {
  try {
    parseRouteFile('up.yaml', text)
  } catch (err) {
    assert.ok(err instanceof RouteFileError, String(err))
    return err.problems
  }
  assert.fail(`accepted:\n${text}`)
}

test('route files: tls files are read, checked and refused with the field and the reason', async t => {
  const pki = await makePki()
  t.after(() => removeDir(pki.dir))
  const target = 'https://10.0.0.5:8443'
  const missing = join(pki.dir, 'missing.pem')
  const garbage = join(pki.dir, 'garbage.pem')
  await writeFile(garbage, 'not a certificate\n')
  const encrypted = join(pki.dir, 'encrypted.key')
  await openssl(pki.dir, ['pkey', '-in', 'client.key', '-aes256', '-passout', 'pass:secret', '-out', 'encrypted.key'])

  await t.test('accepted: ca, servername, cert and key are loaded; the target key carries their fingerprint', () => {
    const config = parseRouteFile('up.yaml', tlsRoute(target, '/a', { ca: pki.pem('ca'), servername: 'upstream.test', cert: pki.pem('client'), key: pki.key('client') }))
    const tls = config.targets[0]?.tls
    assert.ok(tls !== undefined)
    assert.match(tls.ca ?? '', /^-----BEGIN CERTIFICATE-----/)
    assert.match(tls.cert ?? '', /^-----BEGIN CERTIFICATE-----/)
    assert.match(tls.key ?? '', /PRIVATE KEY-----/)
    assert.equal(tls.servername, 'upstream.test')
    assert.match(tls.fingerprint, /^[0-9a-f]{64}$/)
    const other = parseRouteFile('up.yaml', tlsRoute(target, '/a', { ca: pki.pem('self') })).targets[0]?.tls
    const plain = parseRouteFile('up.yaml', tlsRoute('http://10.0.0.5:8080', '/a')).targets[0]
    assert.equal(plain?.tls, undefined)
    assert.ok(!('tls' in (plain ?? {})), 'no tls key on a target without tls')
    const key = (fingerprinted: typeof tls | undefined) => Target.key({
      upstream: 'up', origin: target, maxConnections: 100, weight: 1, connectTimeoutMs: 2000, breaker: config.breaker, ...(fingerprinted === undefined ? {} : { tls: fingerprinted })
    })
    assert.notEqual(key(tls), key(other))
    assert.notEqual(key(tls), key(undefined))
    assert.ok(!key(tls).includes('BEGIN'), 'the target key holds a hash, not the PEM text')
  })

  await t.test('unreadable ca path: /targets/0/tls/ca: cannot read <path>: ENOENT …', () => {
    assert.deepEqual(problems(tlsRoute(target, '/a', { ca: missing })), [`/targets/0/tls/ca: cannot read ${missing}: ENOENT: no such file or directory`])
  })

  await t.test('tls on an http:// target is refused', () => {
    assert.deepEqual(problems(tlsRoute('http://10.0.0.5:8080', '/a', { ca: pki.pem('ca') })),
      ['/targets/0/tls: only for https:// targets (http://10.0.0.5:8080 is plain HTTP)'])
  })

  await t.test('cert without key, and key without cert, are refused', () => {
    const expected = ['/targets/0/tls: must be a mapping of ca, servername, cert, key (all optional; cert and key go together)']
    assert.deepEqual(problems(tlsRoute(target, '/a', { cert: pki.pem('client') })), expected)
    assert.deepEqual(problems(tlsRoute(target, '/a', { key: pki.key('client') })), expected)
  })

  await t.test('a key that does not belong to the certificate is refused', () => {
    assert.deepEqual(problems(tlsRoute(target, '/a', { cert: pki.pem('client'), key: pki.key('stranger') })),
      [`/targets/0/tls/key: ${pki.key('stranger')} is not the private key of the certificate in ${pki.pem('client')}`])
  })

  await t.test('files that hold no PEM certificate or key, a CA file holding a key, an encrypted key: refused', () => {
    assert.deepEqual(problems(tlsRoute(target, '/a', { ca: garbage, cert: garbage, key: garbage })), [
      `/targets/0/tls/ca: ${garbage} holds no PEM certificate (-----BEGIN CERTIFICATE-----)`,
      `/targets/0/tls/cert: ${garbage} holds no PEM certificate (-----BEGIN CERTIFICATE-----)`,
      `/targets/0/tls/key: ${garbage} holds no PEM private key`
    ])
    assert.deepEqual(problems(tlsRoute(target, '/a', { ca: pki.key('ca') })), [`/targets/0/tls/ca: ${pki.key('ca')} holds a private key: a CA bundle holds certificates only`])
    assert.deepEqual(problems(tlsRoute(target, '/a', { cert: pki.pem('client'), key: encrypted })),
      [`/targets/0/tls/key: ${encrypted} is encrypted: give an unencrypted key (there is no passphrase option)`])
  })

  await t.test('relative paths, inline PEM, rejectUnauthorized and an IP servername are refused', () => {
    const pathExpected = 'must be an absolute path to a PEM file: certificates and keys are read from files, never written in route files'
    assert.deepEqual(problems(tlsRoute(target, '/a', { ca: 'certs/ca.pem' })), [`/targets/0/tls/ca: ${pathExpected}`])
    assert.deepEqual(problems(tlsRoute(target, '/a', { ca: '-----BEGIN CERTIFICATE-----' })), [`/targets/0/tls/ca: ${pathExpected}`])
    assert.deepEqual(problems(`targets:\n  - url: ${target}\n    tls:\n      rejectUnauthorized: false\nroutes:\n  - path: /a\n`),
      ['/targets/0/tls/rejectUnauthorized: unknown key (allowed: ca, servername, cert, key)'])
    assert.deepEqual(problems(tlsRoute(target, '/a', { servername: '10.0.0.5' })), ['/targets/0/tls/servername: must be a DNS name (an IP address in url is checked as it is)'])
  })

  await t.test('`gatehouse check` reports them as `<file>: /targets/0/tls/ca: cannot read …` and exits 1', async () => {
    const dir = await routeDir({ 'up.yaml': tlsRoute(target, '/a', { ca: missing }), 'plain.yaml': tlsRoute('http://10.0.0.6:80', '/b', { servername: 'x.test' }) })
    t.after(() => removeDir(dir))
    const check = await runCli(['check', dir])
    assert.equal(check.code, 1)
    assert.match(check.stderr, new RegExp(`up\\.yaml: /targets/0/tls/ca: cannot read ${missing.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: ENOENT`))
    assert.match(check.stderr, /plain\.yaml: \/targets\/0\/tls: only for https:\/\/ targets/)
  })
})
