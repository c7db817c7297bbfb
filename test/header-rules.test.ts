// Header rules of a route (headers.request / headers.response: set, add, remove), end to end
// through a gateway process to a real upstream, and the rules refused at load, each naming its
// file, field and header.
import { strict as assert } from 'node:assert'
import { test } from 'node:test'
import { SignJWT } from 'jose'
import { parseRouteFile, RouteFileError } from '../src/config/route-file/index.js'
import { gateway, send, upstream } from './helpers.js'

const SECRET = 'a-shared-secret-of-at-least-32-bytes!!'

test('request rules: set replaces the client\'s value, add goes beside it, remove drops it; variables resolve per request', async t => {
  const origin = await upstream(t)
  const gw = await gateway(t, {
    'orders.yaml': `targets:
  - url: ${origin.url}
routes:
  - path: /api/orders
    headers:
      request:
        set: { x-api-version: "2", x-client: "{client.ip}", x-trace-me: "{request.id} via {route.id} to {upstream} at {route.path}" }
        add: { x-tag: edge }
        remove: [x-debug]
  - path: /plain
`
  })
  const res = await send(gw, '/api/orders/7', { headers: { 'x-request-id': 'rules-1', 'x-api-version': '1', 'x-tag': 'client', 'x-debug': 'on', 'x-client': 'forged' } })
  assert.equal(res.status, 200)
  const seen = origin.requests[0]?.headers ?? {}
  assert.equal(seen['x-api-version'], '2')
  assert.equal(seen['x-tag'], 'client, edge')
  assert.equal(seen['x-debug'], undefined)
  assert.equal(seen['x-client'], '127.0.0.1')
  assert.equal(seen['x-trace-me'], 'rules-1 via orders-0 to orders at /api/orders')
  // A route without rules forwards what the client sent.
  await send(gw, '/plain', { headers: { 'x-debug': 'on', 'x-api-version': '1' } })
  assert.equal(origin.requests[1]?.headers['x-debug'], 'on')
  assert.equal(origin.requests[1]?.headers['x-api-version'], '1')
})

test('response rules change what the client sees; the gateway\'s own answers (404) are left alone', async t => {
  const origin = await upstream(t, (_req, res) => {
    res.setHeader('server', 'internal/1.2')
    res.setHeader('x-powered-by', 'framework 9')
    res.setHeader('cache-control', 'public, max-age=600')
    res.end('ok')
  })
  const gw = await gateway(t, {
    'orders.yaml': `targets:
  - url: ${origin.url}
routes:
  - path: /api/orders
    headers:
      response: { set: { cache-control: no-store }, add: { x-served-by: "{upstream}" }, remove: [server, x-powered-by] }
`
  })
  const res = await send(gw, '/api/orders')
  assert.equal(res.status, 200)
  assert.equal(res.headers['cache-control'], 'no-store')
  assert.equal(res.headers.server, undefined)
  assert.equal(res.headers['x-powered-by'], undefined)
  assert.equal(res.headers['x-served-by'], 'orders')
  assert.equal(res.body, 'ok')
  const missing = await send(gw, '/nope')
  assert.equal(missing.status, 404)
  assert.equal(missing.headers['x-served-by'], undefined)
})

test('a claim variable carries the verified subject, never a client-sent value; an absent claim writes no header', async t => {
  const origin = await upstream(t)
  const gw = await gateway(t, {
    'me.yaml': `targets:
  - url: ${origin.url}
routes:
  - path: /me
    auth:
      jwt: { secret: { env: RULES_SECRET }, issuer: https://issuer.test, audience: me-api }
    headers:
      request:
        set: { x-user: "{claim.sub}", x-tenant: "tenant-{claim.tenant}" }
`
  }, { RULES_SECRET: SECRET })
  const token = async (claims: Record<string, unknown>): Promise<string> =>
    await new SignJWT({ iss: 'https://issuer.test', aud: 'me-api', ...claims }).setProtectedHeader({ alg: 'HS256' }).setExpirationTime('5m').sign(Buffer.from(SECRET))
  const alice = await send(gw, '/me', { headers: { authorization: `Bearer ${await token({ sub: 'alice', tenant: 42 })}`, 'x-user': 'mallory', 'x-tenant': 'tenant-1' } })
  assert.equal(alice.status, 200)
  assert.equal(origin.requests[0]?.headers['x-user'], 'alice')
  assert.equal(origin.requests[0]?.headers['x-tenant'], 'tenant-42')
  const noTenant = await send(gw, '/me', { headers: { authorization: `Bearer ${await token({ sub: 'bob' })}`, 'x-tenant': 'tenant-1' } })
  assert.equal(noTenant.status, 200)
  assert.equal(origin.requests[1]?.headers['x-user'], 'bob')
  assert.equal(origin.requests[1]?.headers['x-tenant'], undefined, 'the client\'s value is dropped, and nothing written in its place')
  const forged = await send(gw, '/me', { headers: { 'x-user': 'mallory' } })
  assert.equal(forged.status, 401)
  assert.equal(origin.requests.length, 2)
})

/** The problems parseRouteFile reports for a route with these header rules. */
function problems (rules: string, extra = ''): string[] {
  try {
    parseRouteFile('rules.yaml', `targets:\n  - url: http://127.0.0.1:9001\nroutes:\n  - path: /r\n${extra}    headers:\n${rules}`, { RULES_SECRET: SECRET })
  } catch (err) {
    assert.ok(err instanceof RouteFileError, String(err))
    return err.problems
  }
  return []
}

test('rules on headers the gateway owns, unknown variables and malformed names are refused at load, naming file, field and header', () => {
  assert.deepEqual(problems('      request: { set: { host: example.com } }\n'),
    ['/routes/0/headers/request/set/host: host cannot be set or removed by header rules: the gateway sends the target\'s Host (the client\'s is in X-Forwarded-Host)'])
  assert.deepEqual(problems('      request: { remove: [X-Forwarded-For, transfer-encoding] }\n'), [
    '/routes/0/headers/request/remove/0: x-forwarded-for cannot be set or removed by header rules: set by the gateway from the connection and TRUST_PROXY',
    '/routes/0/headers/request/remove/1: transfer-encoding cannot be set or removed by header rules: a hop-by-hop header, never forwarded'
  ])
  assert.deepEqual(problems('      response: { set: { content-length: "5", x-request-id: abc } }\n'), [
    '/routes/0/headers/response/set/content-length: content-length cannot be set or removed by header rules: the body\'s framing is the gateway\'s',
    '/routes/0/headers/response/set/x-request-id: x-request-id cannot be set or removed by header rules: set by the gateway (the request id of its logs)'
  ])
  assert.deepEqual(problems('      request: { set: { x-client: "{clent.ip}" } }\n'),
    ['/routes/0/headers/request/set/x-client: unknown variable {clent.ip} (known: {client.ip}, {request.id}, {route.id}, {route.path}, {upstream}, {claim.<name>})'])
  assert.deepEqual(problems('      request: { set: { x-user: "{claim.sub}" } }\n'),
    ['/routes/0/headers/request/set/x-user: {claim.sub} needs auth on the route (claims come from the verified token)'])
  const auth = '    auth:\n      jwt: { secret: { env: RULES_SECRET }, issuer: i, audience: a, forwardClaims: { sub: X-User-Id } }\n'
  assert.deepEqual(problems('      request: { remove: [x-user-id] }\n', auth),
    ['/routes/0/headers/request/remove/0: x-user-id cannot be set or removed by header rules: set by this route\'s auth from the verified token (forwardClaims)'])
  assert.deepEqual(problems('      request: { set: { "bad name": x } }\n'), ['/routes/0/headers/request/set/bad name: "bad name" is not a header name'])
  assert.deepEqual(problems('      request: { set: { x-a: "{client.ip" } }\n'), ['/routes/0/headers/request/set/x-a: "{" without a closing "}" (variables are written {client.ip})'])
  assert.deepEqual(problems('      request: { set: { x-a: "1" }, remove: [X-A] }\n'), ['/routes/0/headers/request/set/x-a: x-a is also in remove; a header is either removed or written'])
  assert.match(problems('      request: { set: { x-api-version: 2 } }\n').join('\n'), /\/routes\/0\/headers\/request\/set\/x-api-version: must be a string without control characters \(quote numbers and booleans: "2"\)/)
  assert.deepEqual(problems('      request: { set: { x-api-version: "2" }, add: { x-tag: edge }, remove: [x-debug] }\n      response: { set: { cache-control: no-store }, remove: [server, x-powered-by] }\n'), [])
})
