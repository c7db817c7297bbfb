// A route's header rules (`headers.request` / `headers.response`: set, add, remove), checked and
// compiled at load: names lower-cased, values split into literal text and the variables they use,
// so a request only joins strings. Headers the gateway owns are refused here, naming the header.

/** What a value may use, resolved per request. */
export type HeaderVariable =
  | { kind: 'client.ip' }
  | { kind: 'request.id' }
  | { kind: 'route.id' }
  | { kind: 'route.path' }
  | { kind: 'upstream' }
  | { kind: 'claim', name: string }

/** A header value: literal text, or parts of text and variables. */
export type HeaderTemplate = string | ReadonlyArray<string | HeaderVariable>

export interface HeaderRules {
  /** Names whose incoming values are dropped (removed, and replaced by set). */
  readonly drop: ReadonlySet<string>
  /** [name, value] lines to write after the incoming ones (set and add). */
  readonly append: ReadonlyArray<readonly [string, HeaderTemplate]>
}

export interface RouteHeaderRules {
  readonly request: HeaderRules | undefined
  readonly response: HeaderRules | undefined
}

export interface RawHeaderRules {
  set?: Record<string, string> | undefined
  add?: Record<string, string> | undefined
  remove?: string[] | undefined
}

const VARIABLES = ['client.ip', 'request.id', 'route.id', 'route.path', 'upstream', 'claim.<name>']

// RFC 9110 token.
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/

const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade']

/** Why the gateway keeps a header to itself, by direction. */
const OWNED: Record<'request' | 'response', ReadonlyMap<string, string>> = {
  request: new Map([
    ...HOP_BY_HOP.map(h => [h, 'a hop-by-hop header, never forwarded'] as [string, string]),
    ['host', 'the gateway sends the target\'s Host (the client\'s is in X-Forwarded-Host)'],
    ['content-length', 'the body\'s framing is the gateway\'s'],
    ['expect', 'answered by the gateway, never forwarded'],
    ['x-forwarded-for', 'set by the gateway from the connection and TRUST_PROXY'],
    ['x-forwarded-proto', 'set by the gateway from the connection and TRUST_PROXY'],
    ['x-forwarded-host', 'set by the gateway from the connection and TRUST_PROXY'],
    ['x-request-id', 'set by the gateway (the request id of its logs)']
  ]),
  response: new Map([
    ...HOP_BY_HOP.map(h => [h, 'a hop-by-hop header, never forwarded'] as [string, string]),
    ['content-length', 'the body\'s framing is the gateway\'s'],
    ['x-request-id', 'set by the gateway (the request id of its logs)'],
    ['ratelimit', 'set by the gateway\'s rate limiter'],
    ['ratelimit-policy', 'set by the gateway\'s rate limiter']
  ])
}

/** What else a route owns: the headers its auth sets upstream, and its CORS headers. */
export interface RouteOwned {
  /** Request headers set from verified claims (auth.jwt.forwardClaims). */
  claimHeaders: readonly string[]
  /** Whether the route has auth (claim variables need it). */
  hasAuth: boolean
  /** Whether the route has cors (its Access-Control-* response headers are the gateway's). */
  hasCors: boolean
}

/** Compiles one direction's rules; problems are pushed with their field (`at` is the rules' path). */
export function compileHeaderRules (raw: RawHeaderRules | undefined, direction: 'request' | 'response', at: string, owned: RouteOwned, problems: string[]): HeaderRules | undefined {
  if (raw === undefined) return undefined
  const drop = new Set<string>()
  const append: Array<readonly [string, HeaderTemplate]> = []
  const check = (name: string, field: string): string | undefined => {
    const lower = name.toLowerCase()
    if (!HEADER_NAME.test(name)) {
      problems.push(`${field}: "${name}" is not a header name`)
      return undefined
    }
    const why = OWNED[direction].get(lower) ??
      (direction === 'request' && owned.claimHeaders.includes(lower) ? 'set by this route\'s auth from the verified token (forwardClaims)' : undefined) ??
      (direction === 'response' && owned.hasCors && lower.startsWith('access-control-') ? 'set by this route\'s cors' : undefined)
    if (why !== undefined) {
      problems.push(`${field}: ${lower} cannot be set or removed by header rules: ${why}`)
      return undefined
    }
    return lower
  }
  for (const [i, name] of (raw.remove ?? []).entries()) {
    const lower = check(name, `${at}/remove/${i}`)
    if (lower !== undefined) drop.add(lower)
  }
  for (const op of ['set', 'add'] as const) {
    for (const [name, value] of Object.entries(raw[op] ?? {})) {
      const field = `${at}/${op}/${name}`
      const lower = check(name, field)
      if (lower === undefined) continue
      if ((raw.remove ?? []).some(r => r.toLowerCase() === lower)) {
        problems.push(`${field}: ${lower} is also in remove; a header is either removed or written`)
        continue
      }
      const template = compileTemplate(value, field, owned, problems)
      if (template === undefined) continue
      if (op === 'set') drop.add(lower)
      append.push([lower, template])
    }
  }
  return { drop, append }
}

/** `text` split into literal parts and `{variable}`s; undefined (with the problem) when a variable is unknown. */
function compileTemplate (text: string, field: string, owned: RouteOwned, problems: string[]): HeaderTemplate | undefined {
  const parts: Array<string | HeaderVariable> = []
  let literal = ''
  let i = 0
  while (i < text.length) {
    const open = text.indexOf('{', i)
    if (open === -1) { literal += text.slice(i); break }
    literal += text.slice(i, open)
    const close = text.indexOf('}', open)
    if (close === -1) {
      problems.push(`${field}: "{" without a closing "}" (variables are written {client.ip})`)
      return undefined
    }
    const name = text.slice(open + 1, close)
    const variable = variableOf(name)
    if (variable === undefined) {
      problems.push(`${field}: unknown variable {${name}} (known: ${VARIABLES.map(v => `{${v}}`).join(', ')})`)
      return undefined
    }
    if (variable.kind === 'claim' && !owned.hasAuth) {
      problems.push(`${field}: {${name}} needs auth on the route (claims come from the verified token)`)
      return undefined
    }
    if (literal !== '') parts.push(literal)
    literal = ''
    parts.push(variable)
    i = close + 1
  }
  if (literal !== '') parts.push(literal)
  if (parts.every(p => typeof p === 'string')) return parts.join('')
  return parts
}

function variableOf (name: string): HeaderVariable | undefined {
  switch (name) {
    case 'client.ip':
    case 'request.id':
    case 'route.id':
    case 'route.path':
    case 'upstream':
      return { kind: name }
  }
  if (name.startsWith('claim.') && name.length > 6 && !/\s/.test(name)) return { kind: 'claim', name: name.slice(6) }
  return undefined
}
