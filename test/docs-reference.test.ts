// The docs a newcomer finds their way in: the reference tables the schemas describe (environment
// variables, route-file keys) are the committed output of `npm run docs`, and every link between
// README.md and docs/*.md reaches a file that exists and, with an #anchor, a heading of it.
import { strict as assert } from 'node:assert'
import { existsSync } from 'node:fs'
import { readdir, readFile } from 'node:fs/promises'
import { dirname, join, normalize } from 'node:path'
import { test } from 'node:test'
import { EnvSchema } from '../src/config/env.js'
import { generatedPages } from '../scripts/write-docs.js'
import { ROOT } from './helpers.js'

async function pages (): Promise<string[]> {
  return ['README.md', ...(await readdir(join(ROOT, 'docs'))).filter(f => f.endsWith('.md')).map(f => `docs/${f}`)]
}

test('the generated reference tables are current (npm run docs)', async () => {
  for (const [page, expected] of await generatedPages()) {
    assert.equal(await readFile(join(ROOT, page), 'utf8'), expected, `${page} is stale: run \`npm run docs\` and commit the result`)
  }
  // What the generator reads really reaches the page: one row per variable, with its default.
  const operations = await readFile(join(ROOT, 'docs', 'operations.md'), 'utf8')
  for (const name of Object.keys(EnvSchema.properties)) assert.match(operations, new RegExp(`^\\| \`${name}\` \\|`, 'm'), name)
  assert.match(operations, /^\| `REQUEST_TIMEOUT` \| `30s` \| Time a client gets/m)
  const routeFiles = await readFile(join(ROOT, 'docs', 'route-files.md'), 'utf8')
  assert.match(routeFiles, /^\| `circuitBreaker\.openFor` \| duration \| `5s` \| /m)
  assert.match(routeFiles, /^\| `routes\[\]\.methods` \| list of `GET`, .* \| all \| Methods this route serves\. \|$/m)
})

/** GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens. */
function slug (heading: string): string {
  return heading.trim().toLowerCase().replace(/[^\p{L}\p{N} _-]/gu, '').replace(/ /g, '-')
}

test('every relative link of the README and docs reaches a file, and its #anchor a heading there', async () => {
  const broken: string[] = []
  const headings = new Map<string, Set<string>>()
  const anchorsOf = async (file: string): Promise<Set<string>> => {
    let set = headings.get(file)
    if (set === undefined) {
      const text = (await readFile(join(ROOT, file), 'utf8')).replace(/^```[\s\S]*?^```/gm, '')
      set = new Set([...text.matchAll(/^#+ (.+)$/gm)].map(m => slug(m[1] as string)))
      headings.set(file, set)
    }
    return set
  }
  for (const page of await pages()) {
    const text = (await readFile(join(ROOT, page), 'utf8')).replace(/^```[\s\S]*?^```/gm, '')
    for (const [, href] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
      if (href === undefined || /^[a-z]+:/.test(href)) continue
      const [path, anchor] = href.split('#') as [string, string | undefined]
      const file = path === '' ? page : normalize(join(dirname(page), path))
      if (!existsSync(join(ROOT, file))) { broken.push(`${page}: ${href} (no such file)`); continue }
      if (anchor !== undefined && file.endsWith('.md') && !(await anchorsOf(file)).has(anchor)) broken.push(`${page}: ${href} (no such heading)`)
    }
  }
  assert.deepEqual(broken, [])
})
