// The gRPC part of `npm run bench`: unary calls with a small message, through a Gatehouse process
// (its h2c listener, an h2c target), directly to the same grpc-js server, and through the least
// HTTP/2 proxy a Node process can be (bench/grpc-bare-proxy.ts), in one run (bench/protocol-rounds.ts).
//
//   npm run bench -- --only grpc     # alone; a full `npm run bench` runs it after the HTTP subjects
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import { join } from 'node:path'
import * as grpc from '@grpc/grpc-js'
import { Children, cleanEnv } from './procs.js'
import { DIST, portOf, roundsTable, runRounds, startGatehouse, type ProtocolPath, type RoundOptions } from './protocol-rounds.js'

const CONCURRENCY = 32
const MESSAGE = Buffer.alloc(64, 'x')
const bytes = (b: Buffer): Buffer => b

/** `CONCURRENCY` calls in flight on one channel (as a service's client would), each followed by the next, for `seconds`. */
async function unaryLoad (address: string, seconds: number): Promise<number> {
  const client = new grpc.Client(address, grpc.credentials.createInsecure())
  let calls = 0
  const until = performance.now() + seconds * 1000
  const loop = async (): Promise<void> => {
    while (performance.now() < until) {
      await new Promise<void>((resolve, reject) => {
        client.makeUnaryRequest('/bench.Echo/Unary', bytes, bytes, MESSAGE, err => { if (err === null) { calls++; resolve() } else reject(err) })
      })
    }
  }
  try {
    await Promise.all(Array.from({ length: CONCURRENCY }, loop))
  } finally {
    client.close()
  }
  return calls
}

/** Runs the rounds; resolves with the Markdown table. */
export async function benchGrpc (o: RoundOptions): Promise<string> {
  const children = new Children()
  const dir = await mkdtemp(join(os.tmpdir(), 'gatehouse-bench-grpc-'))
  try {
    const server = children.spawn('grpc-upstream', process.execPath, [join(DIST, 'bench', 'grpc-upstream.js')], { env: cleanEnv({}), cwd: dir, stdout: 'pipe' })
    const serverPort = await portOf(server)
    await writeFile(join(dir, 'grpc.yaml'), `targets:\n  - { url: http://127.0.0.1:${serverPort}, protocol: h2c }\nroutes:\n  - { path: /bench.Echo, grpc: true }\n`)
    const gateway = startGatehouse(children, dir, { H2C_PORT: '0' })
    const bare = children.spawn('grpc-bare-proxy', process.execPath, [join(DIST, 'bench', 'grpc-bare-proxy.js')], { env: cleanEnv({ UPSTREAM_PORT: String(serverPort) }), cwd: dir, stdout: 'pipe' })
    const path = (name: string, label: string, port: number, proxy: ProtocolPath['proxy']): ProtocolPath =>
      ({ name, label, proxy, load: async seconds => await unaryLoad(`127.0.0.1:${port}`, seconds) })
    const paths = [
      path('direct', 'direct to the grpc-js server', serverPort, undefined),
      path('bare', 'bare node:http2 proxy (streams piped, trailers passed)', await portOf(bare), bare),
      path('gatehouse', 'through Gatehouse (h2c in, h2c to the target)', await portOf(gateway, 'h2c'), gateway)
    ]
    o.progress(`grpc: ${CONCURRENCY} unary calls in flight on one channel, ${MESSAGE.length}-byte messages; ${o.rounds} rounds x ${o.durationS} s per path`)
    const results = await runRounds('grpc', paths, server, o)
    return roundsTable(`gRPC unary: ${CONCURRENCY} calls in flight on one HTTP/2 connection, ${MESSAGE.length}-byte messages (medians)`, 'call', paths, results, 'bare')
  } finally {
    await children.stopAll()
    await rm(dir, { recursive: true, force: true })
  }
}
