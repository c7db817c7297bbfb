// The end of every Fastify proxy script the bench runs: listen on PORT/HOST, say the port on
// stdout ({"port": N}, what the runner waits for), and close on SIGTERM/SIGINT.
import type { FastifyInstance } from 'fastify'

export async function serve (app: FastifyInstance): Promise<void> {
  await app.listen({ port: Number(process.env.PORT ?? 0), host: process.env.HOST ?? '127.0.0.1' })
  const address = app.server.address()
  console.log(JSON.stringify({ port: typeof address === 'object' && address !== null ? address.port : 0 }))
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, () => {
      app.close().then(() => process.exit(0), () => process.exit(1))
    })
  }
}
