// npm run demo: the ports are checked before anything is built (a busy port fails at once, naming
// it), and the build runs only when a source is newer than the last finished build.
import { strict as assert } from 'node:assert'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdir, stat, utimes, writeFile } from 'node:fs/promises'
import net, { type AddressInfo } from 'node:net'
import { join } from 'node:path'
import { test } from 'node:test'
import { BUILD_STAMP, buildReason } from '../demo/build.js'
import { childEnv, ROOT, tempDir } from './helpers.js'

test('a busy gateway port stops the demo before any build, and says which port and what to do', async t => {
  const busy = net.createServer().listen(0, '127.0.0.1')
  await once(busy, 'listening')
  t.after(() => busy.close())
  const port = (busy.address() as AddressInfo).port
  const stampBefore = (await stat(join(ROOT, BUILD_STAMP))).mtimeMs
  const proc = spawn(process.execPath, ['--import', 'tsx', 'demo/run.ts'], {
    cwd: ROOT, env: childEnv({ PORT: String(port) }), stdio: ['ignore', 'pipe', 'pipe'], timeout: 20_000
  })
  let out = ''
  proc.stdout.on('data', (c: Buffer) => { out += c.toString() })
  proc.stderr.on('data', (c: Buffer) => { out += c.toString() })
  const [code] = await once(proc, 'exit') as [number | null]
  assert.equal(code, 1, out)
  assert.match(out, new RegExp(`port ${port} is busy \\(needed by gateway\\).*PORT=8081 npm run demo`))
  assert.doesNotMatch(out, /demo: building|the build is current/, 'nothing built or checked before the ports')
  assert.equal((await stat(join(ROOT, BUILD_STAMP))).mtimeMs, stampBefore)
})

test('a build is needed when none finished, or when a source is newer than the last one; not otherwise', async t => {
  const root = await tempDir(t, {})
  await mkdir(join(root, 'src', 'config'), { recursive: true })
  await mkdir(join(root, 'dist'))
  await writeFile(join(root, 'src', 'config', 'env.ts'), '')
  await writeFile(join(root, 'tsconfig.json'), '{}')
  const at = async (path: string, seconds: number): Promise<void> => { await utimes(join(root, path), seconds, seconds) }
  await at('src/config/env.ts', 1000)
  await at('tsconfig.json', 1000)
  assert.equal(await buildReason(root), 'no finished build yet')
  await writeFile(join(root, BUILD_STAMP), '')
  await at(BUILD_STAMP, 2000)
  assert.equal(await buildReason(root), undefined)
  await at('src/config/env.ts', 3000)
  assert.equal(await buildReason(root), 'src/config/env.ts changed since the last build')
  await at('src/config/env.ts', 1000)
  await at('tsconfig.json', 3000)
  assert.equal(await buildReason(root), 'tsconfig.json changed since the last build')
})
