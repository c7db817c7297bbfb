import { strict as assert } from 'node:assert'
import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { loadRouteDirStrict, readRouteDir, resolveRouteFiles, type AcceptedFile, type Resolution } from '../src/config/route-dir.js'
import { ConfigRoutesError } from '../src/errors.js'
import { removeRoute, routeFile, tempDir, writeRoutes } from './helpers.js'

const T1 = 'http://127.0.0.1:9001'
const T2 = 'http://127.0.0.1:9002'
const T3 = 'http://127.0.0.1:9003'

/** Reads `dir` from disk and resolves it against `previous`, as a reload does. */
async function resolveDir (dir: string, previous?: ReadonlyMap<string, AcceptedFile>): Promise<Resolution> {
  const read = await readRouteDir(dir)
  assert.deepEqual(read.failures, [])
  return resolveRouteFiles(read.files, previous)
}

/** The message loadRouteDirStrict(dir) fails with (fails the test when it loads). */
async function strictFailure (dir: string): Promise<string> {
  try {
    await loadRouteDirStrict(dir)
  } catch (err) {
    assert.ok(err instanceof ConfigRoutesError, `expected ConfigRoutesError, got ${String(err)}`)
    assert.equal(err.code, 'GATEHOUSE_ERR_CONFIG_ROUTES')
    return err.message
  }
  assert.fail(`${dir} loaded`)
}

const failureLines = (r: Resolution): string[] => r.failures.flatMap(f => f.message.split('\n'))

/** What each accepted file serves: file → its route paths and target URLs. */
function serves (r: Resolution): Record<string, { paths: string[], targets: string[] }> {
  return Object.fromEntries([...r.accepted].sort(([a], [b]) => a.localeCompare(b)).map(([file, a]) => [file, {
    paths: a.config.routes.map(route => route.path),
    targets: a.config.targets.map(target => target.url)
  }]))
}

/** A self-signed certificate (openssl, as .ci/run installs it) at `<dir>/ca.pem`; returns its path. */
async function certificate (dir: string): Promise<string> {
  await new Promise<void>((resolve, reject) => {
    execFile('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=Gatehouse Test CA'],
      { cwd: dir, timeout: 20_000 }, (err, _stdout, stderr) => { if (err !== null) reject(new Error(`openssl: ${err.message}\n${stderr}`)); else resolve() })
  })
  return join(dir, 'ca.pem')
}

test('valid folder: every route file loads, keyed by file name', async t => {
  const dir = await tempDir(t, {
    'users.yaml': routeFile([T1], ['/api/users']),
    'orders.yml': routeFile([T2], ['/api/orders']),
    'billing.json': JSON.stringify({ targets: [{ url: T3 }], routes: [{ path: '/api/billing' }] })
  })
  const accepted = await loadRouteDirStrict(dir)
  assert.deepEqual([...accepted.keys()].sort(), ['billing.json', 'orders.yml', 'users.yaml'])
  assert.deepEqual([...accepted.values()].map(a => a.config.name).sort(), ['billing', 'orders', 'users'])
})

test('two files claiming the same path, method and host: refused, naming both files', async t => {
  const dir = await tempDir(t, {
    'a.yaml': routeFile([T1], ['/api/users']),
    'b.yaml': routeFile([T2], ['/api/users'])
  })
  const message = await strictFailure(dir)
  assert.deepEqual(message.split('\n'), [
    'Invalid route files:',
    'b.yaml: /routes/0: GET (any host) /api/users is already claimed by a.yaml'
  ])
})

test('two files claiming the same path for one method and host: refused', async t => {
  const dir = await tempDir(t, {
    'a.yaml': routeFile([T1], ['/api'], '    methods: [GET, POST]\n    hosts: [api.example.com]'),
    'b.yaml': routeFile([T2], ['/api'], '    methods: [POST]\n    hosts: [API.example.com]')
  })
  const message = await strictFailure(dir)
  assert.match(message, /^b\.yaml: \/routes\/0: POST api\.example\.com \/api is already claimed by a\.yaml$/m)
})

test('same path in two files with different hosts or different methods: both load', async t => {
  const dir = await tempDir(t, {
    'a.yaml': routeFile([T1], ['/api'], '    hosts: [a.example.com]'),
    'b.yaml': routeFile([T2], ['/api'], '    hosts: [b.example.com]'),
    'c.yaml': routeFile([T3], ['/shop'], '    methods: [GET, HEAD]'),
    'd.yaml': routeFile(['http://127.0.0.1:9004'], ['/shop'], '    methods: [POST, PUT]')
  })
  const accepted = await loadRouteDirStrict(dir)
  assert.deepEqual([...accepted.keys()].sort(), ['a.yaml', 'b.yaml', 'c.yaml', 'd.yaml'])
})

test('two files with the same upstream name: refused, naming the file that has it', async t => {
  const dir = await tempDir(t, {
    'users.yaml': routeFile([T1], ['/api/users']),
    'users-v2.json': JSON.stringify({ name: 'users', targets: [{ url: T2 }], routes: [{ path: '/api/v2/users' }] })
  })
  const message = await strictFailure(dir)
  assert.match(message, /^users\.yaml: \/name: upstream name "users" is already used by users-v2\.json$/m)
})

test('hidden files and files that are not YAML or JSON are ignored', async t => {
  const broken = 'targets: [\n'
  const dir = await tempDir(t, {
    'users.yaml': routeFile([T1], ['/api/users']),
    '.users.yaml.swp': broken,
    '.hidden.yaml': broken,
    '..data.json': broken,
    'README.md': broken,
    'notes.txt': broken,
    'users.yaml.bak': broken
  })
  const accepted = await loadRouteDirStrict(dir)
  assert.deepEqual([...accepted.keys()], ['users.yaml'])
})

test('every broken file of the folder is listed in one error', async t => {
  const dir = await tempDir(t, {
    'a.yaml': routeFile(['10.0.0.5:9001'], ['/a']),
    'b.json': '{',
    'c.yaml': routeFile([T3], ['/c'])
  })
  const message = await strictFailure(dir)
  assert.match(message, /^a\.yaml: \/targets\/0\/url: must be an http\(s\) URL with no path/m)
  assert.match(message, /^b\.json: not valid JSON/m)
  assert.doesNotMatch(message, /c\.yaml/)
})

test('empty folder: loads with no files', async t => {
  const dir = await tempDir(t, {})
  assert.equal((await loadRouteDirStrict(dir)).size, 0)
})

test('missing folder: refused, naming the folder', async () => {
  const message = await strictFailure('/nonexistent/gatehouse-routes')
  assert.match(message, /^\/nonexistent\/gatehouse-routes: cannot be read: ENOENT/m)
})

test('reload: a changed file that is broken keeps serving its previous version, and is reported', async t => {
  const dir = await tempDir(t, { 'a.yaml': routeFile([T1], ['/a']), 'b.yaml': routeFile([T2], ['/b']) })
  const first = await resolveDir(dir)
  assert.deepEqual(first.failures, [])

  await writeRoutes(dir, { 'b.yaml': routeFile([T2], ['/b/']) })
  const second = await resolveDir(dir, first.accepted)
  assert.deepEqual(serves(second), { 'a.yaml': { paths: ['/a'], targets: [T1] }, 'b.yaml': { paths: ['/b'], targets: [T2] } })
  assert.deepEqual(second.failures.map(f => f.file), ['b.yaml'])
  assert.match(failureLines(second)[0] ?? '', /^b\.yaml: \/routes\/0\/path: must be a path prefix/)
})

test('reload: a changed file cannot take a route an unchanged file serves; it keeps its old version', async t => {
  // z.yaml sorts after a.yaml: an unchanged file must win whatever the order.
  const dir = await tempDir(t, { 'a.yaml': routeFile([T1], ['/orders']), 'z.yaml': routeFile([T2], ['/users']) })
  const first = await resolveDir(dir)
  assert.deepEqual(first.failures, [])

  await writeRoutes(dir, { 'a.yaml': routeFile([T1], ['/orders', '/users']) })
  const second = await resolveDir(dir, first.accepted)
  assert.deepEqual(serves(second), { 'a.yaml': { paths: ['/orders'], targets: [T1] }, 'z.yaml': { paths: ['/users'], targets: [T2] } })
  assert.deepEqual(failureLines(second), ['a.yaml: /routes/1: GET (any host) /users is already claimed by z.yaml'])
})

test('reload: a new file cannot take a route or name already served', async t => {
  const dir = await tempDir(t, { 'z.yaml': routeFile([T1], ['/users']) })
  const first = await resolveDir(dir)

  await writeRoutes(dir, {
    'a.yaml': routeFile([T2], ['/users']),
    'b.json': JSON.stringify({ name: 'z', targets: [{ url: T3 }], routes: [{ path: '/other' }] })
  })
  const second = await resolveDir(dir, first.accepted)
  assert.deepEqual([...second.accepted.keys()], ['z.yaml'])
  assert.deepEqual(second.failures.map(f => f.file).sort(), ['a.yaml', 'b.json'])
})

test('reload: a removed file disappears', async t => {
  const dir = await tempDir(t, { 'a.yaml': routeFile([T1], ['/a']), 'b.yaml': routeFile([T2], ['/b']) })
  const first = await resolveDir(dir)

  await removeRoute(dir, 'b.yaml')
  const second = await resolveDir(dir, first.accepted)
  assert.deepEqual([...second.accepted.keys()], ['a.yaml'])
  assert.deepEqual(second.failures, [])
})

test('reload: a route freed by a removed file can be taken by another file', async t => {
  const dir = await tempDir(t, { 'a.yaml': routeFile([T1], ['/a']), 'b.yaml': routeFile([T2], ['/b']) })
  const first = await resolveDir(dir)

  await removeRoute(dir, 'b.yaml')
  await writeRoutes(dir, { 'a.yaml': routeFile([T1], ['/a', '/b']) })
  const second = await resolveDir(dir, first.accepted)
  assert.deepEqual(second.failures, [])
  assert.deepEqual(second.accepted.get('a.yaml')?.config.routes.map(r => r.path), ['/a', '/b'])
})

test('reload: an unchanged file is not read again, nor its TLS files; a changed one is (README: rotate certificates, then touch the route file)', async t => {
  const pki = await mkdtemp(join(tmpdir(), 'gatehouse-ca-'))
  t.after(() => rm(pki, { recursive: true, force: true }))
  const ca = await certificate(pki)
  const tls = (url: string, path: string, comment = ''): string => `targets:\n  - url: ${url}\n    tls:\n      ca: ${ca}\nroutes:\n  - path: ${path}\n${comment}`
  const dir = await tempDir(t, { 'a.yaml': tls('https://127.0.0.1:9443', '/a'), 'b.yaml': tls('https://127.0.0.1:9444', '/b') })
  const first = await resolveDir(dir)
  assert.deepEqual(first.failures, [])

  // The CA file goes away. a.yaml is unchanged: it is not read again and keeps serving. b.yaml
  // changed (a comment): it is read again, its CA cannot be, and its last good version serves.
  await rm(ca)
  await writeRoutes(dir, { 'b.yaml': tls('https://127.0.0.1:9444', '/b', '# touched\n') })
  const second = await resolveDir(dir, first.accepted)
  assert.deepEqual(serves(second), { 'a.yaml': { paths: ['/a'], targets: ['https://127.0.0.1:9443'] }, 'b.yaml': { paths: ['/b'], targets: ['https://127.0.0.1:9444'] } })
  assert.deepEqual(second.failures.map(f => f.file), ['b.yaml'])
  assert.match(failureLines(second)[0] ?? '', /^b\.yaml: \/targets\/0\/tls\/ca: cannot read .*ENOENT/)

  // A changed file that is valid serves its new version.
  await writeRoutes(dir, { 'a.yaml': routeFile([T1], ['/a', '/a2']) })
  const third = await resolveDir(dir, second.accepted)
  assert.deepEqual(serves(third)['a.yaml'], { paths: ['/a', '/a2'], targets: [T1] })
})

test('reload: a file whose target url cannot be parsed fails alone, named; a valid new file next to it is served', async t => {
  const dir = await tempDir(t, { 'a.yaml': routeFile([T1], ['/a']) })
  const first = await resolveDir(dir)
  await writeRoutes(dir, { 'a.yaml': routeFile(['http://127.0.0.1:99999'], ['/a']), 'c.yaml': routeFile([T2], ['/c']) })
  const second = await resolveDir(dir, first.accepted)
  assert.deepEqual(serves(second), { 'a.yaml': { paths: ['/a'], targets: [T1] }, 'c.yaml': { paths: ['/c'], targets: [T2] } })
  assert.deepEqual(second.failures.map(f => f.file), ['a.yaml'])
  assert.match(failureLines(second)[0] ?? '', /^a\.yaml: \/targets\/0\/url: http:\/\/127\.0\.0\.1:99999 is not a valid URL: the port 99999 is out of range/)
})
