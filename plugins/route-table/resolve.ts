// The first per-route step of the pipeline: one lookup in the live table per request, in
// onRequest, so the body is never read for a request that matches nothing.
import type { FastifyReply, FastifyRequest, onRequestHookHandler } from 'fastify'
import { BadPathError, RouteNotFoundError } from '../../src/errors.js'
import { routeMatched } from '../tracing/spans.js'
import { hasEncodedSlash, normalizePath } from './normalize-path.js'
import { applyRewrite } from './path-params.js'
import type { CompiledRoute, RouteTable } from './route-table.js'

/** What the route table made of a request: resolved before any other per-route work. */
export interface RouteMatch {
  route: CompiledRoute
  /** The normalised path, as matched. */
  path: string
  /** Path and query string to send upstream (after rewritePrefix). */
  forward: string
}

const SCHEME = /^[a-z][a-z0-9+.-]*:\/\//i

/** The onRequest hook that sets `request.match`, reading the table current when the request arrives. */
export function routeResolver (current: () => RouteTable): onRequestHookHandler {
  return function resolveRoute (request: FastifyRequest, _reply: FastifyReply, done: (err?: Error) => void): void {
    const url = request.raw.url as string
    const q = url.indexOf('?')
    const rawPath = q === -1 ? url : url.slice(0, q)
    if (rawPath.charCodeAt(0) !== 47 /* / */) {
      // Deliberately refused: absolute-form is for forward proxies, and `OPTIONS *` asks about a
      // server, not about any upstream route.
      done(new BadPathError(rawPath === '*' ? 'OPTIONS * is not forwarded' : SCHEME.test(rawPath) ? 'absolute-form targets are for forward proxies; send the path' : 'the request target must be a path starting with /'))
      return
    }
    let path: string
    try {
      path = normalizePath(rawPath)
    } catch (err) {
      done(err as Error)
      return
    }
    const route = current().lookup(request.method, hostOf(request.headers.host), path)
    if (route === null) {
      done(new RouteNotFoundError(request.method, path))
      return
    }
    if (!route.allowEncodedSlashes && hasEncodedSlash(path)) {
      done(new BadPathError('encoded slash or backslash (%2F, %5C); the route can allow them with allowEncodedSlashes'))
      return
    }
    const forward = route.rewritePrefix === undefined
      ? path
      : route.rewriteTemplate === undefined ? rewrite(route.rewritePrefix, path.slice(route.prefixLength)) : applyRewrite(route.rewriteTemplate, route.segments, path, rewrite)
    request.match = { route, path, forward: q === -1 ? forward : forward + url.slice(q) }
    if (request.span != null) routeMatched(request.span, request.method, route)
    done()
  }
}

/** `prefix` + `rest` with exactly one slash between them, and never an empty path. */
export function rewrite (prefix: string, rest: string): string {
  if (prefix.endsWith('/') && rest.startsWith('/')) return prefix + rest.slice(1)
  const joined = prefix + rest
  return joined === '' ? '/' : joined
}

/** Host header without port, lowercase; '' when absent. */
function hostOf (host: string | undefined): string {
  if (host === undefined) return ''
  const end = host.charCodeAt(0) === 91 /* [ */ ? host.indexOf(']') + 1 : host.indexOf(':')
  return (end > 0 ? host.slice(0, end) : host).toLowerCase()
}
