import type { SelectFn, ValidateFn } from '@libp2p/kad-dht'
import { REGISTRY_NAMESPACE, verifySignedRecord } from './signed-record.js'

/**
 * kad-dht validators for our namespace. kad-dht runs them before storing a PUT from a peer,
 * on every value a GET returns and on its own stored value, so a forged or unauthorised
 * record is never stored or used by a node that has them.
 */
export function registryValidators (allowedSigners: readonly string[]): Record<string, ValidateFn> {
  const signers = [...allowedSigners]
  return {
    [REGISTRY_NAMESPACE]: async (key, value) => {
      await verifySignedRecord(key, value, signers)
    }
  }
}

/**
 * kad-dht selectors: the index of the record with the highest seq (ties: the first).
 * kad-dht validates each value before selecting; checking again here keeps the selector
 * correct on its own (a selector must never pick a forged record with a huge seq).
 */
export function registrySelectors (allowedSigners: readonly string[] = []): Record<string, SelectFn> {
  const signers = [...allowedSigners]
  return {
    [REGISTRY_NAMESPACE]: async (key, records) => await selectHighestSeq(key, records, signers)
  }
}

export async function selectHighestSeq (key: Uint8Array, records: Uint8Array[], allowedSigners: readonly string[] = []): Promise<number> {
  let best = 0
  let bestSeq = -1
  for (let i = 0; i < records.length; i++) {
    let seq: number
    try {
      seq = (await verifySignedRecord(key, records[i], allowedSigners)).record.seq
    } catch {
      continue
    }
    if (seq > bestSeq) {
      best = i
      bestSeq = seq
    }
  }
  return best
}

/** The validators and selectors to spread into createMeshNode's init. */
export function registryDhtInit (allowedSigners: readonly string[]): { validators: Record<string, ValidateFn>, selectors: Record<string, SelectFn> } {
  return { validators: registryValidators(allowedSigners), selectors: registrySelectors(allowedSigners) }
}
