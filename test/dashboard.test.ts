// deploy/grafana/gatehouse.json imports cleanly: the structure Grafana expects, panels that do not
// overlap, queries that are valid PromQL (promtool) and name only metrics the gateway exports.
import { strict as assert } from 'node:assert'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { gateway, promtool, PROMTOOL_MISSING, ROOT, routeFile, upstream } from './helpers.js'

interface Panel { id: number, type: string, title: string, gridPos: { x: number, y: number, w: number, h: number }, targets: Array<{ refId: string, expr: string }> }
interface Dashboard { uid: string, title: string, schemaVersion: number, panels: Panel[], templating: { list: Array<{ name: string }> } }

const dashboard = async (): Promise<Dashboard> => JSON.parse(await readFile(join(ROOT, 'deploy', 'grafana', 'gatehouse.json'), 'utf8')) as Dashboard

/** The PromQL of a panel query with Grafana's variables filled in. */
const promql = (expr: string): string => expr.replaceAll('$__rate_interval', '5m').replaceAll('$job', '.*').replaceAll('$instance', '.*')

test('the dashboard has what Grafana needs: uid, title, schemaVersion, variables, panels with unique ids on a 24-column grid without overlaps', async () => {
  const d = await dashboard()
  assert.equal(d.uid, 'gatehouse')
  assert.equal(d.title, 'Gatehouse')
  assert.ok(d.schemaVersion >= 36)
  assert.deepEqual(d.templating.list.map(v => v.name), ['datasource', 'job', 'instance'])
  assert.equal(new Set(d.panels.map(p => p.id)).size, d.panels.length)
  const cells = new Set<string>()
  for (const p of d.panels) {
    const { x, y, w, h } = p.gridPos
    assert.ok(x >= 0 && w > 0 && x + w <= 24 && h > 0, `${p.title}: gridPos`)
    for (let i = x; i < x + w; i++) {
      for (let j = y; j < y + h; j++) {
        assert.ok(!cells.has(`${i},${j}`), `${p.title} overlaps another panel`)
        cells.add(`${i},${j}`)
      }
    }
    assert.ok(p.targets.length > 0 && p.targets.every(t => t.expr.trim() !== ''), `${p.title}: no query`)
  }
  const titles = d.panels.map(p => p.title.toLowerCase()).join(' | ')
  for (const topic of ['request rate', 'latency', 'saturation', 'breaker state', 'transitions', 'retries', 'rate-limit', 'reload']) {
    assert.ok(titles.includes(topic), `no panel about ${topic}`)
  }
})

test('every query names only metrics a running gateway exports', async t => {
  const origin = await upstream(t)
  const gw = await gateway(t, { 'app.yaml': routeFile([origin.url], ['/api']) })
  await (await fetch(`${gw.url}/api`)).text()
  const text = await (await fetch(`${gw.url}/metrics`)).text()
  const exported = new Set([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].flatMap(m => m[2] === 'histogram' ? [`${m[1]}_bucket`, `${m[1]}_count`, `${m[1]}_sum`] : [m[1] as string]))
  for (const p of (await dashboard()).panels) {
    for (const target of p.targets) {
      const names = [...target.expr.matchAll(/\b([a-z_:][a-z0-9_:]*)\s*\{/g)].map(m => m[1] as string)
      assert.ok(names.length > 0, `${p.title}: no metric in ${target.expr}`)
      for (const name of names) assert.ok(exported.has(name), `${p.title}: ${name} is not exported`)
    }
  }
})

test('every query is valid PromQL (promtool check rules over them as recording rules)', { skip: PROMTOOL_MISSING }, async t => {
  const d = await dashboard()
  const rules = d.panels.flatMap(p => p.targets.map(target => ({ record: `gatehouse:panel${p.id}:${target.refId}`, expr: promql(target.expr) })))
  const dir = await mkdtemp(join(tmpdir(), 'gatehouse-dashboard-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const file = join(dir, 'rules.yml')
  await writeFile(file, JSON.stringify({ groups: [{ name: 'dashboard', rules }] }))
  const { code, output } = await promtool(['check', 'rules', file])
  assert.equal(code, 0, output)
})
