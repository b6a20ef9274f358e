import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadOrCreateKey } from '../../shared/identity.js'
import type { MeshNode } from '../../shared/node.js'
import { registryDhtInit } from '../../shared/registry/dht-validation.js'
import { binPath, runCli, type CliResult } from '../helpers/daemon.js'
import { startTestNode } from '../helpers/nodes.js'

// The built CLI, as users run it: `npm run build` first (npm test does).
const CLI = binPath('hyphae')
const dir = mkdtempSync(join(tmpdir(), 'hyphae-cli-'))
/** No bootstraps or log level leaking in from the environment running the tests. */
const env = { P2P_BOOTSTRAPS: '', P2P_PSK: '', HYPHAE_LOG_LEVEL: '' }

async function hyphae (...args: string[]): Promise<CliResult> {
  return await runCli('hyphae', args, { env, timeoutMs: 45_000 })
}

function config (content: unknown): string {
  const path = join(dir, `conf-${Math.random().toString(36).slice(2)}.json`)
  writeFileSync(path, JSON.stringify(content))
  return path
}

function expectOneLineError (result: CliResult, code: number, pattern: RegExp): void {
  expect(result.code, result.stderr).toBe(code)
  const lines = result.stderr.trimEnd().split('\n')
  expect(lines).toHaveLength(1)
  expect(lines[0]).toMatch(/^hyphae: /)
  expect(lines[0]).toMatch(pattern)
  expect(result.stderr).not.toMatch(/\n\s+at /)
}

beforeAll(() => {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build first`)
})
afterAll(() => { rmSync(dir, { recursive: true, force: true }) })

describe('hyphae keygen', () => {
  it('writes a 0600 key file and prints its peer ID, which the key keeps when reused', async () => {
    const file = join(dir, 'keys', 'signer.key')
    const result = await hyphae('keygen', file)
    expect(result.code, result.stderr).toBe(0)
    const peerId = result.stdout.trim()
    expect(peerId).toMatch(/^12D3KooW\w+$/)
    expect(statSync(file).mode & 0o777).toBe(0o600)
    expect(peerIdFromPrivateKey(await loadOrCreateKey(file)).toString()).toBe(peerId)

    expectOneLineError(await hyphae('keygen', file), 2, /already exists/)
  })

  it('answers a bad flag, command or argument with one line and exit 2', async () => {
    expectOneLineError(await hyphae('keygen', '--bogus', join(dir, 'x.key')), 2, /--bogus/)
    expectOneLineError(await hyphae('frobnicate'), 2, /unknown command 'frobnicate'/)
    expectOneLineError(await hyphae(), 2, /missing command/)
    expectOneLineError(await hyphae('registry', 'put', 'Bad_Name', '--image', 'x'), 2, /invalid service name/)
    expectOneLineError(await hyphae('registry', 'put', 'web', '--image', 'x', '--command', 'y'), 2, /exactly one of --image and --command/)
    expectOneLineError(await hyphae('registry', 'get', 'web', '--bootstrap', 'not-a-multiaddr'), 2, /invalid bootstrap multiaddr/)
    expectOneLineError(await hyphae('registry', 'get', 'web', '--configfile', join(dir, 'nope.json')), 2, /cannot read config file/)
  })

  it('names the flag of a bad record number, with the record schema\'s range', async () => {
    expectOneLineError(await hyphae('registry', 'put', 'web', '--image', 'x', '--port', 'abc'), 2, /invalid --port 'abc': expected a port number/)
    expectOneLineError(await hyphae('registry', 'put', 'web', '--image', 'x', '--soft-rtt', '70000'), 2, /invalid --soft-rtt '70000': .*60000/)
    expectOneLineError(await hyphae('registry', 'put', 'web', '--image', 'x', '--cpu', '0'), 2, /invalid --cpu '0'/)
    expectOneLineError(await hyphae('registry', 'put', 'web', '--image', 'x', '--min-instances', '3', '--max-instances', '2'), 2, /invalid record: minInstances must not exceed maxInstances/)
  })

  it('prints help for every command', async () => {
    for (const args of [['--help'], ['keygen', '--help'], ['registry', '--help'], ['registry', 'put', '--help'], ['registry', 'get', '--help'], ['up', '--help']]) {
      const result = await hyphae(...args)
      expect(result.code, args.join(' ')).toBe(0)
      expect(result.stdout).toMatch(/^Usage: hyphae/)
    }
  })
})

describe('hyphae registry, end to end through a bootstrap node', () => {
  let bootstrap: MeshNode
  let bootAddr: string
  let keyFile: string
  let signer: string

  beforeAll(async () => {
    bootstrap = await startTestNode(registryDhtInit([]))
    bootAddr = bootstrap.getMultiaddrs()[0].toString()
    expect(bootAddr).toContain('/p2p/')
    keyFile = join(dir, 'registry.key')
    signer = (await hyphae('keygen', keyFile)).stdout.trim()
  })
  afterAll(async () => { await bootstrap?.stop() })

  it('puts a signed record that a later get finds', async () => {
    const conf = config({})
    const put = await hyphae('registry', 'put', 'hello', '--image', 'nginx:1.27', '--port', '80', '--health', '/healthz',
      '--soft-rtt', '50', '--hard-rtt', '500', '--env', 'GREETING=hi=there', '--seq', '5',
      '--key', keyFile, '--bootstrap', bootAddr, '--configfile', conf)
    expect(put.code, put.stderr).toBe(0)
    expect(put.stdout).toBe(`stored /hyphae/svc/hello seq=5 signer=${signer}\n`)

    const get = await hyphae('registry', 'get', 'hello', '--bootstrap', bootAddr, '--configfile', conf)
    expect(get.code, get.stderr).toBe(0)
    expect(JSON.parse(get.stdout)).toEqual({
      name: 'hello', image: 'nginx:1.27', port: 80, health: '/healthz', softRttMs: 50, hardRttMs: 500, env: { GREETING: 'hi=there' }, seq: 5
    })

    // seq defaults to now, so a later put without --seq wins.
    const again = await hyphae('registry', 'put', 'hello', '--command', 'serve', '--key', keyFile, '--bootstrap', bootAddr, '--configfile', conf)
    expect(again.code, again.stderr).toBe(0)
    const seq = Number(/seq=(\d+)/.exec(again.stdout)?.[1])
    expect(seq).toBeGreaterThan(Date.now() - 60_000)
    const latest = JSON.parse((await hyphae('registry', 'get', 'hello', '--bootstrap', bootAddr, '--configfile', conf)).stdout)
    expect(latest).toMatchObject({ command: 'serve', seq })
  })

  it('falls back to the config file, and fails with one line for an unknown service', async () => {
    const conf = config({ Services: { local: { command: 'run-local', port: 9000 } } })
    const get = await hyphae('registry', 'get', 'local', '--bootstrap', bootAddr, '--configfile', conf)
    expect(get.code, get.stderr).toBe(0)
    expect(JSON.parse(get.stdout)).toMatchObject({ name: 'local', command: 'run-local', port: 9000, seq: 0 })

    expectOneLineError(await hyphae('registry', 'get', 'nobody', '--bootstrap', bootAddr, '--configfile', conf), 1, /no record for service 'nobody'/)
  })

  it('refuses to sign with a key outside RegistryKeys, and says when no bootstrap answers', async () => {
    const other = peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString()
    const put = await hyphae('registry', 'put', 'guarded', '--image', 'x', '--key', keyFile, '--bootstrap', bootAddr, '--configfile', config({ RegistryKeys: [other] }))
    expect(put.code).toBe(1)
    expect(put.stderr).toMatch(/not in RegistryKeys/)
    expect(put.stderr).not.toMatch(/\n\s+at /)

    const dead = await hyphae('registry', 'put', 'web', '--image', 'x', '--key', keyFile, '--bootstrap', '/ip4/127.0.0.1/tcp/1', '--configfile', config({}))
    expect(dead.code).toBe(1)
    expect(dead.stderr).toMatch(/hyphae: no bootstrap reachable/)
    expect(dead.stderr).not.toMatch(/\n\s+at /)
  })
})
