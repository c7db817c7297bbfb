// npm run bench: what a request through Gatehouse costs next to other proxies, measured in one
// run on this machine. Every proxy is a process of its own in front of the same upstream (a
// node:http JSON server, bench/upstream.ts), loaded by wrk (-t1, a process of its own too).
//
// - Baseline: bare Fastify + @fastify/reply-from (bench/bare-proxy.ts). Every figure is also given
//   as a ratio to it, from the same run.
// - Peers, installed by the bench outside the project's dependencies (bench/peers.ts):
//   fast-gateway 5.0.1 and @fastify/http-proxy 11; nginx (1 worker, keep-alive upstream) when
//   `nginx` is on the PATH.
// - Gatehouse (node dist/src/cli.js start, one route /bench): (a) defaults, LOG_LEVEL=info,
//   access log to a file; (b) info, log to a pipe this runner drains; (c) warn, and (c2) a second
//   process identical to (c), the run's noise floor; (d)–(g) are (c)
//   plus one feature: a rate limit in memory, in Redis (a redis-server of the bench), JWT auth with
//   a cached key, tracing with 10 % sampling to an OTLP sink in this runner.
// - Floors (bare-*): the bare proxy with the package behind a feature alone, set up as its own
//   documentation does (bench/bare-proxy.ts), or sent (f)'s token: what the feature costs anyway.
// - CPU rounds: a 2 s warm-up per process, then BENCH_ROUNDS interleaved rounds (each runs every
//   proxy once, in an order rotated by one each round), medians. CPU per request = utime+stime of
//   the proxy process (/proc/<pid>/stat) over the requests wrk counted.
// - Memory (bare and Gatehouse): a second process of each, the same configuration plus
//   bench/gc-probe.ts preloaded (V8's GCProfiler: about 85 µs per GC, so never in the CPU rounds),
//   measured after the CPU rounds: bytes allocated per request, heap used after scavenges, GC share.
//
//   BENCH_DURATION=2 BENCH_CONNECTIONS=32 BENCH_ROUNDS=9 npm run bench [-- --only bare,gatehouse,fast-gateway] [-- --json]
//   BENCH_QUICK=1 npm run bench     # bare, the peers, Gatehouse (a) and (c)
import { execFileSync, spawnSync } from 'node:child_process'
import { closeSync, openSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import os from 'node:os'
import { join, resolve } from 'node:path'
import { freePort } from '../scripts/loopback.js'
import { ProbeClient, probeArgs, type GcWindow } from './gc-window.js'
import { JWT_ALGORITHM, JWT_AUDIENCE, startIssuer, type BenchIssuer } from './jwt.js'
import { scrape, total } from './metrics.js'
import { startSink, type OtlpSink } from './otlp.js'
import { ensurePeers, PEERS_DIR, type PeerVersions } from './peers.js'
import { Children, childPids, cleanEnv, cpuMicros, getJson, median, running, START_TIMEOUT_MS, waitFor200, withTimeout, type Child, CLK_TCK } from './procs.js'
import { redisServerVersion } from './redis.js'
import { benchGrpc } from './grpc.js'
import type { RoundOptions } from './protocol-rounds.js'
import { benchWebSocket } from './websocket.js'
import { runWrk, wrkVersion, writeWrkScript, type WrkRun } from './wrk.js'

// ---- settings ------------------------------------------------------------------------------

function positiveInt (name: string, fallback: number): number {
  const text = process.env[name]
  if (text === undefined || text === '') return fallback
  const n = Number(text)
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${name} must be a positive integer, got "${text}"`)
  return n
}

const ROOT = resolve(import.meta.dirname, '..', '..')
const DIST = join(ROOT, 'dist')
const DURATION_S = positiveInt('BENCH_DURATION', 2)
const CONNECTIONS = positiveInt('BENCH_CONNECTIONS', 32)
const ROUNDS = positiveInt('BENCH_ROUNDS', 9)
const QUICK = process.env.BENCH_QUICK === '1'
const WARMUP_S = 2
// Allocation per request does not depend on the machine's speed: two rounds agree within ~2 %.
const MEMORY_ROUNDS = 2
// Between two wrk runs: the previous proxy's connections close before the next load starts.
const PAUSE_MS = 250
const PATH = '/bench/items?page=1'
// Every proxy's pool to the upstream (and Gatehouse's target cap): far above the load.
const POOL = 128
// The rate-limited routes: a budget never spent (a 429 would make the sample invalid).
const LIMIT_MAX = 1_000_000
const LIMIT_WINDOW = '1s'
const LIMIT_WINDOW_MS = 1000
const TRACE_SAMPLE_RATIO = '0.1'
// The body of (h), (h2) and bare-post.
const POST_BYTES = 64 * 1024
// A sample taken while processes other than the bench's kept this many cores busy is flagged.
const NOISY_CORES = 0.1
// Redis limiter decisions that may fail (and be made in memory) before (e)'s figures are not Redis's.
const STORE_ERRORS_TOLERATED = 0.01

const args = process.argv.slice(2)
const JSON_OUTPUT = args.includes('--json')

const progress = (line: string): void => { process.stderr.write(line + '\n') }

// ---- what can be measured ------------------------------------------------------------------

type Feature = 'none' | 'log' | 'limit-memory' | 'limit-redis' | 'jwt' | 'tracing' | 'post' | 'post-streamed' | 'header-rules' | 'cors' | 'split' | 'affinity' | 'params' | 'health-check'

interface Spec {
  id: string
  /** Gatehouse's variant letter of the brief, also accepted by --only. */
  letter?: string
  label: string
  kind: 'bare' | 'fast-gateway' | 'http-proxy' | 'nginx' | 'gatehouse'
  /** Whether bytes/req, heap and GC share are measured (a second, probed process). */
  memory: boolean
  quick: boolean
  logLevel?: 'info' | 'warn'
  /** Gatehouse's stdout: a file, or a pipe this runner drains. */
  stdout?: 'file' | 'drain'
  feature?: Feature
  /** A control: the same as this subject, to show the run's noise floor. */
  identicalTo?: string
}

const SPECS: Spec[] = [
  { id: 'bare', label: 'bare Fastify + @fastify/reply-from', kind: 'bare', memory: true, quick: true },
  { id: 'fast-gateway', label: 'fast-gateway', kind: 'fast-gateway', memory: false, quick: true },
  { id: 'http-proxy', label: '@fastify/http-proxy', kind: 'http-proxy', memory: false, quick: true },
  { id: 'nginx', label: 'nginx, 1 worker', kind: 'nginx', memory: false, quick: true },
  { id: 'gatehouse', letter: 'a', label: 'Gatehouse (a) defaults: info, log to a file', kind: 'gatehouse', memory: true, quick: true, logLevel: 'info', stdout: 'file', feature: 'none' },
  { id: 'gatehouse-pipe', letter: 'b', label: 'Gatehouse (b) info, log to a pipe', kind: 'gatehouse', memory: true, quick: false, logLevel: 'info', stdout: 'drain', feature: 'none' },
  { id: 'gatehouse-warn', letter: 'c', label: 'Gatehouse (c) warn', kind: 'gatehouse', memory: true, quick: true, logLevel: 'warn', stdout: 'file', feature: 'none' },
  // The same build and configuration as (c), a process of its own: how far two identical
  // subjects of one run disagree is the smallest difference the run can show.
  { id: 'gatehouse-warn-again', letter: 'c2', label: 'Gatehouse (c2) warn, identical to (c)', kind: 'gatehouse', memory: false, quick: false, logLevel: 'warn', stdout: 'file', feature: 'none', identicalTo: 'gatehouse-warn' },
  { id: 'gatehouse-limit-memory', letter: 'd', label: 'Gatehouse (d) (c) + rate limit, memory', kind: 'gatehouse', memory: true, quick: false, logLevel: 'warn', stdout: 'file', feature: 'limit-memory' },
  { id: 'gatehouse-limit-redis', letter: 'e', label: 'Gatehouse (e) (c) + rate limit, Redis', kind: 'gatehouse', memory: true, quick: false, logLevel: 'warn', stdout: 'file', feature: 'limit-redis' },
  { id: 'gatehouse-jwt', letter: 'f', label: 'Gatehouse (f) (c) + JWT, cached key', kind: 'gatehouse', memory: true, quick: false, logLevel: 'warn', stdout: 'file', feature: 'jwt' },
  { id: 'gatehouse-tracing', letter: 'g', label: 'Gatehouse (g) (c) + tracing, 10 % sampled', kind: 'gatehouse', memory: true, quick: false, logLevel: 'warn', stdout: 'file', feature: 'tracing' },
  // A request body: (h) receives it whole before it asks a target (the default), (h2) streams it;
  // (h) − (h2), round by round, is what request buffering costs.
  { id: 'gatehouse-post', letter: 'h', label: 'Gatehouse (h) (c), POST of 64 KB received whole (default requestBuffer)', kind: 'gatehouse', memory: true, quick: false, logLevel: 'warn', stdout: 'file', feature: 'post' },
  { id: 'gatehouse-post-streamed', letter: 'h2', label: 'Gatehouse (h2) (c), POST of 64 KB streamed (requestBuffer: 0)', kind: 'gatehouse', memory: true, quick: false, logLevel: 'warn', stdout: 'file', feature: 'post-streamed' },
  // Traffic policy of a route (issue 15): what each costs on the route that uses it.
  { id: 'gatehouse-header-rules', letter: 'i', label: 'Gatehouse (i) (c) + header rules: 2 set (one with {client.ip}), 1 removed, each way', kind: 'gatehouse', memory: true, quick: false, logLevel: 'warn', stdout: 'file', feature: 'header-rules' },
  { id: 'gatehouse-cors', letter: 'j', label: 'Gatehouse (j) (c) + CORS, requests with an allowed Origin', kind: 'gatehouse', memory: true, quick: false, logLevel: 'warn', stdout: 'file', feature: 'cors' },
  { id: 'gatehouse-split', letter: 'k', label: 'Gatehouse (k) (c) + split with a pin header (not sent)', kind: 'gatehouse', memory: true, quick: false, logLevel: 'warn', stdout: 'file', feature: 'split' },
  { id: 'gatehouse-affinity', letter: 'l', label: 'Gatehouse (l) (c) + affinity by header', kind: 'gatehouse', memory: true, quick: false, logLevel: 'warn', stdout: 'file', feature: 'affinity' },
  { id: 'gatehouse-params', letter: 'm', label: 'Gatehouse (m) (c) on a route with a parameter, rewritten (/:section → /v1/:section)', kind: 'gatehouse', memory: true, quick: false, logLevel: 'warn', stdout: 'file', feature: 'params' },
  { id: 'gatehouse-health-check', letter: 'n', label: 'Gatehouse (n) (c) + active health checks, a probe every second', kind: 'gatehouse', memory: true, quick: false, logLevel: 'warn', stdout: 'file', feature: 'health-check' },
  // The package behind each feature, alone on the bare proxy and set up as its documentation
  // does: the floor under what the same feature adds to Gatehouse.
  { id: 'bare-log', label: 'bare + Fastify\'s request log (info, to a file)', kind: 'bare', memory: false, quick: false, feature: 'log' },
  { id: 'bare-limit-memory', label: 'bare + @fastify/rate-limit, its memory store', kind: 'bare', memory: false, quick: false, feature: 'limit-memory' },
  { id: 'bare-limit-redis', label: 'bare + @fastify/rate-limit, its Redis store', kind: 'bare', memory: false, quick: false, feature: 'limit-redis' },
  { id: 'bare-tracing', label: 'bare + @fastify/otel, 10 % sampled', kind: 'bare', memory: false, quick: false, feature: 'tracing' },
  // No package here: the bare proxy reads and forwards the same bearer token, unverified.
  { id: 'bare-jwt', label: 'bare, sent (f)\'s bearer token (not verified)', kind: 'bare', memory: false, quick: false, feature: 'jwt' },
  { id: 'bare-post', label: 'bare, sent (h)\'s POST of 64 KB (streamed, as @fastify/http-proxy does)', kind: 'bare', memory: false, quick: false, feature: 'post' }
]

function usage (): string {
  return `usage: npm run bench [-- --only ID,ID,...] [-- --json]
  IDs: ${SPECS.map(s => s.letter === undefined ? s.id : `${s.id} (${s.letter})`).join(', ')}, websocket (bench/websocket.ts), grpc (bench/grpc.ts)
  env: BENCH_DURATION (s, ${DURATION_S}), BENCH_CONNECTIONS (${CONNECTIONS}), BENCH_ROUNDS (${ROUNDS}), BENCH_QUICK=1 (bare, peers, Gatehouse a and c)`
}

/** The protocol benches, after the HTTP subjects: each against a direct connection. */
const PROTOCOLS: Record<string, (o: RoundOptions) => Promise<string>> = { websocket: benchWebSocket, grpc: benchGrpc }

/** The protocol benches that run: named in --only, or all in a full run. */
function protocolsWanted (): string[] {
  const at = args.findIndex(a => a === '--only' || a.startsWith('--only='))
  if (at === -1) return QUICK ? [] : Object.keys(PROTOCOLS)
  const arg = args[at] as string
  const list = arg.startsWith('--only=') ? arg.slice('--only='.length) : args[at + 1] ?? ''
  return list.split(',').map(s => s.trim()).filter(s => s in PROTOCOLS)
}

/** The specs asked for: --only, else BENCH_QUICK, else all. The baseline is always measured. */
function selected (): Spec[] {
  const at = args.findIndex(a => a === '--only' || a.startsWith('--only='))
  if (at === -1) return QUICK ? SPECS.filter(s => s.quick) : SPECS
  const arg = args[at] as string
  const list = arg.startsWith('--only=') ? arg.slice('--only='.length) : args[at + 1]
  if (list === undefined || list === '') throw new Error(`--only needs a list of IDs\n${usage()}`)
  const wanted = new Set(list.split(',').map(s => s.trim()).filter(s => s !== ''))
  for (const name of Object.keys(PROTOCOLS)) wanted.delete(name)
  // Only protocol benches: no HTTP subject, not even the baseline.
  if (wanted.size === 0) return []
  for (const w of wanted) {
    if (!SPECS.some(s => s.id === w || s.letter === w)) throw new Error(`--only: unknown ID "${w}"\n${usage()}`)
  }
  return SPECS.filter(s => s.id === 'bare' || wanted.has(s.id) || (s.letter !== undefined && wanted.has(s.letter)))
}

// ---- a run's state -------------------------------------------------------------------------

interface Instance {
  child: Child
  port: number
  /** The process whose CPU time is counted: the proxy (nginx: its worker). */
  cpuPid: number
  probe?: ProbeClient
  /** Gatehouse's stdout file. */
  logFile?: string
}

interface CpuSample {
  round: number
  rps: number
  p50Ms: number
  p99Ms: number
  cpuUsPerReq: number
  requests: number
  non2xx: number
  socketErrors: number
  /** (e): the redis-server's CPU per request, apart. */
  redisCpuUsPerReq?: number
  /** Cores other processes than the bench's kept busy meanwhile (the machine's noise). */
  otherCores: number
  invalid: boolean
}

interface MemorySample {
  round: number
  requests: number
  bytesPerReq: number
  heapAfterScavengeMB: number | null
  gcPercent: number
  scavenges: number
  otherGcs: number
  non2xx: number
  socketErrors: number
  invalid: boolean
}

interface Subject {
  spec: Spec
  label: string
  cpu: Instance
  mem?: Instance
  headers?: Record<string, string>
  warmups: WrkRun[]
  cpuSamples: CpuSample[]
  memorySamples: MemorySample[]
  /** Why the subject's figures cannot be trusted beyond its samples (Redis fallback, no spans, ...). */
  problems: string[]
  notes: string[]
}

const children = new Children()
let issuer: BenchIssuer | undefined
let sink: OtlpSink | undefined
/** The bare proxy's traces go to a sink of their own: each sink's count checks one subject. */
let bareSink: OtlpSink | undefined
let tempRoot: string | undefined
let npmInstall: (() => void) | undefined

// ---- starting things -----------------------------------------------------------------------

interface Shared {
  upstreamUrl: string
  routesDir: (feature: Feature) => Promise<string>
  logsDir: string
  redisUrl?: string
}

function portFromLine (child: Child): Promise<number> {
  return withTimeout(`${child.name} start`, new Promise<number>((resolve, reject) => {
    const timer = setInterval(() => {
      for (const line of child.tail) {
        try {
          const parsed = JSON.parse(line) as { port?: unknown }
          if (typeof parsed.port === 'number') { clearInterval(timer); resolve(parsed.port); return }
        } catch {}
      }
      if (!running(child)) { clearInterval(timer); reject(new Error(`${child.name} exited: ${child.tail.join('\n')}`)) }
    }, 50)
  }), START_TIMEOUT_MS)
}

async function startNode (name: string, script: string, env: Record<string, string>, probed: boolean): Promise<Instance> {
  const child = children.spawn(name, process.execPath, [...(probed ? probeArgs() : []), script], { env: cleanEnv(env), cwd: tempRoot as string, stdout: 'pipe', control: probed })
  const port = await portFromLine(child)
  return { child, port, cpuPid: child.pid, ...(child.control === undefined ? {} : { probe: new ProbeClient(child.control) }) }
}

async function startNginx (shared: Shared): Promise<Instance> {
  const dir = join(tempRoot as string, 'nginx')
  await mkdir(dir, { recursive: true })
  const port = await freePort()
  const upstream = new URL(shared.upstreamUrl)
  await writeFile(join(dir, 'nginx.conf'), `# gatehouse bench: one worker, keep-alive to the upstream, no access log
worker_processes 1;
daemon off;
pid ${dir}/nginx.pid;
error_log stderr warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  upstream bench_upstream {
    server ${upstream.hostname}:${upstream.port};
    keepalive ${POOL};
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://bench_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`)
  const child = children.spawn('nginx', 'nginx', ['-p', dir, '-c', join(dir, 'nginx.conf'), '-e', 'stderr'], { env: cleanEnv({}), cwd: dir, stdout: 'pipe' })
  await waitFor200(child, port, PATH)
  const workers = await childPids(child.pid)
  if (workers.length !== 1) throw new Error(`nginx: expected 1 worker, found ${workers.length}`)
  return { child, port, cpuPid: workers[0] as number }
}

/** What bare-proxy.ts needs for its BARE_FEATURE: the same limit, Redis, sampling and log destination as Gatehouse's. */
function bareFeatureEnv (spec: Spec, shared: Shared): Record<string, string> {
  const feature = spec.feature ?? 'none'
  if (feature === 'none' || feature === 'jwt' || feature === 'header-rules' || feature === 'cors' || feature === 'split' || feature === 'affinity' || feature === 'params' || feature === 'health-check') return {}
  const env: Record<string, string> = { BARE_FEATURE: feature }
  if (feature === 'log') env.LOG_FILE = join(shared.logsDir, `${spec.id}.log`)
  if (feature === 'limit-memory' || feature === 'limit-redis') Object.assign(env, { LIMIT_MAX: String(LIMIT_MAX), LIMIT_WINDOW_MS: String(LIMIT_WINDOW_MS) })
  if (feature === 'limit-redis') env.REDIS_URL = shared.redisUrl as string
  if (feature === 'tracing') Object.assign(env, tracingEnv(bareSink as OtlpSink))
  return env
}

/** The OTLP settings of a traced subject: 10 % of the traces to the sink of its kind. */
function tracingEnv (to: OtlpSink): Record<string, string> {
  return {
    OTEL_EXPORTER_OTLP_ENDPOINT: to.endpoint,
    OTEL_TRACES_SAMPLER: 'parentbased_traceidratio',
    OTEL_TRACES_SAMPLER_ARG: TRACE_SAMPLE_RATIO,
    // The SDK says when it drops spans or an export fails, nothing else.
    OTEL_LOG_LEVEL: 'warn'
  }
}

async function startGatehouse (spec: Spec, shared: Shared, role: 'cpu' | 'memory'): Promise<Instance> {
  const feature = spec.feature ?? 'none'
  const port = await freePort()
  const env: Record<string, string> = {
    HOST: '127.0.0.1',
    PORT: String(port),
    ROUTES_DIR: await shared.routesDir(feature),
    LOG_LEVEL: spec.logLevel ?? 'info'
  }
  if (feature === 'limit-redis') env.REDIS_URL = shared.redisUrl as string
  if (feature === 'tracing') Object.assign(env, tracingEnv(sink as OtlpSink))
  let logFile: string | undefined
  let fd: number | undefined
  if (spec.stdout !== 'drain') {
    // Outside ROUTES_DIR: the route watcher must not see the log grow.
    logFile = join(shared.logsDir, `${spec.id}-${role}.log`)
    fd = openSync(logFile, 'w')
  }
  const probed = role === 'memory'
  // The working directory is the run's temp folder: no .env of the repository is read.
  const child = children.spawn(`${spec.id} (${role})`, process.execPath, [...(probed ? probeArgs() : []), join(DIST, 'src', 'cli.js'), 'start'], {
    env: cleanEnv(env), cwd: tempRoot as string, stdout: fd ?? 'drain', control: probed
  })
  // The child holds its own copy of the descriptor.
  if (fd !== undefined) closeSync(fd)
  await waitFor200(child, port, '/ready')
  if (feature === 'limit-redis') {
    // The limiter's client connects in the background: measure only once it decides in Redis.
    const deadline = Date.now() + START_TIMEOUT_MS
    let store: unknown
    while (Date.now() < deadline) {
      store = ((await getJson(port, '/ready')) as { rateLimitStore?: unknown }).rateLimitStore
      if (store === 'redis') break
      await new Promise(resolve => setTimeout(resolve, 100))
    }
    if (store !== 'redis') throw new Error(`${child.name}: /ready says rateLimitStore ${String(store)}, not redis`)
  }
  return { child, port, cpuPid: child.pid, ...(logFile === undefined ? {} : { logFile }), ...(child.control === undefined ? {} : { probe: new ProbeClient(child.control) }) }
}

async function startInstance (spec: Spec, shared: Shared, role: 'cpu' | 'memory'): Promise<Instance> {
  const base = { HOST: '127.0.0.1', PORT: '0', UPSTREAM: shared.upstreamUrl, CONNECTIONS: String(POOL) }
  switch (spec.kind) {
    case 'bare': {
      const env = bareFeatureEnv(spec, shared)
      const instance = await startNode(`${spec.id} (${role})`, join(DIST, 'bench', 'bare-proxy.js'), { ...base, ...env }, role === 'memory')
      return env.LOG_FILE === undefined ? instance : { ...instance, logFile: env.LOG_FILE }
    }
    case 'fast-gateway': return await startNode('fast-gateway', join(DIST, 'bench', 'peer-fast-gateway.js'), { ...base, PEERS_DIR }, false)
    case 'http-proxy': return await startNode('http-proxy', join(DIST, 'bench', 'peer-http-proxy.js'), { ...base, PEERS_DIR }, false)
    case 'nginx': return await startNginx(shared)
    case 'gatehouse': return await startGatehouse(spec, shared, role)
  }
}

function routeFile (upstreamUrl: string, feature: Feature, jwt: BenchIssuer | undefined): string {
  const extra: string[] = []
  if (feature === 'limit-memory' || feature === 'limit-redis') {
    extra.push('    rateLimit:', `      max: ${LIMIT_MAX}`, `      window: ${LIMIT_WINDOW}`, '      key: ip', '      onStoreError: local')
  }
  if (feature === 'post-streamed') extra.push('    requestBuffer: 0')
  if (feature === 'header-rules') {
    extra.push('    headers:', '      request: { set: { x-api-version: "2", x-client: "{client.ip}" }, remove: [x-debug] }',
      '      response: { set: { cache-control: no-store, x-gateway: bench }, remove: [server] }')
  }
  if (feature === 'cors') extra.push('    cors: { origins: [https://app.example.com, "https://*.example.com"], credentials: true, exposeHeaders: [x-request-id] }')
  if (feature === 'split') extra.push('    split: { stable: 100 }', '    pin: { header: x-canary }')
  if (feature === 'affinity') extra.push('    affinity: { header: x-session }')
  if (feature === 'jwt' && jwt !== undefined) {
    extra.push('    auth:', '      jwt:', `        jwksUrl: ${jwt.jwksUrl}`, `        issuer: ${jwt.issuer}`, `        audience: ${JWT_AUDIENCE}`,
      `        algorithms: [${JWT_ALGORITHM}]`, '        forwardClaims:', '          sub: x-user-id')
  }
  const group = feature === 'split' ? ['    group: stable'] : []
  // The parameter route matches the bench's path (/bench) as its :section.
  const route = feature === 'params' ? ['  - path: /:section', '    rewritePrefix: /v1/:section'] : ['  - path: /bench']
  const file = feature === 'health-check' ? ['healthCheck: { path: /bench/items, interval: 1s }'] : []
  return ['name: bench', 'targets:', `  - url: ${upstreamUrl}`, `    maxConnections: ${POOL}`, ...group, 'routes:', ...route, ...extra, ...file, ''].join('\n')
}

// ---- measuring -----------------------------------------------------------------------------

/**
 * CPU µs of the whole machine from /proc/stat: user, nice, system, and irq and softirq (the
 * loopback traffic's softirq time shows in the processes' stime but in softirq here).
 */
async function machineMicros (): Promise<number> {
  const line = (await readFile('/proc/stat', 'utf8')).split('\n', 1)[0] as string
  const f = line.trim().split(/\s+/).slice(1).map(Number)
  return ((f[0] ?? 0) + (f[1] ?? 0) + (f[2] ?? 0) + (f[5] ?? 0) + (f[6] ?? 0)) * (1e6 / CLK_TCK)
}

/**
 * CPU µs of this runner, of the children it has reaped (utime, stime, cutime, cstime of
 * /proc/self/stat: a wrk that ran and exited in between is in cutime) and of every child still running.
 */
async function ourMicros (): Promise<number> {
  const stat = await readFile('/proc/self/stat', 'utf8')
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  let sum = (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) * (1e6 / CLK_TCK)
  for (const c of children.all.filter(running)) {
    try {
      sum += await cpuMicros(c.pid)
      // nginx's worker is not our child but its master's.
      if (c.name === 'nginx') for (const w of await childPids(c.pid)) sum += await cpuMicros(w)
    } catch {}
  }
  return sum
}

const pause = (): Promise<void> => new Promise(resolve => setTimeout(resolve, PAUSE_MS))

async function load (s: Subject, instance: Instance, durationS: number): Promise<WrkRun> {
  const script = s.spec.feature === 'post' || s.spec.feature === 'post-streamed' ? wrkScripts.post : wrkScripts.get
  return await runWrk(children, { url: `http://127.0.0.1:${instance.port}${PATH}`, durationS, connections: CONNECTIONS, script, ...(s.headers === undefined ? {} : { headers: s.headers }) })
}

async function cpuRound (s: Subject, round: number, redisPid: number | undefined): Promise<CpuSample> {
  const pid = s.cpu.cpuPid
  const machine0 = await machineMicros()
  const ours0 = await ourMicros()
  const began = performance.now()
  const cpu0 = await cpuMicros(pid)
  const redis0 = redisPid === undefined ? undefined : await cpuMicros(redisPid)
  const r = await load(s, s.cpu, DURATION_S)
  const cpu1 = await cpuMicros(pid)
  const redis1 = redisPid === undefined ? undefined : await cpuMicros(redisPid)
  const elapsedUs = (performance.now() - began) * 1000
  const otherCores = Math.max(0, (await machineMicros() - machine0) - (await ourMicros() - ours0)) / elapsedUs
  const socketErrors = r.connect + r.read + r.write + r.timeout
  return {
    round,
    rps: r.rps,
    p50Ms: r.p50Us / 1000,
    p99Ms: r.p99Us / 1000,
    cpuUsPerReq: r.requests > 0 ? (cpu1 - cpu0) / r.requests : NaN,
    requests: r.requests,
    non2xx: r.non2xx,
    socketErrors,
    ...(redis0 === undefined || redis1 === undefined ? {} : { redisCpuUsPerReq: (redis1 - redis0) / r.requests }),
    otherCores,
    invalid: r.failures > 0 || r.requests === 0
  }
}

async function memoryRound (s: Subject, round: number): Promise<MemorySample> {
  const mem = s.mem as Instance
  const probe = mem.probe as ProbeClient
  await probe.mark()
  const r = await load(s, mem, DURATION_S)
  const w: GcWindow = await probe.mark()
  return {
    round,
    requests: r.requests,
    bytesPerReq: r.requests > 0 ? w.allocatedBytes / r.requests : NaN,
    heapAfterScavengeMB: w.heapAfterScavengeBytes === null ? null : w.heapAfterScavengeBytes / 2 ** 20,
    gcPercent: w.gcPauseMs / w.wallMs * 100,
    scavenges: w.scavenges,
    otherGcs: w.otherGcs,
    non2xx: r.non2xx,
    socketErrors: r.connect + r.read + r.write + r.timeout,
    invalid: r.failures > 0 || r.requests === 0
  }
}

const wrkScripts = { get: '', post: '' }

// ---- the run -------------------------------------------------------------------------------

interface Summary {
  cpuUsPerReq: number | null
  rps: number | null
  p99Ms: number | null
  bytesPerReq: number | null
  heapAfterScavengeMB: number | null
  gcPercent: number | null
  validCpuSamples: number
  validMemorySamples: number
}

function medianOf (values: Array<number | null>): number | null {
  const v = values.filter((x): x is number => x !== null && Number.isFinite(x))
  return v.length === 0 ? null : median(v)
}

function summarize (s: Subject): Summary {
  const cpu = s.cpuSamples.filter(x => !x.invalid)
  const mem = s.memorySamples.filter(x => !x.invalid)
  return {
    cpuUsPerReq: medianOf(cpu.map(x => x.cpuUsPerReq)),
    rps: medianOf(cpu.map(x => x.rps)),
    p99Ms: medianOf(cpu.map(x => x.p99Ms)),
    bytesPerReq: medianOf(mem.map(x => x.bytesPerReq)),
    heapAfterScavengeMB: medianOf(mem.map(x => x.heapAfterScavengeMB)),
    gcPercent: medianOf(mem.map(x => x.gcPercent)),
    validCpuSamples: cpu.length,
    validMemorySamples: mem.length
  }
}

function gitDescribe (): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'pipe', 'ignore'] }).trim()
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no', '--', 'src', 'plugins'], { cwd: ROOT, encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'pipe', 'ignore'] }).trim() !== ''
    return dirty ? `${head} + uncommitted changes in src/ or plugins/` : head
  } catch {
    return 'unknown (not a git checkout)'
  }
}

function nginxAvailable (): boolean {
  return spawnSync('nginx', ['-v'], { stdio: 'ignore', timeout: 5000 }).error === undefined
}

async function main (): Promise<void> {
  let specs = selected()
  const skipped: string[] = []
  const wrk = wrkVersion()
  if ('missing' in wrk) throw new Error(wrk.missing)
  if (specs.some(s => s.kind === 'nginx') && !nginxAvailable()) {
    skipped.push('nginx: not on the PATH, skipped')
    specs = specs.filter(s => s.kind !== 'nginx')
  }
  const redis = redisServerVersion()
  if (specs.some(s => s.feature === 'limit-redis') && 'missing' in redis) {
    skipped.push(`Gatehouse (e): ${redis.missing}, skipped`)
    specs = specs.filter(s => s.feature !== 'limit-redis')
  }
  for (const line of skipped) progress(line)

  const machine = {
    node: process.version,
    cpu: os.cpus()[0]?.model.trim() ?? 'unknown',
    cores: os.availableParallelism(),
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    loadavg: os.loadavg().map(l => Math.round(l * 100) / 100),
    wrk: wrk.version,
    redisServer: 'version' in redis ? redis.version : null
  }
  const commit = gitDescribe()
  const memorySpecs = specs.filter(s => s.memory)
  const planned = 30 + specs.length * (WARMUP_S + 1) + ROUNDS * specs.length * (DURATION_S + 1) + memorySpecs.length * (WARMUP_S + 1 + MEMORY_ROUNDS * (DURATION_S + 1))
  progress(`bench: ${specs.map(s => s.id).join(', ')}; ${plural(ROUNDS, 'round')} x ${DURATION_S} s, wrk -t1 -c${CONNECTIONS}; memory ${plural(MEMORY_ROUNDS, 'round')}; about ${Math.ceil(planned / 10) * 10} s`)
  progress(`machine: node ${machine.node}, ${machine.cores} cores (${machine.cpu}), load ${machine.loadavg.join(' ')}; commit ${commit}`)
  armDeadline(planned)

  let peers: PeerVersions = {}
  if (specs.some(s => s.kind === 'fast-gateway' || s.kind === 'http-proxy')) {
    peers = await ensurePeers(progress, (_pid, kill) => { npmInstall = kill })
    npmInstall = undefined
  }

  tempRoot = await mkdtemp(join(os.tmpdir(), 'gatehouse-bench-'))
  const logsDir = join(tempRoot, 'logs')
  await mkdir(logsDir)
  wrkScripts.get = await writeWrkScript(tempRoot)
  wrkScripts.post = await writeWrkScript(tempRoot, POST_BYTES)

  const upstreamPort = await freePort()
  const upstream = children.spawn('upstream', process.execPath, [join(DIST, 'bench', 'upstream.js')], { env: cleanEnv({ HOST: '127.0.0.1', PORT: String(upstreamPort) }), cwd: tempRoot, stdout: 'pipe' })
  await waitFor200(upstream, upstreamPort, PATH)
  const upstreamUrl = `http://127.0.0.1:${upstreamPort}`

  const features = new Set(specs.map(s => s.feature).filter((f): f is Feature => f !== undefined))
  if (features.has('jwt')) issuer = await startIssuer(1)
  if (specs.some(s => s.kind === 'gatehouse' && s.feature === 'tracing')) sink = await startSink()
  if (specs.some(s => s.kind === 'bare' && s.feature === 'tracing')) bareSink = await startSink()
  let redisChild: Child | undefined
  let redisUrl: string | undefined
  if (features.has('limit-redis')) {
    const port = await freePort()
    const dir = join(tempRoot, 'redis')
    await mkdir(dir)
    redisChild = children.spawn('redis-server', 'redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], { env: cleanEnv({}), cwd: dir, stdout: 'pipe' })
    await withTimeout('redis-server start', new Promise<void>((resolve, reject) => {
      const timer = setInterval(() => {
        if (redisChild?.tail.some(l => l.includes('Ready to accept connections')) === true) { clearInterval(timer); resolve() }
        if (redisChild !== undefined && !running(redisChild)) { clearInterval(timer); reject(new Error(`redis-server exited: ${redisChild.tail.join('\n')}`)) }
      }, 50)
    }), START_TIMEOUT_MS)
    redisUrl = `redis://127.0.0.1:${port}`
  }
  const routeDirs = new Map<Feature, string>()
  const shared: Shared = {
    upstreamUrl,
    logsDir,
    ...(redisUrl === undefined ? {} : { redisUrl }),
    routesDir: async feature => {
      let dir = routeDirs.get(feature)
      if (dir === undefined) {
        dir = join(tempRoot as string, `routes-${feature}`)
        await mkdir(dir)
        await writeFile(join(dir, 'bench.yaml'), routeFile(upstreamUrl, feature, issuer))
        routeDirs.set(feature, dir)
      }
      return dir
    }
  }

  const subjects: Subject[] = []
  for (const spec of specs) {
    progress(`start: ${spec.id}`)
    const cpu = await startInstance(spec, shared, 'cpu')
    const mem = spec.memory ? await startInstance(spec, shared, 'memory') : undefined
    const headers: Record<string, string> | undefined = spec.feature === 'jwt'
      ? { authorization: `Bearer ${(issuer as BenchIssuer).tokens[0] as string}` }
      : spec.feature === 'cors' ? { origin: 'https://app.example.com' } : spec.feature === 'affinity' ? { 'x-session': 'bench-session' } : undefined
    for (const instance of [cpu, ...(mem === undefined ? [] : [mem])]) await waitFor200(instance.child, instance.port, PATH, headers)
    let label = spec.label
    if (spec.kind === 'fast-gateway') label += ` ${peers['fast-gateway'] ?? ''}`
    if (spec.kind === 'http-proxy') label += ` ${peers['@fastify/http-proxy'] ?? ''}`
    subjects.push({ spec, label, cpu, ...(mem === undefined ? {} : { mem }), ...(headers === undefined ? {} : { headers }), warmups: [], cpuSamples: [], memorySamples: [], problems: [], notes: [] })
  }
  const alive = (): void => {
    for (const s of subjects) {
      for (const i of [s.cpu, s.mem]) if (i !== undefined && !running(i.child)) throw new Error(`${i.child.name} exited during the run (code ${i.child.proc.exitCode}, signal ${i.child.proc.signalCode}):\n${i.child.tail.join('\n')}`)
    }
  }

  for (const s of subjects) {
    for (const instance of [s.cpu, ...(s.mem === undefined ? [] : [s.mem])]) {
      const w = await load(s, instance, WARMUP_S)
      s.warmups.push(w)
      progress(`warm-up ${instance.child.name}: ${Math.round(w.rps)} req/s${w.failures > 0 ? `, ${w.failures} non-2xx or errors` : ''}`)
      await pause()
    }
  }

  const width = Math.max(...subjects.map(s => s.spec.id.length))
  for (let round = 1; round <= ROUNDS; round++) {
    for (let k = 0; k < subjects.length; k++) {
      const s = subjects[(k + round - 1) % subjects.length] as Subject
      alive()
      const sample = await cpuRound(s, round, s.spec.feature === 'limit-redis' ? redisChild?.pid : undefined)
      s.cpuSamples.push(sample)
      progress(`round ${round}/${ROUNDS} ${s.spec.id.padEnd(width)} ${fmt(sample.rps, 0).padStart(6)} req/s  p99 ${fmt(sample.p99Ms, 2)} ms  CPU ${fmt(sample.cpuUsPerReq, 1)} µs/req` +
        `${sample.redisCpuUsPerReq === undefined ? '' : ` (+ redis-server ${fmt(sample.redisCpuUsPerReq, 1)})`}` +
        `${sample.invalid ? `  INVALID: ${sample.non2xx} non-2xx, ${sample.socketErrors} socket errors` : ''}${sample.otherCores >= NOISY_CORES ? `  [others kept ${fmt(sample.otherCores, 2)} cores busy]` : ''}`)
      await pause()
    }
  }
  for (let round = 1; round <= MEMORY_ROUNDS; round++) {
    for (const s of subjects.filter(x => x.mem !== undefined)) {
      alive()
      const sample = await memoryRound(s, round)
      s.memorySamples.push(sample)
      progress(`memory ${round}/${MEMORY_ROUNDS} ${s.spec.id.padEnd(width)} ${fmt(sample.bytesPerReq, 0).padStart(7)} bytes/req  heap after scavenge ${fmt(sample.heapAfterScavengeMB, 1)} MB  GC ${fmt(sample.gcPercent, 1)} %` +
        `${sample.invalid ? `  INVALID: ${sample.non2xx} non-2xx, ${sample.socketErrors} socket errors` : ''}`)
      await pause()
    }
  }

  await checks(subjects)
  report({ machine, commit, peers, skipped, subjects })
}

/** A bare proxy's feature at work: the limiter's headers on an answer, spans at the sink. */
async function checkBareFeature (s: Subject): Promise<void> {
  const feature = s.spec.feature ?? 'none'
  if (feature === 'limit-memory' || feature === 'limit-redis') {
    const res = await fetch(`http://127.0.0.1:${s.cpu.port}${PATH}`, { signal: AbortSignal.timeout(5000) })
    await res.arrayBuffer()
    const limit = res.headers.get('x-ratelimit-limit')
    if (res.status !== 200 || limit !== String(LIMIT_MAX)) s.problems.push(`answered ${res.status} with x-ratelimit-limit ${String(limit)}, not 200 with ${LIMIT_MAX}`)
  }
  if (feature === 'tracing' && bareSink !== undefined) {
    const c = bareSink.counts()
    s.notes.push(`sink received ${fmt(c.spans, 0)} spans in ${c.exports} exports`)
    if (c.spans === 0) s.problems.push('no span reached the OTLP sink')
  }
  if (feature === 'log' && s.cpu.logFile !== undefined && (await stat(s.cpu.logFile)).size === 0) s.problems.push('its log file is empty')
}

/** What each feature must show besides 2xx answers, and what Gatehouse logged at warn or above. */
async function checks (subjects: Subject[]): Promise<void> {
  for (const s of subjects) {
    if (s.spec.kind === 'bare') await checkBareFeature(s)
    if (s.spec.kind !== 'gatehouse') continue
    const sent = [...s.warmups, ...s.cpuSamples, ...s.memorySamples].reduce((n, x) => n + x.requests, 0)
    if (s.spec.feature === 'limit-memory' || s.spec.feature === 'limit-redis') {
      let decisions = 0
      let storeErrors = 0
      let rejected = 0
      for (const i of [s.cpu, s.mem]) {
        if (i === undefined) continue
        const text = await withTimeout(`${i.child.name} /metrics`, scrape(i.port), 5000)
        decisions += total(text, 'rate_limiter_duration_seconds_count')
        storeErrors += total(text, 'rate_limiter_store_errors_total')
        rejected += total(text, 'rate_limiter_rejected_total')
      }
      s.notes.push(`limiter decisions ${fmt(decisions, 0)} for ${fmt(sent, 0)} requests counted by wrk; store errors ${storeErrors}; refused ${rejected}`)
      if (decisions < sent) s.problems.push(`the limiter decided ${decisions} times for ${sent} requests`)
      // A few timeouts (REDIS_TIMEOUT, 50 ms) on a busy machine change nothing; more would make it the memory limiter's figures.
      if (storeErrors > decisions * STORE_ERRORS_TOLERATED) s.problems.push(`${storeErrors} of ${decisions} decisions failed in Redis and were made in memory`)
      else if (storeErrors > 0) s.notes.push(`WARN: ${storeErrors} of ${fmt(decisions, 0)} decisions failed in Redis (timeouts on a busy machine) and were made in memory`)
      if (s.spec.feature === 'limit-redis') {
        const redis = s.cpuSamples.map(x => x.redisCpuUsPerReq).filter((x): x is number => x !== undefined)
        if (redis.length > 0) s.notes.push(`redis-server CPU ${fmt(median(redis), 1)} µs/req on top (median of the rounds)`)
      }
    }
    if (s.spec.feature === 'header-rules' || s.spec.feature === 'cors') {
      // The route's policy at work on an answer of the measured process.
      const res = await fetch(`http://127.0.0.1:${s.cpu.port}${PATH}`, { headers: s.headers ?? {}, signal: AbortSignal.timeout(5000) })
      await res.arrayBuffer()
      const [header, expected] = s.spec.feature === 'cors' ? ['access-control-allow-origin', 'https://app.example.com'] : ['x-gateway', 'bench']
      if (res.headers.get(header) !== expected) s.problems.push(`answered without ${header}: ${expected}`)
    }
    if (s.spec.feature === 'health-check') {
      // The probes ran beside the load, and passed: the target was never ejected.
      const text = await withTimeout(`${s.cpu.child.name} /metrics`, scrape(s.cpu.port), 5000)
      const passed = total(text, 'health_checks_total', { upstream: 'bench', result: 'pass' })
      s.notes.push(`probes passed during the run: ${passed}`)
      if (passed === 0) s.problems.push('no probe passed')
    }
    if (s.spec.feature === 'jwt' && issuer !== undefined) s.notes.push(`key set fetched ${issuer.fetches()} time(s) by its ${s.mem === undefined ? 1 : 2} process(es); one token for every request`)
    if (s.spec.feature === 'tracing' && sink !== undefined) {
      const c = sink.counts()
      s.notes.push(`sink received ${fmt(c.spans, 0)} spans in ${c.exports} exports for ${fmt(sent, 0)} requests (${fmt(c.spans / sent, 3)} per request; 0.2 expected at 10 %, minus those still batched)`)
      if (c.spans === 0) s.problems.push('no span reached the OTLP sink')
    }
    if (s.spec.stdout === 'drain') s.notes.push(`the runner drained ${fmt(children.drained / 1e6, 1)} MB of log from its pipes`)
    for (const i of [s.cpu, s.mem]) {
      if (i?.logFile === undefined) continue
      const size = (await stat(i.logFile)).size
      if (s.spec.logLevel === 'info') {
        // The CPU process's file: its warm-up (the first) and its rounds.
        const requests = [...s.warmups.slice(0, 1), ...s.cpuSamples].reduce((n, x) => n + x.requests, 0)
        if (i === s.cpu) s.notes.push(`access log ${fmt(size / 1e6, 1)} MB, ${fmt(size / Math.max(1, requests), 0)} bytes per request`)
      } else if (size > 0) {
        const lines = (await readFile(i.logFile, 'utf8')).split('\n').filter(l => l.trim() !== '')
        s.notes.push(`${i.child.name} logged ${lines.length} line(s) at warn or above: ${logSummary(lines)}`)
      }
    }
  }
}

// ---- output --------------------------------------------------------------------------------

/** Log lines grouped by message and error, e.g. `request errored: The client closed the connection x12`. */
function logSummary (lines: string[]): string {
  const groups = new Map<string, number>()
  for (const line of lines) {
    let key = line.length > 120 ? line.slice(0, 120) + '…' : line
    try {
      const entry = JSON.parse(line) as { msg?: unknown, err?: { message?: unknown } }
      if (typeof entry.msg === 'string') key = entry.msg + (typeof entry.err?.message === 'string' ? `: ${entry.err.message.slice(0, 100)}` : '')
    } catch {}
    groups.set(key, (groups.get(key) ?? 0) + 1)
  }
  return [...groups].map(([key, n]) => `${key} x${n}`).join('; ')
}

function fmt (n: number | null | undefined, digits: number): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return 'n/a'
  return n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
}

function plural (n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`
}

function ratio (a: number | null, b: number | null): number | null {
  return a === null || b === null || b === 0 ? null : a / b
}

/** The quartiles of a sample (linear interpolation), or null when it is empty. */
function quartiles (values: number[]): { q1: number, median: number, q3: number } | null {
  if (values.length === 0) return null
  const v = [...values].sort((a, b) => a - b)
  const at = (q: number): number => {
    const i = (v.length - 1) * q
    const lo = Math.floor(i)
    return (v[lo] as number) + ((v[Math.ceil(i)] as number) - (v[lo] as number)) * (i - lo)
  }
  return { q1: at(0.25), median: at(0.5), q3: at(0.75) }
}

/**
 * `f(subject, other)` of the CPU per request of both, round by round: the two were measured in
 * the same round, seconds apart, so a slow stretch of the machine weighs on both. Rounds where
 * either sample is invalid are left out.
 */
function pairedCpu (s: Subject, other: Subject, f: (a: number, b: number) => number): ReturnType<typeof quartiles> {
  const values: number[] = []
  for (const a of s.cpuSamples) {
    const b = other.cpuSamples.find(x => x.round === a.round)
    if (a.invalid || b === undefined || b.invalid) continue
    values.push(f(a.cpuUsPerReq, b.cpuUsPerReq))
  }
  return quartiles(values)
}

const ACCESS_LOG_ROW = 'Gatehouse (a) against (c): the access log; bare: Fastify\'s request log'

/** Each bare + package subject against bare, and the Gatehouse subject of the same feature with what it adds to (c). */
function floorRows (subjects: Subject[], bare: Subject, warn: Subject | undefined) {
  return subjects.filter(s => s.spec.kind === 'bare' && s !== bare).map(s => {
    const feature = s.spec.feature ?? 'none'
    const gatehouse = subjects.find(g => g.spec.kind === 'gatehouse' && (feature === 'log' ? g.spec.id === 'gatehouse' : g.spec.feature === feature))
    return {
      feature,
      alone: pairedCpu(s, bare, (a, b) => a - b),
      gatehouse,
      adds: gatehouse === undefined || warn === undefined ? null : pairedCpu(gatehouse, warn, (a, b) => a - b)
    }
  })
}

interface ReportInput {
  machine: object
  commit: string
  peers: PeerVersions
  skipped: string[]
  subjects: Subject[]
}

function report ({ machine, commit, peers, skipped, subjects }: ReportInput): void {
  const summaries = subjects.map(summarize)
  const bareSubject = subjects.find(s => s.spec.id === 'bare') as Subject
  const bare = summaries[subjects.indexOf(bareSubject)] as Summary
  const ratios = (x: Summary, s: Subject) => ({
    cpuUsPerReq: s === bareSubject ? 1 : pairedCpu(s, bareSubject, (a, b) => a / b)?.median ?? null,
    rps: ratio(x.rps, bare.rps),
    p99Ms: ratio(x.p99Ms, bare.p99Ms),
    bytesPerReq: ratio(x.bytesPerReq, bare.bytesPerReq)
  })
  // What a feature adds: (d)–(g) against (c), round by round.
  const warn = subjects.find(s => s.spec.id === 'gatehouse-warn')
  const invalid = subjects.flatMap(s => [
    ...[...s.cpuSamples, ...s.memorySamples].filter(x => x.invalid).map(x => `${s.spec.id}: ${'cpuUsPerReq' in x ? 'CPU' : 'memory'} round ${x.round}: ${x.non2xx} non-2xx, ${x.socketErrors} socket errors (left out of the medians)`),
    ...s.problems.map(p => `${s.spec.id}: ${p}`)
  ])
  // What receiving a body whole costs: (h) against (h2), round by round.
  const posted = subjects.find(s => s.spec.id === 'gatehouse-post')
  const streamed = subjects.find(s => s.spec.id === 'gatehouse-post-streamed')
  const buffering = posted === undefined || streamed === undefined ? undefined : pairedCpu(posted, streamed, (a, b) => a - b)
  const samples = subjects.flatMap(s => s.cpuSamples)
  const noisy = samples.filter(x => x.otherCores >= NOISY_CORES).length
  const noise = { otherCoresMedian: medianOf(samples.map(x => x.otherCores)), otherCoresMax: samples.length === 0 ? null : Math.max(...samples.map(x => x.otherCores)), noisySamples: noisy, samples: samples.length }
  const settings = { durationS: DURATION_S, connections: CONNECTIONS, rounds: ROUNDS, memoryRounds: MEMORY_ROUNDS, warmupS: WARMUP_S, path: PATH, pool: POOL, wrkThreads: 1, rateLimit: { max: LIMIT_MAX, window: LIMIT_WINDOW }, traceSampleRatio: Number(TRACE_SAMPLE_RATIO) }
  if (JSON_OUTPUT) {
    const out = {
      date: new Date().toISOString(),
      commit,
      machine,
      settings,
      peers: { dir: PEERS_DIR, versions: peers },
      skipped,
      subjects: subjects.map((s, i) => ({
        id: s.spec.id,
        label: s.label,
        summary: summaries[i],
        vsBare: ratios(summaries[i] as Summary, s),
        addsToWarn: warn === undefined || s === warn || s.spec.kind !== 'gatehouse' || (s.spec.feature === 'none' && s.spec.identicalTo === undefined) ? undefined : pairedCpu(s, warn, (a, b) => a - b),
        cpuRounds: s.cpuSamples,
        memoryRounds: s.memorySamples,
        warmups: s.warmups.map(w => ({ rps: w.rps, requests: w.requests, failures: w.failures })),
        notes: s.notes,
        problems: s.problems
      })),
      floors: floorRows(subjects, bareSubject, warn).map(f => ({ feature: f.feature, alone: f.alone, gatehouse: f.gatehouse?.spec.id, adds: f.adds })),
      requestBuffering: buffering,
      noise,
      invalid,
      valid: invalid.length === 0
    }
    process.stdout.write(JSON.stringify(out, null, 2) + '\n')
  } else {
    const x = (n: number | null) => n === null ? '–' : `${fmt(n, 2)}`
    const dash = (n: number | null, digits: number) => n === null ? '–' : fmt(n, digits)
    const lines: string[] = []
    lines.push(`Gatehouse bench, ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC, commit ${commit}; node ${process.version}, ${os.availableParallelism()} cores`)
    lines.push('')
    lines.push('| proxy | CPU µs/req | × bare | req/s | × bare | p99 ms | × bare | bytes/req | × bare | heap after scavenge MB | GC % of wall |')
    lines.push('|---|---|---|---|---|---|---|---|---|---|---|')
    subjects.forEach((s, i) => {
      const m = summaries[i] as Summary
      const q = ratios(m, s)
      const flag = s.problems.length > 0 || s.cpuSamples.some(c => c.invalid) || s.memorySamples.some(c => c.invalid) ? ' ⚠' : ''
      lines.push(`| ${s.label}${flag} | ${dash(m.cpuUsPerReq, 1)} | ${x(q.cpuUsPerReq)} | ${dash(m.rps, 0)} | ${x(q.rps)} | ${dash(m.p99Ms, 2)} | ${x(q.p99Ms)} | ${dash(m.bytesPerReq, 0)} | ${x(q.bytesPerReq)} | ${dash(m.heapAfterScavengeMB, 1)} | ${dash(m.gcPercent, 1)} |`)
    })
    if (warn !== undefined) {
      const added = subjects.filter(s => s.spec.kind === 'gatehouse' && (s.spec.feature !== 'none' || s.spec.identicalTo === warn.spec.id))
      const floors = floorRows(subjects, bareSubject, warn)
      if (added.length > 0) {
        lines.push('')
        lines.push(`What each feature adds, CPU µs/req, round by round (median, middle half of the rounds): to ${warn.label.replace(/^Gatehouse /, '')}, and, for the package behind it alone, to the bare proxy; (c2), identical to (c), shows what no change at all reads as in this run:`)
        lines.push('')
        lines.push('| variant | adds µs/req | middle half | adds % | the package alone: adds to bare | middle half |')
        lines.push('|---|---|---|---|---|---|')
        const cell = (d: ReturnType<typeof quartiles> | undefined) => d === undefined ? ' | ' : d === null ? '– | –' : `${fmt(d.median, 1)} | ${fmt(d.q1, 1)} to ${fmt(d.q3, 1)}`
        for (const s of added) {
          const r = pairedCpu(s, warn, (a, b) => (a / b - 1) * 100)
          const floor = floors.find(f => f.gatehouse === s)
          lines.push(`| ${s.label} | ${cell(pairedCpu(s, warn, (a, b) => a - b))} | ${r === null ? '–' : fmt(r.median, 0)} | ${cell(floor?.alone)} |`)
        }
        const access = floors.find(f => f.feature === 'log')
        if (access !== undefined) lines.push(`| ${ACCESS_LOG_ROW} | ${cell(access.adds)} | | ${cell(access.alone)} |`)
      }
    }
    if (buffering !== undefined) {
      lines.push('')
      lines.push(`Receiving a ${POST_BYTES / 1024} KB body whole before asking a target, (h) − (h2) round by round: ${buffering === null ? '–' : `${fmt(buffering.median, 1)} µs/req (middle half ${fmt(buffering.q1, 1)} to ${fmt(buffering.q3, 1)})`}.`)
    }
    lines.push('')
    lines.push(`Method: wrk -t1 -c${CONNECTIONS}, ${plural(ROUNDS, 'round')} of ${DURATION_S} s after a ${WARMUP_S} s warm-up per process, interleaved (each round runs every proxy once, the order rotated by one each round); medians; × bare = ratio to the bare Fastify + reply-from proxy of this run (CPU: the median of the per-round ratios, each of two samples taken seconds apart).`)
    lines.push('CPU µs/req = utime+stime of the proxy process (/proc/<pid>/stat, all its threads; nginx: its worker) over the requests wrk counted; req/s and p99 from wrk; a sample with any non-2xx answer or socket error is invalid and left out.')
    lines.push(`bytes/req, heap, GC: a second process of each (same configuration) with bench/gc-probe.js preloaded (V8's GCProfiler), ${plural(MEMORY_ROUNDS, 'round')} after the CPU rounds: V8-heap bytes allocated (Σ used before each GC − used after the previous one) per request; heap used after a scavenge (median); GC pauses / wall time.`)
    lines.push(`Upstream: node:http JSON server, own process; every proxy pools ${POOL} keep-alive connections to it. Gatehouse: one route /bench; (d)–(g) are (c) plus one feature (rate limit max ${fmt(LIMIT_MAX, 0)}/${LIMIT_WINDOW}, never spent; JWT RS256, one token; tracing parentbased_traceidratio ${TRACE_SAMPLE_RATIO}).`)
    const notes = [...skipped, ...subjects.flatMap(s => s.notes.map(n => `${s.spec.id}: ${n}`))]
    if (noise.otherCoresMedian !== null) notes.push(`noise: other processes kept ${fmt(noise.otherCoresMedian, 2)} cores busy (median of the samples, max ${fmt(noise.otherCoresMax, 2)}); ${noisy} of ${samples.length} samples had ≥ ${NOISY_CORES} cores taken${noisy > 0 ? ': read those ratios with care' : ''}`)
    if (notes.length > 0) {
      lines.push('')
      for (const n of notes) lines.push(`- ${n}`)
    }
    if (invalid.length > 0) {
      lines.push('')
      lines.push('INVALID samples or subjects:')
      for (const n of invalid) lines.push(`- ${n}`)
    }
    process.stdout.write(lines.join('\n') + '\n')
  }
  if (invalid.length > 0) {
    process.stderr.write(`bench: ${invalid.length} invalid sample(s) or check(s): see above\n`)
    process.exitCode = 1
  }
}

// ---- bounds and cleanup --------------------------------------------------------------------

let cleaning: Promise<void> | undefined

async function cleanup (): Promise<void> {
  cleaning ??= (async () => {
    npmInstall?.()
    await children.stopAll()
    await issuer?.close()
    await sink?.close()
    await bareSink?.close()
    if (tempRoot !== undefined) await rm(tempRoot, { recursive: true, force: true })
  })()
  return await cleaning
}

/** The whole run is bounded: planned time plus a margin (the peers' install has a bound of its own on top). */
function armDeadline (plannedS: number): void {
  const limitS = plannedS + 120 + 240
  const timer = setTimeout(() => {
    progress(`bench: still running after ${limitS} s, giving up`)
    cleanup().finally(() => process.exit(1))
  }, limitS * 1000)
  timer.unref()
}

process.on('exit', () => { npmInstall?.(); children.killAll() })
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    progress(`bench: ${signal}, stopping everything it started`)
    cleanup().finally(() => process.exit(130))
  })
}

try {
  if (selected().length > 0) await main()
  for (const name of protocolsWanted()) console.log(`\n${await (PROTOCOLS[name] as (o: RoundOptions) => Promise<string>)({ rounds: ROUNDS, durationS: DURATION_S, progress })}`)
} catch (err) {
  progress(`bench: ${(err as Error).message}`)
  process.exitCode = 1
} finally {
  await cleanup()
}
