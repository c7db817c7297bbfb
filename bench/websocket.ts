// The WebSocket part of `npm run bench`: echo round trips of small messages over tunnels through
// a Gatehouse process, against the same echo server connected to directly and through the least
// tunnel a Node process can make (bench/ws-bare-proxy.ts), in one run. Rounds interleave the
// paths, in an order rotated each round; figures are medians. CPU per message is utime+stime of each process
// (/proc/<pid>/stat) over the round trips the clients counted: one round trip is a message each
// way through the gateway.
//
//   npm run bench -- --only websocket     # alone; a full `npm run bench` runs it after the HTTP subjects
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { once } from 'node:events'
import os from 'node:os'
import { join, resolve } from 'node:path'
import WebSocket from 'ws'
import { Children, cleanEnv, cpuMicros, median, START_TIMEOUT_MS, withTimeout, type Child } from './procs.js'

const DIST = resolve(import.meta.dirname, '..')
const CONNECTIONS = 32
const MESSAGE = Buffer.alloc(64, 'x')

export interface WebSocketBenchOptions {
  rounds: number
  durationS: number
  progress: (line: string) => void
}

interface PathSample { roundTrips: number, perSecond: number, gatewayUs: number | null, upstreamUs: number }

const PATHS = ['direct', 'bare', 'gatehouse'] as const
type PathName = typeof PATHS[number]
const LABELS: Record<PathName, string> = { direct: 'direct to the echo server', bare: 'bare Node tunnel (upgrade + socket.pipe)', gatehouse: 'through Gatehouse' }

export interface WebSocketBenchResult {
  connections: number
  messageBytes: number
  paths: Record<PathName, PathSample>
}

/** A child that prints {"port": N} on its first stdout line. */
async function portOf (child: Child): Promise<number> {
  return await withTimeout(`${child.name} start`, new Promise<number>((resolve, reject) => {
    const timer = setInterval(() => {
      for (const line of child.tail) {
        const m = /"port":\s*(\d+)/.exec(line) ?? /Server listening at http:\/\/127\.0\.0\.1:(\d+)/.exec(line)
        if (m !== null) { clearInterval(timer); resolve(Number(m[1])) }
      }
      if (child.proc.exitCode !== null) { clearInterval(timer); reject(new Error(`${child.name} exited: ${child.tail.join('\n')}`)) }
    }, 20)
  }), START_TIMEOUT_MS)
}

/** `CONNECTIONS` clients, each sending one message and waiting for its echo, for `seconds`. */
async function echoLoad (url: string, seconds: number): Promise<number> {
  const clients = await Promise.all(Array.from({ length: CONNECTIONS }, async () => {
    const ws = new WebSocket(url, { perMessageDeflate: false })
    await once(ws, 'open')
    return ws
  }))
  let roundTrips = 0
  let running = true
  for (const ws of clients) {
    ws.on('message', () => {
      roundTrips++
      if (running) ws.send(MESSAGE)
    })
    ws.send(MESSAGE)
  }
  await new Promise(resolve => setTimeout(resolve, seconds * 1000))
  running = false
  const counted = roundTrips
  await Promise.all(clients.map(async ws => {
    ws.close()
    await once(ws, 'close')
  }))
  return counted
}

async function sample (url: string, seconds: number, gateway: Child | undefined, upstream: Child): Promise<PathSample> {
  const before = { g: gateway === undefined ? 0 : await cpuMicros(gateway.pid), u: await cpuMicros(upstream.pid) }
  const began = performance.now()
  const roundTrips = await echoLoad(url, seconds)
  const elapsed = (performance.now() - began) / 1000
  const g = gateway === undefined ? null : (await cpuMicros(gateway.pid) - before.g) / roundTrips
  const u = (await cpuMicros(upstream.pid) - before.u) / roundTrips
  return { roundTrips, perSecond: roundTrips / elapsed, gatewayUs: g, upstreamUs: u }
}

export async function benchWebSocket (o: WebSocketBenchOptions): Promise<WebSocketBenchResult> {
  const children = new Children()
  const dir = await mkdtemp(join(os.tmpdir(), 'gatehouse-bench-ws-'))
  try {
    const upstream = children.spawn('ws-upstream', process.execPath, [join(DIST, 'bench', 'ws-upstream.js')], { env: cleanEnv({}), cwd: dir, stdout: 'pipe' })
    const upstreamPort = await portOf(upstream)
    await writeFile(join(dir, 'ws.yaml'), `targets:\n  - url: http://127.0.0.1:${upstreamPort}\nroutes:\n  - { path: /ws, websocket: true }\n`)
    const gateway = children.spawn('gatehouse', process.execPath, [join(DIST, 'src', 'cli.js'), 'start'], {
      env: cleanEnv({ PORT: '0', HOST: '127.0.0.1', ROUTES_DIR: dir, LOG_LEVEL: 'info', LOG_FORMAT: 'json', WATCH_ROUTES: 'false' }),
      cwd: dir,
      stdout: 'pipe'
    })
    const bare = children.spawn('ws-bare-proxy', process.execPath, [join(DIST, 'bench', 'ws-bare-proxy.js')], { env: cleanEnv({ UPSTREAM_PORT: String(upstreamPort) }), cwd: dir, stdout: 'pipe' })
    const paths: Record<PathName, { url: string, proxy: Child | undefined }> = {
      direct: { url: `ws://127.0.0.1:${upstreamPort}/ws`, proxy: undefined },
      bare: { url: `ws://127.0.0.1:${await portOf(bare)}/ws`, proxy: bare },
      gatehouse: { url: `ws://127.0.0.1:${await portOf(gateway)}/ws`, proxy: gateway }
    }
    o.progress(`websocket: ${CONNECTIONS} connections, ${MESSAGE.length}-byte messages echoed; ${o.rounds} rounds x ${o.durationS} s per path`)
    for (const path of PATHS) await echoLoad(paths[path].url, 1)
    const samples: Record<PathName, PathSample[]> = { direct: [], bare: [], gatehouse: [] }
    for (let round = 1; round <= o.rounds; round++) {
      for (let k = 0; k < PATHS.length; k++) {
        const path = PATHS[(k + round - 1) % PATHS.length] as PathName
        const s = await sample(paths[path].url, o.durationS, paths[path].proxy, upstream)
        samples[path].push(s)
        o.progress(`websocket round ${round}/${o.rounds} ${path.padEnd(9)} ${Math.round(s.perSecond).toString().padStart(6)} round trips/s  proxy ${s.gatewayUs?.toFixed(1) ?? '-'} µs  echo server ${s.upstreamUs.toFixed(1)} µs per round trip`)
      }
    }
    const summarize = (list: PathSample[]): PathSample => {
      const gatewayUs = list.map(s => s.gatewayUs).filter((v): v is number => v !== null)
      return {
        roundTrips: median(list.map(s => s.roundTrips)),
        perSecond: median(list.map(s => s.perSecond)),
        gatewayUs: gatewayUs.length === 0 ? null : median(gatewayUs),
        upstreamUs: median(list.map(s => s.upstreamUs))
      }
    }
    return { connections: CONNECTIONS, messageBytes: MESSAGE.length, paths: { direct: summarize(samples.direct), bare: summarize(samples.bare), gatehouse: summarize(samples.gatehouse) } }
  } finally {
    await children.stopAll()
    await rm(dir, { recursive: true, force: true })
  }
}

/** The result as the Markdown the bench prints. */
export function websocketTable (r: WebSocketBenchResult): string {
  const { direct, bare, gatehouse } = r.paths
  const ratio = (a: number | null, b: number | null): string => a === null || b === null ? '–' : (a / b).toFixed(2)
  return [
    `WebSocket echo: ${r.connections} connections, ${r.messageBytes}-byte messages, one in flight per connection (medians)`,
    '',
    '| path | round trips/s | × direct | proxy CPU µs per round trip | × bare tunnel | echo server CPU µs per round trip |',
    '|---|---|---|---|---|---|',
    ...PATHS.map(p => {
      const s = r.paths[p]
      return `| ${LABELS[p]} | ${Math.round(s.perSecond)} | ${ratio(s.perSecond, direct.perSecond)} | ${s.gatewayUs?.toFixed(1) ?? '–'} | ${ratio(s.gatewayUs, bare.gatewayUs)} | ${s.upstreamUs.toFixed(1)} |`
    }),
    '',
    `A round trip is a message each way through the proxy. Gatehouse spends ${ratio(gatehouse.gatewayUs, direct.upstreamUs)}× what the echo server spends on one (direct), and ${ratio(gatehouse.gatewayUs, bare.gatewayUs)}× the bare tunnel.`
  ].join('\n')
}
