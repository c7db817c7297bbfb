// Reads ROUTES_DIR and decides which route files serve: each file stands or falls on its own,
// a file that fails keeps its last good version, and no two files may claim the same route.
import { readdir, readFile } from 'node:fs/promises'
import { extname, join } from 'node:path'
import { ConfigRoutesError } from '../errors.js'
import { parseRouteFile, ROUTE_FILE_EXTENSIONS, RouteFileError, routeClaims, type UpstreamConfig } from './route-file/index.js'

export interface RouteFileText { file: string, text: string }

/** A file that serves: its text (to skip re-parsing it when unchanged) and its config. */
export interface AcceptedFile { text: string, config: UpstreamConfig }

export interface Resolution {
  /** File name → the version that serves. */
  accepted: Map<string, AcceptedFile>
  /** Files that failed; a failed file with an earlier good version keeps serving it. */
  failures: RouteFileError[]
}

/** Route files of `dir` (YAML/JSON, not hidden: ConfigMap mounts keep their internals in `..data`). */
export async function readRouteDir (dir: string): Promise<{ files: RouteFileText[], failures: RouteFileError[] }> {
  const names = (await readdir(dir)).filter(n => !n.startsWith('.') && ROUTE_FILE_EXTENSIONS.includes(extname(n))).sort()
  const files: RouteFileText[] = []
  const failures: RouteFileError[] = []
  await Promise.all(names.map(async file => {
    try {
      files.push({ file, text: await readFile(join(dir, file), 'utf8') })
    } catch (err) {
      failures.push(new RouteFileError(file, [`cannot be read: ${(err as Error).message}`]))
    }
  }))
  files.sort((a, b) => a.file < b.file ? -1 : 1)
  return { files, failures }
}

/**
 * Decides what serves. Files unchanged since `previous` are placed first, so a changed file can
 * never take a route or name from a file that is already serving.
 */
export function resolveRouteFiles (files: RouteFileText[], previous: ReadonlyMap<string, AcceptedFile> = new Map()): Resolution {
  const failures: RouteFileError[] = []
  const unchanged: Array<[string, AcceptedFile]> = []
  const changed: Array<[string, AcceptedFile]> = []
  for (const { file, text } of files) {
    const before = previous.get(file)
    if (before !== undefined && before.text === text) {
      unchanged.push([file, before])
      continue
    }
    try {
      changed.push([file, { text, config: parseRouteFile(file, text) }])
    } catch (err) {
      // An input no check foresaw still fails only its own file, with the file named.
      failures.push(err instanceof RouteFileError ? err : new RouteFileError(file, [`could not be loaded: ${(err as Error).message}`]))
      if (before !== undefined) unchanged.push([file, before])
    }
  }

  const accepted = new Map<string, AcceptedFile>()
  const claims = new Map<string, string>()
  const names = new Map<string, string>()
  const take = (file: string, entry: AcceptedFile): string[] => {
    const problems = conflicts(entry.config, claims, names)
    if (problems.length > 0) return problems
    accepted.set(file, entry)
    names.set(entry.config.name, file)
    for (const route of entry.config.routes) for (const claim of routeClaims(route)) claims.set(claim, file)
    return []
  }
  for (const [file, entry] of unchanged) take(file, entry)
  for (const [file, entry] of changed) {
    const problems = take(file, entry)
    if (problems.length === 0) continue
    failures.push(new RouteFileError(file, problems))
    const before = previous.get(file)
    if (before !== undefined && !accepted.has(file)) take(file, before)
  }
  return { accepted, failures }
}

function conflicts (config: UpstreamConfig, claims: Map<string, string>, names: Map<string, string>): string[] {
  const problems: string[] = []
  const owner = names.get(config.name)
  if (owner !== undefined) problems.push(`/name: upstream name "${config.name}" is already used by ${owner}`)
  config.routes.forEach((route, i) => {
    for (const claim of routeClaims(route)) {
      const other = claims.get(claim)
      if (other !== undefined) {
        problems.push(`/routes/${i}: ${claim.replace(' * ', ' (any host) ')} is already claimed by ${other}`)
        return
      }
    }
  })
  return problems
}

/** Loads a folder for start or `gatehouse check`: any failure is fatal and all are listed. */
export async function loadRouteDirStrict (dir: string): Promise<Map<string, AcceptedFile>> {
  let read
  try {
    read = await readRouteDir(dir)
  } catch (err) {
    throw new ConfigRoutesError(`${dir}: cannot be read: ${(err as Error).message}`, { cause: err })
  }
  const { accepted, failures } = resolveRouteFiles(read.files)
  const all = [...read.failures, ...failures]
  if (all.length > 0) throw new ConfigRoutesError(all.map(f => f.message).join('\n'))
  return accepted
}
