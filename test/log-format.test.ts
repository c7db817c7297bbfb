// Readable logs in development: pretty lines (pino-pretty) when stdout is a terminal or when
// LOG_FORMAT=pretty, JSON lines otherwise; LOG_FORMAT=json keeps JSON on a terminal. The terminal
// is a real one: `script` runs the gateway on a pseudo-terminal.
import { strict as assert } from 'node:assert'
import { spawn } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { test, type TestContext } from 'node:test'
import { childEnv, CLI, routeDir, removeDir, routeFile, runCli, send, until, upstream } from './helpers.js'

// eslint-disable-next-line no-control-regex -- the colour codes a terminal gets are what is stripped
const ANSI = /\x1b\[[0-9;]*m/g

interface Output { text: () => string, port: number }

/** A gateway whose stdout is kept as text; on a pseudo-terminal when `tty`. */
async function gatewayOutput (t: TestContext, env: Record<string, string>, tty: boolean): Promise<Output> {
  const ok = await upstream(t)
  const dir = await routeDir({ 'ok.yaml': routeFile([ok.url], ['/ok']) })
  t.after(() => removeDir(dir))
  const gatewayEnv = childEnv({ PORT: '0', HOST: '127.0.0.1', ROUTES_DIR: dir, LOG_LEVEL: 'info', ...env })
  const proc = tty
    ? spawn('script', ['-qfec', `exec "${process.execPath}" "${CLI}" start`, '/dev/null'], { cwd: dir, env: gatewayEnv, stdio: ['pipe', 'pipe', 'pipe'] })
    : spawn(process.execPath, [CLI, 'start'], { cwd: dir, env: gatewayEnv, stdio: ['ignore', 'pipe', 'pipe'] })
  t.after(async () => {
    // script's child (the gateway) would take the terminal's hangup for a reload: stop it first.
    const children = tty ? await readFile(`/proc/${proc.pid}/task/${proc.pid}/children`, 'utf8').catch(() => '') : ''
    for (const pid of children.split(' ').filter(Boolean)) process.kill(Number(pid), 'SIGKILL')
    proc.kill('SIGKILL')
  })
  let out = ''
  proc.stdout.on('data', (c: Buffer) => { out += c.toString() })
  const listening = (): RegExpExecArray | null => /listening at http:\/\/127\.0\.0\.1:(\d+)/.exec(out.replace(ANSI, ''))
  await until('the gateway listens', () => listening() !== null, 10_000)
  return { text: () => out, port: Number(listening()?.[1]) }
}

test('LOG_FORMAT=pretty: one readable line per request, no JSON', async t => {
  const gw = await gatewayOutput(t, { LOG_FORMAT: 'pretty' }, false)
  assert.equal((await send(gw, '/ok', { headers: { 'x-request-id': 'pretty-1' } })).status, 200)
  assert.equal((await send(gw, '/nope', { headers: { 'x-request-id': 'pretty-2' } })).status, 404)
  await until('both access lines', () => gw.text().includes('pretty-2'))
  const lines = gw.text().split('\n')
  assert.ok(lines.every(line => !line.startsWith('{')), gw.text())
  assert.match(gw.text(), /^\[\d\d:\d\d:\d\d\.\d{3}\] INFO: pretty-1 request completed: GET \/ok 200 [\d.]+ ms \{"upstream":"ok"/m)
  assert.match(gw.text(), /INFO: pretty-2 request completed: GET \/nope 404 [\d.]+ ms \{"code":"GATEHOUSE_ERR_ROUTE_NOT_FOUND","error":"No route matches GET \/nope"\}$/m)
  assert.doesNotMatch(gw.text(), ANSI, 'no colour when stdout is not a terminal')
})

test('a terminal gets pretty, coloured lines by default; LOG_FORMAT=json keeps JSON there', async t => {
  const pretty = await gatewayOutput(t, {}, true)
  assert.equal((await send(pretty, '/ok', { headers: { 'x-request-id': 'tty-1' } })).status, 200)
  await until('the access line', () => pretty.text().includes('tty-1'))
  assert.match(pretty.text(), ANSI)
  assert.match(pretty.text().replace(ANSI, ''), /INFO: tty-1 request completed: GET \/ok 200/)

  const json = await gatewayOutput(t, { LOG_FORMAT: 'json' }, true)
  assert.equal((await send(json, '/ok', { headers: { 'x-request-id': 'tty-2' } })).status, 200)
  await until('the access line', () => json.text().includes('tty-2'))
  const line = json.text().split(/\r?\n/).find(l => l.includes('tty-2')) ?? ''
  assert.equal(JSON.parse(line).msg, 'request completed')
})

test('a LOG_FORMAT that is neither is refused at start, by name', async () => {
  const { code, stderr } = await runCli(['start'], { LOG_FORMAT: 'xml', ROUTES_DIR: '/nonexistent' })
  assert.equal(code, 1)
  assert.match(stderr, /LOG_FORMAT: must be json or pretty/)
})
