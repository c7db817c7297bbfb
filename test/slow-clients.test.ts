// Slow clients must not hold upstream slots: a response up to the route's responseBuffer is read
// ahead of a client that reads slowly, so the upstream request ends and frees its slot; a client
// that reads slower than MIN_DATA_RATE is cut after MIN_DATA_RATE_GRACE, and a request it still
// holds is cancelled. Real sockets that stop reading, a real upstream streaming a large body.
import { strict as assert } from 'node:assert'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { readFile } from 'node:fs/promises'
import net from 'node:net'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { gateway, metric, send, until, upstream, within } from './helpers.js'

const BIG = 24 * 1024 * 1024
// On loopback the kernel's socket buffers take 2–4 MB of a response from the gateway by
// themselves, however slowly the client reads: a slow reader of 8 MB leaves the gateway holding
// the rest (with the route's responseBuffer at 8 MB), a slow reader of 24 MB makes the upstream wait.
const EIGHT_MB = 8 * 1024 * 1024
const CHUNK = Buffer.alloc(64 * 1024, 'x')

/**
 * A client that reads 16 bytes every 2 s with a receive buffer of about 1 KB (slowhttptest -X
 * does the same; Node cannot shrink a TCP socket's receive buffer). Resolves with the bytes it
 * read and how it ended ('reset', 'eof', or 'gave up' after `maxMs`).
 */
function slowReader (t: { after: (fn: () => void) => void }, port: number, path: string, maxMs: number): { done: Promise<{ bytes: number, end: string }> } {
  const script = [
    'import socket, sys, time',
    's = socket.socket()',
    's.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)',
    `s.connect(("127.0.0.1", ${port}))`,
    `s.sendall(b"GET ${path} HTTP/1.1\\r\\nHost: gw\\r\\n\\r\\n")`,
    `stop = time.time() + ${maxMs / 1000}`,
    'n, end = 0, "gave up"',
    'while time.time() < stop:',
    '    try:',
    '        b = s.recv(16)',
    '    except ConnectionResetError:',
    '        end = "reset"; break',
    '    if not b:',
    '        end = "eof"; break',
    '    n += len(b)',
    // Linux hands queued bytes out before a reset's error; SO_ERROR tells of the reset at once.
    '    if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 104:',
    '        end = "reset"; break',
    '    time.sleep(2)',
    'print(n, end)'
  ].join('\n')
  const child = spawn('python3', ['-c', script], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.after(() => child.kill())
  let out = ''
  child.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
  const done = once(child, 'exit').then(() => {
    const [bytes, end] = out.trim().split(' ')
    return { bytes: Number(bytes), end: end ?? '' }
  })
  return { done }
}

test('slow read: two clients reading an 8 MB response 16 bytes every 2 s hold no slot of maxConnections 2 (the response is read ahead), normal requests all pass, and the readers are cut after the grace', async t => {
  const origin = await bigUpstream(t)
  const gw = await gateway(t, { 'svc.yaml': `targets:\n  - url: ${origin.url}\n    maxConnections: 2\nroutes:\n  - path: /svc\n    responseBuffer: 8mb\n` }, { MIN_DATA_RATE_GRACE: '2s' })
  const began = Date.now()
  const readers = [0, 1].map(() => slowReader(t, gw.port, '/svc/8mb', 15_000))
  await until('the upstream sent both responses', () => origin.requests.filter(r => r.url === '/svc/8mb').length === 2)
  const state = { upstream: 'svc', target: origin.url }
  await until('both responses are read ahead: no slot held', async () => await metric(gw, 'upstream_active_connections', state) === 0)
  const held = await metric(gw, 'client_buffer_bytes', { direction: 'response' }) ?? 0
  assert.ok(held > 0 && held <= 2 * EIGHT_MB, `${held} bytes read ahead for the two readers (the kernel holds the rest)`)
  // Normal requests, every 100 ms while the readers are in their grace and until they are cut.
  const statuses: number[] = []
  while (await metric(gw, 'client_slow_total', { direction: 'response' }) !== 2) {
    assert.ok(Date.now() - began < 8000, 'both readers are cut within the grace (2 s) and a few seconds')
    statuses.push((await send(gw, '/svc/normal')).status)
    await sleep(100)
  }
  assert.ok(statuses.length >= 10, `${statuses.length} normal requests while the readers were connected`)
  assert.deepEqual([...new Set(statuses)], [200], 'no normal request was refused')
  for (const r of readers) {
    const { bytes, end } = await within(10_000, 'the reader sees its connection end', r.done)
    assert.equal(end, 'reset', 'the connection was reset, not left to the kernel to deliver')
    assert.ok(bytes < EIGHT_MB, `${bytes} bytes of ${EIGHT_MB}: cut short`)
  }
  assert.equal(origin.requests.filter(r => r.url === '/svc/8mb').length, 2, 'each reader was one upstream request')
  assert.equal(await metric(gw, 'client_buffer_bytes', { direction: 'response' }), 0, 'the memory read ahead is given back')
  const cut = gw.logs.filter(l => l.code === 'GATEHOUSE_ERR_CLIENT_TOO_SLOW')
  assert.equal(cut.length, 2, 'one access line each, with the reason')
  assert.equal(cut[0]?.level, 30)
})

test('read-ahead has bounds: a route with responseBuffer 0, or RESPONSE_BUFFER_MEMORY spent, makes the upstream wait for the client (the slot is held until the reader is cut)', async t => {
  const origin = await bigUpstream(t)
  const state = { upstream: 'svc', target: origin.url }
  for (const [route, env] of [['    responseBuffer: 0\n', {}], ['', { RESPONSE_BUFFER_MEMORY: '1mb' }]] as const) {
    const gw = await gateway(t, { 'svc.yaml': `targets:\n  - url: ${origin.url}\n    maxConnections: 1\nroutes:\n  - path: /svc\n${route}` }, { MIN_DATA_RATE_GRACE: '2s', ...env })
    const reader = slowReader(t, gw.port, '/svc/big', 15_000)
    await until('the reader holds the slot', async () => await metric(gw, 'upstream_active_connections', state) === 1)
    await sleep(500)
    assert.equal(await metric(gw, 'upstream_active_connections', state), 1, `still held (${route.trim() || JSON.stringify(env)})`)
    assert.equal((await send(gw, '/svc/normal')).status, 503)
    await until('the reader is cut', async () => await metric(gw, 'client_slow_total', { direction: 'response' }) === 1, 8000, 100)
    await until('the slot is free', async () => await metric(gw, 'upstream_active_connections', state) === 0)
    assert.equal((await send(gw, '/svc/normal')).status, 200)
    assert.equal((await within(10_000, 'the reader ends', reader.done)).end, 'reset')
  }
})

test('slow read past the read-ahead: clients that stop reading a 24 MB response hold their slots through the grace, then are cut, their slots freed; normal requests then pass', async t => {
  const origin = await bigUpstream(t)
  const gw = await gateway(t, { 'svc.yaml': `targets:\n  - url: ${origin.url}\n    maxConnections: 2\nroutes:\n  - path: /svc\n` }, { MIN_DATA_RATE_GRACE: '1s' })

  // Two clients that stop reading once their socket buffers are full. (Node cannot read a TCP
  // socket 16 bytes at a time: each read refills its buffer from the kernel, 64 KB at once.)
  const readers = [0, 1].map(() => {
    const socket = net.connect(gw.port, '127.0.0.1')
    socket.on('error', () => {})
    t.after(() => socket.destroy())
    socket.write('GET /svc/big HTTP/1.1\r\nHost: gw\r\n\r\n')
    socket.pause()
    // Not events.once: it rejects on the 'error' (ECONNRESET) that comes before the close.
    return { socket, closed: new Promise<void>(resolve => socket.once('close', () => { resolve() })) }
  })
  const state = { upstream: 'svc', target: origin.url }
  await until('both readers hold a slot', async () => await metric(gw, 'upstream_active_connections', state) === 2)
  assert.equal((await send(gw, '/svc/normal')).status, 503, 'both slots are held while the readers are in their grace')

  // A paused socket notices no close: the gateway's figures say when it cut them.
  const began = Date.now()
  await until('both readers are cut', async () => await metric(gw, 'client_slow_total', { direction: 'response' }) === 2, 5000, 100)
  const waited = Date.now() - began
  assert.ok(waited < 4000, `cut ${waited} ms after the slots were full (grace 1 s, checked every second)`)
  await until('the slots are free', async () => await metric(gw, 'upstream_active_connections', state) === 0)
  // Reading again, each client finds its response cut short and its connection closed.
  for (const r of readers) {
    let received = 0
    r.socket.on('data', (chunk: Buffer) => { received += chunk.length })
    r.socket.resume()
    await within(5000, 'the reader sees its connection closed', r.closed)
    assert.ok(received < BIG, `${received} bytes of ${BIG}: cut short`)
  }
  assert.equal(await metric(gw, 'client_slow_total', { direction: 'response' }), 2)
  for (let i = 0; i < 5; i++) assert.equal((await send(gw, '/svc/normal')).status, 200)
  assert.equal(origin.requests.filter(r => r.url === '/svc/big').length, 2, 'each slow reader was one upstream request')

  const cut = gw.logs.filter(l => l.code === 'GATEHOUSE_ERR_CLIENT_TOO_SLOW')
  assert.equal(cut.length, 2, 'one access line each, with the reason')
  assert.equal(cut[0]?.level, 30, 'an access line at info, not an error')
  assert.match(String(cut[0]?.error), /read the response slower than 240 bytes\/s/)
})

/** An upstream that answers /svc/big with BIG bytes and /svc/8mb with EIGHT_MB, written as fast as they are read, and anything else with ok. */
async function bigUpstream (t: Parameters<typeof upstream>[0]) {
  return await upstream(t, (req, res) => {
    const size = req.url === '/svc/big' ? BIG : req.url === '/svc/8mb' ? EIGHT_MB : 0
    if (size === 0) {
      res.end('ok')
      return
    }
    res.writeHead(200, { 'content-length': String(size) })
    let left = size
    const pump = (): void => {
      while (left > 0) {
        left -= CHUNK.length
        if (!res.write(CHUNK)) { res.once('drain', pump); return }
      }
      res.end()
    }
    res.once('close', () => { left = 0 })
    pump()
  })
}

/** Reads the whole response on `socket` (paused), taking what is there every `everyMs`; the byte count. */
async function readAll (socket: net.Socket, everyMs: number): Promise<number> {
  let received = 0
  while (!socket.readableEnded && !socket.destroyed) {
    await sleep(everyMs)
    for (let chunk = socket.read() as Buffer | null; chunk !== null; chunk = socket.read() as Buffer | null) received += chunk.length
  }
  return received
}

test('a client that keeps reading is not cut, however large the response; MIN_DATA_RATE=0 cuts nobody', async t => {
  const origin = await bigUpstream(t)
  const files = { 'svc.yaml': `targets:\n  - url: ${origin.url}\nroutes:\n  - path: /svc\n` }

  // Polling every 20 ms reads megabytes a second: above a minimum of 64 KB/s.
  const paced = await gateway(t, files, { MIN_DATA_RATE: '64kb', MIN_DATA_RATE_GRACE: '1s' })
  const a = net.connect(paced.port, '127.0.0.1')
  t.after(() => a.destroy())
  a.write('GET /svc/big HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n')
  a.pause()
  assert.ok(await within(30_000, 'the paced read', readAll(a, 20)) > BIG, 'the whole response arrived')
  assert.equal(await metric(paced, 'client_slow_total', { direction: 'response' }), 0)

  // Off: a client that reads nothing for 3 s (three times the grace) keeps its connection.
  const off = await gateway(t, files, { MIN_DATA_RATE: '0', MIN_DATA_RATE_GRACE: '1s' })
  const b = net.connect(off.port, '127.0.0.1')
  t.after(() => b.destroy())
  b.write('GET /svc/big HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n')
  b.pause()
  await sleep(3000)
  assert.equal(b.destroyed, false, 'still connected')
  assert.ok(await within(30_000, 'the late read', readAll(b, 5)) > BIG, 'the whole response arrived')
  assert.equal(await metric(off, 'client_slow_total', { direction: 'response' }), 0)
})

/** A raw connection that sends `head`, then `bytes` bytes of body every second; what it received, and its close. */
function trickle (t: { after: (fn: () => void) => void }, port: number, head: string, bytes: number) {
  const socket = net.connect(port, '127.0.0.1')
  t.after(() => socket.destroy())
  let text = ''
  socket.on('data', (chunk: Buffer) => { text += chunk.toString('latin1') })
  socket.on('error', () => {})
  const closed = new Promise<void>(resolve => socket.once('close', () => { resolve() }))
  socket.write(head)
  const timer = setInterval(() => { if (!socket.destroyed) socket.write('x'.repeat(bytes)) }, 1000)
  t.after(() => clearInterval(timer))
  return { socket, text: () => text, closed: closed.then(() => clearInterval(timer)) }
}

test('slow body: four uploads of 500 KB at 10 bytes/s hold no slot (normal requests to maxConnections 2 all pass) and end with 408 after the grace; the upstream sees none', async t => {
  const origin = await upstream(t)
  const gw = await gateway(t, { 'svc.yaml': `targets:\n  - url: ${origin.url}\n    maxConnections: 2\nroutes:\n  - path: /svc\n` }, { MIN_DATA_RATE_GRACE: '1s' })
  const head = 'POST /svc/upload HTTP/1.1\r\nHost: gw\r\nContent-Type: text/plain\r\nContent-Length: 500000\r\n\r\n'
  const began = Date.now()
  const uploads = [0, 1, 2, 3].map(() => trickle(t, gw.port, head, 10))
  const statuses: number[] = []
  for (let i = 0; i < 10; i++) {
    statuses.push((await send(gw, '/svc/normal')).status)
    await sleep(100)
  }
  assert.deepEqual([...new Set(statuses)], [200], 'no normal request was refused while the uploads trickled')
  await within(5000, 'every slow upload is answered and closed', Promise.all(uploads.map(u => u.closed)))
  assert.ok(Date.now() - began < 4500, `answered ${Date.now() - began} ms after they began (grace 1 s)`)
  for (const u of uploads) {
    assert.match(u.text(), /^HTTP\/1\.1 408 /)
    assert.match(u.text(), /"code":"GATEHOUSE_ERR_CLIENT_TOO_SLOW"/)
    assert.match(u.text(), /sent its body slower than 240 bytes\/s/)
  }
  assert.deepEqual([...new Set(origin.requests.map(r => r.url))], ['/svc/normal'], 'the uploads never reached the upstream')
  assert.equal(await metric(gw, 'client_slow_total', { direction: 'request' }), 4)
  assert.equal(await metric(gw, 'client_slow_total', { direction: 'response' }), 0)
})

test('request buffers share REQUEST_BUFFER_MEMORY: an upload that would pass it gets 503 with Retry-After, never streamed; memory comes back when an upload ends', async t => {
  const origin = await upstream(t)
  const gw = await gateway(t, { 'svc.yaml': `targets:\n  - url: ${origin.url}\nroutes:\n  - path: /svc\n` }, { REQUEST_BUFFER_MEMORY: '1mb', MIN_DATA_RATE: '0' })
  const head = (n: number): string => `PUT /svc/up HTTP/1.1\r\nHost: gw\r\nContent-Length: ${n}\r\n\r\n`
  // Two of 400 KB take 800 KB of the 1 MB while they trickle.
  const held = [trickle(t, gw.port, head(400_000), 1000), trickle(t, gw.port, head(400_000), 1000)]
  await sleep(300)
  const refused = await send(gw, '/svc/up', { method: 'PUT', body: 'z'.repeat(300_000) })
  assert.equal(refused.status, 503, refused.body)
  assert.equal(refused.json.code, 'GATEHOUSE_ERR_REQUEST_BUFFER_FULL')
  assert.equal(refused.headers['retry-after'], '1')
  assert.equal((await send(gw, '/svc/up', { method: 'PUT', body: 'small' })).status, 200, 'a body that fits still passes')
  assert.deepEqual(origin.requests.map(r => r.body.length), [5], 'the refused body was not streamed upstream')
  // One upload gives up: its 400 KB come back.
  held[0]?.socket.destroy()
  await until('the memory is back', async () => (await send(gw, '/svc/up', { method: 'PUT', body: 'z'.repeat(300_000) })).status === 200, 3000, 50)
  assert.equal(origin.requests.at(-1)?.body.length, 300_000)
})

test('memory: 200 uploads of 1 MB that stop one byte short stay within REQUEST_BUFFER_MEMORY (RSS), the rest get 503, and the gateway keeps serving', async t => {
  const origin = await upstream(t)
  const gw = await gateway(t, { 'svc.yaml': `targets:\n  - url: ${origin.url}\nroutes:\n  - path: /svc\n` }, { REQUEST_BUFFER_MEMORY: '16mb', MIN_DATA_RATE: '0' })
  const rss = async (): Promise<number> => Number(/VmRSS:\s+(\d+) kB/.exec(await readFile(`/proc/${gw.proc.pid as number}/status`, 'utf8'))?.[1]) * 1024
  assert.equal((await send(gw, '/svc/warm')).status, 200)
  const before = await rss()
  const size = 1024 * 1024
  const body = Buffer.alloc(size - 1, 'u')
  // A refused upload is answered 503 and closed while it still sends: its client may see the
  // reset before the answer, so closes are counted, and the 503s that arrived are checked.
  let refused = 0
  let answered503 = 0
  const uploads = Array.from({ length: 200 }, () => {
    const socket = net.connect(gw.port, '127.0.0.1')
    t.after(() => socket.destroy())
    socket.on('error', () => {})
    socket.on('close', () => { refused++ })
    socket.on('data', (chunk: Buffer) => { if (/^HTTP\/1\.1 503 [^]*GATEHOUSE_ERR_REQUEST_BUFFER_FULL/.test(chunk.toString('latin1'))) answered503++ })
    socket.write(`PUT /svc/up HTTP/1.1\r\nHost: gw\r\nContent-Length: ${size}\r\n\r\n`)
    socket.write(body)
    return socket
  })
  await until('every upload beyond the budget is refused', () => refused >= 200 - 16, 20_000, 50)
  await sleep(1000)
  const grown = (await rss()) - before
  // Unbounded, the 200 bodies alone would be 200 MB; the 16 held, their sockets and the heap measured 28–44 MB.
  assert.ok(grown < 96 * 1024 * 1024, `RSS grew by ${(grown / 2 ** 20).toFixed(1)} MB for 200 uploads of 1 MB (budget 16 MB)`)
  assert.equal(refused, 200 - 16, 'exactly the budget is held: 16 bodies of 1 MB')
  assert.ok(answered503 > 0, 'refused with 503 GATEHOUSE_ERR_REQUEST_BUFFER_FULL')
  assert.equal((await send(gw, '/svc/normal')).status, 200, 'still serving')
  assert.deepEqual(origin.requests.map(r => r.url), ['/svc/warm', '/svc/normal'], 'no upload reached the upstream')
  for (const socket of uploads) socket.removeAllListeners('close').destroy()
})
