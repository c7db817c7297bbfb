# Gatehouse image: `docker build -t gatehouse .`, then
#   docker run -p 8080:8080 -v "$PWD/routes.d:/app/routes.d:ro" gatehouse
# Give `docker run --stop-timeout` (compose: stop_grace_period) a little more than
# SHUTDOWN_TIMEOUT (30s), or Docker's default 10s SIGKILLs requests that are still draining.

# ---- build: dev dependencies, tsc -> dist/ ----
FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: `prepare` would run tsc before the sources are copied.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY . .
# The image runs only the gateway and the demo services (upstream, token issuer): drop compiled tests and benchmarks.
RUN npm run build && rm -rf dist/test dist/bench

# ---- runtime: production dependencies, compiled code, example routes ----
FROM node:24-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production ROUTES_DIR=/app/routes.d
COPY package.json package-lock.json ./
# --ignore-scripts: `prepare` builds with tsc, a dev dependency that is not installed here.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force
# Owned by root and read-only for the gateway's user: a compromised process cannot rewrite
# its own code or routes. Mount your own routes over /app/routes.d.
COPY --from=build /app/dist ./dist
COPY routes.d ./routes.d
USER node
EXPOSE 8080
# /health is the liveness check (503 under event-loop or memory pressure); fetch is built into Node.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 8080) + '/health').then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# The gateway drains on SIGTERM (not ready, finish in-flight, then close); Node runs as PID 1
# and installs its own handlers, so no init process is needed.
STOPSIGNAL SIGTERM
# --disable-sigusr1 (Node 22.14+): a SIGUSR1 that arrives before the entry point listens for it
# must not open the inspector.
ENTRYPOINT ["node", "--disable-sigusr1", "dist/src/cli.js"]
CMD ["start"]
