// Request bodies on their way upstream: the route's size limit (declared or counted while
// streaming), and the copy kept in memory so a retry can send the body again.
import { Transform, type Readable, type TransformCallback } from 'node:stream'
import { BodyTooLargeError, ClientClosedError } from '../../src/errors.js'

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

/**
 * The whole body in memory; rejects if the client goes away before it ends, or with `stop`'s
 * reason when it is called (the connection stays open to answer).
 */
export function readAll (stream: Readable): { body: Promise<Buffer>, stop: (reason: Error) => void } {
  let stop: (reason: Error) => void = () => {}
  const body = new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = []
    const onData = (chunk: Buffer): void => { chunks.push(chunk) }
    stream.on('data', onData)
    stream.once('end', () => resolve(Buffer.concat(chunks)))
    stream.once('error', reject)
    // Destroyed without an error (the client went away): the body will never end.
    stream.once('close', () => reject(new ClientClosedError()))
    stop = reason => {
      stream.off('data', onData)
      stream.pause()
      chunks.length = 0
      reject(reason)
    }
  })
  return { body, stop }
}
