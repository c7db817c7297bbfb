import { strict as assert } from 'node:assert'
import { test } from 'node:test'
import { gateway, routeFile, send, upstream } from './helpers.js'

test('a request goes through the gateway to the upstream and back', async t => {
  const origin = await upstream(t)
  const gw = await gateway(t, { 'users.yaml': routeFile([origin.url], ['/api/users']) })

  const res = await send(gw, '/api/users/42?x=1')
  assert.equal(res.status, 200)
  assert.equal(res.json.url, '/api/users/42?x=1')
  assert.equal(origin.requests.length, 1)
})

test('with rewritePrefix, Location and Content-Location in the upstream\'s path space come back under the route\'s path (curl -L follows them); other hosts and relative ones are left alone; rewriteRedirects: false turns it off', async t => {
  const origin = await upstream(t, (req, res) => {
    const to: Record<string, string> = {
      '/v1/users/old': '/v1/users/new',
      '/v1/users/abs': `${origin.url}/v1/users/new?x=1`,
      '/v1/users/elsewhere': 'https://other.example/v1/users/new',
      '/v1/users/relative': 'new',
      '/v1/users/outside': '/v2/things',
      '/v1/users/created': '/v1/users/7',
      '/gone': '/here'
    }
    const target = to[req.url ?? '']
    if (target === undefined) { res.end(`at ${req.url ?? ''}`); return }
    const status = req.url === '/v1/users/created' ? 201 : 302
    res.writeHead(status, { location: target, ...(status === 201 ? { 'content-location': target } : {}) })
    res.end()
  })
  const gw = await gateway(t, {
    'users.yaml': `targets:\n  - url: ${origin.url}\nroutes:\n  - path: /api/users\n    rewritePrefix: /v1/users\n  - path: /raw\n    rewritePrefix: /v1/users\n    rewriteRedirects: false\n`,
    'strip.yaml': `targets:\n  - url: ${origin.url}\nroutes:\n  - path: /strip\n    rewritePrefix: ''\n`
  })
  const location = async (path: string): Promise<string | undefined> => (await send(gw, path)).headers.location as string | undefined
  assert.equal(await location('/api/users/old'), '/api/users/new')
  assert.equal(await location('/api/users/abs'), '/api/users/new?x=1', 'a URL of the target itself')
  assert.equal(await location('/api/users/elsewhere'), 'https://other.example/v1/users/new')
  assert.equal(await location('/api/users/relative'), 'new')
  assert.equal(await location('/api/users/outside'), '/v2/things', 'outside the prefix: unchanged')
  const created = await send(gw, '/api/users/created')
  assert.equal(created.status, 201)
  assert.equal(created.headers.location, '/api/users/7')
  assert.equal(created.headers['content-location'], '/api/users/7')
  assert.equal(await location('/raw/old'), '/v1/users/new', 'rewriteRedirects: false')
  assert.equal(await location('/strip/gone'), '/strip/here', "rewritePrefix '': every path of the upstream is under the route")
  // Followed through the gateway, the redirect lands on the route again.
  const followed = await fetch(`${gw.url}/api/users/old`)
  assert.equal(await followed.text(), 'at /v1/users/new')
  assert.equal(new URL(followed.url).pathname, '/api/users/new')
})
