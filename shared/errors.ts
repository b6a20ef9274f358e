/** A mistake in what the user gave us (flag, config, argument): one line, exit 2, no stack. */
export class UsageError extends Error {
  override name = 'UsageError'
  constructor (message: string, options?: { cause?: unknown }) {
    // One line whatever it quotes: a value, path or parser message may hold line breaks.
    super(message.replace(/\r\n|\r|\n/g, '\\n'), options)
  }
}

/** An error with an HTTP status and a stable code, carried to the user as a JSON body. */
export class MeshError extends Error {
  override name = 'MeshError'
  constructor (readonly status: number, readonly code: string, message: string) {
    super(message)
  }
}

export function errorMessage (err: unknown): string {
  if (err instanceof Error) return err.message
  return String(err)
}
