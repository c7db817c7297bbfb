// WebSocket tunnels end to end: ws clients → a gateway process → ws servers on 127.0.0.1.
import assert from 'node:assert/strict'
import { once } from 'node:events'
import { readFile } from 'node:fs/promises'
import http, { type IncomingMessage } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'node:test'
import { SignJWT } from 'jose'
import WebSocket, { WebSocketServer } from 'ws'
import { gateway, listenerPort, metric, removeRoute, selfSigned, send, until, within, writeRoutes, type Owner } from './helpers.js'

interface WsUpstream {
  url: string
  port: number
  /** Handshakes seen, in order. */
  handshakes: IncomingMessage[]
  /** Server-side sockets of open connections. */
  open: Set<WebSocket>
  /** Server sides closed so far, with when they closed. */
  closedAt: number[]
}

/** A ws server that echoes every message and picks the last subprotocol offered; `/deny` answers 403. */
async function wsUpstream (t: Owner): Promise<WsUpstream> {
  const server = http.createServer((_req, res) => { res.end('plain') })
  const wss = new WebSocketServer({ noServer: true, handleProtocols: offered => [...offered].at(-1) ?? false })
  const u: WsUpstream = { url: '', port: 0, handshakes: [], open: new Set(), closedAt: [] }
  server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    u.handshakes.push(req)
    if (req.url?.endsWith('/deny') === true) {
      socket.end('HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 19\r\n\r\nnot for you, sorry.')
      return
    }
    wss.handleUpgrade(req, socket, head, ws => {
      u.open.add(ws)
      ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }))
      ws.on('close', () => { u.open.delete(ws); u.closedAt.push(performance.now()) })
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  u.port = (server.address() as AddressInfo).port
  u.url = `http://127.0.0.1:${u.port}`
  t.after(async () => {
    for (const ws of wss.clients) ws.terminate()
    server.closeAllConnections()
    await new Promise(resolve => server.close(resolve))
  })
  return u
}

interface Refusal { status: number, headers: http.IncomingHttpHeaders, body: string }

/** Opens a client WebSocket; resolves with it once open, or with the HTTP answer that refused it. */
async function connect (gw: { port: number }, path: string, options: { protocols?: string[], headers?: Record<string, string> } = {}): Promise<WebSocket | Refusal> {
  const ws = new WebSocket(`ws://127.0.0.1:${gw.port}${path}`, options.protocols ?? [], { headers: options.headers, maxPayload: 8 << 20 })
  return await new Promise((resolve, reject) => {
    ws.once('open', () => resolve(ws))
    ws.once('unexpected-response', (_req, res) => {
      let body = ''
      res.on('data', (c: Buffer) => { body += c.toString() })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }))
    })
    ws.once('error', reject)
  })
}

async function open (gw: { port: number }, path: string, options?: Parameters<typeof connect>[2]): Promise<WebSocket> {
  const ws = await connect(gw, path, options)
  assert.ok(ws instanceof WebSocket, `expected a tunnel, got ${JSON.stringify(ws instanceof WebSocket ? '' : ws)}`)
  return ws
}

async function refused (gw: { port: number }, path: string, options?: Parameters<typeof connect>[2]): Promise<Refusal> {
  const answer = await connect(gw, path, options)
  if (answer instanceof WebSocket) {
    answer.terminate()
    assert.fail('expected the handshake to be refused, got a tunnel')
  }
  return answer
}

async function echoed (ws: WebSocket, data: string | Buffer): Promise<{ data: Buffer, binary: boolean }> {
  const reply = once(ws, 'message') as Promise<[Buffer, boolean]>
  ws.send(data)
  const [got, binary] = await reply
  return { data: got, binary }
}

function wsRoutes (targets: string[], extra = '', routeExtra = ''): string {
  return [
    'targets:', ...targets.map(url => `  - url: ${url}`),
    'routes:', `  - { path: /ws, websocket: true${routeExtra} }`, '  - { path: /plain }',
    extra
  ].join('\n') + '\n'
}

test('1 MiB text and binary messages are echoed unchanged; subprotocols a, b both reach the upstream and the client gets its choice', async t => {
  const up = await wsUpstream(t)
  const gw = await gateway(t, { 'chat.yaml': wsRoutes([up.url]) })
  const ws = await open(gw, '/ws/room?x=1', { protocols: ['a', 'b'] })
  t.after(() => ws.terminate())
  assert.equal(ws.protocol, 'b')
  const seen = up.handshakes[0] as IncomingMessage
  assert.equal(seen.url, '/ws/room?x=1')
  assert.equal(seen.headers['sec-websocket-protocol'], 'a,b')
  assert.match(String(seen.headers['sec-websocket-extensions']), /permessage-deflate/)
  assert.equal(seen.headers['x-forwarded-for'], '127.0.0.1')
  assert.match(String(seen.headers['x-request-id']), /^[0-9a-f-]{36}$/)

  const text = 'é'.repeat(512 * 1024) // 1 MiB of UTF-8
  const textBack = await echoed(ws, text)
  assert.equal(textBack.binary, false)
  assert.equal(textBack.data.toString(), text)
  const binary = Buffer.alloc(1 << 20)
  for (let i = 0; i < binary.length; i++) binary[i] = (i * 7919) & 0xff
  const binaryBack = await echoed(ws, binary)
  assert.equal(binaryBack.binary, true)
  assert.ok(binaryBack.data.equals(binary))

  assert.equal(await metric(gw, 'websocket_connections_active', { upstream: 'chat', target: up.url }), 1)
  ws.close()
  await until('the tunnel closes', async () => await metric(gw, 'websocket_connections_active', { upstream: 'chat', target: up.url }) === 0)
  // One access line for the tunnel, written when it closed, with the 101.
  const line = await gw.waitForLog(l => l.url === '/ws/room?x=1')
  assert.equal(line.statusCode, 101)
  assert.equal(line.target, up.url)
  assert.equal(await metric(gw, 'websocket_upgrades_total', { upstream: 'chat', outcome: 'upgraded' }), 1)
})

test('refusals: the upstream\'s 403 reaches the client with its body; a route without websocket answers 400; an h2c offer is ignored', async t => {
  const up = await wsUpstream(t)
  const gw = await gateway(t, { 'chat.yaml': wsRoutes([up.url]) })
  const denied = await refused(gw, '/ws/deny')
  assert.equal(denied.status, 403)
  assert.equal(denied.body, 'not for you, sorry.')
  assert.match(String(denied.headers['x-request-id']), /^[0-9a-f-]{36}$/)

  const plain = await refused(gw, '/plain')
  assert.equal(plain.status, 400)
  assert.equal(JSON.parse(plain.body).code, 'GATEHOUSE_ERR_UPGRADE_REFUSED')
  assert.match(JSON.parse(plain.body).message, /route \/plain of upstream chat does not accept WebSocket upgrades/)
  assert.equal(up.handshakes.length, 1, 'the refused upgrade never reached the upstream')

  // curl --http2 on http:// offers h2c: served as HTTP/1.1, as if the offer were not there.
  const h2c = await send(gw, '/plain/x', { headers: { connection: 'Upgrade, HTTP2-Settings', upgrade: 'h2c', 'http2-settings': 'AAMAAABkAAQAoAAAAAIAAAAA' } })
  assert.equal(h2c.status, 200)
  assert.equal(h2c.body, 'plain')

  assert.equal(await metric(gw, 'websocket_upgrades_total', { upstream: 'chat', outcome: 'refused' }), 1)
  assert.equal(await metric(gw, 'websocket_upgrades_total', { upstream: 'chat', outcome: 'rejected' }), 1)
  assert.equal(await metric(gw, 'websocket_upgrades_total', { upstream: 'chat', outcome: 'failed' }), 0)
})

test('an authenticated route without a token answers 401 and the upstream sees no connection; with one, the tunnel opens', async t => {
  const up = await wsUpstream(t)
  const secret = 'a-shared-secret-of-at-least-32-bytes!!'
  const gw = await gateway(t, {
    'chat.yaml': wsRoutes([up.url], '', ', auth: { jwt: { secret: { env: CHAT_SECRET }, issuer: https://issuer.test, audience: chat } }')
  }, { CHAT_SECRET: secret })
  const anonymous = await refused(gw, '/ws')
  assert.equal(anonymous.status, 401)
  assert.equal(JSON.parse(anonymous.body).code, 'GATEHOUSE_ERR_AUTH_REQUIRED')
  assert.equal(up.handshakes.length, 0)

  const token = await new SignJWT({ iss: 'https://issuer.test', aud: 'chat', sub: 'ann' }).setProtectedHeader({ alg: 'HS256' }).setExpirationTime('5m').sign(Buffer.from(secret))
  const ws = await open(gw, '/ws', { headers: { authorization: `Bearer ${token}` } })
  t.after(() => ws.terminate())
  assert.equal((await echoed(ws, 'hi')).data.toString(), 'hi')
})

test('idle timeout closes both sides; pings keep a tunnel open', async t => {
  const up = await wsUpstream(t)
  const gw = await gateway(t, { 'chat.yaml': wsRoutes([up.url], 'websocket: { idleTimeout: 1s }') })
  const quiet = await open(gw, '/ws')
  const pinged = await open(gw, '/ws')
  t.after(() => { quiet.terminate(); pinged.terminate() })
  const pings = setInterval(() => pinged.ping(), 200)
  t.after(() => clearInterval(pings))
  const started = performance.now()
  await within(5000, 'the quiet tunnel is closed', once(quiet, 'close'))
  const after = performance.now() - started
  assert.ok(after >= 900 && after < 4000, `closed after ${Math.round(after)} ms, idleTimeout 1s`)
  await until('the upstream side of the quiet tunnel is closed too', () => up.open.size === 1)
  await sleep(1000)
  assert.equal(pinged.readyState, WebSocket.OPEN, 'pinged every 200 ms: still open after 2 idle timeouts')
  assert.equal((await echoed(pinged, 'still here')).data.toString(), 'still here')
  const line = await gw.waitForLog(l => l.code === 'GATEHOUSE_ERR_WEBSOCKET_IDLE')
  assert.equal(line.statusCode, 101)
  assert.equal(line.level, 30)
})

test('maxLifetime closes a tunnel that is busy', async t => {
  const up = await wsUpstream(t)
  const gw = await gateway(t, { 'chat.yaml': wsRoutes([up.url], 'websocket: { maxLifetime: 800ms }') })
  const ws = await open(gw, '/ws')
  t.after(() => ws.terminate())
  const pings = setInterval(() => ws.ping(), 100)
  t.after(() => clearInterval(pings))
  const started = performance.now()
  await within(4000, 'the tunnel is closed at its lifetime', once(ws, 'close'))
  const after = performance.now() - started
  assert.ok(after >= 700 && after < 3000, `closed after ${Math.round(after)} ms, maxLifetime 800ms`)
  const line = await gw.waitForLog(l => l.code === 'GATEHOUSE_ERR_WEBSOCKET_LIFETIME')
  assert.equal(line.statusCode, 101)
  await until('the upstream side is closed too', () => up.open.size === 0)
})

test('tunnel budget: maxPerTarget 2 refuses the third with 503 and Retry-After; 50 tunnels on one target send the next ones to the other', async t => {
  const a = await wsUpstream(t)
  const gw = await gateway(t, { 'chat.yaml': wsRoutes([a.url], 'websocket: { maxPerTarget: 2 }') })
  const two = [await open(gw, '/ws'), await open(gw, '/ws')]
  t.after(() => { for (const ws of two) ws.terminate() })
  const third = await refused(gw, '/ws')
  assert.equal(third.status, 503)
  assert.equal(third.headers['retry-after'], '1')
  assert.equal(JSON.parse(third.body).code, 'GATEHOUSE_ERR_WEBSOCKET_FULL')
  assert.equal(a.handshakes.length, 2)
  assert.equal(await metric(gw, 'websocket_upgrades_total', { upstream: 'chat', outcome: 'unavailable' }), 1)
  // A tunnel that closes frees its place.
  two[0]?.close()
  await until('the slot is free', async () => await metric(gw, 'websocket_connections_active', { upstream: 'chat', target: a.url }) === 1)
  const again = await open(gw, '/ws')
  again.terminate()

  // Saturation decides where a tunnel goes: 50 open on A (B added later), the next 20 all go to B.
  const b = await wsUpstream(t)
  const gw2 = await gateway(t, { 'chat.yaml': wsRoutes([a.url]) })
  const onA: WebSocket[] = []
  t.after(() => { for (const ws of onA) ws.terminate() })
  for (let i = 0; i < 50; i++) onA.push(await open(gw2, '/ws'))
  await writeRoutes(gw2.routesDir, { 'chat.yaml': wsRoutes([a.url, b.url]) })
  gw2.signal('SIGHUP')
  await gw2.waitForLog(l => l.msg === 'route table reloaded')
  const before = b.handshakes.length
  for (let i = 0; i < 20; i++) onA.push(await open(gw2, '/ws'))
  assert.equal(b.handshakes.length - before, 20, 'every new tunnel went to the empty target')
  // The reload kept the 50 tunnels to A, whose target did not change.
  assert.equal(await metric(gw2, 'websocket_connections_active', { upstream: 'chat', target: a.url }), 50)
})

test('reload: tunnels to a kept target stay open; tunnels to a removed target close after closeDelay', async t => {
  const a = await wsUpstream(t)
  const b = await wsUpstream(t)
  const files = (targets: string[]) => ({ 'chat.yaml': wsRoutes(targets, 'websocket: { closeDelay: 500ms }') })
  const gw = await gateway(t, files([a.url]))
  const toA = await open(gw, '/ws')
  t.after(() => toA.terminate())
  await writeRoutes(gw.routesDir, files([b.url]))
  gw.signal('SIGHUP')
  await gw.waitForLog(l => l.msg === 'route table reloaded')
  const reloaded = performance.now()
  assert.equal((await echoed(toA, 'during the delay')).data.toString(), 'during the delay')
  await within(3000, 'the tunnel to the removed target closes', once(toA, 'close'))
  const after = performance.now() - reloaded
  assert.ok(after >= 400, `closed ${Math.round(after)} ms after the reload, closeDelay 500ms`)
  const line = await gw.waitForLog(l => l.code === 'GATEHOUSE_ERR_WEBSOCKET_TARGET_REMOVED')
  assert.equal(line.target, a.url)

  const toB = await open(gw, '/ws')
  t.after(() => toB.terminate())
  await removeRoute(gw.routesDir, 'chat.yaml')
  await writeRoutes(gw.routesDir, { 'chat.yaml': wsRoutes([b.url], 'websocket: { closeDelay: 500ms }', ', methods: [GET, POST]') })
  gw.signal('SIGHUP')
  await gw.waitForLog(l => l.msg === 'route table reloaded' && l.version === 3)
  await sleep(800)
  assert.equal(toB.readyState, WebSocket.OPEN, 'a route change that keeps the target keeps its tunnels')
})

test('a client that disconnects closes the upstream side within 100 ms', async t => {
  const up = await wsUpstream(t)
  const gw = await gateway(t, { 'chat.yaml': wsRoutes([up.url]) })
  const ws = await open(gw, '/ws')
  await echoed(ws, 'x')
  assert.equal(up.open.size, 1)
  const cut = performance.now()
  ws.terminate()
  await until('the upstream side closes', () => up.closedAt.length === 1, 2000, 2)
  const took = (up.closedAt[0] as number) - cut
  assert.ok(took < 100, `upstream closed ${took.toFixed(1)} ms after the client left`)
  await until('the tunnel is no longer counted', async () => await metric(gw, 'websocket_connections_active', { upstream: 'chat', target: up.url }) === 0)
})

test('SIGTERM: new handshakes get 503 at once, open tunnels keep working until SHUTDOWN_TIMEOUT, then close, and the process exits', async t => {
  const up = await wsUpstream(t)
  const gw = await gateway(t, { 'chat.yaml': wsRoutes([up.url]) }, { SHUTDOWN_DELAY: '1s', SHUTDOWN_TIMEOUT: '1s' })
  const ws = await open(gw, '/ws')
  t.after(() => ws.terminate())
  const signalled = performance.now()
  gw.signal('SIGTERM')
  await gw.waitForLog(l => typeof l.msg === 'string' && l.msg.startsWith('draining'))
  // Within SHUTDOWN_DELAY the listener still accepts: plain requests are served, handshakes sent elsewhere.
  assert.equal((await send(gw, '/plain')).status, 200)
  const late = await refused(gw, '/ws')
  assert.equal(late.status, 503)
  assert.equal(JSON.parse(late.body).code, 'GATEHOUSE_ERR_NOT_READY')
  assert.equal(late.headers['retry-after'], '5')
  assert.equal(up.handshakes.length, 1)
  assert.equal((await echoed(ws, 'while draining')).data.toString(), 'while draining')
  await within(5000, 'the tunnel is closed at SHUTDOWN_TIMEOUT', once(ws, 'close'))
  const closedAfter = performance.now() - signalled
  assert.ok(closedAfter >= 1800, `closed ${Math.round(closedAfter)} ms after SIGTERM; SHUTDOWN_DELAY + SHUTDOWN_TIMEOUT is 2000 ms`)
  assert.equal(await within(4000, 'the gateway exits', gw.exit), 1)
  assert.ok(gw.logs.some(l => l.code === 'GATEHOUSE_ERR_WEBSOCKET_SHUTDOWN'))
  await until('the upstream side is closed', () => up.open.size === 0)
})

test('backpressure: a client that stops reading makes the upstream wait, and an upstream that stops reading makes the client wait', async t => {
  const up = await wsUpstream(t)
  const gw = await gateway(t, { 'chat.yaml': wsRoutes([up.url]) })
  const ws = await open(gw, '/ws')
  t.after(() => ws.terminate())
  await echoed(ws, 'ready')
  const server = [...up.open][0] as WebSocket
  const chunk = Buffer.alloc(1 << 20)
  const total = 64
  // Upstream → client, the client not reading: what the upstream could not hand over stays with it.
  ws.pause()
  for (let i = 0; i < total; i++) server.send(chunk)
  await sleep(1000)
  const heldUpstream = server.bufferedAmount
  assert.ok(heldUpstream > 32 << 20, `the upstream still holds ${heldUpstream >> 20} MiB of ${total}: the gateway did not read it all into memory`)
  let received = 0
  ws.on('message', (data: Buffer) => { received += data.length })
  ws.resume()
  await until('the client gets everything', () => received === total << 20, 20_000)

  // Client → upstream, the upstream not reading.
  server.pause()
  for (let i = 0; i < total; i++) ws.send(chunk)
  await sleep(1000)
  const heldClient = ws.bufferedAmount
  assert.ok(heldClient > 32 << 20, `the client still holds ${heldClient >> 20} MiB of ${total}`)
  server.resume()
  await until('the upstream echoes it all back', () => received === 2 * total << 20, 30_000)
})

test('wss on TLS_PORT: the same route, the same tunnel, X-Forwarded-Proto https', async t => {
  const up = await wsUpstream(t)
  const pem = await selfSigned(t)
  const gw = await gateway(t, { 'chat.yaml': wsRoutes([up.url]) }, { TLS_PORT: '0', TLS_CERT_FILE: pem.cert, TLS_KEY_FILE: pem.key })
  const port = await listenerPort(gw, 'TLS')
  const ws = new WebSocket(`wss://127.0.0.1:${port}/ws`, { ca: await readFile(pem.cert) })
  t.after(() => ws.terminate())
  await within(5000, 'the tunnel opens', once(ws, 'open'))
  assert.equal((await echoed(ws, 'over TLS')).data.toString(), 'over TLS')
  assert.equal(up.handshakes[0]?.headers['x-forwarded-proto'], 'https')
})
