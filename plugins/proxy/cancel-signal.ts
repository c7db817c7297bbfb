// A cancellation signal for undici (which takes an EventEmitter-style signal as well as an
// AbortSignal): a per-request AbortController costs several microseconds (EventTarget
// machinery) on a path that is otherwise a handful.

type Listener = () => void

export class CancelSignal {
  aborted = false
  reason: Error | undefined
  private listeners: Listener[] | undefined

  abort (reason: Error): void {
    if (this.aborted) return
    this.aborted = true
    this.reason = reason
    const listeners = this.listeners
    this.listeners = undefined
    if (listeners !== undefined) for (const listener of listeners) listener()
  }

  // The EventEmitter subset undici uses: once('abort', fn) and removeListener('abort', fn).
  on (_event: 'abort', listener: Listener): this {
    (this.listeners ??= []).push(listener)
    return this
  }

  once (event: 'abort', listener: Listener): this {
    return this.on(event, listener)
  }

  removeListener (_event: 'abort', listener: Listener): this {
    const i = this.listeners?.indexOf(listener) ?? -1
    if (i !== -1) this.listeners!.splice(i, 1)
    return this
  }
}
