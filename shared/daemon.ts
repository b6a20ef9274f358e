import type { PrivateKey } from '@libp2p/interface'
import type { Multiaddr } from '@multiformats/multiaddr'
import { loadMeshConfig, parseLogLevel, parseMultiaddr, type CommonOptions, type MeshConfig } from './config.js'
import { errorMessage, UsageError } from './errors.js'
import { loadOrCreateKey } from './identity.js'
import { bindErrorMessage } from './listen.js'
import { createLogger, type Logger } from './log.js'
import { createMeshNode, dialBootstraps, readPsk, waitForRoutingTable, type MeshNode, type MeshNodeInit } from './node.js'
import { registryDhtInit } from './registry/dht-validation.js'
import { Registry } from './registry/registry.js'

/** What every daemon has: config, identity, a started libp2p node joined to the mesh, a registry. */
export interface MeshBase {
  config: MeshConfig
  log: Logger
  privateKey: PrivateKey
  node: MeshNode
  registry: Registry
  /** The private network key, when the mesh has one. */
  psk?: Uint8Array
}

export interface MeshBaseInit {
  name: string
  options: CommonOptions
  defaultListen?: string
  registryTtlMs?: number
  env?: NodeJS.ProcessEnv
  /** The libp2p datastore (default: in memory), open already; the caller closes it after the node stops. */
  datastore?: MeshNodeInit['datastore']
  /** The identity key file when --key is not given (default: a fresh identity each run). */
  defaultKeyFile?: string
}

/** Reads config, key and PSK, starts the node, dials the bootstraps and starts the registry. */
export async function startMeshBase (init: MeshBaseInit): Promise<MeshBase> {
  const env = init.env ?? process.env
  const log = createLogger(init.name, parseLogLevel(init.options['log-level'], env))
  const config = loadMeshConfig(init.options, env)
  const listen: Multiaddr[] = (init.options.listen ?? [init.defaultListen ?? '/ip4/127.0.0.1/tcp/0']).map(text => parseMultiaddr(text, '--listen'))
  const announce = (init.options.announce ?? []).map(text => parseMultiaddr(text, '--announce'))
  const psk = await readPsk(config.pskFile, config.pskText)
  const privateKey = await loadOrCreateKey(init.options.key ?? init.defaultKeyFile)
  let node: MeshNode
  try {
    // createLibp2p starts the node (and stops it again when a listener fails).
    node = await createMeshNode({ privateKey, listen, announce, psk, datastore: init.datastore, ...registryDhtInit(config.registryKeys) })
    await node.start()
  } catch (err) {
    throw listenFailure(err) ?? new UsageError(`cannot start the libp2p node (listen ${listen.join(' ')}): ${errorMessage(err).split('\n')[0]}`)
  }
  if (config.bootstraps.length === 0) {
    log.info('no bootstrap configured: this node is the first of its mesh')
  } else {
    const connected = await dialBootstraps(node, config.bootstraps, log)
    if (connected > 0 && await waitForRoutingTable(node, 5000)) {
      log.info({ connected, of: config.bootstraps.length, source: config.bootstrapSource }, 'joined the mesh')
    } else {
      log.warn({ of: config.bootstraps.length, source: config.bootstrapSource }, 'no bootstrap answered: running alone until a peer connects')
    }
  }
  const registry = new Registry({ node, staticRecords: config.services, allowedSigners: config.registryKeys, log: log.child({ component: 'registry' }), ttlMs: init.registryTtlMs })
  registry.start()
  return { config, log, privateKey, node, registry, psk }
}

/**
 * A --listen address the node could not listen on, as one line naming it, or undefined when
 * `err` is not that. libp2p reports it as an UnsupportedListenAddressesError whose message
 * holds one `  ADDRESS: ERROR` line per failed address (with the stack after it).
 */
export function listenFailure (err: unknown): UsageError | undefined {
  if (!(err instanceof Error) || err.name !== 'UnsupportedListenAddressesError') return undefined
  const failures = [...err.message.matchAll(/^ {2}(\/\S+): (.*)$/gm)].map(([, address, message]) => ({ address, message }))
  if (failures.length === 0) return new UsageError(`cannot listen on a --listen address: ${err.message.split('\n')[0]}`)
  for (const { address, message } of failures) {
    const code = /\b(EADDRINUSE|EACCES|EADDRNOTAVAIL)\b/.exec(message)?.[1]
    if (code != null) return new UsageError(bindErrorMessage(address, code, '--listen address', '/tcp/0 picks a free port'))
  }
  const { address, message } = failures[0]
  return new UsageError(`cannot listen on --listen ${address}: ${message.replace(/^\w*Error: /, '')}`)
}

/** The one `ready <json>` line on stdout that scripts and tests wait for. */
export function printReady (info: { peerId: string, multiaddrs: string[], http?: string } & Record<string, unknown>): void {
  // Whoever started us may stop reading stdout (or die): a daemon keeps running, logging to stderr.
  process.stdout.on('error', () => {})
  // For people: the addresses to give other hosts as --bootstrap, one a line, before the
  // machine-readable line that says it is ready.
  const plain = info.multiaddrs.map(ma => `bootstrap ${ma}\n`).join('')
  process.stdout.write(`${plain}ready ${JSON.stringify(info)}\n`)
}

export interface Stoppable {
  stop: () => Promise<void>
}

/**
 * Runs a daemon's main: a user mistake is one line and exit 2, any other failure one line
 * and exit 1; SIGINT/SIGTERM stop it cleanly and exit 0.
 */
export function runDaemon (name: string, main: () => Promise<Stoppable | undefined>): void {
  main().then(daemon => {
    if (daemon == null) return
    let stopping = false
    const shutdown = (signal: string): void => {
      if (stopping) return
      stopping = true
      daemon.stop().then(() => { process.exit(0) }, err => {
        process.stderr.write(`${name}: error while stopping after ${signal}: ${errorMessage(err)}\n`)
        process.exit(1)
      })
    }
    process.on('SIGINT', () => { shutdown('SIGINT') })
    process.on('SIGTERM', () => { shutdown('SIGTERM') })
    // Started by a parent over an IPC channel (`hyphae up`, process sidecars): the channel
    // closes when the parent dies, even by SIGKILL, which no signal tells us. Stop then,
    // rather than run on as an orphan holding ports.
    if (process.channel != null) {
      process.channel.unref()
      if (!process.connected) shutdown('parent exit')
      else process.once('disconnect', () => { shutdown('parent exit') })
    }
  }, err => {
    process.stderr.write(`${name}: ${errorMessage(err)}\n`)
    process.exit(err instanceof UsageError ? 2 : 1)
  })
}
