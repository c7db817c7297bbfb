// Generated and mutated HTTP/1.1 requests as raw bytes. Every case is a pure function of
// (seed, index): `generateCase(seed, i)` gives the same bytes on any machine.

/** mulberry32: small, fast, and the same everywhere. */
export class Rng {
  private s: number
  constructor (seed: number) { this.s = seed >>> 0 }
  next (): number {
    let t = (this.s = (this.s + 0x6D2B79F5) >>> 0)
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }

  int (n: number): number { return Math.floor(this.next() * n) }
  chance (p: number): boolean { return this.next() < p }
  pick<T> (items: readonly T[]): T { return items[this.int(items.length)] as T }
}

export interface FuzzCase {
  index: number
  /** Which generator and mutations made it, for reading findings. */
  label: string
  /** The bytes sent on one fresh connection (latin1: one char per byte). */
  bytes: string
}

const METHODS = ['GET', 'GET', 'GET', 'POST', 'POST', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'HEAD', 'OPTIONS', 'TRACE']
const ODD_METHODS = ['CONNECT', 'PROPFIND', 'get', 'Post', 'SEARCH', 'QUERY', 'M-SEARCH', 'PURGE', 'G\tET', 'GET ', '']
const SEGMENTS = [
  'a', 'b', 'api', 'users', '42', 'x y', 'x%20y', '%41', '%7e', '~u', 'caf%C3%A9', 'caf\xc3\xa9', '\xff',
  '.', '..', '%2e', '%2E', '%2e%2e', '.%2e', '%2E.', '...', '.a', 'a.', '..a', '', '', 'rw', 'small', 'health',
  '%2f', '%2F', '%5c', '\\', '%00', '%0', '%zz', '%', ';', 'a;b=c', ':', '@', "!$&'()*+,=", '[', ']', '{x}', '|', '^', '`', '"', '<', '>',
  '#f', '?', 'a?b', '%3f', '%23', '\t', 'smuggled'
]
const QUERIES = ['', '', '', '?', '?a=1', '?a=1&b=2', '?x=/../etc', '?%2e%2e/%2f', '??', '?a#f', '?q=caf\xc3\xa9', '?a=%zz', '?' + 'q'.repeat(50)]
const VERSIONS = ['HTTP/1.1', 'HTTP/1.1', 'HTTP/1.1', 'HTTP/1.1', 'HTTP/1.0']
const ODD_VERSIONS = ['HTTP/1.2', 'HTTP/2.0', 'http/1.1', 'HTTP/1.10', 'HTTP/1', 'HTTP/0.9', 'HTTP/1.1 ', 'HTTP/1.01', '']
const EXTRA_HEADERS: Array<[string, string]> = [
  ['User-Agent', 'fuzz'], ['Accept', '*/*'], ['Content-Type', 'application/json'], ['Content-Type', 'text/plain'],
  ['Connection', 'keep-alive'], ['Connection', 'close'], ['Connection', 'close, x-forwarded-for'], ['Expect', '100-continue'],
  ['X-Forwarded-For', '6.6.6.6'], ['TE', 'trailers'], ['TE', 'chunked'], ['Upgrade', 'websocket'], ['Keep-Alive', 'timeout=5'],
  ['Cookie', 'a=b; c=d'], ['Accept-Encoding', 'gzip'], ['X-Long', 'v'.repeat(300)], ['X-Empty', ''], ['X-Utf8', 'caf\xc3\xa9'],
  ['Proxy-Connection', 'keep-alive'], ['Trailer', 'X-T'], ['X-Forwarded-Host', 'evil'], ['Via', '1.1 x'], ['Range', 'bytes=0-1']
]
const SMUGGLED = 'GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n'
const BODY_ALPHABET = 'abcxyz0123456789 {}":,\r\n\t\0\x7f\xff'

/** One request as lines, so mutations can work on its structure before it becomes bytes. */
interface Draft {
  requestLine: string
  headers: string[]
  /** Line ends, one per head line (request line, headers, the empty line): CRLF unless mutated. */
  eol: string[]
  /** The framed body as sent (chunked: with its chunk lines). */
  body: string
  method: string
}

function randomBody (rng: Rng): string {
  if (rng.chance(0.25)) return ''
  if (rng.chance(0.2)) return rng.chance(0.5) ? SMUGGLED : '0\r\n\r\n' + SMUGGLED
  const length = rng.chance(0.05) ? 100 + rng.int(3000) : rng.int(80)
  let s = ''
  for (let i = 0; i < length; i++) s += rng.chance(0.9) ? String.fromCharCode(97 + rng.int(26)) : rng.pick([...BODY_ALPHABET])
  return s
}

function randomPath (rng: Rng): string {
  if (rng.chance(0.03)) return rng.pick(['*', 'http://internal.example/a', 'http://x/rw/a', '//a', 'a/b', '/', ''])
  const parts: string[] = []
  if (rng.chance(0.25)) parts.push('rw')
  else if (rng.chance(0.1)) parts.push('small')
  const n = rng.int(5)
  for (let i = 0; i < n; i++) parts.push(rng.chance(0.6) ? rng.pick(['a', 'b', 'api', 'users', '42']) : rng.pick(SEGMENTS))
  let path = '/' + parts.join('/')
  if (rng.chance(0.1)) path += '/'
  if (rng.chance(0.05)) path = path.replaceAll('/', '//')
  return path + rng.pick(QUERIES)
}

function hexSize (rng: Rng, n: number): string {
  let s = n.toString(16)
  if (rng.chance(0.2)) s = s.toUpperCase()
  if (rng.chance(0.1)) s = '0'.repeat(1 + rng.int(4)) + s
  if (rng.chance(0.1)) s += rng.pick([';a=b', ';a="q x"', ';a', ' ;a', ';a=b;c=d', ';\ta=\tb', '; a = b'])
  return s
}

function chunkedBody (rng: Rng, data: string): string {
  let out = ''
  let rest = data
  while (rest.length > 0) {
    const n = 1 + rng.int(rest.length)
    out += hexSize(rng, n) + '\r\n' + rest.slice(0, n) + '\r\n'
    rest = rest.slice(n)
  }
  out += hexSize(rng, 0) + '\r\n'
  if (rng.chance(0.1)) out += 'X-T: 1\r\n'
  return out + '\r\n'
}

/** A well-formed request (before mutations). */
/** `id` goes in X-Request-Id (which the gateway forwards) and X-Fuzz-Case: the upstream reads the case from either, so one mutated copy does not lose it. */
function draftRequest (rng: Rng, id: string, last: boolean): Draft {
  const method = rng.chance(0.04) ? rng.pick(ODD_METHODS) : rng.pick(METHODS)
  const version = rng.chance(0.03) ? rng.pick(ODD_VERSIONS) : rng.pick(VERSIONS)
  const headers: string[] = []
  if (rng.chance(0.97)) headers.push(rng.chance(0.9) ? 'Host: x' : rng.pick(['Host: a.example:8080', 'Host: [::1]:80', 'Host:', 'Host: x y', 'host: X']))
  headers.push(`X-Request-Id: ${id}`, `X-Fuzz-Case: ${id}`)
  for (let i = rng.int(3); i > 0; i--) {
    const [name, value] = rng.pick(EXTRA_HEADERS)
    if (name === 'Connection' && value.startsWith('close') && !last) continue
    headers.push(`${name}: ${value}`)
  }
  const data = method === 'GET' || method === 'HEAD' ? (rng.chance(0.15) ? randomBody(rng) : '') : randomBody(rng)
  let body = ''
  const framing = data === '' ? rng.pick(['none', 'none', 'cl']) : rng.chance(0.3) && version === 'HTTP/1.1' ? 'chunked' : 'cl'
  if (framing === 'cl') {
    headers.push(`Content-Length: ${data.length}`)
    body = data
  } else if (framing === 'chunked') {
    headers.push(`Transfer-Encoding: ${rng.chance(0.9) ? 'chunked' : rng.pick(['Chunked', 'CHUNKED'])}`)
    body = chunkedBody(rng, data)
  }
  shuffle(rng, headers)
  return { requestLine: `${method} ${randomPath(rng)} ${version}`, headers, eol: Array(headers.length + 2).fill('\r\n'), body, method }
}

function shuffle<T> (rng: Rng, items: T[]): void {
  for (let i = items.length - 1; i > 0; i--) {
    const j = rng.int(i + 1)
    const t = items[i] as T
    items[i] = items[j] as T
    items[j] = t
  }
}

function render (d: Draft): string {
  const lines = [d.requestLine, ...d.headers, '']
  return lines.map((line, i) => line + (d.eol[i] ?? '\r\n')).join('') + d.body
}

const TE_VARIANTS = [
  'Transfer-Encoding: chunked', 'Transfer-Encoding : chunked', 'Transfer-Encoding:\tchunked', 'Transfer-Encoding: xchunked',
  'Transfer-Encoding: chunked, identity', 'Transfer-Encoding: identity, chunked', 'Transfer-Encoding: gzip, chunked',
  'transfer-encoding: chunked', 'TRANSFER-ENCODING: CHUNKED', 'Transfer-Encoding: chunked ', 'Transfer-Encoding: "chunked"',
  'Transfer-Encoding:chunked', 'Transfer-Encoding: chunk', 'Transfer-Encoding\0: chunked', 'Transfer-Encoding: chunked\0',
  ' Transfer-Encoding: chunked', 'X: y\r\n Transfer-Encoding: chunked', 'Transfer-Encoding: \x0bchunked', 'Transfer_Encoding: chunked',
  'Transfer-Encoding: chunked;q=1', 'Transfer-Encoding: ,chunked', 'Transfer-Encoding: chunked,'
]
const CL_VARIANTS = (n: number): string[] => [
  `Content-Length: ${n}`, `Content-Length: ${n + 1}`, `Content-Length: ${Math.max(0, n - 1)}`, `Content-Length: 0${n}`,
  `Content-Length: +${n}`, `Content-Length: -${n}`, `Content-Length: ${n}, ${n}`, `Content-Length: ${n} `, `Content-Length:${n}`,
  `Content-Length : ${n}`, `content-length: ${n}`, `Content-Length: 0x${n.toString(16)}`, `Content-Length: ${n}.0`,
  'Content-Length: 99999999999999999999', 'Content-Length: 18446744073709551616', `Content-Length: ${n}\0`, 'Content-Length: ',
  `Content-Length: \t${n}`, `Content-Length: ${n}\t`, `Content-Length: ${n}a`
]

/** Mutations of one request's structure. Each returns its name. */
const DRAFT_MUTATIONS: Array<(rng: Rng, d: Draft) => string> = [
  (rng, d) => { const i = rng.int(d.headers.length); d.headers.splice(i, 0, d.headers[i] ?? 'Host: x'); d.eol.push('\r\n'); return 'duplicate-header' },
  (rng, d) => { if (d.headers.length === 0) return 'noop'; d.headers.splice(rng.int(d.headers.length), 1); d.eol.pop(); return 'drop-header' },
  (rng, d) => { const i = rng.int(d.headers.length); const h = d.headers[i]; if (h === undefined) return 'noop'; d.headers[i] = rng.chance(0.5) ? h.toUpperCase() : h.toLowerCase(); return 'header-case' },
  (rng, d) => { d.eol[rng.int(d.eol.length)] = rng.pick(['\n', '\r', '\r\r\n', '\n\r', '\r\n\r\n', ' \r\n', '\0\r\n']); return 'line-end' },
  (rng, d) => {
    const i = rng.int(d.headers.length)
    const h = d.headers[i]
    if (h === undefined) return 'noop'
    const at = rng.int(h.length + 1)
    d.headers[i] = h.slice(0, at) + rng.pick(['\0', '\r', '\n', ' ', '\t', '\x7f', '\xff', ':', '\x0b', '\x0c']) + h.slice(at)
    return 'header-char'
  },
  (rng, d) => { const i = rng.int(d.headers.length); const h = d.headers[i]; if (h === undefined) return 'noop'; d.headers[i] = h.replace(': ', rng.pick([' : ', ':', ':\t', ':  ', ' :', '\t:'])); return 'colon-space' },
  (rng, d) => {
    const i = rng.int(d.headers.length)
    const h = d.headers[i]
    if (h === undefined) return 'noop'
    d.headers.splice(i, 1, h, rng.pick([' folded', '\tfolded', ' ', ' Transfer-Encoding: chunked']))
    d.eol.push('\r\n')
    return 'obs-fold'
  },
  (rng, d) => { d.headers.push(rng.pick(TE_VARIANTS)); d.eol.push('\r\n'); if (!/^0\r\n/.test(d.body) && rng.chance(0.5)) d.body = chunkedBody(rng, d.body); return 'add-te' },
  (rng, d) => {
    const i = d.headers.findIndex(h => /^content-length/i.test(h))
    const n = d.body.length
    if (i === -1) { d.headers.push(rng.pick(CL_VARIANTS(n))); d.eol.push('\r\n') } else d.headers[i] = rng.pick(CL_VARIANTS(n))
    return 'content-length'
  },
  (rng, d) => {
    // Chunk-size oddities in an existing chunked body.
    const m = /^([0-9a-fA-F]+)/.exec(d.body)
    if (m === null) return 'noop'
    const size = parseInt(m[1] as string, 16)
    const odd = rng.pick([(size + 1).toString(16), Math.max(0, size - 1).toString(16), '-' + m[1], '0x' + m[1], 'ffffffffffffffffff' + m[1], '1'.repeat(20), m[1] + ' ', m[1] + ';', m[1] + ';a=', m[1] + ';a="\r"', ' ' + m[1], m[1] + '\0', '+' + m[1]])
    d.body = odd + d.body.slice((m[1] as string).length)
    return 'chunk-size'
  },
  (rng, d) => { d.body = d.body.replace(/\r\n\r\n$/, rng.pick(['\r\n', '', '\n\n', '\r\n\r\n\r\n'])); return 'body-end' },
  (rng, d) => { const [m, t, v] = d.requestLine.split(' '); d.requestLine = [m, t, v].join(rng.pick(['  ', '\t', ' \t'])); return 'request-line-space' },
  (rng, d) => { d.requestLine = d.requestLine.replace(/ HTTP\/1\.[01]$/, ' ' + rng.pick([...ODD_VERSIONS, 'HTTP/1.0', 'HTTP/1.1'])); return 'version' },
  (rng, d) => { d.headers.push(rng.pick(['Expect: 100-continue', 'Connection: close', 'Connection: keep-alive', 'Upgrade: h2c', 'Host: y', 'Content-Length: 0'])); d.eol.push('\r\n'); return 'add-header' },
  (rng, d) => {
    const long = 'a'.repeat(rng.pick([100, 1000, 8200, 17000]))
    if (rng.chance(0.5)) d.requestLine = d.requestLine.replace(' /', ` /${long}`)
    else { d.headers.push(`X-${rng.chance(0.5) ? long : 'L'}: ${long}`); d.eol.push('\r\n') }
    return 'long-token'
  },
  (rng, d) => { for (let i = 90 + rng.int(20); i > 0; i--) { d.headers.push(`X-H${i}: v`); d.eol.push('\r\n') } return 'many-headers' },
  (rng, d) => { const [m, , v] = d.requestLine.split(' '); d.requestLine = `${m} ${rng.pick(['http://x/a', 'http://x', '*', 'x', '/a#b', '/a b', '/\xe9', '/%', '/.%2e/a', '/a/../../b'])} ${v}`; return 'target' }
]

/** Byte-level mutations of a whole case. */
function mutateBytes (rng: Rng, s: string): [string, string] {
  const at = rng.int(s.length + 1)
  switch (rng.int(6)) {
    case 0: return [s.slice(0, at) + String.fromCharCode(s.charCodeAt(at) ^ (1 << rng.int(8))) + s.slice(at + 1), 'flip']
    case 1: return [s.slice(0, at) + rng.pick(['\r', '\n', '\0', ' ', '\t', '\r\n', ':', ';', ',', '0', '\xff', String.fromCharCode(rng.int(256))]) + s.slice(at), 'insert']
    case 2: return [s.slice(0, at) + s.slice(at + 1 + rng.int(3)), 'delete']
    case 3: { const n = 1 + rng.int(20); return [s.slice(0, at) + s.slice(at, at + n) + s.slice(at), 'repeat'] }
    case 4: return [s.slice(0, at), 'truncate']
    default: return [s.replace(/\r\n/g, m => rng.chance(0.2) ? '\n' : m), 'bare-lf']
  }
}

/** Classic smuggling shapes, each followed by a request that must not be answered separately unless it really is one. */
function smuggleTemplate (rng: Rng, id: string): [string, string] {
  const inner = `GET /smuggled HTTP/1.1\r\nHost: x\r\nX-Request-Id: ${id}s\r\n\r\n`
  const te = rng.pick(TE_VARIANTS)
  const shapes: Array<[string, string]> = [
    ['cl-te', `POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n${te}\r\n\r\n0\r\n\r\nG` + inner],
    ['te-cl', `POST /a HTTP/1.1\r\nHost: x\r\n${te}\r\nContent-Length: 4\r\n\r\n5c\r\n${inner}\r\n0\r\n\r\n`],
    ['te-te', `POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n${te}\r\n\r\n0\r\n\r\n` + inner],
    ['te-only', `POST /a HTTP/1.1\r\nHost: x\r\n${te}\r\n\r\n${(inner.length).toString(16)}\r\n${inner}\r\n0\r\n\r\n` + inner],
    ['te-http10', `POST /a HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n${te}\r\n\r\n0\r\n\r\n` + inner],
    ['cl-cl', `POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: ${inner.length}\r\n\r\n` + inner],
    ['cl-odd', `POST /a HTTP/1.1\r\nHost: x\r\n${rng.pick(CL_VARIANTS(inner.length))}\r\n\r\n` + inner + inner],
    ['get-cl', `GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: ${inner.length}\r\n\r\n` + inner],
    ['chunk-ext', `POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n${rng.pick(['2;x="\r\n"', '2;\r', '2 ', '2\t', '02', '2;a=b;c', '2;a\0'])}\r\nab\r\n0\r\n\r\n` + inner],
    ['chunk-lf', 'POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\nab\n0\n\n' + inner],
    ['upgrade', `GET /a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: ${rng.pick(['websocket', 'h2c', 'foo'])}\r\n\r\n` + inner],
    ['expect', 'POST /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello' + inner],
    ['head-body', `HEAD /a HTTP/1.1\r\nHost: x\r\nContent-Length: ${inner.length}\r\n\r\n` + inner]
  ]
  const [name, shape] = rng.pick(shapes)
  const bytes = shape.replace('Host: x\r\n', `Host: x\r\nX-Fuzz-Case: ${id}\r\n`)
  return [bytes, `smuggle:${name}:${JSON.stringify(te)}`]
}

/** Case `index` of the run seeded with `seed`. */
export function generateCase (seed: number, index: number): FuzzCase {
  const rng = new Rng((Math.imul(seed >>> 0, 0x9E3779B1) ^ Math.imul(index + 1, 0x85EBCA77)) >>> 0)
  const label: string[] = []
  const kind = rng.next()
  const id = (k: number): string => `fz${index}r${k}`
  let bytes: string
  if (kind < 0.12) {
    const [b, l] = smuggleTemplate(rng, id(0))
    bytes = b
    label.push(l)
  } else {
    const count = rng.chance(0.2) ? 2 + rng.int(2) : 1
    const parts: string[] = []
    for (let k = 0; k < count; k++) {
      const d = draftRequest(rng, id(k), k === count - 1)
      label.push(`${d.method || '-'}`)
      if (rng.chance(kind < 0.6 ? 0.15 : 0.7)) {
        for (let m = 1 + rng.int(2); m > 0; m--) label.push(rng.pick(DRAFT_MUTATIONS)(rng, d))
      }
      parts.push(render(d))
    }
    bytes = parts.join('')
  }
  if (kind > 0.85) {
    for (let m = 1 + rng.int(3); m > 0; m--) {
      const [b, l] = mutateBytes(rng, bytes)
      bytes = b
      label.push(l)
    }
  }
  return { index, label: label.join(' '), bytes }
}
