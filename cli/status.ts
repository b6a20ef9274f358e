import { option, optionsHelp, parsers } from '../shared/cli-options.js'
import { UsageError } from '../shared/errors.js'
import { parseCommand, type Io } from './command.js'
import { STATUS_DEFAULTS } from './mesh-status.js'
import { NODE_OPTIONS, surveyNodeSetup, withShortLivedNode } from './short-lived-node.js'

const OPTIONS = {
  json: option({ help: 'print the survey as JSON instead of tables', parse: parsers.flag }),
  watch: option({ arg: 'SECONDS', help: 'survey again every SECONDS until interrupted', parse: parsers.positiveInt }),
  timeout: option({ arg: 'MS', help: 'time the whole survey may take (nodes that have not answered by then are listed as such)', default: STATUS_DEFAULTS.timeoutMs, parse: parsers.positiveInt }),
  ...NODE_OPTIONS
}

const HELP = `usage: hyphae status [OPTIONS]

The whole mesh as its nodes tell it: the allocators the DHT knows, the providers of every
service they name and the peers this command connects to, each asked /hyphae/status/1.0.0.
Prints services, instances (with what each served over the last 10 s), nodes and the client
proxies' caches.

Options:
${optionsHelp(OPTIONS)}`

/** `hyphae status`: like `linkerd viz stat`, without a control plane to ask. */
export async function status (argv: string[], io: Io): Promise<number> {
  const { values, positionals } = parseCommand(argv, OPTIONS)
  if (values.help === true) {
    io.out(HELP)
    return 0
  }
  if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}'`)
  const setup = surveyNodeSetup(values, io.env)
  // Loaded on use: the tables and the survey need libp2p, which --help and usage errors need not load.
  const { surveyMesh } = await import('./mesh-status.js')
  const { formatMeshStatus } = await import('./status-table.js')
  return await withShortLivedNode(setup, async (registry, _signal, node) => {
    const stop = new AbortController()
    const interrupt = (): void => { stop.abort() }
    process.once('SIGINT', interrupt)
    process.once('SIGTERM', interrupt)
    try {
      for (;;) {
        const survey = await surveyMesh(node, registry, { services: Object.keys(setup.config.services), timeoutMs: values.timeout })
        if (values.json === true) io.out(JSON.stringify(survey))
        else {
          if (values.watch != null && io.tty === true) io.out('\x1b[2J\x1b[H')
          else if (values.watch != null) io.out(`--- ${new Date(survey.at).toISOString()}`)
          for (const line of formatMeshStatus(survey)) io.out(line)
        }
        if (values.watch == null || stop.signal.aborted) return survey.nodes.length > 0 ? 0 : 1
        await new Promise<void>(resolve => {
          const timer = setTimeout(resolve, values.watch as number * 1000)
          stop.signal.addEventListener('abort', () => { clearTimeout(timer); resolve() }, { once: true })
        })
        if (stop.signal.aborted) return 0
      }
    } finally {
      process.off('SIGINT', interrupt)
      process.off('SIGTERM', interrupt)
    }
  })
}
