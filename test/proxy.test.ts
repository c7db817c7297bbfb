// The proxy end to end: a real gateway process between a client and real upstream servers.
// Two gateway processes serve every case below (one per environment); each case has its own
// upstreams and routes, so the cases do not see each other's traffic.
import { strict as assert } from 'node:assert'
import { createHash, randomBytes } from 'node:crypto'
import http from 'node:http'
import { test } from 'node:test'
import {
  closedPort, exchange, firstResponse, gateway, send, upstream, type GatewayProcess, type Reply, type UpstreamHandler
} from './helpers.js'

// ---- fixtures ---------------------------------------------------------------------------------

interface RouteSpec {
  path: string
  methods?: string[]
  hosts?: string[]
  rewritePrefix?: string
  bodyLimit?: string
}

interface FileSpec {
  name?: string
  targets: string[]
  routes: Array<string | RouteSpec>
  timeouts?: { connect?: string, request?: string }
}

/** A JSON route file (the gateway reads JSON as well as YAML). */
function jsonRoute (spec: FileSpec): string {
  return JSON.stringify({
    ...(spec.name === undefined ? {} : { name: spec.name }),
    targets: spec.targets.map(url => ({ url })),
    routes: spec.routes.map(r => typeof r === 'string' ? { path: r } : r),
    ...(spec.timeouts === undefined ? {} : { timeouts: spec.timeouts })
  })
}

/** Route files by name, from their specs. */
function jsonRoutes (files: Record<string, FileSpec>): Record<string, string> {
  return Object.fromEntries(Object.entries(files).map(([name, spec]) => [name, jsonRoute(spec)]))
}

// ---- clients ----------------------------------------------------------------------------------

/** Writes raw bytes on a fresh connection and reads the first response, until the gateway closes it. */
async function raw (gw: GatewayProcess, text: string): Promise<Reply> {
  return firstResponse(await exchange(gw.port, text, { waitMs: 10_000 }))
}

interface Echo {
  port: number
  method: string
  url: string
  headers: http.IncomingHttpHeaders
  body: string
}

function echoOf (reply: Reply): Echo {
  assert.equal(reply.status, 200, `expected 200 from the upstream, got ${reply.status}: ${reply.body}`)
  return JSON.parse(reply.body) as Echo
}

interface ErrorBody {
  statusCode: number
  code: string
  error: string
  message: string
}

/** Asserts a gateway error: status, JSON content type, and the stable code. */
function assertError (reply: Reply, status: number, code: string): ErrorBody {
  assert.equal(reply.status, status, `expected ${status} ${code}, got ${reply.status}: ${reply.body}`)
  assert.match(String(reply.headers['content-type']), /^application\/json/)
  const body = JSON.parse(reply.body) as ErrorBody
  assert.equal(body.code, code, `expected ${code}: ${reply.body}`)
  assert.equal(body.statusCode, status)
  assert.equal(typeof body.message, 'string')
  return body
}

/** Answers with the size and SHA-256 of the body it received. */
const digest: UpstreamHandler = (req, res, body) => {
  res.setHeader('content-type', 'application/json')
  res.end(JSON.stringify({
    method: req.method,
    length: Buffer.byteLength(body),
    sha256: sha256(body),
    contentLength: req.headers['content-length'] ?? null
  }))
}

interface Digest {
  method: string
  length: number
  sha256: string
  contentLength: string | null
}

function sha256 (text: string): string {
  return createHash('sha256').update(text).digest('hex')
}

/** Sends hop-by-hop headers of its own, a Connection-named one among them, plus end-to-end ones. */
const hopByHopResponse: UpstreamHandler = (_req, res) => {
  res.setHeader('connection', 'X-Upstream-Private')
  res.setHeader('x-upstream-private', 'secret')
  res.setHeader('keep-alive', 'timeout=99, max=1234')
  res.setHeader('proxy-authenticate', 'Basic realm="upstream"')
  res.setHeader('trailer', 'X-Checksum')
  res.setHeader('upgrade', 'h2c')
  res.setHeader('x-end-to-end', 'kept')
  res.setHeader('cache-control', 'max-age=60')
  res.setHeader('content-type', 'text/plain')
  res.write('hello ')
  res.addTrailers({ 'x-checksum': 'abc' })
  res.end('world')
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
const SUBTEST = { timeout: 15_000 }

// ---- gateway with default settings ------------------------------------------------------------

test('gateway with default settings', { timeout: 60_000 }, async t => {
  const users = await upstream(t)
  const renamed = await upstream(t)
  const reads = await upstream(t)
  const writes = await upstream(t)
  const tenant = await upstream(t)
  const fallback = await upstream(t)
  const echo = await upstream(t)
  const bodies = await upstream(t, digest)
  const hops = await upstream(t, hopByHopResponse)
  const reset = await upstream(t, req => { req.socket.destroy() })
  const hang = await upstream(t, () => {})
  const everyUpstream = [users, renamed, reads, writes, tenant, fallback, echo, bodies, hops, reset, hang]
  const downPort = await closedPort()
  const gw = await gateway(t, jsonRoutes({
    'users.json': { targets: [users.url], routes: ['/api/users'] },
    'renamed.json': {
      targets: [renamed.url],
      routes: [{ path: '/api/users', hosts: ['rewrite.test'], rewritePrefix: '/v1/users' }, { path: '/strip', rewritePrefix: '' }]
    },
    'reads.json': { targets: [reads.url], routes: [{ path: '/things', methods: ['GET', 'HEAD'] }] },
    'writes.json': { targets: [writes.url], routes: [{ path: '/things', methods: ['POST'] }] },
    'tenant.json': { targets: [tenant.url], routes: [{ path: '/h', hosts: ['api.example.com'] }, { path: '/only', hosts: ['api.example.com'] }] },
    'fallback.json': { targets: [fallback.url], routes: ['/h'] },
    'echo.json': { name: 'echo', targets: [echo.url], routes: ['/api/echo', { path: '/v', rewritePrefix: '/v2' }] },
    'bodies.json': { targets: [bodies.url], routes: [{ path: '/upload', bodyLimit: '5mb' }, { path: '/small', bodyLimit: '1kb' }, '/default'] },
    'hops.json': { targets: [hops.url], routes: ['/hops'] },
    'down.json': { name: 'down', targets: [`http://127.0.0.1:${downPort}`], routes: ['/down'] },
    'reset.json': { targets: [reset.url], routes: ['/reset'] },
    'hang.json': { targets: [hang.url], routes: ['/hang'], timeouts: { request: '300ms' } }
  }))

  // -- routing

  await t.test('a prefix matches itself and what is below it, never a longer sibling (/api/usersX: 404)', SUBTEST, async () => {
    assert.equal(echoOf(await send(gw, '/api/users')).url, '/api/users')
    assert.equal(echoOf(await send(gw, '/api/users/')).url, '/api/users/')
    assert.equal(echoOf(await send(gw, '/api/users/42')).url, '/api/users/42')
    assert.equal(echoOf(await send(gw, '/api/users/42/orders/7')).url, '/api/users/42/orders/7')

    const sibling = assertError(await send(gw, '/api/usersX'), 404, 'GATEHOUSE_ERR_ROUTE_NOT_FOUND')
    assert.match(sibling.message, /GET \/api\/usersX/)
    assertError(await send(gw, '/api/usersX/42'), 404, 'GATEHOUSE_ERR_ROUTE_NOT_FOUND')
    assertError(await send(gw, '/api'), 404, 'GATEHOUSE_ERR_ROUTE_NOT_FOUND')
    assertError(await send(gw, '/'), 404, 'GATEHOUSE_ERR_ROUTE_NOT_FOUND')
    assertError(await send(gw, '/API/users'), 404, 'GATEHOUSE_ERR_ROUTE_NOT_FOUND')
    assert.deepEqual(users.requests.map(r => r.url), ['/api/users', '/api/users/', '/api/users/42', '/api/users/42/orders/7'])
  })

  await t.test('methods: a route answers only its methods; another method gets 404 and reaches no upstream', SUBTEST, async () => {
    assert.equal(echoOf(await send(gw, '/things/1')).port, reads.port)
    assert.equal(echoOf(await send(gw, '/things/1', { method: 'POST', body: 'x' })).port, writes.port)
    const head = await send(gw, '/things/1', { method: 'HEAD' })
    assert.equal(head.status, 200)
    assert.equal(head.body, '')

    const del = assertError(await send(gw, '/things/1', { method: 'DELETE' }), 404, 'GATEHOUSE_ERR_ROUTE_NOT_FOUND')
    assert.match(del.message, /DELETE \/things\/1/)
    assertError(await send(gw, '/things/1', { method: 'PUT', body: 'x' }), 404, 'GATEHOUSE_ERR_ROUTE_NOT_FOUND')
    assert.deepEqual(reads.requests.map(r => r.method), ['GET', 'HEAD'])
    assert.deepEqual(writes.requests.map(r => r.method), ['POST'])
  })

  await t.test('hosts: the Host header picks the route (port ignored, any case); another host falls to the host-less route or gets 404', SUBTEST, async () => {
    const as = async (host: string, path = '/h/1') => await send(gw, path, { headers: { host } })
    assert.equal(echoOf(await as('api.example.com')).port, tenant.port)
    assert.equal(echoOf(await as('api.example.com:8443')).port, tenant.port)
    assert.equal(echoOf(await as('API.Example.COM:80')).port, tenant.port)
    assert.equal(echoOf(await as('other.example.com')).port, fallback.port)
    assert.equal(echoOf(await as(`127.0.0.1:${gw.port}`)).port, fallback.port)
    // The upstream is told which host the client asked for.
    assert.equal(tenant.requests[1]?.headers['x-forwarded-host'], 'api.example.com:8443')

    assert.equal(echoOf(await as('api.example.com', '/only/x')).port, tenant.port)
    assertError(await as('other.example.com', '/only/x'), 404, 'GATEHOUSE_ERR_ROUTE_NOT_FOUND')
    assertError(await as('api.example.com.evil.test', '/only/x'), 404, 'GATEHOUSE_ERR_ROUTE_NOT_FOUND')
    assert.equal(tenant.requests.length, 4)
    assert.equal(fallback.requests.length, 2)
  })

  await t.test('rewritePrefix replaces the matched prefix: /api/users/42 reaches the upstream as /v1/users/42', SUBTEST, async () => {
    const as = async (path: string) => echoOf(await send(gw, path, { headers: { host: 'rewrite.test' } }))
    assert.equal((await as('/api/users/42')).url, '/v1/users/42')
    assert.equal((await as('/api/users')).url, '/v1/users')
    assert.equal((await as('/api/users/')).url, '/v1/users/')
    assert.equal((await as('/api/users/42?page=2')).url, '/v1/users/42?page=2')
    assert.equal((await as('/api/users/42')).port, renamed.port)
  })

  await t.test('rewritePrefix \'\' strips the prefix: /strip/42 → /42 and the bare prefix → /', SUBTEST, async () => {
    assert.equal(echoOf(await send(gw, '/strip/42')).url, '/42')
    assert.equal(echoOf(await send(gw, '/strip/a/b/')).url, '/a/b/')
    assert.equal(echoOf(await send(gw, '/strip')).url, '/')
    assert.equal(echoOf(await send(gw, '/strip/')).url, '/')
    assert.equal(echoOf(await send(gw, '/strip?q=1')).url, '/?q=1')
  })

  await t.test('the query string reaches the upstream byte for byte', SUBTEST, async () => {
    const queries = [
      '?a=1&b=2&a=3',
      '?x=%20%2F%3F%26%3D&y=a+b&z=%E2%82%AC&empty=&flag',
      "?q=!*'();:@&$,/?[]",
      '?%zz=%&b=%2',
      '?dots=../../etc',
      '?',
      '?a=1&&&b=2;c=3'
    ]
    for (const query of queries) {
      assert.equal(echoOf(await send(gw, `/api/echo/search${query}`)).url, `/api/echo/search${query}`, query)
      assert.equal(echoOf(await send(gw, `/v/search${query}`)).url, `/v2/search${query}`, query)
    }
  })

  // -- bodies

  await t.test('POST and PUT bodies reach the upstream intact, with Content-Length or chunked', SUBTEST, async () => {
    const json = JSON.stringify({ name: 'Ada', tags: ['a', 'b'], nested: { n: 1 } })
    const post = echoOf(await send(gw, '/api/echo/users', { method: 'POST', headers: { 'content-type': 'application/json' }, body: json }))
    assert.equal(post.method, 'POST')
    assert.equal(post.body, json)
    assert.equal(post.headers['content-type'], 'application/json')
    assert.equal(post.headers['content-length'], String(Buffer.byteLength(json)))

    const form = 'a=1&b=%20two&c=caf%C3%A9'
    const put = echoOf(await send(gw, '/api/echo/users/1', { method: 'PUT', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: form }))
    assert.equal(put.method, 'PUT')
    assert.equal(put.body, form)

    const bare = echoOf(await send(gw, '/api/echo/raw', { method: 'POST', body: 'no content type, just bytes' }))
    assert.equal(bare.body, 'no content type, just bytes')

    const chunked = echoOf(await send(gw, '/api/echo/stream', { method: 'POST', headers: { 'content-type': 'text/plain' }, chunks: ['first,', 'second,', 'third'] }))
    assert.equal(chunked.body, 'first,second,third')
  })

  await t.test('a 3 MB body streams intact on a route with bodyLimit 5mb, and gets 413 on a route with the 1mb default', SUBTEST, async () => {
    const body = randomBytes(3 * 1024 * 1024 * 3 / 4).toString('base64')
    assert.equal(body.length, 3 * 1024 * 1024)
    const before = bodies.requests.length

    const reply = await send(gw, '/upload/file', { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body })
    assert.equal(reply.status, 200, reply.body)
    const seen = JSON.parse(reply.body) as Digest
    assert.equal(seen.length, body.length)
    assert.equal(seen.sha256, sha256(body))
    assert.equal(seen.contentLength, String(body.length))

    const chunks = Array.from({ length: 12 }, (_, i) => body.slice(i * 262144, (i + 1) * 262144))
    const streamed = JSON.parse((await send(gw, '/upload/file', { method: 'PUT', chunks })).body) as Digest
    assert.equal(streamed.method, 'PUT')
    assert.equal(streamed.length, body.length)
    assert.equal(streamed.sha256, sha256(body))
    assert.equal(bodies.requests.length, before + 2)

    const refused = await raw(gw, `POST /default/file HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: ${body.length}\r\n\r\n`)
    assertError(refused, 413, 'GATEHOUSE_ERR_BODY_TOO_LARGE')
    assert.equal(bodies.requests.length, before + 2)
  })

  await t.test('Content-Length over the route bodyLimit: 413 GATEHOUSE_ERR_BODY_TOO_LARGE and the upstream sees nothing', SUBTEST, async () => {
    const atLimit = JSON.parse((await send(gw, '/small/x', { method: 'POST', body: 'a'.repeat(1024) })).body) as Digest
    assert.equal(atLimit.length, 1024)
    const before = bodies.requests.length

    // One byte over: refused from the head alone, before any of the body is sent.
    const reply = await raw(gw, 'POST /small/x HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 1025\r\n\r\n')
    const error = assertError(reply, 413, 'GATEHOUSE_ERR_BODY_TOO_LARGE')
    assert.match(error.message, /1024 bytes/)
    assert.equal(reply.headers.connection, 'close')
    assert.equal(bodies.requests.length, before)
  })

  await t.test('a chunked body that grows past the route bodyLimit: 413 GATEHOUSE_ERR_BODY_TOO_LARGE, never forwarded whole', SUBTEST, async () => {
    const under = JSON.parse((await send(gw, '/small/x', { method: 'POST', chunks: ['a'.repeat(500), 'b'.repeat(500)] })).body) as Digest
    assert.equal(under.length, 1000)
    const before = bodies.requests.length

    const chunk = 'c'.repeat(512)
    const wire = `200\r\n${chunk}\r\n`.repeat(4) + '0\r\n\r\n'
    const reply = await raw(gw, `POST /small/x HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${wire}`)
    assertError(reply, 413, 'GATEHOUSE_ERR_BODY_TOO_LARGE')
    assert.ok(bodies.requests.slice(before).every(r => r.body.length <= 1024), 'the upstream received the oversized body')
  })

  // -- headers

  await t.test('hop-by-hop request headers never reach the upstream; end-to-end headers do', SUBTEST, async () => {
    const reply = await raw(gw, [
      'GET /api/echo/h HTTP/1.1',
      'Host: gw.test',
      'Connection: close, X-Named-By-Connection',
      'X-Named-By-Connection: secret',
      'Keep-Alive: timeout=5',
      'Proxy-Connection: keep-alive',
      'TE: gzip, deflate',
      'Upgrade: websocket',
      'Trailer: X-Checksum',
      'Proxy-Authorization: Basic cHJveHk6c2VjcmV0',
      'Authorization: Bearer end-to-end',
      'Cookie: session=abc',
      'Accept: application/json',
      'X-Custom: kept',
      '', ''
    ].join('\r\n'))
    const seen = echoOf(reply).headers
    for (const name of ['x-named-by-connection', 'keep-alive', 'proxy-connection', 'te', 'upgrade', 'trailer', 'proxy-authorization']) {
      assert.equal(seen[name], undefined, `${name} reached the upstream`)
    }
    assert.doesNotMatch(String(seen.connection), /x-named-by-connection/i)
    assert.equal(seen.authorization, 'Bearer end-to-end')
    assert.equal(seen.cookie, 'session=abc')
    assert.equal(seen.accept, 'application/json')
    assert.equal(seen['x-custom'], 'kept')
  })

  await t.test('TE: trailers is the one TE value forwarded to the upstream', SUBTEST, async () => {
    assert.equal(echoOf(await send(gw, '/api/echo/te', { headers: { te: 'trailers' } })).headers.te, 'trailers')
  })

  await t.test('hop-by-hop response headers from the upstream never reach the client; end-to-end ones do', SUBTEST, async () => {
    const reply = await send(gw, '/hops/x')
    assert.equal(reply.status, 200)
    assert.equal(reply.body, 'hello world')
    assert.equal(reply.headers['x-upstream-private'], undefined)
    assert.equal(reply.headers['proxy-authenticate'], undefined)
    assert.equal(reply.headers.trailer, undefined)
    assert.equal(reply.headers.upgrade, undefined)
    // The gateway may send its own Connection and Keep-Alive; never the upstream's.
    assert.doesNotMatch(String(reply.headers.connection ?? ''), /x-upstream-private/i)
    assert.doesNotMatch(String(reply.headers['keep-alive'] ?? ''), /max=1234|timeout=99/)
    assert.equal(reply.headers['x-end-to-end'], 'kept')
    assert.equal(reply.headers['cache-control'], 'max-age=60')
    assert.equal(reply.headers['content-type'], 'text/plain')
    assert.equal(hops.requests.length, 1)
  })

  await t.test('X-Forwarded-For/Proto/Host come from the socket for an untrusted peer; spoofed values are replaced', SUBTEST, async () => {
    const plain = echoOf(await send(gw, '/api/echo/f')).headers
    assert.equal(plain['x-forwarded-for'], '127.0.0.1')
    assert.equal(plain['x-forwarded-proto'], 'http')
    assert.equal(plain['x-forwarded-host'], `127.0.0.1:${gw.port}`)

    const spoofed = echoOf(await send(gw, '/api/echo/f', {
      headers: { host: 'shop.example.com', 'x-forwarded-for': '1.2.3.4', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'evil.test' }
    })).headers
    assert.equal(spoofed['x-forwarded-for'], '127.0.0.1')
    assert.equal(spoofed['x-forwarded-proto'], 'http')
    assert.equal(spoofed['x-forwarded-host'], 'shop.example.com')
  })

  await t.test('x-request-id: a client id goes to the upstream and comes back', SUBTEST, async () => {
    const id = 'client-id-42.a:b@c/d+e=f'
    const given = await send(gw, '/api/echo/id', { headers: { 'x-request-id': id } })
    assert.equal(given.headers['x-request-id'], id)
    assert.equal(echoOf(given).headers['x-request-id'], id)
    // 128 characters is still a valid id.
    const longest = 'k'.repeat(128)
    const long = await send(gw, '/api/echo/id', { headers: { 'x-request-id': longest } })
    assert.equal(long.headers['x-request-id'], longest)
    assert.equal(echoOf(long).headers['x-request-id'], longest)
  })

  await t.test('x-request-id: without one, a generated id goes upstream, comes back, and is the reqId of the access log line', SUBTEST, async () => {
    const generated = await send(gw, '/api/echo/id?n=1')
    const id = String(generated.headers['x-request-id'])
    assert.match(id, UUID)
    assert.equal(echoOf(generated).headers['x-request-id'], id)
    const line = await gw.waitForLog(l => l.reqId === id && l.msg === 'request completed')
    assert.equal(line.statusCode, 200)
    assert.equal(line.url, '/api/echo/id?n=1')
    assert.equal(line.upstream, 'echo')
    assert.equal(line.target, echo.url)

    const next = String((await send(gw, '/api/echo/id')).headers['x-request-id'])
    assert.match(next, UUID)
    assert.notEqual(next, id)
  })

  await t.test('x-request-id: an invalid client id (300 chars, spaces, other characters) is replaced', SUBTEST, async () => {
    for (const bad of ['a'.repeat(300), 'has spaces in it', 'semi;colon', '<script>', '']) {
      const reply = await send(gw, '/api/echo/id', { headers: { 'x-request-id': bad } })
      const id = String(reply.headers['x-request-id'])
      assert.match(id, UUID, `${JSON.stringify(bad.slice(0, 20))} was not replaced`)
      assert.equal(echoOf(reply).headers['x-request-id'], id)
    }
    const tab = await raw(gw, 'GET /api/echo/id HTTP/1.1\r\nHost: x\r\nX-Request-Id: a\tb\r\nConnection: close\r\n\r\n')
    assert.match(String(tab.headers['x-request-id']), UUID)
  })

  // -- dot segments

  await t.test('/api/echo/../../admin never reaches an upstream: it is /admin, which no route serves (404); .. above the root is 400', SUBTEST, async () => {
    const before = everyUpstream.map(u => u.requests.length)
    // Plain, percent-encoded and mixed dot segments, and a repeated slash merged first: all /admin.
    for (const path of ['/api/echo/../../admin', '/api/echo/%2e%2e/%2e%2e/admin', '/api/echo/%2E./.%2E/admin', '/api/echo/..//../admin']) {
      const error = assertError(await send(gw, path), 404, 'GATEHOUSE_ERR_ROUTE_NOT_FOUND')
      assert.equal(error.message, 'No route matches GET /admin', path)
    }
    assertError(await send(gw, '/api/echo/../../..'), 400, 'GATEHOUSE_ERR_BAD_PATH')
    assertError(await send(gw, '/api/echo/%2e%2e/%2e%2e/%2e%2e/etc/passwd'), 400, 'GATEHOUSE_ERR_BAD_PATH')
    assert.deepEqual(everyUpstream.map(u => u.requests.length), before)
  })

  await t.test('dot segments are resolved before matching and forwarding: /api/echo/a/../b reaches the upstream as /api/echo/b', SUBTEST, async () => {
    const before = echo.requests.length
    assert.equal(echoOf(await send(gw, '/api/echo/a/../b')).url, '/api/echo/b')
    assert.equal(echoOf(await send(gw, '/api/echo/a/%2e%2e/b')).url, '/api/echo/b')
    assert.equal(echoOf(await send(gw, '/api/echo/a/%2E%2e/b?x=..')).url, '/api/echo/b?x=..')
    assert.equal(echoOf(await send(gw, '/api/echo/./a/%2e/b')).url, '/api/echo/a/b')
    assert.equal(echoOf(await send(gw, '/api//echo///b')).url, '/api/echo/b')
    assert.equal(echoOf(await send(gw, '/other/../api/echo/c')).url, '/api/echo/c')
    const urls = echo.requests.slice(before).map(r => r.url)
    assert.equal(urls.length, 6)
    assert.ok(urls.every(u => !/\/(\.|%2e){1,2}(\/|\?|$)/i.test(u)), JSON.stringify(urls))
  })

  await t.test('a backslash or %00 in the path: 400 GATEHOUSE_ERR_BAD_PATH, reaches no upstream', SUBTEST, async () => {
    const before = echo.requests.length
    for (const path of ['/api/echo/a\\..\\..\\admin', '/api/echo/a\\b', '/api/echo/a%00b', '/api/echo/%00']) {
      assertError(await send(gw, path), 400, 'GATEHOUSE_ERR_BAD_PATH')
    }
    assert.equal(echo.requests.length, before)
  })

  await t.test('malformed percent-encoding in the path (%zz, %2, %ff): 400 GATEHOUSE_ERR_BAD_PATH like every other refused path', SUBTEST, async () => {
    const before = echo.requests.length
    for (const path of ['/api/echo/%zz', '/api/echo/%2', '/api/echo/%ff', '/api/echo/%C0%AE%C0%AE/x']) {
      assertError(await send(gw, path), 400, 'GATEHOUSE_ERR_BAD_PATH')
    }
    assert.equal(echo.requests.length, before)
  })

  await t.test('`...` and `..name` are ordinary segments and are forwarded; `..%2f` on a route without allowEncodedSlashes is 400 and reaches no upstream', SUBTEST, async () => {
    assert.equal(echoOf(await send(gw, '/api/echo/.../x')).url, '/api/echo/.../x')
    assert.equal(echoOf(await send(gw, '/api/echo/..hidden')).url, '/api/echo/..hidden')
    assert.equal(echoOf(await send(gw, '/api/echo/a..b/c')).url, '/api/echo/a..b/c')
    const before = echo.requests.length
    for (const path of ['/api/echo/..%2f..%2fadmin', '/api/echo/..%2F..%2Fadmin', '/api/echo/..%5c..%5cadmin']) {
      const error = assertError(await send(gw, path), 400, 'GATEHOUSE_ERR_BAD_PATH')
      assert.match(error.message, /encoded slash or backslash/, path)
    }
    assert.equal(echo.requests.length, before)
  })

  // -- upstream failures

  await t.test('upstream refuses the connection: 502 GATEHOUSE_ERR_UPSTREAM_UNREACHABLE', SUBTEST, async () => {
    const error = assertError(await send(gw, '/down/x'), 502, 'GATEHOUSE_ERR_UPSTREAM_UNREACHABLE')
    assert.match(error.message, /down/)
    assertError(await send(gw, '/down/x', { method: 'POST', body: 'x' }), 502, 'GATEHOUSE_ERR_UPSTREAM_UNREACHABLE')
  })

  await t.test('upstream destroys the socket before answering: 502 GATEHOUSE_ERR_UPSTREAM_RESET', SUBTEST, async () => {
    assertError(await send(gw, '/reset/x'), 502, 'GATEHOUSE_ERR_UPSTREAM_RESET')
    assert.ok(reset.requests.length >= 1)
  })

  await t.test('upstream that never answers, with timeouts.request 300ms: GET tried twice (default retry.attempts 1), then 504 GATEHOUSE_ERR_UPSTREAM_TIMEOUT; POST tried once', SUBTEST, async () => {
    const timedOut = assertError(await send(gw, '/hang/x'), 504, 'GATEHOUSE_ERR_UPSTREAM_TIMEOUT')
    assert.match(timedOut.message, /^Upstream hang \(http:\/\/127\.0\.0\.1:\d+\) sent no response headers within 300ms \(timeouts\.request of its route file\)$/, 'the limit that was hit')
    // One try and one retry on the only target, each timed out: no more.
    assert.deepEqual(hang.requests.map(r => `${r.method} ${r.url}`), ['GET /hang/x', 'GET /hang/x'])
    // A timed-out POST may have reached the upstream: not idempotent, so never sent twice.
    assertError(await send(gw, '/hang/y', { method: 'POST', body: 'once' }), 504, 'GATEHOUSE_ERR_UPSTREAM_TIMEOUT')
    assert.deepEqual(hang.requests.slice(2).map(r => `${r.method} ${r.url} ${r.body}`), ['POST /hang/y once'])
  })
})

// ---- gateway with TRUST_PROXY=127.0.0.1 and MAX_HEADER_SIZE=4kb --------------------------------

test('gateway with TRUST_PROXY=127.0.0.1 and MAX_HEADER_SIZE=4kb', { timeout: 30_000 }, async t => {
  const api = await upstream(t)
  const users = await upstream(t)
  const gw = await gateway(t, jsonRoutes({
    'api.json': { targets: [api.url], routes: ['/api'] },
    'users.json': { targets: [users.url], routes: ['/api/users'] }
  }), { TRUST_PROXY: '127.0.0.1', MAX_HEADER_SIZE: '4kb' })

  await t.test('the longest prefix wins between /api and /api/users in two files', SUBTEST, async () => {
    assert.equal(echoOf(await send(gw, '/api/users/42')).port, users.port)
    assert.equal(echoOf(await send(gw, '/api/users')).port, users.port)
    assert.equal(echoOf(await send(gw, '/api/orders/1')).port, api.port)
    assert.equal(echoOf(await send(gw, '/api')).port, api.port)
    // Not below /api/users, but below /api.
    assert.equal(echoOf(await send(gw, '/api/usersX')).port, api.port)
    assert.deepEqual(users.requests.map(r => r.url), ['/api/users/42', '/api/users'])
    assert.deepEqual(api.requests.map(r => r.url), ['/api/orders/1', '/api', '/api/usersX'])
  })

  await t.test('a trusted peer is appended to X-Forwarded-For (1.2.3.4, 127.0.0.1); its Proto and Host are kept', SUBTEST, async () => {
    const chained = echoOf(await send(gw, '/api/f', {
      headers: { host: 'internal:8080', 'x-forwarded-for': '1.2.3.4', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'shop.example.com' }
    })).headers
    assert.equal(chained['x-forwarded-for'], '1.2.3.4, 127.0.0.1')
    assert.equal(chained['x-forwarded-proto'], 'https')
    assert.equal(chained['x-forwarded-host'], 'shop.example.com')

    const direct = echoOf(await send(gw, '/api/f')).headers
    assert.equal(direct['x-forwarded-for'], '127.0.0.1')
    assert.equal(direct['x-forwarded-proto'], 'http')
    assert.equal(direct['x-forwarded-host'], `127.0.0.1:${gw.port}`)
  })

  await t.test('a request head over MAX_HEADER_SIZE: 431 GATEHOUSE_ERR_HEADERS_TOO_LARGE as JSON, nothing forwarded', SUBTEST, async () => {
    const before = api.requests.length
    const fits = await raw(gw, `GET /api/h HTTP/1.1\r\nHost: x\r\nX-Medium: ${'m'.repeat(2048)}\r\nConnection: close\r\n\r\n`)
    assert.equal(echoOf(fits).headers['x-medium'], 'm'.repeat(2048))

    const reply = await raw(gw, `GET /api/h HTTP/1.1\r\nHost: x\r\nX-Big: ${'b'.repeat(8192)}\r\nConnection: close\r\n\r\n`)
    const error = assertError(reply, 431, 'GATEHOUSE_ERR_HEADERS_TOO_LARGE')
    assert.equal(error.error, 'Request Header Fields Too Large')
    assert.equal(api.requests.length, before + 1)
  })
})
