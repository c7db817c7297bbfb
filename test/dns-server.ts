// A small authoritative DNS server for tests: real UDP (and TCP, for truncated answers) on
// 127.0.0.1 at an ephemeral port, so DNS service discovery resolves through c-ares exactly as it
// does in production while the test decides every answer: records, TTLs, NXDOMAIN, SERVFAIL,
// silence, or a closed port.
import dgram from 'node:dgram'
import { once } from 'node:events'
import net from 'node:net'

export interface SrvRecord { priority: number, weight: number, port: number, target: string }

export interface DnsRecords {
  A?: string[]
  AAAA?: string[]
  SRV?: SrvRecord[]
  /** seconds, default 1 */
  ttl?: number
}

/** The owner of a fixture: somewhere to register its clean-up (a node:test context). */
interface Owner { after: (fn: () => unknown) => void }

const TYPES: Record<number, string> = { 1: 'A', 2: 'NS', 5: 'CNAME', 6: 'SOA', 12: 'PTR', 15: 'MX', 16: 'TXT', 28: 'AAAA', 33: 'SRV', 41: 'OPT', 255: 'ANY' }
const A = 1
const AAAA = 28
const SRV = 33
const IN = 1

const NOERROR = 0
const FORMERR = 1
const SERVFAIL = 2
const NXDOMAIN = 3
const NOTIMP = 4

/** Without EDNS a UDP answer may be at most 512 bytes (RFC 1035 4.2.1); a bigger one is truncated. */
const UDP_LIMIT = 512
/** A TCP message carries its length in 16 bits. */
const TCP_LIMIT = 65_535

export class TestDnsServer {
  /** host:port for Resolver.setServers and route files' `resolvers`. */
  readonly address: string
  readonly port: number
  /** Queries seen, as `TYPE name` strings (e.g. `A orders.test`), in order. */
  readonly queries: string[] = []
  /** Answer with SERVFAIL (rcode 2) while true. */
  servfail = false
  /** Drop queries silently while true (the resolver times out). */
  silent = false

  readonly #udp: dgram.Socket
  readonly #tcp: net.Server
  readonly #connections = new Set<net.Socket>()
  readonly #records = new Map<string, DnsRecords>()
  #stopped: Promise<void> | undefined

  private constructor (udp: dgram.Socket, tcp: net.Server) {
    this.#udp = udp
    this.#tcp = tcp
    this.port = udp.address().port
    this.address = `127.0.0.1:${this.port}`
    udp.on('message', (msg, from) => {
      const reply = this.#answer(msg, UDP_LIMIT)
      if (reply !== undefined) udp.send(reply, from.port, from.address, () => {})
    })
    tcp.on('connection', socket => this.#serveTcp(socket))
  }

  /**
   * Binds UDP on an ephemeral port of 127.0.0.1, then TCP on the same port (c-ares retries a
   * truncated answer over TCP to the same address); tries another port if that TCP port is taken.
   */
  static async start (): Promise<TestDnsServer> {
    for (let attempt = 1; ; attempt++) {
      const udp = dgram.createSocket('udp4')
      udp.on('error', () => {})
      udp.bind(0, '127.0.0.1')
      await once(udp, 'listening')
      const tcp = net.createServer()
      try {
        tcp.listen(udp.address().port, '127.0.0.1')
        await once(tcp, 'listening')
        tcp.on('error', () => {})
        return new TestDnsServer(udp, tcp)
      } catch (err) {
        udp.close()
        if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt >= 20) throw err
      }
    }
  }

  /** Replaces the records of a name (case-insensitive, trailing dot ignored). */
  set (name: string, records: DnsRecords): void {
    // Checked now, so a typo fails the test here rather than as a strange answer later.
    encodeName(name)
    for (const ip of records.A ?? []) if (!net.isIPv4(ip)) throw new TypeError(`not an IPv4 address: ${ip}`)
    for (const ip of records.AAAA ?? []) ipv6Bytes(ip)
    for (const srv of records.SRV ?? []) {
      for (const field of ['priority', 'weight', 'port'] as const) {
        if (!isUint(srv[field], 0xffff)) throw new TypeError(`SRV ${field} not in 0..65535: ${srv[field]}`)
      }
      encodeName(srv.target)
    }
    if (records.ttl !== undefined && !isUint(records.ttl, 0x7fffffff)) throw new TypeError(`ttl not in 0..2^31-1: ${records.ttl}`)
    // A copy: the caller changing its arrays afterwards must not change the answers.
    this.#records.set(key(name), {
      A: [...records.A ?? []],
      AAAA: [...records.AAAA ?? []],
      SRV: (records.SRV ?? []).map(srv => ({ ...srv })),
      ttl: records.ttl ?? 1
    })
  }

  /** The name no longer exists: NXDOMAIN (rcode 3). */
  delete (name: string): void {
    this.#records.delete(key(name))
  }

  /** Closes the socket: the port then refuses (ICMP port unreachable). */
  async stop (): Promise<void> {
    this.#stopped ??= (async () => {
      for (const socket of this.#connections) socket.destroy()
      await Promise.all([
        new Promise<void>(resolve => this.#udp.close(() => resolve())),
        new Promise<void>(resolve => this.#tcp.close(() => resolve()))
      ])
    })()
    await this.#stopped
  }

  /** DNS over TCP: each message is preceded by its length in two bytes (RFC 1035 4.2.2). */
  #serveTcp (socket: net.Socket): void {
    this.#connections.add(socket)
    socket.on('close', () => this.#connections.delete(socket))
    socket.on('error', () => {})
    let pending = Buffer.alloc(0)
    socket.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk])
      while (pending.length >= 2) {
        const length = pending.readUInt16BE(0)
        if (pending.length < 2 + length) break
        const reply = this.#answer(pending.subarray(2, 2 + length), TCP_LIMIT)
        pending = pending.subarray(2 + length)
        if (reply === undefined) continue
        const prefix = Buffer.alloc(2)
        prefix.writeUInt16BE(reply.length)
        socket.write(Buffer.concat([prefix, reply]))
      }
    })
  }

  /** The reply to one query message, at most `limit` bytes; undefined to send nothing. */
  #answer (msg: Buffer, limit: number): Buffer | undefined {
    if (msg.length < 12) return undefined
    const id = msg.readUInt16BE(0)
    const flags = msg.readUInt16BE(2)
    if ((flags & 0x8000) !== 0) return undefined // a response, not a query
    let question: Question | undefined
    try {
      if (msg.readUInt16BE(4) === 1) question = readQuestion(msg)
    } catch {}
    if (question !== undefined) this.queries.push(`${TYPES[question.type] ?? `TYPE${question.type}`} ${key(question.labels.join('.'))}`)
    if (this.silent) return undefined
    const opcode = (flags >> 11) & 0xf
    if (question === undefined) return header(id, flags, FORMERR, 0, 0)
    if (opcode !== 0) return reply(id, flags, NOTIMP, question, [])
    if (this.servfail) return reply(id, flags, SERVFAIL, question, [])
    const records = this.#records.get(key(question.labels.join('.')))
    if (records === undefined) return reply(id, flags, NXDOMAIN, question, [])
    const answers = question.class === IN ? rdatas(records, question.type) : []
    const full = reply(id, flags, NOERROR, question, answers.map(rdata => resourceRecord(question.labels, question.type, records.ttl ?? 1, rdata)))
    if (full.length <= limit) return full
    // Too big for this transport: the question alone with TC set, and c-ares asks again over TCP.
    return reply(id, flags | 0x0200, NOERROR, question, [])
  }
}

/** A TestDnsServer, stopped when test `t` ends. */
export async function dnsServer (t: Owner): Promise<TestDnsServer> {
  const server = await TestDnsServer.start()
  t.after(() => server.stop())
  return server
}

// ---- the wire format (RFC 1035, RFC 3596 for AAAA, RFC 2782 for SRV) ---------------------------

interface Question {
  /** As sent (case kept: a resolver may check its 0x20 mixed case is echoed back). */
  labels: string[]
  type: number
  class: number
  /** The question's bytes as they go in the reply (the name re-encoded without compression). */
  bytes: Buffer
}

function key (name: string): string {
  return name.toLowerCase().replace(/\.$/, '')
}

function isUint (n: number, max: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= max
}

function readQuestion (msg: Buffer): Question {
  const { labels, end } = readName(msg, 12)
  const type = msg.readUInt16BE(end)
  const klass = msg.readUInt16BE(end + 2)
  const tail = Buffer.alloc(4)
  tail.writeUInt16BE(type, 0)
  tail.writeUInt16BE(klass, 2)
  return { labels, type, class: klass, bytes: Buffer.concat([encodeLabels(labels), tail]) }
}

/** The labels of the name at `offset`, following compression pointers; `end` is just past it in place. */
function readName (msg: Buffer, offset: number): { labels: string[], end: number } {
  const labels: string[] = []
  let at = offset
  let end: number | undefined
  for (let hops = 0; ; hops++) {
    if (hops > 127) throw new Error('name too long or a pointer loop')
    const length = msg.readUInt8(at)
    if (length === 0) {
      end ??= at + 1
      break
    }
    if ((length & 0xc0) === 0xc0) {
      end ??= at + 2
      at = msg.readUInt16BE(at) & 0x3fff
      continue
    }
    if ((length & 0xc0) !== 0) throw new Error('unknown label type')
    if (at + 1 + length > msg.length) throw new RangeError('label past the end')
    labels.push(msg.toString('latin1', at + 1, at + 1 + length))
    at += 1 + length
  }
  return { labels, end }
}

function encodeName (name: string): Buffer {
  const trimmed = name.replace(/\.$/, '')
  return encodeLabels(trimmed === '' ? [] : trimmed.split('.'))
}

function encodeLabels (labels: string[]): Buffer {
  const parts: Buffer[] = []
  for (const label of labels) {
    const bytes = Buffer.from(label, 'latin1')
    if (bytes.length < 1 || bytes.length > 63) throw new TypeError(`bad DNS label ${JSON.stringify(label)} in ${labels.join('.')}`)
    parts.push(Buffer.from([bytes.length]), bytes)
  }
  parts.push(Buffer.from([0]))
  const out = Buffer.concat(parts)
  if (out.length > 255) throw new TypeError(`DNS name longer than 255 bytes: ${labels.join('.')}`)
  return out
}

/** The RDATA of each record of `type`; none for a type this server doesn't keep (NODATA). */
function rdatas (records: DnsRecords, type: number): Buffer[] {
  switch (type) {
    case A: return (records.A ?? []).map(ip => Buffer.from(ip.split('.').map(Number)))
    case AAAA: return (records.AAAA ?? []).map(ipv6Bytes)
    case SRV: return (records.SRV ?? []).map(srv => {
      const fixed = Buffer.alloc(6)
      fixed.writeUInt16BE(srv.priority, 0)
      fixed.writeUInt16BE(srv.weight, 2)
      fixed.writeUInt16BE(srv.port, 4)
      return Buffer.concat([fixed, encodeName(srv.target)])
    })
    default: return []
  }
}

function resourceRecord (labels: string[], type: number, ttl: number, rdata: Buffer): Buffer {
  const fixed = Buffer.alloc(10)
  fixed.writeUInt16BE(type, 0)
  fixed.writeUInt16BE(IN, 2)
  fixed.writeUInt32BE(ttl, 4)
  fixed.writeUInt16BE(rdata.length, 8)
  return Buffer.concat([encodeLabels(labels), fixed, rdata])
}

/** A response header: QR and AA set, the query's opcode and RD (and TC if given) kept, RA clear. */
function header (id: number, queryFlags: number, rcode: number, qdcount: number, ancount: number): Buffer {
  const out = Buffer.alloc(12)
  out.writeUInt16BE(id, 0)
  out.writeUInt16BE(0x8000 | (queryFlags & 0x7800) | 0x0400 | (queryFlags & 0x0300) | rcode, 2)
  out.writeUInt16BE(qdcount, 4)
  out.writeUInt16BE(ancount, 6)
  return out
}

function reply (id: number, queryFlags: number, rcode: number, question: Question, answers: Buffer[]): Buffer {
  return Buffer.concat([header(id, queryFlags, rcode, 1, answers.length), question.bytes, ...answers])
}

/** The 16 bytes of an IPv6 address in text (`::` and a trailing dotted IPv4 part allowed). */
function ipv6Bytes (ip: string): Buffer {
  if (!net.isIPv6(ip) || ip.includes('%')) throw new TypeError(`not an IPv6 address: ${ip}`)
  let text = ip
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text)
  if (v4 !== null) {
    const [a, b, c, d] = v4.slice(1).map(Number) as [number, number, number, number]
    text = text.slice(0, v4.index) + `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`
  }
  const [head = '', tail] = text.split('::')
  const words = (part: string): string[] => part === '' ? [] : part.split(':')
  const left = words(head)
  const right = tail === undefined ? [] : words(tail)
  const all = [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right]
  const out = Buffer.alloc(16)
  all.forEach((word, i) => out.writeUInt16BE(parseInt(word, 16), i * 2))
  return out
}
