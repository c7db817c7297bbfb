// One WebSocket connection after its 101: bytes copied both ways between the client's socket and
// the upstream's, with backpressure (pipe pauses the side that is ahead), an idle timeout and an
// optional lifetime. The gateway does not parse frames: what one side sends, the other receives.
import type { Socket } from 'node:net'
import type { OpenTunnel, TunnelCloseReason, TunnelSlots } from '../../src/upstream/target.js'
import type { WebSocketSettings } from '../../src/config/route-file/index.js'
import type { Failure } from '../../src/logger.js'

// How long a side that is still writing gets to flush once the other side has gone.
const FLUSH_MS = 1000

/** Why the gateway closed a tunnel, for its access line. */
const CLOSED_BY_GATEWAY: Record<TunnelCloseReason, (s: WebSocketSettings) => Failure> = {
  idle: s => ({ code: 'GATEHOUSE_ERR_WEBSOCKET_IDLE', message: `no bytes in either direction for ${s.idleTimeoutMs} ms (websocket.idleTimeout)` }),
  lifetime: s => ({ code: 'GATEHOUSE_ERR_WEBSOCKET_LIFETIME', message: `open for ${s.maxLifetimeMs ?? 0} ms (websocket.maxLifetime)` }),
  'target-removed': s => ({ code: 'GATEHOUSE_ERR_WEBSOCKET_TARGET_REMOVED', message: `its target was removed by a reload ${s.closeDelayMs} ms before (websocket.closeDelay)` }),
  shutdown: () => ({ code: 'GATEHOUSE_ERR_WEBSOCKET_SHUTDOWN', message: 'the gateway stopped and SHUTDOWN_TIMEOUT had passed' })
}

export class Tunnel implements OpenTunnel {
  private closed = false
  private lifetime: NodeJS.Timeout | undefined

  /**
   * `head`: what the client sent after its handshake, before the 101 (sent upstream first).
   * `closedBy` receives the gateway's reason when it closes the tunnel itself.
   */
  constructor (
    private readonly client: Socket,
    private readonly upstream: Socket,
    head: Buffer,
    private readonly slots: TunnelSlots,
    private readonly settings: WebSocketSettings,
    private readonly closedBy: (failure: Failure) => void
  ) {
    slots.open.add(this)
    if (head.length > 0) upstream.write(head)
    // Node resets a socket's timeout on every read and write: the client's sees both directions.
    client.setTimeout(settings.idleTimeoutMs, () => this.close('idle'))
    if (settings.maxLifetimeMs !== undefined) this.lifetime = setTimeout(() => this.close('lifetime'), settings.maxLifetimeMs).unref()
    // A clean end is passed on (pipe ends the other side once it has written everything); an error
    // or a side that is gone takes the other side with it.
    client.on('error', () => this.destroy())
    upstream.on('error', () => this.destroy())
    client.on('close', () => { this.after(upstream) })
    upstream.on('close', () => { this.after(client) })
    client.pipe(upstream)
    upstream.pipe(client)
  }

  /** Closed by the gateway (idle, lifetime, a removed target, shutdown): both sockets go now. */
  close (reason: TunnelCloseReason): void {
    if (this.closed) return
    this.closedBy(CLOSED_BY_GATEWAY[reason](this.settings))
    this.destroy()
  }

  /** One side has closed: the other gets what is already written to it, then closes. */
  private after (other: Socket): void {
    if (other.destroyed) {
      this.settle()
      return
    }
    if (other.writableLength === 0) {
      other.destroy()
    } else {
      other.end(() => other.destroy())
      setTimeout(() => other.destroy(), FLUSH_MS).unref()
    }
    this.settle()
  }

  private destroy (): void {
    this.client.destroy()
    this.upstream.destroy()
    this.settle()
  }

  private settle (): void {
    if (this.closed) return
    this.closed = true
    clearTimeout(this.lifetime)
    this.slots.open.delete(this)
    this.slots.inFlight--
  }
}
