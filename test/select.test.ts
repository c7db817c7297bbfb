// selectTarget: power of two choices over weighted draws, never a full target.
import { strict as assert } from 'node:assert'
import { test } from 'node:test'
import { selectTarget, type Selectable } from '../src/upstream/select.js'

interface T extends Selectable {
  name: string
}

function target (name: string, inFlight: number, maxConnections: number, weight = 1): T {
  return { name, inFlight, maxConnections, weight, admits () { return this.inFlight < this.maxConnections } }
}

function total (targets: readonly T[]): number {
  return targets.reduce((sum, t) => sum + t.weight, 0)
}

/** A random() that returns these values in order and fails the test if asked for more. */
function sequence (...values: number[]): () => number {
  let i = 0
  return () => {
    assert.ok(i < values.length, `random() called more than ${values.length} times`)
    return values[i++] as number
  }
}

/** A small deterministic PRNG (mulberry32) for property-style loops. */
function prng (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

function pick (targets: T[], random: () => number): string | undefined {
  return selectTarget(targets, total(targets), random)?.name
}

test('of the two draws, the less saturated target is picked, whichever was drawn first', () => {
  const targets = [target('a', 5, 10), target('b', 1, 10)]
  // 0.1 draws a, 0.9 draws b (equal weights: a covers [0, 0.5)).
  assert.equal(pick(targets, sequence(0.1, 0.9)), 'b')
  assert.equal(pick(targets, sequence(0.9, 0.1)), 'b')
})

test('saturation is compared relative to maxConnections, not as raw in-flight counts', () => {
  // a: 10 of 100 (10 %), b: 5 of 10 (50 %): a is less saturated although it holds more.
  const targets = [target('a', 10, 100), target('b', 5, 10)]
  assert.equal(pick(targets, sequence(0.9, 0.1)), 'a')
  assert.equal(pick(targets, sequence(0.1, 0.9)), 'a')
})

test('load is divided by weight: a heavier target may carry more before it loses', () => {
  // a: 4/10 at weight 2 → 0.2; b: 3/10 at weight 1 → 0.3.
  const targets = [target('a', 4, 10, 2), target('b', 3, 10, 1)]
  assert.equal(pick(targets, sequence(0.9, 0.1)), 'a')
  assert.equal(pick(targets, sequence(0.1, 0.9)), 'a')
})

test('ties go to the first draw', () => {
  const targets = [target('a', 2, 10), target('b', 2, 10)]
  assert.equal(pick(targets, sequence(0.1, 0.9)), 'a')
  assert.equal(pick(targets, sequence(0.9, 0.1)), 'b')
  const idle = [target('a', 0, 10), target('b', 0, 10)]
  assert.equal(pick(idle, sequence(0.1, 0.9)), 'a')
  assert.equal(pick(idle, sequence(0.9, 0.1)), 'b')
})

test('weights bias the draws: weight 3 vs 1 over evenly spread randoms gives 3:1', () => {
  const targets = [target('heavy', 0, 10, 3), target('light', 0, 10, 1)]
  const n = 400
  const counts = { heavy: 0, light: 0 }
  for (let i = 0; i < n; i++) {
    // First draw walks evenly over [0, 1); idle targets tie, so the first draw decides.
    const name = pick(targets, sequence((i + 0.5) / n, 0.5))
    assert.ok(name === 'heavy' || name === 'light')
    counts[name]++
  }
  assert.deepEqual(counts, { heavy: 300, light: 100 })
})

test('weights bias the draws among three targets (2:1:1 over evenly spread randoms)', () => {
  const targets = [target('a', 0, 10, 2), target('b', 0, 10, 1), target('c', 0, 10, 1)]
  const n = 400
  const counts: Record<string, number> = { a: 0, b: 0, c: 0 }
  for (let i = 0; i < n; i++) {
    const name = pick(targets, sequence((i + 0.5) / n, (i + 0.5) / n)) as string
    counts[name] = (counts[name] ?? 0) + 1
  }
  assert.deepEqual(counts, { a: 200, b: 100, c: 100 })
})

test('a draw of the same target twice still compares two different targets', () => {
  // Both draws land on a (busy); its neighbour b (idle) is the second candidate.
  const targets = [target('a', 5, 10), target('b', 0, 10), target('c', 9, 10)]
  assert.equal(pick(targets, sequence(0.1, 0.2)), 'b')
  // Both on c (the last): the neighbour wraps around to a.
  assert.equal(pick(targets, sequence(0.9, 0.95)), 'a')
})

test('a full target is never returned, even when it is drawn first and the other is busier otherwise', () => {
  const targets = [target('full', 10, 10), target('busy', 9, 10)]
  assert.equal(pick(targets, sequence(0.1, 0.9)), 'busy')
  assert.equal(pick(targets, sequence(0.1, 0.1)), 'busy')
  assert.equal(pick(targets, sequence(0.9, 0.1)), 'busy')
})

test('both draws full: the scan finds the free target (a free target is never missed)', () => {
  // c has a tiny weight, so the draws land on a and b, both full.
  const targets = [target('a', 3, 3), target('b', 7, 7), target('c', 9, 10, 0.001)]
  assert.equal(pick(targets, sequence(0.1, 0.6)), 'c')
  assert.equal(pick(targets, sequence(0.6, 0.1)), 'c')
})

test('both draws full: the scan picks the least loaded of the free targets', () => {
  const targets = [target('a', 1, 1), target('b', 1, 1), target('c', 8, 10), target('d', 2, 10), target('e', 5, 10)]
  // Equal weights, total 5: 0.1 → a, 0.3 → b.
  assert.equal(pick(targets, sequence(0.1, 0.3)), 'd')
})

test('all targets full: undefined', () => {
  const targets = [target('a', 2, 2), target('b', 5, 5), target('c', 1, 1)]
  assert.equal(pick(targets, sequence(0.1, 0.5)), undefined)
  assert.equal(pick(targets, sequence(0.9, 0.9)), undefined)
})

test('a single target is returned while it has room, undefined once full', () => {
  assert.equal(pick([target('only', 0, 1)], sequence(0.5, 0.5)), 'only')
  assert.equal(pick([target('only', 99, 100)], sequence(0.5, 0.5)), 'only')
  assert.equal(pick([target('only', 100, 100)], sequence(0.5, 0.5)), undefined)
})

test('over many random states: never a full target, and undefined only when every target is full', () => {
  const random = prng(42)
  let undefinedSeen = 0
  for (let round = 0; round < 5000; round++) {
    const n = 1 + Math.floor(random() * 5)
    const targets: T[] = []
    for (let i = 0; i < n; i++) {
      const max = 1 + Math.floor(random() * 4)
      targets.push(target(`t${i}`, Math.floor(random() * (max + 1)), max, 0.1 + random() * 3))
    }
    const picked = selectTarget(targets, total(targets), random)
    const anyFree = targets.some(t => t.inFlight < t.maxConnections)
    if (picked === undefined) {
      undefinedSeen++
      assert.equal(anyFree, false, `undefined although a target is free: ${JSON.stringify(targets)}`)
    } else {
      assert.ok(picked.inFlight < picked.maxConnections, `full target picked: ${JSON.stringify(picked)}`)
      assert.ok(targets.includes(picked))
    }
  }
  // The loop did reach the all-full case.
  assert.ok(undefinedSeen > 0)
})

test('a random() of just under 1 draws the last target', () => {
  const targets = [target('a', 0, 10), target('b', 5, 10)]
  // Both draws at the top end land on b; its neighbour a (idle) wins.
  assert.equal(pick(targets, sequence(0.9999999999, 0.9999999999)), 'a')
  const busyA = [target('a', 5, 10), target('b', 0, 10)]
  assert.equal(pick(busyA, sequence(0.9999999999, 0.1)), 'b')
})

// ---- exclude (targets this request already tried) and admits() false (breaker open) ---------

/** A target with room whose breaker is open: admits() says no although it is not full. */
function open (name: string, inFlight = 0, maxConnections = 10, weight = 1): T {
  return { name, inFlight, maxConnections, weight, admits: () => false }
}

function pickExcluding (targets: T[], random: () => number, ...excluded: string[]): string | undefined {
  const exclude = new Set(targets.filter(t => excluded.includes(t.name)))
  return selectTarget(targets, total(targets), random, exclude)?.name
}

test('exclude: a tried target is skipped when another one admits, even when it is the less loaded', () => {
  const targets = [target('a', 0, 10), target('b', 5, 10)]
  assert.equal(pickExcluding(targets, sequence(0.1, 0.9)), 'a')
  assert.equal(pickExcluding(targets, sequence(0.1, 0.9), 'a'), 'b')
  assert.equal(pickExcluding(targets, sequence(0.9, 0.1), 'a'), 'b')
})

test('exclude: both draws excluded, the scan finds the least loaded target not tried yet', () => {
  const targets = [target('a', 0, 10), target('b', 0, 10), target('c', 8, 10, 0.001), target('d', 3, 10, 0.001)]
  assert.equal(pickExcluding(targets, sequence(0.1, 0.6), 'a', 'b'), 'd')
})

test('exclude: undefined when only excluded targets admit', () => {
  const targets = [target('a', 0, 10), target('b', 10, 10), open('c')]
  assert.equal(pickExcluding(targets, sequence(0.1, 0.5), 'a'), undefined)
  assert.equal(pickExcluding(targets, sequence(0.9, 0.5), 'a'), undefined)
  // A single target that was tried: undefined too (the caller decides whether to go back to it).
  assert.equal(pickExcluding([target('only', 0, 10)], sequence(), 'only'), undefined)
  // An empty exclude set changes nothing.
  assert.equal(pickExcluding(targets, sequence(0.1, 0.5)), 'a')
})

test('breaker open (admits() false): skipped like a full target, even when idle and drawn first', () => {
  const targets = [open('tripped'), target('busy', 9, 10)]
  assert.equal(pick(targets, sequence(0.1, 0.9)), 'busy')
  assert.equal(pick(targets, sequence(0.9, 0.1)), 'busy')
  assert.equal(pick(targets, sequence(0.1, 0.1)), 'busy')
})

test('breaker open on both draws: the scan finds the admitting target; every breaker open: undefined', () => {
  const targets = [open('a'), open('b'), target('c', 5, 10, 0.001)]
  assert.equal(pick(targets, sequence(0.1, 0.6)), 'c')
  assert.equal(pick([open('a'), open('b'), open('c')], sequence(0.1, 0.6)), undefined)
  assert.equal(pick([open('only')], sequence()), undefined)
})

test('over many random states with open breakers and exclusions: never an excluded or refusing target; undefined only when none is usable', () => {
  const random = prng(7)
  let undefinedSeen = 0
  let picked = 0
  for (let round = 0; round < 5000; round++) {
    const n = 1 + Math.floor(random() * 5)
    const targets: T[] = []
    for (let i = 0; i < n; i++) {
      const max = 1 + Math.floor(random() * 4)
      const inFlight = Math.floor(random() * (max + 1))
      const weight = 0.1 + random() * 3
      targets.push(random() < 0.3 ? open(`t${i}`, inFlight, max, weight) : target(`t${i}`, inFlight, max, weight))
    }
    const exclude = new Set(targets.filter(() => random() < 0.3))
    const usable = targets.filter(t => t.admits() && !exclude.has(t))
    const choice = selectTarget(targets, total(targets), random, exclude)
    if (choice === undefined) {
      undefinedSeen++
      assert.equal(usable.length, 0, `undefined although ${usable.map(t => t.name).join(', ')} could take it`)
    } else {
      picked++
      assert.ok(usable.includes(choice), `picked ${choice.name}, which is excluded or refuses: ${JSON.stringify(targets)}`)
    }
  }
  assert.ok(undefinedSeen > 0 && picked > 0)
})
