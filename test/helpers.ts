// Real things for tests: upstream HTTP servers on ephemeral ports, route folders on disk, and the
// gateway as a real child process (or in-process for inject()).
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm, writeFile, unlink } from 'node:fs/promises'
import http, { type IncomingMessage, type ServerResponse } from 'node:http'
import net, { type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { createInterface } from 'node:readline'
import type { FastifyInstance } from 'fastify'
import { buildApp } from '../src/app.js'
import { EnvSchema, loadEnv } from '../src/config/env.js'
import { freePort } from '../scripts/loopback.js'

export const ROOT = resolve(import.meta.dirname, '..', '..')
export const CLI = join(ROOT, 'dist', 'src', 'cli.js')

export interface SeenRequest {
  method: string
  url: string
  headers: http.IncomingHttpHeaders
  body: string
}

export interface Upstream {
  url: string
  port: number
  /** Every request this upstream received, in order. */
  requests: SeenRequest[]
  /** Requests being handled right now, and the most seen at once. */
  inFlight: number
  maxInFlight: number
  close: () => Promise<void>
}

export type UpstreamHandler = (req: IncomingMessage, res: ServerResponse, body: string, seen: SeenRequest) => void | Promise<void>

/** Answers 200 JSON echoing what it received, plus the port that answered. */
export const echo: UpstreamHandler = (req, res, body) => {
  const port = (req.socket.address() as AddressInfo).port
  res.setHeader('content-type', 'application/json')
  res.end(JSON.stringify({ port, method: req.method, url: req.url, headers: req.headers, body }))
}

/** A real HTTP server on 127.0.0.1:0 that records what it sees. */
export async function startUpstream (handler: UpstreamHandler = echo): Promise<Upstream> {
  const upstream: Upstream = { url: '', port: 0, requests: [], inFlight: 0, maxInFlight: 0, close: async () => {} }
  const server = http.createServer((req, res) => {
    upstream.inFlight++
    upstream.maxInFlight = Math.max(upstream.maxInFlight, upstream.inFlight)
    res.once('close', () => { upstream.inFlight-- })
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString()
      const seen = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body }
      upstream.requests.push(seen)
      Promise.resolve(handler(req, res, body, seen)).catch(err => { res.destroy(err as Error) })
    })
  })
  server.keepAliveTimeout = 60_000
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  upstream.port = (server.address() as AddressInfo).port
  upstream.url = `http://127.0.0.1:${upstream.port}`
  upstream.close = async () => {
    server.closeAllConnections()
    await new Promise<void>(resolve => server.close(() => resolve()))
  }
  return upstream
}

/** A fresh route folder holding `files` (name → YAML/JSON text). */
export async function routeDir (files: Record<string, string> = {}): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'gatehouse-routes-'))
  await writeRoutes(dir, files)
  return dir
}

/** A route folder removed when test `t` ends. */
export async function tempDir (t: { after: (fn: () => Promise<void>) => void }, files: Record<string, string>): Promise<string> {
  const dir = await routeDir(files)
  t.after(() => removeDir(dir))
  return dir
}

export async function writeRoutes (dir: string, files: Record<string, string>): Promise<void> {
  for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), text)
}

export async function removeRoute (dir: string, name: string): Promise<void> {
  await unlink(join(dir, name))
}

/** A YAML route file with these targets and one route per path. */
export function routeFile (targets: string[], paths: string[], extra = ''): string {
  return [
    'targets:',
    ...targets.map(url => `  - url: ${url}`),
    'routes:',
    ...paths.map(path => `  - path: ${path}`),
    extra
  ].join('\n') + '\n'
}

/** The gateway's own settings (EnvSchema) and the OpenTelemetry SDK's: never inherited by a child. */
const GATEWAY_SETTINGS = new Set(Object.keys(EnvSchema.properties))

/**
 * The environment of a gateway or CLI process a test starts: the caller's, without any variable
 * the gateway reads (REDIS_URL, OTEL_*, limits...), then exactly what the test passes. So a
 * REDIS_URL exported in CI never reaches a test's gateway: a test that wants Redis says which.
 */
export function childEnv (env: Record<string, string> = {}): NodeJS.ProcessEnv {
  const inherited = Object.entries(process.env).filter(([name]) => !GATEWAY_SETTINGS.has(name) && !name.startsWith('OTEL_'))
  return { ...Object.fromEntries(inherited), ...env }
}

export interface GatewayProcess {
  url: string
  port: number
  proc: ChildProcess
  routesDir: string
  /** Every JSON log line so far. */
  logs: Array<Record<string, unknown>>
  /** Resolves with the first log line (past or future) that matches. */
  waitForLog: (match: (line: Record<string, unknown>) => boolean, timeoutMs?: number) => Promise<Record<string, unknown>>
  /** Sends a signal; `exit` resolves with the exit code. */
  signal: (name: NodeJS.Signals) => void
  exit: Promise<number | null>
  stop: () => Promise<void>
}

/** Runs `gatehouse start` as a child process on an ephemeral port and waits until it listens. */
export async function startGateway (routesDir: string, env: Record<string, string> = {}): Promise<GatewayProcess> {
  const proc = spawn(process.execPath, [CLI, 'start'], {
    cwd: routesDir,
    env: childEnv({ PORT: '0', HOST: '127.0.0.1', ROUTES_DIR: routesDir, LOG_LEVEL: 'info', ...env }),
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const logs: Array<Record<string, unknown>> = []
  const waiters: Array<{ match: (line: Record<string, unknown>) => boolean, resolve: (line: Record<string, unknown>) => void }> = []
  let stderr = ''
  proc.stderr?.on('data', (c: Buffer) => { stderr += c.toString() })
  createInterface({ input: proc.stdout! }).on('line', text => {
    let line: Record<string, unknown>
    try { line = JSON.parse(text) } catch { return }
    logs.push(line)
    for (const w of [...waiters]) {
      if (w.match(line)) {
        waiters.splice(waiters.indexOf(w), 1)
        w.resolve(line)
      }
    }
  })
  const exit = new Promise<number | null>(resolve => proc.once('exit', code => resolve(code)))
  const waitForLog = async (match: (line: Record<string, unknown>) => boolean, timeoutMs = 10_000) => {
    const past = logs.find(match)
    if (past !== undefined) return past
    return await new Promise<Record<string, unknown>>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no matching log line in ${timeoutMs} ms; stderr: ${stderr}`)), timeoutMs)
      waiters.push({ match, resolve: line => { clearTimeout(timer); resolve(line) } })
      exit.then(code => { clearTimeout(timer); reject(new Error(`gateway exited with ${code}; stderr: ${stderr}`)) }, () => {})
    })
  }
  // The listening line is logged at info: a LOG_LEVEL above it must not hide it from us.
  let listening
  try {
    listening = await waitForLog(l => typeof l.msg === 'string' && l.msg.startsWith('Server listening at http://127.0.0.1:'))
  } catch (err) {
    proc.kill('SIGKILL')
    throw err
  }
  const port = Number(/:(\d+)$/.exec(listening.msg as string)?.[1])
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    proc,
    routesDir,
    logs,
    waitForLog,
    signal: name => { proc.kill(name) },
    exit,
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL')
      await exit
    }
  }
}

/** The gateway in this process, for inject() tests of behaviour inside it. */
export async function buildTestApp (routesDir: string, env: Record<string, string> = {}): Promise<FastifyInstance> {
  const gatewayEnv = loadEnv({ ROUTES_DIR: routesDir, WATCH_ROUTES: 'false', ...env }, '/nonexistent/.env')
  const app = await buildApp(gatewayEnv, { logger: false })
  await app.ready()
  return app
}

/**
 * Runs the CLI to completion in an empty working directory (no `.env` of the checkout is read),
 * with childEnv(env); killed after 10 s so a `start` that wrongly succeeds fails the test.
 */
export async function runCli (args: string[], env: Record<string, string> = {}): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const cwd = await mkdtemp(join(tmpdir(), 'gatehouse-cli-'))
  try {
    const proc = spawn(process.execPath, [CLI, ...args], {
      cwd,
      env: childEnv(env),
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 10_000,
      killSignal: 'SIGKILL'
    })
    let stdout = ''
    let stderr = ''
    proc.stdout.on('data', (c: Buffer) => { stdout += c.toString() })
    proc.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
    const [code] = await once(proc, 'exit') as [number | null]
    return { code, stdout, stderr }
  } finally {
    await removeDir(cwd)
  }
}

/** A port nothing listens on. */
export const closedPort = freePort

export async function removeDir (dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true })
}

export interface RedisServer {
  port: number
  url: string
  child: ChildProcess
  stop: () => Promise<void>
}

/**
 * redis-server without persistence on `port` (default: a free one), resolved once it accepts
 * connections. `args` go after the defaults (`--cluster-enabled yes`, or a config file and
 * `--sentinel` for a sentinel, which takes its port from that file).
 */
export async function startRedis (port?: number, args: string[] = []): Promise<RedisServer> {
  const p = port ?? await freePort()
  const dir = await mkdtemp(join(tmpdir(), 'gatehouse-redis-'))
  const sentinel = args.includes('--sentinel')
  const defaults = sentinel ? [] : ['--port', String(p), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir]
  const child = spawn('redis-server', [...defaults, ...args], { stdio: ['ignore', 'pipe', 'pipe'], cwd: dir })
  // A sentinel never says it accepts connections; it is ready once it watches its master.
  const readyText = sentinel ? '+monitor master' : 'Ready to accept connections'
  let output = ''
  const started = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`redis-server did not start in 5 s:\n${output}`)), 5000)
    child.stdout?.on('data', (chunk: Buffer) => {
      output += chunk.toString()
      if (output.includes(readyText)) { clearTimeout(timer); resolve() }
    })
    child.stderr?.on('data', (chunk: Buffer) => { output += chunk.toString() })
    child.once('error', err => { clearTimeout(timer); reject(new Error(`cannot run redis-server (is it installed?): ${err.message}`)) })
    child.once('exit', code => { clearTimeout(timer); reject(new Error(`redis-server exited (${code}) before it was ready:\n${output}`)) })
  })
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL')
      await once(child, 'exit')
    }
    await rm(dir, { recursive: true, force: true })
  }
  try {
    await started
  } catch (err) {
    await stop()
    throw err
  }
  return { port: p, url: `redis://127.0.0.1:${p}`, child, stop }
}

/** The reply of redis-cli -p <port> <args>, bounded at 10 s. */
export async function redisCli (port: number, ...args: string[]): Promise<string> {
  return await new Promise((resolve, reject) => {
    execFile('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], { timeout: 10_000 }, (err, stdout, stderr) => {
      if (err !== null) reject(new Error(`redis-cli ${args.join(' ')}: ${err.message}\n${stderr}`))
      else resolve(stdout)
    })
  })
}

/** A free port whose cluster bus port (+10000) is free too. */
async function clusterPort (): Promise<number> {
  for (;;) {
    const p = await freePort()
    if (p + 10000 > 65535) continue
    const bus = net.createServer()
    const free = await new Promise<boolean>(resolve => {
      bus.once('error', () => resolve(false))
      bus.listen(p + 10000, '127.0.0.1', () => resolve(true))
    })
    if (free) await new Promise<void>(resolve => bus.close(() => resolve()))
    if (free) return p
  }
}

/** A Redis Cluster of `masters` masters (no replicas) on free ports, resolved once its state is ok. */
export async function startRedisCluster (masters = 3): Promise<RedisServer[]> {
  const nodes: RedisServer[] = []
  try {
    for (let i = 0; i < masters; i++) {
      nodes.push(await startRedis(await clusterPort(), ['--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', '5000']))
    }
    await redisCli(nodes[0]!.port, '--cluster', 'create', ...nodes.map(n => `127.0.0.1:${n.port}`), '--cluster-replicas', '0', '--cluster-yes')
    const deadline = Date.now() + 10_000
    for (const node of nodes) {
      while (!(await redisCli(node.port, 'cluster', 'info')).includes('cluster_state:ok')) {
        if (Date.now() > deadline) throw new Error(`cluster node ${node.port} not ok after 10 s`)
        await new Promise(resolve => setTimeout(resolve, 100))
      }
    }
    return nodes
  } catch (err) {
    await Promise.all(nodes.map(async n => await n.stop()))
    throw err
  }
}

/** A sentinel on a free port watching the master on `masterPort` under `name`. */
export async function startSentinel (masterPort: number, name: string): Promise<RedisServer> {
  const port = await freePort()
  const dir = await mkdtemp(join(tmpdir(), 'gatehouse-sentinel-'))
  // A sentinel rewrites its config file, so it gets its own.
  const conf = join(dir, 'sentinel.conf')
  await writeFile(conf, `port ${port}\nbind 127.0.0.1\ndir ${dir}\nsentinel monitor ${name} 127.0.0.1 ${masterPort} 1\n`)
  const server = await startRedis(port, [conf, '--sentinel'])
  return { ...server, stop: async () => { await server.stop(); await removeDir(dir) } }
}

/**
 * CI=true (.ci/run sets it, as CI services do): a tool a test needs must be there. A missing one
 * fails its tests instead of skipping them, so a green CI run never hides a check that did not run.
 */
export const CI = /^(true|1)$/i.test(process.env.CI ?? '')

/** Whether `command args` runs and exits 0 (within 10 s). */
export function runs (command: string, args: string[]): boolean {
  try {
    execFileSync(command, args, { stdio: 'ignore', timeout: 10_000 })
    return true
  } catch {
    return false
  }
}

/**
 * The `skip` option of a test that needs a tool: `why` where `available` is false, except under
 * CI=true, where the test runs (and fails, saying `why`, when it calls the tool).
 */
export function skipUnless (available: boolean, why: string): string | false {
  return available || CI ? false : `${why}; skipped because CI is not true (in CI this fails)`
}

const PROMTOOL_WHY = 'promtool is not installed (Debian package prometheus; .ci/run installs it)'

/** Why promtool tests are skipped here, or false when they run (promtool is installed, or CI=true). */
export const PROMTOOL_MISSING: string | false = skipUnless(runs('promtool', ['--version']), PROMTOOL_WHY)

/**
 * promtool's exit code and output; `input` goes to its stdin. Bounded at 20 s. Rejects when
 * promtool is not installed, so a test never reads a missing tool as a failed check.
 */
export async function promtool (args: string[], options: { cwd?: string, input?: string } = {}): Promise<{ code: number, output: string }> {
  return await new Promise((resolve, reject) => {
    const child = execFile('promtool', args, { timeout: 20_000, cwd: options.cwd }, (err, stdout, stderr) => {
      if (err !== null && (err as NodeJS.ErrnoException).code === 'ENOENT') reject(new Error(PROMTOOL_WHY))
      else resolve({ code: err === null ? 0 : (typeof err.code === 'number' ? err.code : 1), output: stdout + stderr })
    })
    child.stdin?.on('error', () => {}) // EPIPE when promtool is missing or exits early
    child.stdin?.end(options.input ?? '')
  })
}
