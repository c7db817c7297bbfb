// Saturation-aware selection: power of two choices, weighted.

/** What selection needs of a target. */
export interface Selectable {
  inFlight: number
  maxConnections: number
  weight: number
  /** Not full, and its breaker lets a request through. */
  admits: () => boolean
}

/** Load relative to the target's share: saturation divided by weight. Lower is better. */
function load (t: Selectable): number {
  return t.inFlight / t.maxConnections / t.weight
}

/**
 * Picks the target for one try, or undefined when no target admits a request.
 *
 * Two candidates are drawn at random, each with probability proportional to its weight; the
 * less loaded one that admits wins (ties go to the first draw). If neither admits, a scan finds
 * the least loaded target that does, so a free target is never missed. Targets in `exclude`
 * (already tried by this request) do not count. `random` returns [0, 1), injected so tests are
 * deterministic.
 */
export function selectTarget<T extends Selectable> (targets: readonly T[], totalWeight: number, random: () => number = Math.random, exclude?: ReadonlySet<T>): T | undefined {
  const n = targets.length
  // An upstream whose targets all come from DNS has none until a name resolves.
  if (n === 0) return undefined
  if (n === 1) {
    const only = targets[0] as T
    return usable(only, exclude) ? only : undefined
  }
  const a = draw(targets, totalWeight, random())
  let b = draw(targets, totalWeight, random())
  // A second draw of the same target would waste the choice: take its neighbour instead.
  if (b === a) b = targets[(targets.indexOf(a) + 1) % n] as T
  const aFree = usable(a, exclude)
  const bFree = usable(b, exclude)
  if (aFree && bFree) return load(b) < load(a) ? b : a
  if (aFree) return a
  if (bFree) return b
  let best: T | undefined
  for (const t of targets) {
    if (usable(t, exclude) && (best === undefined || load(t) < load(best))) best = t
  }
  return best
}

function usable<T extends Selectable> (t: T, exclude: ReadonlySet<T> | undefined): boolean {
  return (exclude === undefined || !exclude.has(t)) && t.admits()
}

function draw<T extends Selectable> (targets: readonly T[], totalWeight: number, r: number): T {
  let point = r * totalWeight
  for (const t of targets) {
    point -= t.weight
    if (point < 0) return t
  }
  return targets[targets.length - 1] as T
}

/** Targets to choose among: an upstream's, or one group of a route's split. */
export interface Pool<T extends Selectable> {
  readonly targets: readonly T[]
  readonly totalWeight: number
}

/** A target of the first pool, in order, that has one that admits: the pools after the first are fallbacks. */
export function selectInPools<T extends Selectable> (pools: ReadonlyArray<Pool<T>>, random: () => number = Math.random, exclude?: ReadonlySet<T>): T | undefined {
  for (const pool of pools) {
    const target = selectTarget(pool.targets, pool.totalWeight, random, exclude)
    if (target !== undefined) return target
  }
  return undefined
}
