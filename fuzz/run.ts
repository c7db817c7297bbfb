// `npm run fuzz`: a differential fuzzer of the gateway's HTTP/1.1 edge. Generated and mutated
// requests go, as raw bytes on fresh connections, through a real gateway to a recording upstream;
// every case is judged by the oracle in harness.ts. Bounded by FUZZ_COUNT cases and FUZZ_SECONDS
// (whichever comes first); FUZZ_SEED makes a run repeatable. Exits 1 on any finding, written to
// FUZZ_FINDINGS (default dist/fuzz/findings.json).
import { mkdir, writeFile } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import { generateCase } from './generate.js'
import { Session, statusClass, fromText, type CaseOutcome } from './harness.js'
import { knownBug } from './known.js'

export interface FuzzOptions {
  seed: number
  count: number
  seconds: number
  /** Probe GET /health every this many cases. */
  probeEvery?: number
  /** Check the gateway's in-flight count every this many cases. */
  leakEvery?: number
  /** Count cases explained by a known gateway bug (fuzz/known.ts) as findings too. */
  strict?: boolean
  log?: (line: string) => void
}

export interface Finding {
  seed: number
  case: number
  label: string
  /** The raw bytes sent (latin1: one char per byte; JSON escapes the rest). */
  bytes: string
  statuses: number[]
  upstream: Array<{ seq: number, method: string, url: string, bodyLength: number, complete: boolean, conn: number }>
  violations: string[]
  /** The id of the known gateway bug (fuzz/known.ts) that explains it, if one does. */
  known?: string
}

export interface FuzzSummary {
  seed: number
  cases: number
  seconds: number
  /** Final responses by status code. */
  statuses: Record<string, number>
  /** Cases by the status classes they got, in order ("2xx", "2xx 4xx", "none"...). */
  outcomes: Record<string, number>
  upstreamRequests: number
  /** Cases where the gateway went quiet while the reference parser expected an answer. */
  stalls: number
  /** Cases the reference parser reads as invalid somewhere. */
  referenceInvalid: number
  healthProbes: number
  gatewayAlive: boolean
  gatewayErrorLogs: string[]
  /** Connections the gateway cut mid-request towards the upstream (cancellations, 413 while streaming). */
  upstreamCuts: number
  /** Cases explained by a known gateway bug, by its id (not failures unless strict); the first few of each. */
  known: Record<string, number>
  knownExamples: Finding[]
  findings: Finding[]
}

export async function runFuzz (options: FuzzOptions): Promise<FuzzSummary> {
  const { seed, count, seconds, probeEvery = 100, leakEvery = 10, strict = false, log = () => {} } = options
  const session = await Session.start()
  const summary: FuzzSummary = {
    seed,
    cases: 0,
    seconds: 0,
    statuses: {},
    outcomes: {},
    upstreamRequests: 0,
    stalls: 0,
    referenceInvalid: 0,
    healthProbes: 0,
    gatewayAlive: true,
    gatewayErrorLogs: [],
    upstreamCuts: 0,
    known: {},
    knownExamples: [],
    findings: []
  }
  const report = (label: string, bytes: string, outcome: CaseOutcome, crashed: boolean): void => {
    const i = outcome.caseIndex
    const c = { label, bytes }

    const finding: Finding = {
      seed,
      case: i,
      label: c.label,
      bytes: c.bytes,
      statuses: outcome.responses.map(r => r.status),
      upstream: outcome.upstream.map(r => ({ seq: r.seq, method: r.method, url: r.url, bodyLength: r.bodyLength, complete: r.complete, conn: r.conn })),
      violations: crashed ? [...outcome.violations, `gateway exited ${JSON.stringify(session.gateway.exited)}: ${session.gateway.output.slice(-10).join('\n')}`] : outcome.violations
    }
    const known = crashed ? undefined : knownBug(outcome)
    if (known !== undefined) {
      finding.known = known.id
      summary.known[known.id] = (summary.known[known.id] ?? 0) + 1
      if (summary.knownExamples.filter(f => f.known === known.id).length < 3) summary.knownExamples.push(finding)
    }
    if (known === undefined || strict) {
      summary.findings.push(finding)
      log(`FINDING seed=${seed} case=${i} [${c.label}]${known === undefined ? '' : ` (known: ${known.id})`}\n  bytes: ${JSON.stringify(c.bytes).slice(0, 2000)}\n  statuses: ${JSON.stringify(finding.statuses)}\n  ${finding.violations.join('\n  ')}`)
    }
  }
  let leaked = 0
  const t0 = Date.now()
  try {
    for (let i = 0; i < count && Date.now() - t0 < seconds * 1000; i++) {
      const c = generateCase(seed, i)
      const outcome = await session.run(i, fromText(c.bytes))
      summary.cases++
      for (const r of outcome.responses) summary.statuses[r.status] = (summary.statuses[r.status] ?? 0) + 1
      const shape = outcome.responses.map(r => statusClass(r.status)).join(' ') || 'none'
      summary.outcomes[shape] = (summary.outcomes[shape] ?? 0) + 1
      summary.upstreamRequests += outcome.upstream.length
      if (outcome.exchange.stalled) summary.stalls++
      if (outcome.ref.stop?.kind === 'invalid') summary.referenceInvalid++
      const crashed = session.gateway.exited !== undefined
      for (const late of outcome.late) {
        if (late.violations.length === 0) continue
        const lc = generateCase(seed, late.caseIndex)
        report(lc.label, lc.bytes, late, false)
      }
      if (outcome.violations.length > 0 || crashed) report(c.label, c.bytes, outcome, crashed)
      if (crashed) break
      if ((i + 1) % leakEvery === 0) {
        const active = await session.settledUpstreamRequests(leaked)
        if (active > leaked) {
          report(c.label, c.bytes, { ...outcome, violations: [`the gateway counts ${active} upstream requests in flight with none running (${active - leaked} more since case ${i + 1 - leakEvery}; one of cases ${i + 1 - leakEvery}–${i} leaked)`] }, false)
        }
        leaked = active
      }
      if ((i + 1) % probeEvery === 0) {
        summary.healthProbes++
        if (!await session.alive()) {
          summary.findings.push({ seed, case: i, label: 'health probe', bytes: '', statuses: [], upstream: [], violations: [`GET /health did not answer 200 after case ${i}`] })
          log(`FINDING seed=${seed}: GET /health did not answer 200 after case ${i}`)
          break
        }
      }
    }
    summary.healthProbes++
    summary.gatewayAlive = await session.alive()
    if (!summary.gatewayAlive && !summary.findings.some(f => f.label === 'health probe')) {
      summary.findings.push({ seed, case: summary.cases - 1, label: 'health probe', bytes: '', statuses: [], upstream: [], violations: ['the gateway is not alive at the end of the run'] })
    }
  } finally {
    summary.seconds = (Date.now() - t0) / 1000
    summary.gatewayErrorLogs = session.gateway.errorLogs.slice(0, 20)
    summary.upstreamCuts = session.upstream.cutConnections
    await session.close()
  }
  return summary
}

function envInt (name: string, fallback: number): number {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return fallback
  const n = Number(raw)
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name}: must be a non-negative integer, got ${JSON.stringify(raw)}`)
  return n
}

async function main (): Promise<void> {
  const seed = envInt('FUZZ_SEED', Math.floor(Math.random() * 2 ** 31))
  const count = envInt('FUZZ_COUNT', 5000)
  const seconds = envInt('FUZZ_SECONDS', 60)
  const findingsFile = resolve(process.env.FUZZ_FINDINGS ?? resolve(import.meta.dirname, 'findings.json'))
  console.log(`fuzz: seed ${seed} (FUZZ_SEED=${seed} repeats this run), up to ${count} cases or ${seconds} s`)
  const strict = process.env.FUZZ_STRICT === '1'
  const summary = await runFuzz({ seed, count, seconds, strict, log: line => console.log(line) })
  const { findings, knownExamples, gatewayErrorLogs, ...rest } = summary
  console.log(JSON.stringify({ ...rest, gatewayErrorLogs: gatewayErrorLogs.map(l => l.slice(0, 300)), findings: findings.length }, null, 2))
  for (const f of knownExamples) console.log(`known gateway bug ${f.known}: case ${f.case}, bytes ${JSON.stringify(f.bytes).slice(0, 300)}`)
  if (findings.length > 0) {
    await mkdir(dirname(findingsFile), { recursive: true })
    await writeFile(findingsFile, JSON.stringify(findings, null, 2) + '\n')
    console.log(`fuzz: ${findings.length} finding(s), written to ${findingsFile}; replay one with the bytes in fuzz/regressions.json`)
    process.exitCode = 1
  } else {
    console.log(`fuzz: no findings in ${summary.cases} cases (${summary.seconds.toFixed(1)} s)`)
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch(err => {
    console.error(err)
    process.exit(2)
  })
}
