// @fastify/reply-from sends every request through one undici dispatcher. Ours hands each
// dispatch to the UpstreamCall the handler prepared for that request: the call picks targets,
// retries and cancels; reply-from writes the response it ends with.
import type { Dispatcher } from 'undici'
import type { UpstreamCall } from './upstream-call.js'

export class CallDispatcher {
  private next: UpstreamCall | undefined

  /** Called by the handler right before `reply.from()`, which dispatches synchronously. */
  use (call: UpstreamCall): void {
    this.next = call
  }

  request (options: Dispatcher.RequestOptions, callback: (err: Error | null, data: Dispatcher.ResponseData) => void): void {
    const call = this.next
    this.next = undefined
    if (call === undefined) throw new Error('gatehouse: no upstream call prepared for this request')
    call.run(options, callback)
  }
}
