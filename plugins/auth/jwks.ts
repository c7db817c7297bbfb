// JWKS key-set cache for verifying JWTs at the gateway. One issuer URL per cache; keys are selected
// by jose's createLocalJWKSet (kid/alg/kty), so a kid is only ever looked up in the held set and
// never reaches a URL. Requests never wait on the issuer once a set is held: an expired set keeps
// answering while one background fetch replaces it, and a failed fetch keeps the last good set.
// Every fetch trigger that a client controls (unknown kid, a failing issuer) is bounded by the
// cooldown, so a flood of forged tokens makes at most one fetch per cooldown.
import { performance } from 'node:perf_hooks'
import {
  createLocalJWKSet,
  errors,
  type CryptoKey,
  type FlattenedJWSInput,
  type JSONWebKeySet,
  type JWK,
  type JWSHeaderParameters,
  type LocalJWKSet
} from 'jose'

export interface JwksCacheOptions {
  /** Used when the response has no usable Cache-Control max-age. Default 10 min. */
  defaultTtlMs?: number
  /** Bounds applied to the max-age the issuer sends (no-store/no-cache/max-age=0 → minTtlMs). Default 1 min and 24 h. */
  minTtlMs?: number
  maxTtlMs?: number
  /** After any fetch (success or failure), no new fetch triggered by an unknown kid or by a failed state for this long. Default 30 s. */
  cooldownMs?: number
  /** Whole fetch (connect + body). Default 5 s. */
  timeoutMs?: number
  /** Largest response body accepted. Default 512 KiB. */
  maxBytes?: number
}

export type JwksFetchResult =
  | { ok: true, keys: number, changed: boolean }
  | { ok: false, error: JwksFetchError }

/** No usable key set is held (none fetched yet, or the fetches failed): the token cannot be verified. */
export class JwksUnavailableError extends Error {
  override name = 'JwksUnavailableError'
}

/** One fetch of the key set failed; the message says why (status, timeout, size, JSON, shape). */
export class JwksFetchError extends Error {
  override name = 'JwksFetchError'
}

const ACCEPT = 'application/jwk-set+json, application/json'
/** Without any key set, the issuer is asked again at most this often (the 503's Retry-After). */
export const NO_KEYS_RETRY_MS = 5000

export class JwksCache {
  readonly url: string
  readonly #defaultTtlMs: number
  readonly #minTtlMs: number
  readonly #maxTtlMs: number
  readonly #cooldownMs: number
  readonly #timeoutMs: number
  readonly #maxBytes: number
  readonly #onFetch: ((result: JwksFetchResult) => void) | undefined

  /** The selector over the held set, and its canonical text to tell a changed set from a refetched one. */
  #keys: LocalJWKSet | undefined
  #keysText: string | undefined
  /** performance.now() (monotonic: a wall-clock step must not expire or pin the set) of the next background refresh. */
  #refreshAt = 0
  /** performance.now() when the last fetch settled, whatever its outcome; the cooldown runs from it. */
  #lastFetchAt: number | undefined
  #lastError: JwksFetchError | undefined
  #inFlight: Promise<void> | undefined
  #version = 0
  #fetches = 0
  #fetchErrors = 0

  constructor (url: string, options: JwksCacheOptions = {}, onFetch?: (result: JwksFetchResult) => void) {
    const parsed = new URL(url)
    if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') throw new TypeError(`JWKS url must be http(s), got ${url}`)
    this.url = url
    this.#defaultTtlMs = positive('defaultTtlMs', options.defaultTtlMs ?? 10 * 60_000)
    this.#minTtlMs = positive('minTtlMs', options.minTtlMs ?? 60_000)
    this.#maxTtlMs = positive('maxTtlMs', options.maxTtlMs ?? 24 * 3600_000)
    if (this.#minTtlMs > this.#maxTtlMs) throw new RangeError(`minTtlMs (${this.#minTtlMs}) must not exceed maxTtlMs (${this.#maxTtlMs})`)
    this.#cooldownMs = options.cooldownMs ?? 30_000
    if (!(this.#cooldownMs >= 0) || !Number.isFinite(this.#cooldownMs)) throw new RangeError(`cooldownMs must be >= 0, got ${this.#cooldownMs}`)
    this.#timeoutMs = positive('timeoutMs', options.timeoutMs ?? 5000)
    this.#maxBytes = positive('maxBytes', options.maxBytes ?? 512 * 1024)
    this.#onFetch = onFetch
  }

  /** Bumped whenever a fetch returns a key set different from the one held (0 until the first set). */
  get version (): number { return this.#version }
  /** Fetches started, and those that failed. */
  get fetches (): number { return this.#fetches }
  get fetchErrors (): number { return this.#fetchErrors }

  /**
   * A jose key resolver: pass `(header, token) => cache.getKey(header, token)` as jwtVerify's key.
   * Rejects with JwksUnavailableError when no key set can be had, and with jose's errors
   * (JWKSNoMatchingKey, JWKSMultipleMatchingKeys, JOSENotSupported) when the set has no single key
   * for the token.
   */
  async getKey (header: JWSHeaderParameters, token: FlattenedJWSInput): Promise<CryptoKey> {
    let keys = this.#keys
    if (keys === undefined) {
      keys = await this.#firstKeys()
    } else if (this.#inFlight === undefined && performance.now() >= this.#refreshAt) {
      // Not awaited (and it never rejects): the held set answers while the new one is fetched.
      this.#refresh()
    }
    try {
      return await keys(header, token)
    } catch (err) {
      // Other jose errors are about the token, not about a stale set: a fetch would not help. A
      // fetch already in flight is joined even within the cooldown: it costs the issuer nothing.
      if (!(err instanceof errors.JWKSNoMatchingKey)) throw err
      if (this.#inFlight === undefined && this.#coolingDown()) throw err
      await this.#refresh()
      const current = this.#keys
      if (current === undefined || current === keys) throw err
      return await current(header, token)
    }
  }

  async #firstKeys (): Promise<LocalJWKSet> {
    // No set yet and the last fetch failed moments ago: answer at once, spare the issuer. Without
    // keys every token fails, so this wait is shorter than the unknown-kid cooldown.
    if (this.#inFlight === undefined && this.#coolingDown(Math.min(this.#cooldownMs, NO_KEYS_RETRY_MS))) throw this.#unavailable()
    await this.#refresh()
    if (this.#keys === undefined) throw this.#unavailable()
    return this.#keys
  }

  #unavailable (): JwksUnavailableError {
    const reason = this.#lastError?.message ?? 'not fetched'
    return new JwksUnavailableError(`no JWKS key set from ${this.url}: ${reason}`, { cause: this.#lastError })
  }

  #coolingDown (ms = this.#cooldownMs): boolean {
    return this.#lastFetchAt !== undefined && performance.now() - this.#lastFetchAt < ms
  }

  /** The fetch in flight, or a new one: concurrent callers share it. Never rejects. */
  #refresh (): Promise<void> {
    this.#inFlight ??= this.#fetchAndApply().finally(() => { this.#inFlight = undefined })
    return this.#inFlight
  }

  async #fetchAndApply (): Promise<void> {
    this.#fetches++
    let result: JwksFetchResult
    try {
      const { keys, count, text, ttlMs } = await this.#download()
      const changed = text !== this.#keysText
      // An unchanged set keeps its selector, and with it the keys jose has already imported.
      if (changed) {
        this.#keys = keys
        this.#keysText = text
        this.#version++
      }
      this.#lastError = undefined
      this.#refreshAt = performance.now() + ttlMs
      result = { ok: true, keys: count, changed }
    } catch (err) {
      const error = err instanceof JwksFetchError ? err : new JwksFetchError(`JWKS fetch from ${this.url} failed: ${describe(err)}`, { cause: err })
      this.#fetchErrors++
      this.#lastError = error
      // A held set stays in use; the issuer is asked again no sooner than the cooldown.
      this.#refreshAt = performance.now() + this.#cooldownMs
      result = { ok: false, error }
    }
    this.#lastFetchAt = performance.now()
    try {
      this.#onFetch?.(result)
    } catch {
      // A failing listener (a log or metrics hook) must not make verification fail.
    }
  }

  async #download (): Promise<{ keys: LocalJWKSet, count: number, text: string, ttlMs: number }> {
    const fail = (why: string, cause?: unknown): JwksFetchError =>
      new JwksFetchError(`JWKS fetch from ${this.url} failed: ${why}`, cause === undefined ? undefined : { cause })
    // One signal for connect, headers and body: the whole fetch is bounded by timeoutMs.
    const signal = AbortSignal.timeout(this.#timeoutMs)
    let response: Response
    try {
      // redirect 'error': a redirect could take the fetch to a host the operator did not configure.
      response = await fetch(this.url, { headers: { accept: ACCEPT }, redirect: 'error', signal })
    } catch (err) {
      throw signal.aborted ? fail(`timed out after ${this.#timeoutMs} ms`, err) : fail(describe(err), err)
    }
    const declared = Number(response.headers.get('content-length') ?? NaN)
    const refusal = response.status !== 200
      ? `status ${response.status}`
      : declared > this.#maxBytes ? `body of ${declared} bytes is over the limit of ${this.#maxBytes}` : undefined
    if (refusal !== undefined) {
      // Release the connection instead of leaving an unread body behind.
      await response.body?.cancel().catch(() => {})
      throw fail(refusal)
    }
    let body: Uint8Array
    try {
      body = await this.#readBody(response, fail)
    } catch (err) {
      if (err instanceof JwksFetchError) throw err
      throw signal.aborted ? fail(`timed out after ${this.#timeoutMs} ms`, err) : fail(describe(err), err)
    }

    let json: unknown
    try {
      json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(body))
    } catch (err) {
      throw fail('body is not JSON', err)
    }
    if (!isObject(json) || !Array.isArray(json.keys)) throw fail('body has no "keys" array')
    const used: unknown[] = json.keys.filter(key => !(isObject(key) && key.use === 'enc'))
    if (!used.every(isObject)) throw fail('a member of "keys" is not an object')
    // A set without a single signature key would make every token fail; keep the held set instead.
    if (used.length === 0) throw fail('no signature keys in the set')
    const set: JSONWebKeySet = { keys: used as JWK[] }
    let keys: LocalJWKSet
    try {
      keys = createLocalJWKSet(set)
    } catch (err) {
      throw fail(`key set malformed: ${describe(err)}`, err)
    }
    const text = used.map(canonical).sort().join('\n')
    return { keys, count: used.length, text, ttlMs: this.#ttl(response.headers.get('cache-control')) }
  }

  /** The body, counted while it arrives so a body without (or lying about) Content-Length is bounded too. */
  async #readBody (response: Response, fail: (why: string) => JwksFetchError): Promise<Uint8Array> {
    if (response.body === null) return new Uint8Array()
    const chunks: Uint8Array[] = []
    let size = 0
    const reader = response.body.getReader()
    for (;;) {
      const { done, value } = await reader.read()
      if (done) break
      size += value.byteLength
      if (size > this.#maxBytes) {
        // Stop the download here rather than read the rest of an oversized body.
        await reader.cancel().catch(() => {})
        throw fail(`body is over the limit of ${this.#maxBytes} bytes`)
      }
      chunks.push(value)
    }
    return Buffer.concat(chunks)
  }

  /** TTL from Cache-Control max-age (s-maxage is for shared caches; this one is private). */
  #ttl (cacheControl: string | null): number {
    if (cacheControl === null) return this.#defaultTtlMs
    let maxAge: number | undefined
    for (const directive of cacheControl.split(',')) {
      const [rawName = '', rawValue] = directive.split('=', 2)
      const name = rawName.trim().toLowerCase()
      if (name === 'no-store' || name === 'no-cache') return this.#minTtlMs
      if (name !== 'max-age' || rawValue === undefined) continue
      const value = rawValue.trim().replace(/^"(.*)"$/, '$1')
      // Two max-age directives are ambiguous: the shorter is the safe reading.
      if (/^\d+$/.test(value)) maxAge = Math.min(maxAge ?? Infinity, Number(value))
    }
    if (maxAge === undefined) return this.#defaultTtlMs
    return Math.min(this.#maxTtlMs, Math.max(this.#minTtlMs, maxAge * 1000))
  }
}

function positive (name: string, value: number): number {
  if (!(value > 0) || !Number.isFinite(value)) throw new RangeError(`${name} must be a finite number > 0, got ${value}`)
  return value
}

function isObject (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** JSON with object members sorted, so the same key served in another member order compares equal. */
function canonical (value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`
  if (isObject(value)) {
    return `{${Object.keys(value).sort().map(k => `${JSON.stringify(k)}:${canonical(value[k])}`).join(',')}}`
  }
  return JSON.stringify(value) ?? 'null'
}

/** An error's message, with undici's underlying cause ("fetch failed" alone says nothing). */
function describe (err: unknown): string {
  if (!(err instanceof Error)) return String(err)
  const cause = err.cause instanceof Error ? `: ${err.cause.message}` : ''
  return `${err.message}${cause}`
}
