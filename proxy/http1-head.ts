/**
 * HTTP/1.1 message heads (RFC 9112) read from bytes and written back, for a relay that passes
 * bodies through verbatim. Strict where leniency lets two parsers disagree about where a
 * message ends (request smuggling): both this relay and the app behind it must see the same
 * messages, so anything a careful parser might read another way is refused.
 */

const CR = 13
const LF = 10

/** Node's own limit (--max-http-header-size): what the app behind us accepts anyway. */
export const MAX_HEAD_BYTES = 16 * 1024

/** A head that cannot be relayed: `status` is what to answer (4xx/5xx), `reason` the stable code. */
export class HeadError extends Error {
  override name = 'HeadError'
  constructor (readonly status: number, readonly reason: string, message: string) {
    super(message)
  }
}

const bad = (message: string): HeadError => new HeadError(400, 'bad_request', `malformed HTTP request: ${message}`)

/** How a message's body is delimited (RFC 9112 §6.3). `length` only counts for 'length'. */
export interface Framing {
  kind: 'none' | 'length' | 'chunked' | 'close'
  length: number
}

const NO_BODY: Framing = Object.freeze({ kind: 'none', length: 0 })
const CHUNKED: Framing = Object.freeze({ kind: 'chunked', length: 0 })
const UNTIL_CLOSE: Framing = Object.freeze({ kind: 'close', length: 0 })

export interface RequestHead {
  method: string
  target: string
  /** HTTP/1.x: 0 or 1 (a later 1.x is read as 1.1, RFC 9110 §6.2). */
  minor: 0 | 1
  /** Node's flat [name, value, …] with names as sent and values without surrounding whitespace. */
  rawHeaders: string[]
  framing: Framing
  /** The client keeps the connection after this exchange (RFC 9112 §9.3). */
  keepAlive: boolean
  /** A protocol upgrade (Connection: upgrade with Upgrade) or a CONNECT tunnel. */
  upgrade: boolean
  expectContinue: boolean
}

export interface ResponseHead {
  minor: 0 | 1
  status: number
  reason: string
  rawHeaders: string[]
  /** Transfer-Encoding as sent (all fields joined), if any. */
  transferEncoding: string | undefined
  contentLength: number | undefined
  /** The server keeps the connection after this exchange. */
  keepAlive: boolean
  /** From `Keep-Alive: timeout=N`: how long the server keeps an idle connection, ms. */
  keepAliveMs: number | undefined
}

/**
 * Where the head at the start of `buf` ends (the index after its CRLFCRLF), or -1 while it is
 * incomplete. `from`: where new bytes start, so that a head arriving in pieces is scanned once.
 * A bare LF is refused as soon as it arrives: parsers that take it for a line end and those
 * that do not read different messages from the same bytes.
 */
export function findHeadEnd (buf: Buffer, from = 0): number {
  let i = buf.indexOf(LF, from)
  while (i !== -1) {
    if (i === 0 || buf[i - 1] !== CR) throw bad('a bare LF')
    if (i >= 3 && buf[i - 2] === LF && buf[i - 3] === CR) return i + 1
    i = buf.indexOf(LF, i + 1)
  }
  return -1
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/
// One SP between the parts, no other whitespace (RFC 9112 §3): a target with a space in it
// is not split somewhere a lenient parser would not.
const REQUEST_LINE = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP\/(\d)\.(\d)$/
/**
 * The target forms of RFC 9112 §3.2 but CONNECT's: origin-form, absolute-form (with a scheme
 * of letters and at most one '@' in the authority: Node's parser, the app's, takes no other)
 * and asterisk-form. What the app would refuse anyway is refused here, with an answer that
 * says so.
 */
const TARGET = /^(?:\/[\x21-\x7e]*|\*|[A-Za-z]+:\/\/[A-Za-z0-9!$%&'()*+,\-.:;=_~[\]]*(?:@[A-Za-z0-9!$%&'()*+,\-.:;=_~[\]]*)?(?:[/?][\x21-\x7e]*)?)$/
const STATUS_LINE = /^HTTP\/1\.(\d) (\d{3})(?: ([\t\x20-\x7e\x80-\xff]*))?$/
/** Outside field-content (RFC 9110 §5.5): CR, LF, NUL and the other controls. */
const BAD_VALUE = /[^\t\x20-\x7e\x80-\xff]/
const DIGITS = /^\d{1,15}$/

/** The head's lines (latin1: one char per byte), without the final empty line. */
function headLines (buf: Buffer, end: number): string[] {
  return buf.toString('latin1', 0, end - 4).split('\r\n')
}

/**
 * Field lines into `raw`. Names must be tokens directly followed by the colon: no obs-fold
 * (a line starting with whitespace) and no whitespace before the colon, which RFC 9112 §5.1
 * says to reject because parsers disagree on them.
 */
function parseFields (lines: string[], raw: string[], fail: (message: string) => HeadError): void {
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]
    const colon = line.indexOf(':')
    if (colon <= 0) throw fail(line.length === 0 ? 'an empty header line' : 'a header line without a name')
    const name = line.slice(0, colon)
    if (!TOKEN.test(name)) throw fail('an invalid header name')
    let start = colon + 1
    let end = line.length
    while (start < end && isOws(line.charCodeAt(start))) start++
    while (end > start && isOws(line.charCodeAt(end - 1))) end--
    const value = line.slice(start, end)
    if (BAD_VALUE.test(value)) throw fail(`an invalid value for ${name}`)
    raw.push(name, value)
  }
}

function isOws (c: number): boolean {
  return c === 32 || c === 9
}

function addTokens (tokens: Set<string> | undefined, value: string): Set<string> {
  const set = tokens ?? new Set<string>()
  for (const token of value.split(',')) {
    const t = token.trim().toLowerCase()
    if (t !== '') set.add(t)
  }
  return set
}

/** Parses the request head that ends at `end` (from findHeadEnd). Throws HeadError. */
export function parseRequestHead (buf: Buffer, end: number): RequestHead {
  if (end > MAX_HEAD_BYTES) throw new HeadError(431, 'headers_too_large', 'request headers too large')
  const lines = headLines(buf, end)
  const line = REQUEST_LINE.exec(lines[0])
  if (line == null) throw bad('an invalid request line (method, target and HTTP/1.x, one space apart)')
  const [, method, target, major, minorDigit] = line
  if (method !== 'CONNECT' && !TARGET.test(target)) throw bad('an invalid request target')
  if (major !== '1') throw new HeadError(505, 'http_version_unsupported', `HTTP/${major}.${minorDigit} is not supported: HTTP/1.1 only`)
  const minor = minorDigit === '0' ? 0 : 1
  const rawHeaders: string[] = []
  parseFields(lines, rawHeaders, bad)

  let transferEncoding: string | undefined
  let contentLength: string | undefined
  let contentLengths = 0
  let hosts = 0
  let connection: Set<string> | undefined
  let upgradeHeader = false
  let expectContinue = false
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]
    // By length first: most names are none of these, and need no lower-casing.
    switch (name.length) {
      case 4:
        if (name.toLowerCase() === 'host') hosts++
        break
      case 6:
        if (name.toLowerCase() === 'expect' && rawHeaders[i + 1].toLowerCase() === '100-continue') expectContinue = true
        break
      case 7:
        if (name.toLowerCase() === 'upgrade') upgradeHeader = true
        break
      case 10:
        if (name.toLowerCase() === 'connection') connection = addTokens(connection, rawHeaders[i + 1])
        break
      case 14:
        if (name.toLowerCase() === 'content-length') {
          contentLengths++
          contentLength = rawHeaders[i + 1]
        }
        break
      case 17:
        if (name.toLowerCase() === 'transfer-encoding') transferEncoding = transferEncoding == null ? rawHeaders[i + 1] : `${transferEncoding}, ${rawHeaders[i + 1]}`
        break
    }
  }
  // RFC 9110 §7.2: more than one Host leaves which origin is meant to whoever reads it.
  if (hosts > 1) throw bad('more than one Host header')
  return {
    method,
    target,
    minor,
    rawHeaders,
    framing: requestFraming(minor, transferEncoding, contentLength, contentLengths),
    keepAlive: minor === 1 ? connection?.has('close') !== true : connection?.has('keep-alive') === true,
    upgrade: method === 'CONNECT' || (upgradeHeader && connection?.has('upgrade') === true),
    expectContinue
  }
}

/** RFC 9112 §6.1–6.3 for requests: the length must be certain, or the request is refused. */
function requestFraming (minor: number, transferEncoding: string | undefined, contentLength: string | undefined, contentLengths: number): Framing {
  if (transferEncoding != null) {
    if (minor === 0) throw bad('Transfer-Encoding in an HTTP/1.0 request')
    if (contentLength != null) throw bad('both Transfer-Encoding and Content-Length')
    const codings = transferEncoding.split(',').map(c => c.trim().toLowerCase())
    if (codings.includes('') || codings[codings.length - 1] !== 'chunked') throw bad('chunked is not the final transfer coding')
    if (codings.length > 1) {
      if (codings.indexOf('chunked') !== codings.length - 1) throw bad('chunked applied more than once')
      throw new HeadError(501, 'transfer_coding_unsupported', `transfer coding '${codings.slice(0, -1).join(', ')}' is not supported: chunked only`)
    }
    return CHUNKED
  }
  if (contentLength != null) {
    if (contentLengths > 1) throw bad('more than one Content-Length')
    if (!DIGITS.test(contentLength)) throw bad('an invalid Content-Length')
    const length = Number(contentLength)
    return length === 0 ? NO_BODY : { kind: 'length', length }
  }
  return NO_BODY
}

/** A response head no one should send on; the message says what is wrong, the caller who sent it. */
const appFail = (message: string): HeadError => new HeadError(502, 'app_invalid_response', message)

/**
 * Gathers a response's bytes until a head is whole, then gives it with the bytes after it
 * (after an interim 1xx, more heads follow: read on with those). Throws HeadError (502) on
 * a head too large or malformed, and on a 101: upgrades are never sent on.
 */
export class ResponseHeadReader {
  private inbox: Buffer | undefined
  private scanned = 0

  /** The next head, `chunk` added to what came before it; undefined until it is whole. */
  read (chunk: Buffer): { head: ResponseHead, rest: Buffer | undefined } | undefined {
    const buf = this.inbox == null ? chunk : Buffer.concat([this.inbox, chunk])
    const end = findHeadEnd(buf, this.scanned)
    if (end === -1) {
      if (buf.length > MAX_HEAD_BYTES) throw appFail('response headers too large')
      this.inbox = buf
      this.scanned = buf.length
      return undefined
    }
    this.inbox = undefined
    this.scanned = 0
    const head = parseResponseHead(buf, end)
    if (head.status === 101) throw appFail('a 101 Switching Protocols, unasked')
    return { head, rest: end < buf.length ? buf.subarray(end) : undefined }
  }
}

/** Parses the response head that ends at `end` (from findHeadEnd). Throws HeadError (502). */
export function parseResponseHead (buf: Buffer, end: number): ResponseHead {
  if (end > MAX_HEAD_BYTES) throw appFail('response headers too large')
  const lines = headLines(buf, end)
  const line = STATUS_LINE.exec(lines[0])
  if (line == null) throw appFail('an invalid status line')
  const status = Number(line[2])
  if (status < 100 || status > 599) throw appFail(`status ${status}`)
  const minor = line[1] === '0' ? 0 : 1
  const rawHeaders: string[] = []
  parseFields(lines, rawHeaders, appFail)

  let transferEncoding: string | undefined
  let contentLength: number | undefined
  let connection: Set<string> | undefined
  let keepAliveMs: number | undefined
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]
    const value = rawHeaders[i + 1]
    switch (name.length) {
      case 10: {
        const lower = name.toLowerCase()
        if (lower === 'connection') connection = addTokens(connection, value)
        else if (lower === 'keep-alive') {
          const timeout = /(?:^|[,;\s])timeout=(\d{1,9})/i.exec(value)
          if (timeout != null) keepAliveMs = Number(timeout[1]) * 1000
        }
        break
      }
      case 14:
        if (name.toLowerCase() === 'content-length') {
          if (contentLength != null) throw appFail('more than one Content-Length')
          if (!DIGITS.test(value)) throw appFail('an invalid Content-Length')
          contentLength = Number(value)
        }
        break
      case 17:
        if (name.toLowerCase() === 'transfer-encoding') transferEncoding = transferEncoding == null ? value : `${transferEncoding}, ${value}`
        break
    }
  }
  // RFC 9112 §6.3: an intermediary would have to drop the Content-Length and close the
  // connection; an app sending both is more likely broken than meant to be understood.
  if (transferEncoding != null && contentLength != null) throw appFail('both Transfer-Encoding and Content-Length')
  return {
    minor,
    status,
    reason: line[3] ?? '',
    rawHeaders,
    transferEncoding,
    contentLength,
    keepAlive: minor === 1 ? connection?.has('close') !== true : connection?.has('keep-alive') === true,
    keepAliveMs
  }
}

/** RFC 9112 §6.3 for a response to a request of `method`. */
export function responseFraming (head: ResponseHead, method: string): Framing {
  const { status } = head
  if (method === 'HEAD' || status < 200 || status === 204 || status === 304) return NO_BODY
  if (head.transferEncoding != null) {
    const codings = head.transferEncoding.split(',')
    // Chunked last: it says where the body ends. Otherwise the body runs until the close.
    return codings[codings.length - 1].trim().toLowerCase() === 'chunked' ? CHUNKED : UNTIL_CLOSE
  }
  if (head.contentLength != null) return { kind: 'length', length: head.contentLength }
  return UNTIL_CLOSE
}

/** A start line and raw headers ([name, value, …]) as head bytes. */
export function serializeHead (startLine: string, rawHeaders: string[]): Buffer {
  let text = `${startLine}\r\n`
  for (let i = 0; i < rawHeaders.length; i += 2) text += `${rawHeaders[i]}: ${rawHeaders[i + 1]}\r\n`
  return Buffer.from(`${text}\r\n`, 'latin1')
}
