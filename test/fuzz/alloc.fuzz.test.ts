import type { Stream } from '@libp2p/interface'
import { lpStream } from '@libp2p/utils'
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ALLOC_PROTOCOL, MAX_FRAME_BYTES, parseAllocRequest, requestAllocation, serveAllocStream, type AllocInstance, type AllocRequest, type AllocResponse } from '../../shared/protocols/alloc.js'
import { AllocationError, type AllocationErrorCode } from '../../shared/protocols/alloc-errors.js'
import type { MeshNode } from '../../shared/node.js'
import { SERVICE_NAME } from '../../shared/registry/record.js'
import { startTestNode } from '../helpers/nodes.js'
import { describeError, describeReport, fail, FUZZ_RUNS, fuzzTimeoutMs, HANG_MS, hang, ok, heapUsed, runSurface, settledRss, watchProcessErrors, type Outcome } from './runs.js'

/**
 * Surface 3: `/hyphae/alloc/1.0.0` frames. First `parseAllocRequest` on its own (pure: a
 * valid `{service}` or an AllocationError bad_request, nothing else), then raw bytes over
 * real libp2p streams to `serveAllocStream` with a stub allocate function: always one coded
 * JSON answer or a closed stream within the bound, never a rejection out of it, and an answer
 * that is exactly what the request and the stub call for whenever the frame was well formed.
 */

const CODES: AllocationErrorCode[] = ['start_failed', 'unhealthy', 'timeout', 'sidecar_failed', 'image_unavailable', 'runtime_unavailable', 'aborted', 'bad_request', 'unknown_service', 'capacity', 'shutting_down', 'internal']
const STUB_INSTANCE: AllocInstance = { peerId: '12D3KooWStubStubStubStubStubStubStubStubStubStubStub', multiaddrs: ['/ip4/127.0.0.1/tcp/1'] }
/** Names the stub allocate function treats specially; any other valid name gets the instance. */
const STUB_NAMES = ['cap', 'boom', 'nothing', 'nosuch', 'hello']
const READ_TIMEOUT_MS = 300
const ALLOCATE_TIMEOUT_MS = 150

/** What the stub (below) answers for a valid name. */
function stubAnswer (service: string): AllocResponse {
  switch (service) {
    case 'cap': return { ok: false, error: { code: 'capacity', message: 'no room' } }
    case 'boom': return { ok: false, error: { code: 'internal', message: 'boom' } }
    case 'nothing': return { ok: false, error: { code: 'internal', message: 'a string' } }
    case 'nosuch': return { ok: false, error: { code: 'unknown_service', message: 'no record' } }
    case 'slow': return { ok: false, error: { code: 'timeout', message: 'timed out' } }
    default: return { ok: true, instance: STUB_INSTANCE }
  }
}

async function stubAllocate ({ service }: AllocRequest, signal: AbortSignal): Promise<AllocInstance> {
  switch (service) {
    case 'cap': throw new AllocationError('capacity', 'no room')
    case 'boom': throw new Error('boom')
    // A throw that is not an Error at all.
    case 'nothing': throw 'a string'
    case 'nosuch': throw new AllocationError('unknown_service', 'no record')
    case 'slow':
      // Honours its signal, as the real allocator does: the timeout answers.
      return await new Promise<AllocInstance>((_resolve, reject) => {
        signal.addEventListener('abort', () => { reject(signal.reason as Error) }, { once: true })
      })
    default: return STUB_INSTANCE
  }
}

const enc = new TextEncoder()
const bytesOf = (text: string): Uint8Array => enc.encode(text)

/** Unsigned LEB128, as the length prefix of `lpStream`. */
function varint (n: number): number[] {
  const out: number[] = []
  let rest = n
  do {
    let byte = rest % 128
    rest = Math.floor(rest / 128)
    if (rest > 0) byte |= 0x80
    out.push(byte)
  } while (rest > 0)
  return out
}

const serviceNameArb = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...STUB_NAMES) },
  // Waits out the allocate timeout: rare, as each costs ALLOCATE_TIMEOUT_MS.
  { weight: 1, arbitrary: fc.oneof({ weight: 1, arbitrary: fc.constant('slow') }, { weight: 9, arbitrary: fc.constant('hello') }) },
  { weight: 2, arbitrary: fc.stringMatching(SERVICE_NAME) },
  { weight: 2, arbitrary: fc.constantFrom('', 'A', 'Hello', '-a', 'a_b', 'a.b', 'a b', 'a'.repeat(64), 'é', 'a\n', '\u0000', '\ud800', 'hello\u0000', ' hello') },
  { weight: 1, arbitrary: fc.string({ maxLength: 70 }) }
)

/** Request payloads: mostly JSON, some near misses, some bytes that are not UTF-8 at all. */
const payloadArb: fc.Arbitrary<Uint8Array> = fc.oneof(
  { weight: 6, arbitrary: serviceNameArb.map(service => bytesOf(JSON.stringify({ service }))) },
  { weight: 1, arbitrary: fc.tuple(serviceNameArb, fc.oneof(fc.nat(), fc.integer(), fc.double(), fc.jsonValue({ maxDepth: 1 }))).map(([service, minSeq]) => bytesOf(JSON.stringify({ service, minSeq }))) },
  { weight: 1, arbitrary: fc.jsonValue().map(value => bytesOf(JSON.stringify(value) ?? 'null')) },
  { weight: 1, arbitrary: fc.tuple(serviceNameArb, fc.dictionary(fc.string({ maxLength: 10 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 3 })).map(([service, extra]) => bytesOf(JSON.stringify({ ...extra, service }))) },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 3 }).map(service => bytesOf(JSON.stringify({ service }))) },
  {
    weight: 2,
    arbitrary: fc.constantFrom('{"service":"a","service":"b"}', ' {"service":"a"} ', '\uFEFF{"service":"a"}', '{"__proto__":{"service":"a"}}', '{"__proto__":"a"}',
      '{"service":"a"}\u0000', '{"service":"\\u0061"}', '{"service":"a\\u0000"}', '{"service":"\\ud800"}', '{"service":"a"', '{"service":a}', '{service:"a"}',
      "{'service':'a'}", 'null', '[]', '["service","a"]', '"service"', '', '{}', '{"service":null}', '{"service":["a"]}', '{"service":{"toString":"a"}}',
      '{"constructor":"a"}', '{"service":"a"}{"service":"b"}', '1e999', '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]', `{"service":"${'a'.repeat(20_000)}"}`)
      .map(bytesOf)
  },
  { weight: 2, arbitrary: fc.uint8Array({ maxLength: 80 }) },
  {
    weight: 1,
    // Valid JSON around bytes that are not UTF-8 (a lone continuation byte, an overlong form, a cut sequence).
    arbitrary: fc.tuple(fc.constantFrom([0xff], [0x80], [0xc0, 0xaf], [0xe2, 0x82], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80]), fc.nat({ max: 3 }))
      .map(([bad, at]) => {
        const text = bytesOf('{"service":"hello"}')
        const cut = 12 + at
        return Uint8Array.from([...text.subarray(0, cut), ...bad, ...text.subarray(cut)])
      })
  }
)

type Framing = 'exact' | 'exact+trailing' | 'two-frames' | 'non-minimal' | 'short-claim' | 'long-claim' | 'huge-claim' | 'overlong-varint' | 'no-prefix' | 'empty' | 'max-size'

interface AllocCase {
  bytes: Uint8Array
  framing: Framing
  splits: number[]
  /** Half-close after sending (a peer that keeps its end open is answered after the read timeout). */
  fin: boolean
  /** The answer the server must give, when the frame is well formed by construction. */
  expected?: AllocResponse
}

const allocCaseArb: fc.Arbitrary<AllocCase> = fc.record({
  payload: payloadArb,
  framing: fc.oneof(
    { weight: 12, arbitrary: fc.constant<Framing>('exact') },
    { weight: 1, arbitrary: fc.constantFrom<Framing>('exact+trailing', 'two-frames', 'non-minimal', 'short-claim', 'long-claim', 'huge-claim', 'overlong-varint', 'no-prefix', 'empty', 'max-size') }
  ),
  claim: fc.oneof(fc.integer({ min: MAX_FRAME_BYTES + 1, max: 2 ** 32 }), fc.constantFrom(MAX_FRAME_BYTES + 1, 2 ** 31, 2 ** 53 - 1)),
  trailing: fc.uint8Array({ minLength: 1, maxLength: 40 }),
  cut: fc.oneof({ weight: 8, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.double({ min: 0, max: 1, noNaN: true }) }),
  splits: fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 3 }),
  fin: fc.oneof({ weight: 100, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) })
}).map(c => {
  const p = [...c.payload]
  let bytes: number[]
  let wellFormed = false
  switch (c.framing) {
    case 'exact': bytes = [...varint(p.length), ...p]; wellFormed = true; break
    case 'exact+trailing': bytes = [...varint(p.length), ...p, ...c.trailing]; wellFormed = true; break
    case 'two-frames': bytes = [...varint(p.length), ...p, ...varint(p.length), ...p]; wellFormed = true; break
    case 'non-minimal': bytes = [0x80 | (p.length & 0x7f), 0x80 | ((p.length >> 7) & 0x7f), 0x80, 0x00, ...p]; break
    case 'short-claim': bytes = [...varint(Math.max(0, p.length - 1 - (c.trailing[0] % 8))), ...p]; break
    case 'long-claim': bytes = [...varint(p.length + 1 + c.trailing[0]), ...p]; break
    case 'huge-claim': bytes = [...varint(c.claim), ...p, ...c.trailing]; break
    case 'overlong-varint': bytes = [...new Array<number>(10 + (c.trailing[0] % 6)).fill(0xff), 0x01, ...p]; break
    case 'no-prefix': bytes = p; break
    case 'empty': bytes = []; break
    case 'max-size': {
      // Exactly the largest frame allowed, and one byte more.
      const size = MAX_FRAME_BYTES + (c.trailing[0] % 2)
      bytes = [...varint(size), ...new Array<number>(size).fill(0x20)]
      break
    }
  }
  const cut = c.cut == null ? undefined : Math.floor(c.cut * bytes.length)
  if (cut != null) {
    bytes = bytes.slice(0, cut)
    wellFormed = false
  }
  const out = Uint8Array.from(bytes)
  const splits = [...new Set(c.splits.map(s => Math.floor(s * out.length)))].filter(s => s > 0 && s < out.length).sort((a, b) => a - b)
  let expected: AllocResponse | undefined
  if (wellFormed) {
    if (p.length > MAX_FRAME_BYTES) {
      expected = { ok: false, error: { code: 'bad_request', message: '' } }
    } else {
      try {
        expected = stubAnswer(parseAllocRequest(c.payload).service)
      } catch {
        expected = { ok: false, error: { code: 'bad_request', message: '' } }
      }
    }
  }
  return { bytes: out, framing: c.framing, splits, fin: c.fin, expected }
})

/** Framings that never carry a whole valid request (with a half-close, the long claim is cut by EOF). */
const NEVER_VALID = new Set<Framing>(['huge-claim', 'overlong-varint', 'empty', 'max-size', 'long-claim'])

/** A well-formed answer on the wire, or why not. */
function checkShape (answer: unknown): string | undefined {
  if (answer === null || typeof answer !== 'object') return 'the answer is not a JSON object'
  const a = answer as Record<string, unknown>
  if (a.ok === true) {
    const instance = a.instance as Record<string, unknown> | undefined
    if (instance == null || typeof instance.peerId !== 'string' || !Array.isArray(instance.multiaddrs)) return 'ok answer without an instance'
    return undefined
  }
  if (a.ok === false) {
    const error = a.error as Record<string, unknown> | undefined
    if (error == null || !CODES.includes(error.code as AllocationErrorCode) || typeof error.message !== 'string') return `error answer without a known code: ${JSON.stringify(a.error)}`
    return undefined
  }
  return `answer without a boolean ok: ${JSON.stringify(answer).slice(0, 200)}`
}

/** The same answer: equal ok, and the same instance or the same code (messages may differ). */
function sameAnswer (a: AllocResponse, b: AllocResponse): boolean {
  if (a.ok && b.ok) return JSON.stringify(a.instance) === JSON.stringify(b.instance)
  if (!a.ok && !b.ok) return a.error.code === b.error.code
  return false
}

describe('fuzz: parseAllocRequest (pure)', () => {
  it('returns a valid {service} or throws AllocationError bad_request, for any bytes', async () => {
    const frames = fc.oneof(payloadArb, fc.uint8Array({ maxLength: 300 }), fc.string({ unit: 'binary', maxLength: 100 }).map(bytesOf))
    const report = await runSurface({
      surface: 'alloc-parse',
      arbitrary: frames,
      check: async bytes => {
        let result: unknown
        try {
          result = parseAllocRequest(bytes)
        } catch (err) {
          if (!(err instanceof AllocationError)) return fail(`threw ${describeError(err)}, not an AllocationError`, 'not an AllocationError')
          if (err.code !== 'bad_request') return fail(`threw AllocationError ${err.code}, not bad_request`, 'wrong code')
          if (typeof err.message !== 'string' || err.message === '') return fail('an AllocationError without a message', 'no message')
          return ok('bad_request')
        }
        const keys = result !== null && typeof result === 'object' ? Object.keys(result).sort() : []
        const { service, minSeq } = result as { service?: unknown, minSeq?: unknown }
        const validSeq = minSeq === undefined || (typeof minSeq === 'number' && Number.isSafeInteger(minSeq) && minSeq >= 0)
        if (!(keys.join() === 'service' || keys.join() === 'minSeq,service') || typeof service !== 'string' || !SERVICE_NAME.test(service) || !validSeq) {
          return fail(`returned ${JSON.stringify(result)}`, 'returned something that is not a valid request')
        }
        // It is what was sent: the bytes are JSON whose only fields are these.
        const sent = JSON.parse(new TextDecoder().decode(bytes)) as { service?: unknown, minSeq?: unknown }
        if (sent.service !== service || sent.minSeq !== minSeq) return fail(`returned ${JSON.stringify(result)} for ${JSON.stringify(sent)}`, 'returned another request')
        return ok('valid')
      },
      rss: settledRss,
      heap: heapUsed,
      rssOf: `this vitest worker after GC (pid ${process.pid})`,
      runs: FUZZ_RUNS * 5
    })
    expect(report.failures, describeReport(report)).toBe(0)
    expect(report.notes.valid).toBeGreaterThan(0)
    expect(report.notes.bad_request).toBeGreaterThan(0)
  }, fuzzTimeoutMs(1, FUZZ_RUNS * 5))
})

describe('fuzz: serveAllocStream over real libp2p streams', () => {
  let serverNode: MeshNode
  let clientNode: MeshNode
  type Served = Promise<{ response?: AllocResponse, rejected?: unknown }>
  /** Streams served so far, the last one's outcome, those not settled yet, and any rejections. */
  let servedCount = 0
  let lastServed: Served | undefined
  const unsettled = new Set<Served>()
  const rejections: unknown[] = []

  beforeAll(async () => {
    serverNode = await startTestNode()
    clientNode = await startTestNode()
    await serverNode.handle(ALLOC_PROTOCOL, (stream: Stream) => {
      const served: Served = serveAllocStream(stream, stubAllocate, { readTimeoutMs: READ_TIMEOUT_MS, allocateTimeoutMs: ALLOCATE_TIMEOUT_MS })
        .then(response => ({ response }), (rejected: unknown) => {
          rejections.push(rejected)
          return { rejected }
        })
      servedCount++
      lastServed = served
      unsettled.add(served)
      void served.then(() => unsettled.delete(served))
    })
    await clientNode.dial(serverNode.getMultiaddrs()[0], { signal: AbortSignal.timeout(5000) })
  })

  afterAll(async () => {
    await clientNode?.stop()
    await serverNode?.stop()
  })

  /** Sends the case's bytes on a new stream and reads one answer frame. */
  async function exchange (c: AllocCase): Promise<{ answer?: unknown, closed?: string, silent?: boolean }> {
    const stream = await clientNode.dialProtocol(serverNode.peerId, ALLOC_PROTOCOL, { signal: AbortSignal.timeout(5000) })
    const lp = lpStream(stream, { maxDataLength: 1024 * 1024 })
    try {
      let from = 0
      for (const to of [...c.splits, c.bytes.length]) {
        try {
          if (!stream.send(c.bytes.subarray(from, to))) await stream.onDrain({ signal: AbortSignal.timeout(HANG_MS) })
        } catch {
          break
        }
        from = to
      }
      if (c.fin) await stream.close({ signal: AbortSignal.timeout(HANG_MS) }).catch(() => {})
      const bound = AbortSignal.timeout(HANG_MS)
      try {
        const frame = await lp.read({ signal: bound })
        return { answer: JSON.parse(new TextDecoder().decode(frame.subarray())) as unknown }
      } catch (err) {
        if (bound.aborted) return { silent: true }
        return { closed: describeError(err) }
      }
    } finally {
      if (stream.status === 'open' || stream.status === 'closing') stream.abort(new Error('exchange over'))
    }
  }

  it('answers every generated frame with one coded JSON answer or a close, never a rejection', async () => {
    const errors = watchProcessErrors()
    const check = async (c: AllocCase): Promise<Outcome> => {
      const before = servedCount
      let got: Awaited<ReturnType<typeof exchange>>
      try {
        got = await exchange(c)
      } catch (err) {
        return fail(`no stream: ${describeError(err)}`, 'stream refused')
      }
      if (got.silent === true) return hang(`no answer and no close within ${HANG_MS} ms`, 'no answer, no close')
      // The server's side of this stream: it must settle, and not by rejecting.
      const deadline = Date.now() + HANG_MS
      while (servedCount === before && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 5))
      if (servedCount === before || lastServed == null) return fail('the server never saw the stream', 'not served')
      let timer: NodeJS.Timeout | undefined
      const side = await Promise.race([lastServed, new Promise<undefined>(resolve => { timer = setTimeout(() => { resolve(undefined) }, Math.max(0, deadline - Date.now())) })])
      clearTimeout(timer)
      if (side == null) return hang('serveAllocStream did not settle within the bound', 'serveAllocStream never settled')
      if (side.rejected !== undefined) return fail(`serveAllocStream rejected: ${describeError(side.rejected)}`, 'serveAllocStream rejected')

      if (got.answer === undefined) {
        if (c.expected != null) return fail(`a well-formed request got no answer (${got.closed ?? ''}); the server meant ${JSON.stringify(side.response)}`, 'well-formed request not answered')
        return ok('closed')
      }
      const shapeProblem = checkShape(got.answer)
      if (shapeProblem != null) return fail(shapeProblem, 'malformed answer')
      const answer = got.answer as AllocResponse
      if (side.response == null || !sameAnswer(answer, side.response)) return fail(`the client got ${JSON.stringify(answer)}, the server returned ${JSON.stringify(side.response)}`, 'answer differs from what the server returned')
      if (c.expected != null && !sameAnswer(answer, c.expected)) return fail(`expected ${JSON.stringify(c.expected)}, got ${JSON.stringify(answer)}`, 'wrong answer to a well-formed request')
      if (answer.ok && NEVER_VALID.has(c.framing)) return fail(`a malformed frame (${c.framing}) got an instance: ${JSON.stringify(answer)}`, 'malformed frame allocated')

      // The server still serves a good request on a new stream.
      const after = await requestAllocation(clientNode, serverNode.peerId, 'hello', AbortSignal.timeout(HANG_MS)).catch((err: unknown) => describeError(err))
      if (typeof after === 'string' || !after.ok) return fail(`a good request afterwards got ${JSON.stringify(after)}`, 'no good answer afterwards')
      return ok(answer.ok ? 'instance' : answer.error.code)
    }
    const report = await runSurface({
      surface: 'alloc-stream',
      arbitrary: allocCaseArb,
      check,
      rss: settledRss,
      heap: heapUsed,
      rssOf: `this vitest worker after GC (pid ${process.pid}: serveAllocStream and both libp2p nodes)`,
      problemsOutside: errors.problems
    }).finally(errors.stop)
    expect(report.cases).toBeGreaterThanOrEqual(FUZZ_RUNS)
    expect(report.failures, describeReport(report)).toBe(0)
    expect(report.hangs, describeReport(report)).toBe(0)
    expect(report.notes.instance).toBeGreaterThan(0)
    expect(report.notes.bad_request).toBeGreaterThan(0)
  }, fuzzTimeoutMs(30))

  it('settled every stream it served, none by rejecting', async () => {
    const deadline = Date.now() + HANG_MS + READ_TIMEOUT_MS + ALLOCATE_TIMEOUT_MS
    while (unsettled.size > 0 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 20))
    expect(servedCount).toBeGreaterThan(0)
    expect(unsettled.size).toBe(0)
    expect(rejections.map(describeError)).toEqual([])
  })
})
