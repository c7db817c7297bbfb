// WebSocket upgrades. Node hands an upgrade request over with its raw socket, outside the
// request path; here it is given a response bound to that socket and routed like any request, so
// the handshake runs the whole proxied pipeline (route, CORS, auth, rate limit) and the proxy
// answers it. The tunnels that follow a 101 are tracked here: Node's server forgets an upgraded
// socket (closeAllConnections() never closes it), so the gateway closes them itself on shutdown.
import { ServerResponse, type IncomingMessage } from 'node:http'
import type { Socket } from 'node:net'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import type { WebSocketSettings } from '../../src/config/route-file/index.js'
import type { TunnelSlots } from '../../src/upstream/target.js'
import { Tunnel } from './tunnel.js'

/**
 * How a handshake on a route ended: upgraded (the upstream said 101), refused (it answered
 * otherwise), failed (unreachable, timed out, reset), unavailable (no target could take a tunnel,
 * or the gateway is stopping), rejected (the gateway answered: not a websocket route, auth, limit).
 */
export const UPGRADE_OUTCOMES = ['upgraded', 'refused', 'failed', 'unavailable', 'rejected'] as const
export type UpgradeOutcome = typeof UPGRADE_OUTCOMES[number]

const HEAD = Symbol('gatehouse.upgradeHead')
type UpgradeRequest = IncomingMessage & { [HEAD]?: Buffer }

/** For a request that came as an upgrade: the bytes its client sent after the head; otherwise undefined. */
export function upgradeHead (req: IncomingMessage): Buffer | undefined {
  return (req as UpgradeRequest)[HEAD]
}

const WEBSOCKET = /^\s*websocket\s*$/i

/** An upgrade request that asks for a WebSocket (not, say, curl's h2c offer). */
export function isWebSocketHandshake (request: FastifyRequest): boolean {
  return upgradeHead(request.raw) !== undefined && WEBSOCKET.test(request.headers.upgrade ?? '')
}

export interface WebSocketState {
  /** Counts how a handshake on a route ended, the first time it is known (the proxy's answers, then the proxied scope's error handler: rejected). */
  settle: (request: FastifyRequest, outcome: UpgradeOutcome) => void
  /** Turns an upgraded handshake into a tunnel between the client's socket and the upstream's. */
  tunnel: (request: FastifyRequest, upstream: Socket, slots: TunnelSlots, settings: WebSocketSettings) => void
  /** Closes every open tunnel (at SHUTDOWN_TIMEOUT). */
  closeAll: () => void
  /** Handshakes by upstream and outcome, since start. */
  readonly upgrades: ReadonlyMap<string, Record<UpgradeOutcome, number>>
}

declare module 'fastify' {
  interface FastifyInstance {
    websocket: WebSocketState
  }
}

async function websocketPlugin (app: FastifyInstance): Promise<void> {
  const settled = new WeakSet<FastifyRequest>()
  const upgrades = new Map<string, Record<UpgradeOutcome, number>>()
  const open = new Set<Tunnel>()
  let allClosed: (() => void) | undefined

  function onUpgrade (req: IncomingMessage, socket: Socket, head: Buffer): void {
    // Node removed its own listeners: an error now would be thrown, and it ends in 'close',
    // which the response and the tunnel watch.
    socket.on('error', () => {})
    ;(req as UpgradeRequest)[HEAD] = head
    const res = new ServerResponse(req)
    res.shouldKeepAlive = false
    res.assignSocket(socket)
    // Node's parser has let go of this connection: after any answer but a 101 it is closed.
    res.once('finish', () => { if (res.statusCode !== 101) socket.destroySoon() })
    app.routing(req, res)
  }
  app.server.on('upgrade', onUpgrade)
  // Node lets the server close as soon as the last tunnel's socket is destroyed, before the socket
  // says so: the process must not exit before every tunnel's access line is written.
  app.addHook('onClose', async () => {
    if (open.size > 0) await new Promise<void>(resolve => { allClosed = resolve })
  })

  app.decorate('websocket', {
    upgrades,
    settle (request, outcome) {
      // Counted once, when first known: a refusal that follows (the error it is answered with) is not a second outcome.
      const upstream = request.match?.route.upstream.name
      if (upstream === undefined || settled.has(request)) return
      settled.add(request)
      let counts = upgrades.get(upstream)
      if (counts === undefined) upgrades.set(upstream, counts = { upgraded: 0, refused: 0, failed: 0, unavailable: 0, rejected: 0 })
      counts[outcome]++
    },
    tunnel (request, upstream, slots, settings) {
      const tunnel = new Tunnel(request.raw.socket, upstream, upgradeHead(request.raw) as Buffer, slots, settings, failure => { request.failure = failure })
      open.add(tunnel)
      // Its access line is written when its response closes, a tick after its socket.
      request.raw.socket.once('close', () => {
        process.nextTick(() => {
          open.delete(tunnel)
          if (open.size === 0) allClosed?.()
        })
      })
    },
    closeAll () {
      for (const tunnel of open) tunnel.close('shutdown')
    }
  } satisfies WebSocketState)
}

export default fp(websocketPlugin, { name: 'gatehouse-websocket', fastify: '5.x', dependencies: ['gatehouse-route-table'] })
