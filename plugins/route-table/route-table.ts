// The compiled route table: built once per load or reload, never changed after, swapped whole.
import type { RedirectRewrite } from '../proxy/headers.js'
import FindMyWay, { type HTTPVersion, type Instance } from 'find-my-way'
import type { CorsPolicy } from '../../src/config/route-file/cors.js'
import type { HeaderRules } from '../../src/config/route-file/header-rules.js'
import { HTTP_METHODS, routeMethods, type DiscoverConfig, type JwtAuthConfig, type RateLimitConfig, type UpstreamConfig, type WebSocketSettings } from '../../src/config/route-file/index.js'
import { serviceName, type DiscoveredAddress, type DiscoveryLog, type DnsWatch } from '../../src/upstream/discovery.js'
import { HealthChecker } from '../../src/upstream/health-check.js'
import { RetryBudget, type RetryOptions } from '../../src/upstream/retry.js'
import type { Pool } from '../../src/upstream/select.js'
import { compileRewrite, hasParams, routerPath, type RewriteTemplate } from './path-params.js'
import { compileAffinity, type CompiledAffinity } from './affinity.js'
import { compileSplit, type CompiledSplit } from './split.js'
import { Target, type TargetOptions, type TargetTransitionListener } from '../../src/upstream/target.js'

export interface CompiledUpstream {
  readonly name: string
  readonly file: string
  readonly targets: readonly Target[]
  readonly totalWeight: number
  readonly requestTimeoutMs: number
  readonly idleTimeoutMs: number
  readonly retry: RetryOptions
  /** Upstream statuses that count as breaker failures. */
  readonly failureStatuses: ReadonlySet<number>
  /** Kept across reloads, like targets: it counts requests in progress. */
  readonly budget: RetryBudget
  /** The file's websocket settings; undefined when none of its routes accepts upgrades. */
  readonly tunnels: WebSocketSettings | undefined
  /** The DNS watches its discover entries read (why it may have no targets). */
  readonly discovery: readonly DnsWatch[]
  /** Active health checks; undefined: none. Kept across reloads, like the budget. */
  readonly health: HealthChecker | undefined
}

/** A route's rate limit, with what its headers say precomputed. */
export interface CompiledLimit extends RateLimitConfig {
  /** `<upstream>-<route index>`: names the budget in store keys and in RateLimit-Policy. */
  readonly id: string
  /** The RateLimit-Policy header value (draft-ietf-httpapi-ratelimit-headers). */
  readonly policy: string
}

export interface CompiledRoute {
  /** `<upstream>-<route index>`: names the route in metrics. */
  readonly id: string
  /** The route's prefix as written (`/api/users`): names it in traces. */
  readonly path: string
  readonly upstream: CompiledUpstream
  /** Undefined: public. */
  readonly auth: JwtAuthConfig | undefined
  /** Undefined: not limited. */
  readonly rateLimit: CompiledLimit | undefined
  /** Characters of the request path the prefix covers (0 for `/`); unused when the path has parameters. */
  readonly prefixLength: number
  /** Undefined: forward the path unchanged. */
  readonly rewritePrefix: string | undefined
  /** rewritePrefix compiled against the path's parameters; undefined when the path has none. */
  readonly rewriteTemplate: RewriteTemplate | undefined
  /** Segments of the route's path (its parameters' positions count from 1). */
  readonly segments: number
  /** Locations in the upstream's path space and what they become; undefined without rewritePrefix or with rewriteRedirects: false. */
  readonly redirects: RedirectRewrite | undefined
  readonly bodyLimit: number
  /** Bodies up to this size are received whole before a target is chosen, and replayed by retries; 0: none. */
  readonly requestBuffer: number
  /** Response bytes read ahead of a client that is behind, so the upstream can finish; 0: none. */
  readonly responseBuffer: number
  /** %2F and %5C in the path are forwarded (encoded) instead of refused. */
  readonly allowEncodedSlashes: boolean
  /** The pools the proxy chooses targets from: the upstream's targets; for a split, see `split`. */
  readonly pools: ReadonlyArray<Pool<Target>>
  /** Sticky sessions; undefined: none. */
  readonly affinity: CompiledAffinity | undefined
  /** Traffic split between target groups; undefined: the upstream's targets. */
  readonly split: CompiledSplit | undefined
  /** CORS policy; undefined: none. */
  readonly cors: CorsPolicy | undefined
  /** Accepts WebSocket upgrades. */
  readonly websocket: boolean
  /** gRPC calls, on the streaming path (plugins/proxy/grpc-call.ts). */
  readonly grpc: boolean
  /** Registered only to answer CORS preflights: any other request of its method is not this route's. */
  readonly preflightOnly: boolean
  /** Header rules for the request upstream; undefined: none. */
  readonly requestHeaders: HeaderRules | undefined
  /** Header rules for the upstream's response; undefined: none. */
  readonly responseHeaders: HeaderRules | undefined
}

export class RouteTable {
  constructor (
    readonly version: number,
    readonly upstreams: readonly CompiledUpstream[],
    readonly targets: ReadonlyMap<string, Target>,
    /** Rate limits by id, for the limiter's store (it sees a key, not the request). */
    readonly limits: ReadonlyMap<string, CompiledLimit>,
    /** Ids of the routes with authentication (their refusal counters start at 0). */
    readonly authenticated: readonly string[],
    private readonly router: Instance<HTTPVersion.V1>
  ) {}

  /** The route for a normalised path, or null. `host` is lowercase, without port. */
  lookup (method: string, host: string, path: string): CompiledRoute | null {
    const found = this.router.find(method as 'GET', path, { host })
    return found === null ? null : found.store as CompiledRoute
  }
}

export interface BuildResult {
  table: RouteTable
  /** Targets of the previous table that are gone: to be drained and closed by the caller. */
  removed: Target[]
}

/** What routes get from the environment where their file sets nothing. */
export interface RouteDefaults {
  /** BODY_LIMIT. */
  bodyLimit: number
  /** REQUEST_BUFFER_SIZE. */
  requestBuffer: number
  /** RESPONSE_BUFFER_SIZE. */
  responseBuffer: number
  /** AFFINITY_SECRET. */
  affinitySecret?: string | undefined
}

/** What a build reads beside the files: the live state targets come from and report to. */
export interface BuildSources {
  onTransition?: TargetTransitionListener
  /** The DNS watch of a discover entry; absent: discover entries have no targets. */
  watchOf?: (upstream: string, d: DiscoverConfig) => DnsWatch | undefined
  /** Where health checkers log. */
  log?: DiscoveryLog
}

/**
 * Compiles upstream configs into a radix router. Targets whose identity is unchanged since
 * `previous` are carried over with their pool and in-flight count.
 */
export function buildRouteTable (configs: readonly UpstreamConfig[], defaults: RouteDefaults, previous?: RouteTable, sources: BuildSources = {}): BuildResult {
  const router = FindMyWay({ caseSensitive: true, ignoreTrailingSlash: false, ignoreDuplicateSlashes: false })
  const targets = new Map<string, Target>()
  const upstreams: CompiledUpstream[] = []
  const limits = new Map<string, CompiledLimit>()
  const authenticated: string[] = []
  for (const config of configs) {
    const discovered = config.discover.map(d => ({ d, watch: sources.watchOf?.(config.name, d) }))
    const entries = targetEntries(config, discovered)
    const before = previous?.upstreams.find(u => u.name === config.name)
    const upstreamTargets = entries.map(({ options }) => {
      const key = Target.key(options)
      const kept = previous?.targets.get(key)
      // A kept target keeps its breaker state; only its settings change.
      kept?.breaker.configure(config.breaker)
      const target = kept ?? new Target(options, sources.onTransition)
      target.weight = options.weight
      target.tunnels.maxConnections = config.websocket.maxPerTarget
      target.tunnels.closeDelayMs = config.websocket.closeDelayMs
      targets.set(key, target)
      return target
    })
    const upstream: CompiledUpstream = Object.freeze({
      name: config.name,
      file: config.file,
      targets: Object.freeze(upstreamTargets),
      totalWeight: upstreamTargets.reduce((sum, t) => sum + t.weight, 0),
      requestTimeoutMs: config.timeouts.requestMs,
      idleTimeoutMs: config.timeouts.idleMs,
      retry: config.retry,
      failureStatuses: new Set(config.breaker.failureStatuses),
      budget: budgetOf(before, config),
      tunnels: config.routes.some(r => r.websocket) ? config.websocket : undefined,
      discovery: discovered.flatMap(({ watch }) => watch ?? []),
      health: healthOf(before, config, sources.log)
    })
    // Routes without a split choose among all of the upstream's targets.
    const allTargets: ReadonlyArray<Pool<Target>> = Object.freeze([upstream])
    upstreams.push(upstream)
    for (const [index, route] of config.routes.entries()) {
      const limit = route.rateLimit
      const id = `${config.name}-${index}`
      const params = hasParams(route.path)
      const compiled: CompiledRoute = Object.freeze({
        id,
        path: route.path,
        upstream,
        auth: route.auth,
        rateLimit: limit === undefined ? undefined : Object.freeze({ ...limit, id, policy: `"${id}";q=${limit.max};w=${Math.ceil(limit.windowMs / 1000)}` }),
        prefixLength: route.path === '/' ? 0 : route.path.length,
        rewritePrefix: route.rewritePrefix,
        rewriteTemplate: params && route.rewritePrefix !== undefined ? compileRewrite(route.path, route.rewritePrefix) : undefined,
        segments: route.path === '/' ? 0 : route.path.split('/').length - 1,
        // A Location cannot be mapped back through parameters: left as the upstream sent it.
        redirects: route.rewritePrefix === undefined || !route.rewriteRedirects || params ? undefined : { upstreamPrefix: route.rewritePrefix, publicPrefix: route.path === '/' ? '' : route.path },
        bodyLimit: route.bodyLimit ?? defaults.bodyLimit,
        requestBuffer: route.requestBuffer ?? config.retry.bufferBody ?? defaults.requestBuffer,
        responseBuffer: route.responseBuffer ?? defaults.responseBuffer,
        allowEncodedSlashes: route.allowEncodedSlashes,
        pools: allTargets,
        affinity: route.affinity === undefined ? undefined : compileAffinity(route.affinity, config.name, upstream.targets, defaults.affinitySecret),
        split: route.split === undefined ? undefined : compileSplit(route.split, route.pin, upstream.targets, entries.map(e => e.group)),
        cors: route.cors,
        websocket: route.websocket,
        grpc: route.grpc,
        preflightOnly: false,
        requestHeaders: route.headers?.request,
        responseHeaders: route.cors === undefined ? route.headers?.response : withoutUpstreamCors(route.headers?.response)
      })
      if (compiled.rateLimit !== undefined) limits.set(id, compiled.rateLimit)
      if (compiled.auth !== undefined) authenticated.push(id)
      const methods = (route.methods ?? HTTP_METHODS) as Array<'GET'>
      // A route with cors answers the preflights of its path even when it does not serve OPTIONS.
      const preflight = methods.length < routeMethods(route).length ? Object.freeze({ ...compiled, preflightOnly: true }) : undefined
      // A prefix matches itself and everything below it, never a longer sibling (/api/usersX).
      const path = routerPath(route.path)
      const paths = path === '/' ? ['/', '/*'] : [path, path + '/*']
      for (const host of route.hosts ?? [undefined]) {
        const opts = host === undefined ? {} : { constraints: { host } }
        for (const path of paths) {
          router.on(methods, path, opts, noop, compiled)
          if (preflight !== undefined) router.on('OPTIONS', path, opts, noop, preflight)
        }
      }
    }
  }
  const removed = previous === undefined ? [] : [...previous.targets].filter(([key]) => !targets.has(key)).map(([, t]) => t)
  return { table: new RouteTable((previous?.version ?? 0) + 1, upstreams, targets, limits, authenticated, router), removed }
}

// On a route with cors the gateway answers for CORS: the upstream's own say is dropped.
const UPSTREAM_CORS = ['access-control-allow-origin', 'access-control-allow-credentials', 'access-control-expose-headers', 'access-control-allow-methods', 'access-control-allow-headers', 'access-control-max-age']

function withoutUpstreamCors (rules: HeaderRules | undefined): HeaderRules {
  return Object.freeze({ drop: new Set([...rules?.drop ?? [], ...UPSTREAM_CORS]), append: rules?.append ?? [] })
}

/** The targets of an upstream: its url entries, then each address its discover entries resolved to (an origin listed twice counts once). */
function targetEntries (config: UpstreamConfig, discovered: ReadonlyArray<{ d: DiscoverConfig, watch: DnsWatch | undefined }>): Array<{ options: TargetOptions, group: string | undefined }> {
  const base = { upstream: config.name, connectTimeoutMs: config.timeouts.connectMs, breaker: config.breaker }
  const entries: Array<{ options: TargetOptions, group: string | undefined }> = config.targets.map(t => ({
    options: { ...base, origin: t.origin, maxConnections: t.maxConnections, weight: t.weight, protocol: t.protocol, tls: t.tls },
    group: t.group
  }))
  const seen = new Set(entries.map(e => e.options.origin))
  for (const { d, watch } of discovered) {
    for (const address of watch?.addresses ?? []) {
      const options = discoveredTarget(base, d, address)
      if (seen.has(options.origin)) continue
      seen.add(options.origin)
      entries.push({ options, group: d.group })
    }
  }
  return entries
}

/** A discovered address as a target: dialled by IP, named (Host, TLS) by its DNS name. */
function discoveredTarget (base: Pick<TargetOptions, 'upstream' | 'connectTimeoutMs' | 'breaker'>, d: DiscoverConfig, a: DiscoveredAddress): TargetOptions {
  const name = serviceName(d)
  const defaultPort = d.scheme === 'https' ? 443 : 80
  return {
    ...base,
    origin: `${d.scheme}://${a.ip.includes(':') ? `[${a.ip}]` : a.ip}:${a.port}`,
    host: a.port === defaultPort ? name : `${name}:${a.port}`,
    servername: name,
    maxConnections: d.maxConnections,
    weight: a.weight ?? d.weight,
    protocol: d.protocol,
    tls: d.tls
  }
}

/** The upstream's health checker of the previous table, with new settings; a new one when it had none. */
function healthOf (before: CompiledUpstream | undefined, config: UpstreamConfig, log: DiscoveryLog | undefined): HealthChecker | undefined {
  if (config.healthCheck === undefined) return undefined
  const kept = before?.health
  if (kept === undefined) return new HealthChecker(config.name, config.healthCheck, log ?? { info () {}, warn () {} })
  kept.configure(config.healthCheck)
  return kept
}

function budgetOf (before: CompiledUpstream | undefined, config: UpstreamConfig): RetryBudget {
  const budget = before?.budget ?? new RetryBudget(config.retry.budget)
  budget.share = config.retry.budget
  return budget
}

function noop (): void {}
