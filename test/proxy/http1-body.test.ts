import { describe, expect, it } from 'vitest'
import { BodyError, MAX_CHUNK_LINE_BYTES, MAX_TRAILER_BYTES, MessageBody } from '../../proxy/http1-body.js'
import type { Framing } from '../../proxy/http1-head.js'

const bytes = (text: string): Buffer => Buffer.from(text, 'latin1')
const CHUNKED: Framing = { kind: 'chunked', length: 0 }
const NEXT = 'GET /next HTTP/1.1\r\n\r\n'

/** Feeds `pieces` in turn; returns how many bytes the body took and the chunk data seen. */
function feed (framing: Framing, pieces: Buffer[]): { taken: number, done: boolean, data: string } {
  const body = new MessageBody(framing)
  let taken = 0
  let data = ''
  for (const piece of pieces) {
    taken += body.take(piece, 0, (from, to) => { data += piece.subarray(from, to).toString('latin1') })
  }
  return { taken, done: body.done, data }
}

/** Every way to cut `buf` in two, and byte by byte. */
function splits (buf: Buffer): Buffer[][] {
  const out: Buffer[][] = []
  for (let at = 0; at <= buf.length; at++) out.push([buf.subarray(0, at), buf.subarray(at)])
  out.push([...buf].map(b => Buffer.from([b])))
  return out
}

describe('MessageBody: Content-Length', () => {
  it('takes exactly the declared bytes, however they arrive, and leaves the next message alone', () => {
    const buf = bytes(`0123456789${NEXT}`)
    for (const pieces of splits(buf)) expect(feed({ kind: 'length', length: 10 }, pieces)).toMatchObject({ taken: 10, done: true })
  })

  it('is done at once with no body, and takes nothing', () => {
    const body = new MessageBody({ kind: 'none', length: 0 })
    expect(body.done).toBe(true)
    expect(body.take(bytes(NEXT))).toBe(0)
    expect(new MessageBody({ kind: 'length', length: 0 }).done).toBe(true)
  })

  it('takes everything until the close when the close delimits it', () => {
    const body = new MessageBody({ kind: 'close', length: 0 })
    expect(body.take(bytes(NEXT))).toBe(NEXT.length)
    expect(body.done).toBe(false)
  })

  it('reads from an offset', () => {
    const body = new MessageBody({ kind: 'length', length: 3 })
    expect(body.take(bytes('xxabcdef'), 2)).toBe(3)
    expect(body.done).toBe(true)
  })
})

describe('MessageBody: chunked', () => {
  const wire = '5;name=value;q="a b"\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Checksum: abc\r\nX-Empty:\r\n\r\n'

  it('finds the end of a chunked body (extensions, trailers) at every split, and the data in it', () => {
    const buf = bytes(wire + NEXT)
    for (const pieces of splits(buf)) {
      expect(feed(CHUNKED, pieces)).toEqual({ taken: wire.length, done: true, data: 'helloabcdefghijklmnopqrstuvwxyz' })
    }
  })

  it('collects the trailer fields when asked, at every split', () => {
    const buf = bytes(wire + NEXT)
    for (const pieces of splits(buf)) {
      const body = new MessageBody(CHUNKED, true)
      for (const piece of pieces) body.take(piece)
      expect(body.trailers).toEqual(['X-Checksum', 'abc', 'X-Empty', ''])
    }
    const tabs = new MessageBody(CHUNKED, true)
    tabs.take(bytes('0\r\nX-A:\t a b \t\r\n\r\n'))
    expect(tabs.trailers).toEqual(['X-A', 'a b'])
    // Not asked, or none sent, or not yet whole: none.
    const plain = new MessageBody(CHUNKED)
    plain.take(bytes(wire))
    expect(plain.trailers).toEqual([])
    const none = new MessageBody(CHUNKED, true)
    none.take(bytes('0\r\n\r\n'))
    expect(none.trailers).toEqual([])
    const partial = new MessageBody(CHUNKED, true)
    partial.take(bytes('0\r\nX-A: 1\r\n'))
    expect(partial.trailers).toEqual([])
  })

  it('ends without trailers, and takes hex sizes in either case with leading zeros', () => {
    for (const text of ['0\r\n\r\n', '000\r\n\r\n', 'a\r\n0123456789\r\n0\r\n\r\n', 'A\r\n0123456789\r\n0\r\n\r\n', '00A\r\n0123456789\r\n0\r\n\r\n']) {
      for (const pieces of splits(bytes(text + NEXT))) expect(feed(CHUNKED, pieces)).toMatchObject({ taken: text.length, done: true })
    }
  })

  it('is not done before its last CRLF', () => {
    for (let cut = 0; cut < wire.length; cut++) expect(feed(CHUNKED, [bytes(wire.slice(0, cut))])).toMatchObject({ taken: cut, done: false })
  })

  /** Framing that parsers read differently (request smuggling), or that is plain wrong. */
  const refused: Array<[string, string]> = [
    ['space after the size', '5 \r\nhello\r\n0\r\n\r\n'],
    ['space before an extension', '5 ;a=b\r\nhello\r\n0\r\n\r\n'],
    ['space before the size', ' 5\r\nhello\r\n0\r\n\r\n'],
    ['a negative size', '-5\r\nhello\r\n0\r\n\r\n'],
    ['a size that is not hex', 'zz\r\nhello\r\n0\r\n\r\n'],
    ['a 0x prefix', '0x5\r\nhello\r\n0\r\n\r\n'],
    ['a size past 2^53', 'fffffffffffffffff\r\nhello\r\n0\r\n\r\n'],
    ['an empty size line', '\r\nhello\r\n0\r\n\r\n'],
    ['a bare LF after the size', '5\nhello\r\n0\r\n\r\n'],
    ['a bare CR after the size', '5\rhello\r\n0\r\n\r\n'],
    ['data longer than its size', '3\r\nhello\r\n0\r\n\r\n'],
    ['data not followed by CRLF', '5\r\nhello0\r\n\r\n'],
    ['data followed by a bare LF', '5\r\nhello\n0\r\n\r\n'],
    ['a control character in an extension', '5;a=\u0000\r\nhello\r\n0\r\n\r\n'],
    ['a bare LF in an extension', '5;a\nb\r\nhello\r\n0\r\n\r\n'],
    ['an obs-folded trailer', '0\r\nX-A: 1\r\n folded\r\n\r\n'],
    ['whitespace before a trailer colon', '0\r\nX-A : 1\r\n\r\n'],
    ['a trailer without a colon', '0\r\nX-A\r\n\r\n'],
    ['a trailer without a name', '0\r\n: 1\r\n\r\n'],
    ['a NUL in a trailer', '0\r\nX-A: a\u0000b\r\n\r\n'],
    ['a bare LF ending a trailer', '0\r\nX-A: 1\n\r\n'],
    ['a bare LF ending the body', '0\r\n\n'],
    ['LF-only line ends', '5\nhello\n0\n\n']
  ]

  it.each(refused)('refuses %s, at every split', (_what, text) => {
    for (const pieces of splits(bytes(text))) expect(() => feed(CHUNKED, pieces)).toThrow(BodyError)
  })

  it('bounds chunk extensions and the trailer section', () => {
    const longLine = `1;${'a'.repeat(MAX_CHUNK_LINE_BYTES)}\r\nx\r\n0\r\n\r\n`
    expect(() => feed(CHUNKED, [bytes(longLine)])).toThrow(/longer than/)
    const fits = `1;${'a'.repeat(MAX_CHUNK_LINE_BYTES - 10)}\r\nx\r\n0\r\n\r\n`
    expect(feed(CHUNKED, [bytes(fits)])).toMatchObject({ taken: fits.length, done: true })
    const trailers = `0\r\n${`X-T: ${'v'.repeat(100)}\r\n`.repeat(Math.ceil(MAX_TRAILER_BYTES / 100))}\r\n`
    expect(() => feed(CHUNKED, [bytes(trailers)])).toThrow(/longer than/)
  })

  it('throws before taking bad bytes: what came before them was taken', () => {
    const body = new MessageBody(CHUNKED)
    expect(body.take(bytes('5\r\nhello\r\n'))).toBe(10)
    expect(() => body.take(bytes('5 \r\n'))).toThrow(BodyError)
  })
})
