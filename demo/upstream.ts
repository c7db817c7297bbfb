// A tiny demo service: echoes each request as JSON; paths starting /delay answer after ?ms=
// (default 1000). node:http only, so it runs anywhere Node does (npm run demo, docker compose).
//   PORT=9001 NAME=echo-a node dist/demo/upstream.js
import http from 'node:http'
import { stopOnSignals } from './stop.js'

const NAME = process.env.NAME ?? 'demo'
const PORT = Number(process.env.PORT ?? 9001)
const HOST = process.env.HOST ?? '0.0.0.0'
const MAX_DELAY_MS = 60_000

if (!Number.isInteger(PORT) || PORT < 0 || PORT > 65535) {
  console.error(`${NAME}: PORT must be a port number, got "${process.env.PORT}"`)
  process.exit(1)
}

const server = http.createServer((req, res) => {
  // The body is not echoed, but it is read so keep-alive connections stay usable.
  req.resume()
  const answer = (): void => {
    const body = JSON.stringify({ service: NAME, port: PORT, method: req.method, url: req.url, headers: req.headers })
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
    res.end(body)
  }
  const url = new URL(req.url ?? '/', 'http://localhost')
  if (!url.pathname.startsWith('/delay')) {
    answer()
    return
  }
  const asked = Number(url.searchParams.get('ms') ?? 1000)
  const ms = Number.isFinite(asked) ? Math.min(Math.max(asked, 0), MAX_DELAY_MS) : 1000
  const timer = setTimeout(answer, ms)
  res.once('close', () => clearTimeout(timer))
})
server.keepAliveTimeout = 65_000

server.on('error', err => {
  console.error(`${NAME}: cannot listen on ${HOST}:${PORT}: ${err.message}`)
  process.exit(1)
})
server.listen(PORT, HOST, () => {
  console.log(`${NAME} listening on http://${HOST}:${PORT}`)
})

stopOnSignals(server, NAME)
