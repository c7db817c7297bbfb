// gRPC in the gateway's terms: which requests are gRPC calls, their deadline header, the status a
// gateway error becomes, and the answer the gateway gives in gRPC's own form: HTTP 200 with
// grpc-status and grpc-message in one HEADERS frame that ends the stream ("trailers-only").
import type { FastifyReply, FastifyRequest } from 'fastify'

/** The gRPC status codes the gateway answers with (grpc/doc/statuscodes.md). */
export const GrpcStatus = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  DEADLINE_EXCEEDED: 4,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16
} as const

// application/grpc, application/grpc+proto, application/grpc;charset=...; not application/grpc-web.
const GRPC_CONTENT_TYPE = /^application\/grpc(?:[+;]|$)/i

export function isGrpcRequest (request: FastifyRequest): boolean {
  const type = request.headers['content-type']
  return type !== undefined && GRPC_CONTENT_TYPE.test(type)
}

/**
 * The gRPC status of an answer the gateway would give with this HTTP status: gRPC's own mapping
 * (doc/http-grpc-status-mapping.md), made finer where the gateway knows more: a spent rate limit
 * or a body over the limit is RESOURCE_EXHAUSTED, a timeout DEADLINE_EXCEEDED, a client that left
 * CANCELLED.
 */
export function grpcStatusOf (statusCode: number): number {
  switch (statusCode) {
    case 400: return GrpcStatus.INTERNAL
    case 401: return GrpcStatus.UNAUTHENTICATED
    case 403: return GrpcStatus.PERMISSION_DENIED
    case 404: return GrpcStatus.UNIMPLEMENTED
    case 408: case 504: return GrpcStatus.DEADLINE_EXCEEDED
    case 413: case 429: return GrpcStatus.RESOURCE_EXHAUSTED
    case 499: return GrpcStatus.CANCELLED
    case 502: case 503: return GrpcStatus.UNAVAILABLE
    default: return statusCode >= 500 ? GrpcStatus.INTERNAL : GrpcStatus.UNKNOWN
  }
}

/** grpc-message is percent-encoded: everything outside printable ASCII, and `%` itself. */
export function grpcMessage (text: string): string {
  return Buffer.from(text, 'utf8').reduce((out, byte) => out + (byte >= 0x20 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`), '')
}

/**
 * Ends the call with a status and no message. The headers go out with the stream's end, in one
 * frame: a client reads grpc-status there only in that form (headers then an empty end is an
 * error to grpc-js: "Call ended without gRPC status").
 */
export function answerGrpc (reply: FastifyReply, code: number, message: string): void {
  const res = reply.raw
  reply.hijack()
  for (const [name, value] of Object.entries(reply.getHeaders())) if (value !== undefined) res.setHeader(name, value)
  res.statusCode = 200
  res.setHeader('content-type', 'application/grpc')
  res.setHeader('grpc-status', String(code))
  res.setHeader('grpc-message', grpcMessage(message))
  res.end()
}

const UNIT_MS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 0.001, n: 0.000_001 }

/** The client's deadline from grpc-timeout (at most 8 digits and a unit: H M S m u n), in ms; undefined when absent or malformed. */
export function grpcTimeoutMs (value: string | undefined): number | undefined {
  if (value === undefined) return undefined
  const m = /^(\d{1,8})([HMSmun])$/.exec(value)
  return m === null ? undefined : Number(m[1]) * (UNIT_MS[m[2] as string] as number)
}

/** grpc-timeout for what is left of a deadline, in whole milliseconds (at least 1). */
export function grpcTimeout (ms: number): string {
  return `${Math.max(1, Math.ceil(ms))}m`
}
