import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { loadMeshConfig, parsePositiveInt } from '../../shared/config.js'
import { parseAppAddress } from '../../proxy/address.js'
import { UsageError } from '../../shared/errors.js'

const dir = mkdtempSync(join(tmpdir(), 'hyphae-config-'))
afterAll(() => { rmSync(dir, { recursive: true, force: true }) })

let files = 0
function configFile (content: unknown): string {
  const path = join(dir, `conf-${files++}.json`)
  writeFileSync(path, typeof content === 'string' ? content : JSON.stringify(content))
  return path
}

const CLI_BOOT = '/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWGr15EnzXanNyxZ69NkPdvMwfygsgPTocicR6QLnD2sdo'
const FILE_BOOT = '/ip4/10.0.0.1/tcp/4001'
const ENV_BOOT = '/ip4/10.0.0.2/tcp/4001'
const ENV_BOOT2 = '/dns4/boot.example/tcp/4001'

function usageError (fn: () => unknown): UsageError {
  let caught: unknown
  try { fn() } catch (err) { caught = err }
  expect(caught).toBeInstanceOf(UsageError)
  expect((caught as Error).message).not.toContain('\n')
  return caught as UsageError
}

describe('mesh configuration', () => {
  it('takes bootstraps from the command line, else the config file, else P2P_BOOTSTRAPS', () => {
    const withFile = configFile({ Bootstraps: [FILE_BOOT] })
    const empty = configFile({})
    const env = { P2P_BOOTSTRAPS: ` ${ENV_BOOT}  ${ENV_BOOT2} ` }

    const cli = loadMeshConfig({ configfile: withFile, bootstrap: [CLI_BOOT] }, env)
    expect(cli.bootstraps.map(String)).toEqual([CLI_BOOT])
    expect(cli.bootstrapSource).toBe('command line')

    const file = loadMeshConfig({ configfile: withFile }, env)
    expect(file.bootstraps.map(String)).toEqual([FILE_BOOT])
    expect(file.bootstrapSource).toBe('config file')

    const fromEnv = loadMeshConfig({ configfile: empty }, env)
    expect(fromEnv.bootstraps.map(String)).toEqual([ENV_BOOT, ENV_BOOT2])
    expect(fromEnv.bootstrapSource).toBe('environment')

    const none = loadMeshConfig({ configfile: empty }, {})
    expect(none.bootstraps).toEqual([])
    expect(none.bootstrapSource).toBe('none')
  })

  it('fills defaults for an empty file', () => {
    const config = loadMeshConfig({ configfile: configFile({}) }, {})
    expect(config).toMatchObject({ softRttMs: 100, hardRttMs: 1000, registryKeys: [] })
    expect(config.services.size).toBe(0)
  })

  it('takes the PSK from --psk, else P2P_PSK (a key file path or the key itself)', () => {
    const path = configFile({})
    expect(loadMeshConfig({ configfile: path, psk: '/a/psk' }, { P2P_PSK: '/b/psk' }).pskFile).toBe('/a/psk')
    expect(loadMeshConfig({ configfile: path }, { P2P_PSK: '/b/psk' }).pskFile).toBe('/b/psk')
    const key = `/key/swarm/psk/1.0.0/\n/base16/\n${'ab'.repeat(32)}`
    expect(loadMeshConfig({ configfile: path }, { P2P_PSK: key }).pskText).toBe(key)
  })

  it('refuses unknown fields, at the top and inside', () => {
    expect(usageError(() => loadMeshConfig({ configfile: configFile({ Bootstrap: [] }) }, {})).message).toMatch(/Bootstrap/)
    expect(usageError(() => loadMeshConfig({ configfile: configFile({ Perf: { SoftReq: { RTT: 1, Jitter: 2 }, HardReq: { RTT: 5 } } }) }, {})).message).toMatch(/Jitter/)
  })

  it('refuses a file that is not JSON, or missing', () => {
    const path = configFile('{ "Bootstraps": [ ')
    const err = usageError(() => loadMeshConfig({ configfile: path }, {}))
    expect(err.message).toMatch(/not valid JSON/)
    expect(err.message).toContain(path)
    expect(usageError(() => loadMeshConfig({ configfile: join(dir, 'missing.json') }, {})).message).toMatch(/cannot read config file .*ENOENT/)
  })

  it('refuses an unparsable multiaddr wherever it comes from', () => {
    expect(usageError(() => loadMeshConfig({ configfile: configFile({}), bootstrap: ['tcp/4001'] }, {})).message).toMatch(/invalid bootstrap multiaddr 'tcp\/4001'/)
    expect(usageError(() => loadMeshConfig({ configfile: configFile({ Bootstraps: ['/ip4/999.1.1.1/tcp/1'] }) }, {})).message).toMatch(/invalid bootstrap multiaddr/)
    expect(usageError(() => loadMeshConfig({ configfile: configFile({}) }, { P2P_BOOTSTRAPS: 'nonsense' })).message).toMatch(/invalid bootstrap multiaddr 'nonsense'/)
  })

  it('refuses a soft RTT above the hard RTT', () => {
    const path = configFile({ Perf: { SoftReq: { RTT: 500 }, HardReq: { RTT: 100 } } })
    expect(usageError(() => loadMeshConfig({ configfile: path }, {})).message).toMatch(/SoftReq.RTT \(500\) exceeds Perf.HardReq.RTT \(100\)/)
  })

  it('parses static Services records, named by their key, and refuses bad ones', () => {
    const path = configFile({
      Services: {
        hello: { image: 'nginx:1.27', port: 80, softRttMs: 50 },
        worker: { command: 'node worker.js', env: { MODE: 'fast' }, seq: 4 }
      },
      RegistryKeys: ['12D3KooWGr15EnzXanNyxZ69NkPdvMwfygsgPTocicR6QLnD2sdo']
    })
    const config = loadMeshConfig({ configfile: path }, {})
    expect(config.services.get('hello')).toEqual({ name: 'hello', image: 'nginx:1.27', port: 80, softRttMs: 50, health: '/', seq: 0 })
    expect(config.services.get('worker')).toMatchObject({ name: 'worker', command: 'node worker.js', env: { MODE: 'fast' }, seq: 4 })
    expect(config.registryKeys).toEqual(['12D3KooWGr15EnzXanNyxZ69NkPdvMwfygsgPTocicR6QLnD2sdo'])

    expect(usageError(() => loadMeshConfig({ configfile: configFile({ Services: { bad: { port: 80 } } }) }, {})).message).toMatch(/Services\.bad: .*exactly one of image and command/)
    expect(usageError(() => loadMeshConfig({ configfile: configFile({ Services: { Bad_Name: { image: 'x' } } }) }, {})).message).toMatch(/service names/)
    expect(usageError(() => loadMeshConfig({ configfile: configFile({ Services: { other: { name: 'hello', image: 'x' } } }) }, {})).message).toMatch(/Services\.other/)
  })

  // Found by the fuzz suite (test/fuzz/config.fuzz.test.ts).
  it('keeps every error on one line, whatever line breaks the input quotes', () => {
    const bootstrap = usageError(() => loadMeshConfig({ configfile: configFile({}), bootstrap: ['/ip4/127.0.0.1/tcp/1\n/ip4/1.2.3.4/tcp/2'] }, {}))
    expect(bootstrap.message).not.toMatch(/[\r\n]/)
    expect(bootstrap.message).toContain('/tcp/1\\n/ip4')
    const key = usageError(() => loadMeshConfig({ configfile: configFile({ 'a\nb': 1 }) }, {}))
    expect(key.message).not.toMatch(/[\r\n]/)
  })

  it('refuses numbers past what a double holds exactly, and addresses without a host', () => {
    expect(() => parsePositiveInt('9007199254740993', '--x', 1)).toThrow(UsageError)
    expect(parsePositiveInt('9007199254740991', '--x', 1)).toBe(9007199254740991)
    expect(() => parseAppAddress('[:0')).toThrow(UsageError)
    expect(() => parseAppAddress(':80')).toThrow(UsageError)
    expect(parseAppAddress('[::1]:80')).toEqual({ host: '::1', port: 80 })
  })
})
