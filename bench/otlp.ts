// The bench's OTLP sink for the "gatehouse + tracing" path: a node:http server on 127.0.0.1 in the
// runner that takes the gateway's span exports (OTLP/HTTP, POST /v1/traces), answers each with 200
// and an empty body (an empty ExportTraceServiceResponse: everything accepted), and counts them,
// their bytes and the spans in them. It keeps nothing: a collector that costs the gateway as little
// as one can.
import { once } from 'node:events'
import http from 'node:http'
import type { AddressInfo } from 'node:net'

export const TRACES_PATH = '/v1/traces'
const PROTOBUF = 'application/x-protobuf'

export interface SinkCounts {
  /** POST /v1/traces requests answered, and the bytes of their bodies. */
  exports: number
  bytes: number
  /** Spans in the bodies that could be read (protobuf, uncompressed). */
  spans: number
  /** Bodies whose spans were not counted: another content type, compressed, or malformed. */
  uncounted: number
  /** Any other request (answered 404). */
  other: number
}

export interface OtlpSink {
  /** For OTEL_EXPORTER_OTLP_ENDPOINT (the SDK appends /v1/traces). */
  endpoint: string
  counts: () => SinkCounts
  close: () => Promise<void>
}

/** The length-delimited fields numbered `field` of a protobuf message, others skipped; throws on a malformed one. */
function * lengthDelimited (message: Uint8Array, field: number): Generator<Uint8Array> {
  let i = 0
  const varint = (): number => {
    let n = 0
    for (let shift = 0; ; shift += 7) {
      const byte = message[i++]
      if (byte === undefined || shift > 49) throw new Error('truncated varint')
      n += (byte & 0x7f) * 2 ** shift
      if (byte < 0x80) return n
    }
  }
  while (i < message.length) {
    const tag = varint()
    const wireType = tag % 8
    if (wireType === 0) varint()
    else if (wireType === 1) i += 8
    else if (wireType === 5) i += 4
    else if (wireType === 2) {
      const length = varint()
      if (i + length > message.length) throw new Error('truncated field')
      if (Math.floor(tag / 8) === field) yield message.subarray(i, i + length)
      i += length
    } else throw new Error(`wire type ${wireType}`)
  }
  if (i !== message.length) throw new Error('truncated message')
}

/**
 * The spans of an ExportTraceServiceRequest: resource_spans (1) > scope_spans (2) > spans (2),
 * each span skipped over, not decoded.
 */
export function countSpans (body: Uint8Array): number {
  let n = 0
  for (const resourceSpans of lengthDelimited(body, 1)) {
    for (const scopeSpans of lengthDelimited(resourceSpans, 2)) {
      const spans = lengthDelimited(scopeSpans, 2)
      while (spans.next().done !== true) n++
    }
  }
  return n
}

/** The sink on 127.0.0.1:0. */
export async function startSink (): Promise<OtlpSink> {
  const counts: SinkCounts = { exports: 0, bytes: 0, spans: 0, uncounted: 0, other: 0 }
  const server = http.createServer((req, res) => {
    if (req.method !== 'POST' || req.url !== TRACES_PATH) {
      req.resume()
      counts.other++
      res.writeHead(404, { 'content-length': 0 })
      res.end()
      return
    }
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => { chunks.push(chunk) })
    req.once('end', () => {
      const body = Buffer.concat(chunks)
      counts.exports++
      counts.bytes += body.length
      const readable = req.headers['content-type'] === PROTOBUF && (req.headers['content-encoding'] ?? 'identity') === 'identity'
      try {
        if (!readable) throw new Error('not plain protobuf')
        counts.spans += countSpans(body)
      } catch {
        counts.uncounted++
      }
      res.writeHead(200, { 'content-type': PROTOBUF, 'content-length': 0 })
      res.end()
    })
  })
  // The exporter keeps its connection between exports (every 5 s at the least busy): never close it first.
  server.keepAliveTimeout = 65_000
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    counts: () => ({ ...counts }),
    close: () => new Promise<void>(resolve => {
      server.closeAllConnections()
      server.close(() => resolve())
    })
  }
}
