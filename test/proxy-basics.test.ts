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
