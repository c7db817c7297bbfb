// Minimum data rates (Kestrel's MinRequestBodyDataRate and MinResponseDataRate, nginx's
// client_body_timeout and send_timeout): a client that sends the body the gateway is waiting for,
// or reads its response, slower than MIN_DATA_RATE once MIN_DATA_RATE_GRACE has passed is cut,
// so it cannot hold memory or an upstream slot (a response the client does not read holds its
// upstream request open: the gateway reads the upstream only as fast as the client reads).
import type { Socket } from 'node:net'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'

export interface ClientRateOptions {
  /** Bytes per second; 0 turns the check off. */
  minDataRate: number
  graceMs: number
}

/** How often watched responses are checked. */
const SWEEP_MS = 1000

type Direction = 'request' | 'response'

interface Watched {
  socket: Socket
  direction: Direction
  /** When the watch began, and the bytes moved on the socket in that direction by then. */
  since: number
  bytes: number
  cut: () => void
}

/**
 * Bytes the kernel took. Node's bytesWritten also counts what still waits: in the socket's buffer
 * (writableLength) and in libuv's write queue (the handle's writeQueueSize, not in Node's types).
 */
function moved (socket: Socket, direction: Direction): number {
  if (direction === 'request') return socket.bytesRead
  const handle = (socket as Socket & { _handle?: { writeQueueSize?: number } | null })._handle
  return socket.bytesWritten - socket.writableLength - (handle?.writeQueueSize ?? 0)
}

export class ClientRate {
  /** Clients cut, by the direction they were slow in. */
  readonly slow = { request: 0, response: 0 }
  readonly #watched = new Set<Watched>()
  #timer: NodeJS.Timeout | undefined

  constructor (readonly minDataRate: number, readonly graceMs: number) {}

  /**
   * A response write was refused: the client is not keeping up. From now until the returned
   * function is called (at 'drain', or when the response ends), the client must read at least
   * minDataRate bytes per second on average once graceMs have passed, or `cut` is called.
   */
  behind (socket: Socket, cut: () => void): () => void {
    return this.#watch(socket, 'response', cut)
  }

  /**
   * The gateway waits for a request body it keeps in memory: until the returned function is
   * called, the client must send at least minDataRate bytes per second on average once graceMs
   * have passed, or `cut` is called. (Not for a body streamed upstream: an upstream that reads
   * slowly would slow the client down through no fault of its own.)
   */
  receiving (socket: Socket, cut: () => void): () => void {
    return this.#watch(socket, 'request', cut)
  }

  #watch (socket: Socket, direction: Direction, cut: () => void): () => void {
    if (this.minDataRate === 0) return () => {}
    const watched: Watched = { socket, direction, since: Date.now(), bytes: moved(socket, direction), cut }
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
      const elapsed = now - w.since
      if (elapsed < this.graceMs) continue
      if ((moved(w.socket, w.direction) - w.bytes) * 1000 / elapsed >= this.minDataRate) continue
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
  const rate = new ClientRate(opts.minDataRate, opts.graceMs)
  app.decorate('clientRate', rate)
  app.addHook('onClose', async () => { rate.close() })
}

export default fp(clientRatePlugin, { name: 'gatehouse-client-rate', fastify: '5.x' })
