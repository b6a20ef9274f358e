import type { Logger } from '../log.js'
import type { MeshNode } from '../node.js'
import { registryKey, verifySignedRecord, type VerifiedRecord } from './signed-record.js'

/** A verified record with the bytes it was signed as: what is put again, unchanged. */
export interface SignedValue extends VerifiedRecord {
  value: Uint8Array
}

/** The registry's values in the DHT: reads the best valid one under a name, puts one. */
export class DhtRecords {
  constructor (
    private readonly node: MeshNode,
    private readonly allowedSigners: readonly string[],
    private readonly log: Logger
  ) {}

  /**
   * The best valid value the DHT returns for NAME, or undefined. Reads kad-dht's events
   * rather than contentRouting.get: that throws away every answer when the query times out or
   * when sending a correction to a stale peer fails, while the answers themselves are good.
   */
  async fetch (name: string, signal: AbortSignal): Promise<SignedValue | undefined> {
    const key = registryKey(name)
    const candidates: Uint8Array[] = []
    try {
      for await (const event of this.node.services.dht.get(key, { signal })) {
        if (event.name === 'VALUE') {
          candidates.push(event.value)
          break
        }
        if (event.name === 'PEER_RESPONSE' && event.record != null) candidates.push(event.record.value)
      }
    } catch (err) {
      this.log.debug({ name, err, answers: candidates.length }, 'registry lookup ended early')
    }

    let best: SignedValue | undefined
    const seen = new Set<string>()
    for (const value of candidates) {
      const id = Buffer.from(value).toString('base64')
      if (seen.has(id)) continue
      seen.add(id)
      try {
        const verified = await verifySignedRecord(key, value, this.allowedSigners)
        if (best == null || verified.record.seq > best.record.seq) best = { ...verified, value }
      } catch (err) {
        this.log.debug({ name, err }, 'ignored an invalid registry value')
      }
    }
    this.log.debug({ name, seq: best?.record.seq, answers: candidates.length }, 'registry lookup')
    return best
  }

  /** Puts VALUE under NAME's key; returns how many peers confirmed storing it. */
  async put (name: string, value: Uint8Array, signal: AbortSignal): Promise<number> {
    const stored = new Set<string>()
    for await (const event of this.node.services.dht.put(registryKey(name), value, { signal })) {
      if (event.name === 'PEER_RESPONSE' && event.messageName === 'PUT_VALUE' && event.record != null && sameBytes(event.record.value, value)) {
        stored.add(event.from.toString())
      }
    }
    return stored.size
  }
}

export function sameBytes (a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && Buffer.compare(a, b) === 0
}
