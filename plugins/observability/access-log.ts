// One access line per request, whatever its outcome, built from what the request already holds
// and written straight into the logger's destination (pino's asynchronous one): no child logger,
// no serializer walking an object. The fields are pino's (level, time, pid, hostname, reqId, msg).
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Failure } from '../../src/logger.js'

export interface AccessLogOptions {
  write: (line: string) => void
  /** `"pid":…,"hostname":…`, as the logger writes them. */
  base: string
}

export class AccessLog {
  constructor (private readonly o: AccessLogOptions) {}

  write (request: FastifyRequest, reply: FastifyReply, statusCode: number, failure: Failure | null): void {
    const target = request.target
    let line = `{"level":30,"time":${Date.now()},${this.o.base},"reqId":${JSON.stringify(request.id)}`
    if (request.span != null) {
      const { traceId, spanId } = request.span.spanContext()
      line += `,"trace_id":"${traceId}","span_id":"${spanId}"`
    }
    line += `,"msg":"request completed","method":"${request.method}","url":${JSON.stringify(request.url)},"statusCode":${statusCode}`
    // Undefined on a request answered outside the proxied scope (a framework error): no upstream either.
    if (target != null) line += `,"upstream":${JSON.stringify(target.upstream)},"target":${JSON.stringify(target.origin)}`
    line += `,"responseTimeMs":${Math.round(reply.elapsedTime * 100) / 100},"httpVersion":"${request.raw.httpVersion}"`
    if (failure !== null) line += `,"code":${JSON.stringify(failure.code ?? '')},"error":${JSON.stringify(failure.message)}`
    this.o.write(line + '}\n')
  }
}
