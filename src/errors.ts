// Every error the gateway answers with or fails on, in one place. Codes are stable: clients and
// alerts key on them, and docs/errors.md lists each one (a test keeps them in step).
import createError from '@fastify/error'

export const RouteNotFoundError = createError<'GATEHOUSE_ERR_ROUTE_NOT_FOUND', 404, [string, string, ErrorOptions?]>(
  'GATEHOUSE_ERR_ROUTE_NOT_FOUND', 'No route matches %s %s', 404)

export const BadPathError = createError<'GATEHOUSE_ERR_BAD_PATH', 400, [string, ErrorOptions?]>(
  'GATEHOUSE_ERR_BAD_PATH', 'Request path refused: %s', 400)

export const BodyTooLargeError = createError<'GATEHOUSE_ERR_BODY_TOO_LARGE', 413, [number, ErrorOptions?]>(
  'GATEHOUSE_ERR_BODY_TOO_LARGE', 'Request body is larger than the limit of %d bytes', 413)

export const HeadersTooLargeError = createError<'GATEHOUSE_ERR_HEADERS_TOO_LARGE', 431, [ErrorOptions?]>(
  'GATEHOUSE_ERR_HEADERS_TOO_LARGE', 'Request headers are larger than the limit', 431)

export const RequestTimeoutError = createError<'GATEHOUSE_ERR_REQUEST_TIMEOUT', 408, [ErrorOptions?]>(
  'GATEHOUSE_ERR_REQUEST_TIMEOUT', 'The request was not received in time', 408)

// The message names the cause: the HTTP parser's own reason ("Invalid header token"), or that the
// client closed its side of the connection before the request was complete.
export const BadRequestError = createError<'GATEHOUSE_ERR_BAD_REQUEST', 400, [string, ErrorOptions?]>(
  'GATEHOUSE_ERR_BAD_REQUEST', '%s', 400)

// Framing a proxy must not guess at (request smuggling): refused, and the connection closed.
export const BadFramingError = createError<'GATEHOUSE_ERR_BAD_FRAMING', 400, [string, ErrorOptions?]>(
  'GATEHOUSE_ERR_BAD_FRAMING', 'Request framing refused: %s', 400)

export const HttpVersionError = createError<'GATEHOUSE_ERR_HTTP_VERSION', 505, [string, ErrorOptions?]>(
  'GATEHOUSE_ERR_HTTP_VERSION', 'HTTP/%s is not served: send HTTP/1.1 or HTTP/1.0', 505)

export const TooManyHeadersError = createError<'GATEHOUSE_ERR_TOO_MANY_HEADERS', 431, [number, ErrorOptions?]>(
  'GATEHOUSE_ERR_TOO_MANY_HEADERS', 'More than %d request headers', 431)

export const UriTooLongError = createError<'GATEHOUSE_ERR_URI_TOO_LONG', 414, [number, ErrorOptions?]>(
  'GATEHOUSE_ERR_URI_TOO_LONG', 'The request target is longer than %d bytes', 414)

export const UpstreamUnreachableError = createError<'GATEHOUSE_ERR_UPSTREAM_UNREACHABLE', 502, [string, ErrorOptions?]>(
  'GATEHOUSE_ERR_UPSTREAM_UNREACHABLE', 'Upstream %s could not be reached', 502)

export const UpstreamResetError = createError<'GATEHOUSE_ERR_UPSTREAM_RESET', 502, [string, ErrorOptions?]>(
  'GATEHOUSE_ERR_UPSTREAM_RESET', 'Upstream %s closed the connection before a complete response', 502)

// The upstream's certificate did not verify (or it refused ours): no request was sent over it.
export const UpstreamTlsError = createError<'GATEHOUSE_ERR_UPSTREAM_TLS', 502, [string, string, ErrorOptions?]>(
  'GATEHOUSE_ERR_UPSTREAM_TLS', 'TLS with upstream %s failed: %s', 502)

// Framing or headers undici refused (request smuggling from the upstream side); that connection is closed.
export const UpstreamBadResponseError = createError<'GATEHOUSE_ERR_UPSTREAM_BAD_RESPONSE', 502, [string, string, ErrorOptions?]>(
  'GATEHOUSE_ERR_UPSTREAM_BAD_RESPONSE', 'Upstream %s sent a malformed response: %s', 502)

export const UpstreamTimeoutError = createError<'GATEHOUSE_ERR_UPSTREAM_TIMEOUT', 504, [string, string, ErrorOptions?]>(
  'GATEHOUSE_ERR_UPSTREAM_TIMEOUT', 'Upstream %s sent no response headers within %s (timeouts.request of its route file)', 504)

export const UpstreamSaturatedError = createError<'GATEHOUSE_ERR_UPSTREAM_SATURATED', 503, [string, ErrorOptions?]>(
  'GATEHOUSE_ERR_UPSTREAM_SATURATED', 'Every target of upstream %s is at its connection limit', 503)

export const UpstreamUnavailableError = createError<'GATEHOUSE_ERR_UPSTREAM_UNAVAILABLE', 503, [string, ErrorOptions?]>(
  'GATEHOUSE_ERR_UPSTREAM_UNAVAILABLE', 'No target of upstream %s can take requests: their circuit breakers are open', 503)

// Every target of the upstream comes from DNS, and no name has an address (yet, or any more).
export const UpstreamNoTargetsError = createError<'GATEHOUSE_ERR_UPSTREAM_NO_TARGETS', 503, [string, string, ErrorOptions?]>(
  'GATEHOUSE_ERR_UPSTREAM_NO_TARGETS', 'Upstream %s has no targets: %s', 503)

export const UpstreamUnhealthyError = createError<'GATEHOUSE_ERR_UPSTREAM_UNHEALTHY', 503, [string, ErrorOptions?]>(
  'GATEHOUSE_ERR_UPSTREAM_UNHEALTHY', 'Every target of upstream %s fails its health checks (healthCheck.panic: closed)', 503)

export const TunnelsFullError = createError<'GATEHOUSE_ERR_WEBSOCKET_FULL', 503, [string, number, ErrorOptions?]>(
  'GATEHOUSE_ERR_WEBSOCKET_FULL', 'Every target of upstream %s that can take a WebSocket holds its %d tunnels (websocket.maxPerTarget)', 503)

export const UpgradeRefusedError = createError<'GATEHOUSE_ERR_UPGRADE_REFUSED', 400, [string, ErrorOptions?]>(
  'GATEHOUSE_ERR_UPGRADE_REFUSED', 'Upgrade refused: %s', 400)

export const GrpcNeedsHttp2Error = createError<'GATEHOUSE_ERR_GRPC_NEEDS_HTTP2', 400, [ErrorOptions?]>(
  'GATEHOUSE_ERR_GRPC_NEEDS_HTTP2', 'This route is a gRPC route: it is served over HTTP/2 only (TLS_PORT, or H2C_PORT with prior knowledge)', 400)

// nginx's 499: nobody receives it, but the access log and metrics say who gave up.
export const ClientClosedError = createError<'GATEHOUSE_ERR_CLIENT_CLOSED', 499, [ErrorOptions?]>(
  'GATEHOUSE_ERR_CLIENT_CLOSED', 'The client closed the connection before the response', 499)

export const RequestBufferFullError = createError<'GATEHOUSE_ERR_REQUEST_BUFFER_FULL', 503, [ErrorOptions?]>(
  'GATEHOUSE_ERR_REQUEST_BUFFER_FULL', 'The gateway holds as many request bodies as REQUEST_BUFFER_MEMORY allows; retry shortly', 503)

// A client below MIN_DATA_RATE: cut so it cannot hold an upstream slot (Kestrel's minimum data rates).
export const ClientTooSlowError = createError<'GATEHOUSE_ERR_CLIENT_TOO_SLOW', 408, [string, number, ErrorOptions?]>(
  'GATEHOUSE_ERR_CLIENT_TOO_SLOW', 'The client %s slower than %d bytes/s', 408)

export const RateLimitedError = createError<'GATEHOUSE_ERR_RATE_LIMITED', 429, [number, string, ErrorOptions?]>(
  'GATEHOUSE_ERR_RATE_LIMITED', 'Rate limit of %d requests per %s reached; see Retry-After', 429)

// RFC 6750: the 401s carry WWW-Authenticate; the reason never echoes the token.
export const AuthRequiredError = createError<'GATEHOUSE_ERR_AUTH_REQUIRED', 401, [ErrorOptions?]>(
  'GATEHOUSE_ERR_AUTH_REQUIRED', 'This route needs a bearer token in the Authorization header', 401)

export const AuthInvalidError = createError<'GATEHOUSE_ERR_AUTH_INVALID', 401, [string, ErrorOptions?]>(
  'GATEHOUSE_ERR_AUTH_INVALID', 'Invalid token: %s', 401)

export const AuthForbiddenError = createError<'GATEHOUSE_ERR_AUTH_FORBIDDEN', 403, [string, ErrorOptions?]>(
  'GATEHOUSE_ERR_AUTH_FORBIDDEN', 'The token lacks a required scope: %s', 403)

export const AuthUnavailableError = createError<'GATEHOUSE_ERR_AUTH_UNAVAILABLE', 503, [ErrorOptions?]>(
  'GATEHOUSE_ERR_AUTH_UNAVAILABLE', 'The issuer\'s keys could not be fetched: tokens cannot be verified now', 503)

export const RateLimitUnavailableError = createError<'GATEHOUSE_ERR_RATE_LIMIT_UNAVAILABLE', 503, [ErrorOptions?]>(
  'GATEHOUSE_ERR_RATE_LIMIT_UNAVAILABLE', 'The rate-limit store is unavailable and this route fails closed', 503)

// Internal: the route's onStoreError policy decides what the client sees.
export const LimitStoreError = createError<'GATEHOUSE_ERR_RATE_LIMIT_STORE', 503, [string, ErrorOptions?]>(
  'GATEHOUSE_ERR_RATE_LIMIT_STORE', 'Rate-limit store failed: %s', 503)

export const NotReadyError = createError<'GATEHOUSE_ERR_NOT_READY', 503, [string, ErrorOptions?]>(
  'GATEHOUSE_ERR_NOT_READY', 'Gateway is not ready: %s', 503)

// Configuration errors are thrown at start, by `gatehouse check`, and logged on reload.
export const ConfigEnvError = createError<'GATEHOUSE_ERR_CONFIG_ENV', 500, [string, ErrorOptions?]>(
  'GATEHOUSE_ERR_CONFIG_ENV', 'Invalid environment:\n%s', 500)

export const ConfigRoutesError = createError<'GATEHOUSE_ERR_CONFIG_ROUTES', 500, [string, ErrorOptions?]>(
  'GATEHOUSE_ERR_CONFIG_ROUTES', 'Invalid route files:\n%s', 500)
