// Header rules of a proxy hop (RFC 9110 §7.6.1): hop-by-hop headers stop here, in both
// directions, and X-Forwarded-* tell the upstream who asked. Both directions are built as flat
// [name, value, name, value, …] lists, the form undici and Node's writeHead take without copying
// into an object first.
import proxyAddr from '@fastify/proxy-addr'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { TrustProxy } from '../../src/config/env.js'
import type { HeaderRules, HeaderTemplate, HeaderVariable } from '../../src/config/route-file/header-rules.js'
import { headerSafe } from '../../src/http/header-value.js'

// Never forwarded as the client sent them: connection-specific headers (`te` is kept only as
// `trailers`), `expect` (Node has answered it; undici refuses it), and what the gateway sets itself.
const NOT_FORWARDED = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'trailer', 'transfer-encoding',
  'upgrade', 'te', 'expect', 'host', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-request-id'
])
// Response headers where the gateway's value goes beside the upstream's instead of replacing it:
// Vary lists add up (Origin beside Accept-Encoding), and each Set-Cookie is its own cookie.
const ADDITIVE = new Set(['vary', 'set-cookie'])
// Hop-by-hop in responses: never passed to the client (Node frames the response itself).
const NOT_RETURNED = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'trailer', 'transfer-encoding', 'upgrade', 'te'])

/** What the gateway does with client headers that are not hop-by-hop. */
export interface ForwardRules {
  /** Whether the peer at this socket address may vouch for X-Forwarded-* headers. */
  trusted: (address: string) => boolean
  /** Forward header names with `_`; otherwise dropped, as nginx does by default. */
  allowUnderscores: boolean
}

export function compileForwardRules (trust: TrustProxy, allowUnderscores: boolean): ForwardRules {
  if (trust === false) return { trusted: () => false, allowUnderscores }
  if (typeof trust === 'number') return { trusted: () => trust > 0, allowUnderscores }
  const fn = proxyAddr.compile(trust)
  return { trusted: address => fn(address, 0), allowUnderscores }
}

/** Names listed in a Connection header other than keep-alive and close: hop-by-hop too. */
function connectionNames (value: string): Set<string> | undefined {
  // The common values name no header: no split, no set.
  if (value.length <= 10 && (value === 'keep-alive' || value === 'close' || /^(?:keep-alive|close)$/i.test(value))) return undefined
  let names: Set<string> | undefined
  for (const part of value.split(',')) {
    const name = part.trim().toLowerCase()
    if (name !== '' && name !== 'close' && name !== 'keep-alive') (names ??= new Set()).add(name)
  }
  return names
}

/**
 * Request headers for the upstream: hop-by-hop removed, forwarding chain, Host of the target and
 * request id set, and the verified identity's headers last (neither the client's headers nor its
 * Connection list can undo them). `withBody` false drops the client's framing of a body that is
 * not forwarded. Names with `_` are dropped unless allowed: a CGI-style upstream maps `-` and `_`
 * to the same variable, so `Transfer_Encoding` or `X_User_Id` could pass for the real header.
 */
export function upstreamRequestHeaders (request: FastifyRequest, host: string, withBody: boolean, rules: ForwardRules, routeRules: HeaderRules | undefined): string[] {
  const raw = request.raw.rawHeaders
  const connection = request.headers.connection
  const named = connection === undefined ? undefined : connectionNames(connection)
  const identity = request.identity?.upstreamHeaders
  const out: string[] = []
  for (let i = 0; i < raw.length; i += 2) {
    const original = raw[i] as string
    // HTTP/2 pseudo-headers (:method, :path, :authority, :scheme) are the request line, not headers.
    if (original.charCodeAt(0) === 0x3a) continue
    const name = original.toLowerCase()
    const value = raw[i + 1] as string
    if (NOT_FORWARDED.has(name)) {
      if (name === 'te' && value.trim().toLowerCase() === 'trailers') out.push(original, value)
      continue
    }
    if (named?.has(name) === true) continue
    if (!rules.allowUnderscores && name.includes('_')) continue
    if (!withBody && name === 'content-length' && value !== '0') continue
    if (identity !== undefined && overridden(identity, name)) continue
    if (routeRules?.drop.has(name) === true) continue
    out.push(original, value)
  }
  if (routeRules !== undefined) appendRuled(out, routeRules, request)
  const socket = request.raw.socket
  const peer = socket.remoteAddress ?? ''
  const proto = 'encrypted' in socket && socket.encrypted === true ? 'https' : 'http'
  // HTTP/2 names the host in :authority (a Host beside it must be the same: the guard checks).
  const clientHost = request.headers.host ?? request.headers[':authority'] as string | undefined
  const headers = request.headers
  if (rules.trusted(peer)) {
    const chain = headers['x-forwarded-for']
    out.push('x-forwarded-for', chain === undefined ? peer : `${chain}, ${peer}`)
    out.push('x-forwarded-proto', headers['x-forwarded-proto'] as string | undefined ?? proto)
    const forwardedHost = headers['x-forwarded-host'] ?? clientHost
    if (forwardedHost !== undefined) out.push('x-forwarded-host', forwardedHost as string)
  } else {
    // An untrusted client's forwarding headers are forgeries: replace them.
    out.push('x-forwarded-for', peer, 'x-forwarded-proto', proto)
    if (clientHost !== undefined) out.push('x-forwarded-host', clientHost)
  }
  out.push('host', host, 'x-request-id', request.id)
  if (identity !== undefined) {
    for (const [name, value] of identity) if (value !== undefined) out.push(name, value)
  }
  return out
}

function overridden (identity: ReadonlyArray<[string, string | undefined]>, name: string): boolean {
  for (const [header] of identity) if (header === name) return true
  return false
}

/**
 * Response headers for the client: the upstream's (undici's raw list), hop-by-hop and those named
 * in Connection removed, then the headers the gateway set on the reply (request id, rate limits).
 */
export function clientResponseHeaders (raw: Buffer[], reply: FastifyReply, routeRules: HeaderRules | undefined): string[] {
  // Fastify keeps the reply's header names in lower case; the gateway's own replace the upstream's.
  const own = reply.getHeaders()
  // HTTP/2 has no connection-specific headers at all (RFC 9113 §8.2.2): Node throws on one.
  const h2 = reply.request.raw.httpVersionMajor === 2
  const out: string[] = []
  let named: Set<string> | undefined
  for (let i = 0; i < raw.length; i += 2) {
    const original = (raw[i] as Buffer).toString('latin1')
    const name = original.toLowerCase()
    if (NOT_RETURNED.has(name)) {
      if (name === 'connection') named = connectionNames((raw[i + 1] as Buffer).toString('latin1'))
      continue
    }
    if ((own[name] !== undefined && !ADDITIVE.has(name)) || routeRules?.drop.has(name) === true) continue
    out.push(original, (raw[i + 1] as Buffer).toString('latin1'))
  }
  if (named !== undefined) {
    for (let i = out.length - 2; i >= 0; i -= 2) if (named.has((out[i] as string).toLowerCase())) out.splice(i, 2)
  }
  if (routeRules !== undefined) appendRuled(out, routeRules, reply.request)
  for (const name in own) {
    const value = own[name]
    if (value === undefined || (h2 && NOT_RETURNED.has(name))) continue
    if (Array.isArray(value)) for (const v of value) out.push(name, v)
    else out.push(name, String(value))
  }
  return out
}

/** The set and add lines of a route's rules; a line whose variable has no value (an absent claim) is left out. */
function appendRuled (out: string[], rules: HeaderRules, request: FastifyRequest): void {
  for (const [name, template] of rules.append) {
    const value = typeof template === 'string' ? template : render(template, request)
    if (value !== undefined) out.push(name, value)
  }
}

function render (parts: Exclude<HeaderTemplate, string>, request: FastifyRequest): string | undefined {
  let out = ''
  for (const part of parts) {
    const value = typeof part === 'string' ? part : valueOf(part, request)
    if (value === undefined) return undefined
    out += value
  }
  return out
}

function valueOf (variable: HeaderVariable, request: FastifyRequest): string | undefined {
  switch (variable.kind) {
    case 'client.ip': return request.ip
    case 'request.id': return request.id
    case 'route.id': return request.match?.route.id
    case 'route.path': return request.match?.route.path
    case 'upstream': return request.match?.route.upstream.name
    case 'claim': {
      const claim = request.identity?.claims[variable.name]
      if (claim === undefined || claim === null) return undefined
      const text = typeof claim === 'string' ? claim : JSON.stringify(claim)
      // A claim is the issuer's text, not ours: one that would split the message is not written.
      return headerSafe(text) ? text : undefined
    }
  }
}

/** A route's rewritePrefix turned back: the upstream's path prefix, and the route's path for it ('' for /). */
export interface RedirectRewrite {
  upstreamPrefix: string
  publicPrefix: string
}

/**
 * Location and Content-Location in the upstream's own path space made public again (nginx's
 * proxy_redirect default): a path under the upstream prefix, or a URL of the target itself, gets
 * the route's path instead. Anything else (another host, a relative reference) is left alone.
 */
export function rewriteLocations (headers: string[], rewrite: RedirectRewrite, origin: string): void {
  for (let i = 0; i < headers.length; i += 2) {
    const name = (headers[i] as string).toLowerCase()
    if (name === 'location' || name === 'content-location') headers[i + 1] = publicLocation(headers[i + 1] as string, rewrite, origin)
  }
}

function publicLocation (value: string, { upstreamPrefix, publicPrefix }: RedirectRewrite, origin: string): string {
  let path = value
  if (value.toLowerCase().startsWith(origin.toLowerCase()) && (value.length === origin.length || '/?#'.includes(value[origin.length] as string))) {
    path = value.slice(origin.length)
    if (path === '' || path[0] !== '/') path = '/' + path
  } else if (value[0] !== '/' || value[1] === '/') {
    return value
  }
  if (upstreamPrefix === '') return publicPrefix + path
  if (path === upstreamPrefix || (path.startsWith(upstreamPrefix) && '/?#'.includes(path[upstreamPrefix.length] as string))) {
    const local = publicPrefix + path.slice(upstreamPrefix.length)
    return local === '' ? '/' : local
  }
  return value
}
