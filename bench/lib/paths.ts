import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

/** The repository root (this file runs as dist/bench/lib/paths.js). */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..')
export const DIST = join(REPO_ROOT, 'dist')
export const PROXY_BIN = join(DIST, 'proxy/main.js')
export const ALLOCATOR_BIN = join(DIST, 'allocator/main.js')
export const TINY_APP = join(DIST, 'bench/apps/tiny-app.js')
export const NODE_HOP = join(DIST, 'bench/apps/node-hop.js')
export const DHT_WORKER = join(DIST, 'bench/dht-worker.js')
export const RESULTS_DIR = join(REPO_ROOT, 'bench/results')
export const HELLO_APP = join(DIST, 'examples/hello/server.js')
