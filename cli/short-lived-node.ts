import { generateKeyPair } from '@libp2p/crypto/keys'
import { COMMON_OPTIONS, type OptionValues } from '../shared/cli-options.js'
import { loadMeshConfig, parseLogLevel, parseMultiaddr, type MeshConfig } from '../shared/config.js'
import { UsageError } from '../shared/errors.js'
import { createLogger, type Logger, type LogLevel } from '../shared/log.js'
import type { MeshNode } from '../shared/node.js'
import type { Registry } from '../shared/registry/registry.js'

/** How long the short-lived node waits for a bootstrap's DHT to let it in. */
const ROUTING_TABLE_WAIT_MS = 10_000
const BOOTSTRAP_DIAL_MS = 5000
const COMMAND_TIMEOUT_MS = 30_000
const DEFAULT_LISTEN = '/ip4/127.0.0.1/tcp/0'
/** Quiet by default: the answer is on stdout and our own one-line messages on stderr; logs are for digging. */
const DEFAULT_LOG_LEVEL: LogLevel = 'error'

/**
 * The options of a command that joins the mesh for a moment. Not all of COMMON_OPTIONS: a node
 * that leaves within seconds has nothing to announce and no metrics to serve.
 */
export const NODE_OPTIONS = {
  configfile: COMMON_OPTIONS.configfile,
  bootstrap: { ...COMMON_OPTIONS.bootstrap, help: 'bootstrap peer; else config Bootstraps, else $P2P_BOOTSTRAPS' },
  psk: COMMON_OPTIONS.psk,
  listen: { ...COMMON_OPTIONS.listen, help: 'address of the short-lived node', defaultText: DEFAULT_LISTEN },
  'log-level': { ...COMMON_OPTIONS['log-level'], defaultText: `${DEFAULT_LOG_LEVEL}, or $HYPHAE_LOG_LEVEL` },
  help: COMMON_OPTIONS.help
}

export type NodeOptions = OptionValues<typeof NODE_OPTIONS>

export interface NodeSetup {
  options: NodeOptions
  config: MeshConfig
  log: Logger
}

/** The mesh configuration and the logger a command's node runs with; config mistakes are UsageErrors. */
export function nodeSetup (options: NodeOptions, env: NodeJS.ProcessEnv): NodeSetup {
  const config = loadMeshConfig(options, env)
  const fromEnv = env.HYPHAE_LOG_LEVEL != null && env.HYPHAE_LOG_LEVEL !== '' ? env.HYPHAE_LOG_LEVEL : undefined
  const log = createLogger('hyphae', options['log-level'] ?? parseLogLevel(fromEnv ?? DEFAULT_LOG_LEVEL))
  return { options, config, log }
}

/** nodeSetup for a command that surveys the mesh: without a bootstrap it has no one to ask. */
export function surveyNodeSetup (options: NodeOptions, env: NodeJS.ProcessEnv): NodeSetup {
  const setup = nodeSetup(options, env)
  if (setup.config.bootstraps.length === 0) throw new UsageError('no bootstrap to ask the mesh through: give --bootstrap MULTIADDR (a daemon prints its own as `bootstrap …` when it starts), or set Bootstraps in the config')
  return setup
}

/**
 * Starts a node for one command, joins the DHT through the bootstraps, runs FN with a
 * Registry on it, and stops everything. The node takes a fresh identity even with --key:
 * --key signs, and a daemon may be running under that key's peer ID right now.
 */
export async function withShortLivedNode (setup: NodeSetup, fn: (registry: Registry, signal: AbortSignal, node: MeshNode) => Promise<number>): Promise<number> {
  const { options, config, log } = setup
  // Loaded here, not at the top: libp2p takes most of a second to import, which --help,
  // keygen and usage errors need not pay.
  const { createMeshNode, dialBootstraps, readPsk, waitForRoutingTable } = await import('../shared/node.js')
  const { registryDhtInit } = await import('../shared/registry/dht-validation.js')
  const { Registry } = await import('../shared/registry/registry.js')
  const listen = (options.listen ?? [DEFAULT_LISTEN]).map(text => parseMultiaddr(text, 'listen'))
  const psk = await readPsk(config.pskFile, config.pskText)
  const signal = AbortSignal.timeout(COMMAND_TIMEOUT_MS)
  const node = await createMeshNode({
    privateKey: await generateKeyPair('Ed25519'),
    listen,
    ...(psk != null ? { psk } : {}),
    ...registryDhtInit(config.registryKeys)
  })
  const reg = new Registry({ node, staticRecords: config.services, allowedSigners: config.registryKeys, log })
  try {
    await node.start()
    if (config.bootstraps.length > 0) {
      const connected = await dialBootstraps(node, config.bootstraps, log, AbortSignal.timeout(BOOTSTRAP_DIAL_MS))
      if (connected === 0) throw new Error(`no bootstrap reachable (tried ${config.bootstraps.map(ma => ma.toString()).join(', ')})`)
      if (!await waitForRoutingTable(node, ROUTING_TABLE_WAIT_MS)) {
        throw new Error(`the bootstraps answered but no DHT peer joined within ${ROUTING_TABLE_WAIT_MS / 1000} s (are they hyphae nodes on the same network key?)`)
      }
    }
    reg.start()
    return await fn(reg, signal, node)
  } finally {
    await reg.stop()
    await node.stop()
  }
}
