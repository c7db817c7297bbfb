// Durations and sizes: the same forms in the environment and in route files.
import Type from 'typebox'

const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/
const DURATION_FACTOR: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }
const SIZE = /^(\d+(?:\.\d+)?)([kKmMgG]?[bB])$/
const SIZE_FACTOR: Record<string, number> = { b: 1, kb: 1024, mb: 1024 ** 2, gb: 1024 ** 3 }

export const DURATION_EXPECTED = 'must be a duration: milliseconds (30000) or a number with ms, s, m or h (500ms, 2s, 1m)'
export const SIZE_EXPECTED = 'must be a size: bytes (1048576) or a number with b, kb, mb or gb (512kb, 1mb)'

/** A duration: integer milliseconds or a string such as `500ms`, `2s`, `1m`. */
export const Duration = (options: { description: string, default?: number | string }) => Type.Union([
  Type.Integer({ minimum: 0 }),
  Type.String({ pattern: DURATION.source })
], { ...options, errorMessage: DURATION_EXPECTED })

/** A size: integer bytes or a string such as `512kb`, `1mb`. */
export const Size = (options: { description: string, default?: number | string }) => Type.Union([
  Type.Integer({ minimum: 0 }),
  Type.String({ pattern: SIZE.source })
], { ...options, errorMessage: SIZE_EXPECTED })

/** Milliseconds from a value already checked against `Duration`. */
export function toMs (value: number | string): number {
  if (typeof value === 'number') return value
  const m = DURATION.exec(value)
  if (m === null) throw new Error(`not a duration: ${value}`)
  return Math.round(Number(m[1]) * (DURATION_FACTOR[m[2] as string] as number))
}

/** A duration as the docs write it: 30s, 1m, 250ms. */
export function formatMs (ms: number): string {
  if (ms >= 60_000 && ms % 60_000 === 0) return `${ms / 60_000}m`
  if (ms >= 1000 && ms % 1000 === 0) return `${ms / 1000}s`
  return `${ms}ms`
}

/** Bytes from a value already checked against `Size`. */
export function toBytes (value: number | string): number {
  if (typeof value === 'number') return value
  const m = SIZE.exec(value)
  if (m === null) throw new Error(`not a size: ${value}`)
  return Math.round(Number(m[1]) * (SIZE_FACTOR[(m[2] as string).toLowerCase()] as number))
}
