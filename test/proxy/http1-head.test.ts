import { describe, expect, it } from 'vitest'
import { findHeadEnd, HeadError, MAX_HEAD_BYTES, parseRequestHead, parseResponseHead, ResponseHeadReader, responseFraming, serializeHead, type RequestHead, type ResponseHead } from '../../proxy/http1-head.js'

const bytes = (text: string): Buffer => Buffer.from(text, 'latin1')

function request (text: string): RequestHead {
  const buf = bytes(text)
  const end = findHeadEnd(buf)
  if (end === -1) throw new Error('incomplete head in the test')
  return parseRequestHead(buf, end)
}

function response (text: string): ResponseHead {
  const buf = bytes(text)
  return parseResponseHead(buf, findHeadEnd(buf))
}

/** The HeadError a request head is refused with. */
function refusal (text: string): { status: number, reason: string } {
  try {
    request(text)
  } catch (err) {
    if (err instanceof HeadError) return { status: err.status, reason: err.reason }
    throw err
  }
  throw new Error(`accepted: ${JSON.stringify(text)}`)
}

const GET = (headers: string, line = 'GET / HTTP/1.1'): string => `${line}\r\n${headers}\r\n`

describe('findHeadEnd', () => {
  it('finds the end of a head only once its CRLFCRLF is whole, scanning on from where it stopped', () => {
    const text = 'GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY'
    const whole = bytes(text)
    expect(findHeadEnd(whole)).toBe(text.indexOf('BODY'))
    for (let cut = 0; cut < text.indexOf('BODY'); cut++) expect(findHeadEnd(whole.subarray(0, cut))).toBe(-1)
    // As the pieces arrive: each search starts where the last one ended.
    for (let cut = 1; cut < whole.length; cut++) {
      expect(findHeadEnd(whole.subarray(0, cut))).toBe(cut >= text.indexOf('BODY') ? text.indexOf('BODY') : -1)
      expect(findHeadEnd(whole, cut)).toBe(cut <= text.indexOf('BODY') - 1 ? text.indexOf('BODY') : -1)
    }
  })

  it('refuses a bare LF as soon as it arrives', () => {
    expect(() => findHeadEnd(bytes('GET / HTTP/1.1\nHost: a'))).toThrow(HeadError)
    expect(() => findHeadEnd(bytes('GET / HTTP/1.1\r\nHost: a\n\r\n'))).toThrow(/bare LF/)
    expect(() => findHeadEnd(bytes('\n'))).toThrow(/bare LF/)
  })
})

describe('parseRequestHead', () => {
  it('reads the request line and the headers, names as sent, values without surrounding whitespace', () => {
    const head = request('POST /a/b?x=1 HTTP/1.1\r\nHost: example\r\nX-MiXeD:  two  words \t\r\nx-empty:\r\nContent-Length: 3\r\n\r\n')
    expect(head).toMatchObject({ method: 'POST', target: '/a/b?x=1', minor: 1, keepAlive: true, upgrade: false, expectContinue: false })
    expect(head.rawHeaders).toEqual(['Host', 'example', 'X-MiXeD', 'two  words', 'x-empty', '', 'Content-Length', '3'])
    expect(head.framing).toEqual({ kind: 'length', length: 3 })
  })

  it('keeps obs-text in values and refuses control characters, CR and NUL', () => {
    expect(request(GET('X-V: caf\u00e9\r\n')).rawHeaders).toEqual(['X-V', 'caf\u00e9'])
    for (const value of ['a\u0000b', 'a\rb', 'a\u0001b', 'a\u007fb']) expect(refusal(GET(`X-V: ${value}\r\n`))).toMatchObject({ status: 400 })
  })

  it('refuses obs-fold, whitespace before the colon, lines without a name and invalid names', () => {
    for (const line of [' folded', '\tfolded', 'X-Sp : v', 'X Sp: v', ': no name', 'no colon', 'X-\u00e9: v', 'X(: v']) {
      expect(refusal(GET(`X-A: 1\r\n${line}\r\n`))).toEqual({ status: 400, reason: 'bad_request' })
    }
  })

  it('refuses request lines that lenient parsers would split elsewhere', () => {
    for (const line of ['GET  / HTTP/1.1', 'GET /  HTTP/1.1', 'GET\t/\tHTTP/1.1', 'GET / HTTP/1.1 ', ' GET / HTTP/1.1', 'GET /', 'GET / http/1.1', 'GET / HTTP/1.10', 'GET /a b HTTP/1.1', 'G(ET / HTTP/1.1', 'GET /\u00e9 HTTP/1.1', 'GET /\u007f HTTP/1.1']) {
      expect(refusal(GET('Host: a\r\n', line))).toEqual({ status: 400, reason: 'bad_request' })
    }
  })

  it('takes the target forms of RFC 9112 (and CONNECT whatever it names)', () => {
    for (const target of ['/', '/a?b#c', '*', 'http://example.com', 'http://example.com:80/a?b', 'ftp://x/', 'http://[::1]/', 'HTTP://u@h?x']) {
      expect(request(GET('Host: a\r\n', `OPTIONS ${target} HTTP/1.1`)).target).toBe(target)
    }
    for (const target of ['example.com:443', 'a/b', '?x', '#', 'x:', 'http:/x', 'h2://x', 'http://a#f', 'http://a{b/', 'x://@@', 'http://a@b@c/']) {
      expect(refusal(GET('Host: a\r\n', `GET ${target} HTTP/1.1`))).toEqual({ status: 400, reason: 'bad_request' })
    }
    expect(request(GET('Host: a\r\n', 'CONNECT example.com:443 HTTP/1.1'))).toMatchObject({ method: 'CONNECT', upgrade: true })
  })

  it('reads HTTP/1.0 and later 1.x versions, and answers 505 to other major versions', () => {
    expect(request(GET('', 'GET / HTTP/1.0')).minor).toBe(0)
    expect(request(GET('', 'GET / HTTP/1.2')).minor).toBe(1)
    for (const version of ['HTTP/2.0', 'HTTP/0.9', 'HTTP/3.0']) expect(refusal(GET('', `GET / ${version}`))).toEqual({ status: 505, reason: 'http_version_unsupported' })
  })

  it('answers 431 to a head over the limit', () => {
    const text = GET(`X-Big: ${'x'.repeat(MAX_HEAD_BYTES)}\r\n`)
    expect(refusal(text)).toEqual({ status: 431, reason: 'headers_too_large' })
    const fits = GET(`X-Big: ${'x'.repeat(MAX_HEAD_BYTES - 100)}\r\n`)
    expect(request(fits).rawHeaders[1]).toHaveLength(MAX_HEAD_BYTES - 100)
  })

  it('tells whether the client keeps the connection', () => {
    expect(request(GET('Host: a\r\n')).keepAlive).toBe(true)
    expect(request(GET('Connection: Close\r\n')).keepAlive).toBe(false)
    expect(request(GET('Connection: x-a, close\r\n')).keepAlive).toBe(false)
    expect(request(GET('', 'GET / HTTP/1.0')).keepAlive).toBe(false)
    expect(request(GET('Connection: keep-alive\r\n', 'GET / HTTP/1.0')).keepAlive).toBe(true)
  })

  it('tells upgrades (Upgrade named in Connection) and 100-continue apart', () => {
    expect(request(GET('Upgrade: websocket\r\nConnection: Upgrade\r\n')).upgrade).toBe(true)
    // An Upgrade header alone is no upgrade request: it is hop-by-hop, and dropped.
    expect(request(GET('Upgrade: websocket\r\n')).upgrade).toBe(false)
    expect(request(GET('Expect: 100-Continue\r\n')).expectContinue).toBe(true)
    expect(request(GET('Expect: something-else\r\n')).expectContinue).toBe(false)
  })

  it('refuses more than one Host', () => {
    expect(refusal(GET('Host: a\r\nhost: a\r\n'))).toEqual({ status: 400, reason: 'bad_request' })
  })
})

describe('request framing (RFC 9112 §6.3)', () => {
  it('is chunked, a length, or no body', () => {
    expect(request(GET('Transfer-Encoding: chunked\r\n')).framing).toEqual({ kind: 'chunked', length: 0 })
    expect(request(GET('Transfer-Encoding: Chunked\r\n')).framing.kind).toBe('chunked')
    expect(request(GET('Transfer-Encoding:  chunked\t\r\n')).framing.kind).toBe('chunked')
    expect(request(GET('Content-Length: 0012\r\n')).framing).toEqual({ kind: 'length', length: 12 })
    expect(request(GET('Content-Length: 0\r\n')).framing.kind).toBe('none')
    expect(request(GET('Host: a\r\n')).framing.kind).toBe('none')
  })

  it('refuses what leaves the length uncertain', () => {
    const refused = [
      'Transfer-Encoding: chunked\r\nContent-Length: 3\r\n',
      'Content-Length: 3\r\nTransfer-Encoding: chunked\r\n',
      'Transfer-Encoding: chunked, gzip\r\n',
      'Transfer-Encoding: chunked, chunked\r\n',
      'Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n',
      'Transfer-Encoding: identity\r\n',
      'Transfer-Encoding: xchunked\r\n',
      'Transfer-Encoding: chunked,\r\n',
      'Transfer-Encoding:\r\n',
      'Content-Length: 3\r\nContent-Length: 3\r\n',
      'Content-Length: 3, 3\r\n',
      ...['abc', '-1', '+5', '1e3', '0x10', '', '1 2', '9999999999999999'].map(v => `Content-Length: ${v}\r\n`)
    ]
    for (const headers of refused) expect(refusal(GET(headers)), headers).toEqual({ status: 400, reason: 'bad_request' })
    expect(refusal(GET('Transfer-Encoding: chunked\r\n', 'POST / HTTP/1.0'))).toMatchObject({ status: 400 })
  })

  it('answers 501 to a transfer coding other than chunked before chunked', () => {
    expect(refusal(GET('Transfer-Encoding: gzip, chunked\r\n'))).toEqual({ status: 501, reason: 'transfer_coding_unsupported' })
  })
})

describe('parseResponseHead and responseFraming', () => {
  it('reads the status line, with or without a reason', () => {
    expect(response('HTTP/1.1 404 Not  Found\r\nX: 1\r\n\r\n')).toMatchObject({ status: 404, reason: 'Not  Found', minor: 1, rawHeaders: ['X', '1'] })
    expect(response('HTTP/1.1 204\r\n\r\n')).toMatchObject({ status: 204, reason: '' })
    expect(response('HTTP/1.0 200 OK\r\n\r\n')).toMatchObject({ minor: 0, keepAlive: false })
    expect(response('HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n')).toMatchObject({ keepAlive: true, keepAliveMs: 5000 })
    expect(response('HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n').keepAlive).toBe(false)
  })

  it('refuses malformed answers with a 502', () => {
    for (const text of ['HTTP/1.1 600 X\r\n\r\n', 'HTTP/1.1 99 X\r\n\r\n', 'HTTP/2 200 OK\r\n\r\n', 'HTTP/1.1 200 OK\r\nX : 1\r\n\r\n',
      'HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n', 'HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n',
      'HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n']) {
      expect(() => response(text), text).toThrow(expect.objectContaining({ status: 502 }))
    }
  })

  it('frames by the request method and the status first, then by the headers', () => {
    const ok = response('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n')
    expect(responseFraming(ok, 'GET')).toEqual({ kind: 'length', length: 10 })
    expect(responseFraming(ok, 'HEAD').kind).toBe('none')
    for (const status of [100, 103, 204, 304]) expect(responseFraming(response(`HTTP/1.1 ${status} X\r\nContent-Length: 10\r\n\r\n`), 'GET').kind).toBe('none')
    expect(responseFraming(response('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'), 'GET').kind).toBe('chunked')
    expect(responseFraming(response('HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n'), 'GET').kind).toBe('chunked')
    expect(responseFraming(response('HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n'), 'GET').kind).toBe('close')
    expect(responseFraming(response('HTTP/1.1 200 OK\r\n\r\n'), 'GET').kind).toBe('close')
  })
})

describe('serializeHead', () => {
  it('writes what parses back to the same head', () => {
    const out = serializeHead('PUT /x HTTP/1.1', ['Host', 'a', 'X-V', 'caf\u00e9', 'Content-Length', '0'])
    expect(out.toString('latin1')).toBe('PUT /x HTTP/1.1\r\nHost: a\r\nX-V: caf\u00e9\r\nContent-Length: 0\r\n\r\n')
    expect(request(out.toString('latin1'))).toMatchObject({ method: 'PUT', target: '/x', rawHeaders: ['Host', 'a', 'X-V', 'caf\u00e9', 'Content-Length', '0'] })
  })
})

describe('ResponseHeadReader', () => {
  it('gathers a head split anywhere, then gives the bytes after it', () => {
    const text = 'HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi'
    for (let cut = 1; cut < text.length; cut++) {
      const reader = new ResponseHeadReader()
      const heads: number[] = []
      let rest: Buffer | undefined
      for (const piece of [text.slice(0, cut), text.slice(cut)]) {
        let next: Buffer | undefined = bytes(piece)
        while (next != null) {
          const read = reader.read(next)
          if (read == null) break
          heads.push(read.head.status)
          next = read.rest
          if (read.head.status >= 200) {
            rest = read.rest
            break
          }
        }
        if (heads.includes(200)) break
      }
      // What came after the final head in the piece that ended it is the body's start.
      const headEnd = text.length - 2
      expect(heads, `cut at ${cut}`).toEqual([103, 200])
      expect(rest?.toString('latin1') ?? '', `cut at ${cut}`).toBe(cut < headEnd ? 'hi' : text.slice(headEnd, cut))
    }
  })

  it('refuses a head that never ends within the limit, and a 101 nobody asked for', () => {
    const reader = new ResponseHeadReader()
    expect(reader.read(bytes('HTTP/1.1 200 OK\r\n'))).toBeUndefined()
    expect(() => reader.read(Buffer.alloc(MAX_HEAD_BYTES, 'a'))).toThrow(HeadError)
    expect(() => new ResponseHeadReader().read(bytes('HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n'))).toThrow(/101/)
  })
})
