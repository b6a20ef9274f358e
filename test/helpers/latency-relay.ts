// One implementation for tests and benchmarks; bench/ is compiled, test/ is not.
export { LatencyRelay, type LatencyRelayOptions } from '../../bench/lib/latency-relay.js'
