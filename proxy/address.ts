import { parsePort } from '../shared/config.js'
import { UsageError } from '../shared/errors.js'

/** The app's `host:port` (`[v6]:port` too) from the server-mode command line. */
export function parseAppAddress (text: string): { host: string, port: number } {
  const match = /^(\[[^[\]]+\]|[^:[\]]+):(\d+)$/.exec(text)
  if (match == null) throw new UsageError(`invalid ADDRESS '${text}': expected host:port`)
  return { host: match[1].replace(/^\[|\]$/g, ''), port: parsePort(match[2], 'ADDRESS port') }
}
