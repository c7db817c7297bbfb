// The bench's child processes: spawned with a clean environment, their output kept (the last
// lines, for error messages) or sent to a file, CPU time read from /proc, and all of them stopped
// at the end, on Ctrl-C and on failure. Shared by run.ts and guard.ts.
import { execFileSync, spawn, type ChildProcess, type StdioOptions } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import http from 'node:http'
import { createInterface } from 'node:readline'
import type { Duplex } from 'node:stream'
import { httpStatus } from '../scripts/loopback.js'
import { statusWith } from './jwt.js'

export const START_TIMEOUT_MS = 15_000

/**
 * What every child gets of the caller's environment: enough to run, nothing that changes a path
 * (no OTEL_*, no REDIS_URL, no NODE_OPTIONS, none of the gateway's variables).
 */
const INHERITED = ['PATH', 'HOME', 'TMPDIR', 'LANG', 'LC_ALL', 'TZ']

export function cleanEnv (env: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {}
  for (const key of INHERITED) {
    const value = process.env[key]
    if (value !== undefined) out[key] = value
  }
  return { ...out, ...env }
}

export interface Child {
  name: string
  proc: ChildProcess
  pid: number
  exited: Promise<void>
  /** The last lines of whatever output was piped to the runner (stderr, and stdout when piped). */
  tail: string[]
  /** fd 3 of the child when asked for (`control: true`): the GC probe's channel. */
  control?: Duplex
}

export interface SpawnOptions {
  env: Record<string, string>
  cwd: string
  /** 'pipe': lines kept in `tail`; 'drain': read and thrown away (counted in `drained`); a number: a file descriptor. */
  stdout: 'pipe' | 'drain' | 'ignore' | number
  /** A socket pair on fd 3 (the GC probe's channel). */
  control?: boolean
}

const TAIL = 40

export class Children {
  readonly all: Child[] = []
  /** Bytes read from the 'drain' children's stdout. */
  drained = 0

  spawn (name: string, command: string, args: string[], opts: SpawnOptions): Child {
    const stdout = opts.stdout === 'drain' ? 'pipe' : opts.stdout
    const stdio: StdioOptions = opts.control === true ? ['ignore', stdout, 'pipe', 'pipe'] : ['ignore', stdout, 'pipe']
    const proc = spawn(command, args, { cwd: opts.cwd, env: opts.env, stdio })
    const tail: string[] = []
    const keep = (line: string): void => {
      tail.push(line)
      if (tail.length > TAIL) tail.shift()
    }
    const exited = new Promise<void>(resolve => {
      proc.once('exit', () => resolve())
      proc.once('error', err => { keep(`spawn ${command}: ${err.message}`); resolve() })
    })
    if (opts.stdout === 'pipe' && proc.stdout !== null) createInterface({ input: proc.stdout }).on('line', keep)
    if (opts.stdout === 'drain' && proc.stdout !== null) proc.stdout.on('data', (chunk: Buffer) => { this.drained += chunk.length })
    if (proc.stderr !== null) createInterface({ input: proc.stderr }).on('line', keep)
    const control = opts.control === true ? proc.stdio[3] as Duplex | null : null
    control?.on('error', () => {})
    const child: Child = { name, proc, pid: proc.pid ?? -1, exited, tail, ...(control == null ? {} : { control }) }
    this.all.push(child)
    return child
  }

  /** SIGTERM to every child still running, SIGKILL to those still running 3 s later. */
  async stopAll (): Promise<void> {
    const live = this.all.filter(running)
    for (const c of live) c.proc.kill('SIGTERM')
    const timer = setTimeout(() => { for (const c of live.filter(running)) c.proc.kill('SIGKILL') }, 3000)
    await Promise.all(live.map(c => c.exited))
    clearTimeout(timer)
  }

  /** Synchronous last resort (process 'exit'): SIGKILL to every child still running. */
  killAll (): void {
    for (const c of this.all.filter(running)) c.proc.kill('SIGKILL')
  }
}

export function running (child: Child): boolean {
  return child.proc.exitCode === null && child.proc.signalCode === null
}

export function describeExit (child: Child): string {
  return `${child.name} exited (code ${child.proc.exitCode}, signal ${child.proc.signalCode})${child.tail.length > 0 ? ':\n' + child.tail.slice(-20).join('\n') : ''}`
}

/**
 * Waits until GET `path` on 127.0.0.1:`port` answers 200 (with `headers` when given), polling every
 * 100 ms; throws if the child exits first or nothing answers 200 within START_TIMEOUT_MS.
 */
export async function waitFor200 (child: Child, port: number, path: string, headers?: Record<string, string>): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS
  let last = 'no answer'
  while (Date.now() < deadline) {
    if (!running(child)) throw new Error(describeExit(child))
    try {
      const status = headers === undefined ? await httpStatus(port, path) : await statusWith(port, path, headers)
      if (status === 200) return
      last = `status ${status}`
    } catch (err) {
      last = (err as Error).message
    }
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  throw new Error(`${child.name} did not answer 200 on ${path} within ${START_TIMEOUT_MS / 1000} s (last: ${last})${child.tail.length > 0 ? ':\n' + child.tail.slice(-20).join('\n') : ''}`)
}

/** GET http://127.0.0.1:<port><path> parsed as JSON (2 s timeout), whatever the status. */
export function getJson (port: number, path: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent: false, timeout: 2000 }, res => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { text += chunk })
      res.once('end', () => {
        try {
          resolve(JSON.parse(text))
        } catch (err) {
          reject(err)
        }
      })
      res.once('error', reject)
    })
    req.once('timeout', () => req.destroy(new Error('timeout')))
    req.once('error', reject)
  })
}

export async function withTimeout<T> (what: string, promise: Promise<T>, ms: number): Promise<T> {
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

export const CLK_TCK = (() => {
  try {
    const n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8', timeout: 5000 }).trim())
    return Number.isInteger(n) && n > 0 ? n : 100
  } catch {
    return 100
  }
})()

/** utime + stime of a process (all its threads) in µs, from /proc/<pid>/stat. */
export async function cpuMicros (pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
  // Fields after "(comm)": state is field 3, utime field 14, stime field 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) * (1e6 / CLK_TCK)
}

/** The pids of a process's children (nginx's workers), from /proc/<pid>/task/<pid>/children. */
export async function childPids (pid: number): Promise<number[]> {
  const text = await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8')
  return text.trim().split(/\s+/).filter(s => s !== '').map(Number)
}

export function median (values: number[]): number {
  if (values.length === 0) return NaN
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid] as number : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2
}
