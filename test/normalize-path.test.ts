// normalizePath: what the route table matches is what is forwarded, so dot segments are
// resolved (also percent-encoded) and dangerous forms refused with 400 GATEHOUSE_ERR_BAD_PATH.
import { strict as assert } from 'node:assert'
import { test } from 'node:test'
import { normalizePath } from '../plugins/route-table/normalize-path.js'
import { BadPathError } from '../src/errors.js'

function assertBadPath (input: string, reason: RegExp): void {
  assert.throws(() => normalizePath(input), (err: unknown) => {
    assert.ok(err instanceof BadPathError, `${input}: expected BadPathError, got ${String(err)}`)
    assert.equal(err.statusCode, 400)
    assert.equal(err.code, 'GATEHOUSE_ERR_BAD_PATH')
    assert.match(err.message, /^Request path refused: /)
    assert.match(err.message, reason)
    return true
  }, `${input} should be refused`)
}

const unchanged = [
  '/',
  '/api/users',
  '/api/users/42',
  '/api/users/',
  '/a-b_c~d/e!f$g&h\'(i)*+,;=:@',
  '/api/%41%42',
  '/api/caf%C3%A9',
  '/api/a%2Fb',
  '/a/.../b',
  '/a/....',
  '/a/.hidden/file.txt',
  '/a/..b/c..',
  '/a/%2e%2e%2e/b',
  '/a/.%2e./b'
]

test('plain paths and paths without dot segments come back unchanged', () => {
  for (const input of unchanged) assert.equal(normalizePath(input), input, input)
})

const normalised: Array<[string, string]> = [
  ['/a/./b', '/a/b'],
  ['/./a', '/a'],
  ['/a/b/../c', '/a/c'],
  ['/a/b/c/../../d', '/a/d'],
  ['/a/%2e%2e/b', '/b'],
  ['/a/%2E%2E/b', '/b'],
  ['/a/%2E./b', '/b'],
  ['/a/.%2e/b', '/b'],
  ['/a/%2e/b', '/a/b'],
  ['/a/%2E/b', '/a/b'],
  ['//a///b', '/a/b'],
  ['//', '/'],
  ['/a//', '/a/'],
  ['/a/b/..', '/a/'],
  ['/a/b/%2e%2e', '/a/'],
  ['/a/b/.', '/a/b/'],
  ['/a/..', '/'],
  ['/a/../', '/'],
  ['/a/b/../../c/', '/c/'],
  ['/api/echo/a/../b', '/api/echo/b'],
  ['/api/echo/../../admin', '/admin'],
  ['/a/.../../b', '/a/b'],
  ['/a/./%2e/./b', '/a/b']
]

test('dot segments (plain or %2e in any case) are resolved and repeated slashes merged', () => {
  for (const [input, output] of normalised) assert.equal(normalizePath(input), output, input)
})

test('a `...` segment is an ordinary segment, neither dropped nor treated as ..', () => {
  assert.equal(normalizePath('/a/.../b'), '/a/.../b')
  assert.equal(normalizePath('/a/./.../b'), '/a/.../b')
  assert.equal(normalizePath('/.../..'), '/')
})

test('.. that would climb above the root: 400 GATEHOUSE_ERR_BAD_PATH', () => {
  assertBadPath('/..', /climbs above the root/)
  assertBadPath('/../a', /climbs above the root/)
  assertBadPath('/a/../..', /climbs above the root/)
  assertBadPath('/a/../../b', /climbs above the root/)
  assertBadPath('/%2e%2e', /climbs above the root/)
  assertBadPath('/a/%2E%2E/%2e./etc/passwd', /climbs above the root/)
  assertBadPath('/./..', /climbs above the root/)
})

test('an encoded slash is not decoded: `..%2f` stays one opaque segment', () => {
  // The segment is `..%2f`, not `..`, so nothing is removed and the prefix is kept.
  assert.equal(normalizePath('/a/..%2f'), '/a/..%2f')
  assert.equal(normalizePath('/a/..%2F'), '/a/..%2F')
  assert.equal(normalizePath('/a/..%2fb'), '/a/..%2fb')
  assert.equal(normalizePath('/api/echo/..%2f..%2fadmin'), '/api/echo/..%2f..%2fadmin')
})

test('a backslash anywhere: 400 GATEHOUSE_ERR_BAD_PATH', () => {
  assertBadPath('/a\\b', /backslash/)
  assertBadPath('/a/..\\b', /backslash/)
  assertBadPath('\\', /backslash/)
})

test('an encoded NUL (%00): 400 GATEHOUSE_ERR_BAD_PATH', () => {
  assertBadPath('/a%00', /NUL/)
  assertBadPath('/a/%00/b', /NUL/)
  assertBadPath('/a/b.txt%00.jpg', /NUL/)
})

test('malformed percent-encoding (%zz, %2, %2g, a lone %): 400 GATEHOUSE_ERR_BAD_PATH', () => {
  assertBadPath('/a/%zz', /malformed percent-encoding/)
  assertBadPath('/a/%2', /malformed percent-encoding/)
  assertBadPath('/a/%2g/b', /malformed percent-encoding/)
  assertBadPath('/a/%', /malformed percent-encoding/)
  assertBadPath('/a/%%41', /malformed percent-encoding/)
  assertBadPath('/a/%41/%g1', /malformed percent-encoding/)
})

test('normalising twice gives the same result as once', () => {
  for (const [input] of normalised) {
    const once = normalizePath(input)
    assert.equal(normalizePath(once), once, input)
  }
})
