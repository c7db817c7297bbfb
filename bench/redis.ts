// The bench's own redis-server: whether one is installed, and what Redis itself says about the
// limiter's scripts (INFO commandstats and latencystats of EVALSHA), so the time a decision takes
// inside Redis can be told apart from the time the gateway waits for it.
import { execFileSync } from 'node:child_process'
import { Redis } from 'ioredis'

/** redis-server's version, or why it cannot be used (not installed, not runnable). */
export function redisServerVersion (): { version: string } | { missing: string } {
  try {
    const text = execFileSync('redis-server', ['--version'], { encoding: 'utf8', timeout: 5000 })
    return { version: /v=(\S+)/.exec(text)?.[1] ?? text.trim() }
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    return { missing: e.code === 'ENOENT' ? 'redis-server is not installed (not on PATH)' : `redis-server --version failed: ${e.message}` }
  }
}

/** What Redis measured of EVALSHA (the limiter's scripts, and a heartbeat every 5 s) since the last reset. */
export interface ScriptStats {
  calls: number
  /** Mean time Redis spent running one script call (µs): no network, no queueing. */
  usPerCall: number
  /** Percentiles of the same (Redis >= 7 tracks them; null before). */
  p50Us: number | null
  p99Us: number | null
}

/** `key=value,key=value` after the colon of the INFO line that starts with `prefix`. */
function infoFields (info: string, prefix: string): Record<string, number> | undefined {
  const line = info.split(/\r?\n/).find(l => l.startsWith(prefix))
  if (line === undefined) return undefined
  const fields: Record<string, number> = {}
  for (const pair of line.slice(prefix.length).split(',')) {
    const [key, value] = pair.split('=')
    if (key !== undefined && value !== undefined) fields[key] = Number(value)
  }
  return fields
}

/** A connection of the bench to one of its own redis-servers (never the shared one). */
export class RedisProbe {
  readonly #client: Redis

  constructor (port: number) {
    this.#client = new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 1, enableOfflineQueue: true })
    // A failure reaches the caller through the command; without a listener ioredis prints it.
    this.#client.on('error', () => {})
  }

  /** Zeroes commandstats and latencystats: called once the warm-ups are over. */
  async resetStats (): Promise<void> {
    await this.#client.call('CONFIG', 'RESETSTAT')
  }

  /** Clients connected to this redis-server, the probe included. */
  async connectedClients (): Promise<number> {
    const m = /^connected_clients:(\d+)/m.exec(String(await this.#client.call('INFO', 'clients')))
    return m === null ? 0 : Number(m[1])
  }

  async scriptStats (): Promise<ScriptStats | null> {
    const commands = await this.#client.call('INFO', 'commandstats')
    // INFO latencystats is Redis 7's; older servers answer with an empty section.
    const latency = await this.#client.call('INFO', 'latencystats').catch(() => '')
    const stats = infoFields(String(commands), 'cmdstat_evalsha:')
    if (stats === undefined || stats.calls === undefined || stats.usec_per_call === undefined) return null
    const pct = infoFields(String(latency), 'latency_percentiles_usec_evalsha:')
    return { calls: stats.calls, usPerCall: stats.usec_per_call, p50Us: pct?.p50 ?? null, p99Us: pct?.p99 ?? null }
  }

  close (): void {
    this.#client.disconnect()
  }
}
