// What the client-error handler answered for a request already in flight (its body broke off, or
// REQUEST_TIMEOUT passed while it was still arriving): that request's own access line reports the
// answer, so the request has one line, with the status the client received, not a 499 beside it.
import type { IncomingMessage } from 'node:http'
import type { Failure } from '../logger.js'

export interface ParserAnswer extends Failure {
  statusCode: number
}

const answers = new WeakMap<IncomingMessage, ParserAnswer>()

export function answerInFlight (req: IncomingMessage, answer: ParserAnswer): void {
  answers.set(req, answer)
}

/** The answer written for `req` by the client-error handler, if any. */
export function answeredInFlight (req: IncomingMessage): ParserAnswer | undefined {
  return answers.get(req)
}
