import { parseArgsOptions, readOptions, type OptionTable, type OptionValues } from '../shared/cli-options.js'
import { parseCommandLine } from '../shared/config.js'
import { UsageError } from '../shared/errors.js'

/** Where a command writes; main() takes it so tests and embedders can capture output. */
export interface Io {
  out: (line: string) => void
  err: (line: string) => void
  env: NodeJS.ProcessEnv
  /** Whether out goes to a terminal (redraws), else plain lines. */
  tty?: boolean
  /** stderr, when it is a terminal: progress redraws a wait in place there. */
  errTerminal?: { write: (chunk: string) => void }
}

export interface Command {
  usage: string
  summary: string
  run: (argv: string[], io: Io) => Promise<number>
}

/** Runs the command ARGV names from TABLE; WHAT names the level in messages ('command', 'registry command'). */
export function dispatch (table: Readonly<Record<string, Command>>, argv: string[], io: Io, what: string, help: () => string): Promise<number> | number {
  const [name, ...rest] = argv
  if (name == null) throw new UsageError(`missing ${what} (${Object.keys(table).join(', ')}); see --help`)
  if (name === '--help' || name === '-h' || name === 'help') {
    io.out(help())
    return 0
  }
  if (name.startsWith('-')) throw new UsageError(`unknown option '${name}' before the ${what}`)
  // hasOwn: 'constructor' or 'toString' must be unknown commands, not Object.prototype's.
  const command = Object.hasOwn(table, name) ? table[name] : undefined
  if (command == null) throw new UsageError(`unknown ${what} '${name}' (expected one of ${Object.keys(table).join(', ')})`)
  return command.run(rest, io)
}

/** A command's arguments read with its option table: one-line UsageErrors, defaults applied. */
export function parseCommand<T extends OptionTable> (argv: string[], table: T): { values: OptionValues<T>, positionals: string[] } {
  const parsed = parseCommandLine(argv, parseArgsOptions(table))
  return { values: readOptions(table, parsed.values), positionals: parsed.positionals }
}

export function onePositional (positionals: string[], what: string): string {
  if (positionals.length === 0) throw new UsageError(`missing ${what}`)
  if (positionals.length > 1) throw new UsageError(`unexpected argument '${positionals[1]}'`)
  return positionals[0]
}
