// Turns TypeBox errors into one line per problem, `/json/pointer: what was expected`, so an
// operator can fix every mistake of a file in one pass.
import type { TSchema } from 'typebox'
import { Settings } from 'typebox/system'
import Value from 'typebox/value'

// TypeBox stops after 8 errors and a union spends one per branch: report every problem.
Settings.Set({ maxErrors: 1000 })

interface SchemaError {
  keyword: string
  schemaPath: string
  instancePath: string
  params: Record<string, unknown>
  message: string
}

/** Every problem of `value` against `schema`, as `path: message` lines; empty when valid. */
export function schemaErrors (schema: TSchema, value: unknown): string[] {
  if (Value.Check(schema, value)) return []
  const errors = [...Value.Errors(schema, value)] as SchemaError[]
  const lines: string[] = []
  // A union reports each failed branch and then itself; its own errorMessage says it better.
  const unionPaths = errors.filter(e => e.keyword === 'anyOf').map(e => e.schemaPath + '/anyOf/')
  for (const e of errors) {
    if (unionPaths.some(p => e.schemaPath.startsWith(p))) continue
    // additionalProperties also reports each extra key as a `false` schema: keep one line per key.
    if (e.keyword === 'boolean') continue
    const where = e.instancePath === '' ? '/' : e.instancePath
    const custom = schemaAt(schema, e.schemaPath)?.errorMessage
    if (e.keyword === 'additionalProperties') {
      const allowed = Object.keys((schemaAt(schema, e.schemaPath)?.properties ?? {}) as object)
      for (const key of e.params.additionalProperties as string[]) {
        lines.push(`${e.instancePath}/${key}: unknown key (allowed: ${allowed.join(', ')})`)
      }
    } else if (e.keyword === 'required') {
      for (const key of e.params.requiredProperties as string[]) {
        lines.push(`${e.instancePath}/${key}: is required`)
      }
    } else if (typeof custom === 'string') {
      lines.push(`${where}: ${custom}`)
    } else if (e.keyword === 'type') {
      lines.push(`${where}: ${typeMessage(e.params.type, schemaAt(schema, e.schemaPath)?.examples, valueAt(value, e.instancePath))}`)
    } else {
      lines.push(`${where}: ${e.message}`)
    }
  }
  return [...new Set(lines)]
}

const TYPE_NAMES: Record<string, string> = { array: 'a list', object: 'a mapping of keys to values', string: 'a string', integer: 'a whole number', number: 'a number', boolean: 'true or false' }

/** What a value of the wrong type should have been, with the schema's first example and what was given. */
function typeMessage (type: unknown, examples: unknown, given: unknown): string {
  const expected = TYPE_NAMES[String(type)] ?? String(type)
  const example = Array.isArray(examples) && examples.length > 0 ? `, e.g. ${flow(examples[0])}` : ''
  return `must be ${expected}${example} (got ${given === null ? 'null' : Array.isArray(given) ? 'a list' : typeof given === 'object' ? 'a mapping' : flow(given)})`
}

/** A value as a route file would write it inline: [GET, POST], { max: 10 }, 30s. */
function flow (value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(flow).join(', ')}]`
  if (value !== null && typeof value === 'object') return `{ ${Object.entries(value).map(([k, v]) => `${k}: ${flow(v)}`).join(', ')} }`
  const text = String(value).length > 40 ? `${String(value).slice(0, 40)}…` : String(value)
  // Anything but a plain word is quoted, so a newline or a control character stays on its line.
  return typeof value === 'string' && !/^[\w.:/@+-]+$/.test(text) ? JSON.stringify(text) : text
}

function valueAt (value: unknown, pointer: string): unknown {
  let node = value
  for (const part of pointer.split('/').slice(1)) {
    if (node === null || typeof node !== 'object') return undefined
    node = (node as Record<string, unknown>)[part.replace(/~1/g, '/').replace(/~0/g, '~')]
  }
  return node
}

function schemaAt (schema: TSchema, pointer: string): Record<string, unknown> | undefined {
  let node: unknown = schema
  for (const part of pointer.replace(/^#\/?/, '').split('/')) {
    if (part === '') continue
    if (node === null || typeof node !== 'object') return undefined
    node = (node as Record<string, unknown>)[part.replace(/~1/g, '/').replace(/~0/g, '~')]
  }
  return node as Record<string, unknown> | undefined
}
