// CancelSignal: the cheap abort signal undici is given. Through a real undici Pool, so the test
// fails if undici stops accepting it.
import { strict as assert } from 'node:assert'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { Pool } from 'undici'
import { CancelSignal } from '../plugins/proxy/cancel-signal.js'
import { startUpstream } from './helpers.js'

test('abort() cancels an undici request in flight with the given reason; the upstream sees its socket close', async t => {
  const seen = { closed: false }
  const upstream = await startUpstream((req) => { req.socket.once('close', () => { seen.closed = true }) })
  t.after(() => upstream.close())
  const pool = new Pool(upstream.url)
  t.after(() => pool.destroy())

  const signal = new CancelSignal()
  const reason = new Error('client left')
  const pending = pool.request({ method: 'GET', path: '/', signal })
  while (upstream.requests.length === 0) await sleep(5)
  signal.abort(reason)
  await assert.rejects(pending, err => err === reason)
  for (let i = 0; i < 100 && !seen.closed; i++) await sleep(5)
  assert.ok(seen.closed, 'the upstream connection was closed')
  assert.equal(signal.aborted, true)
})

test('listeners removed by undici after a finished request are not called; abort() runs once', async () => {
  const signal = new CancelSignal()
  let calls = 0
  const listener = (): void => { calls++ }
  signal.once('abort', listener)
  signal.once('abort', () => { calls += 10 })
  signal.removeListener('abort', listener)
  signal.abort(new Error('x'))
  signal.abort(new Error('y'))
  assert.equal(calls, 10)
  assert.equal(signal.reason?.message, 'x')
})
