// Ctrl-C or SIGTERM for a demo server: finish what is in flight, but never hold the exit for more than 2 s.
import type { Server } from 'node:http'

export function stopOnSignals (server: Server, name: string): void {
  let stopping = false
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) return
    stopping = true
    console.log(`${name}: ${signal}, stopping`)
    server.close(() => process.exit(0))
    server.closeIdleConnections()
    setTimeout(() => {
      server.closeAllConnections()
      process.exit(0)
    }, 2000).unref()
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}
