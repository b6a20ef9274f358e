import type { Logger } from '../shared/log.js'
import { UsageError } from '../shared/errors.js'
import { ProcessRuntime, resolveAppUser } from './process-runtime.js'
import type { Runtime } from './runtime.js'

export interface RuntimeOptions {
  /** `--run-as`: the user process apps run as (see ProcessRuntimeInit.runAs). */
  runAs?: string
  /** Where process apps keep each service's data (see ProcessRuntimeInit.dataRoot). */
  dataRoot?: string
}

/** `auto`: Docker when an engine answers, else processes (the embedded default). */
export async function chooseRuntime (kind: 'auto' | 'docker' | 'process', log: Logger, options: RuntimeOptions = {}): Promise<Runtime> {
  const { runAs, dataRoot } = options
  // A bad --run-as is a mistake whichever runtime ends up chosen: say so now, not at the first start.
  if (runAs !== undefined) await checkRunAs(runAs)
  if (kind === 'process') return await processRuntime(log, runAs, dataRoot)
  // Loaded on use: dockerode and its ssh2 cost an idle process-runtime allocator ~5 MB of RSS
  // (96 against 101 MB measured).
  const { DockerRuntime } = await import('./docker-runtime.js')
  const docker = new DockerRuntime({ log })
  if (await docker.available()) {
    if (runAs !== undefined) log.info({ runAs }, '--run-as applies to process apps only: containers run as their image says')
    return docker
  }
  if (kind === 'docker') throw new UsageError('--runtime docker: no Docker engine answers (is dockerd running, and may this user use its socket?)')
  log.info('no Docker engine answers: using the process runtime')
  return await processRuntime(log, runAs, dataRoot)
}

async function processRuntime (log: Logger, runAs: string | undefined, dataRoot: string | undefined): Promise<ProcessRuntime> {
  const runtime = new ProcessRuntime({ log, runAs, dataRoot })
  try {
    const user = await runtime.appUser()
    log.info({ user: user.name, uid: user.uid, gid: user.gid }, 'process apps run as this user')
  } catch (err) {
    throw runAsError(runAs, err)
  }
  return runtime
}

async function checkRunAs (runAs: string): Promise<void> {
  try {
    await resolveAppUser(runAs)
  } catch (err) {
    throw runAsError(runAs, err)
  }
}

function runAsError (runAs: string | undefined, err: unknown): UsageError {
  const reason = err instanceof Error ? err.message : String(err)
  return new UsageError(runAs !== undefined ? `invalid --run-as '${runAs}': ${reason}` : `--run-as: ${reason}`)
}
