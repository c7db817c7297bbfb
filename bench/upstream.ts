// The benchmark's upstream: a fixed small JSON body, keep-alive, as little work as possible.
// Prints {"port": N} on stdout once listening (PORT=0 picks a free port).
import http from 'node:http'
import type { AddressInfo } from 'node:net'

const BODY = Buffer.from(JSON.stringify({ ok: true, service: 'bench-upstream', items: [1, 2, 3] }))
const HEADERS = { 'content-type': 'application/json', 'content-length': String(BODY.length) }

const server = http.createServer((req, res) => {
  req.resume()
  res.writeHead(200, HEADERS)
  res.end(BODY)
})
server.keepAliveTimeout = 65_000
server.listen(Number(process.env.PORT ?? 0), process.env.HOST ?? '127.0.0.1', () => {
  console.log(JSON.stringify({ port: (server.address() as AddressInfo).port }))
})

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => {
    server.closeAllConnections()
    server.close(() => process.exit(0))
  })
}
