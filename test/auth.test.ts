// Edge authentication end to end: a real JWKS server (node:http) publishing real RSA and EC keys
// made here with node:crypto, a real upstream that records what it received, and the gateway as
// a real process. A refused request must never reach the upstream.
import { strict as assert } from 'node:assert'
import { createHmac, generateKeyPairSync, type KeyObject } from 'node:crypto'
import { once } from 'node:events'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { test, type TestContext } from 'node:test'
import { exportJWK, SignJWT, type JWK, type JWTPayload } from 'jose'
import { closedPort, gateway, metric, send, upstream, type GatewayProcess, type Reply, type Upstream } from './helpers.js'

const ISSUER = 'https://issuer.test'
const AUDIENCE = 'orders-api'
const COOLDOWN_MS = 1000

const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 })
const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' })
const foreign = generateKeyPairSync('rsa', { modulusLength: 2048 })
const rotated = generateKeyPairSync('rsa', { modulusLength: 2048 })
const SECRET = 'a-shared-secret-of-at-least-32-bytes!!'

async function jwk (key: KeyObject, kid: string, alg: string): Promise<JWK> {
  return { ...await exportJWK(key), kid, alg, use: 'sig' }
}

interface JwksServer { url: string, fetches: number, keys: JWK[], close: () => Promise<void> }

async function startJwks (t: TestContext, keys: JWK[]): Promise<JwksServer> {
  const jwks: JwksServer = { url: '', fetches: 0, keys, close: async () => {} }
  const server = http.createServer((req, res) => {
    jwks.fetches++
    res.writeHead(200, { 'content-type': 'application/jwk-set+json' })
    res.end(JSON.stringify({ keys: jwks.keys }))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  jwks.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/.well-known/jwks.json`
  jwks.close = async () => {
    server.closeAllConnections()
    await new Promise<void>(resolve => server.close(() => resolve()))
  }
  t.after(() => jwks.close())
  return jwks
}

const NOW = () => Math.floor(Date.now() / 1000)

/** A token signed by `key`, with sane claims unless `claims` overrides them (undefined drops one). */
async function sign (key: KeyObject, header: { alg: string, kid?: string }, claims: Record<string, unknown> = {}): Promise<string> {
  const payload: Record<string, unknown> = { iss: ISSUER, aud: AUDIENCE, sub: 'alice', iat: NOW(), exp: NOW() + 300, ...claims }
  for (const [k, v] of Object.entries(payload)) if (v === undefined) delete payload[k]
  return await new SignJWT(payload as JWTPayload).setProtectedHeader(header).sign(key)
}

const b64 = (value: unknown): string => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url')

/** What an attacker builds by hand: any header, any payload, a signature of its choosing. */
function forge (header: object, payload: object, signWith?: (input: string) => string): string {
  const input = `${b64(header)}.${b64(payload)}`
  return `${input}.${signWith === undefined ? '' : signWith(input)}`
}

const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` })

function routeYaml (upstream: string, jwksUrl: string): string {
  const jwt = (extra: string[] = []) => [
    '    auth:',
    '      jwt:',
    `        jwksUrl: ${jwksUrl}`,
    `        issuer: ${ISSUER}`,
    `        audience: ${AUDIENCE}`,
    '        forwardClaims: { sub: x-user-id, email: x-user-email }',
    ...extra.map(l => `        ${l}`)
  ]
  return [
    'name: orders',
    'targets:',
    `  - url: ${upstream}`,
    'routes:',
    '  - path: /orders',
    ...jwt(),
    '  - path: /admin',
    ...jwt(['requiredScopes: [orders:write]']),
    '  - path: /tokenless',
    ...jwt(['forwardToken: false']),
    '  - path: /limited',
    ...jwt(),
    '    rateLimit: { max: 2, window: 1m, key: "claim:sub" }',
    '  - path: /hmac',
    '    auth:',
    '      jwt: { secret: { env: ORDERS_SECRET }, issuer: https://issuer.test, audience: orders-api }',
    '  - path: /pem',
    '    auth:',
    '      jwt: { publicKey: { env: ORDERS_PUBLIC_KEY }, issuer: https://issuer.test, audience: orders-api }',
    '  - path: /public'
  ].join('\n') + '\n'
}

interface Setup { gw: GatewayProcess, upstream: Upstream, jwks: JwksServer }

async function setup (t: TestContext): Promise<Setup> {
  const jwks = await startJwks(t, [await jwk(rsa.publicKey, 'rsa-1', 'RS256'), await jwk(ec.publicKey, 'ec-1', 'ES256')])
  const orders = await upstream(t)
  const gw = await gateway(t, { 'orders.yaml': routeYaml(orders.url, jwks.url) }, {
    JWKS_COOLDOWN: `${COOLDOWN_MS}ms`,
    ORDERS_SECRET: SECRET,
    ORDERS_PUBLIC_KEY: ec.publicKey.export({ type: 'spki', format: 'pem' }) as string
  })
  return { gw, upstream: orders, jwks }
}

function assertChallenge (r: Reply, description: string): void {
  assert.equal(r.status, 401, r.body)
  assert.equal(r.headers['www-authenticate'], `Bearer realm="gatehouse", error="invalid_token", error_description="${description}"`)
  assert.deepEqual(JSON.parse(r.body), { statusCode: 401, code: 'GATEHOUSE_ERR_AUTH_INVALID', error: 'Unauthorized', message: `Invalid token: ${description}` })
}

test('valid RS256 and ES256 tokens: 200, claims forwarded as headers, spoofed identity headers replaced; the JWKS is fetched once for many requests', async t => {
  const { gw, upstream, jwks } = await setup(t)
  const token = await sign(rsa.privateKey, { alg: 'RS256', kid: 'rsa-1' }, { email: 'alice@example.com' })
  // Spelled with capitals, as node:http sends them: header names are case-insensitive.
  const r = await send(gw, '/orders/42', { headers: { ...bearer(token), 'X-User-Id': 'mallory', connection: 'x-user-id' } })
  assert.equal(r.status, 200, r.body)
  const seen = upstream.requests.at(-1)
  assert.equal(seen?.headers['x-user-id'], 'alice')
  assert.equal(seen?.headers['x-user-email'], 'alice@example.com')
  assert.equal(seen?.headers.authorization, `Bearer ${token}`, 'forwardToken defaults to true')

  // A claim the token lacks: the client's header is removed, not passed on.
  const ecToken = await sign(ec.privateKey, { alg: 'ES256', kid: 'ec-1' }, { sub: 'bob' })
  assert.equal((await send(gw, '/orders', { headers: { ...bearer(ecToken), 'X-User-Email': 'boss@example.com', 'X-USER-ID': 'mallory' } })).status, 200)
  assert.equal(upstream.requests.at(-1)?.headers['x-user-id'], 'bob')
  assert.equal(upstream.requests.at(-1)?.headers['x-user-email'], undefined)

  // 40 more, 20 distinct tokens, half at once: still the one fetch.
  const tokens = await Promise.all(Array.from({ length: 20 }, async (_, i) => await sign(rsa.privateKey, { alg: 'RS256', kid: 'rsa-1' }, { sub: `user-${i}` })))
  const statuses = await Promise.all(tokens.map(async tk => (await send(gw, '/orders', { headers: bearer(tk) })).status))
  for (const tk of tokens) statuses.push((await send(gw, '/orders', { headers: bearer(tk) })).status)
  assert.deepEqual(new Set(statuses), new Set([200]))
  assert.equal(jwks.fetches, 1)
  assert.equal(upstream.requests.length, 42)
  assert.equal(await metric(gw, 'jwks_fetches_total', { result: 'ok' }), 1)
})

test('no token: 401 with a bare Bearer challenge (RFC 6750 §3) and the upstream never sees the request; a public route needs none', async t => {
  const { gw, upstream } = await setup(t)
  const attempts: Array<Record<string, string>> = [{}, { authorization: 'Basic YWxpY2U6c2VjcmV0' }, { authorization: 'Bearer' }]
  for (const headers of attempts) {
    const r = await send(gw, '/orders', { headers })
    assert.equal(r.status, 401)
    assert.equal(r.headers['www-authenticate'], 'Bearer realm="gatehouse"')
    assert.deepEqual(JSON.parse(r.body), { statusCode: 401, code: 'GATEHOUSE_ERR_AUTH_REQUIRED', error: 'Unauthorized', message: 'This route needs a bearer token in the Authorization header' })
  }
  // Auth applies to the normalised path: a detour through a public route still lands on /orders.
  // (send() sends the path as written; fetch would resolve the dot segments itself.)
  for (const path of ['/public/%2e%2e/orders', '/public/../orders/1', '//orders']) {
    assert.equal((await send(gw, path)).status, 401, path)
  }
  assert.equal(upstream.requests.length, 0)
  assert.equal((await send(gw, '/public')).status, 200)
  assert.equal(await metric(gw, 'auth_failures_total', { route: 'orders-0', reason: 'missing_token' }), 6)
})

test('every bad token is 401 invalid_token with its reason, never echoed, and never reaches the upstream', async t => {
  const { gw, upstream } = await setup(t)
  const rs = { alg: 'RS256', kid: 'rsa-1' }
  const good = await sign(rsa.privateKey, rs)
  const [h, p] = good.split('.') as [string, string, string]
  const claims = JSON.parse(Buffer.from(p, 'base64url').toString()) as Record<string, unknown>
  const publicPem = rsa.publicKey.export({ type: 'spki', format: 'pem' }) as string
  const cases: Array<[what: string, token: string, description: string]> = [
    ['expired an hour ago', await sign(rsa.privateKey, rs, { exp: NOW() - 3600 }), 'the token has expired'],
    ['not valid for another hour', await sign(rsa.privateKey, rs, { nbf: NOW() + 3600 }), 'the token is not valid yet'],
    ['for another audience', await sign(rsa.privateKey, rs, { aud: 'billing-api' }), 'the token is for another audience'],
    ['from another issuer', await sign(rsa.privateKey, rs, { iss: 'https://evil.test' }), 'the token is from another issuer'],
    ['without exp', await sign(rsa.privateKey, rs, { exp: undefined }), 'the token lacks a required claim'],
    ['alg none', forge({ alg: 'none', typ: 'JWT' }, claims), 'the token algorithm is not allowed'],
    ['HS256 keyed with the public key (key confusion)', forge({ alg: 'HS256', kid: 'rsa-1' }, claims, input => createHmac('sha256', publicPem).update(input).digest('base64url')), 'the token algorithm is not allowed'],
    ['tampered payload', `${h}.${b64({ ...claims, sub: 'admin' })}.${good.split('.')[2] as string}`, 'the signature does not verify'],
    ['signed by a foreign key under a known kid', await sign(foreign.privateKey, rs), 'the signature does not verify'],
    ['signed by a foreign key under its own kid', await sign(foreign.privateKey, { alg: 'RS256', kid: 'foreign-1' }), 'the token is signed by an unknown key'],
    ['a path-traversal kid', await sign(foreign.privateKey, { alg: 'RS256', kid: '../../../../etc/passwd' }), 'the token is signed by an unknown key'],
    ['a claim that would split the upstream header', await sign(rsa.privateKey, rs, { sub: 'alice\r\nx-admin: true' }), 'a forwarded claim holds characters a header cannot carry'],
    ['garbage', 'not-a-token', 'the token is malformed'],
    ['three garbage parts', 'aaa.bbb.ccc', 'the token is malformed']
  ]
  for (const [what, token, description] of cases) {
    const r = await send(gw, '/orders', { headers: bearer(token) })
    await t.test(what, () => {
      assertChallenge(r, description)
      assert.ok(!r.body.includes(token) && !String(r.headers['www-authenticate']).includes(token), 'the token is echoed')
    })
  }
  assert.equal(upstream.requests.length, 0)
  assert.equal(await metric(gw, 'auth_failures_total', { route: 'orders-0', reason: 'bad_signature' }), 2)
  assert.equal(await metric(gw, 'auth_failures_total', { route: 'orders-0', reason: 'unknown_key' }), 2)
})

test('a rotated key with a new kid works without a restart; a flood of made-up kids costs at most one fetch per cooldown', async t => {
  const { gw, jwks } = await setup(t)
  assert.equal((await send(gw, '/orders', { headers: bearer(await sign(rsa.privateKey, { alg: 'RS256', kid: 'rsa-1' })) })).status, 200)
  assert.equal(jwks.fetches, 1)

  const flood = await Promise.all(Array.from({ length: 100 }, async (_, i) => await sign(foreign.privateKey, { alg: 'RS256', kid: `random-${i}` })))
  const began = performance.now()
  const statuses = await Promise.all(flood.map(async tk => (await send(gw, '/orders', { headers: bearer(tk) })).status))
  const tookMs = performance.now() - began
  assert.deepEqual(new Set(statuses), new Set([401]))
  // One refetch at once (the cooldown since the first fetch may be over), then at most one per
  // cooldown for as long as the flood lasted (on a slow machine, longer than one cooldown).
  const allowed = 2 + Math.floor(tookMs / COOLDOWN_MS)
  assert.ok(jwks.fetches <= allowed, `${jwks.fetches} fetches for 100 unknown kids in ${Math.round(tookMs)} ms (at most ${allowed})`)

  // The issuer publishes a new key and signs with it; after the cooldown the gateway finds it.
  jwks.keys = [...jwks.keys, await jwk(rotated.publicKey, 'rsa-2', 'RS256')]
  await new Promise(resolve => setTimeout(resolve, COOLDOWN_MS * 1.5))
  const before = jwks.fetches
  const r = await send(gw, '/orders', { headers: bearer(await sign(rotated.privateKey, { alg: 'RS256', kid: 'rsa-2' }, { sub: 'carol' })) })
  assert.equal(r.status, 200, r.body)
  assert.equal(jwks.fetches, before + 1)
})

test('a key the issuer removed from its key set no longer verifies, even for a token the gateway accepted before', async t => {
  const { gw, upstream, jwks } = await setup(t)
  const old = await sign(ec.privateKey, { alg: 'ES256', kid: 'ec-1' }, { sub: 'dave' })
  assert.equal((await send(gw, '/orders', { headers: bearer(old) })).status, 200)
  assert.equal((await send(gw, '/orders', { headers: bearer(old) })).status, 200, 'verified once, remembered')

  // The issuer rotates: ec-1 is withdrawn (compromised, say), rsa-2 published. A token under the
  // new kid makes the gateway fetch the key set again, once the cooldown has passed.
  jwks.keys = [await jwk(rsa.publicKey, 'rsa-1', 'RS256'), await jwk(rotated.publicKey, 'rsa-2', 'RS256')]
  await new Promise(resolve => setTimeout(resolve, COOLDOWN_MS * 1.5))
  assert.equal((await send(gw, '/orders', { headers: bearer(await sign(rotated.privateKey, { alg: 'RS256', kid: 'rsa-2' })) })).status, 200)
  assert.equal(jwks.fetches, 2)

  const seen = upstream.requests.length
  assertChallenge(await send(gw, '/orders', { headers: bearer(old) }), 'the token is signed by an unknown key')
  assert.equal(upstream.requests.length, seen, 'the refused token never reached the upstream')
  // Tokens under the keys still published keep working.
  assert.equal((await send(gw, '/orders', { headers: bearer(await sign(rsa.privateKey, { alg: 'RS256', kid: 'rsa-1' })) })).status, 200)
})

test('scopes: a valid token without the required scope is 403 insufficient_scope; with it (scope or scp), 200', async t => {
  const { gw, upstream } = await setup(t)
  const rs = { alg: 'RS256', kid: 'rsa-1' }
  const r = await send(gw, '/admin', { headers: bearer(await sign(rsa.privateKey, rs, { scope: 'orders:read' })) })
  assert.equal(r.status, 403)
  assert.equal(r.headers['www-authenticate'], 'Bearer realm="gatehouse", error="insufficient_scope", error_description="the token lacks a required scope", scope="orders:write"')
  assert.deepEqual(JSON.parse(r.body), { statusCode: 403, code: 'GATEHOUSE_ERR_AUTH_FORBIDDEN', error: 'Forbidden', message: 'The token lacks a required scope: orders:write' })
  assert.equal(upstream.requests.length, 0)
  assert.equal((await send(gw, '/admin', { headers: bearer(await sign(rsa.privateKey, rs, { scope: 'orders:read orders:write' })) })).status, 200)
  assert.equal((await send(gw, '/admin', { headers: bearer(await sign(rsa.privateKey, rs, { scp: ['orders:write'] })) })).status, 200)
})

test('rate limit key claim:sub: each verified subject has its own budget', async t => {
  const { gw } = await setup(t)
  const rs = { alg: 'RS256', kid: 'rsa-1' }
  const alice = await sign(rsa.privateKey, rs, { sub: 'alice' })
  const alice2 = await sign(rsa.privateKey, rs, { sub: 'alice', jti: 'second-token' })
  const bob = await sign(rsa.privateKey, rs, { sub: 'bob' })
  const statuses: number[] = []
  for (const token of [alice, alice2, alice, bob, bob, bob]) statuses.push((await send(gw, '/limited', { headers: bearer(token) })).status)
  // Two tokens of one subject share its budget.
  assert.deepEqual(statuses, [200, 200, 429, 200, 200, 429])
})

test('secret (HS256) and publicKey (PEM from the environment) sources; forwardToken false drops Authorization', async t => {
  const { gw, upstream } = await setup(t)
  const hs = await new SignJWT({ iss: ISSUER, aud: AUDIENCE, sub: 'svc' }).setProtectedHeader({ alg: 'HS256' }).setExpirationTime('5m').sign(Buffer.from(SECRET))
  assert.equal((await send(gw, '/hmac', { headers: bearer(hs) })).status, 200)
  assertChallenge(await send(gw, '/hmac', { headers: bearer(await sign(rsa.privateKey, { alg: 'RS256', kid: 'rsa-1' })) }), 'the token algorithm is not allowed')
  assert.equal((await send(gw, '/pem', { headers: bearer(await sign(ec.privateKey, { alg: 'ES256' })) })).status, 200)
  assertChallenge(await send(gw, '/pem', { headers: bearer(hs) }), 'the token algorithm is not allowed')

  const token = await sign(rsa.privateKey, { alg: 'RS256', kid: 'rsa-1' })
  assert.equal((await send(gw, '/tokenless', { headers: bearer(token) })).status, 200)
  assert.equal(upstream.requests.at(-1)?.headers.authorization, undefined)
  assert.equal(upstream.requests.at(-1)?.headers['x-user-id'], 'alice')
})

test('JWKS unreachable: 503 GATEHOUSE_ERR_AUTH_UNAVAILABLE with Retry-After, the fetch error is counted, and public routes still serve', async t => {
  const orders = await upstream(t)
  const gw = await gateway(t, { 'orders.yaml': routeYaml(orders.url, `http://127.0.0.1:${await closedPort()}/jwks.json`) }, {
    ORDERS_SECRET: SECRET,
    ORDERS_PUBLIC_KEY: ec.publicKey.export({ type: 'spki', format: 'pem' }) as string
  })
  const r = await send(gw, '/orders', { headers: bearer(await sign(rsa.privateKey, { alg: 'RS256', kid: 'rsa-1' })) })
  assert.equal(r.status, 503)
  assert.equal(r.headers['retry-after'], '5')
  assert.equal(JSON.parse(r.body).code, 'GATEHOUSE_ERR_AUTH_UNAVAILABLE')
  assert.equal(await metric(gw, 'jwks_fetches_total', { result: 'error' }), 1)
  assert.equal((await send(gw, '/public')).status, 200)
  assert.equal(orders.requests.length, 1)
})
