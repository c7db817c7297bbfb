// @fastify/reply-from sends every request through one undici dispatcher. Ours forwards each
// request to the pool of the target the handler selected, so each target keeps its own pool.
import type { Dispatcher, Pool } from 'undici'

export class TargetDispatcher {
  private next: Pool | undefined

  /** Called by the handler right before `reply.from()`, which dispatches synchronously. */
  use (pool: Pool): void {
    this.next = pool
  }

  request (options: Dispatcher.RequestOptions, callback: (err: Error | null, data: Dispatcher.ResponseData) => void): void {
    const pool = this.next
    this.next = undefined
    if (pool === undefined) throw new Error('gatehouse: no target selected for this request')
    pool.request(options, callback)
  }
}
