import { execFile, spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { promisify } from 'node:util'
import Docker from 'dockerode'
import { distFile } from '../shared/paths.js'

/** The example app as a local image (no registry is reachable from our machines). */
export const EXAMPLE_IMAGE = 'hyphae-example/hello:1'
const DIGEST_LABEL = 'hyphae.example.digest'
const HELLO_MAIN = distFile('examples/hello/server.js')
/** The toy store's modules, copied as they are into /app/toystore. */
const TOYSTORE_FILES = ['frontend.js', 'catalog.js', 'order.js', 'http-util.js']
/**
 * The image's program: a toy store tier when the allocator names one in HYPHAE_SERVICE, else
 * hello. The examples start only as the program node runs (they are imported by tests too), so
 * argv[1] names the one chosen.
 */
const DISPATCH = `const tiers = ['frontend', 'catalog', 'order']
const service = process.env.HYPHAE_SERVICE ?? ''
process.argv[1] = tiers.includes(service) ? \`/app/toystore/\${service}.js\` : '/app/server.js'
await import(process.argv[1])
`
const run = promisify(execFile)

/** Whether a Docker Engine answers, and if not, why. */
export async function dockerAvailable (docker: Docker = new Docker()): Promise<{ ok: boolean, reason?: string }> {
  try {
    const ping = docker.ping.bind(docker) as unknown as (opts: { abortSignal: AbortSignal }) => Promise<unknown>
    await ping({ abortSignal: AbortSignal.timeout(2000) })
    return { ok: true }
  } catch (err) {
    return { ok: false, reason: `no Docker Engine answers (${err instanceof Error ? err.message : String(err)})` }
  }
}

/**
 * Builds the example app as a local image: from this machine's own node binary and the
 * compiled example, with `docker import` of a root filesystem (no Dockerfile, no base image
 * to pull). Rebuilt only when its inputs changed.
 */
export async function ensureExampleImage (progress: (line: string) => void = () => {}): Promise<string> {
  const server = await readFile(HELLO_MAIN)
  const toystore = await Promise.all(TOYSTORE_FILES.map(async file => await readFile(distFile(`examples/toystore/${file}`))))
  const hash = createHash('sha256').update(process.execPath).update(process.version).update(process.arch).update(server).update(DISPATCH)
  for (const file of toystore) hash.update(file)
  const digest = hash.digest('hex').slice(0, 16)
  if (await imageDigest(EXAMPLE_IMAGE) === digest) return EXAMPLE_IMAGE
  const began = performance.now()
  progress(`building the local image ${EXAMPLE_IMAGE} (node ${process.version} and the example app)…`)

  const root = await mkdtemp(join(tmpdir(), 'hyphae-image-'))
  try {
    await copyInto(root, process.execPath, '/usr/local/bin/node')
    for (const lib of await sharedLibraries(process.execPath)) await copyInto(root, lib, lib)
    await mkdir(join(root, 'app'), { recursive: true })
    await writeFile(join(root, 'app/server.js'), server)
    await mkdir(join(root, 'app/toystore'))
    for (const [i, file] of TOYSTORE_FILES.entries()) await writeFile(join(root, 'app/toystore', file), toystore[i])
    await writeFile(join(root, 'app/main.js'), DISPATCH)
    // Without it node would read the compiled ES modules as CommonJS.
    await writeFile(join(root, 'app/package.json'), '{"type":"module"}\n')
    await mkdir(join(root, 'tmp'))
    await chmod(join(root, 'tmp'), 0o1777)
    // Where the service's volume is mounted (HYPHAE_DATA_DIR); a new volume takes its mode.
    await mkdir(join(root, 'data'))
    await chmod(join(root, 'data'), 0o1777)
    await dockerImport(root, EXAMPLE_IMAGE, [
      'CMD ["/usr/local/bin/node","/app/main.js"]',
      'ENV HOST=0.0.0.0',
      `LABEL ${DIGEST_LABEL}=${digest}`
    ])
  } finally {
    await rm(root, { recursive: true, force: true })
  }
  if (await imageDigest(EXAMPLE_IMAGE) !== digest) throw new Error(`docker import did not produce ${EXAMPLE_IMAGE}`)
  progress(`built ${EXAMPLE_IMAGE} in ${((performance.now() - began) / 1000).toFixed(1)} s`)
  return EXAMPLE_IMAGE
}

async function imageDigest (image: string): Promise<string | undefined> {
  try {
    const info = await new Docker().getImage(image).inspect()
    return info.Config.Labels?.[DIGEST_LABEL]
  } catch {
    return undefined
  }
}

/** The shared libraries and the dynamic loader a binary needs, as absolute paths, from ldd. */
async function sharedLibraries (binary: string): Promise<string[]> {
  const { stdout } = await run('ldd', [binary])
  const paths = new Set<string>()
  for (const line of stdout.split('\n')) {
    // "libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)";
    // linux-vdso has no file.
    const match = /(?:=>\s*)?(\/\S+)\s+\(0x[0-9a-f]+\)/.exec(line)
    if (match != null) paths.add(match[1])
  }
  if (paths.size === 0) throw new Error(`ldd found no shared libraries for ${binary}:\n${stdout}`)
  return [...paths]
}

/** Copies a file's content (symlinks followed) to the same path under the image root. */
async function copyInto (root: string, from: string, to: string): Promise<void> {
  const target = join(root, to)
  await mkdir(dirname(target), { recursive: true })
  await copyFile(from, target)
  await chmod(target, 0o755)
}

/** `tar -C root -c . | docker import --change … - image` */
async function dockerImport (root: string, image: string, changes: string[]): Promise<void> {
  const tar = spawn('tar', ['-C', root, '--numeric-owner', '--owner=0', '--group=0', '-cf', '-', '.'], { stdio: ['ignore', 'pipe', 'pipe'] })
  const args = ['import', ...changes.flatMap(change => ['--change', change]), '-', image]
  const importer = spawn('docker', args, { stdio: ['pipe', 'pipe', 'pipe'] })
  let errors = ''
  // docker exits at once when no engine answers; writing on into its stdin then fails with
  // EPIPE, which would crash us as an unhandled 'error' event. Its exit code tells the story.
  importer.stdin.on('error', () => { tar.kill() })
  tar.stdout.pipe(importer.stdin)
  tar.stderr.on('data', (chunk: Buffer) => { errors += chunk.toString() })
  importer.stderr.on('data', (chunk: Buffer) => { errors += chunk.toString() })
  importer.stdout.resume()
  const exitOf = async (proc: ReturnType<typeof spawn>): Promise<number | null> => await new Promise(resolve => {
    proc.once('error', () => { resolve(-1) })
    proc.once('close', code => { resolve(code) })
  })
  const [tarCode, importCode] = await Promise.all([exitOf(tar), exitOf(importer)])
  if (tarCode !== 0 || importCode !== 0) throw new Error(`building ${image} failed (tar ${String(tarCode)}, docker import ${String(importCode)}): ${errors.trim()}`)
}
