import { defineConfig } from 'vitest/config'

/**
 * Tests that measure routing by latency and load (RTT levels, even spread, failover under
 * load, autoscaling) run after the others, one file at a time: on two cores, a neighbour
 * starting a dozen daemons skews every RTT and latency they look at.
 */
const TIMING_SENSITIVE = [
  'test/e2e/routing-*.test.ts',
  'test/e2e/autoscaling.test.ts',
  'test/e2e/faults.test.ts',
  // Load against real daemons: alone, or a neighbour's load (and theirs) skews both.
  'test/e2e/attacks.test.ts',
  'test/e2e/toystore-hosts.test.ts'
]

const shared = {
  setupFiles: ['./test/setup.ts'],
  testTimeout: 60_000,
  hookTimeout: 60_000
}

export default defineConfig({
  test: {
    projects: [
      {
        test: {
          ...shared,
          name: 'parallel',
          include: ['test/**/*.test.ts'],
          exclude: TIMING_SENSITIVE,
          // Daemons and libp2p nodes are real; two cores do not run many files at once well.
          maxWorkers: 2,
          sequence: { groupOrder: 0 }
        }
      },
      {
        test: {
          ...shared,
          name: 'timing',
          include: TIMING_SENSITIVE,
          fileParallelism: false,
          maxWorkers: 1,
          sequence: { groupOrder: 1 }
        }
      }
    ]
  }
})
