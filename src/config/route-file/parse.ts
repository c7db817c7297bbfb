// Reads one route file (YAML or JSON), checks it against RouteFileSchema and against the rules
// about the file as a whole, and compiles it into an UpstreamConfig.
import Value from 'typebox/value'
import YAML from 'yaml'
import { isIP } from 'node:net'
import { DURATION_EXPECTED, formatMs, toBytes, toMs } from '../units.js'
import { schemaErrors } from '../validate.js'
import { checkJwt, jwtAuth } from './jwt.js'
import {
  HTTP_METHODS, RESERVED_PATHS, RouteFileSchema,
  type DiscoverConfig, type HealthCheckConfig, type RateLimitKey, type RawRouteFile, type RouteConfig, type TargetConfig, type UpstreamConfig
} from './schema.js'
import { CorsPolicy, corsProblems } from './cors.js'
import { compileHeaderRules, type RouteHeaderRules, type RouteOwned } from './header-rules.js'
import { jsonProblem, yamlProblem } from './syntax.js'
import { loadTls } from './tls.js'

/** A route file that cannot be used, with one line per problem. */
export class RouteFileError extends Error {
  constructor (readonly file: string, readonly problems: string[]) {
    super(problems.map(p => `${file}: ${p}`).join('\n'))
    this.name = 'RouteFileError'
  }
}

/** Parses and checks one route file; throws RouteFileError listing every problem. */
export function parseRouteFile (file: string, text: string, env: NodeJS.ProcessEnv = process.env): UpstreamConfig {
  let data: unknown
  if (file.endsWith('.json')) {
    try {
      data = JSON.parse(text)
    } catch (err) {
      throw new RouteFileError(file, [jsonProblem(err as Error, text)])
    }
  } else {
    const doc = YAML.parseDocument(text, { prettyErrors: true, uniqueKeys: true })
    if (doc.errors.length > 0) {
      throw new RouteFileError(file, doc.errors.map(e => yamlProblem(e, text)))
    }
    try {
      data = doc.toJS()
    } catch (err) {
      // An alias whose anchor comes later (or never) parses, and fails only here.
      throw new RouteFileError(file, [`not valid YAML: ${(err as Error).message}`])
    }
  }
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    throw new RouteFileError(file, ['/: must be a mapping with targets and routes'])
  }
  // Default fills what is missing; no Clean: unknown keys are typos to report, not to drop.
  const value = Value.Default(RouteFileSchema, structuredClone(data))
  const problems = schemaErrors(RouteFileSchema, value)
  if (problems.length > 0) throw new RouteFileError(file, problems)
  const raw = value as RawRouteFile
  const targetProblems: string[] = []
  const routeProblems: string[] = []
  const upstream: UpstreamConfig = {
    name: raw.name ?? defaultName(file),
    file,
    targets: raw.targets.flatMap((t, i) => t.discover === undefined ? [targetConfig(t, i, targetProblems)] : []),
    discover: raw.targets.flatMap((t, i) => t.discover === undefined ? [] : [discoverConfig(t, i, targetProblems)]),
    routes: raw.routes.map((r, i) => ({
      path: r.path,
      methods: r.methods,
      hosts: r.hosts?.map(h => h.toLowerCase()),
      rewritePrefix: r.rewritePrefix,
      rewriteRedirects: r.rewriteRedirects,
      bodyLimit: r.bodyLimit === undefined ? undefined : toBytes(r.bodyLimit),
      requestBuffer: r.requestBuffer === undefined ? undefined : toBytes(r.requestBuffer),
      responseBuffer: r.responseBuffer === undefined ? undefined : toBytes(r.responseBuffer),
      allowEncodedSlashes: r.allowEncodedSlashes,
      affinity: r.affinity === undefined ? undefined : r.affinity === 'ip' ? { kind: 'ip' } : 'cookie' in r.affinity ? { kind: 'cookie', name: r.affinity.cookie } : { kind: 'header', name: r.affinity.header.toLowerCase() },
      split: r.split,
      pin: r.pin === undefined ? undefined : { header: r.pin.header?.toLowerCase(), cookie: r.pin.cookie },
      websocket: r.websocket,
      grpc: r.grpc,
      headers: routeHeaderRules(r, `/routes/${i}/headers`, routeProblems),
      cors: routeCors(r, `/routes/${i}/cors`, routeProblems),
      auth: r.auth === undefined ? undefined : jwtAuth(r.auth.jwt, env),
      rateLimit: r.rateLimit === undefined
        ? undefined
        : {
            max: r.rateLimit.max,
            windowMs: toMs(r.rateLimit.window),
            key: rateLimitKey(r.rateLimit.key),
            algorithm: r.rateLimit.algorithm,
            onStoreError: r.rateLimit.onStoreError
          }
    })),
    // Default() has filled every key that has a default, nested objects included.
    timeouts: { connectMs: toMs(raw.timeouts!.connect), requestMs: toMs(raw.timeouts!.request), idleMs: toMs(raw.timeouts!.idle) },
    websocket: {
      maxPerTarget: raw.websocket!.maxPerTarget,
      idleTimeoutMs: toMs(raw.websocket!.idleTimeout),
      maxLifetimeMs: raw.websocket!.maxLifetime === undefined ? undefined : toMs(raw.websocket!.maxLifetime),
      closeDelayMs: toMs(raw.websocket!.closeDelay)
    },
    retry: {
      attempts: raw.retry!.attempts,
      backoffMs: toMs(raw.retry!.backoff),
      maxBackoffMs: toMs(raw.retry!.maxBackoff),
      on: raw.retry!.on,
      budget: raw.retry!.budget,
      bufferBody: raw.retry!.bufferBody === undefined ? undefined : toBytes(raw.retry!.bufferBody)
    },
    breaker: breakerOptions(raw.circuitBreaker!),
    healthCheck: raw.healthCheck === undefined ? undefined : healthCheckConfig(raw.healthCheck, targetProblems)
  }
  const semantic = [...checkUpstream(upstream, raw), ...targetProblems, ...routeProblems]
  if (semantic.length > 0) throw new RouteFileError(file, semantic)
  return deepFreeze(upstream)
}

/** Problems the schema cannot express. */
function checkUpstream (upstream: UpstreamConfig, raw: RawRouteFile): string[] {
  const problems: string[] = []
  if (!/^[a-z0-9][a-z0-9_-]{0,62}$/.test(upstream.name)) {
    problems.push(`/name: the file name gives the upstream name "${upstream.name}", which is not a valid name; set name: explicitly`)
  }
  const origins = new Set<string>()
  upstream.targets.forEach((t, i) => {
    if (origins.has(t.origin)) problems.push(`/targets/${i}/url: ${t.url} is listed twice`)
    origins.add(t.origin)
  })
  const names = new Map<string, string>()
  for (const d of upstream.discover) {
    const name = `${d.type} ${d.dns}`
    const other = names.get(name)
    if (other !== undefined) problems.push(`${d.at}/discover/dns: ${d.type} ${d.dns} is already discovered by ${other}`)
    names.set(name, d.at)
  }
  // Every entry's protocol: a url's, or the one each discovered address will speak.
  const protocols = [...upstream.targets.map((t, i) => ({ at: `/targets/${i}`, protocol: t.protocol })), ...upstream.discover.map(d => ({ at: d.at, protocol: d.protocol }))]
  const http1 = protocols.find(t => t.protocol === 'http1')
  const http2 = protocols.find(t => t.protocol !== 'http1')
  const claims = new Map<string, number>()
  upstream.routes.forEach((route, i) => {
    if (RESERVED_PATHS.includes(route.path)) problems.push(`/routes/${i}/path: ${route.path} is served by the gateway itself`)
    problems.push(...paramProblems(route, i))
    problems.push(...splitProblems(route, i, [...upstream.targets, ...upstream.discover]))
    if (route.websocket && route.methods !== undefined && !route.methods.includes('GET')) problems.push(`/routes/${i}/websocket: a WebSocket handshake is a GET, and methods does not list GET`)
    if (route.websocket && http2 !== undefined) problems.push(`/routes/${i}/websocket: WebSocket tunnels need HTTP/1.1 targets, and ${http2.at} has protocol ${http2.protocol}`)
    if (route.grpc && http1 !== undefined) problems.push(`/routes/${i}/grpc: gRPC needs HTTP/2 targets, and ${http1.at} has protocol http1 (set protocol: h2 for https://, h2c for http://)`)
    if (route.grpc && route.websocket) problems.push(`/routes/${i}: a route is gRPC or WebSocket, not both`)
    if (route.grpc && route.methods !== undefined && !route.methods.includes('POST')) problems.push(`/routes/${i}/grpc: gRPC calls are POSTs, and methods does not list POST`)
    if (route.rateLimit !== undefined && route.rateLimit.windowMs < 1) problems.push(`/routes/${i}/rateLimit/window: must be at least 1ms`)
    if (route.rateLimit?.key.kind === 'claim' && route.auth === undefined) problems.push(`/routes/${i}/rateLimit/key: claim keys need auth on the route (the claim comes from the verified token)`)
    const jwt = raw.routes[i]?.auth?.jwt
    if (jwt !== undefined && route.auth !== undefined) problems.push(...checkJwt(jwt, route.auth).map(p => `/routes/${i}/auth/jwt${p}`))
    for (const claim of routeClaims(route)) {
      const other = claims.get(claim)
      if (other !== undefined) {
        problems.push(`/routes/${i}: claims ${claim} already claimed by /routes/${other}`)
        break
      }
      claims.set(claim, i)
    }
  })
  return problems
}

type RawRoute = RawRouteFile['routes'][number]

function routeHeaderRules (route: RawRoute, at: string, problems: string[]): RouteHeaderRules | undefined {
  if (route.headers === undefined) return undefined
  const owned: RouteOwned = {
    claimHeaders: Object.values(route.auth?.jwt.forwardClaims ?? {}).map(h => h.toLowerCase()),
    hasAuth: route.auth !== undefined,
    hasCors: route.cors !== undefined
  }
  return {
    request: compileHeaderRules(route.headers.request, 'request', `${at}/request`, owned, problems),
    response: compileHeaderRules(route.headers.response, 'response', `${at}/response`, owned, problems)
  }
}

function routeCors (route: RawRoute, at: string, problems: string[]): CorsPolicy | undefined {
  if (route.cors === undefined) return undefined
  const found = corsProblems(route.cors, at)
  problems.push(...found)
  return found.length > 0 ? undefined : new CorsPolicy(route.cors, route.methods ?? HTTP_METHODS, route.cors.maxAge === undefined ? undefined : toMs(route.cors.maxAge))
}

type RawTarget = RawRouteFile['targets'][number]

/** The origin of a target's url, or undefined with the problem named (the schema's pattern lets these through). */
function targetOrigin (url: string, at: string, problems: string[]): string | undefined {
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    const port = /:(\d+)\/?$/.exec(url)?.[1]
    const why = port !== undefined && Number(port) > 65535
      ? `the port ${port} is out of range (1-65535)`
      : 'the host is not a host name or IP address'
    problems.push(`${at}: ${url} is not a valid URL: ${why}; e.g. http://10.0.0.5:9001`)
    return undefined
  }
  if (parsed.username !== '' || parsed.password !== '') {
    problems.push(`${at}: credentials (user:password@) are not allowed in a target URL: route files are shared and reloaded as plain text; give the upstream its credentials another way`)
    return undefined
  }
  if (parsed.port === '0') {
    problems.push(`${at}: port 0 is not a port an upstream listens on; e.g. http://10.0.0.5:9001`)
    return undefined
  }
  return parsed.origin
}

function targetConfig (raw: RawTarget, i: number, problems: string[]): TargetConfig {
  const { tls, url = '', ...rest } = raw
  if (raw.url === undefined) problems.push(`/targets/${i}: needs url (one instance, http://10.0.0.5:9001) or discover (a DNS name whose addresses are instances)`)
  // An unusable url is reported with the file's other problems; the origin is only a placeholder then.
  const target: TargetConfig = { ...rest, url, origin: raw.url === undefined ? url : targetOrigin(url, `/targets/${i}/url`, problems) ?? url }
  // h2 is negotiated by ALPN inside TLS; h2c is HTTP/2 over plain TCP.
  if (raw.protocol === 'h2' && !url.startsWith('https://')) problems.push(`/targets/${i}/protocol: h2 needs an https:// url (${raw.url} is plain HTTP; h2c is HTTP/2 without TLS)`)
  if (raw.protocol === 'h2c' && !url.startsWith('http://')) problems.push(`/targets/${i}/protocol: h2c needs an http:// url (${raw.url} is TLS; h2 is HTTP/2 over TLS)`)
  if (tls === undefined) return target
  if (!url.startsWith('https://')) {
    problems.push(`/targets/${i}/tls: only for https:// targets (${url} is plain HTTP)`)
    return target
  }
  const loaded = loadTls(tls, `/targets/${i}/tls`, problems)
  if (loaded !== undefined) target.tls = loaded
  return target
}

type RawDiscover = NonNullable<RawTarget['discover']>

/** Refreshes faster than this would query DNS in a loop. */
const MIN_REFRESH_MS = 100

function discoverConfig (raw: RawTarget, i: number, problems: string[]): DiscoverConfig {
  const at = `/targets/${i}`
  const d = raw.discover as RawDiscover
  if (raw.url !== undefined) problems.push(`${at}: has both url and discover: an entry is one instance (url) or a DNS name whose addresses are instances (discover)`)
  const config: DiscoverConfig = {
    at,
    dns: d.dns.toLowerCase().replace(/\.$/, ''),
    type: d.type,
    scheme: d.scheme,
    port: d.port ?? (d.scheme === 'https' ? 443 : 80),
    refresh: d.refresh === 'ttl' ? 'ttl' : toMs(d.refresh),
    minRefreshMs: toMs(d.minRefresh),
    maxRefreshMs: toMs(d.maxRefresh),
    onEmpty: d.onEmpty,
    resolvers: d.resolvers,
    maxConnections: raw.maxConnections,
    weight: raw.weight,
    protocol: raw.protocol
  }
  if (raw.group !== undefined) config.group = raw.group
  if (config.minRefreshMs < MIN_REFRESH_MS) problems.push(`${at}/discover/minRefresh: must be at least ${MIN_REFRESH_MS}ms`)
  if (config.maxRefreshMs < config.minRefreshMs) problems.push(`${at}/discover/maxRefresh: ${formatMs(config.maxRefreshMs)} is below minRefresh (${formatMs(config.minRefreshMs)})`)
  if (typeof config.refresh === 'number' && config.refresh < MIN_REFRESH_MS) problems.push(`${at}/discover/refresh: must be ttl or at least ${MIN_REFRESH_MS}ms`)
  if (d.type !== 'SRV' && /(^|\.)_/.test(config.dns)) problems.push(`${at}/discover/dns: ${d.dns} looks like an SRV name (_service._proto.name); set type: SRV`)
  if (d.resolvers !== undefined) {
    for (const [k, r] of d.resolvers.entries()) if (!validResolver(r)) problems.push(`${at}/discover/resolvers/${k}: ${r} is not an IP address with a port of 1-65535`)
  }
  if (raw.protocol === 'h2' && d.scheme !== 'https') problems.push(`${at}/protocol: h2 needs scheme: https in discover (h2c is HTTP/2 without TLS)`)
  if (raw.protocol === 'h2c' && d.scheme !== 'http') problems.push(`${at}/protocol: h2c needs scheme: http in discover (h2 is HTTP/2 over TLS)`)
  if (raw.tls !== undefined) {
    if (d.scheme !== 'https') problems.push(`${at}/tls: only with scheme: https in discover`)
    else {
      const loaded = loadTls(raw.tls, `${at}/tls`, problems)
      if (loaded !== undefined) config.tls = loaded
    }
  }
  return config
}

function validResolver (text: string): boolean {
  const m = /^\[?([^\]]+?)\]?(?::(\d+))?$/.exec(text)
  if (m === null || isIP(m[1] as string) === 0) return false
  return m[2] === undefined || (Number(m[2]) >= 1 && Number(m[2]) <= 65535)
}

function healthCheckConfig (raw: NonNullable<RawRouteFile['healthCheck']>, problems: string[]): HealthCheckConfig {
  const expectStatus = raw.expectStatus.map((s, k): [number, number] => {
    if (typeof s === 'number') return [s, s]
    const [lo, hi] = s.split('-').map(Number) as [number, number]
    if (lo > hi) problems.push(`/healthCheck/expectStatus/${k}: ${s} is an empty range (write the lower status first)`)
    return [lo, hi]
  })
  const config: HealthCheckConfig = {
    path: raw.path,
    intervalMs: toMs(raw.interval),
    timeoutMs: toMs(raw.timeout),
    unhealthyThreshold: raw.unhealthyThreshold,
    healthyThreshold: raw.healthyThreshold,
    expectStatus,
    headers: Object.fromEntries(Object.entries(raw.headers ?? {}).map(([k, v]) => [k.toLowerCase(), v])),
    panic: raw.panic
  }
  if (config.intervalMs < MIN_REFRESH_MS) problems.push(`/healthCheck/interval: must be at least ${MIN_REFRESH_MS}ms`)
  if (config.timeoutMs < 1) problems.push('/healthCheck/timeout: must be at least 1ms')
  if ('host' in config.headers) problems.push('/healthCheck/headers/host: the Host of a probe is the target\'s, as for requests')
  return config
}

/** A split naming a group no target is in, or weighing nothing; a pin without a split. */
function splitProblems (route: RouteConfig, i: number, targets: ReadonlyArray<{ group?: string | undefined }>): string[] {
  const problems: string[] = []
  if (route.split === undefined) {
    if (route.pin !== undefined) problems.push(`/routes/${i}/pin: pins a request to a group of split, and the route has no split`)
    return problems
  }
  const groups = new Set(targets.map(t => t.group).filter(g => g !== undefined))
  for (const group of Object.keys(route.split)) {
    if (!groups.has(group)) problems.push(`/routes/${i}/split/${group}: no target is in group ${group}` + (groups.size > 0 ? ` (the groups are ${[...groups].join(', ')})` : ' (give targets a group)'))
  }
  if (Object.values(route.split).every(w => w === 0)) problems.push(`/routes/${i}/split: the weights add up to 0; give at least one group a weight`)
  return problems
}

/** A path's parameters used twice, or a rewritePrefix using one the path does not have. */
function paramProblems (route: RouteConfig, i: number): string[] {
  const params = route.path.split('/').filter(s => s.startsWith(':'))
  const problems: string[] = []
  const twice = params.find((p, k) => params.indexOf(p) !== k)
  if (twice !== undefined) problems.push(`/routes/${i}/path: the parameter ${twice} appears twice`)
  for (const used of (route.rewritePrefix ?? '').split('/').filter(s => s.startsWith(':'))) {
    if (!params.includes(used)) {
      problems.push(`/routes/${i}/rewritePrefix: ${used} is not a parameter of the path ${route.path}` + (params.length > 0 ? ` (it has ${params.join(', ')})` : ''))
    }
  }
  return problems
}

/** Every (method, host, path) a route serves, as `METHOD host path` strings; parameters as `:param`, whatever their names. */
export function routeClaims (route: RouteConfig): string[] {
  const claims: string[] = []
  for (const method of routeMethods(route)) {
    for (const host of route.hosts ?? ['*']) claims.push(`${method} ${host} ${route.path.replace(/\/:[A-Za-z0-9_]+/g, '/:param')}`)
  }
  return claims
}

/** The methods a route is registered for: its own, and OPTIONS for the preflights of a route with cors. */
export function routeMethods (route: RouteConfig): readonly string[] {
  const methods = route.methods ?? HTTP_METHODS
  return route.cors !== undefined && !methods.includes('OPTIONS') ? [...methods, 'OPTIONS'] : methods
}

function rateLimitKey (text: string): RateLimitKey {
  if (text.startsWith('header:')) return { kind: 'header', name: text.slice(7).toLowerCase() }
  if (text.startsWith('claim:')) return { kind: 'claim', name: text.slice(6) }
  return { kind: 'ip' }
}
function breakerOptions (raw: NonNullable<RawRouteFile['circuitBreaker']>): UpstreamConfig['breaker'] {
  const openForMs = toMs(raw.openFor)
  return {
    consecutiveFailures: raw.consecutiveFailures,
    failureRatio: raw.failureRatio,
    minRequests: raw.minRequests,
    windowMs: toMs(raw.window),
    openForMs,
    maxOpenForMs: raw.maxOpenFor === undefined ? openForMs : toMs(raw.maxOpenFor),
    halfOpenProbes: raw.halfOpenProbes,
    closeAfter: raw.closeAfter,
    failureStatuses: raw.failureStatuses
  }
}

function defaultName (file: string): string {
  return file.replace(/\.(ya?ml|json)$/, '').toLowerCase()
}

function deepFreeze<T> (value: T): T {
  if (value !== null && typeof value === 'object') {
    for (const v of Object.values(value)) deepFreeze(v)
    Object.freeze(value)
  }
  return value
}

/** Shortest duration a bare number may plausibly mean as milliseconds; below it, `check` asks. */
const BARE_DURATION_WARN_BELOW = 100

interface SchemaNode { type?: string, properties?: Record<string, SchemaNode>, items?: SchemaNode, anyOf?: SchemaNode[], errorMessage?: string }

/**
 * Warnings for a file that loads: durations written as a bare number under 100, which the loader
 * reads as milliseconds (`timeouts.request: 30` is 30 ms, not 30 s).
 */
export function routeFileWarnings (file: string, text: string): string[] {
  let data: unknown
  try {
    data = file.endsWith('.json') ? JSON.parse(text) : YAML.parse(text)
  } catch {
    return []
  }
  const warnings: string[] = []
  const walk = (schema: SchemaNode, value: unknown, at: string): void => {
    if (schema.errorMessage === DURATION_EXPECTED) {
      if (typeof value === 'number' && value > 0 && value < BARE_DURATION_WARN_BELOW) {
        warnings.push(`${file}: ${at}: ${value} is ${value} ms (a number without a unit is milliseconds); write ${value}ms to keep it, or ${value}s if seconds were meant`)
      }
      return
    }
    if (schema.properties !== undefined && value !== null && typeof value === 'object' && !Array.isArray(value)) {
      for (const [key, child] of Object.entries(schema.properties)) walk(child, (value as Record<string, unknown>)[key], `${at}/${key}`)
    } else if (schema.items !== undefined && Array.isArray(value)) {
      value.forEach((item, i) => walk(schema.items as SchemaNode, item, `${at}/${i}`))
    } else if (schema.anyOf !== undefined) {
      for (const option of schema.anyOf) walk(option, value, at)
    }
  }
  walk(RouteFileSchema as SchemaNode, data, '')
  return warnings
}
