import { readFile, writeFile, mkdir } from 'node:fs/promises'
import { dirname } from 'node:path'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { UsageError } from './errors.js'

/**
 * Loads the identity key in FILE, creating it (mode 0600) when it does not exist, so that a
 * daemon keeps its peer ID across restarts. Without a file, a fresh identity.
 */
export async function loadOrCreateKey (file?: string): Promise<PrivateKey> {
  if (file == null) return await generateKeyPair('Ed25519')
  try {
    return privateKeyFromProtobuf(await readFile(file))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      if ((err as NodeJS.ErrnoException).code != null) throw new UsageError(`cannot read key file ${file}: ${(err as NodeJS.ErrnoException).code}`)
      throw new UsageError(`key file ${file} does not hold a libp2p private key`)
    }
  }
  return await createKeyFile(file)
}

/** Writes a new key to FILE (refusing to overwrite one) and returns it. */
export async function createKeyFile (file: string): Promise<PrivateKey> {
  const key = await generateKeyPair('Ed25519')
  try {
    await mkdir(dirname(file), { recursive: true })
    await writeFile(file, privateKeyToProtobuf(key), { mode: 0o600, flag: 'wx' })
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'EEXIST') throw new UsageError(`key file ${file} already exists`)
    throw new UsageError(`cannot write key file ${file}: ${code ?? (err as Error).message}`)
  }
  return key
}
