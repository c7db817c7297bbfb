// @fastify/reply-from sends every request through one undici dispatcher. Ours forwards each
// request to the pool of the target the handler selected, so each target keeps its own pool,
// and with the path the handler normalised: reply-from's own URL handling would re-encode it
// and refuses ordinary segments such as `...`.
import type { Dispatcher, Pool } from 'undici'

export class TargetDispatcher {
  private pool: Pool | undefined
  private path: string | undefined

  /** Called by the handler right before `reply.from()`, which dispatches synchronously. */
  use (pool: Pool, pathAndQuery: string): void {
    this.pool = pool
    this.path = pathAndQuery
  }

  request (options: Dispatcher.RequestOptions, callback: (err: Error | null, data: Dispatcher.ResponseData) => void): void {
    const { pool, path } = this
    this.pool = undefined
    this.path = undefined
    if (pool === undefined || path === undefined) throw new Error('gatehouse: no target selected for this request')
    options.path = path
    pool.request(options, callback)
  }
}
