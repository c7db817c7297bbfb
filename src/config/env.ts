// Process settings from the environment (and `.env` when present), checked once at start.
import { existsSync } from 'node:fs'
import { isIP } from 'node:net'
import Type, { type Static } from 'typebox'
import Value from 'typebox/value'
import { ConfigEnvError } from '../errors.js'
import { parseRedisUrl, type RedisConnection } from './redis-url.js'
import { Duration, Size, toBytes, toMs } from './units.js'
import { schemaErrors } from './validate.js'

export const EnvSchema = Type.Object({
  PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 8080, description: 'Port the gateway listens on.' }),
  ADMIN_PORT: Type.Optional(Type.Integer({ minimum: 0, maximum: 65535, description: 'Serve /metrics on this port (same HOST) instead of the main port, so it need not be public; unset: the main port.' })),
  TLS_PORT: Type.Optional(Type.Integer({ minimum: 0, maximum: 65535, description: 'Also serve HTTPS on this port (same HOST, same routes): HTTP/2 and HTTP/1.1 chosen by ALPN. Needs TLS_CERT_FILE and TLS_KEY_FILE; unset: no TLS listener.' })),
  TLS_CERT_FILE: Type.Optional(Type.String({ minLength: 1, description: 'PEM certificate (chain) of the TLS listener; reloaded when the file changes (a bad new one is logged and the old one kept).' })),
  TLS_KEY_FILE: Type.Optional(Type.String({ minLength: 1, description: 'PEM private key (unencrypted) of TLS_CERT_FILE; reloaded with it.' })),
  H2C_PORT: Type.Optional(Type.Integer({ minimum: 0, maximum: 65535, description: 'Also serve cleartext HTTP/2 with prior knowledge (h2c) on this port (same HOST, same routes); HTTP/1.1 is not answered there. Unset: none.' })),
  H2_MAX_CONCURRENT_STREAMS: Type.Integer({ minimum: 1, maximum: 1000, default: 100, description: 'Most streams (requests) one HTTP/2 connection may have open at once, on TLS_PORT and H2C_PORT.' }),
  HOST: Type.String({ minLength: 1, default: '0.0.0.0', description: 'Address the gateway binds to.' }),
  ROUTES_DIR: Type.String({ minLength: 1, default: './routes.d', description: 'Folder of route files, one per upstream service.' }),
  REDIS_URL: Type.Optional(Type.String({ description: 'Redis for rate-limit budgets shared by all replicas: redis://host:port, redis+cluster://host:port,host:port or redis+sentinel://host:port,host:port/master-name (rediss for TLS; see docs/rate-limits.md); unset: in-memory stores.' })),
  REDIS_KEY_PREFIX: Type.String({ minLength: 1, default: 'gatehouse:rl:', description: 'Prefix of every rate-limit key in Redis (budgets and replica heartbeats): gateways with the same prefix share budgets; give each deployment that shares one Redis its own.' }),
  REDIS_TIMEOUT: Duration({ default: '50ms', description: 'Longest wait for one Redis call of the rate limiter before the route\'s onStoreError applies.' }),
  JWKS_COOLDOWN: Duration({ default: '30s', description: 'After a JWKS fetch, how long a token with an unknown kid is refused without fetching again (a flood of made-up kids cannot hammer the issuer).' }),
  AFFINITY_SECRET: Type.Optional(Type.String({ minLength: 16, errorMessage: 'must be at least 16 characters', description: 'Key of the sticky-session cookie values (routes[].affinity.cookie): they name a target by a keyed hash of its address, so a client cannot learn or guess the address; give every replica the same one. Unset: a built-in key, so the values cannot be mapped back at a glance but can be by trying candidate addresses.' })),
  LOG_LEVEL: Type.Union(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map(l => Type.Literal(l)), {
    default: 'info', errorMessage: 'must be one of fatal, error, warn, info, debug, trace, silent', description: 'pino log level; info writes one access line per request.'
  }),
  LOG_FORMAT: Type.Optional(Type.Union([Type.Literal('json'), Type.Literal('pretty')], {
    errorMessage: 'must be json or pretty', description: 'json: one JSON object per line (for log collectors); pretty: coloured lines for people (pino-pretty); unset: pretty when stdout is a terminal, json otherwise.'
  })),
  TRUST_PROXY: Type.String({ default: 'false', description: 'Peers whose X-Forwarded-* headers are believed: false, a hop count, or a comma-separated list of IPs/CIDRs (10.0.0.0/8,192.168.1.10); true is refused, it would let any client forge its address.' }),
  SHUTDOWN_DELAY: Duration({ default: 0, description: 'After SIGTERM, how long /ready answers 503 while requests are still served, before the listener closes (load balancers need a moment to notice).' }),
  SHUTDOWN_TIMEOUT: Duration({ default: '30s', description: 'How long requests in flight get to finish once the listener closes; then their connections are closed and the exit code is 1.' }),
  BODY_LIMIT: Size({ default: '1mb', description: 'Largest request body, unless a route sets bodyLimit.' }),
  REQUEST_BUFFER_SIZE: Size({ default: '1mb', description: 'Request bodies up to this size are received whole before a target is chosen (a slow upload holds memory, not an upstream slot), and are what a retry sends again; larger ones are streamed. Routes may set requestBuffer.' }),
  REQUEST_BUFFER_MEMORY: Size({ default: '64mb', description: 'Memory all request bodies being received whole may use together; past it, a request that would need more is answered 503 GATEHOUSE_ERR_REQUEST_BUFFER_FULL with Retry-After.' }),
  RESPONSE_BUFFER_SIZE: Size({ default: '2mb', description: 'Response bytes the gateway may read ahead of a client that reads slower than the upstream sends, so the upstream request ends and frees its slot. Routes may set responseBuffer.' }),
  RESPONSE_BUFFER_MEMORY: Size({ default: '64mb', description: 'Memory all responses read ahead of their clients may use together; past it, an upstream waits for its client.' }),
  MAX_HEADER_SIZE: Size({ default: '16kb', description: 'Largest header fields of a request (names, values, separators; the request line is MAX_URL_LENGTH\'s); larger gets 431.' }),
  ALLOW_UNDERSCORE_HEADERS: Type.Boolean({ default: false, description: 'Forward request header names that contain `_` (dropped by default: CGI-style upstreams read `X_User` as `X-User`).' }),
  MAX_HEADERS: Type.Integer({ minimum: 1, maximum: 1000, default: 100, description: 'Most request headers accepted; more get 431 (Node alone would silently drop those beyond its count).' }),
  MAX_URL_LENGTH: Size({ default: '8kb', description: 'Longest request target (path and query); longer gets 414.' }),
  MIN_DATA_RATE: Size({ default: 240, description: 'Slowest a client may read its response, or send a body the gateway receives whole, in bytes per second averaged over the last MIN_DATA_RATE_GRACE, once that grace has passed; slower readers are cut (connection reset; an upstream request they still hold is cancelled), slower senders get 408 (0: off).' }),
  MIN_DATA_RATE_GRACE: Duration({ default: '5s', description: 'How long a client may stay below MIN_DATA_RATE, and the window its rate is averaged over.' }),
  HEADERS_TIMEOUT: Duration({ default: '10s', description: 'Time a client gets to send the whole request head; then 408 and the connection is closed (slowloris).' }),
  REQUEST_TIMEOUT: Duration({ default: '30s', description: 'Time a client gets to send the whole request, body included; then 408 and close (0: off).' }),
  KEEP_ALIVE_TIMEOUT: Duration({ default: '72s', description: 'How long an idle keep-alive connection stays open (longer than the load balancer\'s idle timeout).' }),
  MAX_CONNECTIONS: Type.Integer({ minimum: 1, default: 10_000, description: 'Most client connections held at once; more are closed at accept.' }),
  RELOAD_DEBOUNCE: Duration({ default: '250ms', description: 'Quiet time after a change in ROUTES_DIR before reloading.' }),
  WATCH_ROUTES: Type.Boolean({ default: true, description: 'Reload when route files in ROUTES_DIR change (SIGUSR1 and SIGHUP always reload).' }),
  MAX_EVENT_LOOP_DELAY: Duration({ default: '1s', description: '/health answers 503 above this event-loop delay (0: off).' }),
  MAX_EVENT_LOOP_UTILIZATION: Type.Number({ minimum: 0, maximum: 1, default: 0, description: '/health answers 503 above this event-loop utilisation (0: off).' }),
  MAX_HEAP_USED_BYTES: Size({ default: 0, description: '/health answers 503 above this heap use (0: off).' }),
  MAX_RSS_BYTES: Size({ default: 0, description: '/health answers 503 above this resident memory (0: off).' })
})

type RawEnv = Static<typeof EnvSchema>

export type LogFormat = 'json' | 'pretty'

/** Trust for X-Forwarded-*: nobody, the nearest N hops, or these addresses. */
export type TrustProxy = false | number | string[]

/** The TLS listener (TLS_PORT, TLS_CERT_FILE, TLS_KEY_FILE). */
export interface TlsListenerEnv {
  port: number
  certFile: string
  keyFile: string
}

export interface GatewayEnv {
  port: number
  tls: TlsListenerEnv | undefined
  h2cPort: number | undefined
  h2MaxConcurrentStreams: number
  adminPort: number | undefined
  host: string
  routesDir: string
  redis: RedisConnection | undefined
  redisKeyPrefix: string
  redisTimeoutMs: number
  jwksCooldownMs: number
  affinitySecret: string | undefined
  logLevel: string
  logFormat: LogFormat
  trustProxy: TrustProxy
  shutdownDelayMs: number
  shutdownTimeoutMs: number
  bodyLimit: number
  maxHeaderSize: number
  requestBufferSize: number
  requestBufferMemory: number
  responseBufferSize: number
  responseBufferMemory: number
  maxHeaders: number
  allowUnderscoreHeaders: boolean
  minDataRate: number
  minDataRateGraceMs: number
  maxUrlLength: number
  headersTimeoutMs: number
  requestTimeoutMs: number
  keepAliveTimeoutMs: number
  maxConnections: number
  reloadDebounceMs: number
  watchRoutes: boolean
  maxEventLoopDelayMs: number
  maxEventLoopUtilization: number
  maxHeapUsedBytes: number
  maxRssBytes: number
}

/**
 * Reads `.env` (variables already set win), then checks the environment.
 * Throws ConfigEnvError naming every wrong variable.
 */
export function loadEnv (env: NodeJS.ProcessEnv = process.env, dotenvPath = '.env'): GatewayEnv {
  if (env === process.env && existsSync(dotenvPath)) process.loadEnvFile(dotenvPath)
  const picked: Record<string, unknown> = {}
  for (const key of Object.keys(EnvSchema.properties)) {
    const value = env[key]
    if (value !== undefined && value !== '') picked[key] = value
  }
  const given = { ...picked }
  const value = Value.Convert(EnvSchema, Value.Default(EnvSchema, picked)) as Record<string, unknown>
  for (const [key, text] of Object.entries(given)) {
    // Convert truncates '80.5' to 80: a number other than the one written stays text and is refused.
    if (typeof value[key] === 'number' && value[key] !== Number(text)) value[key] = text
  }
  const errors = schemaErrors(EnvSchema, value).map(line => line.replace(/^\//, ''))
  const raw = value as RawEnv
  const trust = parseTrustProxy(String(raw.TRUST_PROXY))
  if (trust instanceof Error) errors.push(`TRUST_PROXY: ${trust.message}`)
  let redis: RedisConnection | undefined
  try {
    redis = raw.REDIS_URL === undefined ? undefined : parseRedisUrl(raw.REDIS_URL)
  } catch (err) {
    errors.push(`REDIS_URL: ${(err as Error).message}`)
  }
  if (!errors.some(e => e.startsWith('REDIS_TIMEOUT')) && toMs(raw.REDIS_TIMEOUT) === 0) errors.push('REDIS_TIMEOUT: must be more than 0')
  if (errors.length === 0) {
    const headers = toMs(raw.HEADERS_TIMEOUT)
    const request = toMs(raw.REQUEST_TIMEOUT)
    if (headers === 0) errors.push('HEADERS_TIMEOUT: must be more than 0')
    if (raw.ADMIN_PORT !== undefined && raw.ADMIN_PORT !== 0 && raw.ADMIN_PORT === raw.PORT) errors.push('ADMIN_PORT: must differ from PORT')
    errors.push(...tlsProblems(raw))
    if (request > 0 && headers > request) errors.push('HEADERS_TIMEOUT: must not exceed REQUEST_TIMEOUT (the head is part of the request)')
  }
  if (errors.length > 0) throw new ConfigEnvError(errors.join('\n'))
  return Object.freeze({
    port: raw.PORT,
    tls: raw.TLS_PORT === undefined ? undefined : { port: raw.TLS_PORT, certFile: raw.TLS_CERT_FILE as string, keyFile: raw.TLS_KEY_FILE as string },
    h2cPort: raw.H2C_PORT,
    h2MaxConcurrentStreams: raw.H2_MAX_CONCURRENT_STREAMS,
    adminPort: raw.ADMIN_PORT,
    host: raw.HOST,
    routesDir: raw.ROUTES_DIR,
    redis,
    redisKeyPrefix: raw.REDIS_KEY_PREFIX,
    redisTimeoutMs: toMs(raw.REDIS_TIMEOUT),
    jwksCooldownMs: toMs(raw.JWKS_COOLDOWN),
    affinitySecret: raw.AFFINITY_SECRET,
    logLevel: raw.LOG_LEVEL,
    logFormat: raw.LOG_FORMAT ?? (process.stdout.isTTY ? 'pretty' : 'json'),
    trustProxy: trust as TrustProxy,
    shutdownDelayMs: toMs(raw.SHUTDOWN_DELAY),
    shutdownTimeoutMs: toMs(raw.SHUTDOWN_TIMEOUT),
    bodyLimit: toBytes(raw.BODY_LIMIT),
    maxHeaderSize: toBytes(raw.MAX_HEADER_SIZE),
    requestBufferSize: toBytes(raw.REQUEST_BUFFER_SIZE),
    requestBufferMemory: toBytes(raw.REQUEST_BUFFER_MEMORY),
    responseBufferSize: toBytes(raw.RESPONSE_BUFFER_SIZE),
    responseBufferMemory: toBytes(raw.RESPONSE_BUFFER_MEMORY),
    maxHeaders: raw.MAX_HEADERS,
    allowUnderscoreHeaders: raw.ALLOW_UNDERSCORE_HEADERS,
    minDataRate: toBytes(raw.MIN_DATA_RATE),
    minDataRateGraceMs: toMs(raw.MIN_DATA_RATE_GRACE),
    maxUrlLength: toBytes(raw.MAX_URL_LENGTH),
    headersTimeoutMs: toMs(raw.HEADERS_TIMEOUT),
    requestTimeoutMs: toMs(raw.REQUEST_TIMEOUT),
    keepAliveTimeoutMs: toMs(raw.KEEP_ALIVE_TIMEOUT),
    maxConnections: raw.MAX_CONNECTIONS,
    reloadDebounceMs: toMs(raw.RELOAD_DEBOUNCE),
    watchRoutes: raw.WATCH_ROUTES,
    maxEventLoopDelayMs: toMs(raw.MAX_EVENT_LOOP_DELAY),
    maxEventLoopUtilization: raw.MAX_EVENT_LOOP_UTILIZATION,
    maxHeapUsedBytes: toBytes(raw.MAX_HEAP_USED_BYTES),
    maxRssBytes: toBytes(raw.MAX_RSS_BYTES)
  })
}

const TLS_VARIABLES = ['TLS_PORT', 'TLS_CERT_FILE', 'TLS_KEY_FILE'] as const

/** The TLS listener's variables go together (all three or none), and no two listeners share a port. */
function tlsProblems (raw: RawEnv): string[] {
  const problems: string[] = []
  const given = TLS_VARIABLES.filter(name => raw[name] !== undefined)
  if (given.length > 0 && given.length < TLS_VARIABLES.length) {
    for (const name of TLS_VARIABLES.filter(n => raw[n] === undefined)) problems.push(`${name}: needed with ${given.join(' and ')} (TLS_PORT, TLS_CERT_FILE and TLS_KEY_FILE go together)`)
  }
  const ports: Array<[string, number | undefined]> = [['PORT', raw.PORT], ['ADMIN_PORT', raw.ADMIN_PORT], ['TLS_PORT', raw.TLS_PORT], ['H2C_PORT', raw.H2C_PORT]]
  for (const [name, port] of ports.slice(2)) {
    const other = ports.find(([n, p]) => n !== name && p === port && p !== 0)
    if (port !== undefined && port !== 0 && other !== undefined) problems.push(`${name}: must differ from ${other[0]}`)
  }
  return problems
}

function parseTrustProxy (text: string): TrustProxy | Error {
  const value = text.trim()
  if (value === 'false' || value === '0') return false
  if (/^\d+$/.test(value)) return Number(value)
  // "true" would let any client forge its address (and so its rate-limit key): name the peers.
  if (value === 'true') return new Error('"true" would trust every peer; give a hop count or a list of IPs/CIDRs')
  const entries = value.split(',').map(s => s.trim()).filter(s => s !== '')
  for (const entry of entries) {
    const [ip, bits, extra] = entry.split('/')
    const family = isIP(ip ?? '')
    const maxBits = family === 6 ? 128 : 32
    if (family === 0 || extra !== undefined || (bits !== undefined && !(/^\d+$/.test(bits) && Number(bits) <= maxBits))) {
      return new Error(`"${entry}" is not an IP address or CIDR`)
    }
  }
  return entries
}
