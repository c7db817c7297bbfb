// Error codes are a public contract: clients and alerts key on them, and the README's error
// table is where operators look them up. Every constructor of src/errors.ts is checked here.
import { strict as assert } from 'node:assert'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { test } from 'node:test'
import * as errors from '../src/errors.js'
import { ROOT } from './helpers.js'

interface GatewayError extends Error {
  code: string
  statusCode: number | undefined
}

/** Export name → an instance of it (a @fastify/error constructor fills code and statusCode). */
function instances (): Array<[string, GatewayError]> {
  const found: Array<[string, GatewayError]> = []
  for (const [name, value] of Object.entries(errors)) {
    if (typeof value !== 'function') continue
    // Arguments only fill the message's %s/%d; code and statusCode do not depend on them.
    const Ctor = value as unknown as new (...args: unknown[]) => GatewayError
    found.push([name, new Ctor('x', 'y')])
  }
  return found
}

test('src/errors.ts exports error constructors', () => {
  // Guards the other tests: an empty list would let them all pass.
  assert.ok(instances().length >= 10, `only ${instances().length} constructors found`)
})

test('every error code starts with GATEHOUSE_ERR_ and the class is named ...Error', () => {
  for (const [name, err] of instances()) {
    assert.ok(err instanceof Error, `${name} does not build an Error`)
    assert.match(err.code, /^GATEHOUSE_ERR_[A-Z0-9_]+$/, `${name}: code ${err.code}`)
    assert.match(name, /Error$/, `${name}: error classes end in Error`)
  }
})

test('error codes are unique', () => {
  const seen = new Map<string, string>()
  for (const [name, err] of instances()) {
    const other = seen.get(err.code)
    assert.equal(other, undefined, `${name} and ${other ?? ''} share the code ${err.code}`)
    seen.set(err.code, name)
  }
})

test('every error has an HTTP status code (4xx or 5xx)', () => {
  for (const [name, err] of instances()) {
    assert.equal(typeof err.statusCode, 'number', `${name} (${err.code}) has no statusCode`)
    assert.ok((err.statusCode ?? 0) >= 400 && (err.statusCode ?? 0) <= 599, `${name}: statusCode ${err.statusCode}`)
  }
})

test('docs/errors.md lists every error code, and no code that does not exist', async () => {
  const readme = await readFile(join(ROOT, 'docs', 'errors.md'), 'utf8')
  const codes = new Set(instances().map(([, err]) => err.code))
  const missing = [...codes].filter(code => !new RegExp(`\\b${code}\\b`).test(readme))
  assert.deepEqual(missing, [], 'add these codes to the error table in docs/errors.md')
  const stale = [...new Set(readme.match(/\bGATEHOUSE_ERR_[A-Z0-9_]+/g) ?? [])].filter(code => !codes.has(code))
  assert.deepEqual(stale, [], 'docs/errors.md names codes that src/errors.ts does not define')
})
