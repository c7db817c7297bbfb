// The repository root (the folder holding package.json), from dist/ or under tsx alike.
import { existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

/** The nearest folder above the module at `moduleUrl` (its import.meta.url) holding package.json. */
export function repoRoot (moduleUrl: string): string {
  let dir = dirname(fileURLToPath(moduleUrl))
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir)
    if (parent === dir) throw new Error('no package.json above ' + moduleUrl)
    dir = parent
  }
  return dir
}
