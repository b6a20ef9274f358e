import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'
import { runDigest, type ServiceRecord } from './registry/record.js'

async function cidOf (text: string): Promise<CID> {
  return CID.createV1(raw.code, await sha256.digest(new TextEncoder().encode(text)))
}

/** Instances of a service advertise as providers of this CID. */
export async function serviceCid (record: ServiceRecord): Promise<CID> {
  return await cidOf(`hyphae/svc/${record.name}@${runDigest(record)}`)
}

/** Every client proxy advertises as a provider of this CID, so that `hyphae status` finds it. */
export async function clientProxyCid (): Promise<CID> {
  return await cidOf('hyphae/client-proxy')
}

/** Every allocator advertises as a provider of this CID. */
export async function allocatorCid (): Promise<CID> {
  return await cidOf('hyphae/allocator')
}
