// Gateway bugs the fuzzer found and that are not fixed yet. A case whose every violation one of
// these explains is reported as "known" (printed, counted, not a failure unless FUZZ_STRICT=1),
// so a run still fails on anything new. Remove an entry once the gateway is fixed: the cases of
// fuzz/regressions.json that carry its id then stop being `todo` and must pass.
import type { CaseOutcome } from './harness.js'

export interface KnownBug {
  id: string
  summary: string
  explains: (outcome: CaseOutcome) => boolean
}

const LATE = ' (arrived after the case ended)'
const all = (o: CaseOutcome, ...patterns: RegExp[]): boolean =>
  o.violations.length > 0 && o.violations.every(v => patterns.some(p => p.test(v.endsWith(LATE) ? v.slice(0, -LATE.length) : v)))

export const KNOWN_BUGS: KnownBug[] = [
  {
    id: 'expect-100-continue',
    summary: 'A request with `Expect: 100-continue` gets 100 Continue and then 502 GATEHOUSE_ERR_UPSTREAM_RESET: the ' +
      'gateway passes Expect on to undici, which refuses it ("expect header not supported"). Not an oracle violation ' +
      '(nothing reaches the upstream), listed for the regression case that carries this id.',
    explains: () => false
  },
  {
    id: 'parse-error-over-pipelined',
    summary: 'A parse error on a connection whose earlier pipelined request is still in flight: the gateway writes its 400 at ' +
      'once and destroys the socket (app.ts clientError holds the 400 back only when a response has already started), so ' +
      'the client reads the 400 as the answer to that earlier request, which the upstream received and executed. Also when ' +
      'the parse error is the EOF of a GET/HEAD/TRACE whose body never came (the gateway forwards those without waiting).',
    explains: o => {
      // The 400 answers request `last` on the wire; requests after it got nothing (they were in flight too).
      const last = o.responses.length - 1
      return o.exchange.closed && o.responses[last]?.status === 400 && o.exchange.raw.toString('latin1').includes('GATEHOUSE_ERR_BAD_REQUEST') &&
        all(o, new RegExp(`, answered 400 to the client \\(request ${last}\\)$`),
          new RegExp(`, pipelined \\(request \\d+\\) behind response ${last} \\(400\\) that closes the connection$`))
    }
  },
  {
    id: 'processed-after-close',
    summary: 'A response that closes the connection but was not the request guard\'s (Node\'s own 400 for an HTTP/1.1 request ' +
      'without Host, the proxy\'s 413 for a declared Content-Length over bodyLimit) does not stop the requests pipelined ' +
      'behind it: they are routed and sent to the upstream, and their answers are lost (RFC 9112 §9.6: a server MUST NOT ' +
      'process further requests). Only the guard\'s refusals mark the socket as refused.',
    explains: o => {
      const closing = o.responses.find(r => /\bclose\b/i.test(r.headers.connection ?? ''))
      if (closing === undefined || /GATEHOUSE_ERR_(BAD_FRAMING|TOO_MANY_HEADERS)/.test(closing.body)) return false
      // After a request without Host the reference stops reading, so what follows is none of "the client's requests".
      const noHost = o.ref.stop?.reason === '0 Host headers' && o.responses.length === o.ref.requests.length + 1
      return all(o, /, pipelined \(request \d+\) behind response \d+ \(\d+\) that closes the connection$/,
        ...(noHost ? [/, which is none of the client's requests without a 2xx$/] : []))
    }
  },
  {
    id: 'inflight-leak-malformed-chunked',
    summary: 'A chunked request whose chunked framing turns out malformed after the gateway started proxying it (a bare LF ' +
      'or a space after a chunk size: `POST /a HTTP/1.1\\r\\nHost: x\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n2\\nab\\n0\\n\\n`) ' +
      'gets 400, but the target\'s in-flight count stays raised although nothing reaches the upstream. About 100 such ' +
      'requests (maxConnections) make the upstream "saturated": every request then gets 503 GATEHOUSE_ERR_UPSTREAM_SATURATED.',
    explains: o => all(o, /^the gateway counts \d+ upstream requests in flight with none running/)
  },
  {
    id: 'uncancelled-stream',
    summary: 'A request whose body the gateway streams upstream (chunked, or larger than bufferBody) is never cancelled ' +
      'when the gateway itself destroys the client connection on a parse error in the middle of that body: the ' +
      'upstream request stays open, holding an upstream connection and the target\'s in-flight count.',
    explains: o => all(o, HANGING)
  },
  {
    id: 'http-version-leniency',
    summary: 'Request lines with HTTP/0.9 or HTTP/2.0 are accepted and proxied as HTTP/1.x (llhttp allows these versions); ' +
      'a gateway should answer 505 (or 400).',
    explains: o => o.ref.stop?.kind === 'invalid' && /^request line with HTTP\/(0\.9|2\.0)$/.test(o.ref.stop.reason) &&
      all(o, /for a request the reference parser does not see \(invalid: request line with HTTP\/(0\.9|2\.0)\)$/, /which is none of the client's requests without a 2xx$/)
  }
]

/**
 * The known bug that explains every violation of `outcome`, if one does. An upstream request left
 * hanging is split off first: the rest of the case must then be explained on its own (or be empty).
 */
export function knownBug (outcome: CaseOutcome): KnownBug | undefined {
  const hanging = outcome.violations.filter(v => HANGING.test(v))
  if (hanging.length === 0) return KNOWN_BUGS.find(b => b.explains(outcome))
  const rest = { ...outcome, violations: outcome.violations.filter(v => !HANGING.test(v)) }
  if (rest.violations.length > 0 && KNOWN_BUGS.find(b => b.explains(rest)) === undefined) return undefined
  return KNOWN_BUGS.find(b => b.id === 'uncancelled-stream')
}

const HANGING = /is still open \d+ ms after the client connection ended: the gateway did not cancel it$/
