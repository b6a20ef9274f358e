import { writeFile } from 'node:fs/promises'
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
