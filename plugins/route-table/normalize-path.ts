// Normalises a request path before matching, so what is matched is what is forwarded
// (RFC 3986 §5.2.4 dot-segment removal, including percent-encoded dots).
import { BadPathError } from '../../src/errors.js'

/**
 * Resolves `.`/`..` (also `%2e` forms) and merges repeated slashes. Refuses (BadPathError)
 * backslashes, NUL, malformed percent-encoding, and `..` that would climb above the root.
 * Most paths contain none of `.`, `%`, `\` or `//` and are returned as they are.
 */
export function normalizePath (path: string): string {
  if (path.indexOf('.') === -1 && path.indexOf('%') === -1 && path.indexOf('\\') === -1 && path.indexOf('//') === -1) {
    return path
  }
  if (path.indexOf('\\') !== -1) throw new BadPathError('backslash in path')
  for (let i = path.indexOf('%'); i !== -1; i = path.indexOf('%', i + 1)) {
    if (!isHex(path.charCodeAt(i + 1)) || !isHex(path.charCodeAt(i + 2))) throw new BadPathError('malformed percent-encoding')
    if (path[i + 1] === '0' && path[i + 2] === '0') throw new BadPathError('NUL in path')
  }
  const segments = path.split('/')
  const out: string[] = []
  const last = segments.length - 1
  let trailingSlash = false
  for (let i = 1; i <= last; i++) {
    const segment = segments[i] as string
    const dots = dotSegment(segment)
    if (dots === 1) {
      trailingSlash = i === last
    } else if (dots === 2) {
      if (out.length === 0) throw new BadPathError('.. climbs above the root')
      out.pop()
      trailingSlash = i === last
    } else if (segment === '') {
      trailingSlash = i === last
    } else {
      out.push(segment)
      trailingSlash = false
    }
  }
  const joined = '/' + out.join('/')
  return trailingSlash && out.length > 0 ? joined + '/' : joined
}

/**
 * Whether a normalised path holds an encoded slash or backslash. They are matched and forwarded
 * encoded, but an upstream that decodes them into separators would see other segments (and
 * `..` among them) than the gateway matched: refused unless the route allows them.
 */
export function hasEncodedSlash (path: string): boolean {
  return path.indexOf('%') !== -1 && /%(2f|5c)/i.test(path)
}

/** 1 for `.`, 2 for `..` (plain or percent-encoded, any case), 0 otherwise. */
function dotSegment (segment: string): 0 | 1 | 2 {
  if (segment.length === 0 || segment.length > 6) return 0
  const s = segment.toLowerCase().replaceAll('%2e', '.')
  return s === '.' ? 1 : s === '..' ? 2 : 0
}

function isHex (c: number): boolean {
  return (c >= 48 && c <= 57) || (c >= 65 && c <= 70) || (c >= 97 && c <= 102)
}
