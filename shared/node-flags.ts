/**
 * Flags for node itself that every hyphae daemon runs with. The bins' shebangs carry the
 * same list (`#!/usr/bin/env -S node …`, kept equal by test/shared/node-flags.test.ts), and
 * whatever spawns a daemon with `process.execPath` passes it before the script.
 *
 * `--max-semi-space-size=2` (MB): a proxy's garbage is per request and short-lived; V8's
 * default young generation (16 MB semi-spaces) only makes an idle proxy ~20 MB larger (96
 * against 116 MB in the 20,000-names test) at no throughput or streaming cost we could tell
 * from this machine's noise. Tried and left out: `--heap-growing-percent=20` held 20,000
 * unknown names to +12–18 MB (against +17–47), but its frequent full collections doubled the
 * proxies' CPU per streamed GB; `--optimize-for-size` halved requests per second.
 */
export const DAEMON_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=2']

/** The argv after `process.execPath` that runs `script` as a daemon. */
export function daemonArgv (script: string, args: readonly string[]): string[] {
  return [...DAEMON_NODE_FLAGS, script, ...args]
}
