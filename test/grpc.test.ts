// gRPC passthrough end to end: @grpc/grpc-js clients → a gateway process (h2c port) → grpc-js
// servers on 127.0.0.1 (h2c targets). Messages are raw bytes (identity serializers): no .proto.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import * as grpc from '@grpc/grpc-js'
import { SignJWT } from 'jose'
import { closedPort, gateway, listenerPort, send, type GatewayProcess, type Owner } from './helpers.js'

const bytes = (b: Buffer): Buffer => b

function method (name: string, requestStream: boolean, responseStream: boolean): grpc.MethodDefinition<Buffer, Buffer> {
  return { path: `/test.Echo/${name}`, requestStream, responseStream, requestSerialize: bytes, requestDeserialize: bytes, responseSerialize: bytes, responseDeserialize: bytes }
}

const SERVICE = {
  Unary: method('Unary', false, false),
  Missing: method('Missing', false, false),
  Slow: method('Slow', false, false),
  Count: method('Count', false, true),
  Chat: method('Chat', true, true)
}

interface GrpcUpstream {
  target: string
  /** Metadata of every call, in order. */
  calls: grpc.Metadata[]
  /** Slow calls the server saw cancelled, with when. */
  cancelledAt: number[]
  /** The deadline each Slow call arrived with. */
  deadlines: Array<Date | number>
}

/** A grpc-js server (h2c): Unary echoes with metadata and trailers, Missing answers NOT_FOUND, Slow answers after 1 s, Count streams 100 numbers, Chat echoes each message. */
async function grpcUpstream (t: Owner): Promise<GrpcUpstream> {
  const server = new grpc.Server()
  const u: GrpcUpstream = { target: '', calls: [], cancelledAt: [], deadlines: [] }
  const trailer = (): grpc.Metadata => { const m = new grpc.Metadata(); m.set('x-served-by', 'echo'); return m }
  server.addService(SERVICE, {
    Unary: (call: grpc.ServerUnaryCall<Buffer, Buffer>, done: grpc.sendUnaryData<Buffer>) => {
      u.calls.push(call.metadata)
      call.sendMetadata(new grpc.Metadata())
      done(null, Buffer.concat([Buffer.from('echo:'), call.request]), trailer())
    },
    Missing: (call: grpc.ServerUnaryCall<Buffer, Buffer>, done: grpc.sendUnaryData<Buffer>) => {
      u.calls.push(call.metadata)
      done({ code: grpc.status.NOT_FOUND, details: 'no such order: 42' })
    },
    Slow: (call: grpc.ServerUnaryCall<Buffer, Buffer>, done: grpc.sendUnaryData<Buffer>) => {
      u.calls.push(call.metadata)
      u.deadlines.push(call.getDeadline())
      const timer = setTimeout(() => done(null, Buffer.from('late')), 1000)
      call.on('cancelled', () => { clearTimeout(timer); u.cancelledAt.push(performance.now()) })
    },
    Count: (call: grpc.ServerWritableStream<Buffer, Buffer>) => {
      u.calls.push(call.metadata)
      for (let i = 0; i < 100; i++) call.write(Buffer.from(String(i)))
      call.end(trailer())
    },
    Chat: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
      u.calls.push(call.metadata)
      call.on('data', (m: Buffer) => call.write(Buffer.concat([Buffer.from('re:'), m])))
      call.on('end', () => call.end(trailer()))
    }
  })
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => err === null ? resolve(p) : reject(err)))
  u.target = `http://127.0.0.1:${port}`
  t.after(() => server.forceShutdown())
  return u
}

function grpcRoutes (targets: string[], route = ''): string {
  return ['targets:', ...targets.map(url => `  - { url: ${url}, protocol: h2c }`), 'routes:', `  - { path: /test.Echo, grpc: true${route} }`, 'circuitBreaker: { consecutiveFailures: 1, openFor: 1m }', 'retry: { attempts: 0 }', ''].join('\n')
}

async function client (t: Owner, gw: GatewayProcess): Promise<grpc.Client> {
  const c = new grpc.Client(`127.0.0.1:${await listenerPort(gw, 'h2c')}`, grpc.credentials.createInsecure())
  t.after(() => c.close())
  return c
}

interface UnaryResult { error: grpc.ServiceError | null, value: Buffer | undefined, trailers: grpc.Metadata | undefined, ms: number }

async function unary (c: grpc.Client, name: string, body: string, options: { metadata?: grpc.Metadata, deadlineMs?: number } = {}): Promise<UnaryResult> {
  const began = performance.now()
  return await new Promise(resolve => {
    let trailers: grpc.Metadata | undefined
    const call = c.makeUnaryRequest(`/test.Echo/${name}`, bytes, bytes, Buffer.from(body), options.metadata ?? new grpc.Metadata(),
      options.deadlineMs === undefined ? {} : { deadline: new Date(Date.now() + options.deadlineMs) },
      (error, value) => { setImmediate(() => resolve({ error, value, trailers, ms: performance.now() - began })) })
    call.on('status', (s: grpc.StatusObject) => { trailers = s.metadata })
  })
}

test('unary: the answer, its trailers and the headers the upstream sees; metadata goes both ways', async t => {
  const up = await grpcUpstream(t)
  const gw = await gateway(t, { 'echo.yaml': grpcRoutes([up.target]) }, { H2C_PORT: '0' })
  const c = await client(t, gw)
  const md = new grpc.Metadata()
  md.set('x-tenant', 'acme')
  const r = await unary(c, 'Unary', 'hello', { metadata: md })
  assert.equal(r.error, null)
  assert.equal(r.value?.toString(), 'echo:hello')
  assert.deepEqual(r.trailers?.get('x-served-by'), ['echo'])
  const seen = up.calls[0] as grpc.Metadata
  assert.deepEqual(seen.get('x-tenant'), ['acme'])
  assert.deepEqual(seen.get('x-forwarded-for'), ['127.0.0.1'])
  assert.match(String(seen.get('x-request-id')[0]), /^[0-9a-f-]{36}$/)
  const line = await gw.waitForLog(l => l.url === '/test.Echo/Unary')
  assert.equal(line.statusCode, 200)
  assert.equal(line.target, up.target)
})

test('streaming: 100 server-streamed messages in order with their trailers; a bidirectional stream echoes 50 messages in order', async t => {
  const up = await grpcUpstream(t)
  const gw = await gateway(t, { 'echo.yaml': grpcRoutes([up.target]) }, { H2C_PORT: '0' })
  const c = await client(t, gw)
  const count = c.makeServerStreamRequest('/test.Echo/Count', bytes, bytes, Buffer.from('go'))
  const got: string[] = []
  count.on('data', (m: Buffer) => got.push(m.toString()))
  const status = await new Promise<grpc.StatusObject>(resolve => count.on('status', resolve))
  assert.equal(status.code, grpc.status.OK)
  assert.deepEqual(got, Array.from({ length: 100 }, (_, i) => String(i)))
  assert.deepEqual(status.metadata.get('x-served-by'), ['echo'])

  const chat = c.makeBidiStreamRequest('/test.Echo/Chat', bytes, bytes)
  const replies: string[] = []
  chat.on('data', (m: Buffer) => replies.push(m.toString()))
  // One message at a time, each after the echo of the one before: both directions open at once.
  for (let i = 0; i < 50; i++) {
    const echoed = new Promise(resolve => chat.once('data', resolve))
    chat.write(Buffer.from(`m${i}`))
    await echoed
  }
  chat.end()
  const chatStatus = await new Promise<grpc.StatusObject>(resolve => chat.on('status', resolve))
  assert.equal(chatStatus.code, grpc.status.OK)
  assert.deepEqual(replies, Array.from({ length: 50 }, (_, i) => `re:m${i}`))
})

test('statuses: the upstream\'s NOT_FOUND with its message; a 200 ms deadline against a 1 s handler is DEADLINE_EXCEEDED in about 250 ms and the upstream call is cancelled', async t => {
  const up = await grpcUpstream(t)
  const gw = await gateway(t, { 'echo.yaml': grpcRoutes([up.target]) }, { H2C_PORT: '0' })
  const c = await client(t, gw)
  const missing = await unary(c, 'Missing', 'x')
  assert.equal(missing.error?.code, grpc.status.NOT_FOUND)
  assert.equal(missing.error?.details, 'no such order: 42')

  const slow = await unary(c, 'Slow', 'x', { deadlineMs: 200 })
  assert.equal(slow.error?.code, grpc.status.DEADLINE_EXCEEDED)
  assert.ok(slow.ms < 400, `DEADLINE_EXCEEDED after ${Math.round(slow.ms)} ms`)
  // The upstream is told what is left of the deadline: at most the client's 200 ms.
  const deadline = up.deadlines[0] ?? Infinity
  const left = (typeof deadline === 'number' ? deadline : deadline.getTime()) - Date.now()
  assert.ok(left < 200, `the upstream's deadline was ${left} ms away`)
  const began = performance.now() - slow.ms
  await new Promise(resolve => setTimeout(resolve, 300))
  assert.equal(up.cancelledAt.length, 1, 'the upstream call was cancelled')
  assert.ok((up.cancelledAt[0] as number) - began < 500, `cancelled ${Math.round((up.cancelledAt[0] as number) - began)} ms after the call began`)

  // The route's timeouts.request bounds the call too, when it is the shorter.
  const gwShort = await gateway(t, { 'echo.yaml': grpcRoutes([up.target]) + 'timeouts: { request: 300ms }\n' }, { H2C_PORT: '0' })
  const short = await unary(await client(t, gwShort), 'Slow', 'x', { deadlineMs: 5000 })
  assert.equal(short.error?.code, grpc.status.DEADLINE_EXCEEDED)
  assert.ok(short.ms >= 280 && short.ms < 900, `answered after ${Math.round(short.ms)} ms`)
})

test('the gateway\'s own refusals are gRPC statuses: UNAVAILABLE (unreachable, then breaker open), RESOURCE_EXHAUSTED, UNAUTHENTICATED, UNIMPLEMENTED', async t => {
  const dead = `http://127.0.0.1:${await closedPort()}`
  const secret = 'a-shared-secret-of-at-least-32-bytes!!'
  const up = await grpcUpstream(t)
  const gw = await gateway(t, {
    'dead.yaml': grpcRoutes([dead]).replace('/test.Echo', '/dead.Service'),
    'limited.yaml': grpcRoutes([up.target], ', rateLimit: { max: 1, window: 1m }').replace('/test.Echo', '/test.Echo/Unary'),
    'secured.yaml': grpcRoutes([up.target], ', auth: { jwt: { secret: { env: GRPC_SECRET }, issuer: https://issuer.test, audience: echo } }').replace('/test.Echo', '/test.Echo/Count')
  }, { H2C_PORT: '0', GRPC_SECRET: secret })
  const c = await client(t, gw)
  const call = async (path: string): Promise<UnaryResult> => {
    const began = performance.now()
    return await new Promise(resolve => {
      c.makeUnaryRequest(path, bytes, bytes, Buffer.from('x'), (error, value) => resolve({ error, value, trailers: undefined, ms: performance.now() - began }))
    })
  }
  const first = await call('/dead.Service/Call')
  assert.equal(first.error?.code, grpc.status.UNAVAILABLE)
  assert.match(first.error?.details ?? '', /dead/)
  const open = await call('/dead.Service/Call')
  assert.equal(open.error?.code, grpc.status.UNAVAILABLE)
  assert.match(open.error?.details ?? '', /circuit breakers are open/)

  assert.equal((await call('/test.Echo/Unary')).error, null)
  const limited = await call('/test.Echo/Unary')
  assert.equal(limited.error?.code, grpc.status.RESOURCE_EXHAUSTED)

  const anonymous = c.makeServerStreamRequest('/test.Echo/Count', bytes, bytes, Buffer.from('x'))
  anonymous.on('data', () => {})
  anonymous.on('error', () => {})
  const refused = await new Promise<grpc.StatusObject>(resolve => anonymous.on('status', resolve))
  assert.equal(refused.code, grpc.status.UNAUTHENTICATED)
  const token = await new SignJWT({ iss: 'https://issuer.test', aud: 'echo', sub: 'svc' }).setProtectedHeader({ alg: 'HS256' }).setExpirationTime('5m').sign(Buffer.from(secret))
  const md = new grpc.Metadata()
  md.set('authorization', `Bearer ${token}`)
  const allowed = c.makeServerStreamRequest('/test.Echo/Count', bytes, bytes, Buffer.from('x'), md)
  allowed.on('data', () => {})
  assert.equal((await new Promise<grpc.StatusObject>(resolve => allowed.on('status', resolve))).code, grpc.status.OK)

  const unknown = await call('/nowhere.Service/Call')
  assert.equal(unknown.error?.code, grpc.status.UNIMPLEMENTED)

  // Over HTTP/1.1 a gRPC route is refused in plain JSON: no gRPC client speaks it.
  const plain = await send(gw, '/dead.Service/Call', { method: 'POST', headers: { 'content-type': 'application/grpc' }, body: Buffer.alloc(5) })
  assert.equal(plain.status, 400)
  assert.equal(plain.json.code, 'GATEHOUSE_ERR_GRPC_NEEDS_HTTP2')
})
