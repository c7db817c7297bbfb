// The published route-file JSON Schema (schema/route-file.schema.json) is what editors check
// route files against. It must be current, and it must accept and refuse what the gateway does.
import { strict as assert } from 'node:assert'
import { readdir, readFile } from 'node:fs/promises'
import { extname, join, resolve } from 'node:path'
import { test } from 'node:test'
import { Ajv, type ValidateFunction } from 'ajv'
import YAML from 'yaml'
import { routeFileSchemaText, SCHEMA_FILE } from '../scripts/write-schema.js'
import { parseRouteFile, ROUTE_FILE_EXTENSIONS, RouteFileError } from '../src/config/route-file/index.js'
import { ROOT, runCli } from './helpers.js'

const ROUTES_DIR = join(ROOT, 'routes.d')

async function publishedValidator (): Promise<ValidateFunction> {
  const schema = JSON.parse(await readFile(SCHEMA_FILE, 'utf8')) as Record<string, unknown>
  // strict: an unknown keyword or a malformed schema is a compile error, not silently ignored.
  const ajv = new Ajv({ strict: true, allErrors: true })
  // Custom messages for editors (yaml-language-server and VS Code show errorMessage); not a check.
  ajv.addKeyword('errorMessage')
  return ajv.compile(schema)
}

/** Accepted by the gateway's own parser? */
function gatewayAccepts (file: string, text: string): boolean {
  try {
    parseRouteFile(file, text)
    return true
  } catch (err) {
    if (err instanceof RouteFileError) return false
    throw err
  }
}

function parse (file: string, text: string): unknown {
  return file.endsWith('.json') ? JSON.parse(text) : YAML.parse(text)
}

test('schema/route-file.schema.json is what `npm run schema` generates from RouteFileSchema', async () => {
  const committed = await readFile(SCHEMA_FILE, 'utf8').catch(() => '(missing)')
  assert.equal(committed, routeFileSchemaText(),
    'schema/route-file.schema.json is stale: run `npm run schema` and commit the result')
})

test('the published schema is draft-07 with $id, title and a description on every field', async () => {
  const schema = JSON.parse(await readFile(SCHEMA_FILE, 'utf8')) as Record<string, unknown>
  assert.equal(schema.$schema, 'http://json-schema.org/draft-07/schema#')
  assert.equal(schema.$id, 'https://gatehouse.dev/schema/route-file.schema.json')
  assert.equal(schema.title, 'Gatehouse route file')
  const undocumented: string[] = []
  const walk = (node: Record<string, unknown>, at: string): void => {
    for (const [key, value] of Object.entries((node.properties ?? {}) as Record<string, Record<string, unknown>>)) {
      if (typeof value.description !== 'string' || value.description === '') undocumented.push(`${at}/${key}`)
      walk(value, `${at}/${key}`)
      const items = value.items as Record<string, unknown> | undefined
      if (items !== undefined) walk(items, `${at}/${key}/items`)
    }
  }
  walk(schema, '')
  assert.deepEqual(undocumented, [], 'every field needs a description: it is the editor hint')
})

test('every file in routes.d passes the published schema, `gatehouse check`, and points its editor at the schema', async () => {
  const validate = await publishedValidator()
  const files = (await readdir(ROUTES_DIR)).filter(f => ROUTE_FILE_EXTENSIONS.includes(extname(f))).sort()
  assert.ok(files.length >= 2, `expected the example route files in routes.d, found ${files.join(', ')}`)
  for (const file of files) {
    const text = await readFile(join(ROUTES_DIR, file), 'utf8')
    const valid = validate(parse(file, text))
    assert.equal(valid, true, `${file}: ${JSON.stringify(validate.errors)}`)
    assert.equal(gatewayAccepts(file, text), true, `${file}: refused by the gateway`)
    if (!file.endsWith('.json')) {
      const modeline = /^# yaml-language-server: \$schema=(\S+)$/m.exec(text)
      assert.ok(modeline?.[1] !== undefined, `${file}: no "# yaml-language-server: $schema=" line`)
      assert.equal(resolve(ROUTES_DIR, modeline[1]), SCHEMA_FILE, `${file}: the $schema line does not point at the published schema`)
    }
  }
  const check = await runCli(['check', ROUTES_DIR])
  assert.equal(check.code, 0, check.stderr)
  assert.match(check.stdout, new RegExp(`ok: ${files.length} route file\\(s\\)`))
})

test('a typo key (maxConn) is refused by the published schema and by the gateway', async () => {
  const validate = await publishedValidator()
  const text = 'targets:\n  - url: http://127.0.0.1:9001\n    maxConn: 10\nroutes:\n  - path: /api\n'
  assert.equal(validate(parse('typo.yaml', text)), false)
  assert.deepEqual(validate.errors?.map(e => [e.instancePath, e.keyword, e.params]),
    [['/targets/0', 'additionalProperties', { additionalProperty: 'maxConn' }]])
  assert.throws(() => parseRouteFile('typo.yaml', text), (err: unknown) => {
    assert.ok(err instanceof RouteFileError)
    assert.equal(err.problems.length, 1)
    assert.match(err.problems[0] ?? '', /^\/targets\/0\/maxConn: unknown key \(allowed: url, discover, maxConnections, weight, protocol, group, tls\)$/)
    return true
  })
})

// Each case is judged by both; they must agree, or an editor would flag files the gateway takes
// (or pass files it refuses). Cases stay within what a schema can say (no duplicate targets).
const CASES: Array<[string, string, boolean]> = [
  ['only the required keys (defaults fill the rest)', 'targets:\n  - url: http://10.0.0.5:9001\nroutes:\n  - path: /api\n', true],
  ['every key set', [
    '$schema: ../schema/route-file.schema.json', 'name: users', 'targets:',
    '  - url: https://users.internal:8443/', '    maxConnections: 10', '    weight: 0.5',
    'routes:', '  - path: /api/users', '    methods: [GET, POST]', '    hosts: [api.example.com]',
    "    rewritePrefix: ''", '    bodyLimit: 512kb', 'timeouts:', '  connect: 500ms', '  request: 60000', ''
  ].join('\n'), true],
  ['the root path', 'targets:\n  - url: http://a:1\nroutes:\n  - path: /\n', true],
  ['only one of the timeouts', 'targets:\n  - url: http://a:1\nroutes:\n  - path: /a\ntimeouts:\n  request: 2m\n', true],
  ['a target URL with a path', 'targets:\n  - url: http://a:1/base\nroutes:\n  - path: /a\n', false],
  ['a target URL without scheme', 'targets:\n  - url: a:1\nroutes:\n  - path: /a\n', false],
  ['no targets', 'targets: []\nroutes:\n  - path: /a\n', false],
  ['no routes key', 'targets:\n  - url: http://a:1\n', false],
  ['weight 0', 'targets:\n  - url: http://a:1\n    weight: 0\nroutes:\n  - path: /a\n', false],
  ['maxConnections 1.5', 'targets:\n  - url: http://a:1\n    maxConnections: 1.5\nroutes:\n  - path: /a\n', false],
  ['a path with a trailing slash', 'targets:\n  - url: http://a:1\nroutes:\n  - path: /a/\n', false],
  ['a path with a parameter', 'targets:\n  - url: http://a:1\nroutes:\n  - path: /a/:id\n', true],
  ['a path with a : inside a segment', 'targets:\n  - url: http://a:1\nroutes:\n  - path: /a/b:id\n', false],
  ['a path with a .. segment', 'targets:\n  - url: http://a:1\nroutes:\n  - path: /a/../b\n', false],
  ['a lowercase method', 'targets:\n  - url: http://a:1\nroutes:\n  - path: /a\n    methods: [get]\n', false],
  ['CONNECT', 'targets:\n  - url: http://a:1\nroutes:\n  - path: /a\n    methods: [CONNECT]\n', false],
  ['a host with a port', 'targets:\n  - url: http://a:1\nroutes:\n  - path: /a\n    hosts: [api.example.com:8080]\n', false],
  ['a duration in words', 'targets:\n  - url: http://a:1\nroutes:\n  - path: /a\ntimeouts:\n  connect: 2 seconds\n', false],
  ['a size in words', 'targets:\n  - url: http://a:1\nroutes:\n  - path: /a\n    bodyLimit: lots\n', false],
  ['an upper-case name', 'name: Users\ntargets:\n  - url: http://a:1\nroutes:\n  - path: /a\n', false],
  ['a typo at the top (route: instead of routes:)', 'targets:\n  - url: http://a:1\nroutes:\n  - path: /a\nroute: []\n', false],
  ['auth with a JWKS and every key, limited per subject', [
    'targets:', '  - url: http://a:1', 'routes:', '  - path: /orders', '    auth:', '      jwt:',
    '        jwksUrl: https://issuer.example.com/.well-known/jwks.json', '        issuer: https://issuer.example.com',
    '        audience: [orders-api, admin-api]', '        algorithms: [RS256, ES256]', '        clockTolerance: 30s',
    '        requiredScopes: [orders:write]', '        forwardClaims: { sub: x-user-id }', '        forwardToken: false',
    '    rateLimit: { max: 10, key: "claim:sub" }', ''
  ].join('\n'), true],
  ['an inline secret', 'targets:\n  - url: http://a:1\nroutes:\n  - path: /a\n    auth:\n      jwt: { secret: hunter2, issuer: i, audience: a }\n', false],
  ['alg none', 'targets:\n  - url: http://a:1\nroutes:\n  - path: /a\n    auth:\n      jwt: { jwksUrl: "https://i/j", issuer: i, audience: a, algorithms: [none] }\n', false],
  ['auth without an audience', 'targets:\n  - url: http://a:1\nroutes:\n  - path: /a\n    auth:\n      jwt: { jwksUrl: "https://i/j", issuer: i }\n', false],
  ['a typo in timeouts', 'targets:\n  - url: http://a:1\nroutes:\n  - path: /a\ntimeouts:\n  read: 1s\n', false],
  // tls cases that need no files: whatever names a file is judged by the gateway on the file (test/upstream-tls.test.ts).
  ['tls with a servername', 'targets:\n  - url: https://10.0.0.5:8443\n    tls: { servername: users.internal }\nroutes:\n  - path: /a\n', true],
  ['tls with verification turned off', 'targets:\n  - url: https://a:1\n    tls: { rejectUnauthorized: false }\nroutes:\n  - path: /a\n', false],
  ['tls with a relative ca path', 'targets:\n  - url: https://a:1\n    tls: { ca: certs/ca.pem }\nroutes:\n  - path: /a\n', false],
  ['tls with a cert and no key', 'targets:\n  - url: https://a:1\n    tls: { cert: /etc/gatehouse/client.pem }\nroutes:\n  - path: /a\n', false],
  ['tls with a servername and a port', 'targets:\n  - url: https://a:1\n    tls: { servername: "users.internal:8443" }\nroutes:\n  - path: /a\n', false]
]

test('the published schema accepts and refuses the same route files as the gateway', async () => {
  const validate = await publishedValidator()
  const disagreements: string[] = []
  for (const [name, text, expected] of CASES) {
    const gateway = gatewayAccepts('case.yaml', text)
    const editor = validate(parse('case.yaml', text))
    if (gateway !== expected || editor !== expected) {
      disagreements.push(`${name}: expected ${expected ? 'valid' : 'invalid'}, gateway says ${gateway}, schema says ${editor}`)
    }
  }
  assert.deepEqual(disagreements, [])
})
