// Path parameters: a route path may hold `:name` segments, matched by the radix router. Their
// values are not decoded or captured by it: a rewrite that uses them reads the segment at the
// parameter's position of the normalised path, compiled at load into text and segment numbers.

/** rewritePrefix of a route whose path has parameters: literal text, and the numbers of path segments to copy. */
export type RewriteTemplate = ReadonlyArray<string | number>

/** Whether a path (or rewritePrefix) has `:name` segments. */
export function hasParams (path: string): boolean {
  return path.includes('/:')
}

/**
 * The path as the router is given it: each parameter named after its position (`:p2`), so two
 * routes with parameters at the same place never disagree on a name the router would refuse.
 */
export function routerPath (path: string): string {
  return path.split('/').map((segment, i) => segment.startsWith(':') ? `:p${i}` : segment).join('/')
}

/** Compiles rewritePrefix against the route path's parameters (parse.ts has checked every name exists). */
export function compileRewrite (path: string, rewritePrefix: string): RewriteTemplate {
  const positions = new Map<string, number>()
  path.split('/').forEach((segment, i) => { if (segment.startsWith(':')) positions.set(segment, i) })
  const parts: Array<string | number> = []
  let literal = ''
  rewritePrefix.split('/').forEach((segment, i) => {
    if (i > 0) literal += '/'
    const position = positions.get(segment)
    if (position === undefined) {
      literal += segment
      return
    }
    if (literal !== '') parts.push(literal)
    literal = ''
    parts.push(position)
  })
  if (literal !== '') parts.push(literal)
  return parts
}

/**
 * The forwarded path of a request that matched a route with `segments` segments (parameters
 * among them): the template's text and copied segments, then the rest of the request path.
 */
export function applyRewrite (template: RewriteTemplate, segments: number, path: string, join: (prefix: string, rest: string) => string): string {
  // Where each of the route's segments sits in this path: segment k is path.slice(starts[k], ends[k]).
  const starts: number[] = []
  const ends: number[] = []
  let end = 0
  for (let k = 1; k <= segments; k++) {
    const start = end + 1
    const slash = path.indexOf('/', start)
    end = slash === -1 ? path.length : slash
    starts[k] = start
    ends[k] = end
  }
  let prefix = ''
  for (const part of template) prefix += typeof part === 'string' ? part : path.slice(starts[part], ends[part])
  return join(prefix, path.slice(end))
}
