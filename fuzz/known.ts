// Gateway bugs the fuzzer found and that are not fixed yet. A case whose every violation one of
// these explains is reported as "known" (printed, counted, not a failure unless FUZZ_STRICT=1),
// so a run still fails on anything new. Remove an entry once the gateway is fixed: the cases of
// fuzz/regressions.json that carry its id then stop being `todo` and must pass.
import type { CaseOutcome } from './harness.js'

export interface KnownBug {
  id: string
  summary: string
  explains: (outcome: CaseOutcome) => boolean
}

const LATE = ' (arrived after the case ended)'
/** Whether every violation of `o` (late ones too) matches one of `patterns`. */
export const all = (o: CaseOutcome, ...patterns: RegExp[]): boolean =>
  o.violations.length > 0 && o.violations.every(v => patterns.some(p => p.test(v.endsWith(LATE) ? v.slice(0, -LATE.length) : v)))

export const KNOWN_BUGS: KnownBug[] = [
]

/**
 * The known bug that explains every violation of `outcome`, if one does. An upstream request left
 * hanging is split off first: the rest of the case must then be explained on its own (or be empty).
 */
export function knownBug (outcome: CaseOutcome): KnownBug | undefined {
  const hanging = outcome.violations.filter(v => HANGING.test(v))
  if (hanging.length === 0) return KNOWN_BUGS.find(b => b.explains(outcome))
  const rest = { ...outcome, violations: outcome.violations.filter(v => !HANGING.test(v)) }
  if (rest.violations.length > 0 && KNOWN_BUGS.find(b => b.explains(rest)) === undefined) return undefined
  return KNOWN_BUGS.find(b => b.id === UNCANCELLED)
}

/** The id a known bug that leaves upstream requests hanging would carry (none is listed now). */
const UNCANCELLED = 'uncancelled-stream'

const HANGING = /is still open \d+ ms after the client connection ended: the gateway did not cancel it$/
