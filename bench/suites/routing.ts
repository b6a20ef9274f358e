import type { Suite, SuiteResult } from '../lib/context.js'
import { naRow } from '../lib/table.js'

/**
 * 6. Routing: time to move traffic off an instance that breaks its hard RTT, and failed
 * requests during an instance kill under load.
 *
 * HOOK(routing): needs RTT-aware routing (the routing issue) and, for relaunches, the allocator.
 * When it lands:
 *   - RTT move: two instances of one service behind server proxies, one reached through a
 *     latency relay (as test/helpers/latency-relay.ts does; write a bench/lib copy, not an import);
 *     steady autocannon load at 200 req/s through a client proxy; raise the relay's delay past
 *     the hard RTT at t0; report the time from t0 to the last response served by that instance;
 *   - kill under load: same load, SIGKILL one instance's app (or server proxy) at t0; report
 *     non-2xx + socket errors over the run and the time until errors stop.
 */
export const routing: Suite = {
  name: 'routing',
  about: 'traffic moved off an instance over its hard RTT; failures during an instance kill [needs routing]',
  async run (): Promise<SuiteResult> {
    const why = 'n/a (hook only: written with the routing issue)'
    return {
      rows: [
        naRow('routing.rtt-move', 'routing', 'time to move traffic off a hard-RTT breaker', 'ms', why),
        naRow('routing.kill-failures', 'routing', 'failed requests during an instance kill', 'req', why)
      ],
      details: { skipped: why }
    }
  }
}
