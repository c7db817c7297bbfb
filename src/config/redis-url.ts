// REDIS_URL names one of three Redis set-ups. One variable keeps a Deployment's env short, and
// the scheme says which client to build:
//   redis://[user:pass@]host[:port][/db]                   one node (rediss:// for TLS)
//   redis+cluster://[user:pass@]host:port[,host:port...]   Redis Cluster, any of its nodes to start from
//   redis+sentinel://[user:pass@]host:port[,host:port...]/master-name[/db]
//                                                          Sentinel; ?sentinelUsername=&sentinelPassword=
//                                                          when the sentinels want their own credentials
// (rediss+cluster://, rediss+sentinel://: the same with TLS.)

export interface RedisNode { host: string, port: number }

export type RedisConnection =
  | { mode: 'single', url: string }
  | { mode: 'cluster', nodes: RedisNode[], tls: boolean, username?: string, password?: string }
  | {
    mode: 'sentinel'
    sentinels: RedisNode[]
    name: string
    db: number
    tls: boolean
    username?: string
    password?: string
    sentinelUsername?: string
    sentinelPassword?: string
  }

const FORM = /^(rediss?)(\+cluster|\+sentinel)?:\/\/(?:([^@/]*)@)?([^/?#]+)(\/[^?#]*)?(?:\?([^#]*))?$/

/** Parses REDIS_URL; throws an Error whose message says what is wrong, never echoing a password. */
export function parseRedisUrl (text: string): RedisConnection {
  const m = FORM.exec(text.trim())
  if (m === null) throw new Error('must be redis://host:port, redis+cluster://host:port,host:port or redis+sentinel://host:port,host:port/master-name (rediss for TLS)')
  const [, scheme, kind, auth, hosts, path = '', query = ''] = m as unknown as [string, string, string | undefined, string | undefined, string, string | undefined, string | undefined]
  if (kind === undefined) {
    if (hosts.includes(',')) throw new Error('lists several hosts: use redis+cluster:// or redis+sentinel://')
    return { mode: 'single', url: text.trim() }
  }
  const tls = scheme === 'rediss'
  const credentials = parseAuth(auth)
  const defaultPort = kind === '+cluster' ? 6379 : 26379
  const nodes = hosts.split(',').map(h => parseNode(h, defaultPort))
  if (kind === '+cluster') {
    if (path !== '' && path !== '/') throw new Error('a Redis Cluster has only database 0: drop the path')
    return { mode: 'cluster', nodes, tls, ...credentials }
  }
  const [, name = '', db = '0', extra] = path.split('/')
  if (name === '') throw new Error('redis+sentinel:// needs the master name as its path: redis+sentinel://host:26379/mymaster')
  if (!/^\d+$/.test(db) || extra !== undefined) throw new Error(`"${path}" is not /master-name or /master-name/db`)
  const params = new URLSearchParams(query)
  for (const key of params.keys()) {
    if (key !== 'sentinelUsername' && key !== 'sentinelPassword') throw new Error(`unknown parameter "${key}" (known: sentinelUsername, sentinelPassword)`)
  }
  return {
    mode: 'sentinel',
    sentinels: nodes,
    name: decodeURIComponent(name),
    db: Number(db),
    tls,
    ...credentials,
    ...(params.has('sentinelUsername') ? { sentinelUsername: params.get('sentinelUsername') as string } : {}),
    ...(params.has('sentinelPassword') ? { sentinelPassword: params.get('sentinelPassword') as string } : {})
  }
}

function parseAuth (auth: string | undefined): { username?: string, password?: string } {
  if (auth === undefined || auth === '') return {}
  const colon = auth.indexOf(':')
  const username = decodeURIComponent(colon < 0 ? auth : auth.slice(0, colon))
  const password = colon < 0 ? undefined : decodeURIComponent(auth.slice(colon + 1))
  return { ...(username !== '' ? { username } : {}), ...(password !== undefined && password !== '' ? { password } : {}) }
}

function parseNode (text: string, defaultPort: number): RedisNode {
  // host, host:port, [v6], [v6]:port
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+))(?::(\d+))?$/.exec(text.trim())
  const port = Number(m?.[3] ?? defaultPort)
  if (m === null || !(port > 0 && port < 65536)) throw new Error(`"${text}" is not host:port`)
  return { host: m[1] ?? m[2] as string, port }
}
