// Small fixes to libp2p dependencies, applied to node_modules by scripts/build.sh until they
// are fixed upstream. Each names the exact text it replaces: when a dependency update changes
// that text, the build fails here instead of running without the fix. Idempotent.
// Measured effect: BENCHMARKS.md ("Dependency fixes").
import { readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const PATCHES = [
  {
    name: '@libp2p/tcp: one write per message',
    // Noise hands the socket a list per message (a 2-byte length, then the ciphertext), and
    // each piece went out as a write of its own: a syscall, and with Nagle off a TCP segment,
    // each. Corked, the list leaves in one writev.
    file: join(dirname(fileURLToPath(import.meta.resolve('@libp2p/tcp'))), 'socket-to-conn.js'),
    before: `        let canSendMore = true;
        for (const buf of data) {
            sentBytes += buf.byteLength;
            canSendMore = this.socket.write(buf);
            if (!canSendMore) {
                break;
            }
        }
        return {`,
    after: `        let canSendMore = true;
        this.socket.cork();
        for (const buf of data) {
            sentBytes += buf.byteLength;
            canSendMore = this.socket.write(buf);
            if (!canSendMore) {
                break;
            }
        }
        this.socket.uncork();
        return {`
  },
  {
    name: '@chainsafe/libp2p-yamux: window updates at half the window',
    // A window update went out after every data frame received, however small: one more
    // (encrypted) frame per request each way. Go's yamux waits until half the window is used.
    file: join(dirname(fileURLToPath(import.meta.resolve('@chainsafe/libp2p-yamux'))), 'stream.js'),
    before: `        const delta = this.recvWindow - this.recvWindowCapacity;
        this.recvWindowCapacity = this.recvWindow;`,
    after: `        const delta = this.recvWindow - this.recvWindowCapacity;
        if (flags === 0 && delta < this.recvWindow / 2) {
            return;
        }
        this.recvWindowCapacity = this.recvWindow;`
  }
]

let failed = false
for (const patch of PATCHES) {
  const text = readFileSync(patch.file, 'utf8')
  if (text.includes(patch.after)) continue
  const at = text.indexOf(patch.before)
  if (at === -1 || text.indexOf(patch.before, at + 1) !== -1) {
    process.stderr.write(`patch-dependencies: cannot apply '${patch.name}': ${patch.file} does not hold the expected text once (was the dependency updated?)\n`)
    failed = true
    continue
  }
  writeFileSync(patch.file, text.slice(0, at) + patch.after + text.slice(at + patch.before.length))
  process.stdout.write(`patch-dependencies: applied '${patch.name}'\n`)
}
process.exit(failed ? 1 : 0)
