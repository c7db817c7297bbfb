// npm run bench: how much does Gatehouse cost over a bare @fastify/reply-from proxy, and over
// calling the upstream directly? Real processes on 127.0.0.1, autocannon as the load generator
// (in this process), interleaved rounds, medians.
//   BENCH_DURATION=10 BENCH_CONNECTIONS=50 BENCH_ROUNDS=3 npm run bench [-- --json]
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { once, type EventEmitter } from 'node:events'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import http from 'node:http'
import { createRequire } from 'node:module'
import net, { type AddressInfo } from 'node:net'
import os from 'node:os'
import { join, resolve } from 'node:path'
import { createInterface } from 'node:readline'

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
// Everything is bounded: the whole run is killed if it takes much longer than planned.
const PLANNED_S = ROUNDS * 3 * (DURATION_S + 1) + 3 * (WARMUP_S + 1)
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

async function freePort (): Promise<number> {
  const server = net.createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const port = (server.address() as AddressInfo).port
  await new Promise<void>(resolve => server.close(() => resolve()))
  return port
}

function status (port: number, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent: false, timeout: 1000 }, res => {
      res.resume()
      resolve(res.statusCode ?? 0)
    })
    req.once('timeout', () => req.destroy(new Error('timeout')))
    req.once('error', reject)
  })
}

async function waitFor200 (child: Child, port: number, path: string): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS
  while (Date.now() < deadline) {
    if (!running(child)) throw new Error(`${child.name} exited while starting:\n${child.output.slice(-20).join('\n')}`)
    try {
      if (await status(port, path) === 200) return
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

async function main (): Promise<void> {
  const machine = {
    node: process.version,
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    cpu: os.cpus()[0]?.model.trim() ?? 'unknown',
    cores: os.availableParallelism(),
    memoryGiB: Math.round(os.totalmem() / 2 ** 30 * 10) / 10,
    loadavg: os.loadavg().map(l => Math.round(l * 100) / 100)
  }
  const settings = { durationS: DURATION_S, connections: CONNECTIONS, pipelining: PIPELINING, rounds: ROUNDS, warmupS: WARMUP_S, path: PATH }
  log(`machine: node ${machine.node}, ${machine.cores} cores (${machine.cpu}), ${machine.platform}, ${machine.memoryGiB} GiB, load ${machine.loadavg.join(' ')}`)
  log(`settings: ${DURATION_S} s x ${ROUNDS} rounds per target, ${CONNECTIONS} connections, pipelining ${PIPELINING}, ${WARMUP_S} s warm-up; about ${Math.ceil(PLANNED_S / 10) * 10} s`)

  const upstream = startChild('upstream', join(ROOT, 'dist', 'bench', 'upstream.js'), [], { PORT: '0', HOST: '127.0.0.1' })
  const upstreamPort = await withTimeout('upstream', upstream.port)
  const upstreamUrl = `http://127.0.0.1:${upstreamPort}`

  const bare = startChild('bare reply-from', join(ROOT, 'dist', 'bench', 'bare-proxy.js'), [], {
    PORT: '0', HOST: '127.0.0.1', UPSTREAM: upstreamUrl, CONNECTIONS: String(POOL_CONNECTIONS)
  })
  const barePort = await withTimeout('bare proxy', bare.port)

  const routesDir = await mkdtemp(join(os.tmpdir(), 'gatehouse-bench-'))
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
    const gatewayPort = await freePort()
    const gateway = startChild('gatehouse', join(ROOT, 'dist', 'src', 'cli.js'), ['start'], {
      PORT: String(gatewayPort),
      HOST: '127.0.0.1',
      ROUTES_DIR: routesDir,
      LOG_LEVEL: 'warn',
      WATCH_ROUTES: 'false'
    }, routesDir)

    await waitFor200(upstream, upstreamPort, PATH)
    await waitFor200(bare, barePort, PATH)
    await waitFor200(gateway, gatewayPort, '/ready')
    await waitFor200(gateway, gatewayPort, PATH)

    const subjects: Subject[] = [
      { name: 'direct', url: upstreamUrl + PATH, pid: upstream.proc.pid as number, samples: [] },
      { name: 'bare reply-from', url: `http://127.0.0.1:${barePort}${PATH}`, pid: bare.proc.pid as number, samples: [] },
      { name: 'gatehouse', url: `http://127.0.0.1:${gatewayPort}${PATH}`, pid: gateway.proc.pid as number, samples: [] }
    ]

    for (const s of subjects) {
      const warm = await load(s.url, WARMUP_S, s.pid)
      log(`warm-up ${s.name}: ${Math.round(warm.rps)} req/s${warm.failures > 0 ? `, ${warm.failures} failures ${JSON.stringify(warm.statusCodes)}` : ''}`)
    }
    for (let round = 1; round <= ROUNDS; round++) {
      for (const s of subjects) {
        for (const c of children) {
          if (!running(c)) throw new Error(`${c.name} exited during the run:\n${c.output.slice(-20).join('\n')}`)
        }
        const sample = await load(s.url, DURATION_S, s.pid)
        s.samples.push(sample)
        log(`round ${round}/${ROUNDS} ${s.name.padEnd(16)} ${fmt(sample.rps, 0).padStart(7)} req/s  p50 ${fmt(sample.p50, 2)} ms  p99 ${fmt(sample.p99, 2)} ms  CPU ${sample.cpuUsPerReq === undefined ? 'n/a' : fmt(sample.cpuUsPerReq, 1)} µs/req${sample.failures > 0 ? `  FAILURES ${sample.failures} ${JSON.stringify(sample.statusCodes)}` : ''}`)
      }
    }
    const warnings = gateway.output.filter(line => line.trim() !== '')
    report(machine, settings, subjects, warnings)
  } finally {
    await rm(routesDir, { recursive: true, force: true })
  }
}

function fmt (n: number | null | undefined, digits: number): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return 'n/a'
  return n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
}

function ratio (a: number | null, b: number | null): number | null {
  return a === null || b === null || b === 0 ? null : a / b
}

function report (machine: object, settings: object, subjects: Subject[], gatewayOutput: string[]): void {
  const [direct, bare, gatehouse] = subjects.map(summarize) as [Summary, Summary, Summary]
  const rows = subjects.map((s, i) => ({ name: s.name, ...[direct, bare, gatehouse][i] as Summary }))
  const ratios = (s: Summary) => ({
    rps: { direct: ratio(s.rps, direct.rps), bare: ratio(s.rps, bare.rps) },
    p50: { direct: ratio(s.p50, direct.p50), bare: ratio(s.p50, bare.p50) },
    p99: { direct: ratio(s.p99, direct.p99), bare: ratio(s.p99, bare.p99) },
    cpuUsPerReq: { direct: ratio(s.cpuUsPerReq, direct.cpuUsPerReq), bare: ratio(s.cpuUsPerReq, bare.cpuUsPerReq) }
  })
  const throughputRatio = ratio(gatehouse.rps, bare.rps)
  const p99Ratio = ratio(gatehouse.p99, bare.p99)
  const goals = {
    throughput: { ratio: throughputRatio, limit: 0.9, pass: throughputRatio !== null && throughputRatio >= 0.9 },
    p99: { ratio: p99Ratio, limit: 1.2, pass: p99Ratio !== null && p99Ratio <= 1.2 }
  }
  const failures = rows.filter(r => r.failures > 0)
  const valid = failures.length === 0

  if (JSON_OUTPUT) {
    const results = Object.fromEntries(rows.map(r => [r.name, { ...r, name: undefined, ratios: ratios(r), rounds: subjects.find(s => s.name === r.name)?.samples }]))
    console.log(JSON.stringify({ machine, settings, results, goals, valid, gatewayOutput }, null, 2))
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
    console.log('')
    console.log(`medians of ${ROUNDS} rounds; CPU = utime+stime of the proxy process (for direct: the upstream) per request`)
    console.log(row(header))
    for (const l of lines) console.log(row(l))
    console.log('')
    console.log(`${goals.throughput.pass ? 'PASS' : 'FAIL'}  throughput: gatehouse ${x(throughputRatio)} of bare reply-from (goal >= 0.90x)`)
    console.log(`${goals.p99.pass ? 'PASS' : 'FAIL'}  p99 latency: gatehouse ${x(p99Ratio)} of bare reply-from (goal <= 1.20x)`)
    if (gatewayOutput.length > 0) console.log(`gatehouse logged ${gatewayOutput.length} line(s) at warn or above; first: ${gatewayOutput[0]}`)
  }
  if (!valid) {
    for (const r of failures) {
      process.stderr.write(`INVALID: ${r.name} had ${r.failures} non-2xx responses, errors or timeouts (status codes ${JSON.stringify(r.statusCodes)})\n`)
    }
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
