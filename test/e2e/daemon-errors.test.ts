import { writeFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:net'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { runCli, type BinName } from '../helpers/daemon.js'
import { writeTestConfig, type TestConfig } from '../helpers/mesh.js'

/** A user's mistake on a daemon's command line or config: one line naming it, exit 2, no stack. */
describe('daemon command-line and config errors', () => {
  let config: TestConfig
  let badConfig: string
  let unknownField: string

  beforeAll(async () => {
    config = await writeTestConfig({})
    badConfig = join(config.dir, 'broken.json')
    await writeFile(badConfig, '{ "Perf": ')
    unknownField = join(config.dir, 'unknown.json')
    await writeFile(unknownField, JSON.stringify({ Perf: { SoftReq: { RTT: 100 }, HardReq: { RTT: 1000 } }, Bootstrapz: [] }))
  })

  afterAll(async () => { await config?.cleanup() })

  const cases: Array<[string, BinName, () => string[], RegExp]> = [
    ['an unknown flag', 'hyphae-proxy', () => ['--nope', '0'], /--nope/],
    ['a missing port', 'hyphae-proxy', () => [], /PORT/],
    ['a bad port', 'hyphae-proxy', () => ['99999'], /PORT/],
    ['a bad app address', 'hyphae-proxy', () => ['0', 'hello', 'nohost'], /ADDRESS/],
    ['a missing config file', 'hyphae-proxy', () => ['--configfile', '/nonexistent/conf.json', '0'], /config file/],
    ['a config file that is not JSON', 'hyphae-proxy', () => ['--configfile', badConfig, '0'], /not valid JSON/],
    ['an unknown config field', 'hyphae-allocator', () => ['--configfile', unknownField], /Bootstrapz/],
    ['an unparsable multiaddr', 'hyphae-allocator', () => ['--configfile', config.file, '--bootstrap', '/ip4/not-an-ip/tcp/1'], /multiaddr/],
    ['a bad runtime', 'hyphae-allocator', () => ['--configfile', config.file, '--runtime', 'vm'], /--runtime/],
    ['a bad log level', 'hyphae-allocator', () => ['--configfile', config.file, '--log-level', 'loud'], /--log-level/]
  ]

  it.each(cases)('%s (%s)', async (_what, bin, args, mentions) => {
    const result = await runCli(bin, args())
    expect(result.code).toBe(2)
    const lines = result.stderr.trim().split('\n')
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatch(mentions)
    expect(result.stderr).not.toMatch(/\n\s+at /)
  })
})

/**
 * An address the user chose that is already taken: one line naming the address and the flag
 * or argument to change, exit 2, no stack. runCli waits for stdout and stderr to close, so a
 * child left holding them would fail the case by timing out.
 */
describe('daemon addresses already in use', () => {
  let config: TestConfig
  let blocker: Server
  let port: number

  beforeAll(async () => {
    config = await writeTestConfig({})
    blocker = createServer()
    await new Promise<void>(resolve => blocker.listen(0, '127.0.0.1', resolve))
    port = (blocker.address() as { port: number }).port
  })

  afterAll(async () => {
    await new Promise<void>(resolve => { blocker.close(() => { resolve() }) })
    await config?.cleanup()
  })

  // --log-level error: the daemons log their start at info on stderr; the error line is not a log line.
  const cases: Array<[string, BinName, (port: number) => string[], (port: number) => RegExp]> = [
    ['the allocator\'s --metrics port', 'hyphae-allocator', p => ['--runtime', 'process', '--metrics', String(p)],
      p => new RegExp(`^hyphae-allocator: 127\\.0\\.0\\.1:${p} is in use: choose another --metrics port \\(0 picks a free one\\)$`)],
    ['the proxy\'s --metrics port', 'hyphae-proxy', p => ['--metrics', String(p), '0'],
      p => new RegExp(`^hyphae-proxy: 127\\.0\\.0\\.1:${p} is in use: choose another --metrics port \\(0 picks a free one\\)$`)],
    ['the proxy\'s ingress PORT', 'hyphae-proxy', p => [String(p)],
      p => new RegExp(`^hyphae-proxy: 127\\.0\\.0\\.1:${p} is in use: choose another PORT \\(0 picks a free one\\)$`)],
    ['the proxy\'s --listen address', 'hyphae-proxy', p => ['--listen', `/ip4/127.0.0.1/tcp/${p}`, '0'],
      p => new RegExp(`^hyphae-proxy: /ip4/127\\.0\\.0\\.1/tcp/${p} is in use: choose another --listen address`)],
    ['the allocator\'s --listen address', 'hyphae-allocator', p => ['--runtime', 'process', '--metrics', '0', '--listen', `/ip4/127.0.0.1/tcp/${p}`],
      p => new RegExp(`^hyphae-allocator: /ip4/127\\.0\\.0\\.1/tcp/${p} is in use: choose another --listen address`)]
  ]

  it.each(cases)('%s (%s)', async (_what, bin, args, message) => {
    const result = await runCli(bin, ['--configfile', config.file, '--log-level', 'error', ...args(port)])
    expect(result.code).toBe(2)
    const lines = result.stderr.trim().split('\n')
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatch(message(port))
    expect(result.stderr).not.toMatch(/\n\s+at /)
    expect(result.stdout).not.toMatch(/^ready /m)
  })
})
