import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { connect } from 'node:net'
import type { AddressInfo } from 'node:net'
import type { PeerId, Stream } from '@libp2p/interface'
import type { Multiaddr } from '@multiformats/multiaddr'
import fc from 'fast-check'
import type { MeshNode } from '../../shared/node.js'

/**
 * Generated HTTP/1.x requests as raw bytes, a raw exchange over any byte pipe (a TCP socket,
 * a libp2p stream), and the judge of what came back. A request is a latin1 string: one char
 * per byte, so that fast-check prints and shrinks it as text.
 */
export interface RawRequest {
  /** The bytes to send, latin1. */
  text: string
  /** Where the bytes are split into separate writes (offsets, ascending). */
  splits: number[]
  /**
   * Complete by construction (the request line, headers and framing are consistent and
   * nothing is cut): the exchange keeps the connection open and waits for the answer. An
   * incomplete request is followed by a half-close at once, so that a server never waits
   * for bytes that will not come; so is a complete one when `fin` is set.
   */
  complete: boolean
  fin: boolean
  /** Sent as a well-behaved client would (only the target is free): the app must get it. */
  clean?: boolean
  /** The request target as generated (also inside `text`). */
  target?: string
  /** Clean requests: the method, and the body's length once de-chunked (what the app must get). */
  method?: string
  bodyLength?: number
}

const latin1Char = fc.integer({ min: 0, max: 255 }).map(c => String.fromCharCode(c))
/** Any bytes at all: NUL, bare CR and LF, DEL, high bytes. */
export const latin1 = (maxLength: number): fc.Arbitrary<string> => fc.string({ unit: latin1Char, maxLength })
/** Text as a client would send it in UTF-8, as latin1 bytes. */
const utf8 = (maxLength: number): fc.Arbitrary<string> =>
  fc.string({ unit: 'grapheme', maxLength }).map(s => Buffer.from(s, 'utf8').toString('latin1'))
const token = fc.stringMatching(/^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,16}$/)
const printableChar = fc.integer({ min: 0x20, max: 0x7e }).map(c => String.fromCharCode(c))
const printable = (maxLength: number): fc.Arbitrary<string> => fc.string({ unit: printableChar, maxLength })

export const methodArb: fc.Arbitrary<string> = fc.oneof(
  { weight: 10, arbitrary: fc.constantFrom('GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'OPTIONS', 'PATCH') },
  { weight: 2, arbitrary: fc.constantFrom('TRACE', 'CONNECT', 'PROPFIND', 'PURGE', 'SEARCH', 'M-SEARCH', 'QUERY', 'get', 'Get', 'PRI') },
  { weight: 1, arbitrary: token },
  { weight: 1, arbitrary: latin1(12) },
  { weight: 1, arbitrary: fc.nat({ max: 20_000 }).map(n => 'G'.repeat(n)) }
)

const VERSIONS = ['HTTP/1.1', 'HTTP/1.0', 'HTTP/2.0', 'HTTP/0.9', 'HTTP/1.2', 'http/1.1', 'HTTP/1.10', 'HTTP/1', 'HTTP/', 'HTTP/3.0', 'HTTP/1.1 ', 'ICE/1.0']
const versionArb = fc.oneof(
  { weight: 12, arbitrary: fc.constant('HTTP/1.1') },
  { weight: 2, arbitrary: fc.constant('HTTP/1.0') },
  { weight: 2, arbitrary: fc.constantFrom(...VERSIONS) }
)

/** Paths: ordinary, odd, byte soup. */
export const pathArb: fc.Arbitrary<string> = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom('', '/', '/a', '/a/b?x=1', '/?', '?x=1', '/%2e%2e/x', '/../../etc/passwd', '//double//slash', '/a%00b', '/#frag', '/%', '/%zz', '/a b', '/\té') },
  { weight: 6, arbitrary: fc.stringMatching(/^(\/[A-Za-z0-9._~%!$&'()*+,;=:@-]{0,10}){0,4}(\?[A-Za-z0-9=&%+/]{0,16})?$/) },
  { weight: 1, arbitrary: latin1(20).map(s => `/${s}`) },
  { weight: 1, arbitrary: utf8(10).map(s => `/${s}`) }
)

/** A header value too big for Node's 16 KiB header limit, or just under it. */
const bigValue = fc.oneof(fc.nat({ max: 24_000 }), fc.integer({ min: 16_000, max: 16_400 })).map(n => 'x'.repeat(n))

const headerLineArb: fc.Arbitrary<string> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.tuple(
      fc.constantFrom('Accept', 'User-Agent', 'X-Custom', 'Cookie', 'Referer', 'Accept-Encoding', 'X-Forwarded-For', 'Via', 'X-Forwarded-Prefix', 'Trailer', 'TE', 'Keep-Alive', 'Proxy-Connection', 'Upgrade', 'Authorization', 'Proxy-Authorization', 'Content-Type', 'X-Hop'),
      printable(40)
    ).map(([name, value]) => `${name}: ${value}`)
  },
  {
    weight: 2,
    arbitrary: fc.constantFrom('Connection: close', 'Connection: keep-alive', 'Connection: Upgrade', 'Connection: X-Hop, TE', 'Connection: Host',
      'Connection: Content-Length', 'Connection: ,,,', 'Upgrade: websocket', 'Upgrade: h2c', 'Expect: 100-continue', 'Expect: something-else',
      'Host: 127.0.0.1', 'Host: a', 'Host:', 'Host: a b', 'Host: [::1]:80', 'Host: @evil', 'Via: 1.1 hyphae', 'X-Forwarded-Prefix: /other',
      'Trailer: X-T', 'TE: trailers')
  },
  { weight: 1, arbitrary: fc.tuple(token, latin1(30)).map(([name, value]) => `${name}: ${value}`) },
  { weight: 1, arbitrary: fc.tuple(latin1(12), printable(10)).map(([name, value]) => `${name}: ${value}`) },
  { weight: 1, arbitrary: bigValue.map(value => `X-Big: ${value}`) },
  { weight: 1, arbitrary: fc.constantFrom(' folded continuation', '\tfolded', 'no colon here', ': empty name', 'X-Sp ace: v', 'X-Colon : v', 'X-Nul: a\0b', 'X-Bare-CR: a\rb', 'X-Bare-LF: a\nb', 'X-Del: \x7f', 'X-Empty:', 'X-Tab:\tv\t') },
  { weight: 1, arbitrary: utf8(20).map(value => `X-Utf8: ${value}`) }
)

interface Framing {
  headers: string[]
  body: string
  complete: boolean
  /** The body as the app must receive it, when the framing is valid by construction. */
  decodedLength?: number
}

const bodyBytes = fc.oneof(
  { weight: 6, arbitrary: latin1(256) },
  { weight: 1, arbitrary: fc.nat({ max: 300_000 }).map(n => 'b'.repeat(n)) }
)

const chunkSize = (n: number): string => n.toString(16)

const framingArb: fc.Arbitrary<Framing> = fc.oneof(
  { weight: 5, arbitrary: fc.constant<Framing>({ headers: [], body: '', complete: true }) },
  { weight: 4, arbitrary: bodyBytes.map(body => ({ headers: [`Content-Length: ${body.length}`], body, complete: true })) },
  // Fewer bytes than declared: the server must wait for the rest, so the client half-closes.
  { weight: 1, arbitrary: fc.tuple(bodyBytes, fc.integer({ min: 1, max: 1_000_000 })).map(([body, more]) => ({ headers: [`Content-Length: ${body.length + more}`], body, complete: false })) },
  // More bytes than declared: the rest is parsed as the next request.
  { weight: 1, arbitrary: fc.tuple(bodyBytes, fc.nat({ max: 50 })).map(([body, less]) => ({ headers: [`Content-Length: ${Math.max(0, body.length - less)}`], body, complete: true })) },
  {
    weight: 1,
    arbitrary: fc.tuple(fc.constantFrom('abc', '-1', '1e3', ' 5 ', '0x10', '99999999999999999999', '18446744073709551616', '5, 5', '+5', '', '٣'), latin1(20))
      .map(([length, body]) => ({ headers: [`Content-Length: ${length}`], body, complete: false }))
  },
  {
    weight: 1,
    arbitrary: fc.tuple(latin1(20), fc.boolean()).map(([body, same]) => ({ headers: [`Content-Length: ${body.length}`, `Content-Length: ${same ? body.length : body.length + 1}`], body, complete: false }))
  },
  {
    weight: 4,
    arbitrary: fc.tuple(fc.array(latin1(64), { maxLength: 5 }), fc.option(fc.constantFrom(';a=b', ';ext', ';x="q"')), fc.array(fc.constantFrom('X-T: 1', 'X-Checksum: abc', 'Content-Length: 3'), { maxLength: 2 }))
      .map(([chunks, ext, trailers]) => ({
        headers: ['Transfer-Encoding: chunked'],
        body: chunks.filter(c => c.length > 0).map(c => `${chunkSize(c.length)}${ext ?? ''}\r\n${c}\r\n`).join('') + `0\r\n${trailers.map(t => `${t}\r\n`).join('')}\r\n`,
        complete: true
      }))
  },
  {
    weight: 2,
    arbitrary: fc.tuple(latin1(64), fc.constantFrom('wrong-size', 'not-hex', 'no-terminator', 'huge', 'negative', 'no-crlf', 'spaces'))
      .map(([chunk, how]) => {
        const size = {
          'wrong-size': chunkSize(chunk.length + 3), 'not-hex': 'zz', 'no-terminator': chunkSize(chunk.length), huge: 'ffffffffffffffffff',
          negative: '-5', 'no-crlf': chunkSize(chunk.length), spaces: ` ${chunkSize(chunk.length)} `
        }[how]
        const body = how === 'no-crlf' ? `${size}\r\n${chunk}0\r\n\r\n` : how === 'no-terminator' ? `${size}\r\n${chunk}\r\n` : `${size}\r\n${chunk}\r\n0\r\n\r\n`
        return { headers: ['Transfer-Encoding: chunked'], body, complete: false }
      })
  },
  {
    weight: 1,
    arbitrary: fc.tuple(fc.constantFrom('gzip, chunked', 'chunked, gzip', 'Chunked', 'identity', 'chunked, chunked', ' chunked', 'chunked\t', 'xchunked', ''), latin1(16))
      .map(([te, chunk]) => ({ headers: [`Transfer-Encoding: ${te}`], body: `${chunkSize(chunk.length)}\r\n${chunk}\r\n0\r\n\r\n`, complete: false }))
  },
  {
    weight: 1,
    arbitrary: latin1(16).map(chunk => ({ headers: ['Transfer-Encoding: chunked', `Content-Length: ${chunk.length}`], body: `${chunkSize(chunk.length)}\r\n${chunk}\r\n0\r\n\r\n`, complete: false }))
  }
)

const HOST_MODES = ['one', 'one', 'one', 'one', 'none', 'two', 'conflicting'] as const
const LINE_SHAPES = ['normal', 'normal', 'normal', 'normal', 'normal', 'normal', 'double-space', 'no-version', 'leading-crlf', 'tab', 'trailing-space'] as const

type HostMode = typeof HOST_MODES[number]
type LineShape = typeof LINE_SHAPES[number]

interface RequestParts {
  method: string
  target: string
  version: string
  shape: LineShape
  host: HostMode
  headers: string[]
  manyHeaders: number
  framing: Framing
  bareLf: boolean
  cut: number | undefined
  after: string
  splits: number[]
  fin: boolean
  clean: boolean
}

/** Headers and framing a well-behaved client sends: requests that should reach the app. */
const cleanHeaderLineArb: fc.Arbitrary<string> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.tuple(fc.constantFrom('Accept', 'User-Agent', 'X-Custom', 'Cookie', 'Accept-Encoding', 'X-Forwarded-For', 'Via', 'Content-Type', 'Authorization'), printable(40))
      .map(([name, value]) => `${name}: ${value.trim()}`)
  },
  { weight: 1, arbitrary: fc.constantFrom('Connection: close', 'Connection: keep-alive', 'Connection: X-Hop', 'X-Hop: 1', 'Expect: 100-continue', 'TE: trailers', 'Trailer: X-T', 'Via: 1.0 other') }
)

const cleanFramingArb: fc.Arbitrary<Framing> = fc.oneof(
  { weight: 4, arbitrary: fc.constant<Framing>({ headers: [], body: '', complete: true, decodedLength: 0 }) },
  { weight: 3, arbitrary: latin1(256).map(body => ({ headers: [`Content-Length: ${body.length}`], body, complete: true, decodedLength: body.length })) },
  {
    weight: 2,
    arbitrary: fc.array(latin1(64).filter(c => c.length > 0), { maxLength: 4 }).map(chunks => ({
      headers: ['Transfer-Encoding: chunked'],
      body: chunks.map(c => `${chunkSize(c.length)}\r\n${c}\r\n`).join('') + '0\r\n\r\n',
      complete: true,
      decodedLength: chunks.reduce((sum, c) => sum + c.length, 0)
    }))
  }
)

const splitsArb = fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 3 })

/** A request as a well-behaved client would send it (only the target is generated freely). */
function cleanPartsArb (targetArb: fc.Arbitrary<string>): fc.Arbitrary<RequestParts> {
  return fc.record({
    method: fc.constantFrom('GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'OPTIONS', 'PATCH'),
    target: targetArb,
    version: fc.constantFrom('HTTP/1.1', 'HTTP/1.1', 'HTTP/1.1', 'HTTP/1.0'),
    shape: fc.constant<LineShape>('normal'),
    host: fc.constant<HostMode>('one'),
    headers: fc.array(cleanHeaderLineArb, { maxLength: 6 }),
    manyHeaders: fc.constant(0),
    framing: cleanFramingArb,
    bareLf: fc.constant(false),
    cut: fc.constant(undefined),
    after: fc.constant(''),
    splits: splitsArb,
    fin: fc.oneof({ weight: 9, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
    clean: fc.constant(true)
  })
}

/** Anything goes: bad bytes, odd framing, cut requests, trailing garbage. */
function wildPartsArb (targetArb: fc.Arbitrary<string>): fc.Arbitrary<RequestParts> {
  return fc.record({
    method: methodArb,
    target: targetArb,
    version: versionArb,
    shape: fc.constantFrom(...LINE_SHAPES),
    host: fc.constantFrom(...HOST_MODES),
    headers: fc.array(headerLineArb, { maxLength: 8 }),
    manyHeaders: fc.oneof({ weight: 20, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 50, max: 3000 }) }),
    framing: framingArb,
    bareLf: fc.oneof({ weight: 12, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
    cut: fc.oneof({ weight: 6, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.double({ min: 0, max: 1, noNaN: true }) }),
    after: fc.oneof(
      { weight: 10, arbitrary: fc.constant('') },
      { weight: 1, arbitrary: fc.constant('GET /second HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n') },
      { weight: 1, arbitrary: latin1(40) }
    ),
    splits: splitsArb,
    fin: fc.oneof({ weight: 6, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
    clean: fc.constant(false)
  })
}

function assemble (r: RequestParts): RawRequest {
  const eol = r.bareLf ? '\n' : '\r\n'
  const line = {
    normal: `${r.method} ${r.target} ${r.version}`,
    'double-space': `${r.method}  ${r.target}  ${r.version}`,
    'no-version': `${r.method} ${r.target}`,
    'leading-crlf': `\r\n${r.method} ${r.target} ${r.version}`,
    tab: `${r.method}\t${r.target}\t${r.version}`,
    'trailing-space': `${r.method} ${r.target} ${r.version} `
  }[r.shape]
  const host = { one: ['Host: 127.0.0.1'], none: [], two: ['Host: 127.0.0.1', 'Host: 127.0.0.1'], conflicting: ['Host: 127.0.0.1', 'Host: evil.example'] }[r.host]
  const many = Array.from({ length: r.manyHeaders }, (_, i) => `X-Many-${i}: ${i}`)
  const headers = [...host, ...r.headers, ...many, ...r.framing.headers]
  const full = `${line}${eol}${headers.map(h => `${h}${eol}`).join('')}${eol}${r.framing.body}${r.after}`
  const text = r.cut == null ? full : full.slice(0, Math.floor(r.cut * full.length))
  const complete = r.framing.complete && r.cut == null && !r.bareLf && (r.shape === 'normal' || r.shape === 'leading-crlf')
  const splits = [...new Set(r.splits.map(s => Math.floor(s * text.length)))].filter(s => s > 0 && s < text.length).sort((a, b) => a - b)
  const request: RawRequest = { text, splits, complete, fin: r.fin || !complete, clean: r.clean, target: r.target }
  if (r.clean) {
    request.method = r.method
    request.bodyLength = r.framing.decodedLength
  }
  return request
}

/**
 * A whole request: three in five as a well-behaved client sends them (so that generated
 * targets, headers and bodies reach routing and relaying), the rest anything goes (request line,
 * headers, framing, maybe cut, maybe followed by more bytes).
 */
export function rawRequestArb (targetArb: fc.Arbitrary<string>): fc.Arbitrary<RawRequest> {
  return fc.oneof({ weight: 3, arbitrary: cleanPartsArb(targetArb) }, { weight: 2, arbitrary: wildPartsArb(targetArb) }).map(assemble)
}

/** What came back for one request. */
export type Answer =
  | { kind: 'answered', status: number, head: string, stalled: boolean, body?: Buffer }
  | { kind: 'closed', bytes: number, stalled: boolean }
  | { kind: 'malformed', why: string }
  | { kind: 'silent', why: string }
  | { kind: 'unreachable', why: string }

/** A byte pipe to the server under test. */
export interface Wire {
  send: (chunk: Buffer) => Promise<void>
  /** Half-close: no more bytes from us. */
  finish: () => Promise<void>
  destroy: () => void
}

export interface Sink {
  data: (chunk: Buffer) => void
  closed: () => void
}

export type Dialer = (sink: Sink) => Promise<Wire>

export interface ExchangeOptions {
  /** The bound: no answer head and no close by then is a hang. */
  hangMs: number
  /** How long a kept-open complete request waits for its answer before we half-close. */
  idleMs: number
  /**
   * Read past 1xx heads to the final answer, and its body when it has a Content-Length (up to
   * 1 MiB); otherwise the first head settles the exchange.
   */
  full?: boolean
}

const STATUS_LINE = /^HTTP\/1\.[01] ([1-5][0-9]{2})(?: [^\r\n]*)?$/
const HEADER_LINE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+:[ \t]*[^\r\n]*$/
const MAX_BODY = 1024 * 1024

interface Parsed {
  /** Nothing more to wait for. */
  done: boolean
  /** Only interim (1xx) answers so far. */
  interim?: boolean
  malformed?: string
  status?: number
  head?: string
  body?: Buffer
}

/** Reads the answer so far: its (final) head, validated, and with `full` its body. */
function parseAnswer (all: Buffer, full: boolean, headRequest: boolean): Parsed {
  let offset = 0
  for (;;) {
    const end = all.indexOf('\r\n\r\n', offset)
    if (end === -1) return { done: false, interim: offset > 0 && offset === all.length }
    const head = all.subarray(offset, end).toString('latin1')
    const [statusLine, ...headerLines] = head.split('\r\n')
    const match = STATUS_LINE.exec(statusLine)
    if (match == null) return { done: true, malformed: `bad status line ${JSON.stringify(statusLine.slice(0, 200))}` }
    const bad = headerLines.find(line => !HEADER_LINE.test(line))
    if (bad !== undefined) return { done: true, malformed: `bad header line ${JSON.stringify(bad.slice(0, 200))} in a ${match[1]} answer` }
    const status = Number(match[1])
    if (!full) return { done: true, status, head }
    if (status < 200) {
      offset = end + 4
      continue
    }
    if (headRequest || status === 204 || status === 304) return { done: true, status, head, body: Buffer.alloc(0) }
    const length = /^content-length:[ \t]*(\d+)[ \t]*$/im.exec(headerLines.join('\n'))
    if (length == null || Number(length[1]) > MAX_BODY) return { done: true, status, head }
    const start = end + 4
    const need = Number(length[1])
    if (all.length - start < need) return { done: false, status, head }
    return { done: true, status, head, body: all.subarray(start, start + need) }
  }
}

/**
 * Sends one request and waits, within `hangMs`, for a whole response head (validated: status
 * line, header lines; with `full`, the final answer and its body) or for the connection to
 * close. Never throws.
 */
export async function exchange (dial: Dialer, request: RawRequest, opts: ExchangeOptions): Promise<Answer> {
  const deadline = Date.now() + opts.hangMs
  const full = opts.full === true
  const headRequest = /^(?:\r\n)?HEAD /.test(request.text)
  const chunks: Buffer[] = []
  let received = 0
  let closed = false
  let wake: (() => void) | undefined
  const sink: Sink = {
    data: chunk => { chunks.push(chunk); received += chunk.length; wake?.() },
    closed: () => { closed = true; wake?.() }
  }
  let wire: Wire
  try {
    wire = await withDeadline(dial(sink), deadline, 'connect')
  } catch (err) {
    return { kind: 'unreachable', why: (err as Error).message }
  }
  let stalled = false
  try {
    const parsed = (): Parsed => parseAnswer(Buffer.concat(chunks), full, headRequest)
    const settled = (): boolean => closed || parsed().done
    /** Resolves once settled, or at `until`; true when settled. */
    const waitUntil = async (until: number): Promise<boolean> => {
      while (!settled()) {
        const left = until - Date.now()
        if (left <= 0) return false
        await new Promise<void>(resolve => {
          const timer = setTimeout(resolve, left)
          wake = () => { clearTimeout(timer); resolve() }
        })
        wake = undefined
      }
      return true
    }

    const bytes = Buffer.from(request.text, 'latin1')
    let from = 0
    for (const to of [...request.splits, bytes.length]) {
      if (closed) break
      await withDeadline(wire.send(bytes.subarray(from, to)), deadline, 'write').catch(() => {})
      from = to
    }
    if (request.fin) {
      await withDeadline(wire.finish(), deadline, 'half-close').catch(() => {})
    } else if (!await waitUntil(Math.min(deadline, Date.now() + opts.idleMs))) {
      // A complete request that got no answer yet: perhaps the server reads it differently
      // (and waits for more). Half-close, as a client that is done would.
      stalled = true
      await withDeadline(wire.finish(), deadline, 'half-close').catch(() => {})
    }
    const inTime = await waitUntil(deadline)
    const answer = parsed()
    if (answer.malformed != null) return { kind: 'malformed', why: answer.malformed }
    if (!inTime) {
      const what = answer.status != null ? `the body of a ${answer.status} answer did not arrive` : 'no answer and no close'
      return { kind: 'silent', why: `${what} within ${opts.hangMs} ms (${received} bytes received${stalled ? ', half-closed after waiting' : ''})` }
    }
    if (answer.status == null) {
      if (received === 0) return { kind: 'closed', bytes: 0, stalled }
      // A 100 Continue, then the server gave up: a close.
      if (answer.interim === true) return { kind: 'closed', bytes: received, stalled }
      return { kind: 'malformed', why: `closed after ${received} bytes that are no whole response head: ${JSON.stringify(Buffer.concat(chunks).subarray(0, 200).toString('latin1'))}` }
    }
    // (Closed before a Content-Length body was whole: answered, body unknown.)
    return { kind: 'answered', status: answer.status, head: answer.head ?? '', stalled, body: answer.body }
  } finally {
    wire.destroy()
  }
}

/**
 * For a clean request whose answer came from the fuzz app (relayed answers carry `Via`): the
 * app must have got exactly this request, its method and its whole body however it was
 * framed, and nothing else. The app answers every request `200 ok METHOD BYTES` (or an odd
 * answer on a `/__…` path); a relayed 400 is the app's parser refusing bytes that were not a
 * request, so the request was mis-framed on the way. Undefined when all is well, or when the
 * answer does not tell.
 */
export function appEchoProblem (request: RawRequest, answer: Answer): string | undefined {
  if (request.clean !== true || request.bodyLength == null || request.method == null || answer.kind !== 'answered') return undefined
  if (!/^via:/im.test(answer.head)) return undefined
  if (answer.status === 400) return `the app answered 400 (its parser refused what it got) to ${request.method} with a body of ${request.bodyLength} bytes`
  if (answer.status !== 200 || answer.body == null) return undefined
  const echo = /^ok (\S+) (\d+)\n$/.exec(answer.body.toString('latin1'))
  if (echo == null) return undefined
  if (echo[1] !== request.method || Number(echo[2]) !== request.bodyLength) {
    return `sent ${request.method} with a body of ${request.bodyLength} bytes, the app got ${echo[1]} with ${echo[2]}`
  }
  return undefined
}

async function withDeadline<T> (promise: Promise<T>, deadline: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_resolve, reject) => { timer = setTimeout(() => { reject(new Error(`${what} did not finish in time`)) }, Math.max(0, deadline - Date.now())) })
    ])
  } finally {
    clearTimeout(timer)
  }
}

/** A TCP connection to 127.0.0.1:port. */
export function tcpDialer (port: number): Dialer {
  return async sink => await new Promise<Wire>((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port })
    socket.once('error', reject)
    socket.once('connect', () => {
      socket.off('error', reject)
      // Errors (EPIPE, ECONNRESET when the server closes while we write) end the exchange as a close.
      socket.on('error', () => {})
      socket.on('data', (chunk: Buffer) => { sink.data(chunk) })
      socket.once('end', () => { sink.closed() })
      socket.once('close', () => { sink.closed() })
      resolve({
        send: async chunk => await new Promise<void>(done => {
          if (socket.destroyed || !socket.writable) { done(); return }
          socket.write(chunk, () => { done() })
        }),
        finish: async () => { if (!socket.destroyed) socket.end() },
        destroy: () => { socket.destroy() }
      })
    })
  })
}

/** A new libp2p stream of `protocol` from `node` to `peer`. */
export function streamDialer (node: MeshNode, peer: PeerId | Multiaddr, protocol: string): Dialer {
  return async sink => {
    const stream: Stream = await node.dialProtocol(peer, protocol, { signal: AbortSignal.timeout(5000) })
    stream.addEventListener('message', evt => {
      const data = evt.data instanceof Uint8Array ? evt.data : evt.data.subarray()
      sink.data(Buffer.from(data.buffer, data.byteOffset, data.byteLength))
    })
    stream.addEventListener('remoteCloseWrite', () => { sink.closed() })
    stream.addEventListener('close', () => { sink.closed() })
    return {
      send: async chunk => {
        try {
          if (stream.send(chunk)) return
          await stream.onDrain({ signal: AbortSignal.timeout(5000) })
        } catch {
          // Closed or reset by the remote meanwhile: the exchange sees the close.
        }
      },
      finish: async () => { await stream.close({ signal: AbortSignal.timeout(5000) }).catch(() => {}) },
      destroy: () => {
        if (stream.status === 'open' || stream.status === 'closing') stream.abort(new Error('exchange over'))
      }
    }
  }
}

export interface FuzzApp {
  port: number
  requests: () => number
  stop: () => Promise<void>
}

/**
 * The tiny local app behind a server proxy: reads every body to its end and answers 200 with
 * a short text, whatever the request; a few paths (ending in `/__…`) answer differently so
 * that the proxy's relaying of odd answers is fuzzed too. Never answers 500.
 */
export async function startFuzzApp (): Promise<FuzzApp> {
  let requests = 0
  const server: Server = createServer({ keepAliveTimeout: 5000 }, (req: IncomingMessage, res: ServerResponse) => {
    requests++
    let bytes = 0
    req.on('data', (chunk: Buffer) => { bytes += chunk.length })
    req.on('error', () => {})
    req.on('end', () => {
      const path = req.url ?? '/'
      if (path.endsWith('/__reset')) { req.socket.destroy(); return }
      if (path.endsWith('/__204')) { res.writeHead(204); res.end(); return }
      if (path.endsWith('/__chunked')) {
        // Node refuses a Trailer header on an answer without a body (HEAD).
        res.writeHead(200, req.method === 'HEAD' ? { 'Content-Type': 'text/plain' } : { 'Content-Type': 'text/plain', Trailer: 'X-Checksum' })
        res.write('chunked answer\n')
        if (req.method !== 'HEAD') res.addTrailers({ 'X-Checksum': 'abc' })
        res.end()
        return
      }
      // What a non-Node app may send: a Trailer header on a fixed-length answer (valid HTTP).
      if (path.endsWith('/__raw-trailer')) {
        req.socket.end(`HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTrailer: X-T\r\nConnection: close\r\n\r\n${req.method === 'HEAD' ? '' : 'ok'}`)
        return
      }
      if (path.endsWith('/__big')) { res.writeHead(200, { 'Content-Length': 256 * 1024 }); res.end(Buffer.alloc(256 * 1024, 0x61)); return }
      const text = `ok ${String(req.method).slice(0, 20)} ${bytes}\n`
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(text) })
      res.end(text)
    })
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as AddressInfo).port,
    requests: () => requests,
    stop: async () => {
      await new Promise<void>(resolve => {
        server.close(() => { resolve() })
        server.closeAllConnections()
      })
    }
  }
}

/** An answer as one short line of text, for reports. */
export function describeAnswer (answer: Answer): string {
  if (answer.kind !== 'answered') return JSON.stringify(answer).slice(0, 300)
  const status = answer.head.split('\r\n')[0]
  const error = /^x-hyphae-error:\s*(\S+)/im.exec(answer.head)?.[1]
  return `${status}${error != null ? ` (X-Hyphae-Error: ${error})` : ''}${/^via:/im.test(answer.head) ? ', relayed' : ''}${answer.body != null ? `, body ${JSON.stringify(answer.body.subarray(0, 120).toString('latin1'))}` : ''}`
}

/** What the fuzz app answers a normal request (through the proxies). */
export const NORMAL_ANSWER = 'ok GET 0\n'

/** The normal request a server must still answer after each fuzz case. */
export function normalRequest (target: string): RawRequest {
  return { text: `GET ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`, splits: [], complete: true, fin: false, clean: true, target, method: 'GET', bodyLength: 0 }
}
