import type { Logger } from '../shared/log.js'
import { UsageError } from '../shared/errors.js'
import { DockerRuntime } from './docker-runtime.js'
import { ProcessRuntime } from './process-runtime.js'
import type { Runtime } from './runtime.js'

/** `auto`: Docker when an engine answers, else processes (the embedded default). */
export async function chooseRuntime (kind: 'auto' | 'docker' | 'process', log: Logger): Promise<Runtime> {
  if (kind === 'process') return new ProcessRuntime({ log })
  const docker = new DockerRuntime({ log })
  if (await docker.available()) return docker
  if (kind === 'docker') throw new UsageError('--runtime docker: no Docker engine answers (is dockerd running, and may this user use its socket?)')
  log.info('no Docker engine answers: using the process runtime')
  return new ProcessRuntime({ log })
}
