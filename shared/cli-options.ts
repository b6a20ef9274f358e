import type { ParseArgsConfig } from 'node:util'
import { LOG_LEVELS } from './log.js'
import { parsePort, parsePositiveInt } from './config.js'
import { UsageError } from './errors.js'

/**
 * One command-line option: how it reads, what `--help` says, and its default. A daemon's
 * options are one table of these; `--help` is generated from it and the values are parsed
 * by it, so a default is written once (usually as the constant of the module that uses it).
 */
export interface OptionSpec<V> {
  /** Its value's placeholder in `--help`; none: a flag (true when given). */
  arg?: string
  help: string
  /** The value when the option is not given; none: undefined. */
  default?: V
  /** How `--help` shows the default when it is not the value itself (units, computed). */
  defaultText?: string
  /** May be given more than once (values collect in an array). */
  multiple?: boolean
  short?: string
  parse: (text: string, flag: string) => V
}

export type OptionTable = Record<string, OptionSpec<unknown>>

type Value<S> = S extends OptionSpec<infer V>
  ? S extends { multiple: true } ? V[] | undefined : S extends { default: unknown } ? V : V | undefined
  : never

export type OptionValues<T extends OptionTable> = { -readonly [K in keyof T]: Value<T[K]> }

/**
 * A table entry, its value type taken from `parse` and `multiple: true` and a default kept in
 * the type, so that readOptions types repeatable options as arrays and defaulted ones as set.
 */
export function option<V, const S extends Omit<OptionSpec<V>, 'parse' | 'default'> & { default?: V }> (spec: S & { parse: (text: string, flag: string) => V }): S & OptionSpec<V> {
  return spec as S & OptionSpec<V>
}

export const parsers = {
  text: (text: string): string => text,
  flag: (): boolean => true,
  positiveInt: (text: string, flag: string): number => parsePositiveInt(text, flag, 0),
  port: (text: string, flag: string): number => parsePort(text, flag),
  /** Whole seconds on the command line, milliseconds in the program. */
  secondsAsMs: (text: string, flag: string): number => parsePositiveInt(text, flag, 0) * 1000,
  oneOf: <C extends string>(choices: readonly C[]) => (text: string, flag: string): C => {
    if (!(choices as readonly string[]).includes(text)) throw new UsageError(`invalid ${flag} '${text}': expected ${choices.join(', ')}`)
    return text as C
  }
}

/** Options every daemon takes (DESIGN.md, "Command lines"). */
export const COMMON_OPTIONS = {
  configfile: option({ arg: 'PATH', help: 'config file', defaultText: 'conf/conf.json of the package', parse: parsers.text }),
  key: option({ arg: 'FILE', help: 'identity key, created (0600) when missing', parse: parsers.text }),
  listen: option({ arg: 'MULTIADDR', help: 'libp2p listen address', multiple: true, defaultText: '/ip4/127.0.0.1/tcp/0', parse: parsers.text }),
  announce: option({ arg: 'MULTIADDR', help: 'address others should dial', multiple: true, parse: parsers.text }),
  bootstrap: option({ arg: 'MULTIADDR', help: 'bootstrap peer; else config Bootstraps, else $P2P_BOOTSTRAPS; none: this node is the first of its mesh', multiple: true, parse: parsers.text }),
  psk: option({ arg: 'FILE', help: 'private network key (else $P2P_PSK)', parse: parsers.text }),
  metrics: option({ arg: 'PORT', help: 'metrics on 127.0.0.1:PORT (/metrics Prometheus; 0: any free port)', parse: parsers.port }),
  'log-level': option({ arg: 'LEVEL', help: `${LOG_LEVELS.join(', ')}`, defaultText: 'info, or $HYPHAE_LOG_LEVEL', parse: parsers.oneOf(LOG_LEVELS) }),
  help: option({ short: 'h', help: 'this text', parse: parsers.flag })
}

/** The table as util.parseArgs options. */
export function parseArgsOptions (table: OptionTable): NonNullable<ParseArgsConfig['options']> {
  const out: NonNullable<ParseArgsConfig['options']> = {}
  for (const [name, spec] of Object.entries(table)) {
    out[name] = { type: spec.arg == null ? 'boolean' : 'string', ...(spec.multiple === true ? { multiple: true } : {}), ...(spec.short != null ? { short: spec.short } : {}) }
  }
  return out
}

/** Parses what util.parseArgs returned with the table: defaults applied, one-line errors. */
export function readOptions<T extends OptionTable> (table: T, values: Record<string, string | boolean | Array<string | boolean> | undefined>): OptionValues<T> {
  const out: Record<string, unknown> = {}
  for (const [name, spec] of Object.entries(table)) {
    const given = values[name]
    const flag = `--${name}`
    if (spec.multiple === true) {
      out[name] = given == null ? spec.default : (given as string[]).map(text => spec.parse(text, flag))
    } else if (given == null) {
      out[name] = spec.default
    } else {
      out[name] = spec.arg == null ? true : spec.parse(given as string, flag)
    }
  }
  return out as OptionValues<T>
}

const COLUMN = 26
const WIDTH = 100

/** The options part of `--help`, one entry per option, wrapped under its description. */
export function optionsHelp (table: OptionTable): string {
  const lines: string[] = []
  for (const [name, spec] of Object.entries(table)) {
    const head = `  ${spec.short != null ? `-${spec.short}, ` : ''}--${name}${spec.arg != null ? ` ${spec.arg}` : ''}`
    const shown = spec.defaultText ?? (spec.default != null && spec.default !== false && !(Array.isArray(spec.default) && spec.default.length === 0) ? String(spec.default) : undefined)
    const text = `${spec.help}${spec.multiple === true ? ' (repeatable)' : ''}${shown != null ? ` (default ${shown})` : ''}`
    let line = head.length < COLUMN ? head.padEnd(COLUMN - 1) : `${head}\n${' '.repeat(COLUMN - 1)}`
    let width = COLUMN - 1
    for (const word of text.split(' ')) {
      if (width + 1 + word.length > WIDTH && width > COLUMN - 1) {
        lines.push(line)
        line = ' '.repeat(COLUMN - 1)
        width = COLUMN - 1
      }
      line += ` ${word}`
      width += 1 + word.length
    }
    lines.push(line)
  }
  return lines.join('\n')
}
