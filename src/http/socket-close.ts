// Watching a client connection for its end: one 'close' listener per socket, however many
// (pipelined) requests wait on it, so a request's watch costs a Set entry, not a listener.
// An HTTP/2 request is watched on its stream (src/http/client-stream.ts): a client that resets
// one stream cancels that request only, not the others on its connection.
import type { ServerHttp2Stream } from 'node:http2'
import type { Socket } from 'node:net'

const watchers = new WeakMap<Socket | ServerHttp2Stream, Set<() => void>>()

/** Calls `fn` when `socket` (or HTTP/2 stream) closes; returns the function that stops watching. */
export function onSocketClose (socket: Socket | ServerHttp2Stream, fn: () => void): () => void {
  let set = watchers.get(socket)
  if (set === undefined) {
    const created = new Set<() => void>()
    set = created
    watchers.set(socket, created)
    socket.once('close', () => { for (const watcher of created) watcher() })
  }
  const watching = set
  watching.add(fn)
  return () => { watching.delete(fn) }
}
