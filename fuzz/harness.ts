// The fuzzer's world: a recording upstream, a real gateway child process in front of it, one
// exchange of raw bytes per case on a fresh connection, and the oracle that judges each case.
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import http from 'node:http'
import net, { type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { createInterface } from 'node:readline'
import { hasEncodedSlash, normalizePath } from '../plugins/route-table/normalize-path.js'
import { freePort, httpStatus } from '../scripts/loopback.js'
import { parseRequests, parseResponses, type RefParse, type RefRequest, type RefResponse } from './reference.js'

const CLI = resolve(import.meta.dirname, '..', 'src', 'cli.js')

/** The routes the oracle knows how to forward (see `expectedTarget`). */
const REWRITE_FROM = '/rw'
const REWRITE_TO = '/rewritten'
const SMALL_LIMIT = 64
const OWN_PATHS = new Set(['/health', '/ready', '/metrics'])
/** Fastify hands these methods' bodies to nobody: the gateway forwards no body with them. */
const BODYLESS = new Set(['GET', 'HEAD', 'TRACE'])

// ---- the recording upstream ----------------------------------------------------------------

export interface UpstreamRecord {
  /** Global order of arrival; the upstream answers with it (`x-fuzz-seq` and the body). */
  seq: number
  /** Which TCP connection from the gateway it came on. */
  conn: number
  caseIndex: number
  method: string
  url: string
  headers: string[]
  bodyLength: number
  /** The body ended (false: the gateway cut it, or it is still arriving). */
  complete: boolean
  /** The exchange is still going on (the upstream has not closed or finished its answer). */
  open: boolean
}

export interface UpstreamParseError {
  caseIndex: number
  code: string
  raw: string
}

export interface RecordingUpstream {
  port: number
  records: UpstreamRecord[]
  parseErrors: UpstreamParseError[]
  inFlight: number
  /** Connections the gateway closed in the middle of a request (cancellations). */
  cutConnections: number
  /** The case that new requests belong to (unless their x-request-id names an earlier one). */
  currentCase: number
  close: () => Promise<void>
}

export async function startRecordingUpstream (): Promise<RecordingUpstream> {
  let connections = 0
  const up: RecordingUpstream = { port: 0, records: [], parseErrors: [], inFlight: 0, cutConnections: 0, currentCase: -1, close: async () => {} }
  const server = http.createServer({ maxHeaderSize: 256 * 1024, requestTimeout: 0, keepAliveTimeout: 60_000 }, (req, res) => {
    up.inFlight++
    const id = /^fz(\d+)r/.exec(String(req.headers['x-fuzz-case'] ?? '')) ?? /^fz(\d+)r/.exec(String(req.headers['x-request-id'] ?? ''))
    const named = id === null ? NaN : Number(id[1])
    // A late arrival of a case just before this one still belongs to it.
    const caseIndex = named < up.currentCase && named >= up.currentCase - 3 ? named : up.currentCase
    const record: UpstreamRecord = {
      seq: up.records.length,
      conn: (req.socket as net.Socket & { fuzzConn?: number }).fuzzConn ?? -1,
      caseIndex,
      method: req.method ?? '',
      url: req.url ?? '',
      headers: req.rawHeaders,
      bodyLength: 0,
      complete: false,
      open: true
    }
    up.records.push(record)
    res.once('close', () => { up.inFlight--; record.open = false })
    req.on('data', (c: Buffer) => { record.bodyLength += c.length })
    req.on('error', () => {})
    req.on('end', () => {
      record.complete = true
      const body = `seq:${record.seq}`
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body), 'x-fuzz-seq': String(record.seq) })
      res.end(req.method === 'HEAD' ? undefined : body)
    })
  })
  server.on('connection', (socket: net.Socket & { fuzzConn?: number }) => { socket.fuzzConn = ++connections })
  server.on('clientError', (err: Error & { code?: string, rawPacket?: Buffer }, socket) => {
    // The gateway cutting a request it cancelled (its client left, or 413 while streaming) ends
    // the connection mid-request: that is not a parse error.
    if (err.code === 'ECONNRESET' || err.code === 'HPE_INVALID_EOF_STATE') {
      up.cutConnections++
      socket.destroy()
      return
    }
    up.parseErrors.push({ caseIndex: up.currentCase, code: err.code ?? err.message, raw: err.rawPacket?.toString('latin1').slice(0, 2000) ?? '' })
    socket.destroy()
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  up.port = (server.address() as AddressInfo).port
  up.close = async () => {
    server.closeAllConnections()
    await new Promise<void>(resolve => server.close(() => resolve()))
  }
  return up
}

// ---- the gateway ---------------------------------------------------------------------------

export interface Gateway {
  port: number
  proc: ChildProcess
  /** Set once the process has exited. */
  exited: { code: number | null, signal: string | null } | undefined
  /** The last lines of its stdout and stderr. */
  output: string[]
  /** Log lines at level error or above. */
  errorLogs: string[]
  stop: () => Promise<void>
}

export function routeFileFor (upstreamPort: number): string {
  return [
    'name: fuzz',
    'targets:',
    `  - url: http://127.0.0.1:${upstreamPort}`,
    'routes:',
    '  - path: /',
    `  - path: ${REWRITE_FROM}`,
    `    rewritePrefix: ${REWRITE_TO}`,
    '  - path: /small',
    `    bodyLimit: ${SMALL_LIMIT}b`,
    // The upstream never fails: keep every target in, whatever the fuzzer does to connections.
    'circuitBreaker:',
    '  consecutiveFailures: 0',
    '  failureRatio: 0',
    ''
  ].join('\n')
}

/** `gatehouse start` as a child process on a free port, resolved once /health answers 200. */
export async function startGateway (upstreamPort: number): Promise<Gateway> {
  const dir = await mkdtemp(join(tmpdir(), 'gatehouse-fuzz-'))
  await writeFile(join(dir, 'fuzz.yaml'), routeFileFor(upstreamPort))
  const port = await freePort()
  const proc = spawn(process.execPath, [CLI, 'start'], {
    cwd: dir,
    env: { ...process.env, PORT: String(port), HOST: '127.0.0.1', ROUTES_DIR: dir, LOG_LEVEL: 'warn', WATCH_ROUTES: 'false', REDIS_URL: '' },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const gw: Gateway = { port, proc, exited: undefined, output: [], errorLogs: [], stop: async () => {} }
  const keep = (line: string): void => {
    gw.output.push(line)
    if (gw.output.length > 50) gw.output.shift()
  }
  createInterface({ input: proc.stdout! }).on('line', line => {
    keep(line)
    try {
      const parsed = JSON.parse(line) as { level?: number }
      if ((parsed.level ?? 0) >= 50) gw.errorLogs.push(line.slice(0, 2000))
    } catch {}
  })
  createInterface({ input: proc.stderr! }).on('line', keep)
  const exit = new Promise<void>(resolve => proc.once('exit', (code, signal) => { gw.exited = { code, signal }; resolve() }))
  gw.stop = async () => {
    if (gw.exited === undefined) proc.kill('SIGKILL')
    await exit
    await rm(dir, { recursive: true, force: true })
  }
  const deadline = Date.now() + 10_000
  for (;;) {
    if (gw.exited !== undefined) {
      await gw.stop()
      throw new Error(`gateway exited (${JSON.stringify(gw.exited)}) before it answered:\n${gw.output.join('\n')}`)
    }
    if (await httpStatus(port, '/health').catch(() => 0) === 200) return gw
    if (Date.now() > deadline) {
      await gw.stop()
      throw new Error(`gateway did not answer /health in 10 s:\n${gw.output.join('\n')}`)
    }
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

// ---- one exchange --------------------------------------------------------------------------

export interface Exchange {
  raw: Buffer
  /** The gateway closed the connection (rather than the fuzzer giving up on it). */
  closed: boolean
  /** The gateway said nothing for QUIET_MS while the fuzzer still expected an answer. */
  stalled: boolean
  ms: number
}

const QUIET_MS = 300
const SETTLE_MS = 25
/** How long an upstream request of a finished case may stay open before it counts as left hanging. */
const HANG_MS = 500
const HARD_CAP_MS = 2000

/**
 * Sends `bytes` on a fresh connection and reads what comes back. Once the gateway has answered
 * every request the reference parser saw (`expected`), the fuzzer half-closes, so the gateway
 * either finishes (and closes) or says what it makes of any bytes left over. If it goes quiet
 * before that, the fuzzer half-closes after QUIET_MS; it gives up at HARD_CAP_MS.
 */
export async function exchange (port: number, bytes: Buffer, expected: number, methods: readonly string[], quietMs = QUIET_MS): Promise<Exchange> {
  return await new Promise(resolve => {
    const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true })
    const t0 = Date.now()
    const chunks: Buffer[] = []
    let settled = false
    let halfClosed = false
    let stalled = false
    let quiet: NodeJS.Timeout | undefined
    const finish = (closed: boolean): void => {
      if (settled) return
      settled = true
      clearTimeout(quiet)
      clearTimeout(cap)
      socket.destroy()
      resolve({ raw: Buffer.concat(chunks), closed, stalled, ms: Date.now() - t0 })
    }
    const halfClose = (): void => {
      if (halfClosed) return
      halfClosed = true
      socket.end()
    }
    const armQuiet = (): void => {
      clearTimeout(quiet)
      quiet = setTimeout(() => {
        if (halfClosed) { finish(false); return }
        stalled = true
        halfClose()
        armQuiet()
      }, quietMs)
    }
    const check = (): void => {
      if (halfClosed) return
      const finals = parseResponses(Buffer.concat(chunks), methods, false).filter(r => r.complete).length
      if (finals >= expected) halfClose()
    }
    const cap = setTimeout(() => finish(false), HARD_CAP_MS)
    socket.on('data', (c: Buffer) => { chunks.push(c); armQuiet(); check() })
    socket.on('end', () => finish(true))
    socket.on('close', () => finish(true))
    socket.on('error', () => {})
    socket.on('connect', () => {
      socket.write(bytes, () => { armQuiet(); check() })
    })
  })
}

// ---- the oracle ----------------------------------------------------------------------------

/** Where the gateway must forward `ref`, or why it must refuse it. */
export function expectedTarget (ref: RefRequest): { url: string } | { refused: string } {
  const q = ref.target.indexOf('?')
  const rawPath = q === -1 ? ref.target : ref.target.slice(0, q)
  const query = q === -1 ? '' : ref.target.slice(q)
  if (!rawPath.startsWith('/')) return { refused: 'not a path' }
  let path: string
  try {
    path = normalizePath(rawPath)
  } catch (err) {
    return { refused: (err as Error).message }
  }
  if (hasEncodedSlash(path)) return { refused: 'encoded slash' }
  if (path === REWRITE_FROM || path.startsWith(REWRITE_FROM + '/')) {
    const rest = path.slice(REWRITE_FROM.length)
    return { url: REWRITE_TO + rest + query }
  }
  return { url: path + query }
}

/** The body length the upstream must see for `ref`. */
export function expectedBodyLength (ref: RefRequest): number {
  return BODYLESS.has(ref.method) ? 0 : ref.bodyLength
}

const is2xx = (status: number): boolean => status >= 200 && status <= 299

/** Whether `ref` is for one of the gateway's own endpoints (answered without the upstream). */
function isOwn (ref: RefRequest): boolean {
  const rawPath = ref.target.split('?')[0] as string
  let decoded = rawPath
  try { decoded = decodeURIComponent(rawPath) } catch {}
  return (ref.method === 'GET' || ref.method === 'HEAD') && (OWN_PATHS.has(rawPath) || OWN_PATHS.has(decoded))
}

export interface CaseOutcome {
  caseIndex: number
  /** The bytes the case sent. */
  bytes: Buffer
  ref: RefParse
  responses: RefResponse[]
  exchange: Exchange
  /** Upstream requests attributed to this case. */
  upstream: UpstreamRecord[]
  upstreamErrors: UpstreamParseError[]
  violations: string[]
  /** Earlier cases judged again because a request of theirs reached the upstream during this one. */
  late: CaseOutcome[]
}

/** Judges one case: `responses` against the reference reading and what the upstream parsed. */
export function judge (ref: RefParse, responses: RefResponse[], upstream: UpstreamRecord[], upstreamErrors: UpstreamParseError[], allRecords: readonly UpstreamRecord[], caseIndex: number): string[] {
  const violations: string[] = []
  const claimed = new Set<number>()
  responses.forEach((res, k) => {
    if (res.interimInBody !== undefined) violations.push(`response ${k}: an interim ${JSON.stringify(res.interimInBody)} written after its final head (read as its body)`)
    const seqHeader = res.headers['x-fuzz-seq']
    const req = ref.requests[k]
    if (!is2xx(res.status)) {
      if (seqHeader !== undefined) violations.push(`response ${k}: ${res.status}, but upstream request #${seqHeader} answered it`)
      return
    }
    if (req === undefined) {
      violations.push(`response ${k}: ${res.status} for a request the reference parser does not see (${ref.stop?.kind ?? 'no more bytes'}: ${ref.stop?.reason ?? ''})`)
      return
    }
    if (seqHeader === undefined) {
      if (!isOwn(req)) violations.push(`response ${k}: ${res.status} for ${req.method} ${req.target} without any upstream request`)
      return
    }
    const seq = Number(seqHeader)
    const record = allRecords[seq]
    if (record === undefined || record.caseIndex !== caseIndex) {
      violations.push(`response ${k}: answered by upstream request #${seq} of ${record === undefined ? 'nobody' : `case ${record.caseIndex}`}`)
      return
    }
    if (claimed.has(seq)) violations.push(`response ${k}: upstream request #${seq} answers two responses`)
    claimed.add(seq)
    if (req.method !== 'HEAD' && res.body !== `seq:${seq}`) violations.push(`response ${k}: body ${JSON.stringify(res.body.slice(0, 60))} is not upstream #${seq}'s`)
    if (record.method !== req.method) violations.push(`response ${k}: upstream saw method ${record.method}, client sent ${req.method}`)
    const target = expectedTarget(req)
    if ('refused' in target) violations.push(`response ${k}: ${res.status} for ${JSON.stringify(req.target)}, which must be refused (${target.refused}); upstream saw ${JSON.stringify(record.url)}`)
    else if (record.url !== target.url) violations.push(`response ${k}: upstream saw ${JSON.stringify(record.url)}, expected ${JSON.stringify(target.url)} (client: ${JSON.stringify(req.target)})`)
    const length = expectedBodyLength(req)
    if (record.bodyLength !== length) violations.push(`response ${k}: upstream read a ${record.bodyLength}-byte body, the client's framing says ${length} (${req.chunked ? 'chunked' : 'content-length'} ${req.bodyLength})`)
  })
  // Upstream requests no 2xx claimed. Each must be one of the client's requests (the reference's
  // reading; a trailing request whose body never came counts too) that got no answer at all, on a
  // connection nothing had announced closing: a request answered non-2xx, or processed behind a
  // response that said `Connection: close`, must never have reached the upstream.
  const candidates = ref.partial === undefined ? ref.requests : [...ref.requests, ref.partial]
  const used = new Set<number>()
  const closedAt = responses.findIndex(r => /\bclose\b/i.test(r.headers.connection ?? ''))
  for (const record of upstream) {
    if (claimed.has(record.seq)) continue
    const k = candidates.findIndex((req, j) => {
      const target = expectedTarget(req)
      const status = responses[j]?.status ?? 0
      return !used.has(j) && !is2xx(status) && req.method === record.method && 'url' in target && target.url === record.url &&
        (!record.complete || record.bodyLength === expectedBodyLength(req))
    })
    const what = `${record.complete ? 'a' : 'the head of a'} request: #${record.seq} ${record.method} ${JSON.stringify(record.url)} body ${record.bodyLength} on upstream connection ${record.conn}`
    if (k === -1) {
      violations.push(`upstream parsed ${what}, which is none of the client's requests without a 2xx`)
      continue
    }
    used.add(k)
    const res = responses[k]
    if (res !== undefined && record.complete) violations.push(`upstream parsed ${what}, answered ${res.status} to the client (request ${k})`)
    else if (closedAt !== -1 && closedAt < k) violations.push(`upstream parsed ${what}, pipelined (request ${k}) behind response ${closedAt} (${responses[closedAt]?.status}) that closes the connection`)
  }
  for (const err of upstreamErrors) violations.push(`upstream could not parse what the gateway sent (${err.code}): ${JSON.stringify(err.raw.slice(0, 300))}`)
  return violations
}

/** A recording upstream and a gateway in front of it; `run` plays one case. */
export class Session {
  private readonly recent: CaseOutcome[] = []
  private constructor (readonly upstream: RecordingUpstream, readonly gateway: Gateway) {}

  static async start (): Promise<Session> {
    const upstream = await startRecordingUpstream()
    try {
      return new Session(upstream, await startGateway(upstream.port))
    } catch (err) {
      await upstream.close()
      throw err
    }
  }

  async run (caseIndex: number, bytes: Buffer): Promise<CaseOutcome> {
    const up = this.upstream
    up.currentCase = caseIndex
    const firstRecord = up.records.length
    const firstError = up.parseErrors.length
    const ref = parseRequests(bytes)
    const methods = ref.requests.map(r => r.method)
    // When the reference reads the bytes as invalid, give the gateway time to say what it makes of them.
    const invalid = ref.stop?.kind === 'invalid'
    const ex = await exchange(this.gateway.port, bytes, invalid ? Infinity : ref.requests.length, methods, invalid ? 100 : QUIET_MS)
    // Let whatever the gateway still has in flight for this case land (or be cut) upstream.
    const deadline = Date.now() + HANG_MS
    await new Promise(resolve => setImmediate(resolve))
    // Requests left without an answer may still be on their way to the upstream.
    const unanswered = ex.stalled || !ex.closed || parseResponses(ex.raw, methods, ex.closed).length < ref.requests.length
    if (unanswered) {
      let seen = up.records.length
      let quietSince = Date.now()
      while (Date.now() - quietSince < SETTLE_MS && Date.now() < deadline) {
        await new Promise(resolve => setTimeout(resolve, 5))
        if (up.records.length !== seen) { seen = up.records.length; quietSince = Date.now() }
      }
    }
    const mine = (): UpstreamRecord[] => up.records.slice(firstRecord).filter(r => r.caseIndex === caseIndex && r.open)
    while (mine().length > 0 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 5))
    const responses = parseResponses(ex.raw, methods, ex.closed)
    const arrived = up.records.slice(firstRecord)
    const upstream = arrived.filter(r => r.caseIndex === caseIndex)
    const upstreamErrors = up.parseErrors.slice(firstError)
    const violations = judge(ref, responses, upstream, upstreamErrors, up.records, caseIndex)
    for (const r of upstream.filter(r => r.open)) {
      violations.push(`upstream request #${r.seq} ${r.method} ${JSON.stringify(r.url)} (${r.bodyLength} body bytes so far) is still open ${HANG_MS} ms after the client connection ended: the gateway did not cancel it`)
    }
    const outcome: CaseOutcome = { caseIndex, bytes, ref, responses, exchange: ex, upstream, upstreamErrors, violations, late: [] }
    // An earlier case's request (by its x-request-id) that reached the upstream only now: that
    // case is judged again with it.
    for (const owner of new Set(arrived.filter(r => r.caseIndex !== caseIndex).map(r => r.caseIndex))) {
      const before = this.recent.find(o => o.caseIndex === owner)
      if (before === undefined) continue
      const all = up.records.filter(r => r.caseIndex === owner)
      const again = judge(before.ref, before.responses, all, [], up.records, owner)
      outcome.late.push({ ...before, upstream: all, upstreamErrors: [], violations: again.map(v => `${v} (arrived after the case ended)`), late: [] })
    }
    this.recent.push(outcome)
    if (this.recent.length > 4) this.recent.shift()
    return outcome
  }

  /**
   * Requests the gateway still counts in flight towards the upstream (`upstream_active_connections`).
   * Cases run one at a time and settle, so between cases it must be 0.
   */
  async activeUpstreamRequests (): Promise<number> {
    const text = await fetch(`http://127.0.0.1:${this.gateway.port}/metrics`).then(async r => await r.text()).catch(() => '')
    let sum = 0
    for (const m of text.matchAll(/^upstream_active_connections\{[^}]*\} (\d+)/gm)) sum += Number(m[1])
    return sum
  }

  /**
   * The in-flight count once it has had time to settle: polled until it is at most `atMost` or
   * `graceMs` have passed. A cancelled upstream attempt leaves the count only when undici has
   * aborted it, some milliseconds after the client connection is gone: reading the count at once
   * takes that for a leak.
   */
  async settledUpstreamRequests (atMost: number, graceMs = HANG_MS): Promise<number> {
    const deadline = Date.now() + graceMs
    for (;;) {
      const active = await this.activeUpstreamRequests()
      if (active <= atMost || Date.now() >= deadline) return active
      await new Promise(resolve => setTimeout(resolve, 10))
    }
  }

  /** Whether the gateway still runs and answers GET /health with 200. */
  async alive (): Promise<boolean> {
    if (this.gateway.exited !== undefined) return false
    return await httpStatus(this.gateway.port, '/health').catch(() => 0) === 200
  }

  async close (): Promise<void> {
    await this.gateway.stop()
    await this.upstream.close()
  }
}

/** A status as its class ("2xx") for summaries and regression expectations. */
export function statusClass (status: number): string {
  return `${Math.floor(status / 100)}xx`
}

/** Bytes as a JSON-safe string (latin1: one char per byte) and back. */
export const toText = (bytes: Buffer): string => bytes.toString('latin1')
export const fromText = (text: string): Buffer => Buffer.from(text, 'latin1')
