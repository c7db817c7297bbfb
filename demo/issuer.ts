// FOR DEVELOPMENT ONLY. A tiny token issuer for the demo's authenticated route (routes.d/me.yaml):
// it signs a token for whoever asks, with whatever subject and scopes they ask for. Never run it
// where anything real trusts its tokens; in production the issuer is your identity provider.
//
// At start it generates an ES256 (P-256) key pair, new on every run and never written anywhere:
// a restart invalidates every token it issued (the gateway refetches the key set when it sees the
// new kid). node:http and jose only, so it runs wherever the demo upstreams do.
//   GET /.well-known/jwks.json                          the public key (kid, alg ES256, use sig)
//   GET /token?sub=alice&scope=orders:read%20orders:write   a token: iss ISSUER, aud demo-api, 15 min
//
//   PORT=9004 HOST=127.0.0.1 ISSUER=http://127.0.0.1:9004 node dist/demo/issuer.js
import { generateKeyPairSync, randomUUID } from 'node:crypto'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { calculateJwkThumbprint, exportJWK, SignJWT } from 'jose'
import { stopOnSignals } from './stop.js'

const NAME = process.env.NAME ?? 'issuer'
const PORT = Number(process.env.PORT ?? 9004)
const HOST = process.env.HOST ?? '127.0.0.1'
const AUDIENCE = 'demo-api'
const TOKEN_TTL_S = 15 * 60
const MAX_CLAIM_LENGTH = 256
const DEVELOPMENT_ONLY = 'development only: this issuer signs any subject and scope for anyone who asks; never trust its tokens outside a demo'

if (!Number.isInteger(PORT) || PORT < 0 || PORT > 65535) {
  console.error(`${NAME}: PORT must be a port number, got "${process.env.PORT}"`)
  process.exit(1)
}
if (process.env.ISSUER !== undefined && !URL.canParse(process.env.ISSUER)) {
  console.error(`${NAME}: ISSUER must be a URL (the iss the gateway's route expects), got "${process.env.ISSUER}"`)
  process.exit(1)
}

const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
const publicJwk = await exportJWK(publicKey)
const kid = await calculateJwkThumbprint(publicJwk)
const jwks = JSON.stringify({ keys: [{ ...publicJwk, kid, alg: 'ES256', use: 'sig' }] })
// Set once listening: the default names the port actually bound (PORT=0 picks one).
let issuer = process.env.ISSUER ?? ''

function send (res: http.ServerResponse, status: number, headers: http.OutgoingHttpHeaders, body: string, head: boolean): void {
  res.writeHead(status, { ...headers, 'content-length': Buffer.byteLength(body) })
  res.end(head ? undefined : body)
}

function sendJson (res: http.ServerResponse, status: number, value: unknown, head: boolean, headers: http.OutgoingHttpHeaders = {}): void {
  send(res, status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers }, JSON.stringify(value), head)
}

async function token (url: URL): Promise<{ status: number, body: string }> {
  const sub = url.searchParams.get('sub') ?? 'alice'
  const scope = (url.searchParams.get('scope') ?? '').split(/\s+/).filter(s => s !== '').join(' ')
  if (sub === '' || sub.length > MAX_CLAIM_LENGTH || scope.length > MAX_CLAIM_LENGTH) {
    return { status: 400, body: `sub must be 1 to ${MAX_CLAIM_LENGTH} characters and scope at most ${MAX_CLAIM_LENGTH}` }
  }
  const jwt = await new SignJWT(scope === '' ? {} : { scope })
    .setProtectedHeader({ alg: 'ES256', kid, typ: 'JWT' })
    .setIssuer(issuer)
    .setAudience(AUDIENCE)
    .setSubject(sub)
    .setIssuedAt()
    .setExpirationTime(`${TOKEN_TTL_S}s`)
    .setJti(randomUUID())
    .sign(privateKey)
  console.log(`${NAME}: issued a token for sub ${JSON.stringify(sub)}, scope ${JSON.stringify(scope)}`)
  return { status: 200, body: jwt }
}

const server = http.createServer((req, res) => {
  req.resume()
  const head = req.method === 'HEAD'
  const url = new URL(req.url ?? '/', 'http://localhost')
  const known = url.pathname === '/.well-known/jwks.json' || url.pathname === '/token'
  if (!known) {
    sendJson(res, 404, { error: 'not found', endpoints: ['GET /.well-known/jwks.json', 'GET /token?sub=alice&scope=orders:read'], note: DEVELOPMENT_ONLY }, head)
    return
  }
  if (req.method !== 'GET' && !head) {
    sendJson(res, 405, { error: 'method not allowed' }, false, { allow: 'GET, HEAD' })
    return
  }
  if (url.pathname === '/.well-known/jwks.json') {
    send(res, 200, { 'content-type': 'application/jwk-set+json', 'cache-control': 'max-age=300' }, jwks, head)
    return
  }
  // The body is the bare token (so TOKEN=$(curl -s .../token) works); the warning is a header.
  token(url).then(({ status, body }) => {
    send(res, status, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store', 'x-development-only': DEVELOPMENT_ONLY }, `${body}\n`, head)
  }, (err: Error) => {
    console.error(`${NAME}: cannot sign a token: ${err.message}`)
    sendJson(res, 500, { error: 'cannot sign a token' }, head)
  })
})
server.keepAliveTimeout = 65_000

server.on('error', err => {
  console.error(`${NAME}: cannot listen on ${HOST}:${PORT}: ${err.message}`)
  process.exit(1)
})
server.listen(PORT, HOST, () => {
  const { port } = server.address() as AddressInfo
  if (issuer === '') issuer = `http://127.0.0.1:${port}`
  console.log(`${NAME} listening on http://${HOST.includes(':') ? `[${HOST}]` : HOST}:${port} (iss ${issuer}, aud ${AUDIENCE}, kid ${kid}); ${DEVELOPMENT_ONLY}`)
})

stopOnSignals(server, NAME)
