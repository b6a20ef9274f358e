/** The same bytes as a Buffer, without a copy (libp2p streams deliver plain Uint8Arrays). */
export function asBuffer (data: Uint8Array): Buffer {
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength)
}
