// npm run bench: how much does Gatehouse cost over a bare @fastify/reply-from proxy, and over
// calling the upstream directly? And what does one dead target of three cost it? Real processes
// on 127.0.0.1, autocannon as the load generator (in this process), interleaved rounds, medians.
// The fourth path is a second Gatehouse whose upstream has three targets: the bench upstream, a
// second one like it, and a port nothing listens on (connections refused). Default retry and
// circuitBreaker settings (openFor 5s): the dead target's first failures are retried onto the
// live ones, then its breaker opens and lets one probe through every 5 s.
//   BENCH_DURATION=10 BENCH_CONNECTIONS=50 BENCH_ROUNDS=3 npm run bench [-- --json]
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import type { EventEmitter } from 'node:events'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import net from 'node:net'
import os from 'node:os'
import { join, resolve } from 'node:path'
import { createInterface } from 'node:readline'
import { freePort, httpStatus } from '../scripts/loopback.js'
import { samples, scrape, total } from './metrics.js'

// ---- autocannon (it ships no types: the part used here) ------------------------------------

interface AutocannonOptions {
  url: string
  connections: number
  pipelining: number
  duration: number
  timeout: number
}
interface AutocannonResult {
  duration: number
  errors: number
  timeouts: number
  non2xx: number
  statusCodeStats: Record<string, { count: number }>
  requests: { total: number }
}
interface AutocannonInstance extends EventEmitter {
  stop: () => void
}
type Autocannon = (opts: AutocannonOptions, cb: (err: Error | null, result: AutocannonResult) => void) => AutocannonInstance

// createRequire's require() returns any; autocannon is CommonJS without types, shape declared above.
const autocannon = createRequire(import.meta.url)('autocannon') as Autocannon

// ---- settings ------------------------------------------------------------------------------

function positiveInt (name: string, fallback: number): number {
  const text = process.env[name]
  if (text === undefined || text === '') return fallback
  const n = Number(text)
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${name} must be a positive integer, got "${text}"`)
  return n
}

const ROOT = resolve(import.meta.dirname, '..', '..')
const JSON_OUTPUT = process.argv.includes('--json')
const DURATION_S = positiveInt('BENCH_DURATION', 10)
const CONNECTIONS = positiveInt('BENCH_CONNECTIONS', 50)
const ROUNDS = positiveInt('BENCH_ROUNDS', 3)
const WARMUP_S = 2
const PIPELINING = 1
const PATH = '/bench/items?page=1'
// The gateway's target cap and the bare proxy's pool: far above the load, so neither trips.
const POOL_CONNECTIONS = Math.max(128, CONNECTIONS * 2)
const START_TIMEOUT_MS = 15_000
const SUBJECTS = 4
// Everything is bounded: the whole run is killed if it takes much longer than planned.
const PLANNED_S = ROUNDS * SUBJECTS * (DURATION_S + 1) + SUBJECTS * (WARMUP_S + 1)
// The failing-target path: its upstream's name and the breaker's open time (the default, written out).
const FAILING_UPSTREAM = 'bench-one-down'
const OPEN_FOR = '5s'
const DEADLINE_MS = (PLANNED_S + 60) * 1000

const log = (line: string): void => { (JSON_OUTPUT ? process.stderr : process.stdout).write(line + '\n') }

// ---- child processes -----------------------------------------------------------------------

interface Child {
  name: string
  proc: ChildProcess
  exited: Promise<void>
  output: string[]
  /** Resolves with the first stdout line that is a JSON object with a port. */
  port: Promise<number>
}

const children: Child[] = []

function startChild (name: string, script: string, args: string[], env: Record<string, string>, cwd = ROOT): Child {
  const proc = spawn(process.execPath, [script, ...args], {
    cwd,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const output: string[] = []
  const exited = new Promise<void>(resolve => proc.once('exit', () => resolve()))
  const port = new Promise<number>((resolve, reject) => {
    createInterface({ input: proc.stdout! }).on('line', line => {
      output.push(line)
      try {
        const parsed = JSON.parse(line) as { port?: unknown }
        if (typeof parsed.port === 'number') resolve(parsed.port)
      } catch {}
    })
    exited.then(() => reject(new Error(`${name} exited (code ${proc.exitCode}, signal ${proc.signalCode}):\n${output.slice(-20).join('\n')}`)))
  })
  port.catch(() => {})
  createInterface({ input: proc.stderr! }).on('line', line => output.push(line))
  const child = { name, proc, exited, output, port }
  children.push(child)
  return child
}

function running (child: Child): boolean {
  return child.proc.exitCode === null && child.proc.signalCode === null
}

async function stopChildren (): Promise<void> {
  const live = children.filter(running)
  for (const c of live) c.proc.kill('SIGTERM')
  const timer = setTimeout(() => { for (const c of live.filter(running)) c.proc.kill('SIGKILL') }, 3000)
  await Promise.all(live.map(c => c.exited))
  clearTimeout(timer)
}

// Last resort (uncaught error, process.exit from elsewhere): no child outlives the runner.
process.on('exit', () => { for (const c of children.filter(running)) c.proc.kill('SIGKILL') })

/** Whether a TCP connect to 127.0.0.1:<port> is refused (nothing listening). */
function refuses (port: number): Promise<boolean> {
  return new Promise(resolve => {
    const socket = net.connect({ host: '127.0.0.1', port, timeout: 1000 })
    socket.once('connect', () => { socket.destroy(); resolve(false) })
    socket.once('timeout', () => { socket.destroy(); resolve(false) })
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED'))
  })
}

async function waitFor200 (child: Child, port: number, path: string): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS
  while (Date.now() < deadline) {
    if (!running(child)) throw new Error(`${child.name} exited while starting:\n${child.output.slice(-20).join('\n')}`)
    try {
      if (await httpStatus(port, path) === 200) return
    } catch {}
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  throw new Error(`${child.name} did not answer 200 on ${path} within ${START_TIMEOUT_MS / 1000} s:\n${child.output.slice(-20).join('\n')}`)
}

async function withTimeout<T> (what: string, promise: Promise<T>, ms = START_TIMEOUT_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms / 1000} s`)), ms)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

// ---- measuring -----------------------------------------------------------------------------

const CLK_TCK = (() => {
  try {
    const n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim())
    return Number.isInteger(n) && n > 0 ? n : 100
  } catch {
    return 100
  }
})()

/** utime + stime of a process in µs, or undefined where /proc is not available. */
async function cpuMicros (pid: number): Promise<number | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
    // Fields after "(comm)": state is field 3, utime field 14, stime field 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11]) + Number(fields[12])) * (1e6 / CLK_TCK)
  } catch {
    return undefined
  }
}

interface Sample {
  rps: number
  p50: number
  p99: number
  cpuUsPerReq: number | undefined
  requests: number
  /** Non-2xx responses, socket errors and timeouts: any makes the run invalid. */
  failures: number
  statusCodes: Record<string, number>
}

function percentile (sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))] as number
}

async function load (url: string, durationS: number, cpuPid: number): Promise<Sample> {
  // autocannon's own histogram keeps whole milliseconds; keep every latency for sub-ms percentiles.
  let latencies = new Float64Array(1 << 16)
  let n = 0
  const cpuBefore = await cpuMicros(cpuPid)
  const result = await new Promise<AutocannonResult>((resolve, reject) => {
    const instance = autocannon({ url, connections: CONNECTIONS, pipelining: PIPELINING, duration: durationS, timeout: 10 }, (err, res) => {
      if (err !== null) reject(err)
      else resolve(res)
    })
    instance.on('response', (_client: unknown, _status: number, _bytes: number, ms: number) => {
      if (n === latencies.length) {
        const bigger = new Float64Array(latencies.length * 2)
        bigger.set(latencies)
        latencies = bigger
      }
      latencies[n++] = ms
    })
  })
  const cpuAfter = await cpuMicros(cpuPid)
  const sorted = latencies.subarray(0, n).sort()
  const requests = result.requests.total
  const statusCodes: Record<string, number> = {}
  for (const [code, { count }] of Object.entries(result.statusCodeStats)) statusCodes[code] = count
  return {
    rps: requests / result.duration,
    p50: percentile(sorted, 0.5),
    p99: percentile(sorted, 0.99),
    cpuUsPerReq: cpuBefore !== undefined && cpuAfter !== undefined && requests > 0 ? (cpuAfter - cpuBefore) / requests : undefined,
    requests,
    failures: result.non2xx + result.errors + result.timeouts,
    statusCodes
  }
}

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid] as number : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2
}

// ---- the run -------------------------------------------------------------------------------

interface Subject {
  name: string
  url: string
  /** The process whose CPU time is counted: the proxy, or the upstream for "direct". */
  pid: number
  samples: Sample[]
  /** Whether the warm-up's failures count too (the failing-target path: its breaker opens there). */
  countWarmup: boolean
  warmup?: Sample
}

interface Summary {
  rps: number
  p50: number
  p99: number
  cpuUsPerReq: number | null
  requests: number
  failures: number
  statusCodes: Record<string, number>
}

function summarize (subject: Subject): Summary {
  const cpu = subject.samples.map(s => s.cpuUsPerReq)
  const statusCodes: Record<string, number> = {}
  for (const s of subject.samples) {
    for (const [code, count] of Object.entries(s.statusCodes)) statusCodes[code] = (statusCodes[code] ?? 0) + count
  }
  return {
    rps: median(subject.samples.map(s => s.rps)),
    p50: median(subject.samples.map(s => s.p50)),
    p99: median(subject.samples.map(s => s.p99)),
    cpuUsPerReq: cpu.every(c => c !== undefined) ? median(cpu as number[]) : null,
    requests: subject.samples.reduce((sum, s) => sum + s.requests, 0),
    failures: subject.samples.reduce((sum, s) => sum + s.failures, 0),
    statusCodes
  }
}

/** The requests and failures that count for a subject: its rounds, plus its warm-up where that counts. */
function counted (subject: Subject, summary: Summary): { requests: number, failures: number, statusCodes: Record<string, number> } {
  const w = subject.countWarmup ? subject.warmup : undefined
  if (w === undefined) return summary
  const statusCodes = { ...summary.statusCodes }
  for (const [code, count] of Object.entries(w.statusCodes)) statusCodes[code] = (statusCodes[code] ?? 0) + count
  return { requests: summary.requests + w.requests, failures: summary.failures + w.failures, statusCodes }
}

/** What the failing-target gateway's /metrics say about its dead target after the run. */
interface DeadTargetReport {
  target: string
  /** upstream_retries_total of the upstream, by reason (only the dead target fails, so these are its). */
  retries: Record<string, number>
  /** circuit_breaker_transitions_total of the dead target, by the state entered. */
  transitions: Record<string, number>
  /** upstream_requests_total of the dead target, by outcome. */
  tries: Record<string, number>
  /** upstream_requests_total of the live targets together, by outcome other than ok ("aborted": the client left mid-request, as autocannon does when a run ends). */
  liveTargetsNotOk: Record<string, number>
  /** upstream_retry_budget_exhausted_total of the upstream. */
  budgetExhausted: number
  /** circuit_breaker_state of the dead target at the end: 0 closed, 1 open, 2 half-open. */
  state: number | null
  /** Lines the gateway logged at warn or above: breaker transitions, and anything else. */
  breakerLogLines: number
  otherLogLines: string[]
}

function deadTargetReport (text: string, target: string, output: string[]): DeadTargetReport {
  const byLabel = (name: string, label: string, match: Record<string, string>): Record<string, number> => {
    const out: Record<string, number> = {}
    for (const s of samples(text, name)) {
      if (!Object.entries(match).every(([k, v]) => s.labels[k] === v)) continue
      const key = s.labels[label] ?? ''
      out[key] = (out[key] ?? 0) + s.value
    }
    return out
  }
  const upstream = { upstream: FAILING_UPSTREAM }
  const liveTargetsNotOk: Record<string, number> = {}
  for (const s of samples(text, 'upstream_requests_total')) {
    if (s.labels.upstream !== FAILING_UPSTREAM || s.labels.target === target || s.labels.outcome === 'ok') continue
    const outcome = s.labels.outcome ?? ''
    liveTargetsNotOk[outcome] = (liveTargetsNotOk[outcome] ?? 0) + s.value
  }
  const state = samples(text, 'circuit_breaker_state').find(s => s.labels.upstream === FAILING_UPSTREAM && s.labels.target === target)
  const lines = output.filter(line => line.trim() !== '')
  const breakerLines = lines.filter(line => line.includes('circuit breaker state changed'))
  return {
    target,
    retries: byLabel('upstream_retries_total', 'reason', upstream),
    transitions: byLabel('circuit_breaker_transitions_total', 'to', { ...upstream, target }),
    tries: byLabel('upstream_requests_total', 'outcome', { ...upstream, target }),
    liveTargetsNotOk,
    budgetExhausted: total(text, 'upstream_retry_budget_exhausted_total', upstream),
    state: state === undefined ? null : state.value,
    breakerLogLines: breakerLines.length,
    otherLogLines: lines.filter(line => !line.includes('circuit breaker state changed'))
  }
}

async function main (): Promise<void> {
  const machine = {
    node: process.version,
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    cpu: os.cpus()[0]?.model.trim() ?? 'unknown',
    cores: os.availableParallelism(),
    memoryGiB: Math.round(os.totalmem() / 2 ** 30 * 10) / 10,
    loadavg: os.loadavg().map(l => Math.round(l * 100) / 100)
  }
  const settings = { durationS: DURATION_S, connections: CONNECTIONS, pipelining: PIPELINING, rounds: ROUNDS, warmupS: WARMUP_S, path: PATH, failingTarget: { targets: 3, dead: 1, retry: 'defaults', circuitBreaker: `defaults, openFor ${OPEN_FOR}` } }
  log(`machine: node ${machine.node}, ${machine.cores} cores (${machine.cpu}), ${machine.platform}, ${machine.memoryGiB} GiB, load ${machine.loadavg.join(' ')}`)
  log(`settings: ${DURATION_S} s x ${ROUNDS} rounds per path (${SUBJECTS} paths), ${CONNECTIONS} connections, pipelining ${PIPELINING}, ${WARMUP_S} s warm-up; about ${Math.ceil(PLANNED_S / 10) * 10} s`)

  const upstream = startChild('upstream', join(ROOT, 'dist', 'bench', 'upstream.js'), [], { PORT: '0', HOST: '127.0.0.1' })
  const upstream2 = startChild('upstream 2', join(ROOT, 'dist', 'bench', 'upstream.js'), [], { PORT: '0', HOST: '127.0.0.1' })
  const upstreamPort = await withTimeout('upstream', upstream.port)
  const upstream2Port = await withTimeout('upstream 2', upstream2.port)
  const upstreamUrl = `http://127.0.0.1:${upstreamPort}`
  // The dead target: a port that was free a moment ago; checked to refuse before the run.
  const deadPort = await freePort()
  const deadUrl = `http://127.0.0.1:${deadPort}`

  const bare = startChild('bare reply-from', join(ROOT, 'dist', 'bench', 'bare-proxy.js'), [], {
    PORT: '0', HOST: '127.0.0.1', UPSTREAM: upstreamUrl, CONNECTIONS: String(POOL_CONNECTIONS)
  })
  const barePort = await withTimeout('bare proxy', bare.port)

  const routesDir = await mkdtemp(join(os.tmpdir(), 'gatehouse-bench-'))
  const failingDir = await mkdtemp(join(os.tmpdir(), 'gatehouse-bench-one-down-'))
  try {
    await writeFile(join(routesDir, 'bench.yaml'), [
      'name: bench',
      'targets:',
      `  - url: ${upstreamUrl}`,
      `    maxConnections: ${POOL_CONNECTIONS}`,
      'routes:',
      '  - path: /bench',
      ''
    ].join('\n'))
    // No retry key: the defaults. circuitBreaker: only openFor, at its default, written out.
    await writeFile(join(failingDir, 'bench.yaml'), [
      `name: ${FAILING_UPSTREAM}`,
      'targets:',
      ...[upstreamUrl, `http://127.0.0.1:${upstream2Port}`, deadUrl].flatMap(url => [`  - url: ${url}`, `    maxConnections: ${POOL_CONNECTIONS}`]),
      'routes:',
      '  - path: /bench',
      'circuitBreaker:',
      `  openFor: ${OPEN_FOR}`,
      ''
    ].join('\n'))
    const gatewayEnv = { HOST: '127.0.0.1', LOG_LEVEL: 'warn', WATCH_ROUTES: 'false' }
    const gatewayPort = await freePort()
    const gateway = startChild('gatehouse', join(ROOT, 'dist', 'src', 'cli.js'), ['start'], {
      ...gatewayEnv, PORT: String(gatewayPort), ROUTES_DIR: routesDir
    }, routesDir)
    const failingPort = await freePort()
    const failing = startChild('gatehouse, 1 of 3 targets down', join(ROOT, 'dist', 'src', 'cli.js'), ['start'], {
      ...gatewayEnv, PORT: String(failingPort), ROUTES_DIR: failingDir
    }, failingDir)

    await waitFor200(upstream, upstreamPort, PATH)
    await waitFor200(upstream2, upstream2Port, PATH)
    await waitFor200(bare, barePort, PATH)
    await waitFor200(gateway, gatewayPort, '/ready')
    await waitFor200(gateway, gatewayPort, PATH)
    // Only /ready: the first proxied request to this one is its warm-up, whose failures count.
    await waitFor200(failing, failingPort, '/ready')
    if (!await refuses(deadPort)) throw new Error(`the dead target's port ${deadPort} does not refuse connections; run again`)

    const subjects: Subject[] = [
      { name: 'direct', url: upstreamUrl + PATH, pid: upstream.proc.pid as number, samples: [], countWarmup: false },
      { name: 'bare reply-from', url: `http://127.0.0.1:${barePort}${PATH}`, pid: bare.proc.pid as number, samples: [], countWarmup: false },
      { name: 'gatehouse', url: `http://127.0.0.1:${gatewayPort}${PATH}`, pid: gateway.proc.pid as number, samples: [], countWarmup: false },
      { name: 'gatehouse 1/3 down', url: `http://127.0.0.1:${failingPort}${PATH}`, pid: failing.proc.pid as number, samples: [], countWarmup: true }
    ]
    const width = Math.max(...subjects.map(s => s.name.length))

    for (const s of subjects) {
      const warm = await load(s.url, WARMUP_S, s.pid)
      s.warmup = warm
      log(`warm-up ${s.name}: ${Math.round(warm.rps)} req/s${warm.failures > 0 ? `, ${warm.failures} failures ${JSON.stringify(warm.statusCodes)}` : ''}`)
    }
    for (let round = 1; round <= ROUNDS; round++) {
      for (const s of subjects) {
        for (const c of children) {
          if (!running(c)) throw new Error(`${c.name} exited during the run:\n${c.output.slice(-20).join('\n')}`)
        }
        const sample = await load(s.url, DURATION_S, s.pid)
        s.samples.push(sample)
        log(`round ${round}/${ROUNDS} ${s.name.padEnd(width)} ${fmt(sample.rps, 0).padStart(7)} req/s  p50 ${fmt(sample.p50, 2)} ms  p99 ${fmt(sample.p99, 2)} ms  CPU ${sample.cpuUsPerReq === undefined ? 'n/a' : fmt(sample.cpuUsPerReq, 1)} µs/req${sample.failures > 0 ? `  FAILURES ${sample.failures} ${JSON.stringify(sample.statusCodes)}` : ''}`)
      }
    }
    const dead = deadTargetReport(await withTimeout('failing-target gateway /metrics', scrape(failingPort)), deadUrl, failing.output)
    const warnings = gateway.output.filter(line => line.trim() !== '')
    report(machine, settings, subjects, warnings, dead)
  } finally {
    await rm(routesDir, { recursive: true, force: true })
    await rm(failingDir, { recursive: true, force: true })
  }
}

/** Log lines grouped by message and error code, e.g. `response errored (AbortError) x74`; lines that are not JSON shown cut short. */
function logSummary (lines: string[]): string {
  const groups = new Map<string, number>()
  for (const line of lines) {
    let key = line.length > 160 ? line.slice(0, 160) + '…' : line
    try {
      const entry = JSON.parse(line) as { msg?: unknown, err?: { code?: unknown, name?: unknown } }
      // A DOMException's code is a number: its name says more.
      const code = typeof entry.err?.code === 'string' ? entry.err.code : entry.err?.name
      if (typeof entry.msg === 'string') key = entry.msg + (typeof code === 'string' ? ` (${code})` : '')
    } catch {}
    groups.set(key, (groups.get(key) ?? 0) + 1)
  }
  return [...groups].map(([key, n]) => `${key} x${n}`).join('; ')
}

function fmt (n: number | null | undefined, digits: number): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return 'n/a'
  return n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
}

function ratio (a: number | null, b: number | null): number | null {
  return a === null || b === null || b === 0 ? null : a / b
}

function report (machine: object, settings: object, subjects: Subject[], gatewayOutput: string[], dead: DeadTargetReport): void {
  const summaries = subjects.map(summarize)
  const [direct, bare, gatehouse, oneDown] = summaries as [Summary, Summary, Summary, Summary]
  const rows = subjects.map((s, i) => ({ name: s.name, ...summaries[i] as Summary, ...counted(s, summaries[i] as Summary) }))
  const ratios = (s: Summary) => ({
    rps: { direct: ratio(s.rps, direct.rps), bare: ratio(s.rps, bare.rps) },
    p50: { direct: ratio(s.p50, direct.p50), bare: ratio(s.p50, bare.p50) },
    p99: { direct: ratio(s.p99, direct.p99), bare: ratio(s.p99, bare.p99) },
    cpuUsPerReq: { direct: ratio(s.cpuUsPerReq, direct.cpuUsPerReq), bare: ratio(s.cpuUsPerReq, bare.cpuUsPerReq) }
  })
  const throughputRatio = ratio(gatehouse.rps, bare.rps)
  const p99Ratio = ratio(gatehouse.p99, bare.p99)
  const oneDownRow = rows[3] as (typeof rows)[number]
  const goals = {
    throughput: { ratio: throughputRatio, limit: 0.9, pass: throughputRatio !== null && throughputRatio >= 0.9 },
    p99: { ratio: p99Ratio, limit: 1.2, pass: p99Ratio !== null && p99Ratio <= 1.2 },
    // Not a speed goal: with one target of three refusing connections, no client sees an error.
    failingTarget: {
      errors: oneDownRow.failures,
      requests: oneDownRow.requests,
      pass: oneDownRow.failures === 0,
      throughputVsGatehouse: ratio(oneDown.rps, gatehouse.rps),
      p99VsGatehouse: ratio(oneDown.p99, gatehouse.p99),
      cpuVsGatehouse: ratio(oneDown.cpuUsPerReq, gatehouse.cpuUsPerReq)
    }
  }
  // The healthy paths must not fail at all; the failing-target path's errors are its goal above.
  const failures = rows.slice(0, 3).filter(r => r.failures > 0)
  const valid = failures.length === 0

  if (JSON_OUTPUT) {
    const results = Object.fromEntries(rows.map((r, i) => [r.name, { ...r, name: undefined, ratios: ratios(r), warmup: subjects[i]?.warmup, rounds: subjects[i]?.samples }]))
    console.log(JSON.stringify({ machine, settings, results, goals, deadTarget: dead, valid, gatewayOutput }, null, 2))
  } else {
    const x = (n: number | null) => n === null ? 'n/a' : `${fmt(n, 2)}x`
    const header = ['', 'req/s', 'x direct', 'x bare', 'p50 ms', 'x direct', 'x bare', 'p99 ms', 'x direct', 'x bare', 'CPU µs/req', 'x direct', 'x bare', 'non-2xx/err']
    const lines = rows.map(r => {
      const q = ratios(r)
      return [
        r.name,
        fmt(r.rps, 0), x(q.rps.direct), x(q.rps.bare),
        fmt(r.p50, 2), x(q.p50.direct), x(q.p50.bare),
        fmt(r.p99, 2), x(q.p99.direct), x(q.p99.bare),
        fmt(r.cpuUsPerReq, 1), x(q.cpuUsPerReq.direct), x(q.cpuUsPerReq.bare),
        String(r.failures)
      ]
    })
    const widths = header.map((h, i) => Math.max(h.length, ...lines.map(l => (l[i] as string).length)))
    const row = (cells: string[]) => cells.map((c, i) => i === 0 ? c.padEnd(widths[i] as number) : c.padStart(widths[i] as number)).join('  ')
    const counts = (o: Record<string, number>) => Object.keys(o).length === 0 ? 'none' : Object.entries(o).map(([k, v]) => `${k} ${fmt(v, 0)}`).join(', ')
    const fg = goals.failingTarget
    console.log('')
    console.log(`medians of ${ROUNDS} rounds; CPU = utime+stime of the proxy process (for direct: the upstream) per request`)
    console.log(`"${oneDownRow.name}": Gatehouse, upstream of 3 targets (2 like direct's, 1 refusing connections), default retry and circuitBreaker (openFor ${OPEN_FOR}); its non-2xx/err includes its warm-up, when the dead target's breaker first opens`)
    console.log(row(header))
    for (const l of lines) console.log(row(l))
    console.log('')
    console.log(`${goals.throughput.pass ? 'PASS' : 'FAIL'}  throughput: gatehouse ${x(throughputRatio)} of bare reply-from (goal >= 0.90x)`)
    console.log(`${goals.p99.pass ? 'PASS' : 'FAIL'}  p99 latency: gatehouse ${x(p99Ratio)} of bare reply-from (goal <= 1.20x)`)
    console.log(`${fg.pass ? 'PASS' : 'FAIL'}  one target of three down: ${fmt(fg.errors, 0)} non-2xx/errors in ${fmt(fg.requests, 0)} requests${fg.pass ? '' : ` ${JSON.stringify(oneDownRow.statusCodes)}`} (goal 0); throughput ${x(fg.throughputVsGatehouse)}, p99 ${x(fg.p99VsGatehouse)}, CPU ${x(fg.cpuVsGatehouse)} of healthy gatehouse`)
    console.log(`      dead target ${dead.target}, from /metrics after the run:`)
    console.log(`        upstream_retries_total{upstream="${FAILING_UPSTREAM}"} by reason: ${counts(dead.retries)}`)
    console.log(`        circuit_breaker_transitions_total by state entered: ${counts(dead.transitions)}; state at the end: ${dead.state === null ? 'n/a' : ['closed', 'open', 'half-open'][dead.state] ?? dead.state}`)
    console.log(`        upstream_requests_total (tries sent to it) by outcome: ${counts(dead.tries)}; live targets' non-ok tries: ${counts(dead.liveTargetsNotOk)}; retry budget exhausted: ${fmt(dead.budgetExhausted, 0)}`)
    if (gatewayOutput.length > 0) console.log(`gatehouse logged ${gatewayOutput.length} line(s) at warn or above: ${logSummary(gatewayOutput)}`)
    console.log(`${oneDownRow.name} logged ${dead.breakerLogLines} breaker transition(s) at warn (openings)${dead.otherLogLines.length > 0 ? ` and ${dead.otherLogLines.length} other line(s) at warn or above: ${logSummary(dead.otherLogLines)}` : ''}`)
  }
  if (!valid) {
    for (const r of failures) {
      process.stderr.write(`INVALID: ${r.name} had ${r.failures} non-2xx responses, errors or timeouts (status codes ${JSON.stringify(r.statusCodes)})\n`)
    }
    process.exitCode = 1
  }
  if (!goals.failingTarget.pass) {
    process.stderr.write(`FAIL: with one target of three down, ${oneDownRow.failures} requests got a non-2xx response, an error or a timeout (status codes ${JSON.stringify(oneDownRow.statusCodes)})\n`)
    process.exitCode = 1
  }
}

const deadline = setTimeout(() => {
  process.stderr.write(`bench: still running after ${DEADLINE_MS / 1000} s, giving up\n`)
  stopChildren().finally(() => process.exit(1))
}, DEADLINE_MS)
deadline.unref()

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    process.stderr.write(`bench: ${signal}, stopping\n`)
    stopChildren().finally(() => process.exit(130))
  })
}

try {
  await main()
} catch (err) {
  process.stderr.write(`bench: ${(err as Error).message}\n`)
  process.exitCode = 1
} finally {
  await stopChildren()
}
