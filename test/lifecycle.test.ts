import { strict as assert } from 'node:assert'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { appendFile, mkdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import http from 'node:http'
import net from 'node:net'
import { test, type TestContext } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { childEnv, CLI, closedPort, gateway, metric, within, removeDir, removeRoute, routeDir, routeFile, send, startGateway, until, upstream, writeRoutes, type GatewayProcess, type Owner } from './helpers.js'

const reloaded = (version: number) => (l: Record<string, unknown>) => l.msg === 'route table reloaded' && l.version === version

/** The status of a GET of `path` on a new connection. */
async function status (gw: GatewayProcess, path: string): Promise<number> {
  return (await send(gw, path)).status
}

/** An upstream whose requests wait until `release()` (released, then closed, when `t` ends). */
async function heldUpstream (t: Owner) {
  const waiting: Array<() => void> = []
  const held = await upstream(t, (_req, res) => {
    waiting.push(() => res.end('released'))
  })
  const release = (): void => { for (const done of waiting.splice(0)) done() }
  t.after(release)
  return { upstream: held, held: () => waiting.length, release }
}

test('SIGUSR1 and SIGHUP: a new route file serves after the signal, without a restart', async t => {
  const origin = await upstream(t)
  const gw = await gateway(t, { 'a.yaml': routeFile([origin.url], ['/a']) }, { WATCH_ROUTES: 'false' })
  const dir = gw.routesDir

  assert.equal(await status(gw, '/b'), 404)
  await writeRoutes(dir, { 'b.yaml': routeFile([origin.url], ['/b']) })
  assert.equal(await status(gw, '/b'), 404, 'no watcher: nothing changes before the signal')
  gw.signal('SIGUSR1')
  await gw.waitForLog(reloaded(2))
  assert.equal(await status(gw, '/b'), 200)
  assert.equal(await status(gw, '/a'), 200)
  assert.equal(await metric(gw, 'config_reloads_total', { result: 'success' }), 1)
  assert.equal(gw.proc.exitCode, null, 'SIGUSR1 must not stop the process')

  await writeRoutes(dir, { 'c.yaml': routeFile([origin.url], ['/c']) })
  gw.signal('SIGHUP')
  await gw.waitForLog(reloaded(3))
  assert.equal(await status(gw, '/c'), 200)
  assert.equal(gw.proc.exitCode, null, 'SIGHUP must not stop the process')
})

// SIGUSR1 is Node's "open the inspector" signal until JavaScript listens for it. Node 22.14+ has
// --disable-sigusr1 (the Dockerfile uses it): then a SIGUSR1 that arrives before the entry point
// runs ends the process instead of opening a debugger port. Node 20 has no such flag: there the
// first ~30 ms of the process are a window no JavaScript can close.
const DISABLE_SIGUSR1 = process.allowedNodeEnvironmentFlags.has('--disable-sigusr1')

function spawnGateway (t: TestContext, dir: string): { proc: ChildProcess, out: { stdout: string, stderr: string } } {
  const flags = DISABLE_SIGUSR1 ? ['--disable-sigusr1'] : []
  const proc = spawn(process.execPath, [...flags, CLI, 'start'], { cwd: dir, env: childEnv({ PORT: '0', HOST: '127.0.0.1', ROUTES_DIR: dir }), stdio: ['ignore', 'pipe', 'pipe'] })
  t.after(() => { proc.kill('SIGKILL') })
  const out = { stdout: '', stderr: '' }
  proc.stdout?.on('data', (c: Buffer) => { out.stdout += c.toString() })
  proc.stderr?.on('data', (c: Buffer) => { out.stderr += c.toString() })
  return { proc, out }
}

async function listeningOrGone (proc: ChildProcess, out: { stdout: string }): Promise<void> {
  for (let i = 0; i < 100 && !out.stdout.includes('Server listening') && proc.exitCode === null && proc.signalCode === null; i++) {
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

test('SIGUSR1 at the entry point\'s first statement, while the gateway is still loading: no inspector opens, the gateway starts', async t => {
  const dir = await routeDir({})
  t.after(() => removeDir(dir))
  const { proc, out } = spawnGateway(t, dir)
  // The entry point catches SIGHUP right after SIGUSR1: poll the caught-signal mask, then signal.
  const caught = async (): Promise<boolean> => {
    const status = await readFile(`/proc/${proc.pid as number}/status`, 'utf8').catch(() => '')
    const mask = /^SigCgt:\s*([0-9a-f]+)$/m.exec(status)?.[1]
    return mask !== undefined && (BigInt(`0x${mask}`) & 1n) === 1n
  }
  const deadline = Date.now() + 5000
  while (!await caught()) {
    assert.ok(Date.now() < deadline, 'SIGHUP never caught')
    await new Promise(resolve => setImmediate(resolve))
  }
  proc.kill('SIGUSR1')
  assert.doesNotMatch(out.stdout, /Server listening/, 'the signal went out while the gateway was loading')
  await listeningOrGone(proc, out)
  assert.equal(proc.signalCode, null, 'SIGUSR1 killed the process: the listener came too late')
  assert.match(out.stdout, /Server listening/)
  assert.doesNotMatch(out.stderr, /Debugger listening/)
})

test('SIGUSR1 right after spawn, before any JavaScript runs: no inspector opens (Node 22.14+: --disable-sigusr1)', { skip: !DISABLE_SIGUSR1 && `Node ${process.version} has no --disable-sigusr1 (Node 22.14+); .ci/run runs this case on Node 24` }, async t => {
  const dir = await routeDir({})
  t.after(() => removeDir(dir))
  const { proc, out } = spawnGateway(t, dir)
  await once(proc, 'spawn')
  proc.kill('SIGUSR1')
  await listeningOrGone(proc, out)
  assert.doesNotMatch(out.stderr, /Debugger listening/)
  // Either the listener was already there (the gateway runs) or the process ended on the signal.
  assert.ok(out.stdout.includes('Server listening') || proc.signalCode === 'SIGUSR1', `exit ${proc.exitCode}, signal ${proc.signalCode}`)
})

test('file changes in ROUTES_DIR reload by themselves (debounced)', async t => {
  const origin = await upstream(t)
  const gw = await gateway(t, { 'a.yaml': routeFile([origin.url], ['/a']) }, { RELOAD_DEBOUNCE: '50ms' })
  const dir = gw.routesDir

  await writeRoutes(dir, { 'b.yaml': routeFile([origin.url], ['/b']) })
  await gw.waitForLog(l => l.msg === 'route table reloaded' && (l.applied as string[]).includes('b.yaml'))
  assert.equal(await status(gw, '/b'), 200)
})

test('a Kubernetes ConfigMap update (files are symlinks through ..data, swapped by one rename) reloads by itself', async t => {
  const origin = await upstream(t)
  // The kubelet's layout: <dir>/app.yaml -> ..data/app.yaml, ..data -> ..<timestamp>/.
  const dir = await routeDir({})
  t.after(() => removeDir(dir))
  const version = async (name: string, paths: string[]): Promise<void> => {
    await mkdir(join(dir, name))
    await writeFile(join(dir, name, 'app.yaml'), routeFile([origin.url], paths))
  }
  await version('..2026_11_29_a', ['/a'])
  await symlink('..2026_11_29_a', join(dir, '..data'))
  await symlink('..data/app.yaml', join(dir, 'app.yaml'))
  const gw = await startGateway(dir, { RELOAD_DEBOUNCE: '50ms' })
  t.after(() => gw.stop())
  assert.equal(await status(gw, '/a'), 200)

  // The update: a new timestamped folder, a new ..data link made aside and renamed over the old.
  await version('..2026_11_29_b', ['/b'])
  await symlink('..2026_11_29_b', join(dir, '..data_tmp'))
  await rename(join(dir, '..data_tmp'), join(dir, '..data'))
  await rm(join(dir, '..2026_11_29_a'), { recursive: true })
  // The steps above are separate changes: a reload may run between them (then another follows).
  await until('the swapped-in version serves /b', async () => await status(gw, '/b') === 200, 5000, 50)
  assert.equal(await status(gw, '/a'), 404)
})

test('files in the routes folder that are not route files (a log written there, an editor\'s swap file) do not reload the table', async t => {
  const origin = await upstream(t)
  const gw = await gateway(t, { 'a.yaml': routeFile([origin.url], ['/a']) }, { RELOAD_DEBOUNCE: '50ms' })
  const dir = gw.routesDir
  for (let i = 0; i < 10; i++) {
    await appendFile(join(dir, 'gateway.log'), `line ${i}\n`)
    await writeFile(join(dir, '.a.yaml.swp'), `swap ${i}`)
    await sleep(60)
  }
  await sleep(300)
  assert.equal(await metric(gw, 'config_reloads_total', { result: 'success' }) ?? 0, 0, 'no reload for files that hold no routes')
  // The watcher still reacts to a route file.
  await writeRoutes(dir, { 'b.yaml': routeFile([origin.url], ['/b']) })
  await until('the new file serves /b', async () => await status(gw, '/b') === 200, 5000, 50)
})

test('a broken file on reload keeps its last good version serving; the failure is logged and counted', async t => {
  const origin = await upstream(t)
  const gw = await gateway(t, { 'users.yaml': routeFile([origin.url], ['/users']) }, { WATCH_ROUTES: 'false' })
  const dir = gw.routesDir

  await writeRoutes(dir, {
    'users.yaml': 'targets:\n  - url: http://127.0.0.1:1\n    maxConn: 5\nroutes:\n  - path: /users\n',
    'orders.yaml': routeFile([origin.url], ['/orders'])
  })
  gw.signal('SIGUSR1')
  const rejected = await gw.waitForLog(l => l.msg === 'route file rejected, its last good version keeps serving')
  assert.equal(rejected.file, 'users.yaml')
  assert.deepEqual(rejected.problems, ['/targets/0/maxConn: unknown key (allowed: url, discover, maxConnections, weight, protocol, group, tls)'])
  await gw.waitForLog(reloaded(2))
  assert.equal(await status(gw, '/users'), 200, 'the old users.yaml still serves')
  assert.equal(await status(gw, '/orders'), 200, 'the valid file beside it applied')
  assert.equal(origin.requests.length, 2)
  assert.equal(await metric(gw, 'config_reloads_total', { result: 'failure' }), 1)
  assert.equal(await metric(gw, 'config_reloads_total', { result: 'success' }), 0)
})

test('a new file that is broken on reload stays absent; a deleted file stops serving', async t => {
  const origin = await upstream(t)
  const gw = await gateway(t, { 'a.yaml': routeFile([origin.url], ['/a']), 'b.yaml': routeFile([origin.url], ['/b']) }, { WATCH_ROUTES: 'false' })
  const dir = gw.routesDir

  await removeRoute(dir, 'b.yaml')
  await writeRoutes(dir, { 'c.yaml': 'targets: []\nroutes:\n  - path: /c\n' })
  gw.signal('SIGUSR1')
  const rejected = await gw.waitForLog(l => l.file === 'c.yaml')
  assert.equal(rejected.msg, 'route file rejected, it does not serve')
  await gw.waitForLog(reloaded(2))
  assert.equal(await status(gw, '/a'), 200)
  assert.equal(await status(gw, '/b'), 404)
  assert.equal(await status(gw, '/c'), 404)
})

test('reloads under continuous load: zero failed requests', async t => {
  const one = await upstream(t)
  const two = await upstream(t)
  const gw = await gateway(t, { 'svc.yaml': routeFile([one.url], ['/svc']) }, { WATCH_ROUTES: 'false' })
  const dir = gw.routesDir

  const agent = new http.Agent({ keepAlive: true, maxSockets: 8 })
  t.after(() => agent.destroy())
  const statuses = new Map<number | string, number>()
  const load = { running: true }
  const client = async () => {
    while (load.running) {
      const code = await send(gw, '/svc/item', { agent }).then(r => r.status, (err: NodeJS.ErrnoException) => err.code ?? 'error')
      statuses.set(code, (statuses.get(code) ?? 0) + 1)
    }
  }
  const clients = Array.from({ length: 8 }, client)

  try {
    // Ten reloads that change targets, add and remove routes, while traffic flows.
    for (let i = 0; i < 10; i++) {
      const targets = i % 2 === 0 ? [one.url, two.url] : [two.url]
      await writeRoutes(dir, { 'svc.yaml': routeFile(targets, ['/svc', `/extra${i}`]) })
      gw.signal('SIGUSR1')
      while (await metric(gw, 'config_route_table_version') !== i + 2) await sleep(10)
      await sleep(50)
    }
  } finally {
    load.running = false
    await Promise.all(clients)
  }

  const total = [...statuses.values()].reduce((a, b) => a + b, 0)
  assert.ok(total >= 100, `enough traffic to mean something: ${total}`)
  assert.deepEqual([...statuses.keys()], [200], `every request succeeded: ${JSON.stringify([...statuses])}`)
  assert.ok(one.requests.length > 0 && two.requests.length > 0, 'both targets served during the reloads')
})

test('target state survives a reload: an in-flight request on a kept target is still counted, one on a removed target completes', async t => {
  const kept = await heldUpstream(t)
  const removed = await heldUpstream(t)
  const gw = await gateway(t, {
    'kept.yaml': routeFile([kept.upstream.url], ['/kept']),
    'gone.yaml': routeFile([removed.upstream.url], ['/gone'])
  }, { WATCH_ROUTES: 'false' })
  const dir = gw.routesDir

  const keptResponse = send(gw, '/kept')
  const goneResponse = send(gw, '/gone')
  while (kept.held() + removed.held() < 2) await sleep(10)

  await writeRoutes(dir, { 'kept.yaml': routeFile([kept.upstream.url], ['/kept', '/kept-too']) })
  await removeRoute(dir, 'gone.yaml')
  gw.signal('SIGUSR1')
  await gw.waitForLog(reloaded(2))

  const keptTarget = { upstream: 'kept', target: kept.upstream.url }
  assert.equal(await metric(gw, 'upstream_active_connections', keptTarget), 1, 'the kept target still counts its request')
  assert.equal(await metric(gw, 'upstream_active_connections', { upstream: 'gone' }), undefined)
  assert.equal(await status(gw, '/gone'), 404)

  kept.release()
  removed.release()
  const [a, b] = await Promise.all([keptResponse, goneResponse])
  assert.equal(a.status, 200)
  assert.equal(a.body, 'released')
  assert.equal(b.status, 200, 'the removed target was drained, not cut off')
  assert.equal(b.body, 'released')
  assert.equal(await metric(gw, 'upstream_active_connections', keptTarget), 0)
})

/** GET on a new connection: the status, or the error code when the connection fails. */
async function fresh (gw: GatewayProcess, path: string): Promise<number | string> {
  return await send(gw, path).then(r => r.status, (err: NodeJS.ErrnoException) => err.code ?? 'error')
}

test('SIGTERM: /ready turns 503 for SHUTDOWN_DELAY while proxied traffic is still served, then new connections are refused, the in-flight request completes, exit 0', async t => {
  const held = await heldUpstream(t)
  const echo = await upstream(t)
  const gw = await gateway(t, { 'svc.yaml': routeFile([held.upstream.url], ['/svc']), 'echo.yaml': routeFile([echo.url], ['/echo']) }, { WATCH_ROUTES: 'false', SHUTDOWN_DELAY: '1s' })

  assert.equal(await status(gw, '/ready'), 200)
  const inFlight = send(gw, '/svc')
  while (held.held() < 1) await sleep(10)
  gw.signal('SIGTERM')
  await gw.waitForLog(l => l.msg === 'draining: not ready, finishing requests in flight')

  const ready = await send(gw, '/ready')
  assert.equal(ready.status, 503, 'not ready while draining')
  assert.equal(ready.json.code, 'GATEHOUSE_ERR_NOT_READY')
  assert.equal(await status(gw, '/health'), 200, 'still alive during the delay')

  // The delay is for the load balancer to notice: requests it still sends, on new connections,
  // are proxied as usual until the listener closes; after that, connections are refused.
  const served: Array<number | string> = []
  let ended: number | string | undefined
  const deadline = Date.now() + 5000
  while (ended === undefined && Date.now() < deadline) {
    const answer = await fresh(gw, `/echo/${served.length}`)
    if (typeof answer === 'number') served.push(answer)
    else ended = answer
    await sleep(50)
  }
  // (A connection accepted as the listener closes may be reset instead: it was idle.)
  assert.ok(ended === 'ECONNREFUSED' || ended === 'ECONNRESET', `the proxied requests ended with ${String(ended)}, not a refused connection`)
  assert.ok(served.length >= 5, `${served.length} proxied requests served during the 1 s delay`)
  assert.deepEqual([...new Set(served)], [200], 'every proxied request during the delay got 200')
  assert.equal(echo.requests.length, served.length, 'each reached the upstream')
  assert.equal(await fresh(gw, '/ready'), 'ECONNREFUSED')

  assert.equal(gw.proc.exitCode, null, 'still running while a request is in flight')
  held.release()
  const res = await inFlight
  assert.equal(res.status, 200)
  assert.equal(res.body, 'released')
  assert.equal(await gw.exit, 0)
})

test('SIGTERM: a request that arrives on an open connection while the listener closes is proxied with Connection: close, not refused', async t => {
  const held = await heldUpstream(t)
  const echo = await upstream(t)
  const gw = await gateway(t, { 'svc.yaml': routeFile([held.upstream.url], ['/svc']), 'echo.yaml': routeFile([echo.url], ['/echo']) }, { WATCH_ROUTES: 'false' })

  // The connection is busy with a held request, so the drain does not close it as idle.
  const socket = net.connect(gw.port, '127.0.0.1')
  t.after(() => socket.destroy())
  let text = ''
  socket.on('data', chunk => { text += chunk.toString('latin1') })
  const closed = once(socket, 'close')
  socket.write('GET /svc HTTP/1.1\r\nHost: gw\r\n\r\n')
  await until('the first request is held upstream', () => held.held() === 1)
  gw.signal('SIGTERM')
  await gw.waitForLog(l => l.msg === 'draining: not ready, finishing requests in flight')
  await until('the listener is closed', async () => await fresh(gw, '/ready') === 'ECONNREFUSED')

  socket.write('GET /echo/late HTTP/1.1\r\nHost: gw\r\n\r\n')
  await sleep(100)
  held.release()
  await within(5000, 'the gateway closes the connection', closed)
  assert.deepEqual(echo.requests.map(r => r.url), ['/echo/late'], 'the late request reached its upstream')
  const heads = [...text.matchAll(/HTTP\/1\.1 (\d{3})[^]*?\r\n\r\n/g)].map(m => m[0])
  assert.deepEqual(heads.map(h => h.slice(9, 12)), ['200', '200'], text)
  assert.match(heads[1] ?? '', /\r\nconnection: close\r\n/i)
  assert.equal(await gw.exit, 0)
})

test('SIGTERM with a request that outlasts SHUTDOWN_TIMEOUT: connections are closed and the exit code is 1', async t => {
  const held = await heldUpstream(t)
  const gw = await gateway(t, { 'svc.yaml': routeFile([held.upstream.url], ['/svc']) }, { WATCH_ROUTES: 'false', SHUTDOWN_TIMEOUT: '300ms' })

  const inFlight = send(gw, '/svc').then(r => r.status, () => 'closed')
  while (held.held() < 1) await sleep(10)
  gw.signal('SIGTERM')
  await gw.waitForLog(l => l.msg === 'shutdown timeout: closing the connections still open')
  assert.equal(await gw.exit, 1)
  assert.equal(await inFlight, 'closed')
})

test('breaker state survives a reload for an unchanged target', async t => {
  const live = await upstream(t)
  const dead = `http://127.0.0.1:${await closedPort()}`
  const breaker = 'circuitBreaker:\n  consecutiveFailures: 2\n  openFor: 1m\n'
  const gw = await gateway(t, { 'svc.yaml': routeFile([live.url, dead], ['/svc'], breaker) }, { WATCH_ROUTES: 'false' })
  const dir = gw.routesDir

  const state = { upstream: 'svc', target: dead }
  for (let i = 0; i < 20 && await metric(gw, 'circuit_breaker_state', state) !== 1; i++) assert.equal(await status(gw, '/svc'), 200)
  assert.equal(await metric(gw, 'circuit_breaker_state', state), 1, 'the dead target opened')

  await writeRoutes(dir, { 'svc.yaml': routeFile([live.url, dead], ['/svc', '/more'], breaker) })
  gw.signal('SIGUSR1')
  await gw.waitForLog(reloaded(2))
  assert.equal(await metric(gw, 'circuit_breaker_state', state), 1, 'still open after the reload')
  const before = live.requests.length
  for (let i = 0; i < 10; i++) assert.equal(await status(gw, '/more'), 200)
  assert.equal(live.requests.length - before, 10, 'the open target got nothing')
  assert.equal(await metric(gw, 'upstream_requests_total', { upstream: 'svc', target: dead, outcome: 'connect-failure' }), 2)
})
