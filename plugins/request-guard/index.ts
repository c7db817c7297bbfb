// Requests a proxy must refuse before any upstream sees them. Node's parser already refuses most
// malformed framing (Content-Length with Transfer-Encoding, duplicate or malformed Content-Length,
// bare LF, NUL or CR in headers); these are the gaps it leaves open, found by trying them.
import type { ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { FastifyInstance, FastifyReply, FastifyRequest, onRequestHookHandler } from 'fastify'
import fp from 'fastify-plugin'
import { h2Stream } from '../../src/http/client-stream.js'
import { BadFramingError, HeadersTooLargeError, HttpVersionError, TooManyHeadersError, UriTooLongError } from '../../src/errors.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Answers this request with `Connection: close` and refuses what is pipelined behind it. */
    closeConnection: (request: FastifyRequest, reply: FastifyReply) => void
    /** Pipeline hook, first: refuses what a proxy must not forward (framing, sizes, Host, pipelining behind a close). */
    guardRequest: onRequestHookHandler
  }
}

export interface RequestGuardOptions {
  /** More request headers than this: 431. */
  maxHeaders: number
  /** Larger header fields (names, values, separators): 431. */
  maxHeaderSize: number
  /** A longer request target: 414. */
  maxUrlLength: number
}

// RFC 3986 §3.2.2: a reg-name or IPv4 address (unreserved, pct-encoded, sub-delims), or an IP
// literal in brackets (the same characters and `:`); then an optional `:port` of digits.
const NAME_CHARS = charTable("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%!$&'()*+,;=")
const LITERAL_CHARS = charTable("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%!$&'()*+,;=:")

function charTable (chars: string): Uint8Array {
  const table = new Uint8Array(128)
  for (let i = 0; i < chars.length; i++) table[chars.charCodeAt(i)] = 1
  return table
}

/** Whether a Host value is host[:port]; a loop over its characters, no regular expression. */
export function validHost (value: string): boolean {
  const n = value.length
  let i = 0
  if (value.charCodeAt(0) === 0x5b) { // [
    const end = value.indexOf(']')
    if (end < 2) return false
    for (i = 1; i < end; i++) if (LITERAL_CHARS[value.charCodeAt(i)] !== 1) return false
    i = end + 1
  } else {
    while (i < n && value.charCodeAt(i) !== 0x3a) { // :
      if (NAME_CHARS[value.charCodeAt(i)] !== 1) return false
      i++
    }
    if (i === 0) return false
  }
  if (i === n) return true
  if (value.charCodeAt(i) !== 0x3a || n - i - 1 > 5) return false
  for (i++; i < n; i++) {
    const c = value.charCodeAt(i)
    if (c < 0x30 || c > 0x39) return false
  }
  return true
}

async function requestGuardPlugin (app: FastifyInstance, opts: RequestGuardOptions): Promise<void> {
  // Node keeps only maxHeadersCount headers and silently drops the rest (while still framing on
  // them): keep one more than the limit, so too many can be told from exactly enough.
  app.server.maxHeadersCount = opts.maxHeaders + 1
  // Node may already have parsed requests pipelined behind a refused one: they are refused too.
  const refused = new WeakSet<Socket>()
  app.decorate('closeConnection', (request: FastifyRequest, reply: FastifyReply) => {
    // HTTP/2 frames each stream on its own: a refused one leaves the others' framing intact (and
    // Connection is not an HTTP/2 header, RFC 9113 §8.2.2).
    if (h2Stream(request.raw) !== undefined) return
    refused.add(request.raw.socket)
    reply.header('connection', 'close')
  })

  const refuse = (request: FastifyRequest, reply: FastifyReply, err: Error, done: (err?: Error) => void): void => {
    app.closeConnection(request, reply)
    done(err)
  }

  // Any response that closes the connection ends it for the requests pipelined behind it too
  // (RFC 9112 §9.6).
  app.addHook('onSend', (request, reply, payload, done) => {
    if (reply.getHeader('connection') === 'close') refused.add(request.raw.socket)
    done(null, payload)
  })

  /**
   * HTTP/2: Node has refused connection-specific headers (Transfer-Encoding among them) and a
   * Content-Length the DATA frames contradict (RFC 9113 §8.1.1, §8.2.2); the authority is
   * `:authority`, and a Host beside it must name the same (§8.3.1). Pseudo-headers are not counted.
   */
  const checkH2 = (request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void): void => {
    const raw = request.raw
    if ((raw.url as string).length > opts.maxUrlLength) {
      refuse(request, reply, new UriTooLongError(opts.maxUrlLength), done)
      return
    }
    const names = raw.rawHeaders
    let count = 0
    let size = 0
    for (let i = 0; i < names.length; i += 2) {
      const name = names[i] as string
      if (name.charCodeAt(0) === 0x3a) continue // :
      count++
      size += name.length + (names[i + 1] as string).length + 4
    }
    if (count > opts.maxHeaders) {
      refuse(request, reply, new TooManyHeadersError(opts.maxHeaders), done)
      return
    }
    if (size > opts.maxHeaderSize) {
      refuse(request, reply, new HeadersTooLargeError(), done)
      return
    }
    const authority = raw.headers[':authority'] as string | undefined
    const host = raw.headers.host
    if (authority === undefined && host === undefined) {
      refuse(request, reply, new BadFramingError('no :authority or Host'), done)
      return
    }
    if (authority !== undefined && host !== undefined && authority !== host) {
      refuse(request, reply, new BadFramingError('Host differs from :authority'), done)
      return
    }
    if (!validHost((authority ?? host) as string)) {
      refuse(request, reply, new BadFramingError(':authority is not a host[:port]'), done)
      return
    }
    done()
  }

  const check = (request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void): void => {
    const raw = request.raw
    if (refused.has(raw.socket)) {
      refuse(request, reply, new BadFramingError('a response before this one closed the connection'), done)
      return
    }
    if (raw.httpVersionMajor !== 1) {
      // llhttp reads HTTP/0.9 and HTTP/2.0 request lines as HTTP/1.x: answer, do not proxy.
      refuse(request, reply, new HttpVersionError(raw.httpVersion), done)
      return
    }
    if ((raw.url as string).length > opts.maxUrlLength) {
      refuse(request, reply, new UriTooLongError(opts.maxUrlLength), done)
      return
    }
    const names = raw.rawHeaders
    if (names.length / 2 > opts.maxHeaders) {
      refuse(request, reply, new TooManyHeadersError(opts.maxHeaders), done)
      return
    }
    const te = raw.headers['transfer-encoding']
    if (te !== undefined) {
      // HTTP/1.0 has no chunked coding: a 1.0 peer behind us would frame the body by close.
      if (raw.httpVersionMinor === 0) {
        refuse(request, reply, new BadFramingError('Transfer-Encoding in an HTTP/1.0 request'), done)
        return
      }
      // Only plain chunked: any other coding is one an upstream might frame differently.
      if (te.toLowerCase() !== 'chunked') {
        refuse(request, reply, new BadFramingError(`Transfer-Encoding other than chunked: ${te.slice(0, 40)}`), done)
        return
      }
    }
    let hosts = 0
    let size = 0
    for (let i = 0; i < names.length; i += 2) {
      const name = names[i] as string
      size += name.length + (names[i + 1] as string).length + 4
      if (name.length === 4 && name.toLowerCase() === 'host') hosts++
    }
    if (size > opts.maxHeaderSize) {
      refuse(request, reply, new HeadersTooLargeError(), done)
      return
    }
    if (hosts > 1 || (hosts === 0 && raw.httpVersionMinor === 1)) {
      // RFC 9112 §3.2: a server must refuse an HTTP/1.1 request with no Host or more than one.
      refuse(request, reply, new BadFramingError(hosts === 0 ? 'no Host header' : 'more than one Host header'), done)
      return
    }
    // It becomes X-Forwarded-Host and may pick a route: `a b` or `a@evil` must not pass as a host.
    if (hosts === 1 && !validHost(raw.headers.host as string)) {
      refuse(request, reply, new BadFramingError('Host is not a host[:port]'), done)
      return
    }
    done()
  }

  // The response of the request before this one on each connection, to wait for.
  const lastResponse = new WeakMap<Socket, ServerResponse>()

  app.decorate('guardRequest', function guardRequest (request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void): void {
    // A pipelined request waits until the response before it is over: that response may still
    // close the connection (a body found too large while streaming), and then this one must not
    // have reached an upstream. Pipelining is rare; its responses are sent in order anyway.
    // HTTP/2 has no pipelining: each stream stands alone.
    if (h2Stream(request.raw) !== undefined) {
      checkH2(request, reply, done)
      return
    }
    const socket = request.raw.socket
    const earlier = lastResponse.get(socket)
    lastResponse.set(socket, reply.raw)
    if (earlier === undefined) {
      check(request, reply, done)
      return
    }
    const go = (): void => {
      earlier.removeListener('finish', go)
      earlier.removeListener('close', go)
      // Node decided to close after it (an error, HTTP/1.0, a refused body): so does this one.
      if (!earlier.shouldKeepAlive) refused.add(socket)
      check(request, reply, done)
    }
    if (earlier.writableFinished) {
      go()
      return
    }
    earlier.once('finish', go)
    earlier.once('close', go)
  })
}

export default fp(requestGuardPlugin, { name: 'gatehouse-request-guard', fastify: '5.x' })
