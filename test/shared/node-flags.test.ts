import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { promisify } from 'node:util'
import { describe, expect, it } from 'vitest'
import { DAEMON_NODE_FLAGS, daemonArgv } from '../../shared/node-flags.js'
import { binPath } from '../helpers/daemon.js'

describe('the daemons\' node flags', () => {
  const shebang = `#!/usr/bin/env -S node ${DAEMON_NODE_FLAGS.join(' ')}`

  it.each(['hyphae-proxy', 'hyphae-allocator'] as const)('%s carries them in its shebang, and runs as a bin with it', async bin => {
    expect(readFileSync(binPath(bin), 'utf8').split('\n')[0]).toBe(shebang)
    // Executed directly, as npx and an installed bin are: `env -S` splits the flags off.
    const { stdout } = await promisify(execFile)(binPath(bin), ['--help'], { timeout: 20_000 })
    expect(stdout).toMatch(/^usage: /)
  })

  it('puts them before the script', () => {
    expect(daemonArgv('/x/main.js', ['--a', '1'])).toEqual([...DAEMON_NODE_FLAGS, '/x/main.js', '--a', '1'])
  })
})
