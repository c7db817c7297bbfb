// WebSocket upgrades. Node hands an upgrade request over with its raw socket, outside the
// request path; here it is given a response bound to that socket and routed like any request, so
// the handshake runs the whole proxied pipeline (route, CORS, auth, rate limit) and the proxy
// answers it. The tunnels that follow a 101 are tracked here: Node's server forgets an upgraded
// socket (closeAllConnections() never closes it), so the gateway closes them itself on shutdown.
import { ServerResponse, type IncomingMessage, type Server } from 'node:http'
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

export interface WebSocketState {
  /** Set when the gateway starts closing: new handshakes get 503. */
  readonly draining: boolean
  /** Records how a handshake the proxy took on ended (unset: rejected). */
  settle: (request: FastifyRequest, outcome: UpgradeOutcome) => void
  /** Turns an upgraded handshake into a tunnel between the client's socket and the upstream's. */
  tunnel: (request: FastifyRequest, upstream: Socket, slots: TunnelSlots, settings: WebSocketSettings) => void
  /** Closes every open tunnel (at SHUTDOWN_TIMEOUT). */
  closeAll: () => void
  /** Handshakes by upstream and outcome, since start. */
  readonly upgrades: ReadonlyMap<string, Record<UpgradeOutcome, number>>
  /** Serves the upgrades of another listener of this app (the TLS one). */
  accept: (server: Server) => void
}

declare module 'fastify' {
  interface FastifyInstance {
    websocket: WebSocketState
  }
}

async function websocketPlugin (app: FastifyInstance): Promise<void> {
  const outcomes = new WeakMap<FastifyRequest, UpgradeOutcome>()
  const upgrades = new Map<string, Record<UpgradeOutcome, number>>()
  const open = new Set<Tunnel>()
  let draining = false

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
  app.addHook('preClose', (done) => {
    draining = true
    done()
  })

  // The outcome of every handshake that matched a route, counted when its response closes.
  app.addHook('onRequest', (request, reply, done) => {
    if (upgradeHead(request.raw) !== undefined) {
      reply.raw.once('close', () => {
        const upstream = request.match?.route.upstream.name
        if (upstream === undefined) return
        let counts = upgrades.get(upstream)
        if (counts === undefined) upgrades.set(upstream, counts = { upgraded: 0, refused: 0, failed: 0, unavailable: 0, rejected: 0 })
        counts[outcomes.get(request) ?? 'rejected']++
      })
    }
    done()
  })

  app.decorate('websocket', {
    get draining () { return draining },
    upgrades,
    settle: (request, outcome) => { outcomes.set(request, outcome) },
    tunnel (request, upstream, slots, settings) {
      const client = request.raw.socket
      const tunnel = new Tunnel(client, upstream, upgradeHead(request.raw) as Buffer, slots, settings,
        failure => { request.failure = failure },
        ended => open.delete(ended))
      open.add(tunnel)
    },
    closeAll () {
      for (const tunnel of open) tunnel.close('shutdown')
    },
    accept (server) { server.on('upgrade', onUpgrade) }
  } satisfies WebSocketState)
}

export default fp(websocketPlugin, { name: 'gatehouse-websocket', fastify: '5.x', dependencies: ['gatehouse-route-table'] })
