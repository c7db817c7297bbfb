// npm run demo builds only when a source changed since the last build. The build script touches
// dist/.built as its last step, so a build that failed halfway is never taken for a current one.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { readdir, stat } from 'node:fs/promises'
import { join, relative } from 'node:path'

export const BUILD_STAMP = join('dist', '.built')
/** What the build reads: the folders tsconfig.json includes, and the files that decide the output. */
const SOURCES = ['src', 'plugins', 'test', 'bench', 'demo', 'scripts', 'fuzz', 'tsconfig.json', 'package.json', 'package-lock.json']

/** Why `root` needs a build (the first source newer than the last build, or no build yet); undefined when current. */
export async function buildReason (root: string): Promise<string | undefined> {
  const built = await stat(join(root, BUILD_STAMP)).then(s => s.mtimeMs, () => undefined)
  if (built === undefined) return 'no finished build yet'
  for (const source of SOURCES) {
    const changed = await newerThan(join(root, source), built)
    if (changed !== undefined) return `${relative(root, changed)} changed since the last build`
  }
  return undefined
}

async function newerThan (path: string, ms: number): Promise<string | undefined> {
  const info = await stat(path).catch(() => undefined)
  if (info === undefined) return undefined
  if (!info.isDirectory()) return info.mtimeMs > ms ? path : undefined
  for (const entry of await readdir(path)) {
    const changed = await newerThan(join(path, entry), ms)
    if (changed !== undefined) return changed
  }
  return undefined
}

/** Runs `npm run build` in `root` when buildReason says so; says which it did. */
export async function buildIfChanged (root: string): Promise<void> {
  const reason = await buildReason(root)
  if (reason === undefined) {
    console.log('demo: the build is current (no source changed since it), not rebuilding')
    return
  }
  console.log(`demo: building (${reason})`)
  const build = spawn('npm', ['run', '--silent', 'build'], { cwd: root, stdio: 'inherit' })
  const [code] = await once(build, 'exit') as [number | null]
  if (code !== 0) throw new Error(`the build failed (npm run build exited with ${code}); see its errors above`)
}
