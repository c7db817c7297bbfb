// Request bodies on their way upstream: the route's size limit (declared or counted while
// streaming), and request buffering: a body up to the route's requestBuffer is received whole
// before a target is asked (a slow uploader holds memory, not an upstream slot), within one
// memory budget for all of them, and is what a retry sends again.
import { PassThrough, Transform, type Readable, type TransformCallback } from 'node:stream'
import { BodyTooLargeError, ClientClosedError, RequestBufferFullError } from '../../src/errors.js'
import type { BufferMemory } from '../client-rate/index.js'

/** Passes a chunked body through, failing it (and calling `onExceeded`) past `limit` bytes. */
export function limitBody (limit: number, onExceeded: () => void): Transform {
  let seen = 0
  return new Transform({
    transform (chunk: Buffer, _encoding: string, callback: TransformCallback) {
      seen += chunk.length
      if (seen > limit) {
        onExceeded()
        callback(new BodyTooLargeError(limit))
      } else {
        callback(null, chunk)
      }
    }
  })
}

export interface ReceivingBody {
  /** The whole body; or, for a chunked body that grew past the buffer, a stream of all of it. */
  body: Promise<Buffer | Readable>
  /** Bytes taken from the memory budget, to give back when the request is over. */
  held: () => number
  /** Ends the wait with `reason`; the connection stays open to answer. */
  stop: (reason: Error) => void
}

/**
 * Receives a body whole. A declared length is taken from `memory` at once; a chunked body chunk
 * by chunk, and past `limit` it is streamed after all: what was read, then the rest. Fails with
 * RequestBufferFullError when the memory is spent, never streams instead; with ClientClosedError
 * if the client goes away before the end.
 */
export function receiveBody (stream: Readable, limit: number, memory: BufferMemory, declared: number | undefined): ReceivingBody {
  let held = 0
  let stop: (reason: Error) => void = () => {}
  const body = new Promise<Buffer | Readable>((resolve, reject) => {
    if (declared !== undefined) {
      if (!memory.take(declared)) {
        reject(new RequestBufferFullError())
        return
      }
      held = declared
    }
    const chunks: Buffer[] = []
    let size = 0
    // Destroyed without an error (the client went away): the body will never end. An error made
    // only when it happens: a stack trace per request costs more than receiving the body.
    const onClose = (): void => { reject(new ClientClosedError()) }
    const end = (reason: Error | undefined): void => {
      stream.off('data', onData)
      stream.off('close', onClose)
      if (reason === undefined) return
      stream.pause()
      chunks.length = 0
      reject(reason)
    }
    const onData = (chunk: Buffer): void => {
      size += chunk.length
      // A declared length was taken at once; a chunked body takes what it keeps, chunk by chunk.
      if (declared === undefined && size <= limit) {
        if (!memory.take(chunk.length)) {
          end(new RequestBufferFullError())
          return
        }
        held += chunk.length
      }
      chunks.push(chunk)
      if (size <= limit) return
      // Larger than the buffer: stream it after all, from its first byte.
      end(undefined)
      memory.give(held)
      held = 0
      const all = new PassThrough()
      for (const c of chunks) all.write(c)
      chunks.length = 0
      stream.once('error', err => all.destroy(err))
      stream.pipe(all)
      resolve(all)
    }
    stream.on('data', onData)
    stream.once('end', () => {
      stream.off('close', onClose)
      resolve(chunks.length === 1 ? chunks[0] as Buffer : Buffer.concat(chunks, size))
    })
    stream.once('error', reject)
    stream.once('close', onClose)
    stop = end
  })
  return { body, held: () => held, stop }
}
