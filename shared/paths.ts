import { existsSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

/**
 * The package's root: the nearest folder above this module with a package.json. Code runs
 * compiled from dist/ and, in tests, from the TypeScript sources, at different depths.
 */
function findPackageRoot (): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir)
    if (parent === dir) throw new Error('hyphae: cannot find the package root (no package.json above the code)')
    dir = parent
  }
  return dir
}

export const PACKAGE_ROOT = findPackageRoot()

/** A compiled file of this package, e.g. `proxy/main.js` → `<root>/dist/proxy/main.js`. */
export function distFile (relative: string): string {
  return resolve(PACKAGE_ROOT, 'dist', relative)
}
