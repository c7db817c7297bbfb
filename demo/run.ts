// npm run demo: three demo upstreams (routes.d/echo.yaml and routes.d/slow.yaml point at them),
// the development token issuer of routes.d/me.yaml, and the gateway in front, then copy-paste
// commands to try it. Ctrl-C stops everything. Runs under tsx: the ports are checked before
// anything is built, and the build runs only when a source changed (demo/build.ts).
import { spawn, type ChildProcess } from 'node:child_process'
import net from 'node:net'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { httpStatus } from '../scripts/loopback.js'
import { repoRoot } from '../src/repo-root.js'
import { buildIfChanged } from './build.js'

const ROOT = repoRoot(import.meta.url)
const ROUTES_DIR = join(ROOT, 'routes.d')
const GATEWAY_PORT = Number(process.env.PORT ?? 8080)
const GATEWAY_HOST = process.env.HOST ?? '127.0.0.1'
const START_TIMEOUT_MS = 10_000
const STOP_TIMEOUT_MS = 10_000
// routes.d/me.yaml names this port in its jwksUrl and this URL as its issuer.
const ISSUER_PORT = 9004
const ISSUER = `http://127.0.0.1:${ISSUER_PORT}`

interface Service {
  name: string
  port: number
  host: string
  args: string[]
  env: Record<string, string>
  /** Path that answers 200 once it is up. */
  probe: string
  proc?: ChildProcess
  exited?: Promise<number | null>
}

const services: Service[] = [
  upstream('echo-a', 9001),
  upstream('echo-b', 9002),
  upstream('slow', 9003),
  {
    name: 'issuer',
    port: ISSUER_PORT,
    host: '127.0.0.1',
    args: [join(ROOT, 'dist', 'demo', 'issuer.js')],
    env: { PORT: String(ISSUER_PORT), HOST: '127.0.0.1', ISSUER },
    probe: '/.well-known/jwks.json'
  },
  {
    name: 'gateway',
    port: GATEWAY_PORT,
    host: GATEWAY_HOST,
    args: [join(ROOT, 'dist', 'src', 'cli.js'), 'start'],
    // Its output goes through a pipe to this terminal: readable lines unless LOG_FORMAT says otherwise.
    env: { ROUTES_DIR, PORT: String(GATEWAY_PORT), HOST: GATEWAY_HOST, LOG_FORMAT: process.env.LOG_FORMAT ?? (process.stdout.isTTY ? 'pretty' : 'json') },
    probe: '/ready'
  }
]

function upstream (name: string, port: number): Service {
  return {
    name,
    port,
    host: '127.0.0.1',
    args: [join(ROOT, 'dist', 'demo', 'upstream.js')],
    env: { NAME: name, PORT: String(port), HOST: '127.0.0.1' },
    probe: '/'
  }
}

/** Why the service's port cannot be used (busy, most often); undefined when it is free. */
async function portProblem (service: Service): Promise<string | undefined> {
  return await new Promise(resolve => {
    const probe = net.createServer()
    probe.once('error', (err: NodeJS.ErrnoException) => {
      resolve(err.code === 'EADDRINUSE'
        ? `port ${service.port} is busy (needed by ${service.name}); stop what is using it (e.g. \`lsof -i :${service.port}\`)` +
          (service.name === 'gateway' ? ' or pick another port: PORT=8081 npm run demo' : '')
        : `cannot use port ${service.port} for ${service.name}: ${err.message}`)
    })
    probe.listen(service.port, service.host, () => probe.close(() => resolve(undefined)))
  })
}

function launch (service: Service): void {
  const proc = spawn(process.execPath, service.args, {
    cwd: ROOT,
    env: { ...process.env, ...service.env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  service.proc = proc
  service.exited = new Promise(resolve => proc.once('exit', code => resolve(code)))
  const prefix = `[${service.name}]`.padEnd(10)
  for (const stream of [proc.stdout, proc.stderr]) {
    createInterface({ input: stream }).on('line', line => console.log(`${prefix} ${line}`))
  }
}

async function waitUntilUp (service: Service): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS
  let exitCode: number | null | undefined
  service.exited?.then(code => { exitCode = code }, () => {})
  while (Date.now() < deadline) {
    if (exitCode !== undefined) throw new Error(`${service.name} exited with code ${exitCode} while starting (see its output above)`)
    try {
      if (await httpStatus(service.port, service.probe) === 200) return
    } catch {}
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  throw new Error(`${service.name} did not answer on port ${service.port} within ${START_TIMEOUT_MS / 1000} s`)
}

let stopping: Promise<void> | undefined
function stopAll (signal: NodeJS.Signals): Promise<void> {
  stopping ??= (async () => {
    const running = services.filter(s => s.proc !== undefined && s.proc.exitCode === null && s.proc.signalCode === null)
    for (const s of running) s.proc?.kill(signal)
    const killer = setTimeout(() => {
      for (const s of running) s.proc?.kill('SIGKILL')
    }, STOP_TIMEOUT_MS)
    await Promise.all(running.map(s => s.exited))
    clearTimeout(killer)
  })()
  return stopping
}

function instructions (gatewayPid: number): string {
  const base = `localhost:${GATEWAY_PORT}`
  return `
Gatehouse is up on http://${base} (pid ${gatewayPid}), routes from ${ROUTES_DIR}
Upstreams: echo-a :9001, echo-b :9002 (/api/echo, and /api/me with a token), slow :9003 (/api/slow, 1 s per answer, maxConnections 2)
Token issuer (development only): ${ISSUER} (/.well-known/jwks.json, /token)

# Routing: /api/echo/hello goes to an echo service (its JSON shows which one answered)
curl -i ${base}/api/echo/hello

# Balancing: 10 requests spread over both echo targets
for i in $(seq 10); do curl -s ${base}/api/echo/hello | grep -o '"service":"[^"]*","port":[0-9]*'; done

# Saturation: 6 at once to /api/slow: 2 answer 200 after 1 s, the other 4 get 503 + Retry-After at once
for i in $(seq 6); do curl -s -o /dev/null -D - -w 'took %{time_total}s\\n' ${base}/api/slow | tr -d '\\r' | grep -iE '^HTTP|^retry-after|^took' | paste -sd' ' - & done; wait

# Authentication (routes.d/me.yaml): /api/me needs a token from the development issuer with scope orders:read
TOKEN=$(curl -s '${ISSUER}/token?sub=alice&scope=orders:read')

# No token: 401 with WWW-Authenticate
curl -i ${base}/api/me; echo

# With the token: 200, and the echo shows "x-user-id":"alice" (set by the gateway from the token's sub)
curl -i -H "Authorization: Bearer $TOKEN" ${base}/api/me; echo

# A token without orders:read: 403 (insufficient_scope)
curl -i -H "Authorization: Bearer $(curl -s '${ISSUER}/token?sub=bob&scope=profile')" ${base}/api/me; echo

# Rate limit per subject (5 per 10 s): 6 calls in a row as carol: 200 200 200 200 200 429
CAROL=$(curl -s '${ISSUER}/token?sub=carol&scope=orders:read')
for i in $(seq 6); do curl -s -o /dev/null -w '%{http_code} ' -H "Authorization: Bearer $CAROL" ${base}/api/me; done; echo
# ... while alice, another subject, still has her own budget: 200
curl -s -o /dev/null -w '%{http_code}\\n' -H "Authorization: Bearer $TOKEN" ${base}/api/me

# No route: 404 as JSON
curl -s ${base}/nope; echo

# Liveness and readiness
curl -s ${base}/health; echo
curl -s ${base}/ready; echo

# Metrics: each target's saturation (in-flight ÷ maxConnections) and the 429s of the rate limit above
curl -s ${base}/metrics | grep -E '^(upstream_connection_saturation_ratio|rate_limiter_rejected_total)'

# Reload: edit or add a file in routes.d/ (the gateway watches it), or
kill -USR1 ${gatewayPid}

Ctrl-C stops everything.
`
}

async function main (): Promise<void> {
  if (!Number.isInteger(GATEWAY_PORT) || GATEWAY_PORT <= 0 || GATEWAY_PORT > 65535) {
    throw new Error(`PORT must be a port number, got "${process.env.PORT}"`)
  }
  // Every busy port at once, before a build that would be wasted.
  const problems = (await Promise.all(services.map(portProblem))).filter(p => p !== undefined)
  if (problems.length > 0) throw new Error(problems.join('\ndemo: '))
  await buildIfChanged(ROOT)
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      console.log(`\n${signal}: stopping the gateway, the upstreams and the issuer...`)
      stopAll('SIGTERM').then(() => process.exit(0), () => process.exit(1))
    })
  }
  const upstreams = services.filter(s => s.name !== 'gateway')
  for (const s of upstreams) launch(s)
  await Promise.all(upstreams.map(waitUntilUp))
  const gateway = services.find(s => s.name === 'gateway') as Service
  launch(gateway)
  await waitUntilUp(gateway)
  console.log(instructions(gateway.proc?.pid ?? 0))
  // If one of them dies, say so and take the others down too.
  for (const s of services) {
    s.exited?.then(code => {
      if (stopping !== undefined) return
      console.error(`${s.name} exited unexpectedly (code ${code}); stopping the demo`)
      stopAll('SIGTERM').then(() => process.exit(1), () => process.exit(1))
    })
  }
}

main().catch(async (err: Error) => {
  console.error(`demo: ${err.message}`)
  await stopAll('SIGTERM')
  process.exit(1)
})
