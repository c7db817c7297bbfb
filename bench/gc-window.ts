// The runner's side of the GC probe (gc-probe.ts, preloaded into a measured process with
// `node --import`): it sends "mark\n" on the child's fd 3 and reads back one JSON line, the heap's
// account since the previous mark. The wire format is GcWindow.
import { once } from 'node:events'
import { pathToFileURL } from 'node:url'
import { join } from 'node:path'
import type { Duplex } from 'node:stream'

/** What the heap did between two marks. */
export interface GcWindow {
  /** Bytes allocated on the V8 heap: Σ over GCs of (used before it − used after the previous one), plus the growth since the last. Buffers' memory outside the heap is not in it. */
  allocatedBytes: number
  wallMs: number
  /** Time the main thread spent in GC pauses (the profiler's `cost` of each GC). */
  gcPauseMs: number
  scavenges: number
  /** Mark-sweep-compact and other full GCs. */
  otherGcs: number
  /** Median of the heap used right after each scavenge (null without one). */
  heapAfterScavengeBytes: number | null
  heapUsedBytes: number
}

/** `node` arguments that preload the probe (dist/bench/gc-probe.js beside this file). */
export function probeArgs (): string[] {
  return ['--import', pathToFileURL(join(import.meta.dirname, 'gc-probe.js')).href]
}

/** Asks the probe behind `channel` for its window since the last mark (and starts a new one). */
export class ProbeClient {
  readonly #channel: Duplex
  #buffer = ''
  readonly #waiting: Array<(line: string) => void> = []

  constructor (channel: Duplex) {
    this.#channel = channel
    channel.setEncoding('utf8')
    channel.on('data', (chunk: string) => {
      this.#buffer += chunk
      let nl: number
      while ((nl = this.#buffer.indexOf('\n')) !== -1) {
        const line = this.#buffer.slice(0, nl)
        this.#buffer = this.#buffer.slice(nl + 1)
        this.#waiting.shift()?.(line)
      }
    })
  }

  async mark (timeoutMs = 5000): Promise<GcWindow> {
    const line = new Promise<string>(resolve => this.#waiting.push(resolve))
    if (!this.#channel.write('mark\n')) await once(this.#channel, 'drain')
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`GC probe: no answer within ${timeoutMs} ms`)), timeoutMs)
    })
    try {
      return JSON.parse(await Promise.race([line, timeout])) as GcWindow
    } finally {
      clearTimeout(timer)
    }
  }
}
