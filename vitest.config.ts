import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    setupFiles: ['./test/setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Daemons and libp2p nodes are real; two cores do not run many files at once well.
    maxWorkers: 2,
    fileParallelism: true
  }
})
