// The small part of autocannon's programmatic API the benchmarks use (the package ships no types).
declare module 'autocannon' {
  import type { EventEmitter } from 'node:events'

  export interface Options {
    url: string
    connections?: number
    pipelining?: number
    duration?: number
    amount?: number
    overallRate?: number
    connectionRate?: number
    timeout?: number
    method?: string
    headers?: Record<string, string>
  }

  export interface Result {
    requests: { total: number, average: number }
    errors: number
    timeouts: number
    non2xx: number
    duration: number
  }

  export interface Instance extends EventEmitter {
    stop: () => void
    on(event: 'response', listener: (client: unknown, statusCode: number, resBytes: number, responseTime: number) => void): this
    on(event: 'reqError', listener: (err: Error) => void): this
    on(event: 'done', listener: (result: Result) => void): this
  }

  function autocannon (opts: Options, callback: (err: Error | null, result: Result) => void): Instance
  export default autocannon
}
