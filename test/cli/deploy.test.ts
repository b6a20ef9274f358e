import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PeerId } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { describe, expect, it } from 'vitest'
import { deploy, type DeployInit } from '../../cli/deploy.js'
import type { AllocResponse } from '../../shared/protocols/alloc.js'
import { parseRecord } from '../../shared/registry/record.js'
import type { MeshNode } from '../../shared/node.js'
import { testLogger } from '../allocator/util.js'

async function peer (): Promise<PeerId> {
  return peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
}

/** Allocators that answer as ANSWERS says, by position; the asks and progress lines recorded. */
async function setUp (answers: Array<AllocResponse | Error>, running: string[] = []): Promise<{ init: DeployInit, asked: Array<{ index: number, minSeq: number }>, lines: string[] }> {
  const allocators = await Promise.all(answers.map(async (_, i) => ({ id: await peer(), rttMs: i })))
  const asked: Array<{ index: number, minSeq: number }> = []
  const lines: string[] = []
  const init: DeployInit = {
    node: undefined as unknown as MeshNode,
    log: testLogger(),
    allocators,
    progress: line => { lines.push(line) },
    running: async () => new Set(running),
    request: async (allocator, _service, _signal, options) => {
      const index = allocators.findIndex(a => a.id.equals(allocator))
      asked.push({ index, minSeq: options.minSeq })
      const answer = answers[index]
      if (answer instanceof Error) throw answer
      return answer
    }
  }
  return { init, asked, lines }
}

const instance = (peerId: string): AllocResponse => ({ ok: true, instance: { peerId, multiaddrs: [] } })

describe('deploy on publish', () => {
  const record = parseRecord({ name: 'catalog', command: 'x', health: '/healthz', minInstances: 2, seq: 42 })

  it('asks the nearest allocators, one instance each, naming the seq, until minInstances are up', async () => {
    const { init, asked, lines } = await setUp([instance('i1'), instance('i2'), instance('i3')])
    const result = await deploy(record, init)
    expect(result).toEqual({ wanted: 2, up: 2, refusals: [] })
    expect(asked).toEqual([{ index: 0, minSeq: 42 }, { index: 1, minSeq: 42 }])
    expect(lines.at(-1)).toMatch(/^catalog: 2 of 2 instances up in \d+\.\d\d s$/)
  })

  it('goes on past allocators that refuse, fail or answer with an instance already counted', async () => {
    const { init, asked, lines } = await setUp([
      { ok: false, error: { code: 'capacity', message: 'full' } },
      new Error('connection refused'),
      instance('old'),
      instance('i4')
    ], ['old'])
    const result = await deploy(record, init)
    expect(result.up).toBe(2)
    expect(asked.map(a => a.index)).toEqual([0, 1, 2, 3])
    expect(result.refusals).toEqual([expect.stringMatching(/: capacity \(full\)$/), expect.stringMatching(/: unreachable \(connection refused\)$/)])
    expect(lines).toContain('catalog: allocator …' + init.allocators[2].id.toString().slice(-8) + ' already runs one')
  })

  it('says how many are up when the allocators run out', async () => {
    const { init } = await setUp([{ ok: false, error: { code: 'untrusted_record', message: 'no' } }])
    expect(await deploy(record, init)).toEqual({ wanted: 2, up: 0, refusals: [expect.stringMatching(/untrusted_record/)] })
  })

  it('starts nothing when minInstances already run', async () => {
    const { init, asked, lines } = await setUp([instance('i1')], ['a', 'b'])
    expect(await deploy(record, init)).toEqual({ wanted: 2, up: 2, refusals: [] })
    expect(asked).toEqual([])
    expect(lines).toEqual(['catalog: 2 instances running, minInstances 2: nothing to start'])
  })
})
