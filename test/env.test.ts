import { strict as assert } from 'node:assert'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { test } from 'node:test'
import { EnvSchema, loadEnv, type GatewayEnv } from '../src/config/env.js'
import { ConfigEnvError } from '../src/errors.js'
import { tracingConfigured } from '../src/tracing.js'
import { removeDir, ROOT, routeDir, startGateway } from './helpers.js'

const NO_DOTENV = '/nonexistent/.env'

function load (env: Record<string, string>): GatewayEnv {
  return loadEnv(env, NO_DOTENV)
}

/** The ConfigEnvError `env` is refused with (fails the test when it is accepted). */
function refused (env: Record<string, string>): InstanceType<typeof ConfigEnvError> {
  try {
    load(env)
  } catch (err) {
    assert.ok(err instanceof ConfigEnvError, `expected ConfigEnvError, got ${String(err)}`)
    assert.equal(err.code, 'GATEHOUSE_ERR_CONFIG_ENV')
    return err
  }
  assert.fail(`${JSON.stringify(env)} was accepted`)
}

/** Lines of the message after the `Invalid environment:` heading, one per problem. */
function problemLines (err: Error): string[] {
  const [heading, ...lines] = err.message.split('\n')
  assert.equal(heading, 'Invalid environment:')
  return lines
}

test('nothing set: documented defaults', () => {
  const env = load({})
  assert.equal(env.port, 8080)
  assert.equal(env.host, '0.0.0.0')
  assert.equal(env.routesDir, './routes.d')
  assert.equal(env.logLevel, 'info')
  assert.equal(env.trustProxy, false)
  assert.equal(env.shutdownTimeoutMs, 30_000)
  assert.equal(env.bodyLimit, 1024 * 1024)
  assert.equal(env.maxHeaderSize, 16 * 1024)
  assert.ok(Object.isFrozen(env))
})

test('empty variables count as unset: defaults apply', () => {
  const env = load({ PORT: '', LOG_LEVEL: '', SHUTDOWN_TIMEOUT: '' })
  assert.equal(env.port, 8080)
  assert.equal(env.logLevel, 'info')
  assert.equal(env.shutdownTimeoutMs, 30_000)
})

test('set values are used: PORT, HOST, ROUTES_DIR, LOG_LEVEL', () => {
  const env = load({ PORT: '9090', HOST: '127.0.0.1', ROUTES_DIR: '/etc/gatehouse/routes', LOG_LEVEL: 'debug' })
  assert.equal(env.port, 9090)
  assert.equal(env.host, '127.0.0.1')
  assert.equal(env.routesDir, '/etc/gatehouse/routes')
  assert.equal(env.logLevel, 'debug')
})

test('durations: 30000 is milliseconds, 30s and 1m are converted', () => {
  assert.equal(load({ SHUTDOWN_TIMEOUT: '30000' }).shutdownTimeoutMs, 30_000)
  assert.equal(load({ SHUTDOWN_TIMEOUT: '30s' }).shutdownTimeoutMs, 30_000)
  assert.equal(load({ SHUTDOWN_TIMEOUT: '1m' }).shutdownTimeoutMs, 60_000)
  assert.equal(load({ SHUTDOWN_TIMEOUT: '500ms' }).shutdownTimeoutMs, 500)
  assert.equal(load({ RELOAD_DEBOUNCE: '2s' }).reloadDebounceMs, 2000)
})

test('sizes: 1048576 is bytes, 512kb is converted', () => {
  assert.equal(load({ BODY_LIMIT: '1048576' }).bodyLimit, 1_048_576)
  assert.equal(load({ BODY_LIMIT: '512kb' }).bodyLimit, 512 * 1024)
  assert.equal(load({ MAX_HEADER_SIZE: '8kb' }).maxHeaderSize, 8 * 1024)
  assert.equal(load({ BODY_LIMIT: '2mb' }).bodyLimit, 2 * 1024 * 1024)
})

test('PORT=abc: refused, the message names PORT', () => {
  const lines = problemLines(refused({ PORT: 'abc' }))
  assert.equal(lines.length, 1)
  assert.match(lines[0] ?? '', /^PORT: /)
})

test('PORT=70000: refused as out of range, naming PORT', () => {
  const lines = problemLines(refused({ PORT: '70000' }))
  assert.equal(lines.length, 1)
  assert.match(lines[0] ?? '', /^PORT: .*65535/)
})

test('PORT=80.5 and SHUTDOWN_TIMEOUT=1.5: refused, not silently truncated to 80 and 1 ms', () => {
  assert.match(problemLines(refused({ PORT: '80.5' }))[0] ?? '', /^PORT: /)
  assert.deepEqual(problemLines(refused({ SHUTDOWN_TIMEOUT: '1.5' })), ['SHUTDOWN_TIMEOUT: must be a duration: milliseconds (30000) or a number with ms, s, m or h (500ms, 2s, 1m)'])
})

test('LOG_LEVEL=loud: refused, listing the allowed levels', () => {
  const lines = problemLines(refused({ LOG_LEVEL: 'loud' }))
  assert.deepEqual(lines, ['LOG_LEVEL: must be one of fatal, error, warn, info, debug, trace, silent'])
})

test('SHUTDOWN_TIMEOUT=soon: refused with the duration forms', () => {
  const lines = problemLines(refused({ SHUTDOWN_TIMEOUT: 'soon' }))
  assert.deepEqual(lines, ['SHUTDOWN_TIMEOUT: must be a duration: milliseconds (30000) or a number with ms, s, m or h (500ms, 2s, 1m)'])
})

test('BODY_LIMIT=huge: refused with the size forms', () => {
  const lines = problemLines(refused({ BODY_LIMIT: 'huge' }))
  assert.deepEqual(lines, ['BODY_LIMIT: must be a size: bytes (1048576) or a number with b, kb, mb or gb (512kb, 1mb)'])
})

test('TRUST_PROXY=true: refused, asking for a hop count or addresses', () => {
  const lines = problemLines(refused({ TRUST_PROXY: 'true' }))
  assert.equal(lines.length, 1)
  assert.match(lines[0] ?? '', /^TRUST_PROXY: .*hop count.*IPs\/CIDRs/)
})

test('TRUST_PROXY=10.0.0.0/8,127.0.0.1: accepted as a list of addresses', () => {
  assert.deepEqual(load({ TRUST_PROXY: '10.0.0.0/8,127.0.0.1' }).trustProxy, ['10.0.0.0/8', '127.0.0.1'])
  assert.deepEqual(load({ TRUST_PROXY: ' 10.0.0.0/8 , ::1 ' }).trustProxy, ['10.0.0.0/8', '::1'])
})

test('TRUST_PROXY=2: a hop count; false and 0 trust nobody', () => {
  assert.equal(load({ TRUST_PROXY: '2' }).trustProxy, 2)
  assert.equal(load({ TRUST_PROXY: 'false' }).trustProxy, false)
  assert.equal(load({ TRUST_PROXY: '0' }).trustProxy, false)
})

test('TRUST_PROXY=nonsense or a bad CIDR: refused, naming the entry', () => {
  assert.deepEqual(problemLines(refused({ TRUST_PROXY: 'nonsense' })), ['TRUST_PROXY: "nonsense" is not an IP address or CIDR'])
  assert.deepEqual(problemLines(refused({ TRUST_PROXY: '10.0.0.1,10.0.0.0/33' })), ['TRUST_PROXY: "10.0.0.0/33" is not an IP address or CIDR'])
})

test('REDIS_URL: one node, a Cluster (several seed nodes) or Sentinel (sentinels and master name), with credentials and TLS', () => {
  assert.deepEqual(load({ REDIS_URL: 'redis://:pw@10.0.0.5:6380/2' }).redis, { mode: 'single', url: 'redis://:pw@10.0.0.5:6380/2' })
  assert.deepEqual(load({ REDIS_URL: 'rediss+cluster://gw:s%40cret@redis-0:7000,redis-1,[::1]:7002' }).redis, {
    mode: 'cluster',
    nodes: [{ host: 'redis-0', port: 7000 }, { host: 'redis-1', port: 6379 }, { host: '::1', port: 7002 }],
    tls: true,
    username: 'gw',
    password: 's@cret'
  })
  assert.deepEqual(load({ REDIS_URL: 'redis+sentinel://:pw@s1:26379,s2/my%20master/3?sentinelPassword=spw' }).redis, {
    mode: 'sentinel',
    sentinels: [{ host: 's1', port: 26379 }, { host: 's2', port: 26379 }],
    name: 'my master',
    db: 3,
    tls: false,
    password: 'pw',
    sentinelPassword: 'spw'
  })
  assert.equal(load({}).redis, undefined)
  assert.equal(load({}).redisTimeoutMs, 50)
  assert.equal(load({ REDIS_TIMEOUT: '20ms' }).redisTimeoutMs, 20)
  assert.equal(load({}).redisKeyPrefix, 'gatehouse:rl:')
  assert.equal(load({ REDIS_KEY_PREFIX: 'staging:' }).redisKeyPrefix, 'staging:')
  assert.equal(load({ REDIS_KEY_PREFIX: '' }).redisKeyPrefix, 'gatehouse:rl:', 'empty is unset, as for every variable')
})

test('REDIS_URL wrong: refused with the forms, never echoing the password; REDIS_TIMEOUT=0 refused', () => {
  const cases: Array<[string, string]> = [
    ['http://redis:6379', 'must be redis://host:port, redis+cluster://host:port,host:port or redis+sentinel://host:port,host:port/master-name (rediss for TLS)'],
    ['redis://:hunter2@a:1,b:2', 'lists several hosts: use redis+cluster:// or redis+sentinel://'],
    ['redis+sentinel://:hunter2@s1:26379', 'redis+sentinel:// needs the master name as its path: redis+sentinel://host:26379/mymaster'],
    ['redis+sentinel://s1/m?password=hunter2', 'unknown parameter "password" (known: sentinelUsername, sentinelPassword)'],
    ['redis+cluster://:hunter2@a:99999', '"a:99999" is not host:port'],
    ['redis+cluster://a:7000/1', 'a Redis Cluster has only database 0: drop the path']
  ]
  for (const [url, message] of cases) {
    const lines = problemLines(refused({ REDIS_URL: url }))
    assert.deepEqual(lines, [`REDIS_URL: ${message}`], url)
    assert.ok(!lines[0]?.includes('hunter2'))
  }
  assert.deepEqual(problemLines(refused({ REDIS_TIMEOUT: '0ms' })), ['REDIS_TIMEOUT: must be more than 0'])
})

test('two wrong variables: both reported in one error', () => {
  const lines = problemLines(refused({ PORT: 'abc', SHUTDOWN_TIMEOUT: 'soon' }))
  assert.equal(lines.length, 2)
  assert.ok(lines.some(l => l.startsWith('PORT: ')), lines.join('\n'))
  assert.ok(lines.some(l => l.startsWith('SHUTDOWN_TIMEOUT: must be a duration')), lines.join('\n'))
})

test('five wrong variables: each is named once with what it expects', () => {
  const lines = problemLines(refused({ PORT: 'abc', LOG_LEVEL: 'loud', SHUTDOWN_TIMEOUT: 'soon', BODY_LIMIT: 'huge', TRUST_PROXY: 'true' }))
  assert.deepEqual(lines.map(l => l.slice(0, l.indexOf(':'))).sort(), ['BODY_LIMIT', 'LOG_LEVEL', 'PORT', 'SHUTDOWN_TIMEOUT', 'TRUST_PROXY'])
  assert.ok(lines.includes('LOG_LEVEL: must be one of fatal, error, warn, info, debug, trace, silent'), lines.join('\n'))
})

// `.env` is read by the real process (loadEnv only reads it for process.env itself). startGateway runs
// the gateway with its cwd in the route folder, so a `.env` there is the one it reads, and with none
// of the runner's gateway variables (helpers.childEnv). Node's process.loadEnvFile never overwrites
// a variable that is already set (Node 20 and 24 alike).
const BIG_HEADER = { 'x-filler': 'a'.repeat(2048) }

test('.env in the working directory is read at start: MAX_HEADER_SIZE=1kb there gives 431 to a 2 KB header', async t => {
  const dir = await routeDir()
  t.after(() => removeDir(dir))
  await writeFile(join(dir, '.env'), 'MAX_HEADER_SIZE=1kb\n')
  const gw = await startGateway(dir)
  t.after(() => gw.stop())

  const res = await fetch(`${gw.url}/anything`, { headers: BIG_HEADER })
  assert.equal(res.status, 431)
  const body = await res.json() as { code: string }
  assert.equal(body.code, 'GATEHOUSE_ERR_HEADERS_TOO_LARGE')
})

test('a variable set in the environment wins over .env: MAX_HEADER_SIZE=16kb lets the 2 KB header through', async t => {
  const dir = await routeDir()
  t.after(() => removeDir(dir))
  await writeFile(join(dir, '.env'), 'MAX_HEADER_SIZE=1kb\n')
  const gw = await startGateway(dir, { MAX_HEADER_SIZE: '16kb' })
  t.after(() => gw.stop())

  // No route files: the request passes the header check and gets the gateway's 404.
  const res = await fetch(`${gw.url}/anything`, { headers: BIG_HEADER })
  assert.equal(res.status, 404)
  const body = await res.json() as { code: string }
  assert.equal(body.code, 'GATEHOUSE_ERR_ROUTE_NOT_FOUND')
})

test('.env.example documents every variable and loads as it is', async () => {
  const text = await readFile(join(ROOT, '.env.example'), 'utf8')
  const documented = new Set([...text.matchAll(/^#? ?([A-Z][A-Z0-9_]+)=/gm)].map(m => m[1] as string))
  // OTEL_* are the OpenTelemetry SDK's own variables, not the gateway's schema.
  assert.deepEqual([...documented].filter(name => !name.startsWith('OTEL_')).sort(), Object.keys(EnvSchema.properties).sort())
  assert.ok(documented.has('OTEL_EXPORTER_OTLP_ENDPOINT'), 'how to switch tracing on')
  const values: Record<string, string> = {}
  for (const m of text.matchAll(/^([A-Z][A-Z0-9_]+)=(.*)$/gm)) values[m[1] as string] = m[2] as string
  assert.equal(tracingConfigured(values), false, 'the example leaves tracing off')
  const env = loadEnv(values, '/nonexistent/.env')
  assert.equal(env.port, 8080)
  assert.equal(env.shutdownTimeoutMs, 30_000)
})
