// npm run bench:guard: fails (exit 1) when Gatehouse's request path gets markedly more expensive.
// What it compares does not depend on how fast or busy the machine is: the bytes Gatehouse
// allocates on the V8 heap per proxied request (LOG_LEVEL=info, access log to a file), divided by
// the same for the bare Fastify + @fastify/reply-from proxy, both measured in this run against
// the same upstream: a fixed number of requests (GUARD_REQUESTS, 20,000, in GUARD_WINDOWS 5
// windows: the lowest counts) after a warm-up (GUARD_WARMUP, 5,000), one keep-alive connection
// (GUARD_CONNECTIONS), counted by bench/gc-probe.ts (V8's GCProfiler) preloaded into each proxy. Exit 1 when the ratio exceeds GUARD_MAX_ALLOC_RATIO (1.3).
//
// --self-test: also measures a copy of dist/ whose plugins/proxy/index.js allocates a 4 KB array
// per request, and exits 0 only if the guard passes the build as it is and fails the copy.
//
//   GUARD_MAX_ALLOC_RATIO=1.3 npm run bench:guard [-- --self-test] [-- --json]
import { closeSync, openSync } from 'node:fs'
import { cp, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import os from 'node:os'
import { join, resolve } from 'node:path'
import { freePort } from '../scripts/loopback.js'
import { ProbeClient, probeArgs } from './gc-window.js'
import { FixedLoader } from './loader.js'
import { Children, cleanEnv, waitFor200, withTimeout, type Child } from './procs.js'

function positive (name: string, fallback: number, integer: boolean): number {
  const text = process.env[name]
  if (text === undefined || text === '') return fallback
  const n = Number(text)
  if (!Number.isFinite(n) || n <= 0 || (integer && !Number.isInteger(n))) throw new Error(`${name} must be a positive ${integer ? 'integer' : 'number'}, got "${text}"`)
  return n
}

const ROOT = resolve(import.meta.dirname, '..', '..')
const MAX_RATIO = positive('GUARD_MAX_ALLOC_RATIO', 1.3, false)
const REQUESTS = positive('GUARD_REQUESTS', 20_000, true)
const WARMUP = positive('GUARD_WARMUP', 5_000, true)
const WINDOWS = positive('GUARD_WINDOWS', 5, true)
// One connection: requests one after another, so nothing queues anywhere. With 32, the access
// log's pending lines pile up behind each asynchronous write as deep as the machine is slow, and
// sonic-boom 4's write() re-measures (flattens) that growing string on every line: up to ~5 KB
// per request more, depending on the machine's speed, which is what this guard must not measure.
const CONNECTIONS = positive('GUARD_CONNECTIONS', 1, true)
const PATH = '/bench/items?page=1'
const POOL = 128
// After the last answer: the access-log line and the response hooks finish before the count.
const SETTLE_MS = 100
const LOAD_TIMEOUT_MS = 60_000
const args = process.argv.slice(2)
const SELF_TEST = args.includes('--self-test')
const JSON_OUTPUT = args.includes('--json')
// What the self-test adds per request: 512 slots of 8 bytes, about 4 KB on the V8 heap.
const SELF_TEST_ALLOCATION = 'globalThis.__gatehouseGuardSelfTest = new Array(512).fill(0);'
const DEADLINE_S = SELF_TEST ? 170 : 110

const progress = (line: string): void => { process.stderr.write(line + '\n') }
const children = new Children()
let tempRoot: string | undefined

interface Measured {
  name: string
  /** The lowest window's bytes per request. */
  bytesPerRequest: number
  windows: number[]
  requests: number
  scavenges: number
  otherGcs: number
  elapsedMs: number
}

async function startProbed (name: string, script: string, scriptArgs: string[], env: Record<string, string>, stdout: number | 'pipe'): Promise<{ child: Child, probe: ProbeClient }> {
  const child = children.spawn(name, process.execPath, [...probeArgs(), script, ...scriptArgs], { env: cleanEnv(env), cwd: tempRoot as string, stdout, control: true })
  return { child, probe: new ProbeClient(child.control as NonNullable<Child['control']>) }
}

/** Gatehouse of the build in `dist` (LOG_LEVEL=info, stdout to a file), one route /bench. */
async function startGatehouse (name: string, dist: string, upstreamUrl: string): Promise<{ child: Child, probe: ProbeClient, port: number }> {
  const dir = await mkdtemp(join(tempRoot as string, 'routes-'))
  await writeFile(join(dir, 'bench.yaml'), ['name: bench', 'targets:', `  - url: ${upstreamUrl}`, `    maxConnections: ${POOL}`, 'routes:', '  - path: /bench', ''].join('\n'))
  const port = await freePort()
  const fd = openSync(join(tempRoot as string, `${name.replace(/\W+/g, '-')}.log`), 'w')
  const started = await startProbed(name, join(dist, 'src', 'cli.js'), ['start'], { HOST: '127.0.0.1', PORT: String(port), ROUTES_DIR: dir, LOG_LEVEL: 'info' }, fd)
  closeSync(fd)
  await waitFor200(started.child, port, '/ready')
  return { ...started, port }
}

/**
 * The warm-up, then GUARD_WINDOWS windows of GUARD_REQUESTS / GUARD_WINDOWS requests each; the
 * figure is the lowest window's. Noise only ever adds bytes (a busy machine delays the log's
 * writes and lines queue up, see CONNECTIONS), so the lowest window is the request path's own cost.
 */
async function measure (name: string, port: number, probe: ProbeClient): Promise<Measured> {
  const loader = new FixedLoader(`http://127.0.0.1:${port}`, PATH, CONNECTIONS)
  const settle = (): Promise<void> => new Promise(resolve => setTimeout(resolve, SETTLE_MS))
  try {
    const warm = await loader.run(WARMUP, LOAD_TIMEOUT_MS)
    if (warm.non2xx + warm.errors > 0) throw new Error(`${name}: ${warm.non2xx} non-2xx answers and ${warm.errors} errors in the warm-up`)
    const windows: number[] = []
    let requests = 0
    let elapsedMs = 0
    let scavenges = 0
    let otherGcs = 0
    for (let i = 0; i < WINDOWS; i++) {
      await settle()
      await probe.mark()
      const run = await loader.run(Math.round(REQUESTS / WINDOWS), LOAD_TIMEOUT_MS)
      await settle()
      const window = await probe.mark()
      if (run.non2xx + run.errors > 0) throw new Error(`${name}: ${run.non2xx} non-2xx answers and ${run.errors} errors`)
      windows.push(window.allocatedBytes / run.requests)
      requests += run.requests
      elapsedMs += run.elapsedMs
      scavenges += window.scavenges
      otherGcs += window.otherGcs
    }
    const m = { name, bytesPerRequest: Math.min(...windows), windows, requests, scavenges, otherGcs, elapsedMs }
    progress(`guard: ${name}: ${fmt(m.bytesPerRequest, 0)} bytes/req, lowest of ${windows.map(w => fmt(w, 0)).join(', ')} (${scavenges} scavenges, ${otherGcs} other GCs, ${fmt(requests / elapsedMs * 1000, 0)} req/s)`)
    return m
  } finally {
    await loader.close()
  }
}

/**
 * A copy of `dist` in `dir` whose proxy plugin allocates SELF_TEST_ALLOCATION once per proxied
 * request: inserted at the top of its route handler (`function proxy(request, reply) {`), or
 * else before its `reply.from(` call. Returns the line patched, to print.
 */
async function patchedCopy (dist: string, dir: string): Promise<{ dist: string, where: string }> {
  const copy = join(dir, 'dist')
  await cp(dist, copy, { recursive: true })
  // The copy resolves its packages from the project's node_modules and is an ES module package like it.
  await cp(join(ROOT, 'package.json'), join(dir, 'package.json'))
  await symlink(join(ROOT, 'node_modules'), join(dir, 'node_modules'), 'dir')
  const file = join(copy, 'plugins', 'proxy', 'index.js')
  const lines = (await readFile(file, 'utf8')).split('\n')
  let at = lines.findIndex(l => /^\s*function proxy\s*\(request, reply\)\s*\{\s*$/.test(l))
  if (at !== -1) {
    const indent = /^\s*/.exec(lines[at + 1] ?? '')?.[0] ?? '    '
    lines.splice(at + 1, 0, indent + SELF_TEST_ALLOCATION)
  } else {
    at = lines.findIndex(l => /^\s*reply\.from\(/.test(l))
    if (at === -1) throw new Error(`self-test: ${file} has neither "function proxy(request, reply) {" nor a line starting with "reply.from(": update patchedCopy() in bench/guard.ts`)
    lines.splice(at, 0, (/^\s*/.exec(lines[at] as string)?.[0] ?? '') + SELF_TEST_ALLOCATION)
  }
  await writeFile(file, lines.join('\n'))
  return { dist: copy, where: `plugins/proxy/index.js line ${at + 1} (${(lines[at] ?? '').trim()})` }
}

function fmt (n: number, digits: number): string {
  return n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
}

async function main (): Promise<void> {
  tempRoot = await mkdtemp(join(os.tmpdir(), 'gatehouse-guard-'))
  const upstreamPort = await freePort()
  const upstream = children.spawn('upstream', process.execPath, [join(ROOT, 'dist', 'bench', 'upstream.js')], { env: cleanEnv({ HOST: '127.0.0.1', PORT: String(upstreamPort) }), cwd: tempRoot, stdout: 'pipe' })
  await waitFor200(upstream, upstreamPort, PATH)
  const upstreamUrl = `http://127.0.0.1:${upstreamPort}`

  const barePort = await freePort()
  const bare = await startProbed('bare reply-from', join(ROOT, 'dist', 'bench', 'bare-proxy.js'), [], { HOST: '127.0.0.1', PORT: String(barePort), UPSTREAM: upstreamUrl, CONNECTIONS: String(POOL) }, 'pipe')
  const gatehouse = await startGatehouse('gatehouse', join(ROOT, 'dist'), upstreamUrl)
  let patched: { child: Child, probe: ProbeClient, port: number, where: string } | undefined
  if (SELF_TEST) {
    const dir = join(tempRoot, 'self-test')
    await mkdir(dir)
    const copy = await patchedCopy(join(ROOT, 'dist'), dir)
    progress(`guard: self-test: ${SELF_TEST_ALLOCATION} added at ${copy.where} of a copy of dist/`)
    patched = { ...await startGatehouse('gatehouse + 4 KB per request', copy.dist, upstreamUrl), where: copy.where }
  }
  await waitFor200(bare.child, barePort, PATH)
  await waitFor200(gatehouse.child, gatehouse.port, PATH)
  if (patched !== undefined) await waitFor200(patched.child, patched.port, PATH)

  const b = await measure('bare reply-from', barePort, bare.probe)
  const g = await measure('gatehouse', gatehouse.port, gatehouse.probe)
  const p = patched === undefined ? undefined : await measure('gatehouse + 4 KB per request', patched.port, patched.probe)
  const ratio = g.bytesPerRequest / b.bytesPerRequest
  const pass = ratio <= MAX_RATIO
  const patchedRatio = p === undefined ? undefined : p.bytesPerRequest / b.bytesPerRequest
  const selfTest = p === undefined || patchedRatio === undefined
    ? undefined
    : { addedBytesPerRequest: p.bytesPerRequest - g.bytesPerRequest, ratio: patchedRatio, caught: patchedRatio > MAX_RATIO, pass: pass && patchedRatio > MAX_RATIO, where: patched?.where }

  if (JSON_OUTPUT) {
    process.stdout.write(JSON.stringify({ settings: { requests: REQUESTS, warmup: WARMUP, connections: CONNECTIONS, maxRatio: MAX_RATIO }, bare: b, gatehouse: g, ratio, pass, ...(selfTest === undefined ? {} : { selfTest, patched: p }) }, null, 2) + '\n')
  } else {
    const lines = [
      `bench:guard: V8-heap bytes allocated per proxied request (lowest of ${WINDOWS} windows), ${fmt(REQUESTS, 0)} requests after ${fmt(WARMUP, 0)} of warm-up, ${CONNECTIONS === 1 ? 'one connection' : `${CONNECTIONS} connections`}, same upstream`,
      `  bare Fastify + @fastify/reply-from           ${fmt(b.bytesPerRequest, 0).padStart(8)} bytes/req`,
      `  Gatehouse (LOG_LEVEL=info, log to a file)    ${fmt(g.bytesPerRequest, 0).padStart(8)} bytes/req`,
      `  ratio ${fmt(ratio, 3)}, limit ${fmt(MAX_RATIO, 3)} (GUARD_MAX_ALLOC_RATIO): ${pass ? 'PASS' : 'FAIL: the request path allocates markedly more than it did'}`
    ]
    if (p !== undefined && selfTest !== undefined) {
      lines.push(`  self-test: Gatehouse + 4 KB array per request ${fmt(p.bytesPerRequest, 0).padStart(8)} bytes/req (+${fmt(selfTest.addedBytesPerRequest, 0)}), ratio ${fmt(selfTest.ratio, 3)}: the guard would ${selfTest.caught ? 'FAIL it' : 'PASS it'}`)
      lines.push(`  self-test ${selfTest.pass ? 'PASS: the build passes and the patched copy fails' : `FAIL: ${pass ? 'the patched copy is not caught at this limit' : 'the build itself is over the limit, so the self-test proves nothing'}`}`)
    }
    process.stdout.write(lines.join('\n') + '\n')
  }
  process.exitCode = (selfTest === undefined ? pass : selfTest.pass) ? 0 : 1
}

let cleaning: Promise<void> | undefined
async function cleanup (): Promise<void> {
  cleaning ??= (async () => {
    await children.stopAll()
    if (tempRoot !== undefined) await rm(tempRoot, { recursive: true, force: true })
  })()
  return await cleaning
}

const deadline = setTimeout(() => {
  progress(`bench:guard: still running after ${DEADLINE_S} s, giving up`)
  cleanup().finally(() => process.exit(1))
}, DEADLINE_S * 1000)
deadline.unref()
process.on('exit', () => children.killAll())
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    progress(`bench:guard: ${signal}, stopping`)
    cleanup().finally(() => process.exit(130))
  })
}

try {
  await withTimeout('bench:guard', main(), DEADLINE_S * 1000)
} catch (err) {
  progress(`bench:guard: ${(err as Error).message}`)
  process.exitCode = 1
} finally {
  await cleanup()
}
