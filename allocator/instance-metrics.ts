import { Gauge, type Registry as MetricsRegistry } from 'prom-client'
import type { InstanceStats, InstanceStatus } from '../shared/protocols/status.js'

/** The samples one instance gives a gauge: extra labels (beyond service and instance) and a value. */
type Samples = (status: InstanceStatus) => Array<[Record<string, string>, number]>

/** Samples from the instance's stats, none while its sidecar has not answered (or the value is null). */
function fromStats (pick: (stats: InstanceStats) => number | null): Samples {
  return status => {
    const value = status.stats != null ? pick(status.stats) : null
    return value != null ? [[{}, value]] : []
  }
}

/**
 * `hyphae_instance_*`: what each instance this allocator runs has served, as its status shows
 * it, by service and instance (the allocator's own instance ID). The labels are bounded by the
 * instances it runs now: each scrape starts from empty.
 */
export function registerInstanceMetrics (registers: MetricsRegistry[], statuses: () => Promise<InstanceStatus[]>): void {
  const gauge = (name: string, help: string, samples: Samples, extraLabels: string[] = []): void => {
    new Gauge({
      name,
      help,
      labelNames: ['service', 'instance', ...extraLabels],
      registers,
      async collect () {
        this.reset()
        for (const status of await statuses()) {
          for (const [extra, value] of samples(status)) this.set({ service: status.service, instance: status.instance ?? '', ...extra }, value)
        }
      }
    })
  }
  // Gauges, though they mirror counters: a restarted sidecar counts from zero again.
  gauge('hyphae_instance_requests', 'Requests the instance has answered since its server proxy started, by result (ok; failed: 5xx)',
    status => status.stats != null ? [[{ result: 'ok' }, status.stats.ok], [{ result: 'failed' }, status.stats.failed]] : [], ['result'])
  gauge('hyphae_instance_requests_per_second', 'Requests per second over the last 10 s', fromStats(s => s.rps))
  gauge('hyphae_instance_response_seconds_avg', 'Mean response time over the last 10 s', fromStats(s => s.avgMs != null ? s.avgMs / 1000 : null))
  gauge('hyphae_instance_response_seconds_p99', '99th percentile response time over the last 10 s', fromStats(s => s.p99Ms != null ? s.p99Ms / 1000 : null))
  gauge('hyphae_instance_requests_in_flight', 'Requests the instance is serving now', fromStats(s => s.inFlight))
  gauge('hyphae_instance_idle_seconds', 'Seconds since the instance last finished a request', fromStats(s => s.idleS))
  gauge('hyphae_instance_age_seconds', 'Seconds since the allocator took the instance on', status => [[{}, status.ageS]])
  gauge('hyphae_instance_relaunches', 'Times the instance\'s app was relaunched', status => [[{}, status.relaunches]])
}
