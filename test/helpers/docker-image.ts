import { ensureExampleImage } from '../../cli/example-image.js'

export { dockerAvailable, EXAMPLE_IMAGE as TEST_IMAGE } from '../../cli/example-image.js'

/**
 * The example app as a local image (no registry is reachable): the same image `hyphae up
 * --runtime docker` builds, rebuilt only when node or the compiled example changed.
 */
export async function ensureTestImage (): Promise<string> {
  return await ensureExampleImage()
}
