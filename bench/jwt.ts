// The bench's token issuer for the "Gatehouse + JWT" path: an RS256 key pair (2048 bits) made at
// each run and never written anywhere, the tokens signed with it, and a JWKS server on 127.0.0.1
// (in the runner: the gateway fetches it once).
import { generateKeyPairSync } from 'node:crypto'
import { once } from 'node:events'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { calculateJwkThumbprint, exportJWK, SignJWT, type JSONWebKeySet } from 'jose'

export const JWKS_PATH = '/.well-known/jwks.json'
export const JWT_AUDIENCE = 'bench-api'
export const JWT_ALGORITHM = 'RS256'
export const RSA_BITS = 2048
export const TOKEN_TTL = '1h'

export interface BenchIssuer {
  /** `iss` of the tokens: the JWKS server's origin. */
  issuer: string
  jwksUrl: string
  jwks: JSONWebKeySet
  /** `count` of them; `sub` bench-user-<i>. */
  tokens: string[]
  /** How many times the gateway fetched the key set. */
  fetches: () => number
  close: () => Promise<void>
}

/**
 * A key pair, a JWKS server on 127.0.0.1:0 (Cache-Control max-age 1 h: one fetch for a whole run)
 * and `count` tokens signed with the private key (iss the server's origin, aud JWT_AUDIENCE, exp 1 h).
 */
export async function startIssuer (count: number): Promise<BenchIssuer> {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: RSA_BITS })
  const jwk = await exportJWK(publicKey)
  const kid = await calculateJwkThumbprint(jwk)
  const jwks: JSONWebKeySet = { keys: [{ ...jwk, kid, alg: JWT_ALGORITHM, use: 'sig' }] }
  const body = JSON.stringify(jwks)
  let fetches = 0
  const server = http.createServer((req, res) => {
    req.resume()
    if (req.method === 'GET' && req.url === JWKS_PATH) {
      fetches++
      res.writeHead(200, { 'content-type': 'application/jwk-set+json', 'cache-control': 'max-age=3600', 'content-length': Buffer.byteLength(body) })
      res.end(body)
      return
    }
    res.writeHead(404, { 'content-length': 0 })
    res.end()
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const tokens: string[] = []
  for (let i = 0; i < count; i++) {
    tokens.push(await new SignJWT({})
      .setProtectedHeader({ alg: JWT_ALGORITHM, kid, typ: 'JWT' })
      .setIssuer(origin)
      .setAudience(JWT_AUDIENCE)
      .setSubject(`bench-user-${i}`)
      .setIssuedAt()
      .setExpirationTime(TOKEN_TTL)
      .sign(privateKey))
  }
  return {
    issuer: origin,
    jwksUrl: origin + JWKS_PATH,
    jwks,
    tokens,
    fetches: () => fetches,
    close: () => new Promise<void>(resolve => {
      server.closeAllConnections()
      server.close(() => resolve())
    })
  }
}

/** The status of GET http://127.0.0.1:port/path with `headers`, on a fresh connection (2 s timeout). */
export function statusWith (port: number, path: string, headers: Record<string, string>): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, headers, agent: false, timeout: 2000 }, res => {
      res.resume()
      resolve(res.statusCode ?? 0)
    })
    req.once('timeout', () => req.destroy(new Error('timeout')))
    req.once('error', reject)
  })
}
