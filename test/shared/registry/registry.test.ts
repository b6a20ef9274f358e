import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { createLogger } from '../../../shared/log.js'
import type { MeshNode } from '../../../shared/node.js'
import { registryDhtInit } from '../../../shared/registry/dht-validation.js'
import { parseRecord, type ServiceRecord } from '../../../shared/registry/record.js'
import { Registry, RegistryConflictError, type RegistryInit } from '../../../shared/registry/registry.js'
import { registryKey, signRecord } from '../../../shared/registry/signed-record.js'
import { connectMesh, startTestNode } from '../../helpers/nodes.js'

const log = createLogger('registry-test', 'silent')
const signal = (): AbortSignal => AbortSignal.timeout(15_000)

describe('Registry over a real DHT', () => {
  const nodes: MeshNode[] = []
  const registries: Registry[] = []
  afterEach(async () => {
    await Promise.all(registries.splice(0).map(async r => { await r.stop() }))
    await Promise.all(nodes.splice(0).map(async n => { await n.stop() }))
  })

  async function mesh (count: number, allowedSigners: string[] = [], extra: Array<Parameters<typeof startTestNode>[0]> = []): Promise<MeshNode[]> {
    const started: MeshNode[] = []
    for (let i = 0; i < count; i++) started.push(await startTestNode(registryDhtInit(allowedSigners)))
    for (const init of extra) started.push(await startTestNode(init))
    nodes.push(...started)
    await connectMesh(started)
    return started
  }

  function registry (node: MeshNode, init: Partial<RegistryInit> = {}): Registry {
    const r = new Registry({ node, staticRecords: new Map(), allowedSigners: [], log, ...init })
    r.start()
    registries.push(r)
    return r
  }

  it('publishes from one node and resolves from another', async () => {
    const [, a, b] = await mesh(3)
    const key = await generateKeyPair('Ed25519')
    const result = await registry(a).publish({ name: 'hello', image: 'nginx:1', port: 80, seq: 1 }, key, { signal: signal() })
    expect(result.key).toBe('/hyphae/svc/hello')
    expect(result.signer).toBe(peerIdFromPrivateKey(key).toString())
    expect(result.storedOn).toBeGreaterThan(0)

    const record = await registry(b).resolve('hello', { signal: signal() })
    expect(record).toMatchObject({ name: 'hello', image: 'nginx:1', port: 80, seq: 1 })
    expect(await registry(b).resolve('nobody-here', { signal: signal() })).toBeUndefined()
    expect(await registry(b).resolve('Not A Name', { signal: signal() })).toBeUndefined()
  })

  it('the highest seq wins, and publishing an older seq is refused', async () => {
    const [n0, a, b] = await mesh(3)
    const keyA = await generateKeyPair('Ed25519')
    const keyB = await generateKeyPair('Ed25519')
    await registry(a).publish({ name: 'web', image: 'web:1', seq: 1 }, keyA, { signal: signal() })
    await registry(b).publish({ name: 'web', image: 'web:2', seq: 2 }, keyB, { signal: signal() })
    expect(await registry(n0).resolve('web', { signal: signal() })).toMatchObject({ image: 'web:2', seq: 2 })

    await expect(registry(a).publish({ name: 'web', image: 'web:old', seq: 1 }, keyA, { signal: signal() })).rejects.toBeInstanceOf(RegistryConflictError)
    expect(await registry(n0).resolve('web', { signal: signal() })).toMatchObject({ image: 'web:2', seq: 2 })
  })

  it('validating nodes neither store nor use records that fail validation', async () => {
    const allowedKey = await generateKeyPair('Ed25519')
    const allowed = peerIdFromPrivateKey(allowedKey).toString()
    // The fourth node has no registry validator: it stores and serves whatever it is given.
    const [n0, a, b, rogue] = await mesh(3, [allowed], [{}])
    await registry(a, { allowedSigners: [allowed] }).publish({ name: 'api', image: 'api:1', seq: 1 }, allowedKey, { signal: signal() })

    const strangerSigned = await signRecord({ name: 'api', image: 'evil:1', seq: 999 }, await generateKeyPair('Ed25519'))
    const forged = forge(await signRecord({ name: 'api', image: 'api:1', seq: 2 }, allowedKey), { image: 'evil:2', seq: 1000 })
    const onlyForged = forge(await signRecord({ name: 'ghost', image: 'ghost:1', seq: 1 }, allowedKey), { image: 'evil:3' })
    for (const [name, value] of [['api', strangerSigned], ['api', forged], ['ghost', onlyForged]] as const) {
      // Best effort: the validating peers refuse the put; the rogue keeps it in its own store.
      await rogue.contentRouting.put(registryKey(name), value, { signal: signal() }).catch(() => {})
    }

    for (const node of [n0, b]) {
      const reg = registry(node, { allowedSigners: [allowed] })
      expect(await reg.resolve('api', { signal: signal() })).toMatchObject({ image: 'api:1', seq: 1 })
      expect(await reg.resolve('ghost', { signal: signal() })).toBeUndefined()
    }
    // The rogue did serve its forgery; the validating node discarded it.
    const discarded: string[] = []
    for await (const event of n0.services.dht.get(registryKey('ghost'), { signal: signal() })) {
      if (event.name === 'QUERY_ERROR' && event.from.equals(rogue.peerId)) discarded.push(event.error.message)
    }
    expect(discarded).toContain('invalid record received, discarded')
    // What a validating node stored is still the genuine record.
    const stored = await n0.contentRouting.get(registryKey('api'), { signal: signal() })
    expect(JSON.parse(new TextDecoder().decode(stored)).record).toMatchObject({ image: 'api:1', seq: 1 })
  })

  it('serves from its cache until the TTL passes, with one lookup for concurrent resolves', async () => {
    const [, a, b] = await mesh(3)
    const key = await generateKeyPair('Ed25519')
    let now = 1_000_000
    const reader = registry(b, { ttlMs: 60_000, clock: () => now })
    const lookups = vi.spyOn(b.services.dht, 'get')
    const writer = registry(a)

    await writer.publish({ name: 'cached', image: 'c:1', seq: 1 }, key, { signal: signal() })
    const first = await Promise.all([1, 2, 3, 4, 5].map(async () => await reader.resolve('cached', { signal: signal() })))
    expect(first.map(r => r?.seq)).toEqual([1, 1, 1, 1, 1])
    expect(lookups).toHaveBeenCalledTimes(1)

    await writer.publish({ name: 'cached', image: 'c:2', seq: 2 }, key, { signal: signal() })
    now += 59_000
    expect(await reader.resolve('cached', { signal: signal() })).toMatchObject({ seq: 1 })
    expect(lookups).toHaveBeenCalledTimes(1)

    // Past the TTL: the cached record is served at once while one lookup runs in the background.
    now += 2_000
    expect(await reader.resolve('cached', { signal: signal() })).toMatchObject({ seq: 1 })
    expect(await untilResolves(reader, 'cached', r => r?.seq === 2)).toMatchObject({ image: 'c:2', seq: 2 })
    expect(lookups).toHaveBeenCalledTimes(2)
  })

  it('keeps the static record of a name even when the DHT has a newer one (the operator pins it)', async () => {
    const [, a, b] = await mesh(3)
    let now = 5_000_000
    const staticRecord: ServiceRecord = parseRecord({ name: 'fallback', command: 'serve --static' })
    const reader = registry(b, { staticRecords: new Map([['fallback', staticRecord]]), negativeTtlMs: 2_000, clock: () => now })
    expect(await reader.resolve('fallback', { signal: signal() })).toEqual(staticRecord)

    await registry(a).publish({ name: 'fallback', command: 'serve --dht', seq: 3 }, await generateKeyPair('Ed25519'), { signal: signal() })
    // The DHT has it (a node without a static record sees it)...
    expect(await untilResolves(registry(a), 'fallback', r => r?.seq === 3)).toMatchObject({ command: 'serve --dht' })
    // ...and it still never replaces the operator's record, however long we wait.
    for (let i = 0; i < 3; i++) {
      now += 60_001
      expect(await reader.resolveWithOrigin('fallback', { signal: signal() })).toEqual({ record: staticRecord, origin: { source: 'static' } })
    }
  })

  it('puts a record in use back when the DHT has lost it (its storers restarted empty)', async () => {
    const nodesOf = await mesh(3)
    const [, a, b] = nodesOf
    let now = 7_000_000
    const user = registry(b, { clock: () => now, negativeTtlMs: 1_000 })
    await registry(a).publish({ name: 'lost', image: 'l:1', seq: 1 }, await generateKeyPair('Ed25519'), { signal: signal() })
    expect(await user.resolve('lost', { signal: signal() })).toMatchObject({ seq: 1 })

    // Every node forgets every record, as a restarted in-memory DHT would.
    const wipe = async (): Promise<number> => {
      let removed = 0
      for (const node of nodesOf) {
        const datastore = (node as unknown as { components: { datastore: { query: (q: { prefix: string }) => AsyncIterable<{ key: { toString: () => string } }>, delete: (k: unknown) => Promise<void> } } }).components.datastore
        for await (const entry of datastore.query({ prefix: '/dht/record' })) {
          await datastore.delete(entry.key)
          removed++
        }
      }
      return removed
    }
    expect(await wipe()).toBeGreaterThan(0)
    const fresh = registry(nodesOf[0])
    expect(await fresh.resolve('lost', { signal: signal() })).toBeUndefined()

    // The user's next lookup finds nothing, keeps serving what it knows, and puts it back.
    now += 60_001
    expect(await user.resolve('lost', { signal: signal() })).toMatchObject({ seq: 1 })
    expect(await untilResolves(registry(nodesOf[0]), 'lost', r => r?.seq === 1)).toMatchObject({ image: 'l:1' })
  })

  it('re-puts records it uses, never rolling a newer one back, and forgets unused ones', async () => {
    const [n0, a, b] = await mesh(3)
    const key = await generateKeyPair('Ed25519')
    let now = 9_000_000
    const user = registry(b, { clock: () => now })
    await registry(a).publish({ name: 'kept', image: 'k:1', seq: 1 }, key, { signal: signal() })
    expect(await user.resolve('kept', { signal: signal() })).toMatchObject({ seq: 1 })

    const puts = vi.spyOn(b.services.dht, 'put')
    expect(await user.republishUsed()).toBe(1)
    expect(puts).toHaveBeenCalledTimes(1)
    expect(JSON.parse(new TextDecoder().decode(puts.mock.calls[0][1])).record).toMatchObject({ seq: 1 })

    // A newer record appeared since this node resolved: republishing must carry the newer one.
    await registry(n0).publish({ name: 'kept', image: 'k:2', seq: 2 }, key, { signal: signal() })
    expect(await user.republishUsed()).toBe(1)
    expect(JSON.parse(new TextDecoder().decode(puts.mock.calls[1][1])).record).toMatchObject({ seq: 2 })
    const stored = await a.contentRouting.get(registryKey('kept'), { signal: signal() })
    expect(JSON.parse(new TextDecoder().decode(stored)).record).toMatchObject({ seq: 2 })

    now += 61 * 60_000
    expect(await user.republishUsed()).toBe(0)
  })
})

/** The signed value with record fields changed after signing. */
function forge (value: Uint8Array, change: Record<string, unknown>): Uint8Array {
  const envelope = JSON.parse(new TextDecoder().decode(value)) as { record: Record<string, unknown> }
  Object.assign(envelope.record, change)
  return new TextEncoder().encode(JSON.stringify(envelope))
}

/** Resolves NAME until `done` holds for the answer (a background refresh has landed), within 5 s. */
async function untilResolves (reader: Registry, name: string, done: (record: ServiceRecord | undefined) => boolean): Promise<ServiceRecord | undefined> {
  const deadline = Date.now() + 5000
  for (;;) {
    const record = await reader.resolve(name, { signal: AbortSignal.timeout(5000) })
    if (done(record) || Date.now() > deadline) return record
    await new Promise(resolve => setTimeout(resolve, 20))
  }
}
