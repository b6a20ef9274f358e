import { existsSync } from 'node:fs'
import { chmod, mkdtemp, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { LevelDatastore } from 'datastore-level'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { runCli, startDaemon, stopAllDaemons, type Daemon } from '../helpers/daemon.js'
import { HELLO_SCRIPT, writeTestConfig, type TestConfig } from '../helpers/mesh.js'

/**
 * --data-dir: an allocator that is the only DHT node keeps the records stored on it, its peer
 * store and its identity across a SIGKILL, and a second allocator cannot share its dir.
 */
describe('allocator --data-dir', () => {
  let config: TestConfig
  let scratch: string
  let dataDir: string
  let publisherKey: string
  let allocator: Daemon | undefined
  const command = `"${process.execPath}" "${HELLO_SCRIPT}"`
  const allocatorArgs = (dir: string): string[] => ['--configfile', config.file, '--runtime', 'process', '--metrics', '0', '--data-dir', dir]

  beforeAll(async () => {
    scratch = await mkdtemp(join(tmpdir(), 'hyphae-data-dir-'))
    // Apps (nobody, under root) pass through it to their services' data in the data dir.
    await chmod(scratch, 0o711)
    // Not there yet: the allocator creates it.
    dataDir = join(scratch, 'state', 'allocator')
    publisherKey = join(scratch, 'publisher.key')
    const publisher = await runCli('hyphae', ['keygen', publisherKey])
    expect(publisher.code).toBe(0)
    // No static Services: a record `registry get` finds can only come from the DHT.
    config = await writeTestConfig({}, undefined, [publisher.stdout.trim()])
  })

  afterAll(async () => {
    await stopAllDaemons()
    await config?.cleanup()
    if (scratch != null) await rm(scratch, { recursive: true, force: true })
  })

  async function registryGet (name: string, bootstrap: Daemon): Promise<Awaited<ReturnType<typeof runCli>>> {
    return await runCli('hyphae', ['registry', 'get', name, '--configfile', config.file, '--bootstrap', bootstrap.ready.multiaddrs[0]])
  }

  it('keeps a published record and its peer ID across a SIGKILL, with no one re-publishing', async () => {
    allocator = await startDaemon('hyphae-allocator', allocatorArgs(dataDir))
    const peerId = allocator.ready.peerId
    expect((await stat(dataDir)).mode & 0o777).toBe(0o711)
    expect((await stat(join(dataDir, 'datastore'))).mode & 0o777).toBe(0o700)
    expect((await stat(join(dataDir, 'key'))).mode & 0o777).toBe(0o600)

    const put = await runCli('hyphae', ['registry', 'put', 'durable', '--command', command, '--health', '/healthz', '--key', publisherKey, '--configfile', config.file, '--bootstrap', allocator.ready.multiaddrs[0]])
    expect(put.code, put.stderr).toBe(0)
    const seq = /^stored \/hyphae\/svc\/durable seq=(\d+) /.exec(put.stdout)?.[1]
    expect(seq).toBeDefined()

    expect(await allocator.stop('SIGKILL')).toBeNull()
    allocator = await startDaemon('hyphae-allocator', allocatorArgs(dataDir))
    // The same identity (DIR/key): what it finds its orphans by.
    expect(allocator.ready.peerId).toBe(peerId)

    const got = await registryGet('durable', allocator)
    expect(got.code, got.stderr).toBe(0)
    const record = JSON.parse(got.stdout) as { name: string, command?: string, seq: number }
    expect(record).toMatchObject({ name: 'durable', command, seq: Number(seq) })
  })

  it('a fresh --data-dir has neither the record nor the peer ID (the control)', async () => {
    const fresh = await startDaemon('hyphae-allocator', allocatorArgs(join(scratch, 'fresh')))
    try {
      expect(fresh.ready.peerId).not.toBe(allocator?.ready.peerId)
      const got = await registryGet('durable', fresh)
      expect(got.code).toBe(1)
      expect(got.stderr).toMatch(/no record for service 'durable'/)
    } finally {
      await fresh.stop()
    }
  })

  it('refuses a second allocator on the same --data-dir: exit 2, one line naming --data-dir', async () => {
    const running = allocator as Daemon
    const second = await runCli('hyphae-allocator', allocatorArgs(dataDir))
    expect(second.code).toBe(2)
    const lines = second.stderr.trim().split('\n')
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatch(/^hyphae-allocator: --data-dir \S+ is in use by another allocator .*--data-dir$/)
    expect(second.stderr).not.toMatch(/\n\s+at /)
    // The first one is untouched and still serves the record.
    expect(running.proc.exitCode).toBeNull()
    expect((await registryGet('durable', running)).code).toBe(0)
  })

  it('keeps DHT records under /dht/record and the peer store under /peers in its LevelDB', async () => {
    expect(await (allocator as Daemon).stop('SIGTERM')).toBe(0)
    allocator = undefined
    const store = new LevelDatastore(join(dataDir, 'datastore'))
    await store.open()
    try {
      const keys: string[] = []
      for await (const key of store.queryKeys({})) keys.push(key.toString())
      expect(keys.some(key => key.startsWith('/dht/record/'))).toBe(true)
      expect(keys.some(key => key.startsWith('/peers/'))).toBe(true)
    } finally {
      await store.close()
    }
  })

  it('with --key, the given key wins over DIR/key', async () => {
    const keyFile = join(scratch, 'given.key')
    const keygen = await runCli('hyphae', ['keygen', keyFile])
    expect(keygen.code).toBe(0)
    const dir = join(scratch, 'with-key')
    const withKey = await startDaemon('hyphae-allocator', [...allocatorArgs(dir), '--key', keyFile])
    try {
      expect(withKey.ready.peerId).toBe(keygen.stdout.trim())
      expect(existsSync(join(dir, 'key'))).toBe(false)
    } finally {
      await withKey.stop()
    }
  })

  it('without --data-dir uses $XDG_STATE_HOME/hyphae/allocator, created 0711, its key 0600', async () => {
    const state = join(scratch, 'xdg-state')
    const daemon = await startDaemon('hyphae-allocator', ['--configfile', config.file, '--runtime', 'process', '--metrics', '0'], { env: { XDG_STATE_HOME: state } })
    try {
      const dir = join(state, 'hyphae', 'allocator')
      expect((await stat(dir)).mode & 0o777).toBe(0o711)
      expect((await stat(join(dir, 'key'))).mode & 0o777).toBe(0o600)
      expect(existsSync(join(dir, 'datastore', 'CURRENT'))).toBe(true)
    } finally {
      await daemon.stop()
    }
  })
})
