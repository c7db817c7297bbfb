// The route file: one per upstream service, YAML or JSON. The schema is the operators' contract
// and is published as JSON Schema (schema/route-file.schema.json, `npm run schema`).
import { createHash, createPrivateKey, createPublicKey, X509Certificate, type JsonWebKey, type KeyObject } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { isIP } from 'node:net'
import Type, { type Static } from 'typebox'
import Value from 'typebox/value'
import YAML from 'yaml'
import type { LimitAlgorithm } from '../../plugins/rate-limit/store/types.js'
import type { BreakerOptions } from '../upstream/breaker.js'
import type { RetryOptions } from '../upstream/retry.js'
import type { TargetTls } from '../upstream/target.js'
import { Duration, Size, toBytes, toMs } from './units.js'
import { schemaErrors } from './validate.js'

/** Methods a route may list: those Fastify serves (CONNECT is not proxied). */
export const HTTP_METHODS: readonly string[] = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'TRACE']

// A prefix the router can hold as-is: no find-my-way syntax (`:`, `*`), no dot segments,
// no empty segments, no trailing slash.
const PATH = "^/$|^(/(?!\\.{1,2}(?:/|$))[A-Za-z0-9\\-._~!$&'+,;=@%]+)+$"

// Key material is read from files (mounted secrets), never written in the route file.
const PemPath = (what: string) => Type.String({
  pattern: '^/',
  errorMessage: 'must be an absolute path to a PEM file: certificates and keys are read from files, never written in route files',
  description: `Absolute path of a file holding the ${what}`
})

const Target = Type.Object({
  url: Type.String({
    pattern: '^https?://[^/?#]+/?$',
    errorMessage: 'must be an http(s) URL with no path, e.g. http://10.0.0.5:9001',
    description: 'Origin of one instance of the service: http(s)://host:port, no path.'
  }),
  maxConnections: Type.Integer({ minimum: 1, default: 100, description: 'In-flight requests this target may hold; beyond it the target counts as full. Default 100.' }),
  weight: Type.Number({ exclusiveMinimum: 0, default: 1, description: 'Share of traffic relative to the other targets when none is loaded. Default 1.' }),
  tls: Type.Optional(Type.Object({
    ca: Type.Optional(PemPath('CA certificates (PEM) that sign the upstream\'s certificate; they replace the public roots for this target.')),
    servername: Type.Optional(Type.String({
      pattern: '^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$',
      errorMessage: 'must be a DNS name such as users.internal (no port, no scheme)',
      description: 'Name sent as SNI and checked against the upstream\'s certificate. Default: the host of url (an IP address is checked against the certificate\'s IP entries).'
    })),
    cert: Type.Optional(PemPath('client certificate (PEM, chain allowed) for mutual TLS; needs key.')),
    key: Type.Optional(PemPath('private key (PEM, unencrypted) of cert; needs cert.'))
  }, {
    additionalProperties: false,
    dependencies: { cert: ['key'], key: ['cert'] },
    errorMessage: 'must be a mapping of ca, servername, cert, key (all optional; cert and key go together)',
    description: 'TLS to this target (https:// only). The upstream\'s certificate is always verified; there is no option to turn that off.'
  }))
}, { additionalProperties: false })

// Header names (RFC 9110 token).
const HEADER_NAME = "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"

const FromEnv = (what: string) => Type.Object({
  env: Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$', errorMessage: 'must be an environment variable name', description: `Environment variable holding ${what}.` })
}, { additionalProperties: false, errorMessage: 'must be { env: VARIABLE }: keys are read from the environment, never written in route files', description: `${what}, read from an environment variable (never written in the file).` })

/** JWS algorithms a route may allow. `none` is not among them. */
export const JWT_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'HS256', 'HS384', 'HS512'] as const
const StringOrList = (description: string) => Type.Union([Type.String({ minLength: 1 }), Type.Array(Type.String({ minLength: 1 }), { minItems: 1, uniqueItems: true })], {
  errorMessage: 'must be a string or a list of strings', description
})

const Auth = Type.Object({
  jwt: Type.Object({
    jwksUrl: Type.Optional(Type.String({
      pattern: '^https?://[^\\s]+$',
      errorMessage: 'must be an https:// URL (http:// only for localhost)',
      description: 'The issuer\'s JSON Web Key Set, fetched once and cached. One of jwksUrl, publicKey, secret.'
    })),
    publicKey: Type.Optional(FromEnv('a PEM public key (SPKI) or a public JWK')),
    secret: Type.Optional(FromEnv('an HMAC secret of at least 32 bytes (HS256/384/512)')),
    issuer: StringOrList('Accepted `iss` values.'),
    audience: StringOrList('Accepted `aud` values: the token must name at least one.'),
    algorithms: Type.Optional(Type.Array(Type.Union(JWT_ALGORITHMS.map(a => Type.Literal(a))), {
      minItems: 1,
      uniqueItems: true,
      errorMessage: `must be a list among ${JWT_ALGORITHMS.join(', ')}`,
      description: 'Allowed `alg` values. Default: the asymmetric ones (RS*, PS*, ES*, EdDSA) for jwksUrl and publicKey, HS* for secret.'
    })),
    clockTolerance: Duration({ default: '30s', description: 'Leeway for exp, nbf and iat against clock skew. Default 30s.' }),
    requiredScopes: Type.Optional(Type.Array(Type.String({ pattern: '^\\S+$' }), {
      minItems: 1, uniqueItems: true, description: 'Scopes the token must carry (in `scope`, space-separated, or `scp`); otherwise 403.'
    })),
    forwardClaims: Type.Optional(Type.Record(Type.String({ minLength: 1 }), Type.String({ pattern: HEADER_NAME, errorMessage: 'must be a header name' }), {
      description: 'Claim → request header sent upstream. The client\'s own values of these headers are always removed first.'
    })),
    forwardToken: Type.Boolean({ default: true, description: 'Keep the Authorization header for the upstream. Default true.' })
  }, { additionalProperties: false, description: 'A signed JWT in `Authorization: Bearer`, verified at the gateway.' })
}, { additionalProperties: false, description: 'Authentication of this route. Absent: public.' })

const Route = Type.Object({
  path: Type.String({
    pattern: PATH,
    errorMessage: 'must be a path prefix such as /api/users: starts with /, no trailing slash, no //, . or .. segments, no : or *',
    description: 'Path prefix: matches the path itself and everything below it (/api/users, /api/users/42), never /api/usersX.'
  }),
  methods: Type.Optional(Type.Array(Type.Union(HTTP_METHODS.map(m => Type.Literal(m)), { errorMessage: `must be a method in capitals among ${HTTP_METHODS.join(', ')}` }), {
    minItems: 1, uniqueItems: true, description: 'Methods this route serves. Default: all.'
  })),
  hosts: Type.Optional(Type.Array(Type.String({
    pattern: '^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$',
    errorMessage: 'must be a host name such as api.example.com (no port, no scheme)'
  }), { minItems: 1, uniqueItems: true, description: 'Host header values this route serves (port ignored). Default: any host.' })),
  rewritePrefix: Type.Optional(Type.String({
    pattern: "^(/[A-Za-z0-9\\-._~!$&'+,;=@%:]*)*$",
    errorMessage: "must be '' or a path starting with /",
    description: "Replaces the matched prefix before forwarding; '' strips it. Default: the path is forwarded unchanged."
  })),
  bodyLimit: Type.Optional(Size({ description: 'Largest request body on this route. Default: BODY_LIMIT.' })),
  allowEncodedSlashes: Type.Boolean({
    default: false,
    description: 'Forward paths with %2F or %5C (kept encoded) instead of refusing them with 400. Only for services that need them and do not decode them into separators. Default false.'
  }),
  auth: Type.Optional(Auth),
  rateLimit: Type.Optional(Type.Object({
    max: Type.Integer({ minimum: 1, description: 'Requests admitted per window and key.' }),
    window: Duration({ default: '1m', description: 'Sliding window. Default 1m.' }),
    key: Type.String({
      pattern: '^(ip|header:[A-Za-z0-9!#$%&\'*+.^_`|~-]+|claim:[^\\s]+)$',
      default: 'ip',
      errorMessage: 'must be ip, header:<name> or claim:<name>',
      description: 'Whose budget a request spends: ip (the client address; TRUST_PROXY decides whether X-Forwarded-For counts), header:<name>, or claim:<name> (a claim of the verified token; the route needs auth). Default ip.'
    }),
    algorithm: Type.Union([Type.Literal('sliding-log'), Type.Literal('sliding-window')], {
      default: 'sliding-log', errorMessage: 'must be sliding-log or sliding-window', description: 'sliding-log: exact (one entry per request in the window); sliding-window: two counters, O(1) memory per key, approximate. Default sliding-log.'
    }),
    onStoreError: Type.Union([Type.Literal('local'), Type.Literal('open'), Type.Literal('closed')], {
      default: 'local', errorMessage: 'must be local, open or closed', description: 'When Redis fails: local (an in-process limit with the same window), open (admit), closed (503). Default local.'
    })
  }, { additionalProperties: false, description: 'Rate limit of this route: all requests matching it from one key share one budget. Absent: not limited.' }))
}, { additionalProperties: false })

export const RouteFileSchema = Type.Object({
  $schema: Type.Optional(Type.String({ description: 'Editor hint: the JSON Schema of this file.' })),
  name: Type.Optional(Type.String({
    pattern: '^[a-z0-9][a-z0-9_-]{0,62}$',
    errorMessage: 'must be lowercase letters, digits, - or _ (at most 63), starting with a letter or digit',
    description: 'Upstream name used in logs and metrics. Default: the file name without extension. Unique.'
  })),
  targets: Type.Array(Target, { minItems: 1, description: 'Instances of the service; each request goes to the least saturated one.' }),
  routes: Type.Array(Route, { minItems: 1, description: 'Path rules that send requests to this upstream.' }),
  timeouts: Type.Optional(Type.Object({
    connect: Duration({ default: '2s', description: 'TCP/TLS connect timeout. Default 2s.' }),
    request: Duration({ default: '30s', description: 'Per try: time for the upstream to answer with its headers. Default 30s.' }),
    idle: Duration({ default: '30s', description: 'Longest silence while the upstream streams its body; the response is cut after it. Default 30s.' })
  }, { additionalProperties: false, default: {}, description: 'Upstream timeouts.' })),
  retry: Type.Optional(Type.Object({
    attempts: Type.Integer({ minimum: 0, maximum: 10, default: 1, description: 'Retries after the first try; 0 disables. Default 1.' }),
    backoff: Duration({ default: '25ms', description: 'Base of exponential backoff with full jitter. Default 25ms.' }),
    maxBackoff: Duration({ default: '250ms', description: 'Cap of the backoff. Default 250ms.' }),
    on: Type.Array(Type.Union([
      Type.Literal('connect-failure'), Type.Literal('reset'), Type.Literal('timeout'), Type.Integer({ minimum: 500, maximum: 599 })
    ], { errorMessage: 'must be connect-failure, reset, timeout or a status from 500 to 599' }), {
      uniqueItems: true, default: ['connect-failure', 'reset', 'timeout', 502, 503, 504], description: 'What is retried. Default [connect-failure, reset, timeout, 502, 503, 504].'
    }),
    budget: Type.Number({ minimum: 0, maximum: 1, default: 0.2, description: 'Retries in progress may be at most this share of requests in progress (at least 3). Default 0.2.' }),
    bufferBody: Size({ default: '64kb', description: 'Request bodies up to this size are kept so a retry can send them again; larger or chunked bodies are never retried. Default 64kb.' })
  }, { additionalProperties: false, default: {}, description: 'Retries: to another target where there is one. Connect failures are retried for any method; other failures only for GET, HEAD, OPTIONS, PUT, DELETE, TRACE.' })),
  circuitBreaker: Type.Optional(Type.Object({
    consecutiveFailures: Type.Integer({ minimum: 0, default: 5, description: 'Failures in a row that open a target\'s breaker; 0 turns this rule off. Default 5.' }),
    failureRatio: Type.Number({ minimum: 0, maximum: 1, default: 0.5, description: 'Or: this share of requests failed within the window; 0 turns this rule off. Default 0.5.' }),
    minRequests: Type.Integer({ minimum: 1, default: 20, description: '... among at least this many requests. Default 20.' }),
    window: Duration({ default: '10s', description: 'Sliding window of the ratio rule. Default 10s.' }),
    openFor: Duration({ default: '5s', description: 'Time open before a probe is let through; doubles on each consecutive re-open. Default 5s.' }),
    maxOpenFor: Type.Optional(Duration({ description: 'Cap of the doubling. Default: openFor.' })),
    halfOpenProbes: Type.Integer({ minimum: 1, default: 1, description: 'Concurrent trial requests while half-open. Default 1.' }),
    closeAfter: Type.Integer({ minimum: 1, default: 2, description: 'Successful probes that close the breaker. Default 2.' }),
    failureStatuses: Type.Array(Type.Integer({ minimum: 500, maximum: 599 }), {
      uniqueItems: true, default: [502, 503, 504], description: 'Upstream statuses that count as failures (connect errors, resets and timeouts always do). Default [502, 503, 504].'
    })
  }, { additionalProperties: false, default: {}, description: 'One breaker per target: an open target gets no traffic.' }))
}, {
  additionalProperties: false,
  $id: 'https://gatehouse.dev/schema/route-file.schema.json',
  title: 'Gatehouse route file',
  description: 'One upstream service: its targets and the routes that reach it.'
})

type RawRouteFile = Static<typeof RouteFileSchema>

export interface RouteConfig {
  path: string
  /** Undefined: every method. */
  methods: string[] | undefined
  /** Lowercase; undefined: every host. */
  hosts: string[] | undefined
  rewritePrefix: string | undefined
  bodyLimit: number | undefined
  allowEncodedSlashes: boolean
  auth: JwtAuthConfig | undefined
  rateLimit: RateLimitConfig | undefined
}

/** Where a route's verification keys come from. */
export type JwtKeySource =
  | { kind: 'jwks', url: string }
  | { kind: 'publicKey', env: string, pem: string }
  | { kind: 'secret', env: string, secret: string }

export interface JwtAuthConfig {
  keySource: JwtKeySource
  issuer: string[]
  audience: string[]
  algorithms: string[]
  clockToleranceMs: number
  requiredScopes: string[]
  /** [claim, lowercase header name] */
  forwardClaims: Array<[string, string]>
  forwardToken: boolean
}

/** Whose budget a request spends. */
export type RateLimitKey = { kind: 'ip' } | { kind: 'header', name: string } | { kind: 'claim', name: string }

export interface RateLimitConfig {
  max: number
  windowMs: number
  key: RateLimitKey
  algorithm: LimitAlgorithm
  onStoreError: 'local' | 'open' | 'closed'
}

export interface TargetConfig {
  url: string
  /** `protocol//host:port`, as undici wants it. */
  origin: string
  maxConnections: number
  weight: number
  /** Present only when the file sets `tls`: the contents of its files, checked. */
  tls?: TargetTls
}

/** A route file after checking: defaults applied, units resolved, frozen. */
export interface UpstreamConfig {
  name: string
  file: string
  targets: TargetConfig[]
  routes: RouteConfig[]
  timeouts: { connectMs: number, requestMs: number, idleMs: number }
  retry: RetryOptions
  breaker: BreakerOptions & { failureStatuses: number[] }
}

/** A route file that cannot be used, with one line per problem. */
export class RouteFileError extends Error {
  constructor (readonly file: string, readonly problems: string[]) {
    super(problems.map(p => `${file}: ${p}`).join('\n'))
    this.name = 'RouteFileError'
  }
}

/** Paths the gateway answers itself; a route may sit below them but not on them. */
export const RESERVED_PATHS = ['/health', '/ready', '/metrics']

export const ROUTE_FILE_EXTENSIONS = ['.yaml', '.yml', '.json']

/** Parses and checks one route file; throws RouteFileError listing every problem. */
export function parseRouteFile (file: string, text: string, env: NodeJS.ProcessEnv = process.env): UpstreamConfig {
  let data: unknown
  if (file.endsWith('.json')) {
    try {
      data = JSON.parse(text)
    } catch (err) {
      throw new RouteFileError(file, [`not valid JSON: ${(err as Error).message.replace(/\s*\n\s*/g, ' ')}`])
    }
  } else {
    const doc = YAML.parseDocument(text, { prettyErrors: true, uniqueKeys: true })
    if (doc.errors.length > 0) {
      throw new RouteFileError(file, doc.errors.map(e => `not valid YAML: ${e.message.split('\n')[0]}`))
    }
    data = doc.toJS()
  }
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    throw new RouteFileError(file, ['/: must be a mapping with targets and routes'])
  }
  // Default fills what is missing; no Clean: unknown keys are typos to report, not to drop.
  const value = Value.Default(RouteFileSchema, structuredClone(data))
  const problems = schemaErrors(RouteFileSchema, value)
  if (problems.length > 0) throw new RouteFileError(file, problems)
  const raw = value as RawRouteFile
  const tlsProblems: string[] = []
  const upstream: UpstreamConfig = {
    name: raw.name ?? defaultName(file),
    file,
    targets: raw.targets.map((t, i) => targetConfig(t, i, tlsProblems)),
    routes: raw.routes.map(r => ({
      path: r.path,
      methods: r.methods,
      hosts: r.hosts?.map(h => h.toLowerCase()),
      rewritePrefix: r.rewritePrefix,
      bodyLimit: r.bodyLimit === undefined ? undefined : toBytes(r.bodyLimit),
      allowEncodedSlashes: r.allowEncodedSlashes,
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
    retry: {
      attempts: raw.retry!.attempts,
      backoffMs: toMs(raw.retry!.backoff),
      maxBackoffMs: toMs(raw.retry!.maxBackoff),
      on: raw.retry!.on,
      budget: raw.retry!.budget,
      bufferBody: toBytes(raw.retry!.bufferBody)
    },
    breaker: breakerOptions(raw.circuitBreaker!)
  }
  const semantic = [...checkUpstream(upstream, raw), ...tlsProblems]
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
  const claims = new Map<string, number>()
  upstream.routes.forEach((route, i) => {
    if (RESERVED_PATHS.includes(route.path)) problems.push(`/routes/${i}/path: ${route.path} is served by the gateway itself`)
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

type RawTarget = RawRouteFile['targets'][number]
type RawTls = NonNullable<RawTarget['tls']>

function targetConfig (raw: RawTarget, i: number, problems: string[]): TargetConfig {
  const { tls, ...rest } = raw
  const target: TargetConfig = { ...rest, origin: new URL(raw.url).origin }
  if (tls === undefined) return target
  if (!raw.url.startsWith('https://')) {
    problems.push(`/targets/${i}/tls: only for https:// targets (${raw.url} is plain HTTP)`)
    return target
  }
  const loaded = loadTls(tls, `/targets/${i}/tls`, problems)
  if (loaded !== undefined) target.tls = loaded
  return target
}

/** Reads and checks a target's TLS files; undefined (with problems) when any is unusable. */
function loadTls (raw: RawTls, at: string, problems: string[]): TargetTls | undefined {
  const before = problems.length
  const read = (field: 'ca' | 'cert' | 'key'): string | undefined => {
    const path = raw[field]
    if (path === undefined) return undefined
    try {
      return readFileSync(path, 'utf8')
    } catch (err) {
      // Node's message repeats the path (`ENOENT: no such file or directory, open '/x'`).
      problems.push(`${at}/${field}: cannot read ${path}: ${(err as Error).message.replace(/, \w+ '.*'$/, '')}`)
      return undefined
    }
  }
  const ca = read('ca')
  const cert = read('cert')
  const key = read('key')
  if (ca !== undefined) {
    if (/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(ca)) problems.push(`${at}/ca: ${raw.ca} holds a private key: a CA bundle holds certificates only`)
    else {
      const problem = certificatesProblem(ca)
      if (problem !== undefined) problems.push(`${at}/ca: ${raw.ca} ${problem}`)
    }
  }
  let leaf: X509Certificate | undefined
  if (cert !== undefined) {
    const problem = certificatesProblem(cert)
    if (problem !== undefined) problems.push(`${at}/cert: ${raw.cert} ${problem}`)
    else leaf = new X509Certificate(pemBlocks(cert)[0]!)
  }
  let privateKey: KeyObject | undefined
  if (key !== undefined) {
    try {
      privateKey = createPrivateKey(key)
    } catch (err) {
      const encrypted = /ENCRYPTED/.test(key) || (err as { code?: string }).code === 'ERR_MISSING_PASSPHRASE'
      problems.push(`${at}/key: ${raw.key} ${encrypted ? 'is encrypted: give an unencrypted key (there is no passphrase option)' : 'holds no PEM private key'}`)
    }
  }
  if (leaf !== undefined && privateKey !== undefined && !leaf.checkPrivateKey(privateKey)) {
    problems.push(`${at}/key: ${raw.key} is not the private key of the certificate in ${raw.cert}`)
  }
  if (raw.servername !== undefined && isIP(raw.servername) !== 0) {
    problems.push(`${at}/servername: must be a DNS name (an IP address in url is checked as it is)`)
  }
  if (problems.length > before) return undefined
  const tls: TargetTls = { fingerprint: createHash('sha256').update(JSON.stringify([ca, raw.servername, cert, key])).digest('hex') }
  if (ca !== undefined) tls.ca = ca
  if (raw.servername !== undefined) tls.servername = raw.servername
  if (cert !== undefined && key !== undefined) Object.assign(tls, { cert, key })
  return tls
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g

function pemBlocks (text: string): string[] {
  return text.match(PEM_CERTIFICATE) ?? []
}

/** Why `text` is no list of PEM certificates, or undefined. */
function certificatesProblem (text: string): string | undefined {
  const blocks = pemBlocks(text)
  if (blocks.length === 0) return 'holds no PEM certificate (-----BEGIN CERTIFICATE-----)'
  for (const [n, block] of blocks.entries()) {
    try {
      // eslint-disable-next-line no-new
      new X509Certificate(block)
    } catch {
      return `certificate ${n + 1} is not a valid X.509 certificate`
    }
  }
  return undefined
}

/** Every (method, host, path) a route serves, as `METHOD host path` strings. */
export function routeClaims (route: RouteConfig): string[] {
  const claims: string[] = []
  for (const method of route.methods ?? HTTP_METHODS) {
    for (const host of route.hosts ?? ['*']) claims.push(`${method} ${host} ${route.path}`)
  }
  return claims
}

function rateLimitKey (text: string): RateLimitKey {
  if (text.startsWith('header:')) return { kind: 'header', name: text.slice(7).toLowerCase() }
  if (text.startsWith('claim:')) return { kind: 'claim', name: text.slice(6) }
  return { kind: 'ip' }
}

const ASYMMETRIC = JWT_ALGORITHMS.filter(a => !a.startsWith('HS'))
const HMAC = JWT_ALGORITHMS.filter(a => a.startsWith('HS'))
const list = (value: string | string[]): string[] => typeof value === 'string' ? [value] : value

type RawJwt = NonNullable<RawRouteFile['routes'][number]['auth']>['jwt']

// A key source read from the environment may be missing: it is left empty here and reported by checkJwt.
function jwtAuth (raw: RawJwt, env: NodeJS.ProcessEnv): JwtAuthConfig {
  const keySource: JwtKeySource = raw.secret !== undefined
    ? { kind: 'secret', env: raw.secret.env, secret: env[raw.secret.env] ?? '' }
    : raw.publicKey !== undefined
      ? { kind: 'publicKey', env: raw.publicKey.env, pem: env[raw.publicKey.env] ?? '' }
      : { kind: 'jwks', url: raw.jwksUrl ?? '' }
  return {
    keySource,
    issuer: list(raw.issuer),
    audience: list(raw.audience),
    algorithms: raw.algorithms ?? (keySource.kind === 'secret' ? HMAC : ASYMMETRIC),
    clockToleranceMs: toMs(raw.clockTolerance),
    requiredScopes: raw.requiredScopes ?? [],
    forwardClaims: Object.entries(raw.forwardClaims ?? {}).map(([claim, header]) => [claim, header.toLowerCase()]),
    forwardToken: raw.forwardToken
  }
}

// Headers a claim must not overwrite: they frame or route the request, or carry the token.
const RESERVED_HEADERS = new Set(['host', 'content-length', 'transfer-encoding', 'connection', 'authorization', 'te', 'upgrade', 'x-request-id'])

/** Problems of one auth.jwt block, as `<pointer below it>: <problem>`. */
function checkJwt (raw: RawJwt, auth: JwtAuthConfig): string[] {
  const problems: string[] = []
  const sources = [raw.jwksUrl, raw.publicKey, raw.secret].filter(s => s !== undefined).length
  if (sources !== 1) problems.push(': needs exactly one key source: jwksUrl, publicKey or secret')
  const key = auth.keySource
  if (sources === 1 && key.kind === 'jwks') {
    let url: URL | undefined
    try { url = new URL(key.url) } catch {}
    if (url === undefined) problems.push('/jwksUrl: is not a URL')
    else if (url.protocol !== 'https:' && !['localhost', '127.0.0.1', '[::1]'].includes(url.hostname)) problems.push('/jwksUrl: must be https:// (plain http:// only for localhost): keys fetched in the clear can be swapped on the way')
  }
  if (sources === 1 && key.kind !== 'jwks') {
    const pointer = key.kind === 'secret' ? '/secret/env' : '/publicKey/env'
    const value = key.kind === 'secret' ? key.secret : key.pem
    if (value === '') problems.push(`${pointer}: environment variable ${key.env} is not set`)
    else if (key.kind === 'secret' && Buffer.byteLength(key.secret) < 32) problems.push(`${pointer}: the secret in ${key.env} is shorter than 32 bytes (HS256 needs at least 256 bits)`)
    else if (key.kind === 'publicKey') {
      const problem = publicKeyProblem(key.pem)
      if (problem !== undefined) problems.push(`${pointer}: ${key.env} ${problem}`)
    }
  }
  const wrong = auth.algorithms.filter(a => (key.kind === 'secret') !== a.startsWith('HS'))
  if (sources === 1 && wrong.length > 0) {
    problems.push(key.kind === 'secret'
      ? `/algorithms: ${wrong.join(', ')} need a public key or jwksUrl, not a secret`
      : `/algorithms: ${wrong.join(', ')} need a secret; with a public key anyone who has the key could sign tokens`)
  }
  const headers = new Map<string, string>()
  for (const [claim, header] of auth.forwardClaims) {
    if (RESERVED_HEADERS.has(header)) problems.push(`/forwardClaims/${claim}: ${header} cannot carry a claim`)
    const other = headers.get(header)
    if (other !== undefined) problems.push(`/forwardClaims/${claim}: ${header} already carries ${other}`)
    headers.set(header, claim)
  }
  return problems
}

function publicKeyProblem (text: string): string | undefined {
  if (/PRIVATE KEY/.test(text)) return 'holds a private key: give the public key only'
  try {
    if (!text.trimStart().startsWith('{')) return createPublicKey(text).type === 'public' ? undefined : 'is not a public key'
    const jwk = JSON.parse(text) as JsonWebKey
    if (jwk.d !== undefined || jwk.k !== undefined) return 'holds a private or secret key: give the public key only'
    createPublicKey({ key: jwk, format: 'jwk' })
    return undefined
  } catch {
    return 'is not a PEM public key (SPKI) or a public JWK'
  }
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
