// Every route-file example in the docs (the ```yaml blocks of README.md and docs/*.md) goes through
// the loader, so an example a reader copies is one the gateway accepts. An example that shows only
// some keys gets the least the loader needs around it (a target, a route); certificate paths are
// replaced by files made with openssl.
import { strict as assert } from 'node:assert'
import { execFile } from 'node:child_process'
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import YAML from 'yaml'
import { parseRouteFile } from '../src/config/route-file/index.js'
import { ROOT } from './helpers.js'

interface Example { file: string, line: number, text: string }

async function examples (): Promise<Example[]> {
  const files = ['README.md', ...(await readdir(join(ROOT, 'docs'))).filter(f => f.endsWith('.md')).map(f => `docs/${f}`)]
  const found: Example[] = []
  for (const file of files) {
    const lines = (await readFile(join(ROOT, file), 'utf8')).split('\n')
    for (let i = 0; i < lines.length; i++) {
      if (lines[i]?.trim() !== '```yaml') continue
      const start = i + 1
      while (i + 1 < lines.length && lines[i + 1]?.trim() !== '```') i++
      found.push({ file, line: start, text: lines.slice(start, i + 1).join('\n') })
      i++
    }
  }
  return found
}

/** A key pair and self-signed certificate: the stand-in for every PEM path of an example. */
async function pems (dir: string): Promise<{ cert: string, key: string }> {
  await new Promise<void>((resolve, reject) => {
    execFile('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'k.pem', '-out', 'c.pem', '-days', '2', '-subj', '/CN=docs example'],
      { cwd: dir, timeout: 20_000 }, (err, _stdout, stderr) => { if (err !== null) reject(new Error(`openssl: ${err.message}\n${stderr}`)); else resolve() })
  })
  return { cert: join(dir, 'c.pem'), key: join(dir, 'k.pem') }
}

test('every route-file example in the docs is accepted by the loader', async t => {
  const dir = await mkdtemp(join(tmpdir(), 'gatehouse-docs-'))
  t.after(async () => { await rm(dir, { recursive: true, force: true }) })
  const { cert, key } = await pems(dir)
  const all = await examples()
  assert.ok(all.length >= 5, `${all.length} examples found`)
  for (const ex of all) {
    const text = ex.text.replace(/\/etc\/gatehouse\/tls\/\S+\.key/g, key).replace(/\/etc\/gatehouse\/tls\/\S+\.pem/g, cert)
    const data = YAML.parse(text) as Record<string, unknown>
    data.targets ??= [{ url: 'http://127.0.0.1:9001' }]
    data.routes ??= [{ path: '/example' }]
    await t.test(`${ex.file}:${ex.line}`, () => {
      assert.doesNotThrow(() => parseRouteFile('example.yaml', YAML.stringify(data), { ...process.env, GATEHOUSE_EXAMPLE_SECRET: 'x'.repeat(32) }), `${ex.file}:${ex.line}`)
    })
  }
})
