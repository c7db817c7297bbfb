// The WebSocket part of `npm run bench`: echo round trips of small messages over tunnels through
// a Gatehouse process, against the same echo server connected to directly and through the least
// tunnel a Node process can make (bench/ws-bare-proxy.ts), in one run (bench/protocol-rounds.ts).
// One round trip is a message each way through the proxy.
//
//   npm run bench -- --only websocket     # alone; a full `npm run bench` runs it after the HTTP subjects
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { once } from 'node:events'
import os from 'node:os'
import { join } from 'node:path'
import WebSocket from 'ws'
import { Children, cleanEnv } from './procs.js'
import { DIST, portOf, roundsTable, runRounds, startGatehouse, type ProtocolPath, type RoundOptions } from './protocol-rounds.js'

const CONNECTIONS = 32
const MESSAGE = Buffer.alloc(64, 'x')

/** `CONNECTIONS` clients, each sending one message and waiting for its echo, for `seconds`. */
async function echoLoad (url: string, seconds: number): Promise<number> {
  const clients = await Promise.all(Array.from({ length: CONNECTIONS }, async () => {
    const ws = new WebSocket(url, { perMessageDeflate: false })
    await once(ws, 'open')
    return ws
  }))
  let roundTrips = 0
  let running = true
  for (const ws of clients) {
    ws.on('message', () => {
      roundTrips++
      if (running) ws.send(MESSAGE)
    })
    ws.send(MESSAGE)
  }
  await new Promise(resolve => setTimeout(resolve, seconds * 1000))
  running = false
  const counted = roundTrips
  await Promise.all(clients.map(async ws => {
    ws.close()
    await once(ws, 'close')
  }))
  return counted
}

/** Runs the rounds; resolves with the Markdown table. */
export async function benchWebSocket (o: RoundOptions): Promise<string> {
  const children = new Children()
  const dir = await mkdtemp(join(os.tmpdir(), 'gatehouse-bench-ws-'))
  try {
    const server = children.spawn('ws-upstream', process.execPath, [join(DIST, 'bench', 'ws-upstream.js')], { env: cleanEnv({}), cwd: dir, stdout: 'pipe' })
    const serverPort = await portOf(server)
    await writeFile(join(dir, 'ws.yaml'), `targets:\n  - url: http://127.0.0.1:${serverPort}\nroutes:\n  - { path: /ws, websocket: true }\n`)
    const gateway = startGatehouse(children, dir)
    const bare = children.spawn('ws-bare-proxy', process.execPath, [join(DIST, 'bench', 'ws-bare-proxy.js')], { env: cleanEnv({ UPSTREAM_PORT: String(serverPort) }), cwd: dir, stdout: 'pipe' })
    const path = (name: string, label: string, port: number, proxy: ProtocolPath['proxy']): ProtocolPath =>
      ({ name, label, proxy, load: async seconds => await echoLoad(`ws://127.0.0.1:${port}/ws`, seconds) })
    const paths = [
      path('direct', 'direct to the echo server', serverPort, undefined),
      path('bare', 'bare Node tunnel (upgrade + socket.pipe)', await portOf(bare), bare),
      path('gatehouse', 'through Gatehouse', await portOf(gateway), gateway)
    ]
    o.progress(`websocket: ${CONNECTIONS} connections, ${MESSAGE.length}-byte messages echoed; ${o.rounds} rounds x ${o.durationS} s per path`)
    const results = await runRounds('websocket', paths, server, o)
    return roundsTable(`WebSocket echo: ${CONNECTIONS} connections, ${MESSAGE.length}-byte messages, one in flight per connection (medians); a round trip is a message each way`, 'round trip', paths, results, 'bare')
  } finally {
    await children.stopAll()
    await rm(dir, { recursive: true, force: true })
  }
}
