// Small loopback helpers shared by the demo, the benchmark and the tests.
import { once } from 'node:events'
import http from 'node:http'
import net, { type AddressInfo } from 'node:net'

/** A port of 127.0.0.1 that was free a moment ago (nothing listens on it now). */
export async function freePort (): Promise<number> {
  const server = net.createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const port = (server.address() as AddressInfo).port
  await new Promise<void>(resolve => server.close(() => resolve()))
  return port
}

/** The status of GET http://127.0.0.1:port/path on a fresh connection (1 s timeout). */
export function httpStatus (port: number, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent: false, timeout: 1000 }, res => {
      res.resume()
      resolve(res.statusCode ?? 0)
    })
    req.once('timeout', () => req.destroy(new Error('timeout')))
    req.once('error', reject)
  })
}
