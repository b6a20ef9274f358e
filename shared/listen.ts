import type { Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { UsageError } from './errors.js'

/** Bind errors that come from the address the user chose, not from a fault of ours. */
const USER_BIND_ERRORS: Readonly<Record<string, string>> = {
  EADDRINUSE: 'is in use',
  EACCES: 'is not permitted (EACCES; ports below 1024 need privileges)',
  EADDRNOTAVAIL: 'is not an address of this host (EADDRNOTAVAIL)'
}

/** The error code when it is one of USER_BIND_ERRORS, else undefined. */
function userBindErrorCode (err: unknown): string | undefined {
  const code = (err as NodeJS.ErrnoException | undefined)?.code
  return code != null && Object.hasOwn(USER_BIND_ERRORS, code) ? code : undefined
}

/**
 * The one line for an address we could not bind: `127.0.0.1:9101 is in use: choose another
 * --metrics port (0 picks a free one)`. `flag` names what the user changes; `hint` how to
 * let the system choose.
 */
export function bindErrorMessage (address: string, code: string, flag?: string, hint = '0 picks a free one'): string {
  const what = `${address} ${USER_BIND_ERRORS[code] ?? `cannot be bound (${code})`}`
  if (flag == null) return what
  // Another port does not help an address that is not ours.
  return code === 'EADDRNOTAVAIL' ? `${what}: choose another ${flag}` : `${what}: choose another ${flag} (${hint})`
}

/**
 * A loopback port that could not be bound because of the user's choice (in use, privileged):
 * a UsageError, so a daemon prints one line and exits 2. A caller that knows which flag chose
 * the port and did not say so to listenOnLoopback names it with `forFlag`.
 */
export class PortUnavailableError extends UsageError {
  override name = 'PortUnavailableError'
  constructor (readonly port: number, readonly code: string, readonly flag?: string) {
    super(bindErrorMessage(`127.0.0.1:${port}`, code, flag))
  }

  forFlag (flag: string): PortUnavailableError {
    return new PortUnavailableError(this.port, this.code, flag)
  }
}

/**
 * Binds an HTTP server to 127.0.0.1 only (ingress, metrics: never another interface).
 * `flag` describes the option or argument that chose the port (`--metrics port`, `PORT`), for
 * the message when the port is in use.
 */
export async function listenOnLoopback (server: Server, port: number, flag?: string): Promise<number> {
  return await listenOn(server, '127.0.0.1', port, flag)
}

/**
 * Binds an HTTP server to one address. Anything but 127.0.0.1 is for a container's sidecar
 * door on the container network's gateway, which admits only that container.
 */
export async function listenOn (server: Server, host: string, port: number, flag?: string): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => {
      const code = userBindErrorCode(err)
      reject(code != null && host === '127.0.0.1' ? new PortUnavailableError(port, code, flag) : err)
    }
    server.once('error', onError)
    server.listen(port, host, () => {
      server.off('error', onError)
      resolve()
    })
  })
  return (server.address() as AddressInfo).port
}
