import { pino, type Logger } from 'pino'

export type { Logger }
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const
export type LogLevel = typeof LOG_LEVELS[number]

/**
 * Structured JSON logs on stderr: stdout carries only the `ready` line that scripts wait for.
 * Synchronous writes, so the last lines before an exit are not lost.
 */
export function createLogger (name: string, level: LogLevel = 'info'): Logger {
  return pino({ name, level, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: true }))
}
