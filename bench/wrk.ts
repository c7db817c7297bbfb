// wrk (the Debian package: /usr/bin/wrk, 4.1) as the load generator, in a process of its own. A
// small Lua script counts every response whose status is not 2xx (wrk's own count is only of
// status > 399) and prints wrk's summary and latency percentiles as one JSON line at the end.
import { execFileSync } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { type Children } from './procs.js'

const SCRIPT = `-- gatehouse bench: non-2xx responses counted, the summary as one JSON line.
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) non2xx = 0 end
function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end
function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do n = n + t:get("non2xx") end
  local e = summary.errors
  io.write(string.format('WRK_RESULT {"requests":%d,"durationUs":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"non2xx":%d,"p50Us":%d,"p99Us":%d,"maxUs":%d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout, n,
    latency:percentile(50), latency:percentile(99), latency.max))
end
`

export interface WrkResult {
  requests: number
  durationUs: number
  bytes: number
  /** Socket errors, and wrk's own count of status > 399. */
  connect: number
  read: number
  write: number
  status: number
  timeout: number
  /** Responses whose status was not 2xx (1xx and 3xx included). */
  non2xx: number
  p50Us: number
  p99Us: number
  maxUs: number
}

export interface WrkRun extends WrkResult {
  rps: number
  /** Non-2xx responses plus socket errors and timeouts: any makes the sample invalid. */
  failures: number
}

/** wrk's version line, or why it cannot be used. */
export function wrkVersion (): { version: string } | { missing: string } {
  try {
    // wrk -v prints its version and usage, and exits 1.
    execFileSync('wrk', ['-v'], { encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'pipe', 'pipe'] })
    return { version: 'unknown' }
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stdout?: string }
    if (e.code === 'ENOENT') return { missing: 'wrk is not installed (apt-get install wrk)' }
    const line = (e.stdout ?? '').split('\n')[0] ?? ''
    return line.startsWith('wrk ') ? { version: line.split(' ')[1] ?? line } : { missing: `wrk -v failed: ${e.message}` }
  }
}

/** The report script; with `postBytes`, every request is a POST of that many bytes (application/octet-stream). */
export async function writeWrkScript (dir: string, postBytes?: number): Promise<string> {
  const file = join(dir, postBytes === undefined ? 'wrk-report.lua' : `wrk-post-${postBytes}.lua`)
  const post = postBytes === undefined ? '' : `wrk.method = "POST"\nwrk.body = string.rep("x", ${postBytes})\nwrk.headers["Content-Type"] = "application/octet-stream"\n`
  await writeFile(file, post + SCRIPT)
  return file
}

export interface WrkOptions {
  url: string
  durationS: number
  connections: number
  script: string
  headers?: Record<string, string>
}

/** One wrk run (one thread), a child of `children` so it is stopped with the rest; bounded by its duration plus 15 s. */
export async function runWrk (children: Children, opts: WrkOptions): Promise<WrkRun> {
  const args = ['-t1', `-c${opts.connections}`, `-d${opts.durationS}s`, '--latency', '--timeout', '2s', '-s', opts.script]
  for (const [name, value] of Object.entries(opts.headers ?? {})) args.push('-H', `${name}: ${value}`)
  args.push(opts.url)
  const child = children.spawn('wrk', 'wrk', args, { env: { PATH: process.env.PATH ?? '/usr/bin:/bin' }, cwd: '/', stdout: 'pipe' })
  const timer = setTimeout(() => child.proc.kill('SIGKILL'), (opts.durationS + 15) * 1000)
  await child.exited
  clearTimeout(timer)
  const line = child.tail.find(l => l.startsWith('WRK_RESULT '))
  if (child.proc.exitCode !== 0 || line === undefined) {
    throw new Error(`wrk ${args.join(' ')} failed (code ${child.proc.exitCode}, signal ${child.proc.signalCode}):\n${child.tail.join('\n')}`)
  }
  const r = JSON.parse(line.slice('WRK_RESULT '.length)) as WrkResult
  return {
    ...r,
    rps: r.durationUs > 0 ? r.requests / (r.durationUs / 1e6) : 0,
    failures: r.non2xx + r.connect + r.read + r.write + r.timeout
  }
}
