// The WebSocket bench's floor: the least a Node process can do to tunnel an upgrade. Node's HTTP
// server parses the handshake, the head is written to a TCP connection to the upstream as it came,
// and from there bytes are piped both ways (the upstream's 101 included). No pipeline, no limits.
// UPSTREAM_PORT is the echo server; prints {"port": N} on stdout once listening.
import http from 'node:http'
import net, { type AddressInfo, type Socket } from 'node:net'

const upstreamPort = Number(process.env.UPSTREAM_PORT)
const server = http.createServer((_req, res) => { res.statusCode = 404; res.end() })
server.on('upgrade', (req: http.IncomingMessage, client: Socket, head: Buffer) => {
  const upstream = net.connect(upstreamPort, '127.0.0.1')
  let lines = `${req.method ?? 'GET'} ${req.url ?? '/'} HTTP/1.1\r\n`
  for (let i = 0; i < req.rawHeaders.length; i += 2) lines += `${req.rawHeaders[i] ?? ''}: ${req.rawHeaders[i + 1] ?? ''}\r\n`
  upstream.write(lines + '\r\n')
  if (head.length > 0) upstream.write(head)
  client.on('error', () => upstream.destroy())
  upstream.on('error', () => client.destroy())
  client.on('close', () => upstream.destroy())
  upstream.on('close', () => client.destroy())
  client.pipe(upstream)
  upstream.pipe(client)
})
server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  console.log(JSON.stringify({ port: (server.address() as AddressInfo).port }))
})
process.once('SIGTERM', () => process.exit(0))
