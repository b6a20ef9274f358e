import { generateKeyPair } from '@libp2p/crypto/keys'
import { lpStream } from '@libp2p/utils'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ALLOC_PROTOCOL, requestAllocation, type AllocResponse } from '../../shared/protocols/alloc.js'
import type { MeshNode } from '../../shared/node.js'
import { requestStatus, VERSION } from '../../shared/protocols/status.js'
import { registryKey, signRecord } from '../../shared/registry/signed-record.js'
import { startDaemon, stopAllDaemons, type Daemon } from '../helpers/daemon.js'
import { HELLO_SCRIPT, writeTestConfig, type TestConfig } from '../helpers/mesh.js'
import { connectMesh, startTestNode } from '../helpers/nodes.js'

/** Bad input on `/hyphae/alloc/1.0.0`: each gets a coded error or a closed stream, and the allocator keeps serving. */
describe('allocation protocol under bad input', () => {
  let config: TestConfig
  let allocator: Daemon
  let node: MeshNode

  beforeAll(async () => {
    config = await writeTestConfig({ hello: { command: `"${process.execPath}" "${HELLO_SCRIPT}"`, health: '/healthz' } })
    allocator = await startDaemon('hyphae-allocator', ['--configfile', config.file, '--runtime', 'process', '--metrics', '0'])
    // No registry validators on this node: it stores and serves whatever it is given.
    node = await startTestNode()
    await node.dial(multiaddr(allocator.ready.multiaddrs[0]))
    await connectMesh([node])
  })

  afterAll(async () => {
    await node?.stop()
    await stopAllDaemons()
    await config?.cleanup()
  })

  const target = (): ReturnType<typeof multiaddr> => multiaddr(allocator.ready.multiaddrs[0])

  async function rawExchange (bytes: Uint8Array): Promise<{ answer?: AllocResponse, closed: boolean }> {
    const stream = await node.dialProtocol(target(), ALLOC_PROTOCOL, { signal: AbortSignal.timeout(5000) })
    stream.send(bytes)
    await stream.close().catch(() => {})
    try {
      const frame = await lpStream(stream).read({ signal: AbortSignal.timeout(8000) })
      return { answer: JSON.parse(new TextDecoder().decode(frame.subarray())) as AllocResponse, closed: false }
    } catch {
      return { closed: true }
    }
  }

  function frame (payload: Uint8Array): Uint8Array {
    const out = new Uint8Array(payload.length + 2)
    out[0] = 0x80 | (payload.length & 0x7f)
    out[1] = payload.length >> 7
    out.set(payload, 2)
    return out
  }

  it('answers bad_request to a frame of garbage', async () => {
    const { answer } = await rawExchange(frame(new Uint8Array([0xde, 0xad, 0xbe, 0xef, 0xff, 0x00, 0x01])))
    expect(answer).toMatchObject({ ok: false, error: { code: 'bad_request' } })
  })

  it('answers bad_request to JSON that is not a request', async () => {
    const { answer } = await rawExchange(frame(new TextEncoder().encode('{"service":"hello","image":"evil/image"}')))
    expect(answer).toMatchObject({ ok: false, error: { code: 'bad_request' } })
  })

  it('refuses an oversized frame without reading it', async () => {
    // A varint length of 1 MiB, then a little data.
    const { answer, closed } = await rawExchange(new Uint8Array([0x80, 0x80, 0x40, 1, 2, 3]))
    expect(closed || (answer?.ok === false && answer.error.code === 'bad_request')).toBe(true)
  })

  it('answers unknown_service for a name with no record', async () => {
    const answer = await requestAllocation(node, target(), 'nosuch', AbortSignal.timeout(8000))
    expect(answer).toMatchObject({ ok: false, error: { code: 'unknown_service' } })
  })

  it('never starts what a wrongly signed record describes', async () => {
    const signed = await signRecord({ name: 'forged', command: 'touch /tmp/hyphae-forged', health: '/', seq: 1 }, await generateKeyPair('Ed25519'))
    const tampered = new TextDecoder().decode(signed).replace('touch /tmp/hyphae-forged', 'touch /tmp/hyphae-evil!!')
    await node.contentRouting.put(registryKey('forged'), new TextEncoder().encode(tampered), { signal: AbortSignal.timeout(5000) }).catch(() => {})
    const answer = await requestAllocation(node, target(), 'forged', AbortSignal.timeout(8000))
    expect(answer).toMatchObject({ ok: false, error: { code: 'unknown_service' } })
  })

  it('keeps serving valid requests afterwards', async () => {
    const answer = await requestAllocation(node, target(), 'hello', AbortSignal.timeout(15000))
    expect(answer.ok).toBe(true)
  })

  it('answers /hyphae/status/1.0.0 with who it is, whom it trusts and what it runs', async () => {
    const status = await requestStatus(node, peerIdFromString(allocator.ready.peerId), AbortSignal.timeout(5000))
    expect(status).toMatchObject({ role: 'allocator', peerId: allocator.ready.peerId, version: VERSION, trustedSigners: [] })
    expect(status.uptimeS).toBeGreaterThanOrEqual(0)
    expect(status.addresses).toContain(allocator.ready.multiaddrs[0])
    expect(status.instances).toContainEqual(expect.objectContaining({ service: 'hello', state: 'healthy' }))
  })
})
