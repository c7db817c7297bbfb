// Where a route file's text stops being YAML or JSON, as line and column, with the line itself:
// the parsers' own messages either end in a code excerpt (yaml) or carry no position (V8's JSON).
import type { YAMLError } from 'yaml'

/** `not valid YAML at line L, column C: <what> (line L: "<text>")`. */
export function yamlProblem (err: YAMLError, text: string): string {
  const what = (err.message.split('\n')[0] ?? '').replace(/ at line \d+, column \d+:?$/, '')
  const at = err.linePos?.[0]
  return at === undefined ? `not valid YAML: ${what}` : `not valid YAML at line ${at.line}, column ${at.col}: ${what}${quoteLine(text, at.line)}`
}

/** `not valid JSON at line L, column C: <V8's message> (line L: "<text>")`. */
export function jsonProblem (err: Error, text: string): string {
  const offset = jsonErrorOffset(text)
  const what = err.message.replace(/\s*\n\s*/g, ' ')
  if (offset === undefined) return `not valid JSON: ${what}`
  const before = text.slice(0, offset).split('\n')
  const line = before.length
  return `not valid JSON at line ${line}, column ${(before.at(-1)?.length ?? 0) + 1}: ${what}${quoteLine(text, line)}`
}

function quoteLine (text: string, line: number): string {
  const content = text.split('\n')[line - 1]?.trimEnd()
  if (content === undefined || content.trim() === '') return ''
  return ` (line ${line}: ${JSON.stringify(content.length > 80 ? `${content.slice(0, 80)}…` : content)})`
}

/**
 * The offset of the first character that makes `text` not JSON (RFC 8259), or undefined if it is
 * JSON. A recursive descent over the grammar: only called once JSON.parse has already failed.
 */
export function jsonErrorOffset (text: string): number | undefined {
  let i = 0
  const ws = (): void => { while (i < text.length && ' \t\n\r'.includes(text[i] as string)) i++ }
  const fail = (): never => { throw i }
  const literal = (word: string): void => { if (text.startsWith(word, i)) i += word.length; else fail() }
  const string = (): void => {
    i++ // the opening quote
    while (i < text.length) {
      const c = text.charCodeAt(i)
      if (c === 0x22) { i++; return }
      if (c < 0x20) fail()
      if (c === 0x5c) {
        const next = text[i + 1] ?? ''
        if (next === 'u') {
          if (!/^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) { i += 2; fail() }
          i += 6
        } else if ('"\\/bfnrt'.includes(next) && next !== '') {
          i += 2
        } else {
          i++
          fail()
        }
        continue
      }
      i++
    }
    fail()
  }
  const number = (): void => {
    const m = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i))
    if (m === null || m[0] === '' || m[0] === '-') fail()
    i += (m as RegExpExecArray)[0].length
  }
  const value = (): void => {
    ws()
    const c = text[i]
    if (c === '{') {
      i++
      ws()
      if (text[i] === '}') { i++; return }
      for (;;) {
        ws()
        if (text[i] !== '"') fail()
        string()
        ws()
        if (text[i] !== ':') fail()
        i++
        value()
        ws()
        if (text[i] === ',') { i++; continue }
        if (text[i] === '}') { i++; return }
        fail()
      }
    } else if (c === '[') {
      i++
      ws()
      if (text[i] === ']') { i++; return }
      for (;;) {
        value()
        ws()
        if (text[i] === ',') { i++; continue }
        if (text[i] === ']') { i++; return }
        fail()
      }
    } else if (c === '"') {
      string()
    } else if (c === 't') {
      literal('true')
    } else if (c === 'f') {
      literal('false')
    } else if (c === 'n') {
      literal('null')
    } else {
      number()
    }
  }
  try {
    value()
    ws()
    if (i < text.length) fail()
    return undefined
  } catch (at) {
    if (typeof at !== 'number') throw at
    return Math.min(at, text.length)
  }
}
