/**
 * Flags for node itself that every hyphae daemon runs with. The bins' shebangs carry the
 * same list (`#!/usr/bin/env -S node …`, kept equal by test/shared/node-flags.test.ts), and
 * whatever spawns a daemon with `process.execPath` passes it before the script.
 *
 * A proxy's garbage is per request, and under a burst of concurrent requests much of it lives
 * just long enough to be promoted. With V8's defaults (16 MB semi-spaces, old space allowed
 * to grow by up to 4× its live size before a full collection) 20,000 requests for unknown
 * names left a client proxy 30–65 MB larger, all of it collectable garbage. Semi-spaces of
 * 2 MB and old-space steps of 20 % keep the same burst at +12–13 MB (and +1–3 MB for 20,000
 * more), with ~10 MB less at idle and no cost in requests per second we could measure
 * (BENCHMARKS.md). `--optimize-for-size` did as well for memory but halved the throughput.
 */
export const DAEMON_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=2', '--heap-growing-percent=20']

/** The argv after `process.execPath` that runs `script` as a daemon. */
export function daemonArgv (script: string, args: readonly string[]): string[] {
  return [...DAEMON_NODE_FLAGS, script, ...args]
}
