// The bench's own redis-server for the Redis rate-limit path: whether one is installed.
import { execFileSync } from 'node:child_process'

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
