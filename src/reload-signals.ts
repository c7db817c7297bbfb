// SIGUSR1 and SIGHUP reload the route files. SIGUSR1 is also Node's signal to open its inspector
// (a debugger port on 9229), which Node does for as long as no listener exists: the entry point
// installs these before it loads anything else. This module imports nothing for that reason.

let handler: (signal: NodeJS.Signals) => void = () => {}

/** Installs the listeners at once; until onReload() names a handler, a signal is ignored (the routes are about to be loaded fresh anyway). */
export function listenForReloads (): void {
  // SIGUSR1 first: once SIGHUP is caught, SIGUSR1 is too (a test relies on that order).
  process.on('SIGUSR1', signal => handler(signal))
  process.on('SIGHUP', signal => handler(signal))
}

export function onReload (fn: (signal: NodeJS.Signals) => void): void {
  handler = fn
}
