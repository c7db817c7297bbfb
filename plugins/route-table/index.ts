// Owns the live route table: strict load at start, then reloads (SIGUSR1, file changes) that
// apply each valid file, keep the last good version of a broken one, and swap the table whole.
import { watch, type FSWatcher } from 'node:fs'
import { extname } from 'node:path'
import type { FastifyInstance, onRequestHookHandler } from 'fastify'
import fp from 'fastify-plugin'
import { loadRouteDirStrict, readRouteDir, resolveRouteFiles, type AcceptedFile } from '../../src/config/route-dir.js'
import { ROUTE_FILE_EXTENSIONS } from '../../src/config/route-file/index.js'
import { Discovery } from '../../src/upstream/discovery.js'
import type { Target, TargetTransitionListener } from '../../src/upstream/target.js'
import { routeResolver, type RouteMatch } from './resolve.js'
import { buildRouteTable, type BuildResult, type BuildSources, type RouteDefaults, type RouteTable } from './route-table.js'

export type { RouteMatch } from './resolve.js'

export interface RouteTableOptions {
  routesDir: string
  /** What routes that set none get: BODY_LIMIT, REQUEST_BUFFER_SIZE. */
  defaults: RouteDefaults
  /** Reload on file changes in routesDir. */
  watch: boolean
  debounceMs: number
}

export interface ReloadReport {
  ok: boolean
  version: number
  applied: string[]
  failed: string[]
}

export interface RouteTableHolder {
  /** The table new requests use. Requests in flight keep the one they started with. */
  readonly table: RouteTable
  /** Re-reads routesDir; concurrent calls are coalesced into one more run. */
  reload: (reason: string) => Promise<ReloadReport>
  /** Reload outcomes since start, for metrics. */
  readonly reloads: { success: number, failure: number }
  /** The DNS watches of discover entries. */
  readonly discovery: Discovery
}

// How long a start or reload waits for new DNS names' first answers before it goes on without them.
const FIRST_ANSWER_WAIT_MS = 3000

declare module 'fastify' {
  interface FastifyInstance {
    routeTable: RouteTableHolder
    /** Pipeline hook: resolves the request's route (request.match) or answers 404/400. */
    resolveRoute: onRequestHookHandler
  }
  interface FastifyRequest {
    /** The route this request matched (set by resolveRoute, so later hooks can use it). */
    match: RouteMatch | null
  }
}

async function routeTablePlugin (app: FastifyInstance, opts: RouteTableOptions): Promise<void> {
  // A dead target is logged when it goes down and when it is back, not at every probe between
  // (open → half-open → open every openFor): those are at debug, and counted in the closing line.
  const down = new WeakMap<Target, { since: number, probesFailed: number }>()
  const onTransition: TargetTransitionListener = (target, from, to, cause) => {
    const fields = { upstream: target.upstream, target: target.origin, from, to, cause }
    if (from === 'closed') {
      down.set(target, { since: Date.now(), probesFailed: 0 })
      app.log.warn(fields, 'circuit breaker state changed')
    } else if (to === 'closed') {
      const was = down.get(target)
      down.delete(target)
      app.log.info({ ...fields, downMs: was === undefined ? undefined : Date.now() - was.since, probesFailed: was?.probesFailed }, 'circuit breaker state changed')
    } else {
      const was = down.get(target)
      if (was !== undefined && to === 'open') was.probesFailed++
      app.log.debug(fields, 'circuit breaker state changed')
    }
  }
  let accepted: Map<string, AcceptedFile> = await loadRouteDirStrict(opts.routesDir)
  let ready = false
  // A DNS answer that changes an address set rebuilds the table from the same files.
  const discovery = new Discovery(app.log, watch => {
    if (!ready) return
    const fields = { upstream: watch.upstream, dns: watch.name }
    try {
      apply(buildRouteTable(configsOf(accepted), opts.defaults, table, sources))
      app.log.debug({ ...fields, version: table.version }, 'route table rebuilt: DNS changed')
    } catch (err) {
      app.log.error({ ...fields, err }, 'rebuilding the route table after a DNS change failed: the current table keeps serving')
    }
  })
  const sources: BuildSources = { onTransition, watchOf: (upstream, d) => discovery.watchOf(upstream, d), log: app.log }
  await discovery.sync(configsOf(accepted), FIRST_ANSWER_WAIT_MS)
  let table = buildRouteTable(configsOf(accepted), opts.defaults, undefined, sources).table
  syncHealthChecks(undefined, table)
  ready = true
  const reloads = { success: 0, failure: 0 }
  app.log.info({ version: table.version, files: [...accepted.keys()] }, 'route table loaded')
  if (accepted.size === 0) app.log.warn({ routesDir: opts.routesDir }, 'no route files: every request will get 404')

  let running: Promise<ReloadReport> | undefined
  let again = false

  async function reloadOnce (reason: string): Promise<ReloadReport> {
    const read = await readRouteDir(opts.routesDir)
    const resolution = resolveRouteFiles(read.files, accepted)
    const failures = [...read.failures, ...resolution.failures]
    const applied = [...resolution.accepted.keys()].filter(f => accepted.get(f) !== resolution.accepted.get(f))
    const removedFiles = [...accepted.keys()].filter(f => !resolution.accepted.has(f))
    // New DNS names get their first answer before their routes serve.
    await discovery.sync(configsOf(resolution.accepted), FIRST_ANSWER_WAIT_MS)
    apply(buildRouteTable(configsOf(resolution.accepted), opts.defaults, table, sources))
    accepted = resolution.accepted
    for (const failure of failures) {
      app.log.error({ file: failure.file, problems: failure.problems, reason }, `route file rejected, ${accepted.has(failure.file) ? 'its last good version keeps serving' : 'it does not serve'}`)
    }
    const ok = failures.length === 0
    if (ok) reloads.success++
    else reloads.failure++
    app.log.info({ version: table.version, reason, applied, removed: removedFiles, failed: failures.map(f => f.file) }, 'route table reloaded')
    return { ok, version: table.version, applied, failed: failures.map(f => f.file) }
  }

  function reload (reason: string): Promise<ReloadReport> {
    if (running !== undefined) {
      again = true
      return running
    }
    running = (async () => {
      try {
        let report = await reloadOnce(reason)
        while (again) {
          again = false
          report = await reloadOnce(reason)
        }
        return report
      } catch (err) {
        // The folder itself is unreadable: keep serving what we have.
        reloads.failure++
        app.log.error({ err, routesDir: opts.routesDir, reason }, 'route reload failed, the current table keeps serving')
        return { ok: false, version: table.version, applied: [], failed: [] }
      } finally {
        running = undefined
      }
    })()
    return running
  }

  let watcher: FSWatcher | undefined
  let debounce: NodeJS.Timeout | undefined
  if (opts.watch) {
    watcher = watch(opts.routesDir, { persistent: false }, (_event, name) => {
      if (!mayChangeRoutes(name)) return
      clearTimeout(debounce)
      debounce = setTimeout(() => { reload('file change').catch(() => {}) }, opts.debounceMs)
      debounce.unref()
    })
    watcher.on('error', err => app.log.error({ err, routesDir: opts.routesDir }, 'watching the routes folder failed; SIGUSR1 still reloads'))
  }

  /** Swaps in a new table, drains the targets it no longer has, and moves health checks along. */
  function apply (built: BuildResult): void {
    const before = table
    // The swap: one assignment. A request reads `table` once, so it never sees half a reload.
    table = built.table
    for (const target of built.removed) {
      // close() lets requests already sent finish, then frees the sockets.
      target.pool.close().catch(err => app.log.warn({ err, target: target.origin }, 'closing a removed target failed'))
      // Its tunnels get websocket.closeDelay to finish on their own (clients reconnect elsewhere meanwhile).
      if (target.tunnels.open.size > 0) setTimeout(() => target.tunnels.closeAll('target-removed'), target.tunnels.closeDelayMs).unref()
    }
    syncHealthChecks(before, table)
  }

  app.decorate('routeTable', {
    get table () { return table },
    reload,
    reloads,
    discovery
  })
  app.decorateRequest('match', null)
  app.decorate('resolveRoute', routeResolver(() => table))

  app.addHook('onClose', async () => {
    watcher?.close()
    clearTimeout(debounce)
    await running
    discovery.stop()
    for (const u of table.upstreams) u.health?.stop()
    await Promise.all([...table.targets.values()].map(t => t.pool.close()))
  })
}

/** Probes follow the table: every upstream with healthCheck probes its current targets; checkers no upstream has any more stop. */
function syncHealthChecks (before: RouteTable | undefined, after: RouteTable): void {
  const live = new Set(after.upstreams.map(u => u.health))
  for (const u of before?.upstreams ?? []) if (u.health !== undefined && !live.has(u.health)) u.health.stop()
  for (const u of after.upstreams) u.health?.track(u.targets)
}

function configsOf (accepted: Map<string, AcceptedFile>) {
  return [...accepted.values()].map(a => a.config)
}

export default fp(routeTablePlugin, { name: 'gatehouse-route-table', fastify: '5.x' })

/**
 * Whether a change to `name` in the routes folder can change the routes: a route file, or the
 * kubelet's `..data` swap of a ConfigMap (route files are symlinks through it). Anything else, a
 * log file written there or an editor's swap file, is not a reason to reload: a log file in the
 * folder would otherwise reload the table on every line it receives, for ever.
 */
function mayChangeRoutes (name: string | null): boolean {
  if (name === null) return true // the platform did not say which file
  if (name.startsWith('..')) return true
  return !name.startsWith('.') && ROUTE_FILE_EXTENSIONS.includes(extname(name))
}
