import { strict as assert } from 'node:assert'
import { test } from 'node:test'
import { parseRouteFile, RouteFileError, type UpstreamConfig } from '../src/config/route-file/index.js'

const URL_EXPECTED = 'must be an http(s) URL with no path, e.g. http://10.0.0.5:9001'
const PATH_EXPECTED = 'must be a path prefix such as /api/users or /users/:id/orders: starts with /, no trailing slash, no //, . or .. segments, no *, : only to start a parameter segment'
const DURATION_EXPECTED = 'must be a duration: milliseconds (30000) or a number with ms, s, m or h (500ms, 2s, 1m)'
const SIZE_EXPECTED = 'must be a size: bytes (1048576) or a number with b, kb, mb or gb (512kb, 1mb)'

/** A YAML file with one target and one route, plus `extra` lines at the top level or under the route. */
function yaml ({ url = 'http://127.0.0.1:9001', path = '/api/users', route = '', top = '' } = {}): string {
  return `targets:\n  - url: ${url}\nroutes:\n  - path: ${JSON.stringify(path)}\n${route}${top}`
}

/** The RouteFileError `text` is refused with (fails the test when it is accepted). */
function rejection (file: string, text: string): RouteFileError {
  try {
    parseRouteFile(file, text)
  } catch (err) {
    assert.ok(err instanceof RouteFileError, `expected RouteFileError, got ${String(err)}`)
    assert.equal(err.file, file)
    return err
  }
  assert.fail(`${file} was accepted:\n${text}`)
}

/** As rejection(), and every message line is `<file>: <problem>`, one line per problem. */
function refused (file: string, text: string): RouteFileError {
  const err = rejection(file, text)
  assert.deepEqual(err.message.split('\n'), err.problems.map(p => `${file}: ${p}`))
  return err
}

const RETRY_DEFAULTS: UpstreamConfig['retry'] = { attempts: 1, backoffMs: 25, maxBackoffMs: 250, on: ['connect-failure', 'reset', 'timeout', 502, 503, 504], budget: 0.2, bufferBody: undefined }
const BREAKER_DEFAULTS: UpstreamConfig['breaker'] = {
  consecutiveFailures: 5,
  failureRatio: 0.5,
  minRequests: 20,
  windowMs: 10_000,
  openForMs: 5000,
  maxOpenForMs: 5000,
  halfOpenProbes: 1,
  closeAfter: 2,
  failureStatuses: [502, 503, 504]
}

test('minimal YAML file: defaults filled in, name from the file name', () => {
  const config = parseRouteFile('users.yaml', yaml())
  const expected: UpstreamConfig = {
    name: 'users',
    file: 'users.yaml',
    targets: [{ url: 'http://127.0.0.1:9001', origin: 'http://127.0.0.1:9001', maxConnections: 100, weight: 1, protocol: 'http1' }],
    discover: [],
    routes: [{ path: '/api/users', methods: undefined, hosts: undefined, rewritePrefix: undefined, rewriteRedirects: true, bodyLimit: undefined, requestBuffer: undefined, responseBuffer: undefined, allowEncodedSlashes: false, affinity: undefined, split: undefined, pin: undefined, websocket: false, grpc: false, headers: undefined, cors: undefined, auth: undefined, rateLimit: undefined }],
    timeouts: { connectMs: 2000, requestMs: 30_000, idleMs: 30_000 },
    websocket: { maxPerTarget: 1000, idleTimeoutMs: 300_000, maxLifetimeMs: undefined, closeDelayMs: 30_000 },
    retry: RETRY_DEFAULTS,
    breaker: BREAKER_DEFAULTS,
    healthCheck: undefined
  }
  assert.deepEqual(config, expected)
  assert.ok(Object.isFrozen(config) && Object.isFrozen(config.targets[0]) && Object.isFrozen(config.routes))
})

test('JSON file with a $schema key: same result as YAML', () => {
  const text = JSON.stringify({
    $schema: '../schema/route-file.schema.json',
    targets: [{ url: 'http://127.0.0.1:9001' }],
    routes: [{ path: '/api/users' }]
  })
  const fromJson = parseRouteFile('users.json', text)
  const fromYaml = parseRouteFile('users.yaml', yaml())
  assert.deepEqual({ ...fromJson, file: 'users.yaml' }, fromYaml)
  assert.equal(fromJson.name, 'users')
})

test('name: an explicit name wins; .yml/.json and upper case in the file name give a lowercase default', () => {
  assert.equal(parseRouteFile('users.yaml', yaml({ top: 'name: accounts\n' })).name, 'accounts')
  assert.equal(parseRouteFile('Orders.yml', yaml()).name, 'orders')
  assert.equal(parseRouteFile('billing-v2.json', JSON.stringify({ targets: [{ url: 'http://127.0.0.1:9001' }], routes: [{ path: '/b' }] })).name, 'billing-v2')
})

test('file name that is no valid upstream name: refused, asking for name:', () => {
  const err = refused('users service.yaml', yaml())
  assert.deepEqual(err.problems, ['/name: the file name gives the upstream name "users service", which is not a valid name; set name: explicitly'])
})

test('every option set: values, units and method lists kept', () => {
  const config = parseRouteFile('users.yaml', [
    'name: users',
    'targets:',
    '  - url: https://10.0.0.5:9001',
    '    maxConnections: 7',
    '    weight: 2.5',
    'routes:',
    '  - path: /api/users',
    '    methods: [GET, POST]',
    '    hosts: [api.example.com]',
    "    rewritePrefix: ''",
    '    bodyLimit: 512kb',
    '    requestBuffer: 256kb',
    '    responseBuffer: 4mb',
    '    websocket: true',
    '    rateLimit:',
    '      max: 100',
    '      window: 1m',
    '      key: header:X-Api-Key',
    '      algorithm: sliding-window',
    '      onStoreError: closed',
    'websocket: { maxPerTarget: 50, idleTimeout: 1m, maxLifetime: 2h, closeDelay: 5s }',
    'timeouts:',
    '  connect: 500ms',
    '  request: 1m',
    '  idle: 2.5s',
    'retry:',
    '  attempts: 3',
    '  backoff: 10ms',
    '  maxBackoff: 1s',
    '  on: [connect-failure, 503, 500]',
    '  budget: 0.5',
    '  bufferBody: 1mb',
    'circuitBreaker:',
    '  consecutiveFailures: 0',
    '  failureRatio: 0.25',
    '  minRequests: 4',
    '  window: 1m',
    '  openFor: 2s',
    '  maxOpenFor: 1h',
    '  halfOpenProbes: 3',
    '  closeAfter: 5',
    '  failureStatuses: [500, 503]',
    ''
  ].join('\n'))
  assert.deepEqual(config.targets, [{ url: 'https://10.0.0.5:9001', origin: 'https://10.0.0.5:9001', maxConnections: 7, weight: 2.5, protocol: 'http1' }])
  assert.deepEqual(config.routes, [{ path: '/api/users', methods: ['GET', 'POST'], hosts: ['api.example.com'], rewritePrefix: '', rewriteRedirects: true, bodyLimit: 512 * 1024, requestBuffer: 256 * 1024, responseBuffer: 4 * 1024 * 1024, allowEncodedSlashes: false, affinity: undefined, split: undefined, pin: undefined, websocket: true, grpc: false, headers: undefined, cors: undefined, auth: undefined, rateLimit: { max: 100, windowMs: 60_000, key: { kind: 'header', name: 'x-api-key' }, algorithm: 'sliding-window', onStoreError: 'closed' } }])
  assert.deepEqual(config.timeouts, { connectMs: 500, requestMs: 60_000, idleMs: 2500 })
  assert.deepEqual(config.websocket, { maxPerTarget: 50, idleTimeoutMs: 60_000, maxLifetimeMs: 7_200_000, closeDelayMs: 5000 })
  assert.deepEqual(config.retry, { attempts: 3, backoffMs: 10, maxBackoffMs: 1000, on: ['connect-failure', 503, 500], budget: 0.5, bufferBody: 1024 ** 2 })
  assert.deepEqual(config.breaker, {
    consecutiveFailures: 0,
    failureRatio: 0.25,
    minRequests: 4,
    windowMs: 60_000,
    openForMs: 2000,
    maxOpenForMs: 3_600_000,
    halfOpenProbes: 3,
    closeAfter: 5,
    failureStatuses: [500, 503]
  })
})

test('unknown key maxConn under a target: refused at /targets/0/maxConn, listing the allowed keys', () => {
  const err = refused('users.yaml', yaml({ url: 'http://127.0.0.1:9001\n    maxConn: 5' }))
  assert.deepEqual(err.problems, ['/targets/0/maxConn: unknown key (allowed: url, discover, maxConnections, weight, protocol, group, tls)'])
})

test('unknown top-level key (route instead of routes): both the typo and the missing key reported', () => {
  const err = refused('users.yaml', 'targets:\n  - url: http://127.0.0.1:9001\nroute:\n  - path: /api\n')
  assert.deepEqual(err.problems.sort(), [
    '/route: unknown key (allowed: $schema, name, targets, routes, timeouts, websocket, retry, circuitBreaker, healthCheck)',
    '/routes: is required'
  ])
})

test('url without a scheme: the exact message names file, field and an example', () => {
  const err = refused('users.yaml', yaml({ url: '10.0.0.5:9001' }))
  assert.equal(err.message, `users.yaml: /targets/0/url: ${URL_EXPECTED}`)
})

test('url with a path, query or other scheme: refused; a bare trailing slash is fine', () => {
  for (const url of ['http://10.0.0.5:9001/api', 'http://10.0.0.5:9001?x=1', 'ftp://10.0.0.5', 'http://']) {
    assert.deepEqual(refused('users.yaml', yaml({ url })).problems, [`/targets/0/url: ${URL_EXPECTED}`], url)
  }
  assert.equal(parseRouteFile('users.yaml', yaml({ url: 'http://10.0.0.5:9001/' })).targets[0]?.origin, 'http://10.0.0.5:9001')
})

test('maxConnections 0 and weight 0: refused at their field paths', () => {
  const err = refused('users.yaml', yaml({ url: 'http://127.0.0.1:9001\n    maxConnections: 0\n    weight: 0' }))
  assert.deepEqual(err.problems.map(p => p.slice(0, p.indexOf(':'))).sort(), ['/targets/0/maxConnections', '/targets/0/weight'])
})

test('durations 500ms, 2s, 1m and 1500 (milliseconds) accepted', () => {
  const cases: Array<[string, string, string, number, number, number]> = [['500ms', '2s', '1m', 500, 2000, 60_000], ['1500', '1m', '0.5s', 1500, 60_000, 500]]
  for (const [connect, request, idle, connectMs, requestMs, idleMs] of cases) {
    const config = parseRouteFile('users.yaml', yaml({ top: `timeouts:\n  connect: ${connect}\n  request: ${request}\n  idle: ${idle}\n` }))
    assert.deepEqual(config.timeouts, { connectMs, requestMs, idleMs })
  }
  // Only one given: the others keep their defaults.
  assert.deepEqual(parseRouteFile('users.yaml', yaml({ top: 'timeouts:\n  request: 5s\n' })).timeouts, { connectMs: 2000, requestMs: 5000, idleMs: 30_000 })
})

test('bad duration (2 seconds): refused with the duration forms', () => {
  for (const bad of ['2 seconds', 'soon', '-5', '1d']) {
    const err = refused('users.yaml', yaml({ top: `timeouts:\n  connect: ${bad}\n` }))
    assert.deepEqual(err.problems, [`/timeouts/connect: ${DURATION_EXPECTED}`], bad)
  }
})

test('bad bodyLimit: refused with the size forms', () => {
  const err = refused('users.yaml', yaml({ route: '    bodyLimit: lots\n' }))
  assert.deepEqual(err.problems, [`/routes/0/bodyLimit: ${SIZE_EXPECTED}`])
})

test('lowercase method (get): refused at /routes/0/methods/0', () => {
  const err = refused('users.yaml', yaml({ route: '    methods: [get]\n' }))
  assert.equal(err.problems.length, 1)
  assert.match(err.problems[0] ?? '', /^\/routes\/0\/methods\/0: /)
})

test('lowercase method (get): the message says methods go in capitals', () => {
  const err = refused('users.yaml', yaml({ route: '    methods: [get]\n' }))
  assert.equal(err.problems.length, 1)
  assert.match(err.problems[0] ?? '', /^\/routes\/0\/methods\/0: .*capitals.*GET, HEAD, POST/)
})

test('empty or missing targets and routes: refused', () => {
  const empty = refused('users.yaml', 'targets: []\nroutes: []\n')
  assert.deepEqual(empty.problems.map(p => p.slice(0, p.indexOf(':'))).sort(), ['/routes', '/targets'])
  const missing = refused('users.yaml', 'name: users\n')
  assert.deepEqual(missing.problems.sort(), ['/routes: is required', '/targets: is required'])
  const noMethods = refused('users.yaml', yaml({ route: '    methods: []\n' }))
  assert.equal(noMethods.problems.length, 1)
  assert.match(noMethods.problems[0] ?? '', /^\/routes\/0\/methods: /)
})

test('path rules: trailing slash, //, . and .., a : inside a segment, * and no leading slash refused; / and :param segments accepted', () => {
  for (const path of ['/api/users/', '/api//users', '/api/../admin', '/api/./users', '/..', '/api/a:id', '/api/:', '/api/:1d', '/api/*', 'api/users', '']) {
    assert.deepEqual(refused('users.yaml', yaml({ path })).problems, [`/routes/0/path: ${PATH_EXPECTED}`], JSON.stringify(path))
  }
  for (const path of ['/', '/api', '/api/v1.2/users', '/~user', '/a-b_c', '/api/:id', '/users/:id/orders/:order_id']) {
    assert.equal(parseRouteFile('users.yaml', yaml({ path })).routes[0]?.path, path)
  }
})

test('YAML syntax error: not valid YAML at line and column, the message whole (no dangling colon), and the line quoted', () => {
  const err = refused('users.yaml', 'targets:\n  - url: http://127.0.0.1:9001\n routes:\n  - path: /b\n')
  assert.deepEqual(err.problems, ['not valid YAML at line 3, column 1: All mapping items must start at the same column (line 3: " routes:")'])
  const open = refused('users.yaml', 'targets:\n  - url: http://127.0.0.1:9001\n routes: [\n')
  for (const p of open.problems) assert.match(p, /^not valid YAML at line \d+, column \d+: [^\n]*[^:]$/)
})

test('duplicate YAML key: not valid YAML, keys must be unique', () => {
  const err = refused('users.yaml', yaml() + 'routes:\n  - path: /other\n')
  assert.equal(err.problems.length, 1)
  assert.match(err.problems[0] ?? '', /^not valid YAML at line 5, column 1: Map keys must be unique/)
})

test('JSON syntax error: not valid JSON at the line and column of the first bad character, the line quoted', () => {
  assert.deepEqual(refused('users.json', '{"targets": [}').problems.map(p => p.replace(/: .*\(line/, ': … (line')), ['not valid JSON at line 1, column 14: … (line 1: "{\\"targets\\": [}")'])
  const trailing = refused('users.json', '{"targets": [{"url": "http://127.0.0.1:9001"}],\n "routes": [{"path": "/c"},]}\n')
  assert.match(trailing.problems[0] ?? '', /^not valid JSON at line 2, column 28: /)
  const unclosed = refused('users.json', '{"targets": [{"url": "http://127.0.0.1:9001"}],\n "routes": [{"path": "/c\n')
  assert.match(unclosed.problems[0] ?? '', /^not valid JSON at line 2, column 25: Bad control character/)
})

test('a value of the wrong type says what was expected, with an example, and what was given', () => {
  assert.deepEqual(refused('users.yaml', yaml({ route: '    methods: GET\n' })).problems, ['/routes/0/methods: must be a list, e.g. [GET, POST] (got GET)'])
  assert.deepEqual(refused('users.yaml', 'targets: http://127.0.0.1:9001\nroutes:\n  - path: /a\n').problems, ['/targets: must be a list, e.g. [{ url: http://10.0.0.5:9001 }] (got http://127.0.0.1:9001)'])
})

test('YAML inside a .json file: refused as not valid JSON', () => {
  const err = rejection('users.json', yaml())
  assert.equal(err.problems.length, 1)
  assert.match(err.problems[0] ?? '', /^not valid JSON at line 1, column 1: /)
})

test('YAML inside a .json file: the JSON error is one line prefixed with the file name', () => {
  const err = refused('users.json', yaml())
  assert.equal(err.message.split('\n').length, 1)
})

test('a document that is no mapping (list, string, number, empty file): refused', () => {
  for (const [file, text] of [['users.yaml', '- a\n- b\n'], ['users.yaml', 'just a string\n'], ['users.yaml', ''], ['users.json', '[1, 2]'], ['users.json', '42'], ['users.json', 'null']]) {
    assert.deepEqual(refused(file as string, text as string).problems, ['/: must be a mapping with targets and routes'], `${file}: ${text}`)
  }
})

test('three mistakes in one file: three lines, one per mistake', () => {
  const err = refused('users.yaml', [
    'targets:',
    '  - url: ftp://10.0.0.5',
    '    weight: 0',
    'routes:',
    '  - path: /api/',
    ''
  ].join('\n'))
  assert.deepEqual(err.problems, [
    `/targets/0/url: ${URL_EXPECTED}`,
    '/targets/0/weight: must be > 0',
    `/routes/0/path: ${PATH_EXPECTED}`
  ])
  assert.equal(err.message.split('\n').length, 3)
})

test('three mistakes in duration and size fields: three lines, each with its expectation', () => {
  const err = refused('users.yaml', yaml({ route: '    bodyLimit: lots\n', top: 'timeouts:\n  connect: soon\n  request: later\n' }))
  assert.deepEqual(err.problems, [
    `/routes/0/bodyLimit: ${SIZE_EXPECTED}`,
    `/timeouts/connect: ${DURATION_EXPECTED}`,
    `/timeouts/request: ${DURATION_EXPECTED}`
  ])
})

test('two routes of one file claiming the same method, host and path: refused', () => {
  const err = refused('users.yaml', yaml({ path: '/api', route: '    methods: [GET]\n  - path: /api\n    methods: [GET, POST]\n' }))
  assert.deepEqual(err.problems, ['/routes/1: claims GET * /api already claimed by /routes/0'])
  // The same path with no method list claims every method.
  const all = refused('users.yaml', yaml({ path: '/api', route: '  - path: /api\n' }))
  assert.equal(all.problems.length, 1)
  assert.match(all.problems[0] ?? '', /^\/routes\/1: claims \w+ \* \/api already claimed by \/routes\/0$/)
})

test('same path in one file with other methods or other hosts: accepted', () => {
  const byMethod = parseRouteFile('users.yaml', yaml({ path: '/api', route: '    methods: [GET]\n  - path: /api\n    methods: [POST]\n' }))
  assert.equal(byMethod.routes.length, 2)
  const byHost = parseRouteFile('users.yaml', yaml({ path: '/api', route: '    hosts: [a.example.com]\n  - path: /api\n    hosts: [b.example.com]\n' }))
  assert.equal(byHost.routes.length, 2)
})

test('two targets with the same URL (also with a trailing slash): refused at the second', () => {
  const same = refused('users.yaml', yaml({ url: 'http://127.0.0.1:9001\n  - url: http://127.0.0.1:9001' }))
  assert.deepEqual(same.problems, ['/targets/1/url: http://127.0.0.1:9001 is listed twice'])
  const slash = refused('users.yaml', yaml({ url: 'http://127.0.0.1:9001\n  - url: http://127.0.0.1:9001/' }))
  assert.deepEqual(slash.problems, ['/targets/1/url: http://127.0.0.1:9001/ is listed twice'])
})

test('hosts are lowercased; same host in other case is the same claim', () => {
  const config = parseRouteFile('users.yaml', yaml({ route: '    hosts: [API.Example.COM, www.example.com]\n' }))
  assert.deepEqual(config.routes[0]?.hosts, ['api.example.com', 'www.example.com'])
  const err = refused('users.yaml', yaml({ path: '/api', route: '    hosts: [API.example.com]\n  - path: /api\n    hosts: [api.EXAMPLE.com]\n' }))
  assert.equal(err.problems.length, 1)
  assert.match(err.problems[0] ?? '', /^\/routes\/1: claims \w+ api\.example\.com \/api already claimed by \/routes\/0$/)
})

test('host with a port or scheme: refused', () => {
  for (const host of ['api.example.com:8080', 'http://api.example.com']) {
    const err = refused('users.yaml', yaml({ route: `    hosts: ["${host}"]\n` }))
    assert.deepEqual(err.problems, ['/routes/0/hosts/0: must be a host name such as api.example.com (no port, no scheme)'], host)
  }
})

test('a route on /health, /ready or /metrics is refused: the gateway answers those itself', () => {
  for (const path of ['/health', '/ready', '/metrics']) {
    const err = refused('ops.yaml', yaml({ path }))
    assert.deepEqual(err.problems, [`/routes/0/path: ${path} is served by the gateway itself`])
  }
  assert.equal(parseRouteFile('ops.yaml', yaml({ path: '/health/deep' })).routes[0]?.path, '/health/deep')
})

test('retry and circuitBreaker: absent or empty, every key gets its default; one key set leaves the others at default', () => {
  for (const top of ['', 'retry: {}\ncircuitBreaker: {}\n']) {
    const config = parseRouteFile('users.yaml', yaml({ top }))
    assert.deepEqual(config.retry, RETRY_DEFAULTS, JSON.stringify(top))
    assert.deepEqual(config.breaker, BREAKER_DEFAULTS, JSON.stringify(top))
  }
  const some = parseRouteFile('users.yaml', yaml({ top: 'retry:\n  attempts: 0\ncircuitBreaker:\n  closeAfter: 4\n' }))
  assert.deepEqual(some.retry, { ...RETRY_DEFAULTS, attempts: 0 })
  assert.deepEqual(some.breaker, { ...BREAKER_DEFAULTS, closeAfter: 4 })
})

test('retry.on with 418 or sometimes: refused at the entry, naming the conditions and the 500–599 range', () => {
  const expected = '/retry/on/0: must be connect-failure, reset, timeout or a status from 500 to 599'
  for (const bad of ['418', 'sometimes', '404', '600', 'Reset']) {
    assert.deepEqual(refused('users.yaml', yaml({ top: `retry:\n  on: [${bad}]\n` })).problems, [expected], bad)
  }
  // Each bad entry at its own index; the good ones pass.
  const two = refused('users.yaml', yaml({ top: 'retry:\n  on: [connect-failure, 418, sometimes, 503]\n' }))
  assert.deepEqual(two.problems, [
    '/retry/on/1: must be connect-failure, reset, timeout or a status from 500 to 599',
    '/retry/on/2: must be connect-failure, reset, timeout or a status from 500 to 599'
  ])
  assert.deepEqual(parseRouteFile('users.yaml', yaml({ top: 'retry:\n  on: [reset, timeout, 500, 599]\n' })).retry.on, ['reset', 'timeout', 500, 599])
})

test('retry.attempts over 10, budget over 1 and a failureStatuses entry below 500: refused at their fields', () => {
  const err = refused('users.yaml', yaml({ top: 'retry:\n  attempts: 11\n  budget: 1.5\ncircuitBreaker:\n  failureStatuses: [404]\n' }))
  assert.deepEqual(err.problems, ['/retry/attempts: must be <= 10', '/retry/budget: must be <= 1', '/circuitBreaker/failureStatuses/0: must be >= 500'])
})

test('circuitBreaker.maxOpenFor left out: it equals openFor (no doubling)', () => {
  const config = parseRouteFile('users.yaml', yaml({ top: 'circuitBreaker:\n  openFor: 3s\n' }))
  assert.equal(config.breaker.openForMs, 3000)
  assert.equal(config.breaker.maxOpenForMs, 3000)
  const capped = parseRouteFile('users.yaml', yaml({ top: 'circuitBreaker:\n  openFor: 3s\n  maxOpenFor: 1m\n' }))
  assert.equal(capped.breaker.maxOpenForMs, 60_000)
})

test('unknown key under circuitBreaker (threshold) or retry (tries): refused, listing the allowed keys', () => {
  assert.deepEqual(refused('users.yaml', yaml({ top: 'circuitBreaker:\n  threshold: 5\n' })).problems, [
    '/circuitBreaker/threshold: unknown key (allowed: consecutiveFailures, failureRatio, minRequests, window, openFor, maxOpenFor, halfOpenProbes, closeAfter, failureStatuses)'
  ])
  assert.deepEqual(refused('users.yaml', yaml({ top: 'retry:\n  tries: 2\n' })).problems, [
    '/retry/tries: unknown key (allowed: attempts, backoff, maxBackoff, on, budget, bufferBody)'
  ])
})

test('bad durations and sizes under retry and circuitBreaker: refused with the duration and size forms', () => {
  const err = refused('users.yaml', yaml({ top: 'retry:\n  backoff: quick\n  bufferBody: big\ncircuitBreaker:\n  openFor: 5 seconds\n' }))
  assert.deepEqual(err.problems, [
    `/retry/backoff: ${DURATION_EXPECTED}`,
    `/retry/bufferBody: ${SIZE_EXPECTED}`,
    `/circuitBreaker/openFor: ${DURATION_EXPECTED}`
  ])
})

/** A route with `auth.jwt: { <jwt> }` parsed against `env`: its problems, or [] when accepted. */
function authProblems (jwt: string, env: NodeJS.ProcessEnv = {}, route = ''): string[] {
  const text = yaml({ route: `    auth:\n      jwt: { issuer: https://issuer.test, audience: orders-api, ${jwt} }\n${route}` })
  try {
    parseRouteFile('orders.yaml', text, env)
    return []
  } catch (err) {
    assert.ok(err instanceof RouteFileError, String(err))
    return err.problems
  }
}

test('auth.jwt: a JWKS source gets the asymmetric algorithms, a secret the HMAC ones; claims map to lowercase headers', () => {
  const jwks = parseRouteFile('orders.yaml', yaml({ route: '    auth:\n      jwt:\n        jwksUrl: https://issuer.test/jwks.json\n        issuer: https://issuer.test\n        audience: [a, b]\n        forwardClaims: { sub: X-User-Id }\n' }), {})
  assert.deepEqual(jwks.routes[0]?.auth, {
    keySource: { kind: 'jwks', url: 'https://issuer.test/jwks.json' },
    issuer: ['https://issuer.test'],
    audience: ['a', 'b'],
    algorithms: ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'],
    clockToleranceMs: 30_000,
    requiredScopes: [],
    forwardClaims: [['sub', 'x-user-id']],
    forwardToken: true
  })
  const secret = 'x'.repeat(32)
  const hmac = parseRouteFile('orders.yaml', yaml({ route: '    auth:\n      jwt: { secret: { env: S }, issuer: i, audience: a }\n' }), { S: secret })
  assert.deepEqual(hmac.routes[0]?.auth?.keySource, { kind: 'secret', env: 'S', secret })
  assert.deepEqual(hmac.routes[0]?.auth?.algorithms, ['HS256', 'HS384', 'HS512'])
})

test('auth.jwt refused: no key source or two, a missing or short secret, a private key, key confusion, plain-http JWKS, a claim over Authorization', () => {
  const at = (p: string): string => `/routes/0/auth/jwt${p}`
  assert.deepEqual(authProblems(''), [`${at('')}: needs exactly one key source: jwksUrl, publicKey or secret`])
  assert.deepEqual(authProblems('jwksUrl: "https://i/j", secret: { env: S }', { S: 'x'.repeat(32) }), [`${at('')}: needs exactly one key source: jwksUrl, publicKey or secret`])
  assert.deepEqual(authProblems('secret: { env: ORDERS_SECRET }'), [`${at('/secret/env')}: environment variable ORDERS_SECRET is not set`])
  assert.deepEqual(authProblems('secret: { env: S }', { S: 'short' }), [`${at('/secret/env')}: the secret in S is shorter than 32 bytes (HS256 needs at least 256 bits)`])
  assert.deepEqual(authProblems('publicKey: { env: K }', { K: '-----BEGIN PRIVATE KEY-----\nMII...\n-----END PRIVATE KEY-----\n' }), [`${at('/publicKey/env')}: K holds a private key: give the public key only`])
  assert.deepEqual(authProblems('publicKey: { env: K }', { K: 'not a key' }), [`${at('/publicKey/env')}: K is not a PEM public key (SPKI) or a public JWK`])
  assert.deepEqual(authProblems('jwksUrl: "https://i/j", algorithms: [RS256, HS256]'), [`${at('/algorithms')}: HS256 need a secret; with a public key anyone who has the key could sign tokens`])
  assert.deepEqual(authProblems('secret: { env: S }, algorithms: [RS256]', { S: 'x'.repeat(32) }), [`${at('/algorithms')}: RS256 need a public key or jwksUrl, not a secret`])
  assert.deepEqual(authProblems('jwksUrl: "http://issuer.test/jwks.json"'), [`${at('/jwksUrl')}: must be https:// (plain http:// only for localhost): keys fetched in the clear can be swapped on the way`])
  assert.deepEqual(authProblems('jwksUrl: "http://127.0.0.1:8080/jwks.json"'), [])
  assert.deepEqual(authProblems('jwksUrl: "https://i/j", forwardClaims: { sub: Authorization }'), [`${at('/forwardClaims/sub')}: authorization cannot carry a claim`])
  assert.deepEqual(authProblems('jwksUrl: "https://i/j", forwardClaims: { sub: x-user, uid: x-user }'), [`${at('/forwardClaims/uid')}: x-user already carries sub`])
  assert.deepEqual(refused('orders.yaml', yaml({ route: '    rateLimit: { max: 1, key: "claim:sub" }\n' })).problems, ['/routes/0/rateLimit/key: claim keys need auth on the route (the claim comes from the verified token)'])
})

test('target urls the pattern lets through are refused naming the field: a port out of range, a space or a bad character in the host, credentials, port 0', () => {
  const cases: Array<[string, RegExp]> = [
    ['http://127.0.0.1:99999', /^\/targets\/0\/url: http:\/\/127\.0\.0\.1:99999 is not a valid URL: the port 99999 is out of range \(1-65535\); e\.g\. http:\/\/10\.0\.0\.5:9001$/],
    ['"http://a b:9001"', /^\/targets\/0\/url: http:\/\/a b:9001 is not a valid URL: the host is not a host name or IP address/],
    ['http://a<b:9001', /^\/targets\/0\/url: http:\/\/a<b:9001 is not a valid URL: the host/],
    ['http://user:pw@10.0.0.5:9001', /^\/targets\/0\/url: credentials \(user:password@\) are not allowed in a target URL/],
    ['http://user@10.0.0.5:9001', /^\/targets\/0\/url: credentials/],
    ['http://10.0.0.5:0', /^\/targets\/0\/url: port 0 is not a port an upstream listens on/]
  ]
  for (const [url, expected] of cases) {
    const err = refused('svc.yaml', yaml({ url }))
    assert.equal(err.problems.length, 1, `${url}: ${err.message}`)
    assert.match(err.problems[0] ?? '', expected, url)
  }
})

test('YAML that parses but cannot be read (an alias before its anchor, found by the loader fuzz): not valid YAML, naming the file', () => {
  const err = refused('svc.yaml', 'targets:\n  - url: *a\nroutes:\n  - path: &a /x\n')
  assert.match(err.problems[0] ?? '', /^not valid YAML: Unresolved alias/)
})

test('websocket: a route that takes upgrades must serve GET; the tunnel settings are checked like any', () => {
  assert.deepEqual(refused('chat.yaml', yaml({ route: '    websocket: true\n    methods: [POST]\n' })).problems, ['/routes/0/websocket: a WebSocket handshake is a GET, and methods does not list GET'])
  assert.match(refused('chat.yaml', yaml({ top: 'websocket: { maxPerTarget: 0, idleTimeout: soon }\n' })).problems.join('\n'), /\/websocket\/maxPerTarget: .*\n\/websocket\/idleTimeout: /)
})

test('grpc and websocket routes need targets of the right protocol', () => {
  const h2c = 'targets:\n  - { url: http://127.0.0.1:9001, protocol: h2c }\nroutes:\n'
  const http1 = 'targets:\n  - { url: http://127.0.0.1:9001 }\nroutes:\n'
  assert.equal(parseRouteFile('echo.yaml', `${h2c}  - { path: /test.Echo, grpc: true }\n`).routes[0]?.grpc, true)
  assert.deepEqual(refused('echo.yaml', `${http1}  - { path: /test.Echo, grpc: true }\n`).problems, ['/routes/0/grpc: gRPC needs HTTP/2 targets, and /targets/0 has protocol http1 (set protocol: h2 for https://, h2c for http://)'])
  assert.deepEqual(refused('echo.yaml', `${h2c}  - { path: /ws, websocket: true }\n`).problems, ['/routes/0/websocket: WebSocket tunnels need HTTP/1.1 targets, and /targets/0 has protocol h2c'])
  assert.deepEqual(refused('echo.yaml', `${h2c}  - { path: /test.Echo, grpc: true, methods: [GET] }\n`).problems, ['/routes/0/grpc: gRPC calls are POSTs, and methods does not list POST'])
})
