// Mutation check of the rules that protect users: selection, breaker probes, retry eligibility,
// limiter admission, path normalisation, auth key rotation, a few header and framing rules, and
// the bounds on slow clients.
// Each mutation is a one-line bug put into a temporary copy of the build; the tests that guard
// its rule must then fail ("killed"). A mutation every test passes ("SURVIVED") is a rule no
// test guards. A mutation whose line is gone from the build fails the run too: update it here.
//
//   npm run mutations                      build once, then every mutation
//   npm run mutations -- --only a,b        only these mutations (ids: --list)
//   npm run mutations -- --list            the mutations, their lines and test runs
//   --no-build      use dist/ as it is        --keep          leave the temporary copy
//   --timeout <s>   bound of one test run (default 300 s; a run over it is killed with its children)
//
// A test counts as killing a mutation only when it passes on the unmutated copy (each test run is
// done once without any mutation first: a test that already fails kills nothing), and when the
// failing tests, run again, fail again with the mutation and pass without it (a timing-sensitive
// test on a loaded machine may fail once by chance). Runs are sequential: tests measure time.
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { cp, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { repoRoot } from '../src/repo-root.js'

type Rule = 'selection' | 'breaker probes' | 'retry eligibility' | 'limiter admission' | 'path normalisation' | 'auth' | 'forwarding headers' | 'request framing' | 'slow clients' | 'traffic policy' | 'tunnels' | 'grpc' | 'discovery and health'

/** One `node --test` run: a test file of test/, optionally only the tests whose names match. */
interface TestRun {
  /** Name in test/ without `.test.ts`. */
  file: string
  /** A --test-name-pattern (matching tests run with all their subtests). */
  pattern?: string
}

interface Mutation {
  id: string
  rule: Rule
  /** The source file the line is compiled from; its build output in dist/ is what is mutated. */
  source: string
  /** One line of the build output, as it is there without its indentation. */
  line: string
  /** What replaces it ('' deletes it). */
  replace: string
  /** The bug this stands for. */
  bug: string
  /** Runs in this order; the first that kills the mutation ends it. */
  tests: TestRun[]
}

const MUTATIONS: Mutation[] = [
  {
    id: 'select-busier',
    rule: 'selection',
    source: 'src/upstream/select.ts',
    line: 'return load(b) < load(a) ? b : a;',
    replace: 'return load(b) > load(a) ? b : a;',
    bug: 'of two admitting candidates, the MORE loaded one is picked',
    tests: [{ file: 'select' }, { file: 'saturation' }]
  },
  {
    id: 'select-ignores-admits',
    rule: 'selection',
    source: 'src/upstream/select.ts',
    line: 'return (exclude === undefined || !exclude.has(t)) && t.admits();',
    replace: 'return exclude === undefined || !exclude.has(t);',
    bug: 'admits() is not asked: full targets and open breakers are selected',
    tests: [{ file: 'select' }, { file: 'saturation' }]
  },
  {
    id: 'breaker-unlimited-probes',
    rule: 'breaker probes',
    source: 'src/upstream/breaker.ts',
    line: 'return this.probes < this.options.halfOpenProbes;',
    replace: 'return true;',
    bug: 'half-open lets every request through as a probe (halfOpenProbes ignored)',
    tests: [{ file: 'breaker' }, { file: 'resilience' }]
  },
  {
    id: 'breaker-failed-probe-stays',
    rule: 'breaker probes',
    source: 'src/upstream/breaker.ts',
    // eslint-disable-next-line no-template-curly-in-string -- a line of the compiled code
    line: 'this.open(`probe failed: ${cause}`);',
    replace: '',
    bug: 'a failed probe does not re-open the breaker (it stays half-open)',
    tests: [{ file: 'breaker' }, { file: 'resilience' }]
  },
  {
    id: 'breaker-open-admits',
    rule: 'breaker probes',
    source: 'src/upstream/breaker.ts',
    line: 'return this.now() >= this.openUntil;',
    replace: 'return true;',
    bug: 'an open breaker admits at once: no openFor wait before the probe',
    tests: [{ file: 'breaker' }, { file: 'resilience' }]
  },
  {
    id: 'retry-post-idempotent',
    rule: 'retry eligibility',
    source: 'src/upstream/retry.ts',
    line: "const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE']);",
    replace: "const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE', 'POST']);",
    bug: 'POST is treated as idempotent: retried after it may have reached the upstream',
    tests: [{ file: 'retry' }, { file: 'resilience' }]
  },
  {
    id: 'retry-streamed-body',
    rule: 'retry eligibility',
    source: 'plugins/proxy/upstream-call.ts',
    line: 'if (this.tries > retry.attempts || !this.replayable || this.cancelled !== undefined)',
    replace: 'if (this.tries > retry.attempts || this.cancelled !== undefined)',
    bug: 'replayable is ignored: a streamed body (over requestBuffer) is retried after it was consumed',
    tests: [{ file: 'resilience' }, { file: 'proxy' }]
  },
  {
    id: 'retry-budget-off-by-one',
    rule: 'retry eligibility',
    source: 'src/upstream/retry.ts',
    line: 'return this.retrying < Math.max(this.floor, this.share * this.active);',
    replace: 'return this.retrying <= Math.max(this.floor, this.share * this.active);',
    bug: 'the retry budget admits one retry more than its share (off by one)',
    tests: [{ file: 'retry' }, { file: 'resilience' }]
  },
  {
    id: 'limit-memory-log',
    rule: 'limiter admission',
    source: 'plugins/rate-limit/store/memory.ts',
    line: 'if (count < limit) {',
    replace: 'if (count <= limit) {',
    bug: 'memory sliding log admits when count == max (max + 1 per window)',
    tests: [{ file: 'rate-limit-store' }]
  },
  {
    id: 'limit-memory-window',
    rule: 'limiter admission',
    source: 'plugins/rate-limit/store/memory.ts',
    line: 'if (scaled < budget) {',
    replace: 'if (scaled <= budget) {',
    bug: 'memory sliding window admits when the estimate == max',
    tests: [{ file: 'rate-limit-store' }]
  },
  {
    id: 'limit-lua-log',
    rule: 'limiter admission',
    source: 'plugins/rate-limit/store/sliding-log.lua',
    line: 'if count < limit then',
    replace: 'if count <= limit then',
    bug: 'Redis sliding log admits when count == max (max + 1 per window)',
    tests: [{ file: 'rate-limit-store' }]
  },
  {
    id: 'limit-lua-window',
    rule: 'limiter admission',
    source: 'plugins/rate-limit/store/sliding-window.lua',
    line: 'if scaled < budget then',
    replace: 'if scaled <= budget then',
    bug: 'Redis sliding window admits when the estimate == max',
    tests: [{ file: 'rate-limit-store' }]
  },
  {
    id: 'limit-plugin-refusal',
    rule: 'limiter admission',
    source: 'plugins/rate-limit/index.ts',
    line: 'callback(null, d.allowed ? { current: max - d.remaining, ttl: d.resetMs } : { current: max + 1, ttl: d.retryAfterMs });',
    replace: 'callback(null, d.allowed ? { current: max - d.remaining, ttl: d.resetMs } : { current: max, ttl: d.retryAfterMs });',
    bug: 'a refused decision reaches @fastify/rate-limit as current == max, which it admits',
    tests: [{ file: 'rate-limit', pattern: '^(memory store|key header|the window slides)' }]
  },
  {
    id: 'path-dotdot-kept',
    rule: 'path normalisation',
    source: 'plugins/route-table/normalize-path.ts',
    line: 'else if (dots === 2) {',
    replace: 'else if (dots === 1) {',
    bug: '`..` is not resolved: it stays an ordinary segment and is forwarded',
    tests: [{ file: 'normalize-path' }, { file: 'proxy' }]
  },
  {
    id: 'path-encoded-dots',
    rule: 'path normalisation',
    source: 'plugins/route-table/normalize-path.ts',
    line: "const s = segment.toLowerCase().replaceAll('%2e', '.');",
    replace: 'const s = segment.toLowerCase();',
    bug: '%2e forms of . and .. are not recognised as dot segments',
    tests: [{ file: 'normalize-path' }, { file: 'proxy' }]
  },
  {
    id: 'auth-cache-key-version',
    rule: 'auth',
    source: 'plugins/auth/verifier.ts',
    line: 'if (known.keysVersion === this.#keys.version() && now >= known.notBeforeMs - tolerance && now <= known.expiresMs + tolerance)',
    replace: 'if (now >= known.notBeforeMs - tolerance && now <= known.expiresMs + tolerance)',
    bug: 'the verified-token cache ignores the key-set version: a token of a rotated-out key stays valid',
    tests: [{ file: 'auth' }, { file: 'jwks' }]
  },
  {
    id: 'auth-any-scope',
    rule: 'auth',
    source: 'plugins/auth/verifier.ts',
    line: 'if (!verified.scopes.has(scope))',
    replace: 'if (verified.scopes.size === 0)',
    bug: 'any scope satisfies requiredScopes (only a token with no scope at all is refused)',
    tests: [{ file: 'auth' }]
  },
  {
    id: 'auth-identity-case',
    rule: 'auth',
    source: 'plugins/proxy/headers.ts',
    line: 'if (identity !== undefined && overridden(identity, name))',
    replace: 'if (identity !== undefined && overridden(identity, original))',
    bug: 'a spoofed identity header is dropped only when the client spells it in lower case',
    tests: [{ file: 'auth' }, { file: 'proxy' }]
  },
  {
    id: 'xff-untrusted-appended',
    rule: 'forwarding headers',
    source: 'plugins/proxy/headers.ts',
    line: "out.push('x-forwarded-for', peer, 'x-forwarded-proto', proto);",
    // eslint-disable-next-line no-template-curly-in-string -- a line of the compiled code
    replace: "out.push('x-forwarded-for', headers['x-forwarded-for'] === undefined ? peer : `${headers['x-forwarded-for']}, ${peer}`, 'x-forwarded-proto', proto);",
    bug: 'an untrusted peer\'s X-Forwarded-For is appended to instead of replaced',
    tests: [{ file: 'proxy' }, { file: 'edge', pattern: '^a client cannot make Connection' }]
  },
  {
    id: 'underscore-prefix-only',
    rule: 'forwarding headers',
    source: 'plugins/proxy/headers.ts',
    line: "if (!rules.allowUnderscores && name.includes('_'))",
    replace: "if (!rules.allowUnderscores && name.startsWith('_'))",
    bug: 'a header name with an underscore inside (X_User_Id, Transfer_Encoding) reaches the upstream',
    tests: [{ file: 'edge', pattern: '^header names with an underscore' }]
  },
  {
    id: 'host-userinfo-ignored',
    rule: 'request framing',
    source: 'plugins/request-guard/index.ts',
    line: 'if (hosts === 1 && !validHost(raw.headers.host)) {',
    replace: "if (hosts === 1 && !validHost(raw.headers.host.split('@').pop())) {",
    bug: 'a Host with userinfo (a@evil.example) passes into X-Forwarded-Host',
    tests: [{ file: 'edge', pattern: '^framing' }]
  },
  {
    id: 'guard-te-contains-chunked',
    rule: 'request framing',
    source: 'plugins/request-guard/index.ts',
    line: "if (te.toLowerCase() !== 'chunked') {",
    replace: "if (!te.toLowerCase().includes('chunked')) {",
    bug: 'any Transfer-Encoding that mentions chunked passes (gzip, chunked)',
    tests: [{ file: 'edge', pattern: '^framing' }, { file: 'fuzz' }]
  },
  {
    id: 'guard-two-hosts',
    rule: 'request framing',
    source: 'plugins/request-guard/index.ts',
    line: 'if (hosts > 1 || (hosts === 0 && raw.httpVersionMinor === 1)) {',
    replace: 'if (hosts === 0 && raw.httpVersionMinor === 1) {',
    bug: 'a request with two Host headers is forwarded',
    tests: [{ file: 'edge', pattern: '^framing' }, { file: 'fuzz' }]
  },
  {
    id: 'read-ahead-unbounded',
    rule: 'slow clients',
    source: 'plugins/proxy/upstream-call.ts',
    line: 'if (this.readAhead + chunk.length <= limit && memory.take(chunk.length)) {',
    replace: 'if (memory.take(chunk.length) || true) {',
    bug: 'a response is read ahead of a slow client whatever its size and the memory left',
    tests: [{ file: 'slow-clients', pattern: '^(slow read past|read-ahead has bounds)' }]
  },
  {
    id: 'rate-since-behind',
    rule: 'slow clients',
    source: 'plugins/client-rate/index.ts',
    line: 'while (now - samples[1].at >= this.graceMs && samples.length > 2)',
    replace: 'while (false)',
    bug: 'the read rate is averaged since the client fell behind: a burst at first buys a silent reader minutes',
    tests: [{ file: 'slow-clients', pattern: '^slow read' }]
  },
  {
    id: 'cors-any-origin',
    rule: 'traffic policy',
    source: 'src/config/route-file/cors.ts',
    line: 'if (!this.allows(origin))',
    replace: 'if (false)',
    bug: 'any origin gets Access-Control-Allow-Origin: pages of any site can read the answers',
    tests: [{ file: 'cors', pattern: '^origins' }]
  },
  {
    id: 'header-rules-owned',
    rule: 'traffic policy',
    source: 'src/config/route-file/header-rules.ts',
    line: 'if (why !== undefined) {',
    replace: 'if (false) {',
    bug: 'header rules may set or remove the headers the gateway owns (host, x-forwarded-for, the claim headers of auth)',
    tests: [{ file: 'header-rules', pattern: '^rules on headers' }]
  },
  {
    id: 'pin-falls-back',
    rule: 'traffic policy',
    source: 'plugins/route-table/split.ts',
    line: 'pinned: new Map(order.map(g => [g, Object.freeze([pools.get(g)])])),',
    replace: 'pinned: new Map(order.map(g => [g, inOrder(g)])),',
    bug: 'a pinned request whose group admits nothing goes to another group instead of 503',
    tests: [{ file: 'split', pattern: '^retries stay' }]
  },
  {
    id: 'tunnel-unbounded',
    rule: 'tunnels',
    source: 'plugins/websocket/tunnel.ts',
    line: 'upstream.pipe(client);',
    replace: "upstream.on('data', chunk => client.write(chunk));",
    bug: 'a WebSocket client that stops reading makes the gateway hold everything its upstream sends',
    tests: [{ file: 'websocket', pattern: '^backpressure' }]
  },
  {
    id: 'upgrade-any-route',
    rule: 'tunnels',
    source: 'plugins/proxy/upgrade-call.ts',
    line: 'if (!route.websocket)',
    replace: 'if (false)',
    bug: 'a WebSocket upgrade is tunnelled on a route that never opted in',
    tests: [{ file: 'websocket', pattern: '^refusals' }]
  },
  {
    id: 'grpc-trailers-dropped',
    rule: 'grpc',
    source: 'plugins/proxy/grpc-call.ts',
    line: 'res.addTrailers(copy);',
    replace: '',
    bug: 'a gRPC call\'s trailers (its status) never reach the client',
    tests: [{ file: 'grpc', pattern: '^unary' }]
  },
  {
    id: 'grpc-trailers-only-split',
    rule: 'grpc',
    source: 'plugins/proxy/grpc-call.ts',
    line: "if (headers.some((h, i) => i % 2 === 0 && h.toLowerCase() === 'grpc-status')) {",
    replace: 'if (false) {',
    bug: 'an upstream\'s status-only answer (NOT_FOUND) is written as headers then an empty end, which clients read as a broken call',
    tests: [{ file: 'grpc', pattern: '^statuses' }]
  },
  {
    id: 'health-ignored',
    rule: 'discovery and health',
    source: 'src/upstream/target.ts',
    line: 'return !this.ejected && this.inFlight < this.maxConnections && this.breaker.admits();',
    replace: 'return this.inFlight < this.maxConnections && this.breaker.admits();',
    bug: 'a target failing its health checks still gets requests',
    tests: [{ file: 'health-check', pattern: '^a target whose' }]
  },
  {
    id: 'probe-closes-breaker',
    rule: 'discovery and health',
    source: 'src/upstream/breaker.ts',
    line: "this.transition('half-open', 'health check passed');",
    replace: "this.transition('closed', 'health check passed');",
    bug: 'a passing probe closes an open breaker: a target whose /healthz passes while its real paths fail gets full traffic back',
    tests: [{ file: 'health-check', pattern: '^an open breaker' }]
  },
  {
    id: 'panic-ignored',
    rule: 'discovery and health',
    source: 'src/upstream/health-check.ts',
    line: 't.ejected = t.unhealthy && !panic;',
    replace: 't.ejected = t.unhealthy;',
    bug: 'when every target fails its probes, panic: open still answers 503',
    tests: [{ file: 'health-check', pattern: '^every target unhealthy' }]
  },
  {
    id: 'dns-clear-ignored',
    rule: 'discovery and health',
    source: 'src/upstream/discovery.ts',
    line: "const clear = NO_ADDRESSES.has(code) && this.config.onEmpty === 'clear' && this.addresses.length > 0;",
    replace: 'const clear = false;',
    bug: 'onEmpty: clear keeps serving addresses of a name that no longer exists',
    tests: [{ file: 'discovery', pattern: '^NXDOMAIN keeps' }]
  },
  {
    id: 'dns-host-is-ip',
    rule: 'discovery and health',
    source: 'plugins/route-table/route-table.ts',
    line: 'host: a.port === defaultPort ? name : `$' + '{name}:$' + '{a.port}`,', // the build's template literal, as text
    replace: 'host: undefined,',
    bug: 'a discovered target is sent its IP as Host instead of the DNS name',
    tests: [{ file: 'discovery', pattern: '^A records' }]
  }
]

/** What the tests read besides dist/ (paths from the repository root; missing ones are skipped). */
const COPIED = ['dist', 'package.json', 'routes.d', 'fuzz', 'schema', 'deploy', 'plugins/rate-limit/store', 'README.md', 'docs', '.env.example', 'Dockerfile', '.dockerignore', 'docker-compose.yml']

// ---- running children ------------------------------------------------------------------------

/** Process group of the test run in progress, killed on Ctrl-C. */
let running: number | undefined

function killGroup (pid: number | undefined): void {
  if (pid === undefined) return
  try {
    process.kill(-pid, 'SIGKILL')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err
  }
}

interface Exit { code: number | null, output: string, timedOut: boolean, ms: number }

/**
 * Runs a command in a process group of its own, killed (with every process it started) after
 * `timeoutMs`, and once it exits, so nothing it left behind outlives it.
 */
async function run (command: string, args: string[], cwd: string, timeoutMs: number, echo = false): Promise<Exit> {
  const began = performance.now()
  const env = { ...process.env }
  delete env.NODE_TEST_CONTEXT
  const child = spawn(command, args, { cwd, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
  running = child.pid
  const chunks: Buffer[] = []
  const collect = (out: NodeJS.WriteStream) => (c: Buffer): void => {
    chunks.push(c)
    if (echo) out.write(c)
  }
  child.stdout.on('data', collect(process.stdout))
  child.stderr.on('data', collect(process.stderr))
  let timedOut = false
  const timer = setTimeout(() => { timedOut = true; killGroup(child.pid) }, timeoutMs)
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject)
    child.once('exit', resolve)
  }).finally(() => clearTimeout(timer))
  killGroup(child.pid)
  running = undefined
  // Output still buffered in the pipes; a process that escaped the group must not hold us.
  const open = [child.stdout, child.stderr].filter(stream => stream.readable)
  if (open.length > 0) {
    await Promise.race([
      Promise.all(open.map(stream => new Promise(resolve => stream.once('close', resolve)))),
      new Promise(resolve => setTimeout(resolve, 5000).unref())
    ])
    for (const stream of open) stream.destroy()
  }
  return { code, output: Buffer.concat(chunks).toString(), timedOut, ms: performance.now() - began }
}

// ---- test results --------------------------------------------------------------------------

interface Outcome {
  passed: boolean
  /** The top-level test it belongs to (itself when it is one), as --test-name-pattern matches it. */
  top: string
  /** The first lines of a failure's error, joined by ' | '. */
  error?: string
}

interface TestResult extends Exit {
  /** By full test name (parents joined by ' > '); skipped and todo tests are left out. */
  outcomes: Map<string, Outcome>
}

const RESULT = /^( *)(not ok|ok) \d+ - (.*?)(?: # (?:SKIP|TODO)\b.*)?$/
const DIRECTIVE = / # (?:SKIP|TODO)\b/

/** Outcomes of a TAP stream of node --test (4 spaces of indentation per subtest level). */
function parseTap (tap: string): Map<string, Outcome> {
  const outcomes = new Map<string, Outcome>()
  const names: string[] = []
  let failed: Outcome | undefined
  const lines = tap.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] as string
    const subtest = /^( *)# Subtest: (.*)$/.exec(line)
    if (subtest !== null) {
      const level = (subtest[1] as string).length / 4
      names.length = level
      names[level] = subtest[2] as string
      failed = undefined
      continue
    }
    const error = /^( +)error: (.*)$/.exec(line)
    if (error !== null && failed !== undefined && failed.error === undefined) {
      // A block scalar (|-) is on the lines below, indented deeper; a plain or quoted one on this line.
      const value = error[2] as string
      if (/^[|>]-?$/.test(value)) {
        const block: string[] = []
        const indent = (error[1] as string).length
        for (let j = i + 1; j < lines.length && block.length < 4; j++) {
          const next = lines[j] as string
          if (next.trim() !== '' && next.length - next.trimStart().length <= indent) break
          if (next.trim() !== '') block.push(next.trim())
        }
        failed.error = block.join(' | ')
      } else {
        failed.error = value.replace(/^'(.*)'$/, '$1')
      }
      continue
    }
    const result = RESULT.exec(line)
    if (result === null) continue
    failed = undefined
    if (DIRECTIVE.test(line)) continue
    const level = (result[1] as string).length / 4
    const path = [...names.slice(0, level), result[3] as string]
    const outcome: Outcome = { passed: result[2] === 'ok', top: path[0] as string }
    outcomes.set(path.join(' > '), outcome)
    if (!outcome.passed) failed = outcome
  }
  return outcomes
}

function describe (t: TestRun): string {
  return t.pattern === undefined ? t.file : `${t.file} /${t.pattern}/`
}

/** A --test-name-pattern matching exactly these top-level tests (TAP escapes # and \\ in names). */
function exactly (tops: string[]): string {
  const names = tops.map(n => n.replaceAll('\\#', '#').replaceAll('\\\\', '\\').replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))
  return `^(?:${names.join('|')})$`
}

async function runTests (dir: string, t: TestRun, timeoutMs: number): Promise<TestResult> {
  const args = ['--test', '--test-reporter=tap']
  if (t.pattern !== undefined) args.push(`--test-name-pattern=${t.pattern}`)
  args.push(join('dist', 'test', `${t.file}.test.js`))
  const exit = await run(process.execPath, args, dir, timeoutMs)
  return { ...exit, outcomes: parseTap(exit.output) }
}

// ---- mutating the copy -----------------------------------------------------------------------

interface Applied {
  /** Files of the copy it changes (the compiled file, and a Lua script's source too), with both texts. */
  files: Array<{ path: string, original: string, mutated: string }>
}

/** The compiled file of a source, below dist/. */
function compiled (source: string): string {
  return join('dist', source.replace(/\.ts$/, '.js'))
}

/** The mutated texts, or an error saying why the mutation no longer applies. */
async function prepare (dir: string, m: Mutation): Promise<Applied> {
  const target = compiled(m.source)
  const path = join(dir, target)
  if (!existsSync(path)) throw new Error(`mutation ${m.id} no longer applies: ${target} not found (was ${m.source} moved?)`)
  const original = await readFile(path, 'utf8')
  const lines = original.split('\n')
  const at = lines.flatMap((l, i) => l.trim() === m.line ? [i] : [])
  if (at.length === 0) throw new Error(`mutation ${m.id} no longer applies: line not found in ${target}: ${m.line}`)
  if (at.length > 1) throw new Error(`mutation ${m.id} no longer applies: line found ${at.length} times in ${target} (lines ${at.map(i => i + 1).join(', ')}): ${m.line}`)
  const i = at[0] as number
  const indent = /^\s*/.exec(lines[i] as string)?.[0] ?? ''
  lines[i] = m.replace === '' ? '' : indent + m.replace
  const mutated = lines.join('\n')
  const files = [{ path, original, mutated }]
  // The build copies Lua scripts; a test reads the source ones too (to hash them): keep both the same.
  if (m.source.endsWith('.lua')) {
    const sourcePath = join(dir, m.source)
    const sourceText = await readFile(sourcePath, 'utf8')
    if (sourceText !== original) throw new Error(`mutation ${m.id}: ${target} differs from ${m.source}; rebuild`)
    files.push({ path: sourcePath, original: sourceText, mutated })
  }
  return { files }
}

async function apply (a: Applied): Promise<void> {
  for (const f of a.files) await writeFile(f.path, f.mutated)
}

async function restore (a: Applied): Promise<void> {
  for (const f of a.files) await writeFile(f.path, f.original)
}

// ---- the check -------------------------------------------------------------------------------

type Verdict = 'killed' | 'SURVIVED' | 'NO LONGER APPLIES'

interface Row {
  m: Mutation
  verdict: Verdict
  /** Killing test, or why it did not run, or what ran. */
  note: string
  ms: number
}

function seconds (ms: number): string {
  const s = ms / 1000
  return s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${String(Math.round(s % 60)).padStart(2, '0')} s`
}

function shown (replace: string): string {
  return replace === '' ? '(line deleted)' : replace
}

function clip (text: string, width: number): string {
  return text.length <= width ? text : text.slice(0, width - 1) + '…'
}

function parseArgs (argv: string[]): { only: Set<string> | undefined, list: boolean, build: boolean, keep: boolean, timeoutMs: number } {
  const out = { only: undefined as Set<string> | undefined, list: false, build: true, keep: false, timeoutMs: 300_000 }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string
    if (arg === '--list') out.list = true
    else if (arg === '--no-build') out.build = false
    else if (arg === '--keep') out.keep = true
    else if (arg === '--only') out.only = new Set((argv[++i] ?? '').split(',').filter(s => s !== ''))
    else if (arg === '--timeout') out.timeoutMs = Number(argv[++i]) * 1000
    else throw new Error(`mutations: unknown argument ${arg} (see the head of scripts/mutations.ts)`)
  }
  if (!(out.timeoutMs > 0)) throw new Error('mutations: --timeout takes seconds > 0')
  if (out.only !== undefined) {
    const unknown = [...out.only].filter(id => !MUTATIONS.some(m => m.id === id))
    if (unknown.length > 0) throw new Error(`mutations: no mutation ${unknown.join(', ')} (ids: ${MUTATIONS.map(m => m.id).join(', ')})`)
  }
  return out
}

async function main (): Promise<number> {
  const opts = parseArgs(process.argv.slice(2))
  const selected = MUTATIONS.filter(m => opts.only === undefined || opts.only.has(m.id))
  if (opts.list) {
    for (const m of selected) {
      console.log(`${m.id} (${m.rule}, ${m.source}): ${m.bug}\n  - ${m.line}\n  + ${shown(m.replace)}\n  tests: ${m.tests.map(describe).join(', ')}`)
    }
    return 0
  }
  const began = performance.now()
  const root = repoRoot(import.meta.url)

  if (opts.build) {
    console.log('mutations: npm run build')
    const built = await run('npm', ['run', 'build'], root, Math.max(opts.timeoutMs, 900_000), true)
    if (built.code !== 0) {
      console.error(`mutations: npm run build failed (exit ${built.code}${built.timedOut ? ', timed out' : ''})`)
      return 1
    }
  }
  if (!existsSync(join(root, 'dist', 'test'))) {
    console.error('mutations: no dist/test: build first (npm run build)')
    return 1
  }

  const dir = await mkdtemp(join(tmpdir(), 'gatehouse-mutations-'))
  const cleanup = async (): Promise<void> => {
    killGroup(running)
    if (!opts.keep) await rm(dir, { recursive: true, force: true })
  }
  const interrupted = (): void => {
    console.error('\nmutations: interrupted')
    cleanup().finally(() => process.exit(130))
  }
  process.once('SIGINT', interrupted)
  process.once('SIGTERM', interrupted)

  const rows: Row[] = []
  let baselineMs = 0
  try {
    for (const path of COPIED) {
      if (existsSync(join(root, path))) await cp(join(root, path), join(dir, path), { recursive: true })
    }
    await symlink(join(root, 'node_modules'), join(dir, 'node_modules'), 'dir')
    console.log(`mutations: the build is copied to ${dir}`)

    // Every mutation must still apply, and give JavaScript that parses, before any test runs.
    const prepared = new Map<string, Applied>()
    for (const m of selected) {
      try {
        const a = await prepare(dir, m)
        if (m.source.endsWith('.ts')) {
          await apply(a)
          const check = await run(process.execPath, ['--check', a.files[0]!.path], dir, 30_000).finally(() => restore(a))
          if (check.code !== 0) throw new Error(`mutation ${m.id} no longer applies: the mutated ${compiled(m.source)} does not parse:\n${check.output}`)
        }
        prepared.set(m.id, a)
      } catch (err) {
        console.error(`\n*** ${(err as Error).message}\n`)
        rows.push({ m, verdict: 'NO LONGER APPLIES', note: clip((err as Error).message.replace(/^mutation \S+ no longer applies: /, ''), 70), ms: 0 })
      }
    }

    // Each test run once without a mutation: what fails there kills nothing.
    const baselines = new Map<string, TestResult>()
    const baseline = async (t: TestRun): Promise<TestResult> => {
      const key = describe(t)
      let b = baselines.get(key)
      if (b !== undefined) return b
      process.stdout.write(`  without mutation: ${key} … `)
      b = await runTests(dir, t, opts.timeoutMs)
      baselineMs += b.ms
      const failed = [...b.outcomes].filter(([, o]) => !o.passed).map(([n]) => n)
      const passed = [...b.outcomes.values()].filter(o => o.passed).length
      console.log(`${passed} pass, ${failed.length} fail (${seconds(b.ms)})`)
      if (b.timedOut) throw new Error(`${key} timed out after ${seconds(opts.timeoutMs)} without any mutation`)
      if (passed === 0) throw new Error(`${key} has no passing test without any mutation (a pattern that matches nothing?)\n${b.output.slice(-3000)}`)
      for (const name of failed) console.log(`    already failing, counts for no mutation: ${clip(name, 150)}`)
      baselines.set(key, b)
      return b
    }
    // A run with the mutation in place; the copy is restored whatever happens.
    const mutated = async (a: Applied, t: TestRun): Promise<TestResult> => {
      await apply(a)
      try {
        return await runTests(dir, t, opts.timeoutMs)
      } finally {
        await restore(a)
      }
    }
    const show = (r: TestResult, names: string[]): void => {
      for (const n of names.slice(0, 5)) {
        const error = r.outcomes.get(n)?.error
        console.log(`    ✗ ${clip(n, 140)}${error === undefined ? '' : `\n        ${clip(error, 140)}`}`)
      }
      if (names.length > 5) console.log(`    … and ${names.length - 5} more`)
    }

    for (const m of selected) {
      const a = prepared.get(m.id)
      if (a === undefined) continue
      console.log(`${m.id} (${m.rule}): ${m.bug}`)
      let row: Row | undefined
      let ms = 0
      for (const t of m.tests) {
        const base = await baseline(t)
        const r = await mutated(a, t)
        ms += r.ms
        if (r.timedOut) {
          console.log(`  ${describe(t)}: timed out after ${seconds(opts.timeoutMs)} (it does not without the mutation): killed`)
          row = { m, verdict: 'killed', note: `${describe(t)}: timed out`, ms }
          break
        }
        const killers = [...r.outcomes].filter(([n, o]) => !o.passed && base.outcomes.get(n)?.passed !== false).map(([n]) => n)
        if (killers.length === 0 && r.outcomes.size === 0 && r.code !== 0) {
          console.log(`  ${describe(t)}: exit ${r.code} without test results: killed\n${r.output.slice(-2000)}`)
          row = { m, verdict: 'killed', note: `${describe(t)}: exit ${r.code} without test results`, ms }
          break
        }
        if (killers.length === 0) {
          console.log(`  ${describe(t)}: all passed (${seconds(r.ms)})`)
          continue
        }
        console.log(`  ${describe(t)}: ${killers.length} failing (${seconds(r.ms)})`)
        show(r, killers)
        // Confirmed only when the failing tests fail again with the mutation and pass without it:
        // on a loaded machine a timing-sensitive test may fail once by chance.
        const again: TestRun = { file: t.file, pattern: exactly([...new Set(killers.map(k => (r.outcomes.get(k) as Outcome).top))]) }
        const withIt = await mutated(a, again)
        const without = await runTests(dir, again, opts.timeoutMs)
        ms += withIt.ms + without.ms
        const confirmed = killers.filter(k => without.outcomes.get(k)?.passed === true && (withIt.timedOut || withIt.outcomes.get(k)?.passed === false))
        if (confirmed.length === 0) {
          console.log(`  not confirmed: run again, these tests ${without.timedOut ? 'timed out' : 'failed'} without the mutation or passed with it (flaky?): not counted`)
          continue
        }
        console.log(`  confirmed: ${confirmed.length} of them fail again with the mutation and pass without it (${seconds(withIt.ms + without.ms)}): killed`)
        row = { m, verdict: 'killed', note: `${describe(t)}: ${confirmed[0] as string}${confirmed.length > 1 ? ` (+${confirmed.length - 1})` : ''}`, ms }
        break
      }
      row ??= { m, verdict: 'SURVIVED', note: `all passed: ${m.tests.map(describe).join(', ')}`, ms }
      rows.push(row)
    }
  } finally {
    await cleanup()
  }

  // ---- report ----
  const order = new Map(selected.map((m, i) => [m.id, i]))
  rows.sort((x, y) => (order.get(x.m.id) ?? 0) - (order.get(y.m.id) ?? 0))
  const header = ['mutation', 'rule', 'source', 'result', 'time', 'killed by / note']
  const table = rows.map(r => [r.m.id, r.m.rule, r.m.source, r.verdict, r.verdict === 'NO LONGER APPLIES' ? '-' : seconds(r.ms), clip(r.note, 110)])
  const widths = header.map((h, i) => Math.max(h.length, ...table.map(row => (row[i] as string).length)))
  const line = (cells: string[]): string => cells.map((c, i) => i === cells.length - 1 ? c : c.padEnd(widths[i] as number)).join('  ')
  console.log('\n' + line(header))
  console.log(line(widths.map(w => '-'.repeat(w))))
  for (const row of table) console.log(line(row))

  const count = (v: Verdict): number => rows.filter(r => r.verdict === v).length
  const total = performance.now() - began
  console.log(`\n${rows.length} mutations: ${count('killed')} killed, ${count('SURVIVED')} survived, ${count('NO LONGER APPLIES')} no longer apply`)
  console.log(`time: ${seconds(total)} in all (unmutated test runs ${seconds(baselineMs)}, mutated ${seconds(rows.reduce((s, r) => s + r.ms, 0))})`)
  const bad = rows.filter(r => r.verdict !== 'killed')
  for (const r of bad) {
    console.log(`\n${r.verdict}: ${r.m.id} (${r.m.source}): ${r.m.bug}`)
    console.log(`  - ${r.m.line}\n  + ${shown(r.m.replace)}`)
    if (r.verdict === 'SURVIVED') console.log(`  no test of ${r.m.tests.map(describe).join(', ')} fails: the rule needs a test that does`)
    else console.log('  the code changed: update this mutation in scripts/mutations.ts (or remove it, if the rule moved elsewhere, with one for its new place)')
  }
  return bad.length === 0 ? 0 : 1
}

main().then(code => { process.exitCode = code }, (err: Error) => {
  console.error(`mutations: ${err.stack ?? err.message}`)
  process.exitCode = 1
})
