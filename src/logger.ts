// The process's pino logger: JSON lines to stdout through pino's asynchronous destination
// (sonic-boom: lines written while a write is in progress go out together in the next one), or
// the same lines made readable by pino-pretty in a worker thread (pino's transport, as Fastify's
// docs set it up); and a per-request logger that costs nothing until a request actually logs.
import { hostname } from 'node:os'
import { LogController, type FastifyBaseLogger, type FastifyReply, type FastifyRequest, type FastifyServerOptions } from 'fastify'
import type { LogFormat } from './config/env.js'
import pino, { type Bindings, type ChildLoggerOptions, type DestinationStream, type Level, type LevelWithSilent } from 'pino'

/** A gateway error a request ended with (its access line names the code and message). */
export interface Failure {
  code?: string | undefined
  message: string
}

declare module 'fastify' {
  interface FastifyRequest {
    /** Set when the request is answered with an error (decorated by the app). */
    failure: Failure | null
  }
}

export interface GatewayLogger {
  logger: pino.Logger
  destination: DestinationStream & { flushSync: () => void }
  /**
   * Writes a prebuilt line (the access log's). Lines of one event-loop turn reach the destination
   * as one string: sonic-boom measures its pending buffer on every write, so one write per line
   * costs more the more lines wait (measured: 4.2 KB allocated per line with 32 waiting).
   */
  writeLine: (line: string) => void
  /** Writes what is buffered, synchronously: on SIGTERM/SIGINT and on a fatal error. */
  flush: () => void
  /** The first fields of every line, as pino writes them (`"level":30` comes before them). */
  base: string
}

/**
 * pino-pretty's settings: an access line reads `<reqId> request completed: GET /api/x 200 3.1 ms`,
 * and what is left of it (upstream, target, error) follows on the same line.
 */
const PRETTY = {
  translateTime: 'SYS:HH:MM:ss.l',
  ignore: 'pid,hostname,reqId,method,url,statusCode,responseTimeMs,httpVersion',
  messageFormat: '{if reqId}{reqId} {end}{msg}{if responseTimeMs}: {method} {url} {statusCode} {responseTimeMs} ms{end}',
  singleLine: true,
  // The access line's `error` is a message, not an error object to print on lines of its own.
  errorLikeObjectKeys: ['err']
}

export function createLogger (level: string, format: LogFormat = 'json', fd = 1): GatewayLogger {
  const destination: GatewayLogger['destination'] = format === 'pretty'
    // The worker cannot see the terminal: whether to colour is decided here.
    ? pino.transport({ target: 'pino-pretty', options: { ...PRETTY, destination: fd, colorize: fd === 1 && process.stdout.isTTY } })
    : pino.destination({ dest: fd, sync: false })
  const logger = pino({ level: level as LevelWithSilent }, destination)
  let batch = ''
  const writeBatch = (): void => {
    const lines = batch
    batch = ''
    destination.write(lines)
  }
  const writeLine = (line: string): void => {
    if (batch === '') setImmediate(writeBatch)
    batch += line
  }
  const flush = (): void => {
    try {
      if (batch !== '') writeBatch()
      destination.flushSync()
    } catch {
      // Nothing buffered, or the destination is already closed: nothing left to write.
    }
  }
  return { logger, destination, writeLine, flush, base: `"pid":${process.pid},"hostname":${JSON.stringify(hostname())}` }
}

const LEVELS: Level[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace']

/**
 * A request's logger: pino's child (which serialises its bindings when made) is made only when
 * the request writes a line, which most requests never do (their access line is written apart).
 * `bind()` adds fields before that (the trace ids of a traced request).
 */
export class RequestLogger {
  private real: FastifyBaseLogger | undefined
  private readonly bindings: Bindings
  private extra: Bindings | undefined
  declare fatal: pino.LogFn
  declare error: pino.LogFn
  declare warn: pino.LogFn
  declare info: pino.LogFn
  declare debug: pino.LogFn
  declare trace: pino.LogFn

  constructor (private readonly parent: FastifyBaseLogger, bindings: Bindings, private readonly options: ChildLoggerOptions) {
    this.bindings = bindings
  }

  get level (): string {
    return this.real?.level ?? this.options.level ?? this.parent.level
  }

  set level (level: string) {
    this.logger().level = level
  }

  silent (): void {}

  /** Fields for the lines of this request (kept aside until a line is written: most never are). */
  bind (fields: Bindings): void {
    if (this.real === undefined) this.extra = fields
  }

  child (bindings: Bindings, options?: ChildLoggerOptions): FastifyBaseLogger {
    return this.logger().child(bindings, options)
  }

  private logger (): FastifyBaseLogger {
    this.real ??= this.parent.child(this.extra === undefined ? this.bindings : { ...this.bindings, ...this.extra }, this.options)
    return this.real
  }
}
for (const level of LEVELS) {
  Object.defineProperty(RequestLogger.prototype, level, {
    value: function (this: RequestLogger, ...args: unknown[]) {
      // pino's LogFn overloads do not accept a spread of unknowns; the arguments are passed through as given.
      const logger = (this as unknown as { logger: () => FastifyBaseLogger }).logger()
      ;(logger[level] as (...a: unknown[]) => void)(...args)
    }
  })
}

/** Fastify's childLoggerFactory option: a RequestLogger instead of a pino child per request. */
export const requestLoggerFactory: NonNullable<FastifyServerOptions['childLoggerFactory']> = function (logger, bindings, options) {
  return new RequestLogger(logger, bindings, options) as unknown as FastifyBaseLogger
}

/**
 * What Fastify logs by itself per request: nothing for normal outcomes. The access line (written
 * by the observability plugin when the request ends) carries the status and the error's code and
 * message; only an error the gateway did not expect (a 5xx without a GATEHOUSE_ERR_ code) is
 * logged apart, at error level with its stack. No client can fill the error log.
 */
export class GatewayLogController extends LogController {
  constructor () {
    super({ requestIdLogLabel: 'reqId' })
  }

  override incomingRequest (): void {}

  override requestCompleted (): void {}

  override defaultErrorLog (error: Error & { code?: string }, request: FastifyRequest, reply: FastifyReply): void {
    const code = error.code
    request.failure = { code, message: error.message }
    if (reply.statusCode >= 500 && (code === undefined || !code.startsWith('GATEHOUSE_ERR_'))) {
      request.log.error({ err: error, statusCode: reply.statusCode }, 'unexpected error')
    }
  }
}
