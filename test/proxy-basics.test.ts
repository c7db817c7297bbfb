import { strict as assert } from 'node:assert'
import { test } from 'node:test'
import { removeDir, routeDir, routeFile, startGateway, startUpstream } from './helpers.js'

test('a request goes through the gateway to the upstream and back', async t => {
  const upstream = await startUpstream()
  t.after(() => upstream.close())
  const dir = await routeDir({ 'users.yaml': routeFile([upstream.url], ['/api/users']) })
  t.after(() => removeDir(dir))
  const gw = await startGateway(dir)
  t.after(() => gw.stop())

  const res = await fetch(`${gw.url}/api/users/42?x=1`)
  assert.equal(res.status, 200)
  const body = await res.json() as { url: string }
  assert.equal(body.url, '/api/users/42?x=1')
  assert.equal(upstream.requests.length, 1)
})
