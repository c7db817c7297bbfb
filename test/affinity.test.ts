// Sticky sessions: a client keeps reaching the same target while it admits requests, by a cookie
// the gateway sets (whose value shows no address), a header or its address; when its target stops
// admitting (breaker open) it is served by another one, and the cookie is issued again for that one.
import { strict as assert } from 'node:assert'
import { test } from 'node:test'
import { parseRouteFile, RouteFileError } from '../src/config/route-file/index.js'
import { gateway, send, upstream, type Upstream, type UpstreamHandler } from './helpers.js'

/** Answers with its own port and a cookie of its own, so the client sees which target answered. */
const named: UpstreamHandler = (req, res) => {
  res.setHeader('set-cookie', 'app=1; Path=/')
  res.end(String(req.socket.localPort))
}

const portOf = (u: Upstream): string => String(u.port)

test('cookie: the first answer sets a cookie naming its target; with it, every request reaches that target; when it is down, another serves and the cookie moves', async t => {
  const down = new Set<string>()
  const target = (): UpstreamHandler => (req, res, body, seen) => {
    if (down.has(String(req.socket.localPort))) {
      res.statusCode = 502
      res.end('down')
      return
    }
    named(req, res, body, seen)
  }
  const a = await upstream(t, target())
  const b = await upstream(t, target())
  const gw = await gateway(t, {
    'app.yaml': `targets:
  - url: ${a.url}
  - url: ${b.url}
routes:
  - path: /app
    affinity: { cookie: gh_affinity }
retry: { attempts: 0 }
circuitBreaker: { consecutiveFailures: 1, openFor: 1m }
`
  }, { AFFINITY_SECRET: 'a-test-secret-of-some-length' })
  const first = await send(gw, '/app')
  assert.equal(first.status, 200)
  const cookies = first.headers['set-cookie'] ?? []
  assert.ok(cookies.includes('app=1; Path=/'), 'the upstream\'s own cookie is passed on beside the gateway\'s')
  const sticky = cookies.find(c => c.startsWith('gh_affinity='))
  assert.match(sticky ?? '', /^gh_affinity=[A-Za-z0-9_-]{22}; Path=\/; HttpOnly; SameSite=Lax$/)
  const value = (sticky as string).split(';')[0] as string
  for (const shown of [String(a.port), String(b.port), '127.0.0.1']) assert.ok(!value.includes(shown), `the value shows no address (${shown})`)
  const answeredBy = first.body
  for (let i = 0; i < 20; i++) {
    const res = await send(gw, '/app', { headers: { cookie: `theme=dark; ${value}` } })
    assert.equal(res.body, answeredBy)
    assert.ok(!(res.headers['set-cookie'] ?? []).some(c => c.startsWith('gh_affinity=')), 'a cookie that still holds is not set again')
  }
  // The sticky target fails once (502): its breaker opens, and the client is served by the other, with a new cookie.
  down.add(answeredBy)
  assert.equal((await send(gw, '/app', { headers: { cookie: value } })).status, 502)
  const moved = await send(gw, '/app', { headers: { cookie: value } })
  assert.equal(moved.status, 200)
  assert.equal(moved.body, answeredBy === portOf(a) ? portOf(b) : portOf(a))
  const reissued = (moved.headers['set-cookie'] ?? []).find(c => c.startsWith('gh_affinity='))
  assert.ok(reissued !== undefined && !reissued.startsWith(value + ';'), 'the cookie names the new target')
  // With the new cookie the client stays on its new target.
  const next = await send(gw, '/app', { headers: { cookie: (reissued as string).split(';')[0] as string } })
  assert.equal(next.body, moved.body)
})

test('header and ip: the same key always reaches the same target, and keys spread over the targets', async t => {
  const a = await upstream(t, named)
  const b = await upstream(t, named)
  const gw = await gateway(t, {
    'app.yaml': `targets:\n  - url: ${a.url}\n  - url: ${b.url}\nroutes:\n  - path: /session\n    affinity: { header: x-session }\n  - path: /ip\n    affinity: ip\n`
  })
  const seen = new Set<string>()
  for (let user = 0; user < 20; user++) {
    const answers = new Set<string>()
    for (let i = 0; i < 5; i++) answers.add((await send(gw, '/session', { headers: { 'x-session': `user-${user}` } })).body)
    assert.equal(answers.size, 1, `user-${user} reached ${[...answers].join(' and ')}`)
    seen.add([...answers][0] as string)
  }
  assert.equal(seen.size, 2, '20 sessions spread over both targets')
  for (const address of ['127.0.0.1', '127.0.0.2']) {
    const answers = new Set<string>()
    for (let i = 0; i < 5; i++) answers.add((await send(gw, '/ip', { localAddress: address })).body)
    assert.equal(answers.size, 1, `${address} reached ${[...answers].join(' and ')}`)
  }
})

test('affinity written wrongly is refused at load', () => {
  const refused = (affinity: string): string[] => {
    try {
      parseRouteFile('app.yaml', `targets:\n  - url: http://127.0.0.1:9001\nroutes:\n  - path: /app\n    affinity: ${affinity}\n`)
    } catch (err) {
      assert.ok(err instanceof RouteFileError)
      return err.problems
    }
    return []
  }
  for (const wrong of ['cookie', '{ cookie: "bad name" }', '{ cookie: a, header: b }', '{ session: a }']) {
    assert.deepEqual(refused(wrong), ['/routes/0/affinity: must be ip, { cookie: <name> } or { header: <name> }'], wrong)
  }
  for (const right of ['ip', '{ cookie: gh_affinity }', '{ header: x-session }']) assert.deepEqual(refused(right), [], right)
})
