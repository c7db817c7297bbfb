// Real things for tests: upstream HTTP servers on ephemeral ports, route folders on disk, the
// gateway as a real child process, Redis servers, and the one HTTP client every suite uses.
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm, writeFile, unlink } from 'node:fs/promises'
import http, { type IncomingMessage, type ServerResponse } from 'node:http'
import net, { type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'
import { EnvSchema } from '../src/config/env.js'
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

/** A real HTTP server on `host` (default 127.0.0.1; any 127.x address or ::1), `port` (default a free one), that records what it sees. */
export async function startUpstream (handler: UpstreamHandler = echo, port = 0, host = '127.0.0.1'): Promise<Upstream> {
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
  server.listen(port, host)
  await once(server, 'listening')
  upstream.port = (server.address() as AddressInfo).port
  upstream.url = `http://${host.includes(':') ? `[${host}]` : host}:${upstream.port}`
  upstream.close = async () => {
    server.closeAllConnections()
    await new Promise<void>(resolve => server.close(() => resolve()))
  }
  return upstream
}

/** What the fixtures below need of a test: somewhere to register their clean-up. */
export interface Owner { after: (fn: () => unknown) => void }

/** startUpstream, closed when test `t` ends. */
export async function upstream (t: Owner, handler?: UpstreamHandler, port?: number, host?: string): Promise<Upstream> {
  const u = await startUpstream(handler, port, host)
  t.after(() => u.close())
  return u
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

/** The port a gateway's extra listener got ('TLS' or 'h2c'), from its log line. */
export async function listenerPort (gw: GatewayProcess, name: 'TLS' | 'h2c'): Promise<number> {
  const line = await gw.waitForLog(l => typeof l.msg === 'string' && l.msg.startsWith(`${name} listening at `))
  return Number(/:(\d+)$/.exec(line.msg as string)?.[1])
}

/** A gateway process serving a fresh route folder of `files`; stopped (and the folder removed) when `t` ends. */
export async function gateway (t: Owner, files: Record<string, string>, env: Record<string, string> = {}): Promise<GatewayProcess> {
  const dir = await routeDir(files)
  t.after(() => removeDir(dir))
  const gw = await startGateway(dir, env)
  t.after(() => gw.stop())
  return gw
}

// ---- the client ---------------------------------------------------------------------------------

/** The body of a JSON answer: the gateway's errors, or the echo upstream's report. */
export interface ReplyJson {
  statusCode?: number
  code?: string
  error?: string
  message?: string
  port?: number
  method?: string
  url?: string
  headers?: http.IncomingHttpHeaders
  body?: string
  [key: string]: unknown
}

export interface Reply {
  status: number
  headers: http.IncomingHttpHeaders
  /** The body as UTF-8 text. */
  body: string
  /** The body's bytes as they came (node:http never inflates a body). */
  bytes: Buffer
  /** The body parsed, when the response says it is JSON; else {}. */
  json: ReplyJson
  /** Whether the request went over a kept-alive connection. */
  reused: boolean
  /** Wall time from sending to the end of the body, ms. */
  ms: number
}

export interface SendOptions {
  method?: string
  headers?: http.OutgoingHttpHeaders
  /** Sent with Content-Length. */
  body?: string | Buffer
  /** Sent with Transfer-Encoding: chunked, one write per element. */
  chunks?: string[]
  /** Default false: a connection of its own. */
  agent?: http.Agent | false
  /** Source address (127.0.0.2 is another client to the gateway). */
  localAddress?: string
  /** The whole exchange is bounded: default 30 s. */
  timeoutMs?: number
}

/**
 * One HTTP/1.1 request to 127.0.0.1:`to.port` with the path sent exactly as given (fetch would
 * normalise it), and the whole response read. Rejects when the connection fails or the response
 * is cut short.
 */
export async function send (to: { port: number }, path: string, options: SendOptions = {}): Promise<Reply> {
  const { method = 'GET', headers, body, chunks, agent = false, localAddress, timeoutMs = 30_000 } = options
  const began = performance.now()
  const req = http.request({ host: '127.0.0.1', port: to.port, path, method, headers, agent, localAddress })
  const timer = setTimeout(() => req.destroy(new Error(`${method} ${path}: no whole answer in ${timeoutMs} ms`)), timeoutMs)
  try {
    const response = once(req, 'response') as Promise<[http.IncomingMessage]>
    for (const chunk of chunks ?? []) req.write(chunk)
    req.end(body)
    const [res] = await response
    const parts: Buffer[] = []
    for await (const part of res) parts.push(part as Buffer)
    const bytes = Buffer.concat(parts)
    const text = bytes.toString()
    return { status: res.statusCode ?? 0, headers: res.headers, body: text, bytes, json: jsonOf(res.headers, text), reused: req.reusedSocket, ms: performance.now() - began }
  } finally {
    clearTimeout(timer)
  }
}

/** What one connection of raw bytes got back. */
export interface Exchange {
  /** Status codes of every response on the connection, in order. */
  statuses: number[]
  /** Whether the gateway closed the connection within the wait. */
  closed: boolean
  /** ms from connecting to the close (or to the end of the wait). */
  ms: number
  /** Everything received, latin1. */
  text: string
}

/**
 * Sends `chunks` as raw bytes (latin1) on one connection, `gapMs` apart; resolves when the other
 * side closes it, or after `waitMs` (then `closed` is false).
 */
export async function exchange (port: number, chunks: string | string[], { waitMs = 1500, gapMs = 0 } = {}): Promise<Exchange> {
  const parts = typeof chunks === 'string' ? [chunks] : chunks
  return await new Promise(resolve => {
    const socket = net.connect(port, '127.0.0.1')
    const t0 = Date.now()
    let text = ''
    let settled = false
    const finish = (closed: boolean): void => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      socket.destroy()
      const statuses = [...text.matchAll(/HTTP\/1\.[01] (\d{3})/g)].map(m => Number(m[1]))
      resolve({ statuses, closed, ms: Date.now() - t0, text })
    }
    const timer = setTimeout(() => finish(false), waitMs)
    socket.on('data', chunk => { text += chunk.toString('latin1') })
    socket.on('close', () => finish(true))
    socket.on('error', () => {})
    socket.on('connect', () => {
      parts.forEach((part, i) => setTimeout(() => { if (!socket.destroyed) socket.write(part, 'latin1') }, i * gapMs))
    })
  })
}

/** The first response of an exchange as a Reply (a chunked body de-chunked); fails the test without a whole head. */
export function firstResponse (x: Exchange): Reply {
  const split = x.text.indexOf('\r\n\r\n')
  if (split < 0) throw new Error(`no complete response head in: ${JSON.stringify(x.text.slice(0, 200))}`)
  const [statusLine = '', ...lines] = x.text.slice(0, split).split('\r\n')
  const headers: http.IncomingHttpHeaders = {}
  for (const line of lines) {
    const colon = line.indexOf(':')
    headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim()
  }
  let body = x.text.slice(split + 4)
  if (headers['transfer-encoding'] === 'chunked') body = dechunk(body)
  else if (headers['content-length'] !== undefined) body = body.slice(0, Number(headers['content-length']))
  const bytes = Buffer.from(body, 'latin1')
  const text = bytes.toString()
  return { status: Number(statusLine.split(' ')[1]), headers, body: text, bytes, json: jsonOf(headers, text), reused: false, ms: x.ms }
}

/** The body parsed when the headers say JSON and it parses; else {}. */
function jsonOf (headers: http.IncomingHttpHeaders, text: string): ReplyJson {
  if (!/^application\/(.+\+)?json/.test(String(headers['content-type']))) return {}
  try {
    const value: unknown = JSON.parse(text)
    return typeof value === 'object' && value !== null ? value as ReplyJson : {}
  } catch {
    return {}
  }
}

function dechunk (text: string): string {
  let out = ''
  let rest = text
  for (;;) {
    const eol = rest.indexOf('\r\n')
    const size = parseInt(rest.slice(0, eol), 16)
    if (!(size > 0)) return out
    out += rest.slice(eol + 2, eol + 2 + size)
    rest = rest.slice(eol + 2 + size + 2)
  }
}

// ---- observation --------------------------------------------------------------------------------

/** The labels of a Prometheus sample line (`name{a="1",b="2"} 3`), unescaped. */
function labelsOf (line: string): Record<string, string> {
  const open = line.indexOf('{')
  if (open < 0 || open > line.indexOf(' ')) return {}
  const labels: Record<string, string> = {}
  for (const m of line.slice(open + 1, line.lastIndexOf('}')).matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
    labels[m[1] as string] = (m[2] as string).replace(/\\(.)/g, (_, c: string) => c === 'n' ? '\n' : c)
  }
  return labels
}

/**
 * The sum of the samples of metric `name` on `url`'s /metrics (default: the gateway's) whose
 * labels include `labels`; undefined when none matches.
 */
export async function metric (gw: { url: string }, name: string, labels: Record<string, string> = {}, url = `${gw.url}/metrics`): Promise<number | undefined> {
  const text = await (await fetch(url)).text()
  let sum: number | undefined
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue
    const found = labelsOf(line)
    if (!Object.entries(labels).every(([k, v]) => found[k] === v)) continue
    sum = (sum ?? 0) + Number(line.slice(line.lastIndexOf(' ') + 1))
  }
  return sum
}

/** `promise`, or a failure after `ms` saying `what`. */
export async function within<T> (ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`not within ${ms} ms: ${what}`)), ms)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

/** Polls `check` every `everyMs` until it holds; fails the test after `timeoutMs`, saying `what`. */
export async function until (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 5000, everyMs = 10): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${what}`)
    await sleep(everyMs)
  }
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

/** A self-signed certificate for 127.0.0.1 in a temp folder of `t`: the paths of cert.pem and key.pem. */
export async function selfSigned (t: Owner, name = 'gatehouse-test'): Promise<{ dir: string, cert: string, key: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'gatehouse-h2-'))
  t.after(() => removeDir(dir))
  const cert = join(dir, 'cert.pem')
  const key = join(dir, 'key.pem')
  makeCert(cert, key, name)
  return { dir, cert, key }
}

export function makeCert (cert: string, key: string, name: string): void {
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert,
    '-days', '2', '-subj', `/CN=${name}`, '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'], { stdio: 'ignore' })
}
