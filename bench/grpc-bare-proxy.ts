// The gRPC bench's floor: the least a Node process does to pass gRPC calls on. node:http2 on
// both sides, one session to the server, every stream piped both ways with its response
// headers and trailers. No pipeline, no choice of target, no limits.
// UPSTREAM_PORT is the grpc-js server; prints {"port": N} on stdout once listening.
import http2 from 'node:http2'
import type { AddressInfo } from 'node:net'

const upstream = http2.connect(`http://127.0.0.1:${process.env.UPSTREAM_PORT ?? ''}`)
const server = http2.createServer()
server.on('stream', (stream, headers) => {
  const forwarded: http2.OutgoingHttpHeaders = {}
  for (const name of [':method', ':path', 'content-type', 'te', 'grpc-timeout']) if (headers[name] !== undefined) forwarded[name] = headers[name]
  const call = upstream.request(forwarded)
  call.on('response', response => {
    const { ':status': status, ...rest } = response
    stream.respond({ ':status': status, ...rest }, { waitForTrailers: true })
  })
  call.on('trailers', trailers => { stream.once('wantTrailers', () => stream.sendTrailers(trailers)) })
  call.on('error', () => stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR))
  stream.on('error', () => call.close(http2.constants.NGHTTP2_CANCEL))
  stream.pipe(call)
  call.pipe(stream)
})
server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  console.log(JSON.stringify({ port: (server.address() as AddressInfo).port }))
})
process.once('SIGTERM', () => process.exit(0))
