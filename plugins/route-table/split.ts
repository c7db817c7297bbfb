// Traffic split between target groups (canary releases): a route's `split` weights and `pin`,
// compiled at load into the pools each choice tries in order, so a request draws one number (or
// reads one header or cookie) and gets a list made in advance.
import type { Pool } from '../../src/upstream/select.js'
import type { Target } from '../../src/upstream/target.js'

export interface CompiledSplit {
  /** Cumulative weights: a draw below `upTo` takes `pools`: its group first, then the others as written. */
  readonly choices: ReadonlyArray<{ readonly upTo: number, readonly pools: ReadonlyArray<Pool<Target>> }>
  readonly totalWeight: number
  /** A pinned request's pools: its group only. */
  readonly pinned: ReadonlyMap<string, ReadonlyArray<Pool<Target>>>
  readonly pinHeader: string | undefined
  readonly pinCookie: string | undefined
}

/** The pools of a route with a split; the groups' targets come from the upstream's, by their config's group. */
export function compileSplit (split: Readonly<Record<string, number>>, pin: { header: string | undefined, cookie: string | undefined } | undefined, targets: readonly Target[], groups: ReadonlyArray<string | undefined>): CompiledSplit {
  const pools = new Map<string, Pool<Target>>()
  for (const group of Object.keys(split)) {
    const members = targets.filter((_t, i) => groups[i] === group)
    pools.set(group, Object.freeze({ targets: Object.freeze(members), totalWeight: members.reduce((sum, t) => sum + t.weight, 0) }))
  }
  const order = [...pools.keys()]
  const inOrder = (first: string): ReadonlyArray<Pool<Target>> => Object.freeze([first, ...order.filter(g => g !== first)].map(g => pools.get(g) as Pool<Target>))
  let upTo = 0
  const choices = order.filter(g => (split[g] ?? 0) > 0).map(group => {
    upTo += split[group] ?? 0
    return Object.freeze({ upTo, pools: inOrder(group) })
  })
  return Object.freeze({
    choices: Object.freeze(choices),
    totalWeight: upTo,
    pinned: new Map(order.map(g => [g, Object.freeze([pools.get(g) as Pool<Target>])])),
    pinHeader: pin?.header,
    pinCookie: pin?.cookie
  })
}

/** The pools a request tries: its pinned group's, or those of a weighted draw. */
export function splitPools (split: CompiledSplit, headers: Record<string, string | string[] | undefined>, random: () => number): ReadonlyArray<Pool<Target>> {
  if (split.pinHeader !== undefined) {
    const value = headers[split.pinHeader]
    const pinned = typeof value === 'string' ? split.pinned.get(value) : undefined
    if (pinned !== undefined) return pinned
  }
  if (split.pinCookie !== undefined) {
    const cookies = headers.cookie
    const value = typeof cookies === 'string' ? cookieValue(cookies, split.pinCookie) : undefined
    const pinned = value === undefined ? undefined : split.pinned.get(value)
    if (pinned !== undefined) return pinned
  }
  const point = random() * split.totalWeight
  for (const choice of split.choices) if (point < choice.upTo) return choice.pools
  return (split.choices[split.choices.length - 1] as CompiledSplit['choices'][number]).pools
}

/** The value of cookie `name` in a Cookie header (`a=1; name=value`), or undefined. */
export function cookieValue (header: string, name: string): string | undefined {
  let at = 0
  while (at < header.length) {
    while (header.charCodeAt(at) === 32 /* space */) at++
    const end = header.indexOf(';', at)
    const stop = end === -1 ? header.length : end
    const eq = header.indexOf('=', at)
    if (eq !== -1 && eq < stop && eq - at === name.length && header.startsWith(name, at)) return header.slice(eq + 1, stop).trim()
    at = stop + 1
  }
  return undefined
}
