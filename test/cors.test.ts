// CORS of a route, with the exact headers a browser sends: preflights answered by the gateway
// before authentication and rate limits (never reaching the upstream), allowed and refused
// origins (exact and patterns), the upstream's own CORS headers replaced, Vary kept, and the
// policies refused at load.
import { strict as assert } from 'node:assert'
import { test } from 'node:test'
import { SignJWT } from 'jose'
import { loadRouteDirStrict } from '../src/config/route-dir.js'
import { parseRouteFile, RouteFileError } from '../src/config/route-file/index.js'
import { gateway, send, tempDir, upstream } from './helpers.js'

const SECRET = 'a-shared-secret-of-at-least-32-bytes!!'

/** What Chrome sends before a cross-origin POST with Authorization and a JSON body. */
const preflight = (origin: string): Record<string, string> => ({
  host: 'api.example.com',
  origin,
  'access-control-request-method': 'POST',
  'access-control-request-headers': 'authorization,content-type',
  accept: '*/*',
  'accept-language': 'en-US,en;q=0.9',
  'sec-fetch-mode': 'cors',
  'sec-fetch-site': 'same-site',
  'sec-fetch-dest': 'empty',
  referer: `${origin}/`,
  'user-agent': 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36'
})

test('a preflight is answered by the gateway before auth and rate limit, and never reaches the upstream', async t => {
  const origin = await upstream(t, (_req, res) => {
    // The upstream's own CORS answer is not the gateway's: it must not reach the browser.
    res.setHeader('access-control-allow-origin', '*')
    res.setHeader('vary', 'Accept-Encoding')
    res.setHeader('content-type', 'application/json')
    res.end('{"ok":true}')
  })
  const gw = await gateway(t, {
    'orders.yaml': `targets:
  - url: ${origin.url}
routes:
  - path: /api/orders
    methods: [GET, POST]
    auth:
      jwt: { secret: { env: CORS_SECRET }, issuer: https://issuer.test, audience: orders }
    rateLimit: { max: 1, window: 1m }
    cors:
      origins: [https://app.example.com, "https://*.example.com"]
      methods: [GET, POST]
      headers: [authorization, content-type]
      exposeHeaders: [x-request-id]
      credentials: true
      maxAge: 10m
`
  }, { CORS_SECRET: SECRET })
  for (let i = 0; i < 3; i++) {
    const res = await send(gw, '/api/orders', { method: 'OPTIONS', headers: preflight('https://app.example.com') })
    assert.equal(res.status, 204)
    assert.equal(res.headers['access-control-allow-origin'], 'https://app.example.com')
    assert.equal(res.headers['access-control-allow-methods'], 'GET, POST')
    assert.equal(res.headers['access-control-allow-headers'], 'authorization, content-type')
    assert.equal(res.headers['access-control-allow-credentials'], 'true')
    assert.equal(res.headers['access-control-max-age'], '600')
    assert.match(String(res.headers.vary), /\bOrigin\b/)
    assert.equal(res.body, '')
  }
  assert.equal(origin.requests.length, 0, 'no preflight reached the upstream')

  // The rate limit (1 a minute) is unspent, and the actual request's answer carries CORS headers.
  const token = await new SignJWT({ iss: 'https://issuer.test', aud: 'orders', sub: 'alice' }).setProtectedHeader({ alg: 'HS256' }).setExpirationTime('5m').sign(Buffer.from(SECRET))
  const actual = await send(gw, '/api/orders', { method: 'POST', headers: { origin: 'https://app.example.com', authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: '{}' })
  assert.equal(actual.status, 200)
  assert.equal(actual.headers['access-control-allow-origin'], 'https://app.example.com')
  assert.equal(actual.headers['access-control-allow-credentials'], 'true')
  assert.equal(actual.headers['access-control-expose-headers'], 'x-request-id')
  assert.deepEqual(String(actual.headers.vary).split(/,\s*/).sort(), ['Accept-Encoding', 'Origin'])
  // The gateway's own refusals carry them too, so the page can read why (here: the spent limit).
  const limited = await send(gw, '/api/orders', { headers: { origin: 'https://app.example.com', authorization: `Bearer ${token}` } })
  assert.equal(limited.status, 429)
  assert.equal(limited.headers['access-control-allow-origin'], 'https://app.example.com')
  const unauthenticated = await send(gw, '/api/orders', { headers: { origin: 'https://app.example.com' } })
  assert.equal(unauthenticated.status, 401)
  assert.equal(unauthenticated.headers['access-control-allow-origin'], 'https://app.example.com')
})

test('origins: exact and pattern allowed; a lookalike, another scheme or the bare domain gets no Access-Control-Allow-Origin', async t => {
  const origin = await upstream(t, (_req, res) => {
    res.setHeader('access-control-allow-origin', '*')
    res.end('ok')
  })
  const gw = await gateway(t, {
    'web.yaml': `targets:
  - url: ${origin.url}
routes:
  - path: /web
    cors:
      origins: [https://app.example.com, "https://*.example.com"]
`
  })
  for (const allowed of ['https://app.example.com', 'https://shop.example.com', 'https://a.b.example.com', 'HTTPS://Shop.Example.com']) {
    const pre = await send(gw, '/web', { method: 'OPTIONS', headers: preflight(allowed) })
    assert.equal(pre.status, 204, allowed)
    assert.equal(pre.headers['access-control-allow-origin'], allowed, allowed)
    // Default methods: the route's (all); default headers: those asked for.
    assert.equal(pre.headers['access-control-allow-methods'], 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE')
    assert.equal(pre.headers['access-control-allow-headers'], 'authorization,content-type')
    assert.equal(pre.headers['access-control-allow-credentials'], undefined)
  }
  for (const refused of ['https://example.com', 'https://evil-example.com', 'http://shop.example.com', 'https://example.com.evil.test', 'https://.example.com', 'null']) {
    const pre = await send(gw, '/web', { method: 'OPTIONS', headers: preflight(refused) })
    assert.equal(pre.status, 204, refused)
    assert.equal(pre.headers['access-control-allow-origin'], undefined, refused)
    assert.equal(pre.headers['access-control-allow-methods'], undefined, refused)
    const get = await send(gw, '/web', { headers: { origin: refused } })
    assert.equal(get.status, 200, refused)
    assert.equal(get.headers['access-control-allow-origin'], undefined, `${refused}: the upstream's * is not passed on`)
    assert.equal(get.headers.vary, 'Origin')
  }
  assert.equal(origin.requests.length, 6, 'only the actual requests reached the upstream')
})

test('a route that does not serve OPTIONS answers preflights, and still 404s a plain OPTIONS; a route without cors passes the upstream\'s headers', async t => {
  const origin = await upstream(t, (_req, res) => {
    res.setHeader('access-control-allow-origin', 'https://upstream-says.example')
    res.end('ok')
  })
  const gw = await gateway(t, {
    'api.yaml': `targets:
  - url: ${origin.url}
routes:
  - path: /api
    methods: [GET]
    cors: { origins: ["*"] }
  - path: /legacy
`
  })
  const pre = await send(gw, '/api/x', { method: 'OPTIONS', headers: preflight('https://anywhere.test') })
  assert.equal(pre.status, 204)
  assert.equal(pre.headers['access-control-allow-origin'], '*')
  assert.equal(pre.headers['access-control-allow-methods'], 'GET')
  assert.equal((await send(gw, '/api/x', { method: 'OPTIONS' })).status, 404)
  assert.equal((await send(gw, '/api/x', { method: 'OPTIONS', headers: { origin: 'https://anywhere.test' } })).status, 404)
  const get = await send(gw, '/api/x', { headers: { origin: 'https://anywhere.test' } })
  assert.equal(get.headers['access-control-allow-origin'], '*')
  const legacy = await send(gw, '/legacy', { headers: { origin: 'https://anywhere.test' } })
  assert.equal(legacy.headers['access-control-allow-origin'], 'https://upstream-says.example')
  assert.equal(origin.requests.length, 2)
})

function problems (cors: string, extra = ''): string[] {
  try {
    parseRouteFile('web.yaml', `targets:\n  - url: http://127.0.0.1:9001\nroutes:\n  - path: /web\n${extra}    cors:\n${cors}`)
  } catch (err) {
    assert.ok(err instanceof RouteFileError, String(err))
    return err.problems
  }
  return []
}

test('CORS policies refused at load: * with credentials, an origin with a path, a rule on the route\'s Access-Control-* headers', () => {
  assert.deepEqual(problems('      origins: ["*"]\n      credentials: true\n'),
    ['/routes/0/cors/origins: "*" cannot go with credentials: true (browsers refuse it); list the origins that may send credentials'])
  assert.match(problems('      origins: [https://app.example.com/path]\n').join('\n'),
    /\/routes\/0\/cors\/origins\/0: must be an origin such as https:\/\/app\.example\.com, a pattern such as https:\/\/\*\.example\.com, or \*/)
  assert.match(problems('      origins: ["https://app.*.com"]\n').join('\n'), /\/routes\/0\/cors\/origins\/0: must be an origin/)
  assert.deepEqual(problems('      origins: [https://app.example.com]\n', '    headers: { response: { remove: [access-control-allow-origin] } }\n'),
    ['/routes/0/headers/response/remove/0: access-control-allow-origin cannot be set or removed by header rules: set by this route\'s cors'])
  assert.deepEqual(problems('      origins: [https://app.example.com, "https://*.example.com"]\n      methods: [GET, POST]\n      headers: [authorization, content-type]\n      exposeHeaders: [x-request-id]\n      credentials: true\n      maxAge: 10m\n'), [])
})

test('a route with cors claims OPTIONS on its path: another file\'s OPTIONS route there is a conflict, named', async t => {
  const dir = await tempDir(t, {
    'a.yaml': 'targets:\n  - url: http://127.0.0.1:9001\nroutes:\n  - path: /api\n    methods: [GET]\n    cors: { origins: [https://app.example.com] }\n',
    'b.yaml': 'targets:\n  - url: http://127.0.0.1:9002\nroutes:\n  - path: /api\n    methods: [OPTIONS]\n'
  })
  await assert.rejects(loadRouteDirStrict(dir), (err: Error) => {
    assert.match(err.message, /^b\.yaml: \/routes\/0: OPTIONS \(any host\) \/api is already claimed by a\.yaml$/m)
    return true
  })
})
