// `npm run dev`: the gateway from its TypeScript sources under tsx watch, as a developer runs it.
// It starts, loads the demo's route files, answers, and restarts when a source file changes.
import { strict as assert } from 'node:assert'
import { spawn } from 'node:child_process'
import { readFile, writeFile } from 'node:fs/promises'
import { createInterface } from 'node:readline'
import { join } from 'node:path'
import { test } from 'node:test'
import { freePort } from '../scripts/loopback.js'
import { childEnv, ROOT, send, until, within } from './helpers.js'

test('npm run dev starts from the sources, serves the demo routes, and restarts on a source change', { timeout: 60_000 }, async t => {
  const port = await freePort()
  const dev = spawn('npm', ['run', '-s', 'dev'], { cwd: ROOT, env: childEnv({ PORT: String(port), HOST: '127.0.0.1', ROUTES_DIR: join(ROOT, 'routes.d') }), stdio: ['ignore', 'pipe', 'pipe'], detached: true })
  t.after(() => { try { process.kill(-(dev.pid as number), 'SIGKILL') } catch {} })
  let stderr = ''
  dev.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
  const lines: Array<Record<string, unknown>> = []
  const waiters: Array<() => void> = []
  createInterface({ input: dev.stdout }).on('line', text => {
    try { lines.push(JSON.parse(text) as Record<string, unknown>) } catch { return }
    for (const w of waiters.splice(0)) w()
  })
  const next = async (what: string, match: (l: Record<string, unknown>) => boolean, after = 0): Promise<Record<string, unknown>> => await within(30_000, `${what} (stderr: ${stderr})`, (async () => {
    for (;;) {
      const found = lines.slice(after).find(match)
      if (found !== undefined) return found
      await new Promise<void>(resolve => waiters.push(resolve))
    }
  })())
  const loaded = await next('the route table', l => l.msg === 'route table loaded')
  assert.deepEqual(loaded.files, ['echo.yaml', 'me.yaml', 'slow.yaml'])
  await next('listening', l => typeof l.msg === 'string' && l.msg.startsWith(`Server listening at http://127.0.0.1:${port}`))
  const gw = { url: `http://127.0.0.1:${port}`, port }
  assert.equal((await send(gw, '/ready')).status, 200)
  // A demo route is served by the gateway (its upstream is not running here: 502 from the gateway).
  const echo = await send(gw, '/api/echo')
  assert.equal(echo.json.code, 'GATEHOUSE_ERR_UPSTREAM_UNREACHABLE', echo.body)
  // A source file changes (its content: on Node 24 tsx ignores a new mtime alone): tsx restarts
  // the gateway, which listens again. The file is put back as it was.
  const seen = lines.length
  const source = join(ROOT, 'src', 'errors.ts')
  const original = await readFile(source, 'utf8')
  t.after(async () => { await writeFile(source, original) })
  // tsx arms its watcher a moment after the start: change the file until it notices (at most 5 times).
  const restarted = (): boolean => lines.slice(seen).some(l => typeof l.msg === 'string' && l.msg.startsWith('Server listening'))
  for (let i = 0; i < 5 && !restarted(); i++) {
    await writeFile(source, `${original}\n// changed by test/dev.test.ts (${i})\n`)
    for (let k = 0; k < 50 && !restarted(); k++) await new Promise(resolve => setTimeout(resolve, 100))
  }
  await next('listening again after the change', l => typeof l.msg === 'string' && l.msg.startsWith('Server listening'), seen)
  // A second write may have landed while tsx was restarting: it restarts once more, so the port can
  // be closed for a moment after the line. It must answer again.
  await until('/ready answers after the restart', async () => (await send(gw, '/ready').catch(() => ({ status: 0 }))).status === 200, 20_000, 100)
})
