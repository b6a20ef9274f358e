import { publicKeyFromProtobuf, publicKeyToProtobuf } from '@libp2p/crypto/keys'
import type { PrivateKey, PublicKey } from '@libp2p/interface'
import { peerIdFromPublicKey, peerIdFromString } from '@libp2p/peer-id'
import { z } from 'zod'
import { canonicalJson, describeIssues, InvalidRecordError, parseRecord, type ServiceRecord, type ServiceRecordInput } from './record.js'

/** Every record key lives under this prefix; kad-dht picks validators by its first segment. */
export const REGISTRY_NAMESPACE = 'hyphae'
export const REGISTRY_KEY_PREFIX = `/${REGISTRY_NAMESPACE}/svc/`

/** Domain separation: a signature over a registry record can never be replayed as anything else. */
const SIGNING_CONTEXT = 'hyphae-registry-v1\n'

/**
 * The largest value we parse. The schema bounds each field but not the number of env
 * entries; a value this size is far beyond any sane record and cheap to refuse.
 */
export const MAX_SIGNED_RECORD_BYTES = 64 * 1024

export type RegistryValidationCode = 'too_large' | 'bad_json' | 'bad_envelope' | 'bad_schema' | 'key_mismatch' | 'bad_public_key' | 'bad_signature' | 'signer_not_allowed'

/** Why a DHT value is not a usable registry record. The message is one line, for logs and CLIs. */
export class RegistryValidationError extends Error {
  override name = 'RegistryValidationError'
  constructor (readonly code: RegistryValidationCode, message: string) {
    super(message)
  }
}

export interface VerifiedRecord {
  record: ServiceRecord
  /** Peer ID (string form) of the key that signed the record. */
  signer: string
}

const envelopeSchema = z.strictObject({
  record: z.unknown(),
  publicKey: z.string().min(1),
  signature: z.string().min(1)
})

const encoder = new TextEncoder()
const decoder = new TextDecoder('utf-8', { fatal: true })

export function registryKeyString (name: string): string {
  return REGISTRY_KEY_PREFIX + name
}

/** The DHT key of a service's record: `/hyphae/svc/<name>`. */
export function registryKey (name: string): Uint8Array {
  return encoder.encode(registryKeyString(name))
}

function signedBytes (canonicalRecord: string): Uint8Array {
  return encoder.encode(SIGNING_CONTEXT + canonicalRecord)
}

/**
 * Signs a record for the DHT. The record is validated (and its defaults applied) first, so a
 * publisher cannot sign something every node would refuse.
 */
export async function signRecord (record: ServiceRecord | ServiceRecordInput, privateKey: PrivateKey): Promise<Uint8Array> {
  const parsed = parseRecord(record)
  const canonical = canonicalJson(parsed)
  const signature = await privateKey.sign(signedBytes(canonical))
  const envelope = {
    record: JSON.parse(canonical) as unknown,
    publicKey: Buffer.from(publicKeyToProtobuf(privateKey.publicKey)).toString('base64'),
    signature: Buffer.from(signature).toString('base64')
  }
  return encoder.encode(JSON.stringify(envelope))
}

/** Peer IDs may be written in any multibase; compare their canonical string forms. */
export function normalizePeerIds (ids: readonly string[]): Set<string> {
  const out = new Set<string>()
  for (const id of ids) {
    try {
      out.add(peerIdFromString(id).toString())
    } catch {
      out.add(id)
    }
  }
  return out
}

/**
 * Checks a DHT value under KEY: JSON, envelope, record schema, key/name agreement, signature,
 * and (when ALLOWEDSIGNERS is not empty) that the signer is allowed. Throws
 * RegistryValidationError naming the first problem.
 */
export async function verifySignedRecord (key: Uint8Array | string, value: Uint8Array, allowedSigners: readonly string[]): Promise<VerifiedRecord> {
  if (value.byteLength > MAX_SIGNED_RECORD_BYTES) {
    throw new RegistryValidationError('too_large', `registry value is ${value.byteLength} bytes, more than ${MAX_SIGNED_RECORD_BYTES}`)
  }
  let json: unknown
  try {
    json = JSON.parse(decoder.decode(value))
  } catch (err) {
    throw new RegistryValidationError('bad_json', `registry value is not JSON: ${(err as Error).message}`)
  }
  const envelope = envelopeSchema.safeParse(json)
  if (!envelope.success) {
    throw new RegistryValidationError('bad_envelope', `registry value is not a signed record: ${describeIssues(envelope.error)}`)
  }

  let record: ServiceRecord
  try {
    record = parseRecord(envelope.data.record)
  } catch (err) {
    if (err instanceof InvalidRecordError) throw new RegistryValidationError('bad_schema', `invalid registry record: ${err.message}`)
    throw err
  }

  const keyText = typeof key === 'string' ? key : decodeKey(key)
  const expected = registryKeyString(record.name)
  if (keyText !== expected) {
    throw new RegistryValidationError('key_mismatch', `record for '${record.name}' stored under key ${keyText}, expected ${expected}`)
  }

  let publicKey: PublicKey
  try {
    publicKey = publicKeyFromProtobuf(Buffer.from(envelope.data.publicKey, 'base64'))
  } catch (err) {
    throw new RegistryValidationError('bad_public_key', `registry record has an unreadable public key: ${(err as Error).message}`)
  }
  // The signature covers the record exactly as transmitted, not as parsed: defaults added by
  // a newer schema must not invalidate records signed by an older publisher.
  const signed = signedBytes(canonicalJson(envelope.data.record))
  let ok: boolean
  try {
    ok = await publicKey.verify(signed, Buffer.from(envelope.data.signature, 'base64'))
  } catch {
    ok = false
  }
  const signer = peerIdFromPublicKey(publicKey).toString()
  if (!ok) throw new RegistryValidationError('bad_signature', `registry record for '${record.name}' has a bad signature (claimed signer ${signer})`)

  if (allowedSigners.length > 0 && !normalizePeerIds(allowedSigners).has(signer)) {
    throw new RegistryValidationError('signer_not_allowed', `registry record for '${record.name}' is signed by ${signer}, which is not in RegistryKeys`)
  }
  return { record, signer }
}

function decodeKey (key: Uint8Array): string {
  try {
    return decoder.decode(key)
  } catch {
    throw new RegistryValidationError('key_mismatch', 'registry key is not UTF-8')
  }
}

