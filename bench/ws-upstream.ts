// The WebSocket bench's upstream: echoes every message, nothing else.
// Prints {"port": N} on stdout once listening (PORT=0 picks a free port).
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { WebSocketServer } from 'ws'

const server = http.createServer((_req, res) => { res.end() })
const wss = new WebSocketServer({ server, perMessageDeflate: false })
wss.on('connection', ws => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }))
})
server.listen(Number(process.env.PORT ?? 0), process.env.HOST ?? '127.0.0.1', () => {
  console.log(JSON.stringify({ port: (server.address() as AddressInfo).port }))
})

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => {
    for (const ws of wss.clients) ws.terminate()
    server.close(() => process.exit(0))
  })
}
