// Preloaded into a measured process (`node --import .../gc-probe.js script`): V8's GCProfiler
// records the heap before and after every GC, in C++, with nothing written anywhere while the load
// runs. On each "mark" line from the runner on fd 3 (a socket pair), it answers one JSON line, the
// account since the previous mark (GcWindow), and starts a new one. Nothing else of the process
// changes: no flag, no output on stdout or stderr. Without fd 3 it does nothing.
import net from 'node:net'
import { GCProfiler, getHeapStatistics } from 'node:v8'
import type { GcWindow } from './gc-window.js'

let profiler = new GCProfiler()
let base = 0
let since = 0

function begin (): void {
  profiler = new GCProfiler()
  profiler.start()
  // After start: a GC from here on is in the profile, and its "before" is measured from this.
  base = getHeapStatistics().used_heap_size
  since = performance.now()
}

function mark (): GcWindow {
  const used = getHeapStatistics().used_heap_size
  const wallMs = performance.now() - since
  const { statistics } = profiler.stop()
  let allocated = 0
  let previous = base
  let pauseUs = 0
  let scavenges = 0
  let otherGcs = 0
  const afterScavenge: number[] = []
  for (const gc of statistics) {
    allocated += gc.beforeGC.heapStatistics.usedHeapSize - previous
    previous = gc.afterGC.heapStatistics.usedHeapSize
    pauseUs += gc.cost
    if (gc.gcType === 'Scavenge') {
      scavenges++
      afterScavenge.push(previous)
    } else {
      otherGcs++
    }
  }
  allocated += used - previous
  afterScavenge.sort((a, b) => a - b)
  const window: GcWindow = {
    allocatedBytes: allocated,
    wallMs,
    gcPauseMs: pauseUs / 1000,
    scavenges,
    otherGcs,
    heapAfterScavengeBytes: afterScavenge.length === 0 ? null : afterScavenge[afterScavenge.length >> 1] as number,
    heapUsedBytes: used
  }
  // The work above allocated too: the next window starts after it.
  begin()
  return window
}

let channel: net.Socket | undefined
try {
  channel = new net.Socket({ fd: 3, readable: true, writable: true })
} catch {
  // No fd 3: not started by the bench.
}
if (channel !== undefined) {
  const socket = channel
  // Never what keeps the process alive, nor what makes it fail.
  socket.unref()
  socket.on('error', () => {})
  socket.setEncoding('utf8')
  let buffer = ''
  socket.on('data', (chunk: string) => {
    buffer += chunk
    let nl: number
    while ((nl = buffer.indexOf('\n')) !== -1) {
      const command = buffer.slice(0, nl)
      buffer = buffer.slice(nl + 1)
      if (command === 'mark') socket.write(JSON.stringify(mark()) + '\n')
    }
  })
  begin()
}
