// Minimum data rates (Kestrel's MinRequestBodyDataRate and MinResponseDataRate, nginx's
// client_body_timeout and send_timeout): a client that sends the body the gateway is waiting for,
// or reads its response, slower than MIN_DATA_RATE (averaged over the last MIN_DATA_RATE_GRACE)
// once that grace has passed is cut, so it cannot hold memory or an upstream slot (a response the
// client does not read holds what was read ahead for it, and past that its upstream request).
import type { Socket } from 'node:net'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'

export interface ClientRateOptions {
  /** Bytes per second; 0 turns the check off. */
  minDataRate: number
  graceMs: number
  /** REQUEST_BUFFER_MEMORY. */
  requestBufferMemory: number
  /** RESPONSE_BUFFER_MEMORY. */
  responseBufferMemory: number
}

/** How often watched responses are checked. */
const SWEEP_MS = 1000

type Direction = 'request' | 'response'

/** Bytes moved so far in one direction of a client request: its socket's (HTTP/1.x), or counted for its HTTP/2 stream. */
export type Progress = () => number

interface Watched {
  progress: Progress
  direction: Direction
  /** Bytes moved on the socket in that direction, when the watch began and at each sweep since, as far back as the window needs. */
  samples: Array<{ at: number, bytes: number }>
  cut: () => void
}

/** What Node's types leave out: the chunks a socket holds that libuv has not been given yet, and libuv's write queue. */
interface SocketInternals {
  writableBuffer?: Array<{ chunk: Buffer | string, encoding: BufferEncoding }>
  _handle?: { writeQueueSize?: number } | null
}

/**
 * Bytes the kernel took. Node's bytesWritten counts every byte written; those the kernel has not
 * taken wait in the socket's buffer (not yet handed to libuv) or in libuv's write queue. (Not
 * writableLength: it also counts a write libuv is working on, which may be megabytes long.)
 */
export function socketProgress (socket: Socket, direction: Direction): Progress {
  return () => moved(socket, direction)
}

function moved (socket: Socket, direction: Direction): number {
  if (direction === 'request') return socket.bytesRead
  const internals = socket as Socket & SocketInternals
  let waiting = internals._handle?.writeQueueSize ?? 0
  for (const { chunk, encoding } of internals.writableBuffer ?? []) waiting += typeof chunk === 'string' ? Buffer.byteLength(chunk, encoding) : chunk.length
  return socket.bytesWritten - waiting
}

/** Memory for what slow clients have not sent yet or not read yet: one budget for request bodies received whole (REQUEST_BUFFER_MEMORY), one for responses read ahead of their clients (RESPONSE_BUFFER_MEMORY). */
export class BufferMemory {
  used = 0
  constructor (readonly limit: number) {}

  /** Takes `bytes` if they fit. */
  take (bytes: number): boolean {
    if (this.used + bytes > this.limit) return false
    this.used += bytes
    return true
  }

  give (bytes: number): void {
    this.used -= bytes
  }
}

export class ClientRate {
  /** Clients cut, by the direction they were slow in. */
  readonly slow = { request: 0, response: 0 }
  readonly memory: Record<Direction, BufferMemory>
  readonly #watched = new Set<Watched>()
  #timer: NodeJS.Timeout | undefined

  constructor (readonly minDataRate: number, readonly graceMs: number, requestBufferMemory: number, responseBufferMemory: number) {
    this.memory = { request: new BufferMemory(requestBufferMemory), response: new BufferMemory(responseBufferMemory) }
  }

  /**
   * A response write was refused: the client is not keeping up. From now until the returned
   * function is called (at 'drain', or when the response closes), the client must read at least
   * minDataRate bytes per second over the last graceMs once graceMs have passed, or `cut` is called.
   */
  behind (progress: Progress, cut: () => void): () => void {
    return this.#watch(progress, 'response', cut)
  }

  /**
   * The gateway waits for a request body it keeps in memory: until the returned function is
   * called, the client must send at least minDataRate bytes per second over the last graceMs once
   * graceMs have passed, or `cut` is called. (Not for a body streamed upstream: an upstream that reads
   * slowly would slow the client down through no fault of its own.)
   */
  receiving (progress: Progress, cut: () => void): () => void {
    return this.#watch(progress, 'request', cut)
  }

  #watch (progress: Progress, direction: Direction, cut: () => void): () => void {
    if (this.minDataRate === 0) return () => {}
    const watched: Watched = { progress, direction, samples: [{ at: Date.now(), bytes: progress() }], cut }
    this.#watched.add(watched)
    this.#timer ??= setInterval(() => { this.#sweep() }, SWEEP_MS).unref()
    return () => { this.#forget(watched) }
  }

  close (): void {
    this.#watched.clear()
    this.#stopSweeping()
  }

  #forget (watched: Watched): void {
    this.#watched.delete(watched)
    if (this.#watched.size === 0) this.#stopSweeping()
  }

  #stopSweeping (): void {
    clearInterval(this.#timer)
    this.#timer = undefined
  }

  #sweep (): void {
    const now = Date.now()
    for (const w of this.#watched) {
      const bytes = w.progress()
      const samples = w.samples
      samples.push({ at: now, bytes })
      if (now - (samples[0] as { at: number }).at < this.graceMs) continue
      // The window: from the newest sample at least graceMs old (a burst long ago does not count).
      while (now - (samples[1] as { at: number }).at >= this.graceMs && samples.length > 2) samples.shift()
      const from = samples[0] as { at: number, bytes: number }
      if ((bytes - from.bytes) * 1000 / (now - from.at) >= this.minDataRate) continue
      this.#forget(w)
      this.slow[w.direction]++
      w.cut()
    }
  }
}

declare module 'fastify' {
  interface FastifyInstance {
    clientRate: ClientRate
  }
}

async function clientRatePlugin (app: FastifyInstance, opts: ClientRateOptions): Promise<void> {
  const rate = new ClientRate(opts.minDataRate, opts.graceMs, opts.requestBufferMemory, opts.responseBufferMemory)
  app.decorate('clientRate', rate)
  app.addHook('onClose', async () => { rate.close() })
}

export default fp(clientRatePlugin, { name: 'gatehouse-client-rate', fastify: '5.x' })
