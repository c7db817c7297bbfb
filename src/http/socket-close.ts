// Watching a client connection for its end: one 'close' listener per socket, however many
// (pipelined) requests wait on it, so a request's watch costs a Set entry, not a listener.
import type { Socket } from 'node:net'

const watchers = new WeakMap<Socket, Set<() => void>>()

/** Calls `fn` when `socket` closes; returns the function that stops watching. */
export function onSocketClose (socket: Socket, fn: () => void): () => void {
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
