import { strict as assert } from 'node:assert'
import { test } from 'node:test'
import { routeFile, runCli, tempDir } from './helpers.js'

const T1 = 'http://127.0.0.1:9001'
const T2 = 'http://127.0.0.1:9002'

test('check on a valid folder: exit 0, counts of files and routes', async t => {
  const dir = await tempDir(t, {
    'users.yaml': routeFile([T1], ['/api/users', '/api/accounts']),
    'orders.json': JSON.stringify({ targets: [{ url: T2 }], routes: [{ path: '/api/orders' }] })
  })
  const { code, stdout, stderr } = await runCli(['check', dir])
  assert.equal(code, 0, stderr)
  assert.equal(stdout, `${dir}: ok: 2 route file(s), 3 route(s)\n`)
  assert.equal(stderr, '')
})

test('check on a folder with a broken file: exit 1, stderr names file, field and expectation', async t => {
  const dir = await tempDir(t, {
    'users.yaml': routeFile([T1], ['/api/users']),
    'orders.yaml': routeFile(['10.0.0.5:9001'], ['/api/orders'])
  })
  const { code, stdout, stderr } = await runCli(['check', dir])
  assert.equal(code, 1)
  assert.equal(stdout, '')
  assert.match(stderr, /^orders\.yaml: \/targets\/0\/url: must be an http\(s\) URL with no path, e.g\. http:\/\/10\.0\.0\.5:9001$/m)
  assert.doesNotMatch(stderr, /users\.yaml/)
})

test('check validates auth blocks: a route with auth but no key source, or a secret whose variable is unset, fails', async t => {
  const dir = await tempDir(t, {
    'orders.yaml': `targets:\n  - url: ${T1}\nroutes:\n  - path: /orders\n    auth:\n      jwt: { issuer: https://issuer.test, audience: orders }\n`,
    'billing.yaml': `targets:\n  - url: ${T1}\nroutes:\n  - path: /billing\n    auth:\n      jwt: { secret: { env: GATEHOUSE_TEST_UNSET_SECRET }, issuer: https://issuer.test, audience: billing }\n`
  })
  const { code, stderr } = await runCli(['check', dir])
  assert.equal(code, 1)
  assert.match(stderr, /^orders\.yaml: \/routes\/0\/auth\/jwt: needs exactly one key source: jwksUrl, publicKey or secret$/m)
  assert.match(stderr, /^billing\.yaml: \/routes\/0\/auth\/jwt\/secret\/env: environment variable GATEHOUSE_TEST_UNSET_SECRET is not set$/m)
})

test('check with two files claiming one route: exit 1, both files named', async t => {
  const dir = await tempDir(t, {
    'a.yaml': routeFile([T1], ['/api/users']),
    'b.yaml': routeFile([T2], ['/api/users'])
  })
  const { code, stderr } = await runCli(['check', dir])
  assert.equal(code, 1)
  assert.match(stderr, /^b\.yaml: .*\/api\/users is already claimed by a\.yaml$/m)
})

test('check on a missing folder: exit 1, says the folder cannot be read', async () => {
  const { code, stdout, stderr } = await runCli(['check', '/nonexistent/gatehouse-routes'])
  assert.equal(code, 1)
  assert.equal(stdout, '')
  assert.match(stderr, /\/nonexistent\/gatehouse-routes: cannot be read: ENOENT/)
})

test('check without a folder argument: checks $ROUTES_DIR', async t => {
  const good = await tempDir(t, { 'users.yaml': routeFile([T1], ['/api/users']) })
  const ok = await runCli(['check'], { ROUTES_DIR: good })
  assert.equal(ok.code, 0, ok.stderr)
  assert.equal(ok.stdout, `${good}: ok: 1 route file(s), 1 route(s)\n`)

  const bad = await tempDir(t, { 'users.yaml': routeFile([T1], ['/api/users/']) })
  const failed = await runCli(['check'], { ROUTES_DIR: bad })
  assert.equal(failed.code, 1)
  assert.match(failed.stderr, /^users\.yaml: \/routes\/0\/path: must be a path prefix/m)
})

test('unknown command: exit 2 with the usage on stderr', async () => {
  const { code, stdout, stderr } = await runCli(['frobnicate'])
  assert.equal(code, 2)
  assert.equal(stdout, '')
  assert.match(stderr, /unknown command "frobnicate"/)
  assert.match(stderr, /Usage:[\s\S]*gatehouse start[\s\S]*gatehouse check \[dir\]/)
})

test('--help: exit 0 with the usage on stdout', async () => {
  const { code, stdout, stderr } = await runCli(['--help'])
  assert.equal(code, 0)
  assert.equal(stderr, '')
  assert.match(stdout, /Usage:[\s\S]*gatehouse start[\s\S]*gatehouse check \[dir\]/)
})

test('start with a broken route file: exit 1, stderr names file, field and expectation', async t => {
  const dir = await tempDir(t, { 'users.yaml': routeFile([T1], ['/api/users'], '    methods: [GET]\n    bodyLimit: lots') })
  const { code, stdout, stderr } = await runCli(['start'], { PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', ROUTES_DIR: dir })
  assert.equal(code, 1, code === null ? 'killed after 10 s: the gateway started' : stderr)
  assert.match(stderr, /^users\.yaml: \/routes\/0\/bodyLimit: must be a size/m)
  assert.doesNotMatch(stdout, /Server listening/)
})

test('start with PORT=abc: exit 1, stderr names PORT', async t => {
  const dir = await tempDir(t, { 'users.yaml': routeFile([T1], ['/api/users']) })
  const { code, stdout, stderr } = await runCli(['start'], { HOST: '127.0.0.1', ROUTES_DIR: dir, PORT: 'abc' })
  assert.equal(code, 1, code === null ? 'killed after 10 s: the gateway started' : stderr)
  assert.match(stderr, /^PORT: /m)
  assert.doesNotMatch(stdout, /Server listening/)
})

test('start with a missing ROUTES_DIR: exit 1, stderr names the folder', async () => {
  const { code, stdout, stderr } = await runCli(['start'], { PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', ROUTES_DIR: '/nonexistent/gatehouse-routes' })
  assert.equal(code, 1, code === null ? 'killed after 10 s: the gateway started' : stderr)
  assert.match(stderr, /\/nonexistent\/gatehouse-routes: cannot be read/)
  assert.doesNotMatch(stdout, /Server listening/)
})

test('check on a target url with a port out of range: exit 1, one line naming file and field', async t => {
  const dir = await tempDir(t, { 'orders.yaml': routeFile(['http://127.0.0.1:99999'], ['/api/orders']) })
  const { code, stderr } = await runCli(['check', dir])
  assert.equal(code, 1)
  assert.equal(stderr, 'Invalid route files:\norders.yaml: /targets/0/url: http://127.0.0.1:99999 is not a valid URL: the port 99999 is out of range (1-65535); e.g. http://10.0.0.5:9001\n')
})

test('check warns about durations under 100 written without a unit (milliseconds), and still passes', async t => {
  const dir = await tempDir(t, {
    'orders.yaml': `targets:\n  - url: ${T1}\nroutes:\n  - path: /api/orders\n    rateLimit: { max: 5, window: 60 }\ntimeouts:\n  request: 30\n  idle: 30000\n  connect: 2s\n`
  })
  const { code, stdout, stderr } = await runCli(['check', dir])
  assert.equal(code, 0, stderr)
  assert.match(stdout, /ok: 1 route file\(s\), 1 route\(s\)/)
  assert.deepEqual(stderr.trim().split('\n').sort(), [
    'warning: orders.yaml: /routes/0/rateLimit/window: 60 is 60 ms (a number without a unit is milliseconds); write 60ms to keep it, or 60s if seconds were meant',
    'warning: orders.yaml: /timeouts/request: 30 is 30 ms (a number without a unit is milliseconds); write 30ms to keep it, or 30s if seconds were meant'
  ])
})
