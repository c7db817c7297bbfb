// One access-log line per request, when it completes, with the upstream and target it went to
// (Fastify's default is two lines: incoming and completed).
import { LogController, type FastifyReply, type FastifyRequest } from 'fastify'

export class AccessLog extends LogController {
  constructor () {
    super({ requestIdLogLabel: 'reqId' })
  }

  override incomingRequest (): void {}

  override requestCompleted (error: Error | null | undefined, request: FastifyRequest, reply: FastifyReply): void {
    const line = {
      method: request.method,
      url: request.url,
      statusCode: reply.statusCode,
      upstream: request.target?.upstream,
      target: request.target?.origin,
      responseTimeMs: Math.round(reply.elapsedTime * 100) / 100
    }
    if (error == null) request.log.info(line, 'request completed')
    else request.log.error({ ...line, err: error }, 'request errored')
  }
}
