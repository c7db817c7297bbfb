// The route-file loader under malformed values: a full route file (every key the schema knows,
// valid), then one value at a time replaced by something hostile, seeded so a failure replays.
// Whatever the input, the loader accepts it or throws RouteFileError naming the file (and, for a
// value, the field): never another exception, which would fail a reload for every file.
import { strict as assert } from 'node:assert'
import { test } from 'node:test'
import YAML from 'yaml'
import { parseRouteFile, RouteFileError } from '../src/config/route-file/index.js'

const FULL = {
  name: 'svc',
  targets: [{ url: 'http://127.0.0.1:9001', maxConnections: 10, weight: 2 }, { url: 'https://10.0.0.5:8443', tls: { servername: 'svc.internal' } }],
  routes: [{
    path: '/api',
    methods: ['GET', 'POST'],
    hosts: ['api.example.com'],
    rewritePrefix: '/v1',
    bodyLimit: '1mb',
    requestBuffer: '64kb',
    responseBuffer: '2mb',
    allowEncodedSlashes: false,
    auth: { jwt: { jwksUrl: 'https://issuer.example.com/jwks.json', issuer: 'https://issuer.example.com', audience: 'svc', algorithms: ['RS256'], clockTolerance: '30s', requiredScopes: ['a:b'], forwardClaims: { sub: 'x-user-id' } } },
    rateLimit: { max: 10, window: '1m', key: 'header:x-api-key', algorithm: 'sliding-window', onStoreError: 'open' }
  }],
  timeouts: { connect: '2s', request: '30s', idle: '30s' },
  retry: { attempts: 2, backoff: '25ms', maxBackoff: '250ms', on: ['reset', 503], budget: 0.2 },
  circuitBreaker: { consecutiveFailures: 5, failureRatio: 0.5, minRequests: 20, window: '10s', openFor: '5s', maxOpenFor: '30s', halfOpenProbes: 1, closeAfter: 2, failureStatuses: [502] }
}

const HOSTILE: unknown[] = [
  null, true, 0, -1, 1.5, 1e308, -1e308, 2 ** 53 + 1, Number.MAX_SAFE_INTEGER, '', ' ', 'x', '0', '-1', '1e9999', 'NaN', 'Infinity',
  '99999ms', '1.5.5s', '10 s', '1mb', '-1mb', '1e3kb', 'http://127.0.0.1:99999', 'http://a b:1', 'http://[::1', 'http://user:pw@h:1',
  'http://h:0', 'https://', 'http://%zz:1', 'http://xn--:1', 'http://h:1/', '/', '//', '/a/../b', '/%', '/%00', '\u0000', '\u202e', '😀',
  'a'.repeat(10_000), '__proto__', 'constructor', 'header:', 'header:\n', 'claim:', 'ip:', [], [null], [''], ['GET', 'GET'], {}, { __proto__: null },
  { nested: { deep: [1, { x: 2 }] } }, [[[]]]
]

/** Every path to a leaf (and to every object and array) of `value`. */
function paths (value: unknown, at: Array<string | number> = []): Array<Array<string | number>> {
  const out: Array<Array<string | number>> = [at]
  if (Array.isArray(value)) value.forEach((v, i) => out.push(...paths(v, [...at, i])))
  else if (value !== null && typeof value === 'object') for (const [k, v] of Object.entries(value)) out.push(...paths(v, [...at, k]))
  return out
}

function replaced (value: unknown, at: Array<string | number>, by: unknown): unknown {
  if (at.length === 0) return by
  const copy = structuredClone(value) as Record<string | number, unknown>
  let node = copy
  for (const key of at.slice(0, -1)) node = node[key] as Record<string | number, unknown>
  node[at.at(-1) as string | number] = by
  return copy
}

/** A small seeded PRNG (mulberry32): the same cases every run. */
function prng (seed: number): () => number {
  return () => {
    seed = (seed + 0x6D2B79F5) | 0
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

function outcome (file: string, text: string): string {
  try {
    parseRouteFile(file, text, { ...process.env })
    return 'accepted'
  } catch (err) {
    if (!(err instanceof RouteFileError)) return `threw ${(err as Error).name}: ${(err as Error).message}`
    assert.ok(err.problems.length > 0 && err.message.split('\n').every(l => l.startsWith(`${file}: `)), err.message)
    return 'refused'
  }
}

test('the full example file loads (the fuzz starts from a valid file)', () => {
  assert.equal(outcome('svc.yaml', YAML.stringify(FULL)), 'accepted')
})

test('every value of a full route file replaced by each hostile value, in YAML and JSON: accepted or RouteFileError, never another exception', () => {
  const all = paths(FULL)
  let cases = 0
  const counts = { accepted: 0, refused: 0 }
  for (const at of all) {
    for (const by of HOSTILE) {
      const data = replaced(FULL, at, by)
      for (const [file, text] of [['svc.yaml', YAML.stringify(data)], ['svc.json', JSON.stringify(data)]] as const) {
        const result = outcome(file, text)
        cases++
        assert.ok(result === 'accepted' || result === 'refused', `/${at.join('/')} = ${JSON.stringify(by)} in ${file}: ${result}`)
        counts[result]++
      }
    }
  }
  assert.ok(counts.refused > 0 && counts.accepted > 0, JSON.stringify(counts))
  assert.ok(cases > 5000, `${cases} cases`)
})

test('random damage to a route file\'s text (seeded): accepted or RouteFileError, never another exception', () => {
  const random = prng(20261205)
  const base = [YAML.stringify(FULL), JSON.stringify(FULL, null, 2)]
  const junk = ['\n', ':', '- ', '{', '}', '[', ']', '"', "'", '#', '&a', '*a', '!!binary', '\t', '\u0000', '%', '<<: *a', '? ', '|', '>']
  for (let i = 0; i < 3000; i++) {
    const which = i % 2
    let text = base[which] as string
    for (let k = 1 + Math.floor(random() * 3); k > 0; k--) {
      const at = Math.floor(random() * text.length)
      const cut = Math.floor(random() * 4)
      text = text.slice(0, at) + (junk[Math.floor(random() * junk.length)] as string) + text.slice(at + cut)
    }
    const file = which === 0 ? 'svc.yaml' : 'svc.json'
    const result = outcome(file, text)
    assert.ok(result === 'accepted' || result === 'refused', `case ${i} (${file}): ${result}\n${text}`)
  }
})
