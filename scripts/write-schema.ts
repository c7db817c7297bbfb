// Publishes the route-file contract as JSON Schema (schema/route-file.schema.json) for editors:
// `# yaml-language-server: $schema=../schema/route-file.schema.json` at the top of a route file.
// Generated from RouteFileSchema so the editor and the gateway cannot drift; `npm run schema`
// rewrites the file and test/schema.test.ts fails when the committed copy is stale.
import { realpathSync } from 'node:fs'
import { mkdir, writeFile } from 'node:fs/promises'
import { dirname, join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import { RouteFileSchema } from '../src/config/route-file/index.js'
import { repoRoot } from '../src/repo-root.js'

type JsonObject = { [key: string]: unknown }

/** Where the published schema lives. */
export const SCHEMA_FILE = join(repoRoot(import.meta.url), 'schema', 'route-file.schema.json')

/**
 * The gateway fills defaults before it checks a file (parseRouteFile: Default, then Check), so a
 * key with a default is optional to whoever writes the file. TypeBox lists such keys as required
 * (they are, after defaults); an editor checking the raw file must not, or it would flag
 * `- url: http://...` without `weight` that the gateway accepts.
 */
function optionalDefaults (node: unknown): unknown {
  if (Array.isArray(node)) return node.map(optionalDefaults)
  if (node === null || typeof node !== 'object') return node
  const out: JsonObject = {}
  for (const [key, value] of Object.entries(node)) out[key] = optionalDefaults(value)
  const properties = out.properties as Record<string, JsonObject> | undefined
  if (Array.isArray(out.required) && properties !== undefined) {
    const required = (out.required as string[]).filter(k => properties[k]?.default === undefined)
    if (required.length > 0) out.required = required
    else delete out.required
  }
  return out
}

/** The published schema as an object: draft-07, `$id`/title/description first, then the rest. */
export function routeFileJsonSchema (): JsonObject {
  // A JSON round trip keeps exactly what a JSON Schema consumer sees (no symbols, no functions).
  const plain = JSON.parse(JSON.stringify(RouteFileSchema)) as JsonObject
  const { $id, title, description, ...rest } = optionalDefaults(plain) as JsonObject
  return { $schema: 'http://json-schema.org/draft-07/schema#', $id, title, description, ...rest }
}

/** The exact text of schema/route-file.schema.json: two-space indent, trailing newline. */
export function routeFileSchemaText (): string {
  return JSON.stringify(routeFileJsonSchema(), null, 2) + '\n'
}

async function main (): Promise<void> {
  await mkdir(dirname(SCHEMA_FILE), { recursive: true })
  await writeFile(SCHEMA_FILE, routeFileSchemaText())
  console.log(`wrote ${relative(process.cwd(), SCHEMA_FILE)}`)
}

// Run as a script (not imported by the test): argv[1] may be a symlink, import.meta.url never is.
if (process.argv[1] !== undefined && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  await main()
}
