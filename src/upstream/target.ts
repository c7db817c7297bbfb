// One origin of an upstream service: its connection pool, its load and its breaker.
import { buildConnector, Client, errors, H2CClient, Pool, type Dispatcher } from 'undici'
import { CircuitBreaker, type BreakerOptions, type BreakerState } from './breaker.js'
import type { Selectable } from './select.js'
import { TryStats } from './try-stats.js'

/** HTTP version spoken to a target: HTTP/1.1, HTTP/2 over TLS (ALPN), HTTP/2 with prior knowledge over TCP. */
export type UpstreamProtocol = 'http1' | 'h2' | 'h2c'

export interface TargetOptions {
  upstream: string
  origin: string
  maxConnections: number
  weight: number
  /** Default http1. */
  protocol?: UpstreamProtocol
  connectTimeoutMs: number
  breaker: BreakerOptions
  /** Host header of its requests; default the origin's host[:port]. A discovered address keeps its DNS name here. */
  host?: string
  /** SNI and the name its certificate must hold when tls sets none; default the origin's host. */
  servername?: string
  /** https:// targets only; absent: Node's public roots, SNI and identity from the URL's host. */
  tls?: TargetTls
}

/** TLS material of one target, read from its files when the route file loaded. */
export interface TargetTls {
  /** PEM CA bundle; replaces the public roots for this target. */
  ca?: string
  /** SNI and the name the upstream's certificate must hold. */
  servername?: string
  /** PEM client certificate (chain) and its private key, for mutual TLS. */
  cert?: string
  key?: string
  /** SHA-256 of all of the above: the TLS part of the target's identity (no key material in keys or logs). */
  fingerprint: string
}

export type TargetTransitionListener = (target: Target, from: BreakerState, to: BreakerState, cause: string) => void

export class Target {
  readonly upstream: string
  readonly origin: string
  /** The Host header of requests sent here (host[:port] of the origin). */
  readonly host: string
  readonly maxConnections: number
  readonly protocol: UpstreamProtocol
  weight: number
  /** Requests sent to this target whose response has not finished. */
  inFlight = 0
  readonly pool: Pool
  readonly breaker: CircuitBreaker
  /** Tries sent to this target and how they ended (for metrics). */
  readonly tries = new TryStats()
  /** Breaker transitions since start, by the state entered (for metrics). */
  readonly transitions: Record<BreakerState, number> = { closed: 0, open: 0, 'half-open': 0 }
  /** WebSocket tunnels to this target, on a budget of their own. */
  readonly tunnels = new TunnelSlots(this)
  /** Failing its active health checks (src/upstream/health-check.ts). */
  unhealthy = false
  /** Out of selection because it is unhealthy and its upstream is not in panic: the flag selection reads. */
  ejected = false
  private readonly connect: buildConnector.connector

  constructor (options: TargetOptions, onTransition: TargetTransitionListener = () => {}) {
    this.upstream = options.upstream
    this.origin = options.origin
    this.host = options.host ?? new URL(options.origin).host
    this.maxConnections = options.maxConnections
    this.protocol = options.protocol ?? 'http1'
    this.weight = options.weight
    this.connect = connector(options, this.protocol)
    // The pool never opens more sockets than the cap. allowH2 is explicit: undici 8 turns it on
    // by default, which would move every https:// target to HTTP/2 unasked. An h2c pool's
    // connections are H2CClients (HTTP/2 from the first byte, up to 100 streams each).
    this.pool = new Pool(options.origin, {
      connections: options.maxConnections,
      allowH2: this.protocol === 'h2',
      connect: this.connect,
      ...(this.protocol === 'h2c' ? { factory: (origin: URL, opts: object) => new H2CClient(origin, opts) } : {})
    })
    this.breaker = new CircuitBreaker(options.breaker, (from, to, cause) => {
      this.transitions[to]++
      onTransition(this, from, to, cause)
    })
  }

  /** Identity across reloads: same upstream, origin and pool settings keep the same Target. */
  static key (options: TargetOptions): string {
    return `${options.upstream} ${options.origin} ${options.host ?? '-'} ${options.protocol ?? 'http1'} ${options.maxConnections} ${options.connectTimeoutMs} ${options.tls?.fingerprint ?? '-'}`
  }

  /**
   * A client of one connection to this target, apart from its pool: what health probes use, so a
   * probe never takes one of maxConnections nor waits behind requests.
   */
  newClient (): Dispatcher {
    const opts = { connect: this.connect, allowH2: this.protocol === 'h2' }
    return this.protocol === 'h2c' ? new H2CClient(this.origin, opts) : new Client(this.origin, opts)
  }

  /** in-flight ÷ maxConnections: 0 idle, 1 full. */
  get saturation (): number {
    return this.inFlight / this.maxConnections
  }

  /** Not ejected by its health checks, not full, and its breaker lets a request through. */
  admits (): boolean {
    return !this.ejected && this.inFlight < this.maxConnections && this.breaker.admits()
  }

  /**
   * A try got its answer: a status among `failureStatuses` counts as a breaker failure, any other
   * as a success; the try is counted with its time to the answer.
   */
  recordAnswer (probe: boolean, statusCode: number, failureStatuses: ReadonlySet<number>, seconds: number): void {
    const failed = failureStatuses.has(statusCode)
    this.breaker.record(probe, !failed, failed ? `status ${statusCode}` : '')
    this.tries.record(failed ? 'bad-status' : 'ok', statusCode, seconds)
  }
}

/** An open tunnel, as its target knows it: something to close. */
export interface OpenTunnel { close: (reason: TunnelCloseReason) => void }

export type TunnelCloseReason = 'idle' | 'lifetime' | 'target-removed' | 'shutdown'

/**
 * A target's WebSocket tunnels. They hold no slot of the pool (undici hands an upgraded socket
 * over), so they get a budget of their own, and are placed by the same least-saturated choice as
 * requests: the Selectable names (inFlight, maxConnections) count tunnels here.
 */
export class TunnelSlots implements Selectable {
  /** Open tunnels and handshakes under way. */
  inFlight = 0
  /** websocket.maxPerTarget of the target's file. */
  maxConnections = 1000
  /** websocket.closeDelay of the target's file: how long open tunnels outlive the target's removal. */
  closeDelayMs = 30_000
  readonly open = new Set<OpenTunnel>()

  constructor (readonly target: Target) {}

  get weight (): number {
    return this.target.weight
  }

  /** Not ejected, below its tunnel budget, and its breaker lets a handshake through. */
  admits (): boolean {
    return !this.target.ejected && this.inFlight < this.maxConnections && this.target.breaker.admits()
  }

  closeAll (reason: TunnelCloseReason): void {
    for (const tunnel of this.open) tunnel.close(reason)
  }
}

/**
 * Connect options of a target's pool. The upstream's certificate is always verified:
 * rejectUnauthorized is set explicitly, so NODE_TLS_REJECT_UNAUTHORIZED=0 cannot turn it off.
 */
function connector (options: TargetOptions, protocol: UpstreamProtocol): buildConnector.connector {
  const tls = options.tls
  // The connector reads allowH2 (the ALPN offer) and useH2c itself: set both, whatever undici's defaults.
  const base = { timeout: options.connectTimeoutMs, rejectUnauthorized: true, allowH2: protocol === 'h2', useH2c: protocol === 'h2c' }
  const { ca, cert, key } = tls ?? {}
  const servername = tls?.servername ?? options.servername
  const connect = buildConnector({ ...base, ca, cert, key, servername })
  if (servername === undefined) return connect
  // undici derives a servername from the request's Host header (the URL's host) and prefers it
  // to the connector's own: the configured one must win.
  return (opts, callback) => { connect({ ...opts, servername }, callback) }
}

// OpenSSL's certificate verification results, as Node reports them (err.code).
const CERT_ERRORS = new Set([
  'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_CRL', 'UNABLE_TO_DECRYPT_CERT_SIGNATURE', 'UNABLE_TO_DECRYPT_CRL_SIGNATURE',
  'UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY', 'CERT_SIGNATURE_FAILURE', 'CRL_SIGNATURE_FAILURE', 'CERT_NOT_YET_VALID', 'CERT_HAS_EXPIRED',
  'CRL_NOT_YET_VALID', 'CRL_HAS_EXPIRED', 'ERROR_IN_CERT_NOT_BEFORE_FIELD', 'ERROR_IN_CERT_NOT_AFTER_FIELD',
  'ERROR_IN_CRL_LAST_UPDATE_FIELD', 'ERROR_IN_CRL_NEXT_UPDATE_FIELD', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'CERT_CHAIN_TOO_LONG', 'CERT_REVOKED', 'INVALID_CA',
  'PATH_LENGTH_EXCEEDED', 'INVALID_PURPOSE', 'CERT_UNTRUSTED', 'CERT_REJECTED', 'HOSTNAME_MISMATCH'
])

/**
 * The TLS failure code of an upstream error (a certificate that did not verify, a name that does
 * not match, a handshake the upstream refused), or undefined. Such a connection never carried
 * the request to the upstream's application.
 */
export function tlsFailure (err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code
  if (typeof code !== 'string') return undefined
  return CERT_ERRORS.has(code) || code.startsWith('ERR_TLS_') || code.startsWith('ERR_SSL_') ? code : undefined
}

/**
 * What was wrong with an upstream response undici refused while parsing its head, or undefined.
 * undici destroys the socket of such a response: it is never reused.
 */
export function malformedResponse (err: unknown): string | undefined {
  if (err instanceof errors.HeadersOverflowError) return 'response headers over the size limit'
  // Raised by the head parser when the framing is ambiguous (Transfer-Encoding with
  // Content-Length, or two Content-Lengths) and the declared length was never read.
  if (err instanceof errors.ResponseContentLengthMismatchError) return 'conflicting Content-Length or Transfer-Encoding'
  if (err instanceof errors.HTTPParserError) return err.message
  return undefined
}
