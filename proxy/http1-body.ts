import type { Framing } from './http1-head.js'

/**
 * Follows one message body through raw bytes without copying or decoding it, to say how many
 * of them belong to the message: the relay passes those on verbatim and keeps the rest for the
 * next message. Chunked framing is checked as strictly as the heads (RFC 9112 §7.1): a chunk
 * line or trailer read one way here and another way by the app behind would let a body carry
 * a second, unseen request.
 */

/** A chunk-size line with its extensions: bounded, as extensions are otherwise free to grow. */
export const MAX_CHUNK_LINE_BYTES = 4096
/** The trailer section, as the head's own bound. */
export const MAX_TRAILER_BYTES = 16 * 1024

export class BodyError extends Error {
  override name = 'BodyError'
}

// States. Bytes of chunk data and of Content-Length bodies are skipped in bulk; only the
// framing around chunks is read byte by byte.
const DONE = 0
const LENGTH = 1
const UNTIL_CLOSE = 2
const SIZE_FIRST = 3
const SIZE = 4
const EXTENSION = 5
const SIZE_LF = 6
const DATA = 7
const DATA_CR = 8
const DATA_LF = 9
const TRAILER_START = 10
const TRAILER_NAME = 11
const TRAILER_VALUE = 12
const TRAILER_LF = 13
const END_LF = 14

const CR = 13
const LF = 10

/** Hex digit values, -1 for other bytes. */
const HEX = new Int8Array(256).fill(-1)
for (let c = 0; c < 10; c++) HEX[48 + c] = c
for (let c = 0; c < 6; c++) {
  HEX[65 + c] = 10 + c
  HEX[97 + c] = 10 + c
}

/** tchar (RFC 9110 §5.6.2). */
const TOKEN = new Uint8Array(256)
for (const c of "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") TOKEN[c.charCodeAt(0)] = 1

/** What a field value or chunk extension may hold: HTAB, SP, VCHAR, obs-text. */
const TEXT = new Uint8Array(256)
TEXT[9] = 1
for (let c = 0x20; c < 0x7f; c++) TEXT[c] = 1
for (let c = 0x80; c < 0x100; c++) TEXT[c] = 1

/** Above this a chunk size would lose precision as a double. */
const MAX_SIZE_BEFORE_DIGIT = Math.floor((Number.MAX_SAFE_INTEGER - 15) / 16)

export class MessageBody {
  private state: number
  /** Bytes left of a Content-Length body or of the current chunk's data. */
  private remaining = 0
  /** Bytes of the current chunk-size line, or of the trailer section so far. */
  private lineBytes = 0
  /**
   * The trailer section's bytes, LF between fields, for a reader that re-frames the body
   * itself and must send the fields on (bounded by MAX_TRAILER_BYTES, as the section is).
   */
  private trailerBytes: number[] | undefined

  /** `keepTrailers`: collect the trailer section's fields, for `trailers`. */
  constructor (framing: Framing, keepTrailers = false) {
    if (keepTrailers && framing.kind === 'chunked') this.trailerBytes = []
    switch (framing.kind) {
      case 'none': this.state = DONE; break
      case 'length':
        this.remaining = framing.length
        this.state = framing.length === 0 ? DONE : LENGTH
        break
      case 'chunked': this.state = SIZE_FIRST; break
      case 'close': this.state = UNTIL_CLOSE; break
    }
  }

  /** The whole body has been seen: any further byte is the next message's. */
  get done (): boolean {
    return this.state === DONE
  }

  /**
   * The trailer fields as Node's flat [name, value, …] (values without surrounding whitespace),
   * once the body is done; empty unless constructed with `keepTrailers`.
   */
  get trailers (): string[] {
    const bytes = this.trailerBytes
    if (bytes == null || bytes.length === 0 || this.state !== DONE) return []
    const fields: string[] = []
    for (const line of Buffer.from(bytes).toString('latin1').split('\n')) {
      if (line === '') continue
      const colon = line.indexOf(':')
      fields.push(line.slice(0, colon), line.slice(colon + 1).replace(/^[\t ]+|[\t ]+$/g, ''))
    }
    return fields
  }

  /**
   * Reads `buf` from `offset`; returns how many of its bytes belong to this body (they end at
   * the body's end, `done` then true). Throws BodyError on bytes that are no valid framing;
   * those bytes must not be passed on. `data`, for the rare reader that cannot take chunked
   * framing (an HTTP/1.0 client): given where each run of chunk data lies in `buf`.
   */
  take (buf: Uint8Array, offset = 0, data?: (from: number, to: number) => void): number {
    const n = buf.length
    let i = offset
    while (i < n) {
      switch (this.state) {
        case DONE:
          return i - offset
        case UNTIL_CLOSE:
          return n - offset
        case LENGTH:
        case DATA: {
          const step = Math.min(this.remaining, n - i)
          if (data != null && this.state === DATA) data(i, i + step)
          i += step
          this.remaining -= step
          if (this.remaining === 0) this.state = this.state === LENGTH ? DONE : DATA_CR
          break
        }
        default:
          this.frame(buf[i++])
      }
    }
    return i - offset
  }

  /** One byte of chunked framing. */
  private frame (c: number): void {
    switch (this.state) {
      case SIZE_FIRST:
        if (HEX[c] < 0) throw new BodyError('a chunk size that is not hexadecimal')
        this.remaining = HEX[c]
        this.lineBytes = 1
        this.state = SIZE
        return
      case SIZE:
        this.line(MAX_CHUNK_LINE_BYTES, 'a chunk-size line')
        if (HEX[c] >= 0) {
          if (this.remaining > MAX_SIZE_BEFORE_DIGIT) throw new BodyError('a chunk size too large')
          this.remaining = this.remaining * 16 + HEX[c]
        } else if (c === 0x3b) {
          this.state = EXTENSION
        } else if (c === CR) {
          this.state = SIZE_LF
        } else {
          // Whitespace too: RFC 9112 allows it only before an extension's ';', and parsers
          // that allow it elsewhere would read another size.
          throw new BodyError('a chunk size followed by something else than an extension or CRLF')
        }
        return
      case EXTENSION:
        this.line(MAX_CHUNK_LINE_BYTES, 'a chunk-size line')
        if (c === CR) this.state = SIZE_LF
        else if (TEXT[c] === 0) throw new BodyError('a control character in a chunk extension')
        return
      case SIZE_LF:
        if (c !== LF) throw new BodyError('a chunk-size line not ended by CRLF')
        if (this.remaining === 0) {
          this.lineBytes = 0
          this.state = TRAILER_START
        } else {
          this.state = DATA
        }
        return
      case DATA_CR:
        if (c !== CR) throw new BodyError('chunk data not followed by CRLF')
        this.state = DATA_LF
        return
      case DATA_LF:
        if (c !== LF) throw new BodyError('chunk data not followed by CRLF')
        this.state = SIZE_FIRST
        return
      case TRAILER_START:
        this.line(MAX_TRAILER_BYTES, 'the trailer section')
        if (c === CR) this.state = END_LF
        // No obs-fold, no line without a name: as in heads.
        else if (TOKEN[c] === 1) {
          this.state = TRAILER_NAME
          this.trailerBytes?.push(c)
        } else throw new BodyError('a trailer line that does not start with a field name')
        return
      case TRAILER_NAME:
        this.line(MAX_TRAILER_BYTES, 'the trailer section')
        if (c === 0x3a) this.state = TRAILER_VALUE
        else if (TOKEN[c] === 0) throw new BodyError('an invalid trailer field name')
        this.trailerBytes?.push(c)
        return
      case TRAILER_VALUE:
        this.line(MAX_TRAILER_BYTES, 'the trailer section')
        if (c === CR) this.state = TRAILER_LF
        else if (TEXT[c] === 0) throw new BodyError('a control character in a trailer field')
        else this.trailerBytes?.push(c)
        return
      case TRAILER_LF:
        this.line(MAX_TRAILER_BYTES, 'the trailer section')
        if (c !== LF) throw new BodyError('a trailer line not ended by CRLF')
        this.trailerBytes?.push(LF)
        this.state = TRAILER_START
        return
      case END_LF:
        if (c !== LF) throw new BodyError('a chunked body not ended by CRLF')
        this.state = DONE
    }
  }

  private line (max: number, what: string): void {
    if (++this.lineBytes > max) throw new BodyError(`${what} longer than ${max} bytes`)
  }
}
