// The differential fuzzer in CI: every committed regression case replayed against a real gateway
// and recording upstream, then a short fuzz run with a fixed seed through the code `npm run fuzz`
// runs. No case is `todo`: a case tagged with a gateway bug (fuzz/known.ts) must show exactly the
// violations that bug explains, so anything else it does fails, and so does the case once the bug
// is fixed (then the tag goes).
import { strict as assert } from 'node:assert'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, test } from 'node:test'
import { Session, fromText, statusClass } from '../fuzz/harness.js'
import { KNOWN_BUGS, knownBug } from '../fuzz/known.js'
import { runFuzz } from '../fuzz/run.js'
import { ROOT } from './helpers.js'

interface Regression {
  name: string
  bytes: string
  expect: { violations: number, statuses?: string[], upstream?: number }
  bug?: string
}

const regressions = JSON.parse(await readFile(join(ROOT, 'fuzz', 'regressions.json'), 'utf8')) as Regression[]

/** "400" matches that status, "4xx" its class, "non-2xx" anything but 2xx. */
function statusMatches (status: number, expected: string): boolean {
  if (expected === 'non-2xx') return statusClass(status) !== '2xx'
  return /^\dxx$/.test(expected) ? statusClass(status) === expected : String(status) === expected
}

let session: Session
before(async () => { session = await Session.start() })
after(async () => { await session?.close() })

for (const [i, r] of regressions.entries()) {
  test(`regression: ${r.name}${r.bug === undefined ? '' : ` (known gateway bug ${r.bug})`}`, async () => {
    const activeBefore = await session.activeUpstreamRequests()
    const o = await session.run(1_000_000 + i, fromText(r.bytes))
    const statuses = o.responses.map(res => res.status)
    const seen = o.upstream.filter(u => u.complete).map(u => `${u.method} ${u.url} (${u.bodyLength} bytes)`)
    const context = `statuses ${JSON.stringify(statuses)}, upstream ${JSON.stringify(seen)}, violations ${JSON.stringify(o.violations)}`
    if (r.bug === undefined) {
      assert.equal(r.expect.violations, 0, 'a case without a bug tag expects no violation')
      assert.deepEqual(o.violations, [], context)
      if (r.expect.statuses !== undefined) {
        assert.equal(statuses.length, r.expect.statuses.length, context)
        r.expect.statuses.forEach((s, k) => assert.ok(statusMatches(statuses[k] as number, s), `response ${k}: ${statuses[k]} is not ${s}; ${context}`))
      }
      if (r.expect.upstream !== undefined) assert.equal(seen.length, r.expect.upstream, context)
    } else {
      assert.ok(KNOWN_BUGS.some(b => b.id === r.bug), `bug ${r.bug} is not in fuzz/known.ts: if it is fixed, remove the tag from fuzz/regressions.json`)
      assert.notDeepEqual(o.violations, [], `no violation: bug ${r.bug} no longer shows here; remove the tag from fuzz/regressions.json (and the bug from fuzz/known.ts once no case shows it)`)
      assert.equal(knownBug(o)?.id, r.bug, `violations that bug ${r.bug} does not explain: ${context}`)
    }
    assert.equal(await session.settledUpstreamRequests(activeBefore) - activeBefore, 0, 'no upstream request left counted in flight')
    assert.ok(await session.alive(), 'the gateway answers /health')
  })
}

test('a short fuzz run (fixed seed): no findings beyond known gateway bugs, and the gateway stays up', async t => {
  const summary = await runFuzz({ seed: 20261129, count: 1500, seconds: 15 })
  t.diagnostic(`${summary.cases} cases in ${summary.seconds.toFixed(1)} s; statuses ${JSON.stringify(summary.statuses)}; known ${JSON.stringify(summary.known)}`)
  assert.ok(summary.cases >= 100, `only ${summary.cases} cases ran`)
  assert.deepEqual(summary.findings.map(f => ({ case: f.case, bytes: f.bytes, violations: f.violations })), [])
  // Cases a known bug explains are not findings; each such bug must be pinned by a regression case.
  const unpinned = Object.keys(summary.known).filter(id => !regressions.some(r => r.bug === id))
  assert.deepEqual(unpinned, [], `known bugs with no case in fuzz/regressions.json: ${JSON.stringify(summary.knownExamples.filter(f => unpinned.includes(f.known ?? '')))}`)
  assert.ok(summary.gatewayAlive)
})
