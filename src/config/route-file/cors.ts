// A route's CORS policy, compiled at load: exact origins in a set, `https://*.example.com`
// patterns as a scheme and a suffix, the preflight's answer headers joined once. A request only
// looks up its Origin.

export interface RawCors {
  origins: string[]
  methods?: string[] | undefined
  headers?: string[] | undefined
  exposeHeaders?: string[] | undefined
  credentials: boolean
  maxAge?: number | string | undefined
}

/** An origin pattern: `https://` + one or more labels + `.example.com` (port included). */
interface OriginPattern { scheme: string, suffix: string }

// A subdomain a pattern's `*` stands for: DNS labels, dots between them.
const SUBDOMAIN = /^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*$/

export class CorsPolicy {
  private readonly exact: ReadonlySet<string>
  private readonly patterns: readonly OriginPattern[]
  /** `*`: any origin (never with credentials). */
  readonly anyOrigin: boolean
  /** Access-Control-Allow-Methods of a preflight. */
  readonly allowMethods: string
  /** Access-Control-Allow-Headers of a preflight; undefined: the headers the preflight asks for. */
  readonly allowHeaders: string | undefined
  /** Access-Control-Expose-Headers of a response; undefined: none. */
  readonly exposeHeaders: string | undefined
  readonly credentials: boolean
  /** Access-Control-Max-Age of a preflight, seconds; undefined: the browser's default. */
  readonly maxAge: string | undefined

  constructor (raw: RawCors, methods: readonly string[], maxAgeMs: number | undefined) {
    const origins = raw.origins.map(o => o.toLowerCase())
    this.anyOrigin = origins.includes('*')
    this.exact = new Set(origins.filter(o => !o.includes('*')))
    this.patterns = origins.filter(o => o.includes('*.')).map(o => {
      const [scheme = '', rest = ''] = o.split('*')
      return { scheme, suffix: rest }
    })
    this.allowMethods = (raw.methods ?? methods).join(', ')
    this.allowHeaders = raw.headers?.map(h => h.toLowerCase()).join(', ')
    this.exposeHeaders = raw.exposeHeaders === undefined ? undefined : raw.exposeHeaders.map(h => h.toLowerCase()).join(', ')
    this.credentials = raw.credentials
    this.maxAge = maxAgeMs === undefined ? undefined : String(Math.floor(maxAgeMs / 1000))
  }

  /** Access-Control-Allow-Origin for a request from `origin`; undefined when that origin is not allowed. */
  allowOrigin (origin: string): string | undefined {
    if (!this.allows(origin)) return undefined
    return this.anyOrigin && !this.credentials ? '*' : origin
  }

  /** Whether a request from `origin` (its Origin header) may read the response. */
  allows (origin: string): boolean {
    if (this.anyOrigin) return true
    const o = origin.toLowerCase()
    if (this.exact.has(o)) return true
    for (const { scheme, suffix } of this.patterns) {
      if (o.length > scheme.length + suffix.length && o.startsWith(scheme) && o.endsWith(suffix) &&
        SUBDOMAIN.test(o.slice(scheme.length, o.length - suffix.length))) return true
    }
    return false
  }
}

/** Problems the schema cannot express. */
export function corsProblems (raw: RawCors, at: string): string[] {
  const problems: string[] = []
  if (raw.credentials && raw.origins.includes('*')) {
    problems.push(`${at}/origins: "*" cannot go with credentials: true (browsers refuse it); list the origins that may send credentials`)
  }
  return problems
}
