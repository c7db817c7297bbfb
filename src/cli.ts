#!/usr/bin/env node
// gatehouse start | check [dir]
// Only the signal module is imported statically: static imports all load before this file runs,
// and until the reload listeners exist a SIGUSR1 opens Node's inspector. The rest loads after.
import type { UpstreamConfig } from './config/route-file/index.js'
import { listenForReloads } from './reload-signals.js'

const USAGE = `Usage:
  gatehouse start          run the gateway (settings from the environment and .env)
  gatehouse check [dir]    validate the route files of dir (default: $ROUTES_DIR or ./routes.d)`

async function check (dir: string): Promise<number> {
  const { loadRouteDirStrict } = await import('./config/route-dir.js')
  const { routeFileWarnings } = await import('./config/route-file/index.js')
  try {
    const accepted = await loadRouteDirStrict(dir)
    const routes = [...accepted.values()].reduce((n, a) => n + a.config.routes.length, 0)
    for (const [file, { text }] of accepted) for (const warning of routeFileWarnings(file, text)) console.error(`warning: ${warning}`)
    const unresolved = await unresolvedNames([...accepted.values()].map(a => a.config))
    if (unresolved.length > 0) {
      console.error(unresolved.join('\n'))
      return 1
    }
    console.log(`${dir}: ok: ${accepted.size} route file(s), ${routes} route(s)`)
    return 0
  } catch (err) {
    console.error((err as Error).message)
    return 1
  }
}

/** Discover entries whose name has no address now, one line each (the gateway would start without them). */
async function unresolvedNames (configs: UpstreamConfig[]): Promise<string[]> {
  const { Discovery } = await import('./upstream/discovery.js')
  const discovery = new Discovery({ info () {}, warn () {} }, () => {})
  try {
    await discovery.sync(configs, 10_000)
    return configs.flatMap(c => c.discover.flatMap(d => {
      const watch = discovery.watchOf(c.name, d)
      if (watch === undefined || watch.addresses.length > 0) return []
      return [`${c.file}: ${d.at}/discover/dns: ${d.type} ${d.dns} has no address (${watch.failure ?? 'no answer'}); the gateway would start without it and answer 503 for its routes until it resolves`]
    }))
  } finally {
    discovery.stop()
  }
}

const [command = 'start', ...args] = process.argv.slice(2)
if (command === 'start') {
  listenForReloads()
  const { start } = await import('./server.js')
  await start()
} else if (command === 'check') {
  process.exitCode = await check(args[0] ?? process.env.ROUTES_DIR ?? './routes.d')
} else if (command === '--help' || command === '-h' || command === 'help') {
  console.log(USAGE)
} else {
  console.error(`gatehouse: unknown command "${command}"\n${USAGE}`)
  process.exitCode = 2
}
