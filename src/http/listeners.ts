// The gateway's listeners besides PORT: HTTPS on TLS_PORT (HTTP/2 and HTTP/1.1, chosen by ALPN)
// and cleartext HTTP/2 with prior knowledge on H2C_PORT. They hand every request to the same
// Fastify app through `app.routing` (Fastify's entry for requests of a server it did not create,
// docs/Reference/Server.md#routing), so routes, pipeline, access lines and metrics are the main
// port's. They drain with the app: `app.close()` closes them and waits for their streams.
import { readFile } from 'node:fs/promises'
import { watch, type FSWatcher } from 'node:fs'
import type { IncomingMessage, ServerResponse } from 'node:http'
import http2, { type Http2SecureServer, type Http2Server, type ServerHttp2Session } from 'node:http2'
import type { AddressInfo, Server, Socket } from 'node:net'
import { basename, dirname } from 'node:path'
import { createSecureContext } from 'node:tls'
import type { FastifyInstance } from 'fastify'
import type { GatewayEnv } from '../config/env.js'
import { ConfigEnvError } from '../errors.js'

/** Streams one HTTP/2 connection's client may cancel within RESET_WINDOW_MS before the connection is closed (rapid reset, CVE-2023-44487). */
export const MAX_CLIENT_RESETS = 200
export const RESET_WINDOW_MS = 10_000
/** Quiet time after a change to the certificate or key file before both are read again. */
const CERT_RELOAD_DEBOUNCE_MS = 100

const { NGHTTP2_ENHANCE_YOUR_CALM } = http2.constants

interface Listener {
  name: 'tls' | 'h2c'
  server: Http2SecureServer | Http2Server
  port: number
}

export class ExtraListeners {
  readonly #app: FastifyInstance
  readonly #env: GatewayEnv
  readonly #listeners: Listener[] = []
  /** Every TCP connection of these listeners, destroyed at SHUTDOWN_TIMEOUT. */
  readonly #sockets = new Set<Socket>()
  readonly #sessions = new Set<ServerHttp2Session>()
  readonly #watchers: FSWatcher[] = []
  #reloadTimer: NodeJS.Timeout | undefined
  #closed: Promise<void> | undefined
  /** Connections closed for cancelling too many streams (rapid reset). */
  resetFloods = 0

  /**
   * Registers the app hooks that close these listeners with it: preClose stops them accepting
   * and sends GOAWAY (streams in flight go on), and onClose waits for those streams before the
   * plugins close their pools. Call before the app is ready.
   */
  constructor (app: FastifyInstance, env: GatewayEnv) {
    this.#app = app
    this.#env = env
    app.addHook('preClose', (done) => {
      this.#closed = this.#close()
      done()
    })
    app.addHook('onClose', async () => { await this.#closed })
    const listeners = this
    // eslint-disable-next-line no-new -- prom-client metrics register themselves when constructed
    new app.metrics.client.Counter({
      name: 'http2_reset_flood_connections_total',
      help: `HTTP/2 connections closed because their client cancelled more than ${MAX_CLIENT_RESETS} streams within ${RESET_WINDOW_MS / 1000} s (rapid reset).`,
      collect () {
        this.reset()
        this.inc(listeners.resetFloods)
      }
    })
  }

  /** Listens on TLS_PORT and H2C_PORT (those set) of HOST. Throws naming the variable when a file cannot be read. */
  async listen (): Promise<void> {
    const env = this.#env
    if (env.tls !== undefined) {
      const material = await readPem(env.tls.certFile, env.tls.keyFile)
      try {
        createSecureContext(material)
      } catch (err) {
        throw new ConfigEnvError(`TLS_CERT_FILE, TLS_KEY_FILE: not a usable certificate and key: ${(err as Error).message}`)
      }
      const server = http2.createSecureServer({ ...this.#h2Options(), ...material, allowHTTP1: true, ALPNProtocols: ['h2', 'http/1.1'] })
      this.#http1(server)
      await this.#start({ name: 'tls', server, port: env.tls.port })
      this.#watchCertificate(server, env.tls.certFile, env.tls.keyFile, material)
    }
    if (env.h2cPort !== undefined) {
      // No allowHTTP1 here: a cleartext server answers HTTP/1.1 with HTTP/2 frames (research notes).
      await this.#start({ name: 'h2c', server: http2.createServer(this.#h2Options()), port: env.h2cPort })
    }
  }

  /** The port a listener got (its configured one, or the one chosen for 0). */
  port (name: 'tls' | 'h2c'): number | undefined {
    const listener = this.#listeners.find(l => l.name === name)
    return listener === undefined ? undefined : (listener.server.address() as AddressInfo).port
  }

  /** SHUTDOWN_TIMEOUT: closes every connection still open. */
  closeAllConnections (): void {
    for (const socket of this.#sockets) socket.destroy()
  }

  #h2Options (): http2.ServerOptions {
    const env = this.#env
    return {
      settings: {
        maxConcurrentStreams: env.h2MaxConcurrentStreams,
        // What the main port accepts: the guard tells 414 from 431 within it.
        maxHeaderListSize: env.maxHeaderSize + env.maxUrlLength
      },
      // Node counts the pseudo-headers (:method, :path, :scheme, :authority, :protocol) too.
      maxHeaderListPairs: env.maxHeaders + 5
    }
  }

  /** HTTP/1.1 on the TLS port gets the main port's limits and timeouts. */
  #http1 (server: Http2SecureServer): void {
    const env = this.#env
    // Node's HTTP/1.1 handling of an allowHTTP1 server reads these from the server (types omit them).
    Object.assign(server, {
      headersTimeout: env.headersTimeoutMs,
      requestTimeout: env.requestTimeoutMs,
      keepAliveTimeout: env.keepAliveTimeoutMs,
      maxHeadersCount: env.maxHeaders + 1
    })
    const main = this.#app.server
    // Parse errors get the main port's JSON answer (Fastify's clientErrorHandler listens there).
    server.on('clientError' as 'request', (err: Error, socket: Socket) => { main.emit('clientError', err, socket) })
    // Upgrades (WebSocket) go to whatever handles them on the main port, when something does;
    // otherwise Node treats them as plain requests, as the main port does.
    if (main.listenerCount('upgrade') > 0) {
      server.on('upgrade' as 'request', (req: IncomingMessage, socket: Socket, head: Buffer) => { main.emit('upgrade', req, socket, head) })
    }
  }

  async #start (listener: Listener): Promise<void> {
    const { server, name } = listener
    const env = this.#env
    const route = this.#app.routing
    server.on('request', (req, res) => { route(req as unknown as IncomingMessage, res as unknown as ServerResponse) })
    server.maxConnections = env.maxConnections
    server.on('connection', (socket: Socket) => {
      this.#sockets.add(socket)
      socket.once('close', () => this.#sockets.delete(socket))
    })
    server.on('session', session => { this.#watchSession(session) })
    // A connection that breaks (a reset, a bad frame, a failed handshake) is the client's doing.
    server.on('sessionError', err => { this.#app.log.debug({ err, listener: name }, 'HTTP/2 session error') })
    server.on('tlsClientError' as 'session', (err: Error) => { this.#app.log.debug({ err, listener: name }, 'TLS handshake failed') })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(listener.port, env.host, () => {
        server.off('error', reject)
        resolve()
      })
    })
    this.#listeners.push(listener)
    const { port } = server.address() as AddressInfo
    const scheme = name === 'tls' ? 'https' : 'http'
    this.#app.log.info({ listener: name, protocols: name === 'tls' ? ['h2', 'http/1.1'] : ['h2c'] }, `${name === 'tls' ? 'TLS' : 'h2c'} listening at ${scheme}://${env.host}:${port}`)
  }

  /**
   * An HTTP/2 connection: closed when idle for KEEP_ALIVE_TIMEOUT, and with ENHANCE_YOUR_CALM when
   * its client cancels more than MAX_CLIENT_RESETS streams within RESET_WINDOW_MS. (Node's own
   * bound, nghttp2's, lets 1000 resets through at once and 33 a second after that, each of which
   * would have started an upstream request here.)
   */
  #watchSession (session: ServerHttp2Session): void {
    this.#sessions.add(session)
    session.once('close', () => this.#sessions.delete(session))
    session.setTimeout(this.#env.keepAliveTimeoutMs, () => { session.close() })
    let resets = 0
    let windowStart = Date.now()
    session.on('stream', stream => {
      stream.once('aborted', () => {
        const now = Date.now()
        if (now - windowStart > RESET_WINDOW_MS) {
          windowStart = now
          resets = 0
        }
        if (++resets <= MAX_CLIENT_RESETS || session.destroyed) return
        this.resetFloods++
        this.#app.log.info({ remoteAddress: session.socket?.remoteAddress, resets }, 'HTTP/2 connection closed: its client cancelled too many streams (rapid reset)')
        session.goaway(NGHTTP2_ENHANCE_YOUR_CALM)
        session.destroy()
      })
    })
  }

  /**
   * Reads the certificate and key again when either file changes. The folders are watched, not
   * the files: a file replaced by a rename (a mounted Kubernetes secret) is a new file. A pair
   * that does not make a TLS context is logged and the one in use stays.
   */
  #watchCertificate (server: Http2SecureServer, certFile: string, keyFile: string, current: { cert: string, key: string }): void {
    const names = new Set([basename(certFile), basename(keyFile)])
    const reload = (): void => {
      readPem(certFile, keyFile).then(material => {
        if (material.cert === current.cert && material.key === current.key) return
        createSecureContext(material)
        server.setSecureContext(material)
        current = material
        this.#app.log.info({ certFile, keyFile }, 'TLS certificate reloaded')
      }).catch((err: unknown) => {
        this.#app.log.warn({ certFile, keyFile, error: (err as Error).message }, 'TLS certificate not reloaded: the one in use stays')
      })
    }
    for (const dir of new Set([dirname(certFile), dirname(keyFile)])) {
      const watcher = watch(dir, (_event, file) => {
        if (file !== null && !names.has(file)) return
        clearTimeout(this.#reloadTimer)
        this.#reloadTimer = setTimeout(reload, CERT_RELOAD_DEBOUNCE_MS)
      })
      watcher.on('error', err => { this.#app.log.warn({ err, dir }, 'cannot watch the TLS certificate folder') })
      this.#watchers.push(watcher)
    }
  }

  /** Stops accepting, sends GOAWAY on every HTTP/2 connection and closes idle HTTP/1.1 ones; resolves when every connection is gone. */
  async #close (): Promise<void> {
    for (const watcher of this.#watchers) watcher.close()
    clearTimeout(this.#reloadTimer)
    const closing = this.#listeners.map(async ({ server }) => await new Promise<void>(resolve => { (server as Server).close(() => resolve()) }))
    // Node's close() leaves HTTP/2 sessions open: close() on a session finishes its streams first.
    for (const session of this.#sessions) session.close()
    // HTTP/1.1 keep-alive connections that finish their last request while draining.
    const sweeper = setInterval(() => {
      for (const { server } of this.#listeners) (server as { closeIdleConnections?: () => void }).closeIdleConnections?.()
    }, 100)
    try {
      await Promise.all(closing)
    } finally {
      clearInterval(sweeper)
    }
  }
}

/** The PEM pair, read; errors name the variable. */
async function readPem (certFile: string, keyFile: string): Promise<{ cert: string, key: string }> {
  const read = async (file: string, variable: string): Promise<string> => {
    try {
      return await readFile(file, 'utf8')
    } catch (err) {
      throw new ConfigEnvError(`${variable}: cannot read ${file}: ${(err as Error).message}`)
    }
  }
  return { cert: await read(certFile, 'TLS_CERT_FILE'), key: await read(keyFile, 'TLS_KEY_FILE') }
}
