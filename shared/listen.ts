import type { Server } from 'node:http'
import type { AddressInfo } from 'node:net'

/** Binds an HTTP server to 127.0.0.1 only (ingress, metrics: never another interface). */
export async function listenOnLoopback (server: Server, port: number): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject)
      resolve()
    })
  })
  return (server.address() as AddressInfo).port
}
