// The access log and the request pipeline, as an operator sees them: exactly one access line per
// request whatever its outcome (499 and a response the upstream broke off included), no line at error level and no stack for outcomes a
// client can cause, every line of a completed request written before a graceful stop exits, and
// a pipeline that refuses to boot without the plugins it needs.
import { strict as assert } from 'node:assert'
import http from 'node:http'
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'node:test'
import Fastify from 'fastify'
import { registerPipeline } from '../src/app.js'
import { closedPort, exchange, firstResponse, gateway, routeFile, send, upstream, type GatewayProcess } from './helpers.js'

type Line = Record<string, unknown>

const accessLines = (gw: GatewayProcess, id: string): Line[] => gw.logs.filter(l => l.msg === 'request completed' && l.reqId === id)

/** A GET with its own request id; resolves with the status (rejects when the response is cut short). */
async function get (gw: GatewayProcess, path: string, id: string): Promise<number> {
  return (await send(gw, path, { headers: { 'x-request-id': id } })).status
}

test('one access line per request for every outcome, 499 included; nothing at error level, no stack', async t => {
  const ok = await upstream(t)
  const slow = await upstream(t, async (_req, res) => {
    await sleep(1500)
    res.end('late')
  })
  const cut = await upstream(t, (_req, res) => {
    res.writeHead(200, { 'content-length': '100' })
    res.write('part of it')
    setTimeout(() => res.socket?.destroy(), 50)
  })
  const dead = await closedPort()
  const gw = await gateway(t, {
    'ok.yaml': routeFile([ok.url], ['/ok']),
    'slow.yaml': 'targets:\n  - url: ' + slow.url + '\n    maxConnections: 1\nroutes:\n  - path: /slow\n',
    'cut.yaml': routeFile([cut.url], ['/cut'], 'retry:\n  attempts: 0\n'),
    'dead.yaml': routeFile([`http://127.0.0.1:${dead}`], ['/dead'], 'retry:\n  attempts: 0\n'),
    'limited.yaml': routeFile([ok.url], ['/limited'], '').replace('  - path: /limited', '  - path: /limited\n    rateLimit: { max: 1, window: 1m }')
  })

  // A client that leaves while the upstream works; meanwhile its request holds the only slot.
  const leaving = http.get(`${gw.url}/slow`, { headers: { 'x-request-id': 'left' }, agent: false })
  leaving.once('error', () => {})
  for (let i = 0; i < 100 && slow.inFlight === 0; i++) await sleep(20)
  assert.equal(slow.inFlight, 1, 'the slow upstream has the request')
  const outcomes: Record<string, number> = {
    saturated: await get(gw, '/slow', 'saturated'),
    ok: await get(gw, '/ok', 'ok'),
    missing: await get(gw, '/nowhere', 'missing'),
    dead: await get(gw, '/dead', 'dead'),
    limited1: await get(gw, '/limited', 'limited1'),
    limited2: await get(gw, '/limited', 'limited2')
  }
  // The upstream breaks off mid-body: the client's response is cut too.
  await assert.rejects(get(gw, '/cut', 'cut'))
  leaving.destroy()
  assert.deepEqual(outcomes, { saturated: 503, ok: 200, missing: 404, dead: 502, limited1: 200, limited2: 429 })
  const expected: Record<string, [number, string | undefined]> = {
    ok: [200, undefined],
    missing: [404, 'GATEHOUSE_ERR_ROUTE_NOT_FOUND'],
    dead: [502, 'GATEHOUSE_ERR_UPSTREAM_UNREACHABLE'],
    limited1: [200, undefined],
    limited2: [429, 'GATEHOUSE_ERR_RATE_LIMITED'],
    saturated: [503, 'GATEHOUSE_ERR_UPSTREAM_SATURATED'],
    left: [499, 'GATEHOUSE_ERR_CLIENT_CLOSED'],
    cut: [200, 'GATEHOUSE_ERR_UPSTREAM_RESET']
  }
  // The 499's line is written when the client's connection closes.
  await gw.waitForLog(l => l.reqId === 'left' && l.msg === 'request completed')
  await gw.waitForLog(l => l.reqId === 'cut' && l.msg === 'request completed')
  for (const [id, [status, code]] of Object.entries(expected)) {
    const lines = accessLines(gw, id)
    assert.equal(lines.length, 1, `${id}: one access line, got ${JSON.stringify(lines)}`)
    const line = lines[0] as Line
    assert.equal(line.statusCode, status, id)
    assert.equal(line.level, 30, `${id}: info`)
    assert.equal(line.code, code, id)
    if (code !== undefined) assert.equal(typeof line.error, 'string', `${id}: the error's message`)
    // Every other line of the request: none at error level, none with a stack.
    for (const other of gw.logs.filter(l => l.reqId === id)) {
      assert.ok((other.level as number) < 50, `${id}: ${JSON.stringify(other)}`)
      assert.ok(!JSON.stringify(other).includes('"stack"'), `${id}: ${JSON.stringify(other)}`)
    }
  }
  assert.equal(accessLines(gw, 'ok')[0]?.upstream, 'ok')
})

test('a graceful stop writes the access line of every request completed before it', async t => {
  const up = await upstream(t)
  const gw = await gateway(t, { 'ok.yaml': routeFile([up.url], ['/ok']) })
  const n = 400
  const agent = new http.Agent({ keepAlive: true, maxSockets: 16 })
  const statuses = await Promise.all(Array.from({ length: n }, async (_, i) => (await send(gw, '/ok', { agent, headers: { 'x-request-id': `burst-${i}` } })).status))
  agent.destroy()
  assert.deepEqual(new Set(statuses), new Set([200]))
  // At once: lines still waiting in the logger's buffer must be written before the process exits.
  gw.signal('SIGTERM')
  assert.equal(await gw.exit, 0)
  await sleep(100) // the last lines of the pipe
  const logged = new Set(gw.logs.filter(l => l.msg === 'request completed').map(l => l.reqId))
  for (let i = 0; i < n; i++) assert.ok(logged.has(`burst-${i}`), `burst-${i} has its access line`)
})

test('the proxied pipeline refuses to boot without the plugins whose hooks it lists', async () => {
  const app = Fastify()
  app.decorate('guardRequest', (_request: unknown, _reply: unknown, done: () => void) => done())
  await assert.rejects(registerPipeline(app, { trustProxy: false, allowUnderscoreHeaders: false }), /the proxied pipeline needs resolveRoute, answerCors, authenticate, checkRateLimit/)
  await app.close()
})

test('one access line for outcomes answered outside the proxy: a body broken off by a reset (499), by a FIN (400), or timed out (408), malformed percent-encoding (400), HTTP/2.0 (505), a head the parser refuses (400)', async t => {
  const ok = await upstream(t)
  const gw = await gateway(t, { 'ok.yaml': routeFile([ok.url], ['/ok']) }, { REQUEST_TIMEOUT: '1s', HEADERS_TIMEOUT: '1s' })
  const head = (id: string): string => `POST /ok/up HTTP/1.1\r\nHost: x\r\nX-Request-Id: ${id}\r\nContent-Length: 100\r\n\r\nabc`
  const reset = net.connect(gw.port, '127.0.0.1')
  reset.on('error', () => {})
  reset.write(head('reset'))
  const fin = net.connect(gw.port, '127.0.0.1')
  fin.on('error', () => {})
  fin.write(head('fin'))
  const slow = net.connect(gw.port, '127.0.0.1')
  slow.on('error', () => {})
  slow.write(head('timeout'))
  await sleep(200)
  reset.resetAndDestroy()
  fin.end()
  await exchange(gw.port, 'GET /ok/%zz HTTP/1.1\r\nHost: x\r\nX-Request-Id: percent\r\n\r\n')
  await exchange(gw.port, 'GET /ok HTTP/2.0\r\nHost: x\r\n\r\n')
  const malformed = firstResponse(await exchange(gw.port, 'GET /ok HTTP/1.1\r\nHost x\r\n\r\n'))
  const expected: Record<string, [number, string]> = {
    reset: [499, 'GATEHOUSE_ERR_CLIENT_CLOSED'],
    fin: [400, 'GATEHOUSE_ERR_BAD_REQUEST'],
    timeout: [408, 'GATEHOUSE_ERR_REQUEST_TIMEOUT'],
    percent: [400, 'GATEHOUSE_ERR_BAD_PATH']
  }
  for (const id of Object.keys(expected)) await gw.waitForLog(l => l.reqId === id && l.msg === 'request completed', 5000)
  await sleep(300)
  for (const [id, [status, code]] of Object.entries(expected)) {
    const lines = accessLines(gw, id)
    assert.equal(lines.length, 1, `${id}: one access line, got ${JSON.stringify(lines)}`)
    assert.equal(lines[0]?.statusCode, status, id)
    assert.equal(lines[0]?.code, code, id)
    assert.equal(lines[0]?.level, 30, id)
  }
  // The message names the cause: the client's FIN, not a malformed request.
  assert.equal(accessLines(gw, 'fin')[0]?.error, 'Incomplete request: the client closed its side of the connection before the end of the request')
  const versions = gw.logs.filter(l => l.msg === 'request completed' && l.statusCode === 505)
  assert.equal(versions.length, 1, JSON.stringify(versions))
  assert.equal(versions[0]?.level, 30)
  // Refused by Node's parser before any request object exists: one line all the same, with the
  // parser's reason and an id of its own that the client received too.
  assert.equal(malformed.status, 400)
  const id = String(malformed.headers['x-request-id'])
  assert.match(id, /^[0-9a-f-]{36}$/)
  assert.deepEqual(accessLines(gw, id).map(l => [l.statusCode, l.code, l.error]), [[400, 'GATEHOUSE_ERR_BAD_REQUEST', 'Malformed HTTP request: invalid header token']])
  // No line of any of them at error level, none with a stack; no unattributed 400 or 408 beside the requests' own lines.
  for (const l of gw.logs) {
    assert.ok((l.level as number) < 50 && !JSON.stringify(l).includes('"stack"'), JSON.stringify(l))
  }
  assert.equal(gw.logs.filter(l => l.msg === 'request completed' && l.reqId === undefined).length, 0, 'every access line has a request id')
  assert.equal(ok.requests.length, 0, 'no broken body reached the upstream')
  slow.destroy()
})
