// Path parameters (`/users/:id/orders`): matched by the radix router after path normalisation,
// static segments before parameters, copied by a rewritePrefix that names them, and the route
// files refused at load that would use them wrongly.
import { strict as assert } from 'node:assert'
import { test } from 'node:test'
import { loadRouteDirStrict } from '../src/config/route-dir.js'
import { parseRouteFile, RouteFileError } from '../src/config/route-file/index.js'
import { gateway, send, tempDir, upstream } from './helpers.js'

test('a rewrite copies parameters as they were sent (still encoded); the rest of the path and the query follow', async t => {
  const origin = await upstream(t)
  const gw = await gateway(t, {
    'accounts.yaml': `targets:
  - url: ${origin.url}
routes:
  - path: /users/:id/orders
    rewritePrefix: /v2/accounts/:id/orders
  - path: /tenants/:tenant/files/:file
    rewritePrefix: /storage/:file/of/:tenant
`
  })
  const cases: Array<[string, string]> = [
    ['/users/42/orders', '/v2/accounts/42/orders'],
    ['/users/42/orders/7?expand=items', '/v2/accounts/42/orders/7?expand=items'],
    ['/users/a%20b/orders', '/v2/accounts/a%20b/orders'],
    ['/users/7/../8/orders', '/v2/accounts/8/orders'],
    ['/users/7//orders/', '/v2/accounts/7/orders/'],
    ['/tenants/acme/files/report.pdf/meta', '/storage/report.pdf/of/acme/meta']
  ]
  for (const [sent, forwarded] of cases) {
    const res = await send(gw, sent)
    assert.equal(res.status, 200, sent)
    assert.equal(origin.requests.at(-1)?.url, forwarded, sent)
  }
  // Normalised first: a dot segment is never a parameter's value, and a path short of a segment is not matched.
  assert.equal((await send(gw, '/users/%2e%2e/orders')).status, 404)
  assert.equal((await send(gw, '/users/orders')).status, 404)
  assert.equal((await send(gw, '/users/42/ordersX')).status, 404)
  assert.equal(origin.requests.length, cases.length)
})

test('static segments win over a parameter at the same place, also across files', async t => {
  const me = await upstream(t)
  const users = await upstream(t)
  const gw = await gateway(t, {
    'me.yaml': `targets:\n  - url: ${me.url}\nroutes:\n  - path: /users/me\n`,
    'users.yaml': `targets:\n  - url: ${users.url}\nroutes:\n  - path: /users/:id\n    rewritePrefix: /people/:id\n`
  })
  const seen = async (path: string): Promise<string> => {
    const before = me.requests.length
    assert.equal((await send(gw, path)).status, 200, path)
    return me.requests.length > before ? `me ${me.requests.at(-1)?.url}` : `users ${users.requests.at(-1)?.url}`
  }
  assert.equal(await seen('/users/me'), 'me /users/me')
  assert.equal(await seen('/users/me/settings'), 'me /users/me/settings')
  assert.equal(await seen('/users/mex'), 'users /people/mex')
  assert.equal(await seen('/users/42/settings'), 'users /people/42/settings')
})

function problems (route: string): string[] {
  try {
    parseRouteFile('p.yaml', `targets:\n  - url: http://127.0.0.1:9001\nroutes:\n${route}`)
  } catch (err) {
    assert.ok(err instanceof RouteFileError, String(err))
    return err.problems
  }
  return []
}

test('parameters used wrongly are refused at load, naming the field', async t => {
  assert.deepEqual(problems('  - path: /users/:id\n    rewritePrefix: /people/:uid\n'), ['/routes/0/rewritePrefix: :uid is not a parameter of the path /users/:id (it has :id)'])
  assert.deepEqual(problems('  - path: /a/:id/b/:id\n'), ['/routes/0/path: the parameter :id appears twice'])
  assert.match(problems('  - path: /a:b\n').join('\n'), /\/routes\/0\/path: must be a path prefix such as \/api\/users or \/users\/:id\/orders/)
  assert.match(problems('  - path: /a/:1\n').join('\n'), /\/routes\/0\/path: must be a path prefix/)
  assert.deepEqual(problems('  - path: /users/:id/orders\n    rewritePrefix: /v2/accounts/:id/orders\n'), [])
  // The same place with another parameter name, in another file: the same routes.
  const dir = await tempDir(t, {
    'a.yaml': 'targets:\n  - url: http://127.0.0.1:9001\nroutes:\n  - path: /users/:id\n',
    'b.yaml': 'targets:\n  - url: http://127.0.0.1:9002\nroutes:\n  - path: /users/:uid\n    methods: [DELETE]\n'
  })
  await assert.rejects(loadRouteDirStrict(dir), /^b\.yaml: \/routes\/0: DELETE \(any host\) \/users\/:param is already claimed by a\.yaml$/m)
})
