#!/usr/bin/env node
import '../shared/polyfill.js'
import { realpathSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { errorMessage, UsageError } from '../shared/errors.js'
import { dispatch, type Command, type Io } from './command.js'
import { keygen } from './keygen.js'
import { registry } from './registry-commands.js'

export type { Io } from './command.js'

const COMMANDS: Readonly<Record<string, Command>> = {
  keygen: {
    usage: 'hyphae keygen FILE',
    summary: 'write a new identity key (mode 0600) and print its peer ID',
    run: keygen
  },
  registry: {
    usage: 'hyphae registry (put|get) ...',
    summary: 'publish or read service records in the DHT',
    run: registry
  },
  status: {
    usage: 'hyphae status [OPTIONS]',
    summary: 'the whole mesh: services, instances and their stats, nodes',
    run: async (argv, io) => await (await import('./status.js')).status(argv, io)
  },
  dashboard: {
    usage: 'hyphae dashboard [OPTIONS]',
    summary: 'the whole mesh live, as a page on 127.0.0.1',
    run: async (argv, io) => await (await import('./dashboard.js')).dashboard(argv, io)
  },
  up: {
    usage: 'hyphae up [OPTIONS]',
    summary: 'run a whole local mesh on this machine (demo)',
    // Loaded on use: it brings dockerode, which the other commands need not load.
    run: async (argv, io) => await (await import('./up.js')).up(argv, io)
  }
}

function topHelp (): string {
  const lines = Object.values(COMMANDS).map(c => `  ${c.usage.padEnd(36)} ${c.summary}`)
  return `Usage: hyphae COMMAND [OPTIONS]\n\nCommands:\n${lines.join('\n')}\n\nRun 'hyphae COMMAND --help' for a command's options.`
}

/** Runs the CLI; returns the exit code. Never throws: a user mistake is one line and exit 2. */
export async function main (argv: string[], io: Io = processIo()): Promise<number> {
  try {
    return await dispatch(COMMANDS, argv, io, 'command', topHelp)
  } catch (err) {
    const message = errorMessage(err).split('\n')[0]
    io.err(`hyphae: ${message}`)
    return err instanceof UsageError ? 2 : 1
  }
}

function processIo (): Io {
  return {
    out: line => { process.stdout.write(line + '\n') },
    err: line => { process.stderr.write(line + '\n') },
    env: process.env,
    tty: process.stdout.isTTY,
    errTerminal: process.stderr.isTTY ? { write: chunk => { process.stderr.write(chunk) } } : undefined
  }
}

function isEntryPoint (): boolean {
  if (process.argv[1] == null) return false
  try {
    return realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url))
  } catch {
    return false
  }
}

if (isEntryPoint()) {
  // exit() rather than waiting for the loop to drain: a short-lived command must not linger
  // on a socket libp2p is still closing. stdout/stderr writes are synchronous for files and pipes.
  void main(process.argv.slice(2)).then(code => process.exit(code))
}
