// HTTP/2 requests arrive through Node's compatibility API (Http2ServerRequest): `req.socket` is
// then the socket of the whole connection, shared by every stream on it. What belongs to one
// request (its end, its reset, its flow control) is its stream.
import type { IncomingMessage, ServerResponse } from 'node:http'
import { constants, type Http2ServerRequest, type ServerHttp2Stream } from 'node:http2'
import type { Socket } from 'node:net'

/** The HTTP/2 stream of a request; undefined for HTTP/1.x. */
export function h2Stream (req: IncomingMessage): ServerHttp2Stream | undefined {
  return (req as unknown as Partial<Http2ServerRequest>).stream
}

/** What ends when the client abandons this request: its stream (HTTP/2) or its connection (HTTP/1.x). */
export function clientChannel (req: IncomingMessage): Socket | ServerHttp2Stream {
  return h2Stream(req) ?? req.socket
}

/**
 * Whether the response reached the client whole. On HTTP/2, Node's compatibility layer reports
 * `writableFinished` on any stream close, a reset included: the response must also have been
 * ended and its stream closed without an error code.
 */
export function responseDelivered (req: IncomingMessage, res: ServerResponse): boolean {
  const stream = h2Stream(req)
  if (stream === undefined) return res.writableFinished
  return res.writableEnded && stream.rstCode === constants.NGHTTP2_NO_ERROR
}
