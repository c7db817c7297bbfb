// ADMIN_PORT: /metrics moves to a port of its own, so the public port need not expose it.
import { strict as assert } from 'node:assert'
import { test } from 'node:test'
import { gateway, routeFile, upstream } from './helpers.js'

test('ADMIN_PORT: /metrics answers there (with the request histogram), the main port answers it 404 and keeps proxying', async t => {
  const origin = await upstream(t)
  const gw = await gateway(t, { 'app.yaml': routeFile([origin.url], ['/api']) }, { ADMIN_PORT: '0' })
  const line = await gw.waitForLog(l => l.msg === 'metrics listening on the admin port')
  const admin = `http://127.0.0.1:${line.adminPort as number}`
  assert.notEqual(admin, gw.url)

  assert.equal((await fetch(`${gw.url}/api`)).status, 200)
  const main = await fetch(`${gw.url}/metrics`)
  assert.equal(main.status, 404)
  assert.equal((await main.json() as { code: string }).code, 'GATEHOUSE_ERR_ROUTE_NOT_FOUND')

  const scrape = await fetch(`${admin}/metrics`)
  assert.equal(scrape.status, 200)
  assert.match(String(scrape.headers.get('content-type')), /^text\/plain/)
  const text = await scrape.text()
  assert.match(text, /^http_request_duration_seconds_count\{method="GET",route="app-0",status_code="200",upstream="app"\} 1$/m)
  assert.match(text, /^upstream_requests_total\{upstream="app",target="[^"]+",outcome="ok"\} 1$/m)
  assert.equal((await fetch(`${admin}/other`)).status, 404)
})
