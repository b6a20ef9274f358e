import { createHash } from 'node:crypto'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { create as createDigest } from 'multiformats/hashes/digest'
import { describe, expect, it } from 'vitest'
import { allocatorCid, serviceCid } from '../../shared/cids.js'
import { parseRecord } from '../../shared/registry/record.js'

describe('DHT CIDs', () => {
  const hello = parseRecord({ name: 'hello', image: 'nginx:1.27', port: 80, env: { A: '1', B: '2' }, seq: 1 })

  it('a service CID is stable, whatever the key order and the fields that do not decide how it runs', async () => {
    const first = (await serviceCid(hello)).toString()
    expect((await serviceCid(hello)).toString()).toBe(first)
    const reordered = parseRecord({ seq: 1, env: { B: '2', A: '1' }, port: 80, image: 'nginx:1.27', name: 'hello' })
    expect((await serviceCid(reordered)).toString()).toBe(first)
    // A new seq, RTTs or scaling limits must not move traffic to new instances.
    const retuned = parseRecord({ ...hello, seq: 99, softRttMs: 10, hardRttMs: 20, maxInstances: 3, health: '/healthz' })
    expect((await serviceCid(retuned)).toString()).toBe(first)
  })

  it('a changed image, command, port or env gives a different service CID', async () => {
    const base = (await serviceCid(hello)).toString()
    const variants = [
      { ...hello, image: 'nginx:1.28' },
      { ...hello, image: undefined, command: 'serve' },
      { ...hello, port: 8080 },
      { ...hello, env: { A: '1', B: '3' } },
      { ...hello, name: 'hello2' }
    ]
    const cids = await Promise.all(variants.map(async v => (await serviceCid(parseRecord(v))).toString()))
    for (const cid of cids) expect(cid).not.toBe(base)
    expect(new Set(cids).size).toBe(cids.length)
  })

  it('the allocator CID is the raw CIDv1 of sha256("hyphae/allocator"), a constant', async () => {
    const cid = await allocatorCid()
    const digest = createHash('sha256').update('hyphae/allocator').digest()
    expect(cid.equals(CID.createV1(raw.code, createDigest(0x12, digest)))).toBe(true)
    // Pinned: changing it splits a network into old and new allocators.
    expect(cid.toString()).toBe('bafkreidodiz7nsjqcwmnjp5gyp5ylc73qqdht5m5jp3zhywdzmsv3a3y3m')
  })
})
