import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { describe, expect, it } from 'vitest'
import type { ServiceRecordInput } from '../../../shared/registry/record.js'
import { registryKey, RegistryValidationError, signRecord, verifySignedRecord } from '../../../shared/registry/signed-record.js'

const record: ServiceRecordInput = { name: 'hello', image: 'nginx:1.27', port: 80, env: { B: '2', A: '1' }, seq: 7 }

interface Envelope { record: Record<string, unknown>, publicKey: string, signature: string }

function envelopeOf (value: Uint8Array): Envelope {
  return JSON.parse(new TextDecoder().decode(value)) as Envelope
}

function edit (value: Uint8Array, change: (envelope: Envelope) => void): Uint8Array {
  const envelope = envelopeOf(value)
  change(envelope)
  return new TextEncoder().encode(JSON.stringify(envelope))
}

async function refusal (promise: Promise<unknown>): Promise<RegistryValidationError> {
  const err = await promise.then(() => undefined, (e: unknown) => e)
  expect(err).toBeInstanceOf(RegistryValidationError)
  return err as RegistryValidationError
}

describe('signed registry records', () => {
  it('round-trips: the verified record and signer are what was signed', async () => {
    const key = await generateKeyPair('Ed25519')
    const value = await signRecord(record, key)
    const envelope = envelopeOf(value)
    expect(Object.keys(envelope).sort()).toEqual(['publicKey', 'record', 'signature'])

    const verified = await verifySignedRecord(registryKey('hello'), value, [])
    expect(verified.signer).toBe(peerIdFromPrivateKey(key).toString())
    expect(verified.record).toMatchObject({ name: 'hello', image: 'nginx:1.27', port: 80, env: { A: '1', B: '2' }, health: '/', seq: 7 })
    // A string key and an allow-list naming the signer are fine too.
    await verifySignedRecord('/hyphae/svc/hello', value, [verified.signer])
  })

  it('accepts any libp2p key type as signer', async () => {
    const key = await generateKeyPair('secp256k1')
    const value = await signRecord(record, key)
    expect((await verifySignedRecord(registryKey('hello'), value, [])).signer).toBe(peerIdFromPrivateKey(key).toString())
  })

  it('refuses a tampered record', async () => {
    const value = await signRecord(record, await generateKeyPair('Ed25519'))
    const tampered = edit(value, e => { e.record.image = 'evil:latest' })
    expect((await refusal(verifySignedRecord(registryKey('hello'), tampered, []))).code).toBe('bad_signature')
    const bumped = edit(value, e => { e.record.seq = 999 })
    expect((await refusal(verifySignedRecord(registryKey('hello'), bumped, []))).code).toBe('bad_signature')
  })

  it('refuses a record signed by another key than the one it names', async () => {
    const value = await signRecord(record, await generateKeyPair('Ed25519'))
    const other = await signRecord(record, await generateKeyPair('Ed25519'))
    const swapped = edit(value, e => { e.publicKey = envelopeOf(other).publicKey })
    const err = await refusal(verifySignedRecord(registryKey('hello'), swapped, []))
    expect(err.code).toBe('bad_signature')
    expect(err.message).toMatch(/bad signature/)
  })

  it('refuses a signer not in the allowed list', async () => {
    const allowed = peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString()
    const value = await signRecord(record, await generateKeyPair('Ed25519'))
    const err = await refusal(verifySignedRecord(registryKey('hello'), value, [allowed]))
    expect(err.code).toBe('signer_not_allowed')
    expect(err.message).toMatch(/not in RegistryKeys/)
  })

  it('refuses a record stored under another name', async () => {
    const value = await signRecord(record, await generateKeyPair('Ed25519'))
    const err = await refusal(verifySignedRecord(registryKey('other'), value, []))
    expect(err.code).toBe('key_mismatch')
    expect(err.message).toContain('/hyphae/svc/hello')
  })

  it('refuses bad JSON, a bad envelope and a record failing the schema', async () => {
    const key = registryKey('hello')
    expect((await refusal(verifySignedRecord(key, new TextEncoder().encode('{not json'), []))).code).toBe('bad_json')
    expect((await refusal(verifySignedRecord(key, new Uint8Array([0xff, 0xfe]), []))).code).toBe('bad_json')
    expect((await refusal(verifySignedRecord(key, new TextEncoder().encode('{"record":{}}'), []))).code).toBe('bad_envelope')
    const value = await signRecord(record, await generateKeyPair('Ed25519'))
    const both = edit(value, e => { e.record.command = 'run-it' })
    const err = await refusal(verifySignedRecord(key, both, []))
    expect(err.code).toBe('bad_schema')
    expect(err.message).toMatch(/exactly one of image and command/)
  })

  it('will not sign an invalid record', async () => {
    await expect(signRecord({ name: 'Bad Name', image: 'x' }, await generateKeyPair('Ed25519'))).rejects.toThrow(/service names/)
  })
})
