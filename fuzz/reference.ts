// The fuzzer's own reading of the bytes: a strict RFC 9112 request parser (with the gateway's
// documented refusals: Transfer-Encoding on HTTP/1.0 or other than `chunked`, CL with TE, two
// CLs, two Hosts) and a response parser for what the gateway sends back. The oracle compares what
// the gateway and its upstream did against this reading.

const TCHAR = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/
// RFC 9112 §3: a recipient MAY take a run of spaces as one separator (llhttp does).
const REQUEST_LINE = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) +([\x21-\x7e]+) +HTTP\/1\.([01])$/
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/
// chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ( token / quoted-string ) ] ), and an empty
// value after "=" (`5;a=`): llhttp takes it, and it cannot move where the chunk ends (the size
// comes before the ";", and the gateway re-frames the body and forwards no extension).
const CHUNK_LINE = /^([0-9A-Fa-f]+)((?:[ \t]*;[ \t]*[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:[ \t]*=[ \t]*(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]*|"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"))?)*)$/

export interface RefRequest {
  method: string
  target: string
  /** 0 for HTTP/1.0, 1 for HTTP/1.1. */
  minor: number
  headers: Array<[string, string]>
  bodyLength: number
  chunked: boolean
  /** Byte offsets of this request in the case's bytes. */
  start: number
  end: number
}

export interface RefParse {
  requests: RefRequest[]
  /**
   * Why reading stopped before the end of the bytes: `invalid` (a server must refuse what
   * follows), `incomplete` (a server must wait for more), `close` (the last request ends the
   * connection: the bytes after it are never read). Absent when every byte was a whole request.
   */
  stop?: { kind: 'invalid' | 'incomplete' | 'close', reason: string, at: number }
  /** The request whose head is whole but whose body is missing or malformed, if that is where reading stopped. */
  partial?: RefRequest
}

class Stop extends Error {
  partial?: RefRequest
  constructor (readonly kind: 'invalid' | 'incomplete', reason: string) { super(reason) }
}

/** The requests in `bytes`, in order, as a strict HTTP/1.1 server must read them. */
export function parseRequests (bytes: Buffer): RefParse {
  const text = bytes.toString('latin1')
  const requests: RefRequest[] = []
  let p = 0
  while (p < text.length) {
    const start = p
    try {
      // RFC 9112 §2.2: empty lines before a request line are ignored (a bare LF may end a line there).
      while (text[p] === '\n' || text.startsWith('\r\n', p)) p += text[p] === '\n' ? 1 : 2
      if (p >= text.length) break
      const [line, afterLine] = readLine(text, p)
      p = afterLine
      const m = REQUEST_LINE.exec(line)
      if (m === null) {
        const version = / HTTP\/(0\.9|2\.0)$/.exec(line)
        throw new Stop('invalid', version === null ? `request line ${JSON.stringify(line.slice(0, 80))}` : `request line with HTTP/${version[1]}`)
      }
      const method = m[1] as string
      const target = m[2] as string
      const minor = Number(m[3])
      const [headers, afterHeaders] = readFields(text, p)
      p = afterHeaders
      const values = (name: string): string[] => headers.filter(([n]) => n.toLowerCase() === name).map(([, v]) => v)
      const hosts = values('host')
      if (hosts.length > 1 || (minor === 1 && hosts.length === 0)) throw new Stop('invalid', `${hosts.length} Host headers`)
      if (method === 'CONNECT') throw new Stop('invalid', 'CONNECT is a tunnel, not a request')
      const te = values('transfer-encoding')
      const cl = values('content-length')
      let bodyLength = 0
      let chunked = false
      const headOnly = (err: unknown): never => {
        if (err instanceof Stop) err.partial = { method, target, minor, headers, bodyLength: 0, chunked: te.length > 0, start, end: text.length }
        throw err
      }
      if (te.length > 0) {
        if (minor === 0) throw new Stop('invalid', 'Transfer-Encoding in HTTP/1.0')
        if (cl.length > 0) throw new Stop('invalid', 'Content-Length with Transfer-Encoding')
        if (te.join(', ').toLowerCase() !== 'chunked') throw new Stop('invalid', `Transfer-Encoding ${JSON.stringify(te)}`)
        chunked = true
        try {
          [bodyLength, p] = readChunked(text, p)
        } catch (err) { headOnly(err) }
      } else if (cl.length > 0) {
        if (cl.length > 1) throw new Stop('invalid', 'more than one Content-Length')
        const value = cl[0] as string
        if (!/^[0-9]{1,15}$/.test(value)) throw new Stop('invalid', `Content-Length ${JSON.stringify(value)}`)
        bodyLength = Number(value)
        if (p + bodyLength > text.length) headOnly(new Stop('incomplete', `body: ${text.length - p} of ${bodyLength} bytes`))
        p += bodyLength
      }
      requests.push({ method, target, minor, headers, bodyLength, chunked, start, end: p })
      // llhttp (Node's parser) reads the legacy Proxy-Connection as Connection: so does this reading.
      const connection = [...values('connection'), ...values('proxy-connection')].join(',').toLowerCase().split(',').map(s => s.trim())
      const keepAlive = minor === 1 ? !connection.includes('close') : connection.includes('keep-alive') && !connection.includes('close')
      if (!keepAlive && p < text.length) return { requests, stop: { kind: 'close', reason: 'connection closes after this request', at: p } }
      if (!keepAlive) return { requests }
    } catch (err) {
      if (err instanceof Stop) return { requests, stop: { kind: err.kind, reason: err.message, at: start }, ...(err.partial === undefined ? {} : { partial: err.partial }) }
      throw err
    }
  }
  return { requests }
}

/** One CRLF-terminated line; a bare CR or LF is invalid. */
function readLine (text: string, p: number): [string, number] {
  const lf = text.indexOf('\n', p)
  const cr = text.indexOf('\r', p)
  if (lf === -1) {
    if (cr !== -1 && cr < text.length - 1) throw new Stop('invalid', 'bare CR')
    throw new Stop('incomplete', 'line without its end')
  }
  if (cr !== -1 && cr < lf - 1) throw new Stop('invalid', 'bare CR')
  if (cr !== lf - 1) throw new Stop('invalid', 'bare LF')
  return [text.slice(p, cr), lf + 1]
}

/** Field lines up to the empty line (header section or trailer section). */
function readFields (text: string, p: number): [Array<[string, string]>, number] {
  const fields: Array<[string, string]> = []
  for (;;) {
    const [line, next] = readLine(text, p)
    p = next
    if (line === '') return [fields, p]
    if (line[0] === ' ' || line[0] === '\t') throw new Stop('invalid', 'obsolete line folding')
    const colon = line.indexOf(':')
    const name = colon === -1 ? '' : line.slice(0, colon)
    if (!TCHAR.test(name)) throw new Stop('invalid', `field name ${JSON.stringify(line.slice(0, 40))}`)
    const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '')
    if (!FIELD_VALUE.test(value)) throw new Stop('invalid', `field value of ${name}`)
    fields.push([name, value])
  }
}

/** A chunked body: its decoded length and where it ends. */
function readChunked (text: string, p: number): [number, number] {
  let length = 0
  for (;;) {
    const [line, next] = readLine(text, p)
    const m = CHUNK_LINE.exec(line)
    if (m === null) throw new Stop('invalid', `chunk line ${JSON.stringify(line.slice(0, 40))}`)
    const digits = (m[1] as string).replace(/^0+(?=.)/, '')
    if (digits.length > 12) throw new Stop('invalid', 'chunk size overflows')
    const size = parseInt(digits, 16)
    p = next
    if (size === 0) {
      const [, end] = readFields(text, p)
      return [length, end]
    }
    if (p + size + 2 > text.length) {
      if (p + size <= text.length && !'\r\n'.startsWith(text.slice(p + size, p + size + 2))) throw new Stop('invalid', 'chunk data not followed by CRLF')
      throw new Stop('incomplete', 'chunk data')
    }
    if (text.slice(p + size, p + size + 2) !== '\r\n') throw new Stop('invalid', 'chunk data not followed by CRLF')
    length += size
    p += size + 2
  }
}

export interface RefResponse {
  status: number
  /** Lowercased names; repeated fields joined with ', '. */
  headers: Record<string, string>
  body: string
  /** Whether the body was read to its framed end (or to the close, when framed by close). */
  complete: boolean
  /**
   * The status line of a 1xx interim response found where this response's body starts: an
   * interim response written after the final response's head (RFC 9110 §15.2: 1xx come before
   * the final response). A client reads it as body bytes.
   */
  interimInBody?: string
}

/**
 * The final responses in `bytes` (1xx interim responses are skipped). `methods[k]` is the
 * method of the k-th request, for HEAD's bodiless answers; `closed` says whether the
 * connection was closed (a close-delimited body is then complete).
 */
export function parseResponses (bytes: Buffer, methods: readonly string[], closed: boolean): RefResponse[] {
  const text = bytes.toString('latin1')
  const out: RefResponse[] = []
  let p = 0
  while (p < text.length) {
    const m = /^HTTP\/1\.[01] (\d{3})[^\r\n]*\r\n/.exec(text.slice(p, p + 1024))
    if (m === null) break
    const headEnd = text.indexOf('\r\n\r\n', p)
    if (headEnd === -1) break
    const status = Number(m[1])
    const headers: Record<string, string> = {}
    for (const line of text.slice(p + m[0].length, headEnd).split('\r\n')) {
      const colon = line.indexOf(':')
      if (colon <= 0) continue
      const name = line.slice(0, colon).trim().toLowerCase()
      const value = line.slice(colon + 1).trim()
      headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`
    }
    p = headEnd + 4
    if (status < 200) continue
    const method = methods[out.length]
    const bodiless = method === 'HEAD' || status === 204 || status === 304 ||
      (method === undefined && text.startsWith('HTTP/1.', p))
    const interim = bodiless ? null : /^HTTP\/1\.[01] 1\d\d[^\r\n]*/.exec(text.slice(p, p + 256))
    const extra = interim === null ? {} : { interimInBody: interim[0] }
    if (bodiless) {
      out.push({ status, headers, body: '', complete: true })
    } else if (headers['transfer-encoding']?.toLowerCase() === 'chunked') {
      let body = ''
      let complete = false
      for (;;) {
        const lineEnd = text.indexOf('\r\n', p)
        if (lineEnd === -1) break
        const size = parseInt(text.slice(p, lineEnd), 16)
        if (Number.isNaN(size)) break
        if (size === 0) {
          const end = text.indexOf('\r\n\r\n', lineEnd)
          if (end === -1 && !text.startsWith('\r\n', lineEnd + 2)) break
          p = text.startsWith('\r\n', lineEnd + 2) ? lineEnd + 4 : end + 4
          complete = true
          break
        }
        if (lineEnd + 2 + size + 2 > text.length) break
        body += text.slice(lineEnd + 2, lineEnd + 2 + size)
        p = lineEnd + 2 + size + 2
      }
      out.push({ status, headers, body, complete, ...extra })
      if (!complete) break
    } else if (headers['content-length'] !== undefined) {
      const length = Number(headers['content-length'])
      const complete = p + length <= text.length
      out.push({ status, headers, body: text.slice(p, p + length), complete, ...extra })
      if (!complete) break
      p += length
    } else {
      out.push({ status, headers, body: text.slice(p), complete: closed, ...extra })
      break
    }
  }
  return out
}
