// Sticky sessions (a route's `affinity`): the target a client's key names, when that target still
// admits requests. Cookie values are a keyed hash of the target's address (AFFINITY_SECRET),
// computed at load for every target; header and ip keys are hashed onto the targets by rendezvous
// hashing, so every replica maps a key to the same target and a removed target moves only its keys.
import { createHmac } from 'node:crypto'
import type { Pool } from '../../src/upstream/select.js'
import type { Target } from '../../src/upstream/target.js'
import { cookieValue } from './split.js'

export type CompiledAffinity =
  | { readonly kind: 'cookie', readonly name: string, readonly byValue: ReadonlyMap<string, Target>, readonly valueOf: ReadonlyMap<Target, string> }
  | { readonly kind: 'header', readonly name: string }
  | { readonly kind: 'ip' }

// Without AFFINITY_SECRET: values still show no address, but one can be found by trying candidates.
const BUILT_IN_KEY = 'gatehouse sticky sessions'

export function compileAffinity (affinity: { kind: 'ip' } | { kind: 'cookie', name: string } | { kind: 'header', name: string }, upstream: string, targets: readonly Target[], secret: string | undefined): CompiledAffinity {
  if (affinity.kind !== 'cookie') return Object.freeze({ ...affinity })
  const byValue = new Map<string, Target>()
  const valueOf = new Map<Target, string>()
  for (const target of targets) {
    const value = createHmac('sha256', secret ?? BUILT_IN_KEY).update(`${upstream} ${target.origin}`).digest('base64url').slice(0, 22)
    byValue.set(value, target)
    valueOf.set(target, value)
  }
  return Object.freeze({ kind: 'cookie', name: affinity.name, byValue, valueOf })
}

/** The client's sticky target in `pool`, when it admits a request; undefined otherwise (choose as usual). */
export function stickyTarget (affinity: CompiledAffinity, pool: Pool<Target>, headers: Record<string, string | string[] | undefined>, ip: () => string): Target | undefined {
  let target: Target | undefined
  if (affinity.kind === 'cookie') {
    const cookies = headers.cookie
    const value = typeof cookies === 'string' ? cookieValue(cookies, affinity.name) : undefined
    target = value === undefined ? undefined : affinity.byValue.get(value)
    if (target !== undefined && !pool.targets.includes(target)) target = undefined
  } else {
    // The client address only when it is the key: working it out (TRUST_PROXY) is not free.
    const key = affinity.kind === 'ip' ? ip() : headers[affinity.name]
    if (typeof key === 'string' && key !== '') target = rendezvous(pool.targets, key)
  }
  return target !== undefined && target.admits() ? target : undefined
}

/** The target with the highest hash of (key, target): the same on every replica for the same targets. */
function rendezvous (targets: readonly Target[], key: string): Target | undefined {
  let best: Target | undefined
  let bestScore = -1
  for (const target of targets) {
    const score = fnv1a(key, target.origin)
    if (score > bestScore) {
      best = target
      bestScore = score
    }
  }
  return best
}

/** 32-bit FNV-1a of `a`, a separator and `b`, then mixed (fmix32) so close inputs spread. */
function fnv1a (a: string, b: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < a.length; i++) h = Math.imul(h ^ a.charCodeAt(i), 0x01000193)
  h = Math.imul(h ^ 0, 0x01000193)
  for (let i = 0; i < b.length; i++) h = Math.imul(h ^ b.charCodeAt(i), 0x01000193)
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

/** The Set-Cookie that names `target` for this route's affinity cookie. */
export function affinityCookie (affinity: Extract<CompiledAffinity, { kind: 'cookie' }>, target: Target): string | undefined {
  const value = affinity.valueOf.get(target)
  return value === undefined ? undefined : `${affinity.name}=${value}; Path=/; HttpOnly; SameSite=Lax`
}
