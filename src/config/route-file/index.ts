// The route file: its schema and compiled types (schema.ts), parsing and whole-file checks
// (parse.ts), target TLS material (tls.ts) and JWT key sources (jwt.ts). Import from here.
export {
  HTTP_METHODS, JWT_ALGORITHMS, LIMIT_ALGORITHMS, RESERVED_PATHS, ROUTE_FILE_EXTENSIONS, RouteFileSchema,
  type JwtAuthConfig, type JwtKeySource, type LimitAlgorithm, type RateLimitConfig, type RateLimitKey,
  type DiscoverConfig, type HealthCheckConfig, type RouteConfig, type TargetConfig, type UpstreamConfig, type WebSocketSettings
} from './schema.js'
export { parseRouteFile, RouteFileError, routeClaims, routeFileWarnings, routeMethods } from './parse.js'
