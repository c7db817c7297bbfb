// A fixed-count load generator for the guard: exactly N GETs over a set of keep-alive connections
// (undici, one request at a time on each), every answer read to its end. The connections stay
// open between runs, so a measured run opens none. It works in the guard's own process: its CPU
// time does not matter there, only the count does.
import { Pool } from 'undici'

export interface LoadResult {
  requests: number
  /** Answers whose status was not 2xx, and requests that failed outright. */
  non2xx: number
  errors: number
  elapsedMs: number
}

export class FixedLoader {
  readonly #pool: Pool
  readonly #path: string
  readonly #connections: number

  constructor (origin: string, path: string, connections: number) {
    this.#pool = new Pool(origin, { connections, pipelining: 1, headersTimeout: 10_000, bodyTimeout: 10_000 })
    this.#path = path
    this.#connections = connections
  }

  /** Sends exactly `requests` requests (throws if they are not all answered within `timeoutMs`). */
  async run (requests: number, timeoutMs: number): Promise<LoadResult> {
    let sent = 0
    let non2xx = 0
    let errors = 0
    const began = performance.now()
    const deadline = began + timeoutMs
    const worker = async (): Promise<void> => {
      while (sent < requests && performance.now() < deadline) {
        sent++
        try {
          const { statusCode, body } = await this.#pool.request({ path: this.#path, method: 'GET' })
          await body.dump()
          if (statusCode < 200 || statusCode > 299) non2xx++
        } catch {
          errors++
        }
      }
    }
    await Promise.all(Array.from({ length: this.#connections }, worker))
    if (sent < requests) throw new Error(`load: ${sent} of ${requests} requests sent within ${timeoutMs / 1000} s`)
    return { requests: sent, non2xx, errors, elapsedMs: performance.now() - began }
  }

  async close (): Promise<void> {
    await this.#pool.close()
  }
}
