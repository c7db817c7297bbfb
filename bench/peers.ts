// The other proxies the bench compares against, installed OUTSIDE the project's dependencies: one
// npm install into ${TMPDIR:-/tmp}/gatehouse-bench-peers, reused by later runs while it holds the
// versions below. fast-gateway 5.0.1 asks for fast-proxy-lite ^1.1.3, which was never published:
// the override pins the last release, 1.1.2.
import { spawn } from 'node:child_process'
import { readFile, mkdir, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import os from 'node:os'
import { join } from 'node:path'

export const PEERS_DIR = join(os.tmpdir(), 'gatehouse-bench-peers')
const INSTALL_TIMEOUT_MS = 240_000

const MANIFEST = {
  name: 'gatehouse-bench-peers',
  version: '0.0.0',
  private: true,
  description: 'Installed by gatehouse npm run bench; safe to delete.',
  dependencies: {
    'fast-gateway': '5.0.1',
    '@fastify/http-proxy': '^11.0.0'
  },
  overrides: {
    'fast-proxy-lite': '1.1.2'
  }
}

/** Installed versions, keyed by package name. */
export type PeerVersions = Record<string, string>

async function installedVersion (name: string): Promise<string | undefined> {
  try {
    const pkg = JSON.parse(await readFile(join(PEERS_DIR, 'node_modules', name, 'package.json'), 'utf8')) as { version?: unknown }
    return typeof pkg.version === 'string' ? pkg.version : undefined
  } catch {
    return undefined
  }
}

async function versions (): Promise<PeerVersions | undefined> {
  const found: PeerVersions = {}
  for (const name of ['fast-gateway', 'fast-proxy-lite', '@fastify/http-proxy', '@fastify/reply-from']) {
    const v = await installedVersion(name)
    if (v === undefined) return undefined
    found[name] = v
  }
  const usable = found['fast-gateway'] === '5.0.1' && found['fast-proxy-lite'] === '1.1.2' && found['@fastify/http-proxy']?.startsWith('11.') === true
  return usable ? found : undefined
}

/**
 * The peers folder, installed if it is missing or holds other versions. `log` gets progress lines.
 * npm runs with the caller's npm configuration (its registry), minus what `npm run` set for this
 * project, and `--prefix` so it can only ever install into PEERS_DIR.
 */
export async function ensurePeers (log: (line: string) => void, track: (pid: number | undefined, kill: () => void) => void): Promise<PeerVersions> {
  const present = await versions()
  if (present !== undefined) {
    log(`peers: reusing ${PEERS_DIR}`)
    return present
  }
  log(`peers: npm install into ${PEERS_DIR} (once; later runs reuse it)`)
  await mkdir(PEERS_DIR, { recursive: true })
  await writeFile(join(PEERS_DIR, 'package.json'), JSON.stringify(MANIFEST, null, 2) + '\n')
  const env: Record<string, string> = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (value === undefined || /^npm_(package_|lifecycle_|config_local_prefix$|config_prefix$)/i.test(key)) continue
    env[key] = value
  }
  const npm = spawn('npm', ['install', '--prefix', PEERS_DIR, '--no-audit', '--no-fund', '--loglevel=error'], { cwd: PEERS_DIR, env, stdio: ['ignore', 'pipe', 'pipe'] })
  track(npm.pid, () => npm.kill('SIGKILL'))
  let output = ''
  npm.stdout.on('data', (chunk: Buffer) => { output += chunk.toString() })
  npm.stderr.on('data', (chunk: Buffer) => { output += chunk.toString() })
  const code = await new Promise<number | null>(resolve => {
    const timer = setTimeout(() => npm.kill('SIGKILL'), INSTALL_TIMEOUT_MS)
    npm.once('error', err => { output += err.message; clearTimeout(timer); resolve(null) })
    npm.once('exit', c => { clearTimeout(timer); resolve(c) })
  })
  const installed = await versions()
  if (code !== 0 || installed === undefined) {
    throw new Error(`npm install of the peers into ${PEERS_DIR} failed (exit ${code}):\n${output.trim().split('\n').slice(-20).join('\n')}`)
  }
  return installed
}

/** require() of the peers folder, for the peer scripts (they run in their own processes). */
export function peerRequire (): NodeJS.Require {
  return createRequire(join(process.env.PEERS_DIR ?? PEERS_DIR, 'package.json'))
}
