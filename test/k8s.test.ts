// deploy/k8s: every manifest validates against the Kubernetes schemas (kubernetes-models), and the
// pieces fit together: probes, drain times, the routes ConfigMap, selectors, the gateway's env, and
// the orders route file's discovery through the headless Service.
import { strict as assert } from 'node:assert'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { test } from 'node:test'
import YAML from 'yaml'
import { Deployment } from 'kubernetes-models/apps/v1/Deployment'
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler'
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap'
import { Service } from 'kubernetes-models/v1/Service'
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget'
import { EnvSchema, loadEnv } from '../src/config/env.js'
import { parseRouteFile } from '../src/config/route-file/index.js'
import { toMs } from '../src/config/units.js'
import { ROOT } from './helpers.js'

const DIR = join(ROOT, 'deploy', 'k8s')
const MODELS: Record<string, new (data: never) => { validate: () => void }> = {
  'apps/v1 Deployment': Deployment,
  'v1 Service': Service,
  'v1 ConfigMap': ConfigMap,
  'autoscaling/v2 HorizontalPodAutoscaler': HorizontalPodAutoscaler,
  'policy/v1 PodDisruptionBudget': PodDisruptionBudget
}

interface Manifest { apiVersion: string, kind: string, metadata: { name: string }, spec?: Record<string, unknown>, data?: Record<string, string> }
type ServiceSpec = { clusterIP?: string, publishNotReadyAddresses?: boolean, selector: Record<string, string>, ports: Array<{ name?: string, port: number, targetPort?: number | string }> }

async function manifests (): Promise<Manifest[]> {
  const files = (await readdir(DIR)).filter(f => f.endsWith('.yaml')).sort()
  return await Promise.all(files.map(async f => YAML.parse(await readFile(join(DIR, f), 'utf8')) as Manifest))
}

/** The one manifest of a kind (and name, when the kind has several); fails unless exactly one matches. */
function find (all: Manifest[], kind: string, name?: string): Manifest {
  const found = all.filter(m => m.kind === kind && (name === undefined || m.metadata.name === name))
  assert.equal(found.length, 1, `${kind} ${name ?? ''}`)
  return found[0]!
}

test('every manifest in deploy/k8s validates against its Kubernetes schema; all five kinds are there, Service twice (the gateway\'s and orders-headless)', async () => {
  const all = await manifests()
  for (const m of all) {
    const Model = MODELS[`${m.apiVersion} ${m.kind}`]
    assert.ok(Model !== undefined, `unexpected ${m.apiVersion} ${m.kind}`)
    assert.doesNotThrow(() => new Model(m as never).validate(), `${m.kind} ${m.metadata.name}`)
  }
  assert.deepEqual(all.map(m => m.kind).sort(), ['ConfigMap', 'Deployment', 'HorizontalPodAutoscaler', 'PodDisruptionBudget', 'Service', 'Service'])
  assert.deepEqual(all.filter(m => m.kind === 'Service').map(m => m.metadata.name).sort(), ['gatehouse', 'orders-headless'])
})

test('the pieces fit: 3 replicas, readiness /ready and liveness /health, a drain shorter than the grace period, routes from the ConfigMap, selectors that match', async () => {
  const all = await manifests()
  const deployment = find(all, 'Deployment')
  const spec = deployment.spec as { replicas: number, selector: { matchLabels: Record<string, string> }, template: { metadata: { labels: Record<string, string> }, spec: { terminationGracePeriodSeconds: number, containers: Array<{ env: Array<{ name: string, value: string }>, readinessProbe: { httpGet: { path: string } }, livenessProbe: { httpGet: { path: string } }, volumeMounts: Array<{ name: string, mountPath: string }> }>, volumes: Array<{ name: string, configMap: { name: string } }> } } }
  assert.equal(spec.replicas, 3)
  const pod = spec.template.spec
  const container = pod.containers[0]!
  assert.equal(container.readinessProbe.httpGet.path, '/ready')
  assert.equal(container.livenessProbe.httpGet.path, '/health')

  // The gateway reads every variable, and accepts them as they are.
  const env = Object.fromEntries(container.env.map(e => [e.name, e.value]))
  assert.deepEqual(Object.keys(env).filter(k => !(k in EnvSchema.properties)), [])
  const loaded = loadEnv(env, '/nonexistent/.env')
  assert.ok(pod.terminationGracePeriodSeconds * 1000 > loaded.shutdownDelayMs + loaded.shutdownTimeoutMs + toMs('5s'), 'the kubelet would SIGKILL mid-drain')

  // ROUTES_DIR is the ConfigMap's mount, and each of its files is a valid route file.
  const mount = container.volumeMounts.find(v => v.mountPath === env.ROUTES_DIR)
  const volume = pod.volumes.find(v => v.name === mount?.name)
  const configMap = find(all, 'ConfigMap')
  assert.equal(volume?.configMap.name, configMap.metadata.name)
  for (const [file, text] of Object.entries(configMap.data ?? {})) assert.doesNotThrow(() => parseRouteFile(file, text), file)

  const labels = spec.template.metadata.labels
  const matches = (selector: Record<string, string>): boolean => Object.entries(selector).every(([k, v]) => labels[k] === v)
  assert.ok(matches(spec.selector.matchLabels))
  assert.ok(matches((find(all, 'Service', deployment.metadata.name).spec as ServiceSpec).selector))
  assert.ok(matches((find(all, 'PodDisruptionBudget').spec as { selector: { matchLabels: Record<string, string> } }).selector.matchLabels))
  const hpa = find(all, 'HorizontalPodAutoscaler').spec as { scaleTargetRef: { kind: string, name: string }, minReplicas: number }
  assert.deepEqual([hpa.scaleTargetRef.kind, hpa.scaleTargetRef.name], ['Deployment', deployment.metadata.name])
  assert.ok(hpa.minReplicas >= 3)
})

test('orders is discovered through a headless Service: clusterIP None, ready pods only, a named port; the route file asks its DNS name at that port', async () => {
  const all = await manifests()
  const headless = find(all, 'Service', 'orders-headless')
  const spec = headless.spec as ServiceSpec
  assert.equal(spec.clusterIP, 'None')
  assert.equal(spec.publishNotReadyAddresses, false)
  assert.equal(spec.ports.length, 1)
  const port = spec.ports[0]!
  assert.equal(port.name, 'http', 'a named port gives the SRV name _http._tcp.<service>')
  // Pod IPs are dialled directly, with no kube-proxy to map port to targetPort.
  assert.equal(port.targetPort ?? port.port, port.port)
  // It selects the orders pods, never the gateway's own.
  const deployment = find(all, 'Deployment').spec as { template: { metadata: { labels: Record<string, string> } } }
  assert.ok(!Object.entries(spec.selector).every(([k, v]) => deployment.template.metadata.labels[k] === v))

  const text = find(all, 'ConfigMap').data?.['orders.yaml']
  assert.ok(text !== undefined, 'the ConfigMap has orders.yaml')
  const config = parseRouteFile('orders.yaml', text)
  assert.equal(config.targets.length, 0, 'no url left pointing at a ClusterIP')
  assert.equal(config.discover.length, 1)
  const discover = config.discover[0]!
  assert.equal(discover.dns, `${headless.metadata.name}.default.svc.cluster.local`)
  assert.equal(discover.port, port.port)
  assert.equal(discover.type, 'A')
  assert.equal(config.healthCheck?.path, '/healthz')
})
