// A supported Node installs cleanly: every package the lock file pins accepts the Node running the
// suite (CI runs it on Node 20 and Node 24), so `npm ci` prints no EBADENGINE warning, and every
// dependency with an install script has a recorded decision (allowScripts), so npm does not end
// with a list of skipped scripts to review.
import { strict as assert } from 'node:assert'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { test } from 'node:test'
import semver from 'semver'
import { ROOT } from './helpers.js'

interface LockedPackage { version?: string, engines?: { node?: string }, hasInstallScript?: boolean, optional?: boolean, os?: string[] }
interface Manifest { engines: { node: string }, allowScripts?: Record<string, boolean> }

async function json<T> (file: string): Promise<T> {
  return JSON.parse(await readFile(join(ROOT, file), 'utf8')) as T
}

test('every locked package accepts this Node, as the project says it does', async () => {
  const lock = await json<{ packages: Record<string, LockedPackage> }>('package-lock.json')
  const manifest = await json<Manifest>('package.json')
  assert.ok(semver.satisfies(process.version, manifest.engines.node), `package.json engines ${manifest.engines.node} excludes ${process.version}`)
  const refusing = Object.entries(lock.packages)
    .filter(([path, pkg]) => path !== '' && pkg.engines?.node !== undefined && !semver.satisfies(process.version, pkg.engines.node))
    .map(([path, pkg]) => `${path.replace(/^.*node_modules\//, '')}@${pkg.version ?? '?'} wants node ${pkg.engines?.node ?? ''}`)
  assert.deepEqual(refusing, [], `npm ci would warn EBADENGINE on ${process.version}`)
})

test('every dependency with an install script has a decision in allowScripts', async () => {
  const lock = await json<{ packages: Record<string, LockedPackage> }>('package-lock.json')
  const { allowScripts = {} } = await json<Manifest>('package.json')
  const undecided = Object.entries(lock.packages)
    .filter(([, pkg]) => pkg.hasInstallScript === true)
    .map(([path]) => path.replace(/^.*node_modules\//, ''))
    .filter(name => !(name in allowScripts))
  assert.deepEqual(undecided, [])
})
