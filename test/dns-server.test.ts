// The test DNS server, checked through Node's own c-ares Resolver: the answers DNS service
// discovery will see (records, TTLs, NXDOMAIN, NODATA, SERVFAIL, a dead server, truncation).
import { strict as assert } from 'node:assert'
import dgram from 'node:dgram'
import { Resolver } from 'node:dns/promises'
import { once } from 'node:events'
import { test } from 'node:test'
import { dnsServer, type TestDnsServer } from './dns-server.js'
import { within } from './helpers.js'

/** A resolver asking only `server`, quick to give up so a failure shows fast. */
function resolverFor (server: TestDnsServer): Resolver {
  const resolver = new Resolver({ timeout: 500, tries: 1 })
  resolver.setServers([server.address])
  return resolver
}

/** The `code` of the error `promise` rejects with. */
async function codeOf (promise: Promise<unknown>): Promise<string | undefined> {
  try {
    await promise
  } catch (err) {
    return (err as NodeJS.ErrnoException).code
  }
  assert.fail('resolved, expected an error')
}

test('A records come back with their TTL', async t => {
  const dns = await dnsServer(t)
  dns.set('orders.test', { A: ['10.0.0.1', '10.0.0.2'], ttl: 30 })
  const answers = await resolverFor(dns).resolve4('orders.test', { ttl: true })
  assert.deepEqual(answers.sort((a, b) => a.address.localeCompare(b.address)), [
    { address: '10.0.0.1', ttl: 30 },
    { address: '10.0.0.2', ttl: 30 }
  ])
  assert.deepEqual(dns.queries, ['A orders.test'])
})

test('the default TTL is 1 s and names are case-insensitive, a trailing dot ignored', async t => {
  const dns = await dnsServer(t)
  dns.set('Orders.Test.', { A: ['10.0.0.1'] })
  assert.deepEqual(await resolverFor(dns).resolve4('ORDERS.test', { ttl: true }), [{ address: '10.0.0.1', ttl: 1 }])
  assert.deepEqual(dns.queries, ['A orders.test'])
})

test('AAAA records, ::1 and a full address', async t => {
  const dns = await dnsServer(t)
  dns.set('orders.test', { AAAA: ['::1', '2001:db8::a:b:c'], ttl: 5 })
  const answers = await resolverFor(dns).resolve6('orders.test', { ttl: true })
  assert.deepEqual(answers, [{ address: '::1', ttl: 5 }, { address: '2001:db8::a:b:c', ttl: 5 }])
  assert.deepEqual(dns.queries, ['AAAA orders.test'])
})

test('SRV records: priority, weight, port and target', async t => {
  const dns = await dnsServer(t)
  dns.set('_http._tcp.orders.test', {
    SRV: [
      { priority: 10, weight: 60, port: 8080, target: 'a.orders.test' },
      { priority: 20, weight: 0, port: 9090, target: 'b.orders.test.' }
    ]
  })
  // Node 22+ adds type: 'SRV' to each record: compare the fields DNS carries.
  const answers = (await resolverFor(dns).resolveSrv('_http._tcp.orders.test')).map(({ priority, weight, port, name }) => ({ priority, weight, port, name }))
  assert.deepEqual(answers.sort((a, b) => a.priority - b.priority), [
    { priority: 10, weight: 60, port: 8080, name: 'a.orders.test' },
    { priority: 20, weight: 0, port: 9090, name: 'b.orders.test' }
  ])
  assert.deepEqual(dns.queries, ['SRV _http._tcp.orders.test'])
})

test('an unknown name is NXDOMAIN: ENOTFOUND; so is a deleted one', async t => {
  const dns = await dnsServer(t)
  const resolver = resolverFor(dns)
  assert.equal(await codeOf(resolver.resolve4('missing.test')), 'ENOTFOUND')
  dns.set('orders.test', { A: ['10.0.0.1'], ttl: 0 })
  assert.equal((await resolver.resolve4('orders.test')).length, 1)
  dns.delete('orders.test')
  assert.equal(await codeOf(resolver.resolve4('orders.test')), 'ENOTFOUND')
})

test('a known name without records of the type is NODATA: ENODATA', async t => {
  const dns = await dnsServer(t)
  dns.set('orders.test', { A: ['10.0.0.1'] })
  const resolver = resolverFor(dns)
  assert.equal(await codeOf(resolver.resolve6('orders.test')), 'ENODATA')
  assert.equal(await codeOf(resolver.resolveSrv('orders.test')), 'ENODATA')
  assert.equal(await codeOf(resolver.resolveTxt('orders.test')), 'ENODATA')
  assert.deepEqual(dns.queries, ['AAAA orders.test', 'SRV orders.test', 'TXT orders.test'])
})

test('servfail answers SERVFAIL: ESERVFAIL, until it is turned off', async t => {
  const dns = await dnsServer(t)
  dns.set('orders.test', { A: ['10.0.0.1'], ttl: 0 })
  const resolver = resolverFor(dns)
  dns.servfail = true
  assert.equal(await codeOf(resolver.resolve4('orders.test')), 'ESERVFAIL')
  dns.servfail = false
  assert.deepEqual(await resolver.resolve4('orders.test'), ['10.0.0.1'])
})

test('a silent server times the resolver out: ETIMEOUT', async t => {
  const dns = await dnsServer(t)
  dns.set('orders.test', { A: ['10.0.0.1'] })
  dns.silent = true
  assert.equal(await within(5000, 'a timeout', codeOf(resolverFor(dns).resolve4('orders.test'))), 'ETIMEOUT')
  assert.deepEqual(dns.queries, ['A orders.test'])
})

test('a stopped server fails the query within a few seconds', async t => {
  const dns = await dnsServer(t)
  dns.set('orders.test', { A: ['10.0.0.1'] })
  await dns.stop()
  const code = await within(5000, 'an error', codeOf(resolverFor(dns).resolve4('orders.test')))
  assert.ok(code === 'ECONNREFUSED' || code === 'ETIMEOUT', `got ${code}`)
})

test('a record set replaced by set() is seen on the next query', async t => {
  const dns = await dnsServer(t)
  const resolver = resolverFor(dns)
  dns.set('orders.test', { A: ['10.0.0.1'] })
  assert.deepEqual(await resolver.resolve4('orders.test'), ['10.0.0.1'])
  dns.set('orders.test', { A: ['10.0.0.2', '10.0.0.3'] })
  assert.deepEqual((await resolver.resolve4('orders.test')).sort(), ['10.0.0.2', '10.0.0.3'])
  assert.deepEqual(dns.queries, ['A orders.test', 'A orders.test'])
})

test('an answer over 512 bytes is truncated over UDP and comes whole over TCP', async t => {
  const dns = await dnsServer(t)
  const addresses = Array.from({ length: 60 }, (_, i) => `10.0.1.${i + 1}`)
  dns.set('many.orders.test', { A: addresses })
  const answers = await resolverFor(dns).resolve4('many.orders.test')
  assert.deepEqual(answers.sort((a, b) => Number(a.split('.')[3]) - Number(b.split('.')[3])), addresses)
  // Once over UDP (TC set), once more over TCP.
  assert.deepEqual(dns.queries, ['A many.orders.test', 'A many.orders.test'])
})

test('set() rejects what could not be encoded', async t => {
  const dns = await dnsServer(t)
  assert.throws(() => dns.set('orders.test', { A: ['::1'] }), /IPv4/)
  assert.throws(() => dns.set('orders.test', { AAAA: ['10.0.0.1'] }), /IPv6/)
  assert.throws(() => dns.set('a..test', { A: ['10.0.0.1'] }), /label/)
  assert.throws(() => dns.set('orders.test', { SRV: [{ priority: 1, weight: 1, port: 70000, target: 'a.test' }] }), /port/)
  assert.throws(() => dns.set('orders.test', { ttl: -1 }), /ttl/)
})

test('on the wire: id and RD kept, QR and AA set, the question echoed as asked', async t => {
  const dns = await dnsServer(t)
  dns.set('orders.test', { A: ['10.0.0.1'] })
  const socket = dgram.createSocket('udp4')
  t.after(() => socket.close())
  // id 0xbeef, RD, one question: A IN for the mixed-case name.
  const question = Buffer.from([6, ...Buffer.from('OrDeRs'), 4, ...Buffer.from('TeSt'), 0, 0, 1, 0, 1])
  socket.send(Buffer.concat([Buffer.from([0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]), question]), dns.port, '127.0.0.1')
  const [reply] = await within(2000, 'a reply', once(socket, 'message')) as [Buffer]
  assert.equal(reply.readUInt16BE(0), 0xbeef)
  assert.equal(reply.readUInt16BE(2), 0x8000 | 0x0400 | 0x0100) // QR, AA, RD; NOERROR
  assert.deepEqual([reply.readUInt16BE(4), reply.readUInt16BE(6), reply.readUInt16BE(8), reply.readUInt16BE(10)], [1, 1, 0, 0])
  assert.deepEqual(reply.subarray(12, 12 + question.length), question)
  assert.deepEqual([...reply.subarray(-4)], [10, 0, 0, 1])
})
