// DNS service discovery. Each discover block of a route file is watched by a DnsWatch: it asks
// the DNS with c-ares (node:dns Resolver: asynchronous, TTLs in the answer, never the libuv thread
// pool that getaddrinfo blocks), again when the TTL runs out, and says when its addresses change.
// The route table turns each address into a target of its own (plugins/route-table).
import { Resolver } from 'node:dns/promises'
import type { DiscoverConfig, UpstreamConfig } from '../config/route-file/index.js'

/** One address a name resolved to. */
export interface DiscoveredAddress {
  ip: string
  port: number
  /** SRV weight; undefined: the entry's weight. */
  weight: number | undefined
}

/** Where discovery writes what operators should know: pino's shape. */
export interface DiscoveryLog {
  info: (fields: object, message: string) => void
  warn: (fields: object, message: string) => void
}

// An authoritative "no such instances": the name does not exist, or has no records of the type.
const NO_ADDRESSES = new Set(['ENOTFOUND', 'ENODATA'])
// Each refresh waits up to this share longer, at random, so replicas do not query in lock-step.
const JITTER = 0.1
// c-ares: per-try timeout and tries, per server. A dead resolver costs about 2 s, not c-ares' 20 s.
const RESOLVER_OPTIONS = { timeout: 1000, tries: 2 }

export class DnsWatch {
  /** The addresses that serve, sorted. */
  addresses: readonly DiscoveredAddress[] = []
  /** Why the last resolution failed (ENOTFOUND, ETIMEOUT, empty answer...); undefined after a good one. */
  failure: string | undefined
  /** Whether any resolution has ended yet. */
  settled = false
  private config: DiscoverConfig
  private failuresInRow = 0
  private timer: NodeJS.Timeout | undefined
  private stopped = false
  private readonly resolver = new Resolver(RESOLVER_OPTIONS)
  /** Settles when the first resolution has ended, whatever its outcome. */
  readonly first: Promise<void>

  constructor (readonly upstream: string, config: DiscoverConfig, private readonly log: DiscoveryLog, private readonly onChange: (watch: DnsWatch) => void, private readonly onFailure: (watch: DnsWatch) => void) {
    this.config = config
    if (config.resolvers !== undefined) this.resolver.setServers(config.resolvers)
    this.first = this.resolve()
  }

  get name (): string {
    return this.config.dns
  }

  /** Identity across reloads: a kept watch keeps its addresses; refresh and onEmpty may change. */
  static key (upstream: string, d: DiscoverConfig): string {
    return `${upstream} ${d.type} ${d.dns} ${d.scheme} ${d.port} ${d.resolvers?.join(',') ?? '-'}`
  }

  configure (config: DiscoverConfig): void {
    this.config = config
  }

  stop (): void {
    this.stopped = true
    clearTimeout(this.timer)
    this.resolver.cancel()
  }

  private async resolve (): Promise<void> {
    const config = this.config
    let answer: Answer | undefined
    let error: NodeJS.ErrnoException | undefined
    try {
      answer = await lookup(this.resolver, config)
    } catch (err) {
      error = err as NodeJS.ErrnoException
    }
    if (this.stopped) return
    this.settled = true
    const found = answer !== undefined && answer.addresses.length > 0 ? answer : undefined
    // The next resolution is scheduled first: whatever the answer sets off cannot stop the watch.
    const wait = found === undefined
      ? Math.min(config.maxRefreshMs, config.minRefreshMs * 2 ** this.failuresInRow)
      : config.refresh === 'ttl' ? clamp(found.ttlMs, config.minRefreshMs, config.maxRefreshMs) : config.refresh
    this.timer = setTimeout(() => { this.resolve().catch(() => {}) }, wait * (1 + Math.random() * JITTER))
    this.timer.unref()
    if (found !== undefined) this.succeeded(found.addresses)
    else this.failed(error?.code ?? (error === undefined ? 'ENODATA' : error.message))
  }

  private succeeded (addresses: DiscoveredAddress[]): void {
    const stateChanged = this.failure !== undefined
    if (stateChanged) this.log.info({ upstream: this.upstream, dns: this.config.dns, type: this.config.type, failedFor: this.failuresInRow }, 'DNS name resolves again')
    this.failure = undefined
    this.failuresInRow = 0
    if (!this.replace(addresses) && stateChanged) this.onChange(this)
  }

  /** A failed resolution: `code` is the resolver's (ENOTFOUND, ENODATA, ETIMEOUT, ESERVFAIL...). */
  private failed (code: string): void {
    const failure = code === 'ENOTFOUND' ? 'NXDOMAIN' : code === 'ENODATA' ? 'no addresses' : code
    const stateChanged = stateOf(failure) !== stateOf(this.failure)
    this.failure = failure
    this.failuresInRow++
    this.onFailure(this)
    const clear = NO_ADDRESSES.has(code) && this.config.onEmpty === 'clear' && this.addresses.length > 0
    if (stateChanged) {
      const fields = { upstream: this.upstream, dns: this.config.dns, type: this.config.type, failure, addresses: this.addresses.length }
      this.log.warn(fields, clear
        ? 'DNS name has no addresses: its targets are drained (onEmpty: clear)'
        : this.addresses.length > 0
          ? 'DNS resolution failed: the last known addresses keep serving'
          : 'DNS name has no addresses: they become targets when it resolves (until then its upstream has only its other targets, or answers 503)')
    }
    if (!(clear && this.replace([])) && stateChanged) this.onChange(this)
  }

  /** Takes a new address set; reports whether it differs from the one before (then onChange was called). */
  private replace (addresses: DiscoveredAddress[]): boolean {
    const id = (a: DiscoveredAddress) => `${a.ip} ${a.port} ${a.weight ?? '-'}`
    const before = new Set(this.addresses.map(id))
    const after = new Set(addresses.map(id))
    const added = addresses.filter(a => !before.has(id(a)))
    const removed = this.addresses.filter(a => !after.has(id(a)))
    if (added.length === 0 && removed.length === 0) return false
    this.addresses = addresses
    const show = (a: DiscoveredAddress) => `${a.ip.includes(':') ? `[${a.ip}]` : a.ip}:${a.port}`
    this.log.info({ upstream: this.upstream, dns: this.config.dns, added: added.map(show), removed: removed.map(show), addresses: addresses.length }, 'DNS addresses changed')
    this.onChange(this)
    return true
  }
}

/** Every DnsWatch of the loaded route files, kept across reloads by DnsWatch.key. */
export class Discovery {
  private readonly watches = new Map<string, DnsWatch>()
  /** Failed resolutions per upstream since start (dns_resolution_failures_total). */
  readonly failures = new Map<string, number>()

  constructor (private readonly log: DiscoveryLog, private readonly onChange: (watch: DnsWatch) => void) {}

  /**
   * Watches the discover blocks of `configs`: new blocks start resolving, blocks no config has
   * any more stop. Waits for the new blocks' first answers, at most `waitMs`.
   */
  async sync (configs: readonly UpstreamConfig[], waitMs: number): Promise<void> {
    const wanted = new Set<string>()
    const started: DnsWatch[] = []
    for (const config of configs) {
      for (const d of config.discover) {
        const key = DnsWatch.key(config.name, d)
        wanted.add(key)
        const kept = this.watches.get(key)
        if (kept !== undefined) {
          kept.configure(d)
          continue
        }
        const watch = new DnsWatch(config.name, d, this.log, this.onChange, w => { this.failures.set(w.upstream, (this.failures.get(w.upstream) ?? 0) + 1) })
        this.watches.set(key, watch)
        if (!this.failures.has(config.name)) this.failures.set(config.name, 0)
        started.push(watch)
      }
    }
    for (const [key, watch] of this.watches) {
      if (!wanted.has(key)) {
        watch.stop()
        this.watches.delete(key)
      }
    }
    if (started.length === 0) return
    let timer: NodeJS.Timeout | undefined
    await Promise.race([Promise.all(started.map(w => w.first)), new Promise(resolve => { timer = setTimeout(resolve, waitMs) })])
    clearTimeout(timer)
  }

  /** The watch of one discover block of an upstream. */
  watchOf (upstream: string, d: DiscoverConfig): DnsWatch | undefined {
    return this.watches.get(DnsWatch.key(upstream, d))
  }

  stop (): void {
    for (const watch of this.watches.values()) watch.stop()
    this.watches.clear()
  }
}

/**
 * The name an entry's targets are known by: the Host header and the TLS name of each address.
 * For SRV, the service name without its _service._proto labels (_http._tcp.payments.internal →
 * payments.internal).
 */
export function serviceName (d: DiscoverConfig): string {
  return d.type === 'SRV' ? d.dns.replace(/^(_[^.]*\.)+/, '') : d.dns
}

interface Answer { addresses: DiscoveredAddress[], ttlMs: number }

async function lookup (resolver: Resolver, d: DiscoverConfig): Promise<Answer> {
  if (d.type === 'SRV') return await lookupSrv(resolver, d)
  const families = d.type === 'A+AAAA' ? [4, 6] as const : d.type === 'A' ? [4] as const : [6] as const
  const answers = await Promise.allSettled(families.map(async f => f === 4 ? await resolver.resolve4(d.dns, { ttl: true }) : await resolver.resolve6(d.dns, { ttl: true })))
  // A family with no records is an empty part of the answer; any other error fails the lookup.
  const failed = answers.flatMap(a => a.status === 'rejected' ? [a.reason as NodeJS.ErrnoException] : [])
  const hard = failed.find(e => !NO_ADDRESSES.has(e.code ?? ''))
  if (hard !== undefined) throw hard
  const [first] = failed
  if (first !== undefined && failed.length === answers.length) throw first
  const records = answers.flatMap(a => a.status === 'fulfilled' ? a.value : [])
  return {
    addresses: sorted(records.map(r => ({ ip: r.address, port: d.port, weight: undefined }))),
    ttlMs: Math.min(...records.map(r => r.ttl)) * 1000
  }
}

/** SRV: the lowest priority present; each target name resolved to its A, else AAAA, records. */
async function lookupSrv (resolver: Resolver, d: DiscoverConfig): Promise<Answer> {
  // RFC 2782: a single record with target "." means the service is decidedly not available here.
  const records = (await resolver.resolveSrv(d.dns)).filter(r => r.name !== '' && r.name !== '.')
  if (records.length === 0) return { addresses: [], ttlMs: d.minRefreshMs }
  const lowest = Math.min(...records.map(r => r.priority))
  const chosen = records.filter(r => r.priority === lowest)
  const allZero = chosen.every(r => r.weight === 0)
  let ttl = Infinity
  const resolved = await Promise.all(chosen.map(async r => {
    let ips: Array<{ address: string, ttl: number }>
    try {
      ips = await resolver.resolve4(r.name, { ttl: true })
    } catch (err) {
      if (!NO_ADDRESSES.has((err as NodeJS.ErrnoException).code ?? '')) throw err
      try {
        ips = await resolver.resolve6(r.name, { ttl: true })
      } catch (err6) {
        // A target name without addresses is left out; the others serve.
        if (NO_ADDRESSES.has((err6 as NodeJS.ErrnoException).code ?? '')) return []
        throw err6
      }
    }
    for (const ip of ips) ttl = Math.min(ttl, ip.ttl)
    // Weight 0 is "rarely, while others have weight" (RFC 2782); all 0: equal.
    const weight = allZero ? 1 : r.weight === 0 ? 0.01 : r.weight
    return ips.map(ip => ({ ip: ip.address, port: r.port, weight }))
  }))
  // Node's resolveSrv gives no TTL: the address records' TTLs stand for the answer's.
  return { addresses: sorted(resolved.flat()), ttlMs: Number.isFinite(ttl) ? ttl * 1000 : d.minRefreshMs }
}

function sorted (addresses: DiscoveredAddress[]): DiscoveredAddress[] {
  const seen = new Set<string>()
  return addresses.filter(a => {
    const id = `${a.ip} ${a.port}`
    if (seen.has(id)) return false
    seen.add(id)
    return true
  }).sort((a, b) => a.ip < b.ip ? -1 : a.ip > b.ip ? 1 : a.port - b.port)
}

/**
 * The state a failure puts a name in, for logging once per change: NXDOMAIN and no addresses
 * are states of their own; a resolver that fails one way, then another (refused, timed out), is one.
 */
function stateOf (failure: string | undefined): string | undefined {
  return failure === undefined || failure === 'NXDOMAIN' || failure === 'no addresses' ? failure : 'resolver failing'
}

function clamp (value: number, min: number, max: number): number {
  return Math.min(max, Math.max(min, value))
}
