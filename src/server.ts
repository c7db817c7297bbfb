// Process entry: signals first, then config, app, listen; SIGTERM drains.
import { setTimeout as sleep } from 'node:timers/promises'
import v8 from 'node:v8'
import type { FastifyInstance } from 'fastify'
import { buildApp } from './app.js'
import { loadEnv, type GatewayEnv } from './config/env.js'
import { ExtraListeners } from './http/listeners.js'
import { createLogger, type GatewayLogger } from './logger.js'
import { onReload } from './reload-signals.js'
import { startTracing, type Tracing } from './tracing.js'

const TRACE_FLUSH_MS = 5000

/**
 * V8 flags the gateway sets for itself, before any request is served.
 * --no-allocation-site-pretenuring: V8 may decide, from a few scavenges in which most objects of
 * an allocation site survived (startup, a burst), to allocate that site's objects straight in the
 * old generation. For a request path that decision is wrong and it sticks: per-request garbage then
 * fills the old generation and the process runs a mark-compact every 2–3 s for good. Under load,
 * 3 of 8 identical gateway processes fell into that state (+20–30 % CPU per request, 7–10
 * mark-compacts instead of 2 in 25 s); with the flag, none of 8 did.
 */
const V8_FLAGS = '--no-allocation-site-pretenuring'

export async function start (): Promise<void> {
  v8.setFlagsFromString(V8_FLAGS)
  let app: FastifyInstance | undefined
  let listeners: ExtraListeners | undefined
  let stopping = false

  const stop = (signal: string): void => {
    if (stopping) return
    stopping = true
    if (app === undefined) process.exit(0)
    drain(app, signal).catch(() => { process.exitCode = 1 })
  }
  process.once('SIGTERM', stop)
  process.once('SIGINT', stop)
  onReload(signal => { app?.routeTable.reload(signal).catch(() => {}) })

  let env: GatewayEnv
  try {
    env = loadEnv()
  } catch (err) {
    console.error((err as Error).message)
    process.exit(1)
  }
  // Lines are written asynchronously in batches: whatever is still buffered is written before any exit.
  const log: GatewayLogger = createLogger(env.logLevel, env.logFormat)
  const exit = (code: number): never => {
    log.flush()
    process.exit(code)
  }
  process.once('uncaughtException', err => {
    log.logger.fatal({ err }, 'uncaught exception')
    exit(1)
  })
  let tracing: Tracing | undefined
  try {
    tracing = await startTracing()
    app = await buildApp(env, { tracing, log })
    // TLS_PORT and H2C_PORT, when set: their hooks close them with the app.
    if (env.tls !== undefined || env.h2cPort !== undefined) listeners = new ExtraListeners(app, env)
    await app.listen({ port: env.port, host: env.host })
    await listeners?.listen()
  } catch (err) {
    // The logger may not exist yet: say it plainly on stderr as well.
    console.error(`gatehouse: cannot start: ${(err as Error).message}`)
    exit(1)
  }

  async function drain (app: FastifyInstance, signal: string): Promise<void> {
    const timeoutMs = env.shutdownTimeoutMs
    app.log.info({ signal, delayMs: env.shutdownDelayMs, timeoutMs }, 'draining: not ready, finishing requests in flight')
    app.markDraining()
    if (env.shutdownDelayMs > 0) await sleep(env.shutdownDelayMs)
    let forced = false
    const timer = setTimeout(() => {
      forced = true
      app.log.warn({ timeoutMs }, 'shutdown timeout: closing the connections still open')
      app.server.closeAllConnections()
      listeners?.closeAllConnections()
      // Node does not count upgraded sockets among its connections: the tunnels are closed apart.
      app.websocket.closeAll()
      setTimeout(() => exit(1), 1000).unref()
    }, timeoutMs)
    // Keep-alive connections that finish their last request while we drain would otherwise
    // stay open until their keep-alive timeout and hold the exit back.
    const sweeper = setInterval(() => app.server.closeIdleConnections(), 100)
    try {
      await app.close()
      clearInterval(sweeper)
      clearTimeout(timer)
      // The last spans are still queued for export; an exporter that hangs does not hold the exit.
      if (tracing !== undefined) {
        await Promise.race([tracing.shutdown(), sleep(TRACE_FLUSH_MS)]).catch((err: unknown) => app.log.warn({ err }, 'could not flush traces'))
      }
      app.log.info({ forced }, 'stopped')
      exit(forced ? 1 : 0)
    } catch (err) {
      app.log.error({ err }, 'error while stopping')
      exit(1)
    }
  }
}
