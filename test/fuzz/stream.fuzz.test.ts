import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { InstanceServer } from '../../proxy/instance-server.js'
import { HTTP_PROTOCOL } from '../../shared/protocols/http.js'
import { createLogger } from '../../shared/log.js'
import type { MeshNode } from '../../shared/node.js'
import { startTestNode } from '../helpers/nodes.js'
import { appEchoProblem, describeAnswer, exchange, NORMAL_ANSWER, normalRequest, pathArb, rawRequestArb, startFuzzApp, streamDialer, type Answer, type FuzzApp, type RawRequest } from './http.js'
import { describeReport, fail, FUZZ_RUNS, fuzzTimeoutMs, HANG_MS, hang, ok, heapUsed, runSurface, settledRss, watchProcessErrors, type Outcome } from './runs.js'

/**
 * Surface 2: generated `/http/1.1` stream bytes to a server proxy's InstanceServer (in this
 * process, fronting a tiny node:http app), each over a new real libp2p stream from a second
 * real libp2p node. Property: each stream gets a well-formed answer head or is closed within
 * the bound, nothing escapes as an unhandled rejection or exception, and a normal request on a
 * new stream right after each case is still answered 200.
 */

const streamTargetArb: fc.Arbitrary<string> = fc.oneof(
  { weight: 10, arbitrary: pathArb.map(path => path.startsWith('/') ? path : `/${path}`) },
  {
    weight: 2,
    arbitrary: fc.oneof(
      { weight: 20, arbitrary: fc.constantFrom('/__reset', '/__204', '/__chunked', '/__big', '/a/__reset') },
      // Rare: while the finding below stands, each costs a hang (HANG_MS).
      { weight: 1, arbitrary: fc.constant('/__raw-trailer') }
    )
  },
  {
    weight: 2,
    arbitrary: fc.tuple(fc.constantFrom('http://127.0.0.1', 'http://127.0.0.1:1', 'https://example.com', 'http://a b', 'ftp://x', 'http://', 'x:'), pathArb)
      .map(([origin, path]) => `${origin}${path}`)
  },
  { weight: 1, arbitrary: fc.constantFrom('*', '', ' ', 'example.com:443', '?x', '#', 'a/b') },
  { weight: 1, arbitrary: fc.nat({ max: 70_000 }).map(n => `/${'a'.repeat(n)}`) }
)

/**
 * Counterexamples the fuzzer found (shrunk), tried first on every run so that they stay
 * checked whatever the seed. Each was a finding: see the comment on it.
 */
const FOUND: RawRequest[] = [
  // The app answered with a Trailer header and a Content-Length (valid HTTP; a Node app cannot
  // send it, others can): relay()'s 'response' listener called res.writeHead, which threw
  // ERR_HTTP_TRAILER_INVALID out of the listener: an uncaught exception (in a daemon: the
  // process dies), and the stream was never answered nor closed.
  { text: 'GET /__raw-trailer HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n', splits: [], complete: true, fin: false, clean: true, target: '/__raw-trailer', method: 'GET', bodyLength: 0 },
  // A `Trailer` header on a request without a chunked body: relay()'s http.request() threw
  // ERR_HTTP_TRAILER_INVALID, which InstanceServer answered as 502 app_unreachable although
  // the app was fine (the client side of the same bug was a 500, see ingress.fuzz.test.ts).
  { text: 'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nTrailer: X-T\r\n\r\n', splits: [], complete: true, fin: false, clean: true, target: '/', method: 'GET', bodyLength: 0 },
  // A chunked body on GET (HEAD, DELETE, OPTIONS too) went to the app with no framing at all:
  // relay() dropped Transfer-Encoding and Node's client does not chunk these methods. The app
  // read the body as the next request (here it answered 400 to the byte).
  { text: 'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n\u0000\r\n0\r\n\r\n', splits: [], complete: true, fin: false, clean: true, target: '/', method: 'GET', bodyLength: 1 },
  // An Upgrade request (no 'upgrade' listener) whose chunked body is malformed, then a
  // half-close: Node's HTTP server never reports the parse error after upgrade headers, so
  // InstanceServer neither answers nor closes until its body deadline (15 s) ends the stream.
  // Without the Upgrade header the same bytes get a 400 at once.
  { text: 'GET / HTTP/1.1\r\nUpgrade: x\r\nConnection: Upgrade\r\nTransfer-Encoding: chunked\r\n\r\n a \r\nxxxxxxxxxx\r\n0\r\n\r\n', splits: [], complete: false, fin: true, clean: false, target: '/' }
]

describe('fuzz: server proxy /http/1.1 streams (real libp2p)', () => {
  let app: FuzzApp
  let serverNode: MeshNode
  let clientNode: MeshNode
  let instance: InstanceServer
  const events = { start: 0, end: 0 }

  /** A fuzz case half-closes after half the bound without an answer; a normal request waits it all. */
  const answerOf = async (request: RawRequest, patient = false): Promise<Answer> =>
    await exchange(streamDialer(clientNode, serverNode.peerId, HTTP_PROTOCOL), request, { hangMs: HANG_MS, idleMs: patient ? HANG_MS : Math.floor(HANG_MS / 2), full: true })

  beforeAll(async () => {
    app = await startFuzzApp()
    serverNode = await startTestNode()
    clientNode = await startTestNode()
    instance = new InstanceServer({
      node: serverNode,
      app: { host: '127.0.0.1', port: app.port },
      log: createLogger('fuzz-instance', 'silent'),
      onRequest: event => { events[event]++ }
    })
    await instance.start()
    await clientNode.dial(serverNode.getMultiaddrs()[0], { signal: AbortSignal.timeout(5000) })
    expect(await answerOf(normalRequest('/ready'), true)).toMatchObject({ kind: 'answered', status: 200 })
  })

  afterAll(async () => {
    await instance?.stop(1000)
    await clientNode?.stop()
    await serverNode?.stop()
    await app?.stop()
  })

  it('answers or closes every generated stream within the bound, and keeps serving', async () => {
    const errors = watchProcessErrors()
    const check = async (request: RawRequest): Promise<Outcome> => {
      const answer = await answerOf(request)
      let outcome: Outcome
      switch (answer.kind) {
        case 'answered':
          // A request as a client sends it, to an app that answers: a 502 means the relay failed.
          outcome = request.clean === true && answer.status === 502 && !request.text.includes('/__reset')
            ? fail(`502 for a well-formed request the app answers: ${answer.head.slice(0, 300)}`, '502 for a well-formed request')
            : ok(`${answer.status}`)
          break
        case 'closed': outcome = ok(answer.bytes === 0 && answer.stalled ? 'closed after waiting' : 'closed'); break
        case 'malformed': outcome = fail(`malformed answer: ${answer.why}`, 'malformed answer'); break
        case 'silent': outcome = hang(answer.why, 'no answer, no close'); break
        case 'unreachable': outcome = fail(`no stream to the server: ${answer.why}`, 'stream refused'); break
      }
      if (outcome.kind !== 'ok') return outcome
      const echo = appEchoProblem(request, answer)
      if (echo != null) return fail(`the app did not get what was sent: ${echo}`, 'the app got another request than was sent')
      const after = await answerOf(normalRequest('/alive'), true)
      if (after.kind !== 'answered' || after.status !== 200) return fail(`a normal request after this one got ${describeAnswer(after)}`, 'no normal answer afterwards')
      if (after.body?.toString('latin1') !== NORMAL_ANSWER) return fail(`a normal request after this one got another answer: ${JSON.stringify(after.body?.toString('latin1'))}`, 'another answer to the normal request afterwards')
      return outcome
    }
    const report = await runSurface({
      surface: 'stream',
      arbitrary: rawRequestArb(streamTargetArb),
      check,
      examples: FOUND,
      rss: settledRss,
      heap: heapUsed,
      rssOf: `this vitest worker after GC (pid ${process.pid}: InstanceServer and both libp2p nodes)`,
      problemsOutside: errors.problems
    }).finally(errors.stop)
    expect(report.cases).toBeGreaterThanOrEqual(FUZZ_RUNS)
    expect(report.failures, describeReport(report)).toBe(0)
    expect(report.hangs, describeReport(report)).toBe(0)
  }, fuzzTimeoutMs(40))

  // Found by the stream fuzzer (seed -2067167238): after an Upgrade request Node hands the
  // socket to the 'upgrade' listener without its own error listener, and a stream the peer
  // reset once the 501 had gone out was an uncaught exception: the server proxy down.
  it('survives a stream reset right after its 501 to an Upgrade request', async () => {
    const errors = watchProcessErrors()
    try {
      const stream = await clientNode.dialProtocol(serverNode.peerId, HTTP_PROTOCOL, { signal: AbortSignal.timeout(5000) })
      const answered = new Promise<string>(resolve => {
        stream.addEventListener('message', evt => { resolve(Buffer.from(evt.data.subarray()).toString('latin1')) }, { once: true })
      })
      stream.send(new TextEncoder().encode('GET / HTTP/1.1\r\nHost: x\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n'))
      expect(await answered).toMatch(/^HTTP\/1\.1 501 /)
      stream.abort(new Error('the peer resets'))
      // A whole exchange later, whatever the reset set off on the server has happened.
      expect(await answerOf(normalRequest('/after-reset'), true)).toMatchObject({ kind: 'answered', status: 200 })
      expect(errors.problems()).toEqual([])
    } finally {
      errors.stop()
    }
  })

  it('still serves good requests afterwards, with nothing left in flight', async () => {
    const answer = await answerOf(normalRequest('/final?x=1'), true)
    expect(answer).toMatchObject({ kind: 'answered', status: 200 })
    // Every request the server started, it finished (answered or failed): none is stuck.
    const deadline = Date.now() + 5000
    while (instance.requestsInFlight > 0 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 20))
    expect(instance.requestsInFlight, `requests in flight (${events.start} started, ${events.end} ended)`).toBe(0)
    expect(events.end).toBe(events.start)
    expect(app.requests()).toBeGreaterThan(0)
  })
})
