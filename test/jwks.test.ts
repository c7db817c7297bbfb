// JwksCache against a REAL JWKS server (node:http on 127.0.0.1:0) and real RSA/EC keys: every
// assertion is about what a user sees (a token verifies or not) and what the issuer sees (how many
// fetches reached it). Durations are real and short (100-1000 ms) with margins of 3x or more.
import { strict as assert } from 'node:assert'
import { generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto'
import { once } from 'node:events'
import http, { type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { test, type TestContext } from 'node:test'
import { errors, exportJWK, jwtVerify, SignJWT, type JWK } from 'jose'
import { JwksCache, JwksFetchError, JwksUnavailableError, type JwksCacheOptions, type JwksFetchResult } from '../plugins/auth/jwks.js'

type Handler = (req: IncomingMessage, res: ServerResponse) => void

interface JwksServer {
  url: string
  /** Path and Accept header of every request received, in order. */
  requests: Array<{ path: string, accept: string | undefined }>
  /** Answers each request; a test swaps it to change what the issuer serves. */
  handler: Handler
  close: () => Promise<void>
}

/** An issuer's JWKS endpoint, closed when test `t` ends. */
async function startJwksServer (t: TestContext, handler: Handler): Promise<JwksServer> {
  const server = http.createServer((req, res) => {
    jwks.requests.push({ path: req.url ?? '', accept: req.headers.accept })
    jwks.handler(req, res)
  })
  const jwks: JwksServer = {
    url: '',
    requests: [],
    handler,
    close: async () => {
      if (!server.listening) return
      server.closeAllConnections()
      await new Promise<void>(resolve => server.close(() => resolve()))
    }
  }
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  jwks.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/jwks.json`
  t.after(() => jwks.close())
  return jwks
}

/** Serves `{ keys }` as the issuer would, with an optional Cache-Control. */
function serveKeys (keys: JWK[], cacheControl?: string): Handler {
  return (req, res) => {
    res.setHeader('content-type', 'application/jwk-set+json')
    if (cacheControl !== undefined) res.setHeader('cache-control', cacheControl)
    res.end(JSON.stringify({ keys }))
  }
}

interface SigningKey {
  alg: 'RS256' | 'ES256'
  privateKey: KeyObject
  publicKey: KeyObject
}

// Generated once: RSA key generation is slow, and a key under another kid is a different JWKS member.
const rsa: SigningKey = { alg: 'RS256', ...generateKeyPairSync('rsa', { modulusLength: 2048 }) }
const ec: SigningKey = { alg: 'ES256', ...generateKeyPairSync('ec', { namedCurve: 'P-256' }) }
const stranger: SigningKey = { alg: 'ES256', ...generateKeyPairSync('ec', { namedCurve: 'P-256' }) }

/** The public JWK the issuer publishes for `key` under `kid`. */
async function publicJwk (key: SigningKey, kid: string, extra: Partial<JWK> = {}): Promise<JWK> {
  return { ...(await exportJWK(key.publicKey)), kid, alg: key.alg, use: 'sig', ...extra }
}

async function sign (key: SigningKey, kid: string): Promise<string> {
  return await new SignJWT({ sub: 'user-1' })
    .setProtectedHeader({ alg: key.alg, kid })
    .setIssuedAt()
    .setExpirationTime('5m')
    .sign(key.privateKey)
}

/** Verifies `token` the way the gateway does; resolves with the subject. */
async function verify (cache: JwksCache, token: string): Promise<string | undefined> {
  const { payload } = await jwtVerify(token, (header, flattened) => cache.getKey(header, flattened))
  return payload.sub
}

/** A cache whose onFetch results are recorded. */
function jwksCache (url: string, options?: JwksCacheOptions): { cache: JwksCache, results: JwksFetchResult[] } {
  const results: JwksFetchResult[] = []
  return { cache: new JwksCache(url, options, result => results.push(result)), results }
}

/** Polls `condition` until it holds; fails after `timeoutMs`. */
async function waitFor (what: string, condition: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = performance.now() + timeoutMs
  while (!condition()) {
    if (performance.now() > deadline) assert.fail(`${what}: not within ${timeoutMs} ms`)
    await sleep(10)
  }
}

const noMatchingKey = (err: unknown): boolean => err instanceof errors.JWKSNoMatchingKey

function unavailableBecause (reason: RegExp): (err: unknown) => boolean {
  return err => {
    assert.ok(err instanceof JwksUnavailableError, `expected JwksUnavailableError, got ${String(err)}`)
    assert.ok(err.cause instanceof JwksFetchError, 'the fetch error is the cause')
    assert.match(err.cause.message, reason)
    return true
  }
}

test('50 verifications, the first 25 concurrent on a cold cache, make exactly one fetch', { timeout: 5000 }, async t => {
  const server = await startJwksServer(t, serveKeys([await publicJwk(rsa, 'rsa-1'), await publicJwk(ec, 'ec-1')]))
  const { cache, results } = jwksCache(server.url)
  const rsaToken = await sign(rsa, 'rsa-1')
  const ecToken = await sign(ec, 'ec-1')

  const concurrent = await Promise.all(Array.from({ length: 25 }, (_, i) => verify(cache, i % 2 === 0 ? rsaToken : ecToken)))
  assert.deepEqual(concurrent, Array(25).fill('user-1'))
  for (let i = 0; i < 25; i++) assert.equal(await verify(cache, i % 2 === 0 ? rsaToken : ecToken), 'user-1')

  assert.equal(server.requests.length, 1)
  assert.deepEqual(server.requests[0], { path: '/jwks.json', accept: 'application/jwk-set+json, application/json' })
  assert.deepEqual(results, [{ ok: true, keys: 2, changed: true }])
  assert.equal(cache.fetches, 1)
  assert.equal(cache.fetchErrors, 0)
  assert.equal(cache.version, 1)
})

test('the issuer rotates: a new kid refetches once and verifies; a kid unknown after the refetch fails', { timeout: 5000 }, async t => {
  const server = await startJwksServer(t, serveKeys([await publicJwk(rsa, 'old')]))
  const { cache } = jwksCache(server.url, { cooldownMs: 200 })
  assert.equal(await verify(cache, await sign(rsa, 'old')), 'user-1')
  assert.equal(server.requests.length, 1)

  await sleep(600) // past the cooldown
  server.handler = serveKeys([await publicJwk(rsa, 'old'), await publicJwk(ec, 'new')])
  assert.equal(await verify(cache, await sign(ec, 'new')), 'user-1', 'same cache object, new key')
  assert.equal(server.requests.length, 2)
  assert.equal(cache.version, 2)

  await sleep(600) // past the cooldown again: the unknown kid may refetch, once
  await assert.rejects(verify(cache, await sign(stranger, 'unknown')), noMatchingKey)
  assert.equal(server.requests.length, 3)
  assert.equal(await verify(cache, await sign(rsa, 'old')), 'user-1')
  assert.equal(server.requests.length, 3)
})

test('a flood of 100 random kids makes at most one fetch per cooldown, and no kid reaches the URL', { timeout: 5000 }, async t => {
  const server = await startJwksServer(t, serveKeys([await publicJwk(ec, 'real')]))
  const { cache } = jwksCache(server.url, { cooldownMs: 1000 })
  const good = await sign(ec, 'real')
  assert.equal(await verify(cache, good), 'user-1')
  await sleep(1100) // past the cooldown: the flood is allowed its one refetch

  const hostile = ['../../etc/passwd', '..%2F..%2Fetc%2Fpasswd', '?kid=x', '#frag', 'http://evil.example/jwks', '']
  const kids = Array.from({ length: 100 }, (_, i) => hostile[i] ?? randomUUID())
  const tokens = await Promise.all(kids.map(kid => sign(stranger, kid)))
  const started = performance.now()
  await Promise.all(tokens.slice(0, 50).map(token => assert.rejects(verify(cache, token), noMatchingKey)))
  for (const token of tokens.slice(50)) await assert.rejects(verify(cache, token), noMatchingKey)
  // The assertion below needs the flood to end within the cooldown; it takes a few ms.
  assert.ok(performance.now() - started < 1000 / 3, 'the flood ran within a third of the cooldown')

  assert.equal(server.requests.length, 2, 'the first fetch plus at most one refetch')
  for (const { path } of server.requests) assert.equal(path, '/jwks.json')
  assert.equal(await verify(cache, good), 'user-1')
  assert.equal(server.requests.length, 2)
})

test('Cache-Control max-age above maxTtlMs is clamped; after the TTL one background refresh, requests never wait', { timeout: 5000 }, async t => {
  const server = await startJwksServer(t, serveKeys([await publicJwk(ec, 'k')], 'public, max-age=3600'))
  // A long cooldown: it must not delay a TTL refresh after a successful fetch.
  const { cache, results } = jwksCache(server.url, { minTtlMs: 100, maxTtlMs: 300, cooldownMs: 60_000 })
  const token = await sign(ec, 'k')
  assert.equal(await verify(cache, token), 'user-1')
  assert.equal(await verify(cache, token), 'user-1')
  assert.equal(server.requests.length, 1, 'within the TTL')

  await sleep(900) // 3x the clamped TTL
  // The issuer now holds its answer until released: verifications must not wait for it.
  let release = (): void => {}
  const released = new Promise<void>(resolve => { release = resolve })
  const serve = serveKeys([await publicJwk(ec, 'k')], 'max-age=3600')
  server.handler = (req, res) => { released.then(() => serve(req, res), () => {}) }
  const answers = await Promise.all(Array.from({ length: 10 }, () => verify(cache, token)))
  assert.deepEqual(answers, Array(10).fill('user-1'))
  await waitFor('the background refresh reaches the issuer', () => server.requests.length === 2)
  assert.equal(results.length, 1, 'the refresh is still unanswered, yet every verification succeeded')
  assert.equal(await verify(cache, token), 'user-1')
  release()
  await waitFor('the background refresh settles', () => results.length === 2)
  assert.deepEqual(results[1], { ok: true, keys: 1, changed: false })
  assert.equal(server.requests.length, 2, 'one refresh for all the callers')
})

test('TTL: short max-age, no-store and no-cache are raised to minTtlMs; no header or a bad one means defaultTtlMs; s-maxage is ignored', { timeout: 5000 }, async t => {
  const cases: Array<{ cacheControl: string | undefined, options: JwksCacheOptions, earlyMs: number, lateMs: number }> = [
    // TTL 300 ms: checked at 50 ms (not yet refreshed) and at 900 ms (refreshed).
    { cacheControl: 'max-age=0', options: { minTtlMs: 300, defaultTtlMs: 60_000 }, earlyMs: 50, lateMs: 900 },
    { cacheControl: 'no-store', options: { minTtlMs: 300, defaultTtlMs: 60_000 }, earlyMs: 50, lateMs: 900 },
    { cacheControl: 'no-cache, max-age=3600', options: { minTtlMs: 300, defaultTtlMs: 60_000 }, earlyMs: 50, lateMs: 900 },
    { cacheControl: undefined, options: { minTtlMs: 100, defaultTtlMs: 300 }, earlyMs: 50, lateMs: 900 },
    { cacheControl: 'max-age=soon', options: { minTtlMs: 100, defaultTtlMs: 300 }, earlyMs: 50, lateMs: 900 },
    // TTL 1 s from max-age (s-maxage=0 and the 100 ms default would both refresh earlier).
    { cacheControl: 'public, s-maxage=0, max-age=1', options: { minTtlMs: 100, defaultTtlMs: 100 }, earlyMs: 200, lateMs: 1300 }
  ]
  const key = await publicJwk(ec, 'k')
  const token = await sign(ec, 'k')
  await Promise.all(cases.map(async ({ cacheControl, options, earlyMs, lateMs }) => {
    const label = `Cache-Control: ${cacheControl ?? '(none)'}`
    const server = await startJwksServer(t, serveKeys([key], cacheControl))
    const { cache } = jwksCache(server.url, { maxTtlMs: 60_000, cooldownMs: 60_000, ...options })
    assert.equal(await verify(cache, token), 'user-1')
    await sleep(earlyMs)
    assert.equal(await verify(cache, token), 'user-1')
    assert.equal(server.requests.length, 1, `${label}: no refresh after ${earlyMs} ms`)
    await sleep(lateMs - earlyMs)
    assert.equal(await verify(cache, token), 'user-1')
    await waitFor(`${label}: refresh after ${lateMs} ms`, () => server.requests.length === 2)
  }))
})

test('a failing refresh (500, then a closed server) keeps the old keys, and is retried no sooner than the cooldown', { timeout: 5000 }, async t => {
  const server = await startJwksServer(t, serveKeys([await publicJwk(rsa, 'k')], 'max-age=60'))
  const { cache, results } = jwksCache(server.url, { minTtlMs: 100, maxTtlMs: 200, cooldownMs: 300 })
  const token = await sign(rsa, 'k')
  assert.equal(await verify(cache, token), 'user-1')

  server.handler = (req, res) => { res.statusCode = 500; res.end('oops') }
  await sleep(600) // past the 200 ms TTL
  assert.equal(await verify(cache, token), 'user-1')
  await waitFor('the refresh fails', () => results.length === 2)
  assert.equal(results[1]?.ok, false)
  assert.match(results[1]?.ok === false ? results[1].error.message : '', /status 500/)
  assert.equal(await verify(cache, token), 'user-1', 'the last good set still answers')
  await assert.rejects(verify(cache, await sign(stranger, 'other')), noMatchingKey)
  assert.equal(server.requests.length, 2, 'within the cooldown: no retry, not even for an unknown kid')

  await server.close()
  await sleep(900) // 3x the cooldown
  assert.equal(await verify(cache, token), 'user-1')
  await waitFor('the retry fails', () => results.length === 3)
  assert.match(results[2]?.ok === false ? results[2].error.message : '', /ECONNREFUSED/)
  assert.equal(await verify(cache, token), 'user-1')
  assert.equal(cache.fetchErrors, 2)
  assert.equal(cache.version, 1)
})

test('a failing first fetch: JwksUnavailableError saying why, and no second request within the cooldown', { timeout: 5000 }, async t => {
  const key = await publicJwk(ec, 'k')
  const token = await sign(ec, 'k')
  const cases: Array<{ name: string, handler: Handler, reason: RegExp }> = [
    { name: '500', handler: (req, res) => { res.statusCode = 500; res.end() }, reason: /status 500/ },
    { name: 'invalid JSON', handler: (req, res) => { res.end('{"keys": [') }, reason: /not JSON/ },
    { name: 'no keys array', handler: (req, res) => { res.end(JSON.stringify(key)) }, reason: /no "keys" array/ },
    { name: 'only encryption keys', handler: serveKeys([{ ...key, use: 'enc' }]), reason: /no signature keys/ },
    {
      name: 'Content-Length over maxBytes',
      handler: (req, res) => { res.end(JSON.stringify({ keys: [key], pad: 'x'.repeat(4096) })) },
      reason: /body of \d+ bytes is over the limit of 1024/
    },
    {
      name: 'chunked body over maxBytes',
      handler: (req, res) => {
        res.write('{"keys": [')
        for (let i = 0; i < 64; i++) res.write(`${JSON.stringify(key)},`)
        res.end(`${JSON.stringify(key)}]}`)
      },
      reason: /body is over the limit of 1024 bytes/
    },
    { name: 'never answers', handler: () => {}, reason: /timed out after 300 ms/ },
    {
      name: 'redirect',
      handler: (req, res) => {
        if (req.url === '/jwks.json') res.writeHead(302, { location: '/elsewhere' }).end()
        else serveKeys([key])(req, res)
      },
      reason: /redirect/
    }
  ]
  await Promise.all(cases.map(async ({ name, handler, reason }) => {
    const server = await startJwksServer(t, handler)
    const { cache, results } = jwksCache(server.url, { timeoutMs: 300, maxBytes: 1024 })
    const started = performance.now()
    const first = await Promise.allSettled(Array.from({ length: 5 }, () => verify(cache, token)))
    assert.ok(performance.now() - started < 2000, `${name}: bounded by timeoutMs`)
    for (const outcome of first) {
      assert.equal(outcome.status, 'rejected', name)
      assert.ok(unavailableBecause(reason)(outcome.status === 'rejected' ? outcome.reason : undefined))
    }
    await assert.rejects(verify(cache, token), unavailableBecause(reason))
    assert.equal(server.requests.length, 1, `${name}: one request for all callers, none within the cooldown`)
    assert.equal(results.length, 1)
    assert.equal(cache.fetchErrors, 1)
    assert.equal(cache.version, 0)
  }))
})

test('a failing first fetch: callers fail fast, and the first request after the cooldown fetches again', { timeout: 5000 }, async t => {
  const key = await publicJwk(ec, 'k')
  const server = await startJwksServer(t, (req, res) => { res.statusCode = 503; res.end() })
  const { cache } = jwksCache(server.url, { cooldownMs: 300 })
  const token = await sign(ec, 'k')
  await assert.rejects(verify(cache, token), unavailableBecause(/status 503/))
  assert.equal(server.requests.length, 1)
  await assert.rejects(verify(cache, token), unavailableBecause(/status 503/))
  assert.equal(server.requests.length, 1)

  server.handler = serveKeys([key])
  await sleep(900) // 3x the cooldown
  assert.equal(await verify(cache, token), 'user-1')
  assert.equal(server.requests.length, 2)
  assert.equal(cache.version, 1)
})

test('version changes when the served set changes, not when it is refetched unchanged', { timeout: 5000 }, async t => {
  const a = await publicJwk(rsa, 'a')
  const b = await publicJwk(ec, 'b')
  const server = await startJwksServer(t, serveKeys([a], 'max-age=60'))
  const { cache, results } = jwksCache(server.url, { minTtlMs: 100, maxTtlMs: 200 })
  const tokenA = await sign(rsa, 'a')
  const tokenB = await sign(ec, 'b')
  assert.equal(cache.version, 0)
  assert.equal(await verify(cache, tokenA), 'user-1')
  assert.equal(cache.version, 1)

  /** Lets the 200 ms TTL run out (3x), then has a verification trigger the refresh and waits for it. */
  const refresh = async (): Promise<void> => {
    await sleep(600)
    const before = results.length
    await verify(cache, tokenA).catch(() => {})
    await waitFor('the refresh settles', () => results.length === before + 1)
  }

  // The same key with its members in another order, plus an encryption key: the same set.
  const reordered = Object.fromEntries(Object.entries(a).reverse())
  server.handler = (req, res) => { res.setHeader('cache-control', 'max-age=60'); res.end(JSON.stringify({ keys: [reordered, { ...b, kid: 'enc-1', use: 'enc' }] }, null, 2)) }
  await refresh()
  assert.deepEqual(results.at(-1), { ok: true, keys: 1, changed: false })
  assert.equal(cache.version, 1)

  server.handler = serveKeys([a, b], 'max-age=60')
  await refresh()
  assert.deepEqual(results.at(-1), { ok: true, keys: 2, changed: true })
  assert.equal(cache.version, 2)
  assert.equal(await verify(cache, tokenB), 'user-1')

  // Removing a key is a change too: tokens signed with it stop verifying.
  server.handler = serveKeys([b], 'max-age=60')
  await refresh()
  assert.equal(cache.version, 3)
  await assert.rejects(verify(cache, tokenA), noMatchingKey)
  assert.equal(await verify(cache, tokenB), 'user-1')
  assert.equal(server.requests.length, 4)
})
