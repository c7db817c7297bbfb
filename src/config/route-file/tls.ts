// A target's TLS material: the PEM files its tls block names, read and checked at load.
import { createHash, createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { isIP } from 'node:net'
import type { TargetTls } from '../../upstream/target.js'
import type { RawRouteFile } from './schema.js'

type RawTls = NonNullable<RawRouteFile['targets'][number]['tls']>

/** Reads and checks a target's TLS files; undefined (with problems) when any is unusable. */
export function loadTls (raw: RawTls, at: string, problems: string[]): TargetTls | undefined {
  const before = problems.length
  const read = (field: 'ca' | 'cert' | 'key'): string | undefined => {
    const path = raw[field]
    if (path === undefined) return undefined
    try {
      return readFileSync(path, 'utf8')
    } catch (err) {
      // Node's message repeats the path (`ENOENT: no such file or directory, open '/x'`).
      problems.push(`${at}/${field}: cannot read ${path}: ${(err as Error).message.replace(/, \w+ '.*'$/, '')}`)
      return undefined
    }
  }
  const ca = read('ca')
  const cert = read('cert')
  const key = read('key')
  if (ca !== undefined) {
    if (/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(ca)) problems.push(`${at}/ca: ${raw.ca} holds a private key: a CA bundle holds certificates only`)
    else {
      const problem = certificatesProblem(ca)
      if (problem !== undefined) problems.push(`${at}/ca: ${raw.ca} ${problem}`)
    }
  }
  let leaf: X509Certificate | undefined
  if (cert !== undefined) {
    const problem = certificatesProblem(cert)
    if (problem !== undefined) problems.push(`${at}/cert: ${raw.cert} ${problem}`)
    else leaf = new X509Certificate(pemBlocks(cert)[0]!)
  }
  let privateKey: KeyObject | undefined
  if (key !== undefined) {
    try {
      privateKey = createPrivateKey(key)
    } catch (err) {
      const encrypted = /ENCRYPTED/.test(key) || (err as { code?: string }).code === 'ERR_MISSING_PASSPHRASE'
      problems.push(`${at}/key: ${raw.key} ${encrypted ? 'is encrypted: give an unencrypted key (there is no passphrase option)' : 'holds no PEM private key'}`)
    }
  }
  if (leaf !== undefined && privateKey !== undefined && !leaf.checkPrivateKey(privateKey)) {
    problems.push(`${at}/key: ${raw.key} is not the private key of the certificate in ${raw.cert}`)
  }
  if (raw.servername !== undefined && isIP(raw.servername) !== 0) {
    problems.push(`${at}/servername: must be a DNS name (an IP address in url is checked as it is)`)
  }
  if (problems.length > before) return undefined
  const tls: TargetTls = { fingerprint: createHash('sha256').update(JSON.stringify([ca, raw.servername, cert, key])).digest('hex') }
  if (ca !== undefined) tls.ca = ca
  if (raw.servername !== undefined) tls.servername = raw.servername
  if (cert !== undefined && key !== undefined) Object.assign(tls, { cert, key })
  return tls
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g

function pemBlocks (text: string): string[] {
  return text.match(PEM_CERTIFICATE) ?? []
}

/** Why `text` is no list of PEM certificates, or undefined. */
function certificatesProblem (text: string): string | undefined {
  const blocks = pemBlocks(text)
  if (blocks.length === 0) return 'holds no PEM certificate (-----BEGIN CERTIFICATE-----)'
  for (const [n, block] of blocks.entries()) {
    try {
      // eslint-disable-next-line no-new
      new X509Certificate(block)
    } catch {
      return `certificate ${n + 1} is not a valid X.509 certificate`
    }
  }
  return undefined
}
