import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { COMMON_OPTIONS, optionsHelp } from '../shared/cli-options.js'
import { createKeyFile } from '../shared/identity.js'
import { onePositional, parseCommand, type Io } from './command.js'

const OPTIONS = { help: COMMON_OPTIONS.help }

const HELP = `Usage: hyphae keygen FILE

Writes a new Ed25519 identity key to FILE (mode 0600; an existing file is never
overwritten) and prints its peer ID. Use the file with --key.

Options:
${optionsHelp(OPTIONS)}`

/** `hyphae keygen FILE` */
export async function keygen (argv: string[], io: Io): Promise<number> {
  const { values, positionals } = parseCommand(argv, OPTIONS)
  if (values.help === true) {
    io.out(HELP)
    return 0
  }
  const key = await createKeyFile(onePositional(positionals, 'FILE'))
  io.out(peerIdFromPrivateKey(key).toString())
  return 0
}
