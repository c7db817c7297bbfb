// What the protocol benches (bench/websocket.ts, bench/grpc.ts) share: a server and the paths to
// it (direct, through proxies), each loaded in turn by a client in this process for a few
// seconds, rounds interleaved in an order rotated each round, medians. CPU per operation is
// utime+stime of each process (/proc/<pid>/stat) over the operations the client counted.
import { join, resolve } from 'node:path'
import { cleanEnv, cpuMicros, median, START_TIMEOUT_MS, withTimeout, type Child, type Children } from './procs.js'

export const DIST = resolve(import.meta.dirname, '..')

export interface RoundOptions {
  rounds: number
  durationS: number
  progress: (line: string) => void
}

/** One way to the server: its client load, and the proxy in between (none: direct). */
export interface ProtocolPath {
  name: string
  label: string
  /** Runs the load for `seconds`; resolves with the operations completed. */
  load: (seconds: number) => Promise<number>
  proxy: Child | undefined
}

export interface PathSample {
  operations: number
  perSecond: number
  /** The proxy's CPU µs per operation; null for the direct path. */
  proxyUs: number | null
  /** The server's CPU µs per operation. */
  serverUs: number
}

/** The port a child says on stdout: {"port": N}, or a listening line such as Gatehouse's (`listener` names which). */
export async function portOf (child: Child, listener = 'Server'): Promise<number> {
  const said = new RegExp(`"port":\\s*(\\d+)|${listener} listening at http://127\\.0\\.0\\.1:(\\d+)`)
  return await withTimeout(`${child.name} start`, new Promise<number>((resolve, reject) => {
    const timer = setInterval(() => {
      for (const line of child.tail) {
        const m = said.exec(line)
        if (m !== null) { clearInterval(timer); resolve(Number(m[1] ?? m[2])) }
      }
      if (child.proc.exitCode !== null) { clearInterval(timer); reject(new Error(`${child.name} exited: ${child.tail.join('\n')}`)) }
    }, 20)
  }), START_TIMEOUT_MS)
}

/** A Gatehouse process serving `dir` (LOG_LEVEL info, as deployed), with `env` added. */
export function startGatehouse (children: Children, dir: string, env: Record<string, string> = {}): Child {
  return children.spawn('gatehouse', process.execPath, [join(DIST, 'src', 'cli.js'), 'start'], {
    env: cleanEnv({ PORT: '0', HOST: '127.0.0.1', ROUTES_DIR: dir, LOG_LEVEL: 'info', LOG_FORMAT: 'json', WATCH_ROUTES: 'false', ...env }),
    cwd: dir,
    stdout: 'pipe'
  })
}

async function sample (path: ProtocolPath, server: Child, seconds: number): Promise<PathSample> {
  const before = { proxy: path.proxy === undefined ? 0 : await cpuMicros(path.proxy.pid), server: await cpuMicros(server.pid) }
  const began = performance.now()
  const operations = await path.load(seconds)
  const elapsed = (performance.now() - began) / 1000
  return {
    operations,
    perSecond: operations / elapsed,
    proxyUs: path.proxy === undefined ? null : (await cpuMicros(path.proxy.pid) - before.proxy) / operations,
    serverUs: (await cpuMicros(server.pid) - before.server) / operations
  }
}

/** A 1 s warm-up per path, then the rounds; medians per path. */
export async function runRounds (what: string, paths: ProtocolPath[], server: Child, o: RoundOptions): Promise<Record<string, PathSample>> {
  for (const path of paths) await path.load(1)
  const samples = new Map<string, PathSample[]>(paths.map(p => [p.name, []]))
  const width = Math.max(...paths.map(p => p.name.length))
  for (let round = 1; round <= o.rounds; round++) {
    for (let k = 0; k < paths.length; k++) {
      const path = paths[(k + round - 1) % paths.length] as ProtocolPath
      const s = await sample(path, server, o.durationS)
      samples.get(path.name)?.push(s)
      o.progress(`${what} round ${round}/${o.rounds} ${path.name.padEnd(width)} ${Math.round(s.perSecond).toString().padStart(6)}/s  proxy ${s.proxyUs?.toFixed(1) ?? '-'} µs  server ${s.serverUs.toFixed(1)} µs per operation`)
    }
  }
  const out: Record<string, PathSample> = {}
  for (const [name, list] of samples) {
    const proxyUs = list.map(s => s.proxyUs).filter((v): v is number => v !== null)
    out[name] = {
      operations: median(list.map(s => s.operations)),
      perSecond: median(list.map(s => s.perSecond)),
      proxyUs: proxyUs.length === 0 ? null : median(proxyUs),
      serverUs: median(list.map(s => s.serverUs))
    }
  }
  return out
}

/** The Markdown table of one protocol bench: `operation` names what was counted (a round trip, a call). */
export function roundsTable (title: string, operation: string, paths: ProtocolPath[], results: Record<string, PathSample>, floor: string | undefined): string {
  const direct = results[paths[0]?.name ?? ''] as PathSample
  const ratio = (a: number | null | undefined, b: number | null | undefined): string => a == null || b == null ? '–' : (a / b).toFixed(2)
  const floorUs = floor === undefined ? undefined : results[floor]?.proxyUs
  return [
    title,
    '',
    `| path | ${operation}s/s | × direct | proxy CPU µs per ${operation} |${floor === undefined ? '' : ` × ${floor} |`} server CPU µs per ${operation} |`,
    `|---|---|---|---|${floor === undefined ? '' : '---|'}---|`,
    ...paths.map(p => {
      const s = results[p.name] as PathSample
      return `| ${p.label} | ${Math.round(s.perSecond)} | ${ratio(s.perSecond, direct.perSecond)} | ${s.proxyUs?.toFixed(1) ?? '–'} |${floor === undefined ? '' : ` ${ratio(s.proxyUs, floorUs)} |`} ${s.serverUs.toFixed(1)} |`
    })
  ].join('\n')
}
