// Canary and header-pinned routing: a route's split between target groups holds its weights, a
// pinned request (header or cookie) always lands in its group, retries stay in the group while it
// has a target left, and when a group's targets are all open a split request falls back to the
// other groups while a pinned one gets 503. Route files that misuse groups are refused at load.
import { strict as assert } from 'node:assert'
import http from 'node:http'
import { test } from 'node:test'
import { parseRouteFile, RouteFileError } from '../src/config/route-file/index.js'
import { closedPort, gateway, send, until, upstream, type UpstreamHandler } from './helpers.js'

const unavailable: UpstreamHandler = (_req, res) => {
  res.statusCode = 503
  res.end('busy')
}

test('a 90/10 split holds within 3 points over 4,000 requests; pinned requests always land in their group', async t => {
  const stable = await upstream(t)
  const canary = await upstream(t)
  const gw = await gateway(t, {
    'api.yaml': `targets:
  - { url: "${stable.url}", group: stable }
  - { url: "${canary.url}", group: canary }
routes:
  - path: /api
    split: { stable: 90, canary: 10 }
    pin: { header: x-canary, cookie: canary }
`
  })
  const agent = new http.Agent({ keepAlive: true, maxSockets: 16 })
  t.after(() => agent.destroy())
  const total = 4000
  let sent = 0
  await Promise.all(Array.from({ length: 16 }, async () => {
    while (sent < total) {
      sent++
      assert.equal((await send(gw, '/api/x', { agent })).status, 200)
    }
  }))
  const share = canary.requests.length / total
  assert.equal(stable.requests.length + canary.requests.length, total)
  assert.ok(Math.abs(share - 0.10) <= 0.03, `canary got ${(share * 100).toFixed(1)} % of ${total}`)

  const pinned = async (headers: Record<string, string>): Promise<[number, number]> => {
    const [s, c] = [stable.requests.length, canary.requests.length]
    for (let i = 0; i < 100; i++) assert.equal((await send(gw, '/api/x', { agent, headers })).status, 200)
    return [stable.requests.length - s, canary.requests.length - c]
  }
  assert.deepEqual(await pinned({ 'x-canary': 'canary' }), [0, 100])
  assert.deepEqual(await pinned({ cookie: 'session=abc; canary=canary; theme=dark' }), [0, 100])
  assert.deepEqual(await pinned({ 'x-canary': 'stable', cookie: 'canary=canary' }), [100, 0], 'the header wins over the cookie')
  // A value that names no group is not a pin: the split decides.
  const [s, c] = await pinned({ 'x-canary': 'nightly' })
  assert.equal(s + c, 100)
  assert.ok(s > 70, `${s} of 100 to stable`)
})

test('retries stay in the group while it has a target left; when every target of a group is open, split requests fall back and pinned ones get 503', async t => {
  const stable = await upstream(t)
  const busyCanary = await upstream(t, unavailable)
  const okCanary = await upstream(t)
  const gw = await gateway(t, {
    'api.yaml': `targets:
  - { url: "${stable.url}", group: stable }
  - { url: "${busyCanary.url}", group: canary }
  - { url: "${okCanary.url}", group: canary }
routes:
  - path: /api
    split: { stable: 50, canary: 50 }
    pin: { header: x-canary }
retry: { attempts: 1 }
circuitBreaker: { consecutiveFailures: 1000 }
`
  })
  for (let i = 0; i < 30; i++) assert.equal((await send(gw, '/api', { headers: { 'x-canary': 'canary' } })).status, 200)
  assert.equal(stable.requests.length, 0, 'a retry of a pinned canary request never left its group')
  assert.ok(busyCanary.requests.length > 0 && okCanary.requests.length === 30)

  const dead = await closedPort()
  const live = await gateway(t, {
    'api.yaml': `targets:
  - { url: "${stable.url}", group: stable }
  - { url: "http://127.0.0.1:${dead}", group: canary }
routes:
  - path: /api
    split: { stable: 10, canary: 90 }
    pin: { header: x-canary }
circuitBreaker: { consecutiveFailures: 1, openFor: 1m }
`
  })
  const before = stable.requests.length
  // The canary's breaker opens on its first failure; that request is retried on stable.
  for (let i = 0; i < 40; i++) assert.equal((await send(live, '/api')).status, 200)
  assert.equal(stable.requests.length - before, 40)
  await until('the canary breaker is open', async () => (await send(live, '/api', { headers: { 'x-canary': 'canary' } })).status === 503)
  const pinned = await send(live, '/api', { headers: { 'x-canary': 'canary' } })
  assert.equal(pinned.status, 503)
  assert.equal(pinned.json.code, 'GATEHOUSE_ERR_UPSTREAM_UNAVAILABLE')
  assert.equal(stable.requests.length - before, 40, 'no pinned request went to stable')
})

function problems (text: string): string[] {
  try {
    parseRouteFile('api.yaml', text)
  } catch (err) {
    assert.ok(err instanceof RouteFileError, String(err))
    return err.problems
  }
  return []
}

test('groups misused are refused at load, naming the field', () => {
  const targets = 'targets:\n  - { url: "http://127.0.0.1:9001", group: stable }\n  - { url: "http://127.0.0.1:9002", group: canary }\n'
  assert.deepEqual(problems(targets + 'routes:\n  - path: /api\n    split: { stable: 90, canray: 10 }\n'),
    ['/routes/0/split/canray: no target is in group canray (the groups are stable, canary)'])
  assert.deepEqual(problems(targets + 'routes:\n  - path: /api\n    pin: { header: x-canary }\n'),
    ['/routes/0/pin: pins a request to a group of split, and the route has no split'])
  assert.deepEqual(problems(targets + 'routes:\n  - path: /api\n    split: { stable: 0, canary: 0 }\n'),
    ['/routes/0/split: the weights add up to 0; give at least one group a weight'])
  assert.match(problems(targets + 'routes:\n  - path: /api\n    split: { stable: 0.5 }\n').join('\n'), /\/routes\/0\/split\/stable: must be a whole number, 0 or more/)
  assert.match(problems(targets + 'routes:\n  - path: /api\n    split: { stable: 1 }\n    pin: {}\n').join('\n'), /\/routes\/0\/pin: must be a mapping with header and\/or cookie/)
  assert.match(problems('targets:\n  - { url: "http://127.0.0.1:9001", group: Stable }\nroutes:\n  - path: /api\n').join('\n'), /\/targets\/0\/group: must be lowercase letters/)
  assert.deepEqual(problems(targets + 'routes:\n  - path: /api\n    split: { stable: 90, canary: 10 }\n    pin: { header: x-canary, cookie: canary }\n'), [])
})
