// The route file's contract: one per upstream service, YAML or JSON. The schema is the operators'
// contract and is published as JSON Schema (schema/route-file.schema.json, `npm run schema`); the
// types below are what parseRouteFile (parse.ts) makes of a file.
import Type, { type Static } from 'typebox'
import type { BreakerOptions } from '../../upstream/breaker.js'
import type { RetryOptions } from '../../upstream/retry.js'
import type { TargetTls, UpstreamProtocol } from '../../upstream/target.js'
import type { CorsPolicy } from './cors.js'
import type { RouteHeaderRules } from './header-rules.js'
import { Duration, DURATION_EXPECTED, Size } from '../units.js'

/** Methods a route may list: those Fastify serves (CONNECT is not proxied). */
export const HTTP_METHODS: readonly string[] = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'TRACE']

// A prefix the router can hold as-is: no dot segments, no empty segments, no trailing slash; of
// find-my-way's syntax only whole `:name` segments (parameters), never `*` or a `:` inside a segment.
const PATH = "^/$|^(/(?!\\.{1,2}(?:/|$))(?::[A-Za-z_][A-Za-z0-9_]*|[A-Za-z0-9\\-._~!$&'+,;=@%]+))+$"

// Key material is read from files (mounted secrets), never written in the route file.
const PemPath = (what: string) => Type.String({
  pattern: '^/',
  errorMessage: 'must be an absolute path to a PEM file: certificates and keys are read from files, never written in route files',
  description: `Absolute path of a file holding the ${what}`
})

// A DNS name; underscores are allowed for SRV's _service._proto labels.
const DNS_NAME = '^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9])?(\\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9])?)*\\.?$'
// A resolver: an IPv4 address or a bracketed IPv6 one, with an optional port.
const RESOLVER = '^([0-9]{1,3}(\\.[0-9]{1,3}){3}|\\[[0-9A-Fa-f:.]+\\])(:[0-9]{1,5})?$'

/** What a discover block asks the DNS for. */
export const DISCOVER_TYPES = ['A', 'AAAA', 'A+AAAA', 'SRV'] as const
export type DiscoverType = typeof DISCOVER_TYPES[number]

const Discover = Type.Object({
  dns: Type.String({
    pattern: DNS_NAME,
    errorMessage: 'must be a DNS name such as orders.default.svc.cluster.local (no scheme, no port)',
    description: 'Name whose addresses are the targets, asked for as written (no search domains: in Kubernetes write orders.default.svc.cluster.local, not orders): a headless Kubernetes Service, a Consul or VM fleet name, or for SRV the service name (_http._tcp.payments.internal).'
  }),
  port: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535, errorMessage: 'must be a port, 1-65535', description: 'Port of every address found (A, AAAA). For SRV, the records\' ports win. Default: 80 for http, 443 for https.' })),
  type: Type.Union(DISCOVER_TYPES.map(t => Type.Literal(t)), {
    default: 'A',
    errorMessage: `must be one of ${DISCOVER_TYPES.join(', ')}`,
    description: 'Records asked for: A (IPv4), AAAA (IPv6), A+AAAA (both), or SRV (the lowest priority present is used, its weights become target weights, its ports override port; each SRV target name is then resolved to its A, else AAAA, records). Default A.'
  }),
  scheme: Type.Union([Type.Literal('http'), Type.Literal('https')], {
    default: 'http', errorMessage: 'must be http or https', description: 'Scheme spoken to each address. With https the certificate is checked against the DNS name (or tls.servername), never the IP. Default http.'
  }),
  refresh: Type.Union([Type.Literal('ttl'), Duration({ description: 'A fixed interval.' })], {
    default: 'ttl',
    errorMessage: `must be ttl or ${DURATION_EXPECTED.replace('must be ', '')}`,
    description: 'When to resolve again: ttl (when the answer\'s TTL runs out, within minRefresh and maxRefresh) or a fixed duration (10s). Either way each refresh waits up to 10 % more, at random, so replicas do not query in lock-step. Default ttl.'
  }),
  minRefresh: Duration({ default: '1s', description: 'Shortest wait between resolutions (a TTL of 0 or 1 s is not a reason to query in a loop). Default 1s.' }),
  maxRefresh: Duration({ default: '30s', description: 'Longest wait between resolutions, whatever the TTL; also the cap of the back-off after failures. Default 30s.' }),
  onEmpty: Type.Union([Type.Literal('keep'), Type.Literal('clear')], {
    default: 'keep',
    errorMessage: 'must be keep or clear',
    description: 'When the name does not exist (NXDOMAIN) or has no addresses: keep (the last known addresses keep serving) or clear (they are drained and the routes answer 503 until addresses come back). A resolver that fails (timeout, refused, SERVFAIL) says nothing about the instances: the last known addresses always keep serving then. Default keep.'
  }),
  resolvers: Type.Optional(Type.Array(Type.String({ pattern: RESOLVER, errorMessage: 'must be an IP address with an optional port: 10.96.0.10, 10.96.0.10:53, [fd00::10]:53' }), {
    minItems: 1, uniqueItems: true, examples: [['10.96.0.10:53']], description: 'DNS servers to ask, in order. Default: the nameservers of /etc/resolv.conf (read once at start; /etc/hosts is never consulted).'
  }))
}, {
  additionalProperties: false,
  description: 'Targets found in DNS instead of a url: every address is a target of its own (its own pool, maxConnections, breaker and health), added and drained as DNS changes (docs/discovery.md). The other keys of the entry apply to each address.'
})

const Target = Type.Object({
  url: Type.Optional(Type.String({
    pattern: '^https?://[^/?#]+/?$',
    errorMessage: 'must be an http(s) URL with no path, e.g. http://10.0.0.5:9001',
    description: 'Origin of one instance of the service: http(s)://host:port (port 1-65535), no path, no credentials (user:pw@ is refused: route files are shared as plain text). Each entry has url or discover.'
  })),
  discover: Type.Optional(Discover),
  maxConnections: Type.Integer({ minimum: 1, default: 100, description: 'In-flight requests this target may hold; beyond it the target counts as full. Default 100.' }),
  weight: Type.Number({ exclusiveMinimum: 0, default: 1, description: 'Share of traffic relative to the other targets when none is loaded. Default 1.' }),
  protocol: Type.Union([Type.Literal('http1'), Type.Literal('h2'), Type.Literal('h2c')], {
    default: 'http1',
    errorMessage: 'must be http1, h2 or h2c',
    description: 'HTTP version spoken to this target: http1 (HTTP/1.1), h2 (HTTP/2 over TLS, https:// only; a target whose ALPN does not offer h2 gets HTTP/1.1) or h2c (HTTP/2 with prior knowledge over plain TCP, http:// only). Default http1.'
  }),
  group: Type.Optional(Type.String({
    pattern: '^[a-z0-9][a-z0-9_-]{0,62}$',
    errorMessage: 'must be lowercase letters, digits, - or _, starting with a letter or digit (e.g. stable, canary)',
    description: 'Group of this target (stable, canary, v2...), for routes that split their traffic between groups (routes[].split). Default: in no group.'
  })),
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
      minItems: 1, uniqueItems: true, examples: [['orders:write']], description: 'Scopes the token must carry (in `scope`, space-separated, or `scp`); otherwise 403.'
    })),
    forwardClaims: Type.Optional(Type.Record(Type.String({ minLength: 1 }), Type.String({ pattern: HEADER_NAME, errorMessage: 'must be a header name' }), {
      description: 'Claim → request header sent upstream. The client\'s own values of these headers are always removed first.'
    })),
    forwardToken: Type.Boolean({ default: true, description: 'Keep the Authorization header for the upstream. Default true.' })
  }, { additionalProperties: false, description: 'A signed JWT in `Authorization: Bearer`, verified at the gateway.' })
}, { additionalProperties: false, description: 'Authentication of this route (docs/authentication.md). Absent: public.' })

// A header value written by a rule: text, with {variables} (header-rules.ts); no control characters.
const HeaderValues = (description: string) => Type.Record(Type.String(), Type.String({
  pattern: '^[^\\u0000-\\u0008\\u000a-\\u001f\\u007f]*$',
  errorMessage: 'must be a string without control characters (quote numbers and booleans: "2")'
}), { examples: [{ 'x-api-version': '2' }], description })

const HeaderRules = (direction: 'request' | 'response', description: string) => Type.Object({
  set: Type.Optional(HeaderValues(`Headers written on the ${direction}, replacing any of the same name. Values may use {client.ip}, {request.id}, {route.id}, {route.path}, {upstream} and {claim.<name>} (a verified claim; the route needs auth; a header whose claim is absent is not written).`)),
  add: Type.Optional(HeaderValues(`Headers added to the ${direction} beside any of the same name; the same variables as set.`)),
  remove: Type.Optional(Type.Array(Type.String({ minLength: 1 }), {
    minItems: 1, uniqueItems: true, examples: [['x-debug']], description: `Headers removed from the ${direction}.`
  }))
}, { additionalProperties: false, description })

/** Rate-limit algorithms. sliding-log: exact, a sorted log of request times; sliding-window:
 * approximate, two fixed-window counters, weighted. */
export const LIMIT_ALGORITHMS = ['sliding-log', 'sliding-window'] as const
export type LimitAlgorithm = typeof LIMIT_ALGORITHMS[number]

const Route = Type.Object({
  path: Type.String({
    pattern: PATH,
    errorMessage: 'must be a path prefix such as /api/users or /users/:id/orders: starts with /, no trailing slash, no //, . or .. segments, no *, : only to start a parameter segment',
    description: 'Path prefix: matches the path itself and everything below it (/api/users, /api/users/42), never /api/usersX. A segment :name is a parameter: it matches any one segment, after the static segments of other routes at that place. No trailing slash, no //, . or .. segments, no *; / matches everything; /health, /ready and /metrics are the gateway\'s own.'
  }),
  methods: Type.Optional(Type.Array(Type.Union(HTTP_METHODS.map(m => Type.Literal(m)), { errorMessage: `must be a method in capitals among ${HTTP_METHODS.join(', ')}` }), {
    minItems: 1, uniqueItems: true, examples: [['GET', 'POST']], description: 'Methods this route serves. Default: all.'
  })),
  hosts: Type.Optional(Type.Array(Type.String({
    pattern: '^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$',
    errorMessage: 'must be a host name such as api.example.com (no port, no scheme)'
  }), { minItems: 1, uniqueItems: true, examples: [['api.example.com']], description: 'Host header values this route serves (port ignored); a route with hosts wins over one without. Default: any host.' })),
  rewritePrefix: Type.Optional(Type.String({
    pattern: "^(/[A-Za-z0-9\\-._~!$&'+,;=@%:]*)*$",
    errorMessage: "must be '' or a path starting with /",
    description: "Replaces the matched prefix before forwarding; '' strips it. May use the path's parameters as whole segments (/v2/accounts/:id/orders). Default: the path is forwarded unchanged."
  })),
  rewriteRedirects: Type.Boolean({
    default: true,
    description: 'With rewritePrefix: a Location or Content-Location the upstream sends in its own path space (a path under rewritePrefix, or a URL of the target itself) is rewritten to the route\'s path, as nginx\'s proxy_redirect default does, so clients and curl -L follow redirects through the gateway; other hosts and relative references are left alone. Default true.'
  }),
  bodyLimit: Type.Optional(Size({ description: 'Largest request body on this route. Default: BODY_LIMIT.' })),
  requestBuffer: Type.Optional(Size({
    description: 'Request bodies up to this size are received whole before a target is chosen (a slow uploader holds memory, not an upstream slot) and are what a retry sends again; larger ones are streamed and never retried; 0 streams every body. Default: REQUEST_BUFFER_SIZE, or retry.bufferBody where the file sets it.'
  })),
  responseBuffer: Type.Optional(Size({
    description: 'Response bytes the gateway may read ahead of a client that reads slower than the upstream sends, so the upstream request ends and frees its slot; past it the upstream waits for the client. 0: never read ahead. Default: RESPONSE_BUFFER_SIZE.'
  })),
  allowEncodedSlashes: Type.Boolean({
    default: false,
    description: 'Forward paths with %2F or %5C (kept encoded) instead of refusing them with 400. Only for services that need them and do not decode them into separators. Default false.'
  }),
  split: Type.Optional(Type.Record(Type.String(), Type.Integer({ minimum: 0, errorMessage: 'must be a whole number, 0 or more (a weight)' }), {
    examples: [{ stable: 90, canary: 10 }],
    description: 'Share of this route\'s requests per target group, as weights ({ stable: 90, canary: 10 }); each group\'s targets are chosen among as usual. When no target of a request\'s group admits it, the other groups of the split are tried in the order written. Default: all targets, no groups.'
  })),
  pin: Type.Optional(Type.Object({
    header: Type.Optional(Type.String({ pattern: HEADER_NAME, errorMessage: 'must be a header name', description: 'Header whose value names the group (x-canary: canary).' })),
    cookie: Type.Optional(Type.String({ pattern: '^[!#$%&\'*+.^_`|~0-9A-Za-z-]+$', errorMessage: 'must be a cookie name', description: 'Cookie whose value names the group (canary=canary).' }))
  }, {
    additionalProperties: false,
    minProperties: 1,
    errorMessage: 'must be a mapping with header and/or cookie',
    description: 'A request whose header (or cookie) of this name holds a group of split goes to that group only: no split, no fallback (503 when none of its targets admits it). The header wins over the cookie. Needs split.'
  })),
  affinity: Type.Optional(Type.Union([
    Type.Literal('ip'),
    Type.Object({ cookie: Type.String({ pattern: '^[!#$%&\'*+.^_`|~0-9A-Za-z-]+$' }) }, { additionalProperties: false }),
    Type.Object({ header: Type.String({ pattern: HEADER_NAME }) }, { additionalProperties: false })
  ], {
    errorMessage: 'must be ip, { cookie: <name> } or { header: <name> }',
    examples: [{ cookie: 'gh_affinity' }],
    description: 'Sticky sessions: the same client keeps reaching the same target while that target admits requests (not full, breaker closed); otherwise the usual choice, and the cookie names the new target. cookie: the gateway sets a cookie whose value names the target without revealing its address (AFFINITY_SECRET); header: the value of this request header (x-session), hashed to a target; ip: the client address, hashed. Default: no affinity.'
  })),
  headers: Type.Optional(Type.Object({
    request: Type.Optional(HeaderRules('request', 'Rules for the request sent upstream.')),
    response: Type.Optional(HeaderRules('response', 'Rules for the upstream\'s response on its way to the client (the gateway\'s own answers, such as 404 or 429, are not changed).'))
  }, { additionalProperties: false, description: 'Header rules of this route. Headers the gateway owns (hop-by-hop, host, content-length, x-forwarded-*, x-request-id, the claim headers of auth, the rate-limit headers) cannot be set or removed: such a rule is refused at load, naming the header.' })),
  websocket: Type.Boolean({
    default: false,
    description: 'Accept WebSocket upgrades on this route: the handshake runs the route\'s pipeline (authentication, rate limit, target choice) and the upstream\'s answer to it is what the client gets; after a 101 the connection is a tunnel to that target, under the file\'s websocket settings (docs/protocols.md#websocket). Otherwise an upgrade is refused with 400. Default false.'
  }),
  grpc: Type.Boolean({
    default: false,
    description: 'A gRPC route: calls stream to the targets over HTTP/2 (every target needs protocol h2 or h2c), response trailers relayed, the client\'s grpc-timeout honoured with timeouts.request, and the gateway\'s own refusals answered as gRPC statuses (docs/protocols.md#grpc). Served on TLS_PORT and H2C_PORT only. Default false.'
  }),
  cors: Type.Optional(Type.Object({
    origins: Type.Array(Type.String({
      pattern: '^(\\*|https?://(\\*\\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*(:[0-9]{1,5})?)$',
      errorMessage: 'must be an origin such as https://app.example.com, a pattern such as https://*.example.com, or *'
    }), { minItems: 1, uniqueItems: true, examples: [['https://app.example.com', 'https://*.example.com']], description: 'Origins whose pages may call this route: exact (https://app.example.com), a pattern whose * stands for one or more subdomains (https://*.example.com), or * for any (not with credentials).' }),
    methods: Type.Optional(Type.Array(Type.Union(HTTP_METHODS.map(m => Type.Literal(m)), { errorMessage: `must be a method in capitals among ${HTTP_METHODS.join(', ')}` }), {
      minItems: 1, uniqueItems: true, examples: [['GET', 'POST']], description: 'Methods a preflight allows. Default: the route\'s methods (all when it lists none).'
    })),
    headers: Type.Optional(Type.Array(Type.String({ pattern: HEADER_NAME, errorMessage: 'must be a header name' }), {
      minItems: 1, uniqueItems: true, examples: [['authorization', 'content-type']], description: 'Request headers a preflight allows. Default: the ones the preflight asks for.'
    })),
    exposeHeaders: Type.Optional(Type.Array(Type.String({ pattern: HEADER_NAME, errorMessage: 'must be a header name' }), {
      minItems: 1, uniqueItems: true, examples: [['x-request-id']], description: 'Response headers a page\'s script may read beside the safelisted ones. Default: none.'
    })),
    credentials: Type.Boolean({ default: false, description: 'Whether the browser may send cookies and Authorization, and let the page read the answer. Default false.' }),
    maxAge: Type.Optional(Duration({ description: 'How long a browser may keep a preflight\'s answer. Default: the browser\'s own (5s in Chrome and Firefox).' }))
  }, {
    additionalProperties: false,
    description: 'Cross-origin requests from browsers (docs/route-files.md#cors). Preflights are answered by the gateway before authentication and rate limits and never reach the upstream; the upstream\'s own Access-Control-* headers are replaced. Absent: the gateway adds no CORS headers and passes the upstream\'s through.'
  })),
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
    algorithm: Type.Union(LIMIT_ALGORITHMS.map(a => Type.Literal(a)), {
      default: 'sliding-log', errorMessage: 'must be sliding-log or sliding-window', description: 'sliding-log: exact (one entry per request in the window); sliding-window: two counters, O(1) memory per key, approximate. Default sliding-log.'
    }),
    onStoreError: Type.Union([Type.Literal('local'), Type.Literal('open'), Type.Literal('closed')], {
      default: 'local', errorMessage: 'must be local, open or closed', description: 'When Redis fails: local (an in-process limit with the same window), open (admit), closed (503). Default local.'
    })
  }, { additionalProperties: false, description: 'Rate limit of this route: all requests matching it from one key share one budget (docs/rate-limits.md). Absent: not limited.' }))
}, { additionalProperties: false })

export const RouteFileSchema = Type.Object({
  $schema: Type.Optional(Type.String({ description: 'Editor hint: the JSON Schema of this file.' })),
  name: Type.Optional(Type.String({
    pattern: '^[a-z0-9][a-z0-9_-]{0,62}$',
    errorMessage: 'must be lowercase letters, digits, - or _ (at most 63), starting with a letter or digit',
    description: 'Upstream name used in logs and metrics; unique across files. Default: the file name without extension.'
  })),
  targets: Type.Array(Target, { minItems: 1, examples: [[{ url: 'http://10.0.0.5:9001' }]], description: 'Instances of the service; each request goes to the least saturated one.' }),
  routes: Type.Array(Route, { minItems: 1, examples: [[{ path: '/api/users' }]], description: 'Path rules that send requests to this upstream.' }),
  timeouts: Type.Optional(Type.Object({
    connect: Duration({ default: '2s', description: 'TCP/TLS connect timeout. Default 2s.' }),
    request: Duration({ default: '30s', description: 'Per try: time for the upstream to answer with its headers. Default 30s.' }),
    idle: Duration({ default: '30s', description: 'Longest silence while the upstream streams its body; the response is cut after it. Default 30s.' })
  }, { additionalProperties: false, default: {}, description: 'Upstream timeouts.' })),
  websocket: Type.Optional(Type.Object({
    maxPerTarget: Type.Integer({ minimum: 1, default: 1000, description: 'Open tunnels (and handshakes under way) one target may hold, counted apart from maxConnections; a new tunnel goes to the target with the lowest share of it, and when every target is full the handshake gets 503 with Retry-After. Default 1000.' }),
    idleTimeout: Duration({ default: '5m', description: 'A tunnel with no bytes in either direction for this long is closed (WebSocket pings count as bytes). Default 5m.' }),
    maxLifetime: Type.Optional(Duration({ description: 'A tunnel open this long is closed, busy or not, so clients reconnect and spread over the targets. Default: no limit.' })),
    closeDelay: Duration({ default: '30s', description: 'When a reload removes a target, how long its open tunnels stay before they are closed (tunnels to targets that stay are never touched by a reload). Default 30s.' })
  }, { additionalProperties: false, default: {}, description: 'Tunnels of this file\'s routes with websocket: true (docs/protocols.md#websocket).' })),
  retry: Type.Optional(Type.Object({
    attempts: Type.Integer({ minimum: 0, maximum: 10, default: 1, description: 'Retries after the first try; 0 disables. Default 1.' }),
    backoff: Duration({ default: '25ms', description: 'Base of exponential backoff with full jitter. Default 25ms.' }),
    maxBackoff: Duration({ default: '250ms', description: 'Cap of the backoff. Default 250ms.' }),
    on: Type.Array(Type.Union([
      Type.Literal('connect-failure'), Type.Literal('reset'), Type.Literal('timeout'), Type.Integer({ minimum: 500, maximum: 599 })
    ], { errorMessage: 'must be connect-failure, reset, timeout or a status from 500 to 599' }), {
      uniqueItems: true, default: ['connect-failure', 'reset', 'timeout', 502, 503, 504], examples: [['connect-failure', 'reset', 503]], description: 'What is retried. Default [connect-failure, reset, timeout, 502, 503, 504].'
    }),
    budget: Type.Number({ minimum: 0, maximum: 1, default: 0.2, description: 'Retries in progress may be at most this share of requests in progress (at least 3). Default 0.2.' }),
    bufferBody: Type.Optional(Size({ description: 'Deprecated, kept for older files: the requestBuffer of this file\'s routes that set none (bodies up to it are kept, and a retry sends them again).' }))
  }, { additionalProperties: false, default: {}, description: 'Retries: to another target where there is one. Connect failures are retried for any method; other failures only for GET, HEAD, OPTIONS, PUT, DELETE, TRACE (docs/resilience.md).' })),
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
      uniqueItems: true, default: [502, 503, 504], examples: [[502, 503]], description: 'Upstream statuses that count as failures (connect errors, resets and timeouts always do). Default [502, 503, 504].'
    })
  }, { additionalProperties: false, default: {}, description: 'One breaker per target: an open target gets no traffic (docs/resilience.md).' })),
  healthCheck: Type.Optional(Type.Object({
    path: Type.String({ pattern: '^/[^\\s]*$', errorMessage: 'must be a path starting with /, e.g. /healthz', description: 'Path every target is asked for with a GET (query allowed).' }),
    interval: Duration({ default: '10s', description: 'Time between two probes of a target; each wait is up to 10 % shorter or longer, at random. Default 10s.' }),
    timeout: Duration({ default: '2s', description: 'A probe with no complete answer by then fails. Default 2s.' }),
    unhealthyThreshold: Type.Integer({ minimum: 1, default: 3, description: 'Failed probes in a row that take a target out of selection. Default 3.' }),
    healthyThreshold: Type.Integer({ minimum: 1, default: 2, description: 'Passing probes in a row that bring it back. Default 2.' }),
    expectStatus: Type.Array(Type.Union([
      Type.Integer({ minimum: 100, maximum: 599 }),
      Type.String({ pattern: '^[1-5][0-9]{2}-[1-5][0-9]{2}$' })
    ], { errorMessage: 'must be a status (200) or a range of statuses (200-399)' }), {
      minItems: 1, default: ['200-399'], examples: [[200, '300-399']], description: 'Statuses that pass: codes and ranges. Default [200-399].'
    }),
    headers: Type.Optional(Type.Record(Type.String({ pattern: HEADER_NAME }), Type.String({ pattern: '^[^\\u0000-\\u001f\\u007f]*$', errorMessage: 'must be a string without control characters' }), {
      examples: [{ 'x-probe': 'gatehouse' }], description: 'Headers sent with each probe (Host is the target\'s, as for requests).'
    })),
    panic: Type.Union([Type.Literal('open'), Type.Literal('closed')], {
      default: 'open',
      errorMessage: 'must be open or closed',
      description: 'When every target fails its probes: open (ignore the probes and choose by breakers alone, gauge upstream_panic_active 1: a probe path that is broken everywhere does not take the service down) or closed (answer 503). Default open.'
    })
  }, { additionalProperties: false, description: 'Active health checks: each target is probed on a connection of its own (never one of its maxConnections); a target failing unhealthyThreshold probes in a row gets no traffic until healthyThreshold pass (docs/discovery.md#active-health-checks). Absent: none; the breakers alone judge targets.' }))
}, {
  additionalProperties: false,
  $id: 'https://gatehouse.dev/schema/route-file.schema.json',
  title: 'Gatehouse route file',
  description: 'One upstream service: its targets and the routes that reach it.'
})

export type RawRouteFile = Static<typeof RouteFileSchema>

export interface RouteConfig {
  path: string
  /** Undefined: every method. */
  methods: string[] | undefined
  /** Lowercase; undefined: every host. */
  hosts: string[] | undefined
  rewritePrefix: string | undefined
  rewriteRedirects: boolean
  bodyLimit: number | undefined
  /** Undefined: the file's retry.bufferBody, else REQUEST_BUFFER_SIZE. */
  requestBuffer: number | undefined
  /** Undefined: RESPONSE_BUFFER_SIZE. */
  responseBuffer: number | undefined
  allowEncodedSlashes: boolean
  /** Sticky sessions; undefined: none. */
  affinity: { kind: 'ip' } | { kind: 'cookie', name: string } | { kind: 'header', name: string } | undefined
  /** Weights by target group; undefined: all targets. */
  split: Readonly<Record<string, number>> | undefined
  /** Where a request names its group; undefined: never pinned. */
  pin: { header: string | undefined, cookie: string | undefined } | undefined
  /** Undefined: no header rules. */
  headers: RouteHeaderRules | undefined
  /** Accepts WebSocket upgrades. */
  websocket: boolean
  /** gRPC calls, on the streaming path. */
  grpc: boolean
  /** Undefined: no CORS handling. */
  cors: CorsPolicy | undefined
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
  protocol: UpstreamProtocol
  /** Undefined: in no group. */
  group?: string
  /** Present only when the file sets `tls`: the contents of its files, checked. */
  tls?: TargetTls
}

/** Settings of each target an entry stands for: its own, or each address its discover block finds. */
export type TargetSettings = Pick<TargetConfig, 'maxConnections' | 'weight' | 'protocol' | 'group' | 'tls'>

/** A targets entry with discover: the DNS name whose addresses are targets, and their settings. */
export interface DiscoverConfig extends TargetSettings {
  /** Where the entry is in its file (/targets/2), for messages. */
  at: string
  /** Lowercase, without a trailing dot. */
  dns: string
  type: DiscoverType
  scheme: 'http' | 'https'
  /** The scheme's port when the file sets none. */
  port: number
  /** 'ttl', or a fixed interval in ms. */
  refresh: 'ttl' | number
  minRefreshMs: number
  maxRefreshMs: number
  onEmpty: 'keep' | 'clear'
  /** host:port of each server; undefined: the system's (/etc/resolv.conf). */
  resolvers: string[] | undefined
}

/** Active health checks of an upstream's targets. */
export interface HealthCheckConfig {
  path: string
  intervalMs: number
  timeoutMs: number
  unhealthyThreshold: number
  healthyThreshold: number
  /** [lowest, highest] status that passes, inclusive. */
  expectStatus: Array<[number, number]>
  headers: Record<string, string>
  panic: 'open' | 'closed'
}

/** Tunnels of an upstream's websocket routes. */
export interface WebSocketSettings {
  maxPerTarget: number
  idleTimeoutMs: number
  /** Undefined: no limit. */
  maxLifetimeMs: number | undefined
  closeDelayMs: number
}

/** A route file after checking: defaults applied, units resolved, frozen. */
export interface UpstreamConfig {
  name: string
  file: string
  /** Entries with url. */
  targets: TargetConfig[]
  /** Entries with discover: targets found in DNS. */
  discover: DiscoverConfig[]
  routes: RouteConfig[]
  timeouts: { connectMs: number, requestMs: number, idleMs: number }
  websocket: WebSocketSettings
  retry: RetryOptions
  breaker: BreakerOptions & { failureStatuses: number[] }
  /** Undefined: no active health checks. */
  healthCheck: HealthCheckConfig | undefined
}

/** Paths the gateway answers itself; a route may sit below them but not on them. */
export const RESERVED_PATHS = ['/health', '/ready', '/metrics']

export const ROUTE_FILE_EXTENSIONS = ['.yaml', '.yml', '.json']
