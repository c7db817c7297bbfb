// Header rules of a proxy hop (RFC 9110 §7.6.1): hop-by-hop headers stop here, in both
// directions, and X-Forwarded-* tell the upstream who asked.
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http'
import proxyAddr from '@fastify/proxy-addr'
import type { FastifyRequest } from 'fastify'
import type { TrustProxy } from '../../src/config/env.js'

// Connection-specific headers; `te` is kept only as `trailers`. `connection` itself and the
// headers it names are removed by @fastify/reply-from before these rules run (requests) and
// by `stripResponseHeaders` (responses).
const HOP_BY_HOP = ['keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'trailer', 'transfer-encoding', 'upgrade']

function stripHopByHop (headers: IncomingHttpHeaders | OutgoingHttpHeaders): void {
  for (const name of HOP_BY_HOP) delete headers[name]
  if (headers.te !== undefined && headers.te !== 'trailers') delete headers.te
}

/** Whether the peer at this socket address may vouch for X-Forwarded-* headers. */
export function compileTrust (trust: TrustProxy): (address: string) => boolean {
  if (trust === false) return () => false
  if (typeof trust === 'number') return () => trust > 0
  const fn = proxyAddr.compile(trust)
  return address => fn(address, 0)
}

/** Request headers for the upstream: hop-by-hop removed, forwarding chain and request id set. */
export function upstreamRequestHeaders (request: FastifyRequest, headers: IncomingHttpHeaders, trusted: (address: string) => boolean): IncomingHttpHeaders {
  stripHopByHop(headers)
  // Node has already answered `Expect: 100-continue` to the client; undici refuses to send it on.
  delete headers.expect
  const socket = request.raw.socket
  const peer = socket.remoteAddress ?? ''
  const proto = 'encrypted' in socket && socket.encrypted === true ? 'https' : 'http'
  const host = request.headers.host
  if (trusted(peer)) {
    const chain = headers['x-forwarded-for']
    headers['x-forwarded-for'] = chain === undefined ? peer : `${chain}, ${peer}`
    headers['x-forwarded-proto'] ??= proto
    headers['x-forwarded-host'] ??= host
  } else {
    // An untrusted client's forwarding headers are forgeries: replace them.
    headers['x-forwarded-for'] = peer
    headers['x-forwarded-proto'] = proto
    if (host === undefined) delete headers['x-forwarded-host']
    else headers['x-forwarded-host'] = host
  }
  headers['x-request-id'] = request.id
  // Last, so neither the client's headers nor its Connection list can undo them.
  for (const [name, value] of request.identity?.upstreamHeaders ?? []) {
    if (value === undefined) delete headers[name]
    else headers[name] = value
  }
  return headers
}

/** Response headers for the client: hop-by-hop and those named in Connection removed. */
export function stripResponseHeaders (headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const connection = headers.connection
  if (connection !== undefined) {
    for (const name of connection.split(',')) delete headers[name.trim().toLowerCase()]
    delete headers.connection
  }
  stripHopByHop(headers)
  return headers
}
