// Hostile upstream responses, end to end: raw TCP upstreams answer with framing a proxy could
// read differently from the next hop (response smuggling, cache poisoning). The gateway refuses
// them with 502 before it writes anything to the client, and closes the connection they came on:
// it is never reused for another client's request. Compressed bodies pass through untouched.
import { strict as assert } from 'node:assert'
import net, { type AddressInfo } from 'node:net'
import { test, type TestContext } from 'node:test'
import { gunzipSync, gzipSync } from 'node:zlib'
import { gateway, send, upstream, within, type Reply } from './helpers.js'

// ---- a raw upstream ---------------------------------------------------------------------------

interface Connection {
  id: number
  /** Request paths received on this connection, in order. */
  requests: string[]
  closed: boolean
  /** Resolves when the connection is closed (by either side). */
  close: Promise<void>
}

interface RawUpstream {
  url: string
  connections: Connection[]
}

/**
 * A TCP server on 127.0.0.1:0 speaking just enough HTTP/1.1: it reads request heads (the gateway
 * sends GETs without a body) and writes `respond(path)` verbatim. It never closes a connection.
 */
async function rawUpstream (t: TestContext, respond: (path: string) => string): Promise<RawUpstream> {
  const upstream: RawUpstream = { url: '', connections: [] }
  const sockets = new Set<net.Socket>()
  const server = net.createServer(socket => {
    sockets.add(socket)
    let closed!: () => void
    const connection: Connection = { id: upstream.connections.length + 1, requests: [], closed: false, close: new Promise(resolve => { closed = resolve }) }
    upstream.connections.push(connection)
    socket.on('error', () => {})
    socket.on('close', () => {
      sockets.delete(socket)
      connection.closed = true
      closed()
    })
    let buffered = ''
    socket.on('data', (chunk: Buffer) => {
      buffered += chunk.toString('latin1')
      let end
      while ((end = buffered.indexOf('\r\n\r\n')) !== -1) {
        const path = buffered.slice(0, buffered.indexOf('\r\n')).split(' ')[1] ?? ''
        buffered = buffered.slice(end + 4)
        connection.requests.push(path)
        socket.write(respond(path), 'latin1')
      }
    })
  })
  server.listen(0, '127.0.0.1')
  await new Promise(resolve => server.once('listening', resolve))
  upstream.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  t.after(async () => {
    for (const socket of sockets) socket.destroy()
    await new Promise(resolve => server.close(resolve))
  })
  return upstream
}

const OK = 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok'

// ---- answers ----------------------------------------------------------------------------------

function assertBadResponse (reply: Reply): string {
  const text = reply.body
  assert.equal(reply.status, 502, `expected 502, got ${reply.status}: ${text}`)
  assert.match(String(reply.headers['content-type']), /^application\/json/)
  const body = JSON.parse(text) as { code: string, statusCode: number, message: string }
  assert.equal(body.code, 'GATEHOUSE_ERR_UPSTREAM_BAD_RESPONSE', text)
  assert.equal(body.statusCode, 502)
  return body.message
}

// ---- the cases --------------------------------------------------------------------------------

const BIG = 'x'.repeat(17_000)
const MANY = Array.from({ length: 200 }, (_, i) => `X-Filler-${i}: ${'y'.repeat(90)}\r\n`).join('')

/** name → the hostile response, and what the 502's message must say. */
const HOSTILE: Record<string, [string, RegExp]> = {
  'te-and-cl': ['HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n', /Content-Length or Transfer-Encoding/],
  'cl-and-te': ['HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n', /Content-Length can't be present with Transfer-Encoding/],
  'two-cl': ['HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!', /Content-Length or Transfer-Encoding/],
  'cl-list': ['HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!', /Content-Length or Transfer-Encoding/],
  'big-header': [`HTTP/1.1 200 OK\r\nX-Big: ${BIG}\r\nContent-Length: 2\r\n\r\nok`, /headers over the size limit/],
  'many-headers': [`HTTP/1.1 200 OK\r\n${MANY}Content-Length: 2\r\n\r\nok`, /headers over the size limit/],
  'bare-lf': ['HTTP/1.1 200 OK\r\nX-A: a\nX-Injected: b\r\nContent-Length: 2\r\n\r\nok', /Missing expected CR/],
  'bare-cr': ['HTTP/1.1 200 OK\r\nX-A: a\rX-Injected: b\r\nContent-Length: 2\r\n\r\nok', /Missing expected LF/],
  nul: ['HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\nok', /Invalid header value char/]
}

// Breakers off, so five refusals in a row do not open one; no retries unless a case asks.
const NO_RETRY = 'retry:\n  attempts: 0\ncircuitBreaker:\n  consecutiveFailures: 0\n  failureRatio: 0\n'

function route (url: string, path: string, extra = NO_RETRY): string {
  return `targets:\n  - url: ${url}\nroutes:\n  - path: ${path}\n${extra}`
}

const SUBTEST = { timeout: 15_000 }

test('hostile upstream responses through a gateway process', { timeout: 90_000 }, async t => {
  const upstreams: Record<string, RawUpstream> = {}
  const files: Record<string, string> = {}
  for (const [name, [response]] of Object.entries(HOSTILE)) {
    upstreams[name] = await rawUpstream(t, path => path.endsWith('/ok') ? OK : response)
    files[`${name}.yaml`] = route(upstreams[name].url, `/${name}`)
  }
  // A retried GET: every try on a connection of its own.
  const retried = await rawUpstream(t, path => path.endsWith('/ok') ? OK : HOSTILE['te-and-cl']![0])
  files['retried.yaml'] = route(retried.url, '/retried', 'circuitBreaker:\n  consecutiveFailures: 0\n  failureRatio: 0\n')
  const under = await rawUpstream(t, () => `HTTP/1.1 200 OK\r\nX-Big: ${'x'.repeat(15_000)}\r\nContent-Length: 2\r\n\r\nok`)
  files['under.yaml'] = route(under.url, '/under')

  const gzipBody = gzipSync(Buffer.from('{"hello":"world"}'.repeat(200)))
  const compressed = await upstream(t, (req, res) => {
    res.setHeader('content-type', 'application/json')
    res.setHeader('content-encoding', 'gzip')
    res.setHeader('vary', 'accept-encoding')
    if (req.url?.endsWith('/chunked') === true) {
      // No Content-Length: streamed in two pieces.
      res.write(gzipBody.subarray(0, 100))
      setTimeout(() => res.end(gzipBody.subarray(100)), 20)
    } else {
      res.setHeader('content-length', gzipBody.length)
      res.end(gzipBody)
    }
  })
  files['gzip.yaml'] = route(compressed.url, '/gzip')

  const gw = await gateway(t, files, { WATCH_ROUTES: 'false' })

  for (const [name, [, message]] of Object.entries(HOSTILE)) {
    await t.test(`${name}: 502 GATEHOUSE_ERR_UPSTREAM_BAD_RESPONSE, the gateway closes that connection, the next request arrives on a new one`, SUBTEST, async () => {
      const upstream = upstreams[name]!
      assert.match(assertBadResponse(await send(gw, `/${name}/bad`)), message)
      const [poisoned] = upstream.connections
      assert.ok(poisoned !== undefined)
      // The raw upstream never closes: a close is the gateway's doing.
      await within(3000, `connection ${poisoned.id} was not closed by the gateway`, poisoned.close)
      const next = await send(gw, `/${name}/ok`)
      assert.equal(next.status, 200, next.body)
      assert.equal(next.body, 'ok')
      assert.deepEqual(upstream.connections.map(c => [c.id, c.requests]), [[1, [`/${name}/bad`]], [2, [`/${name}/ok`]]])
    })
  }

  await t.test('no hostile header reached a client: the 502s are the gateway\'s own JSON', SUBTEST, async () => {
    const reply = await send(gw, '/bare-lf/bad')
    assertBadResponse(reply)
    assert.equal(reply.headers['x-injected'], undefined)
    assert.equal(reply.headers['x-a'], undefined)
  })

  await t.test('a retried GET (retry.attempts 1): each try on a connection of its own, each closed', SUBTEST, async () => {
    assertBadResponse(await send(gw, '/retried/bad'))
    await within(3000, 'a poisoned connection stayed open', Promise.all(retried.connections.map(c => c.close)))
    assert.deepEqual(retried.connections.map(c => c.requests), [['/retried/bad'], ['/retried/bad']])
    assert.equal((await send(gw, '/retried/ok')).status, 200)
    assert.equal(retried.connections.length, 3)
  })

  await t.test('headers of 15 000 bytes (under undici\'s 16 KiB) pass, and the connection is kept', SUBTEST, async () => {
    const first = await send(gw, '/under/a')
    assert.equal(first.status, 200, first.body)
    assert.equal(first.headers['x-big']?.length, 15_000)
    assert.equal((await send(gw, '/under/b')).status, 200)
    assert.deepEqual(under.connections.map(c => c.requests), [['/under/a', '/under/b']])
  })

  for (const acceptEncoding of [undefined, 'identity', 'gzip']) {
    await t.test(`a gzip body is relayed byte for byte, never inflated (Accept-Encoding: ${acceptEncoding ?? 'none'})`, SUBTEST, async () => {
      const headers = acceptEncoding === undefined ? {} : { 'accept-encoding': acceptEncoding }
      for (const path of ['/gzip/fixed', '/gzip/chunked']) {
        const reply = await send(gw, path, { headers })
        assert.equal(reply.status, 200)
        assert.equal(reply.headers['content-encoding'], 'gzip')
        assert.equal(reply.headers.vary, 'accept-encoding')
        assert.ok(reply.bytes.equals(gzipBody), `${path}: the body changed (${reply.bytes.length} bytes, expected ${gzipBody.length})`)
        if (path === '/gzip/fixed') assert.equal(reply.headers['content-length'], String(gzipBody.length))
        assert.equal(gunzipSync(reply.bytes).toString().length, 17 * 200)
      }
      assert.equal(compressed.requests.at(-1)?.headers['accept-encoding'], acceptEncoding)
    })
  }
})
