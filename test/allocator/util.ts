import { chown, mkdtemp } from 'node:fs/promises'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pino, type Logger } from 'pino'
import { resolveAppUser } from '../../allocator/app-user.js'
import { readProcStat } from '../../allocator/proc.js'

/** Silent unless HYPHAE_TEST_LOG names a level: the allocator's logs help when a test fails. */
export function testLogger (): Logger {
  return pino({ level: process.env.HYPHAE_TEST_LOG ?? 'silent' }, pino.destination({ fd: 2, sync: true }))
}

export interface Reply { status: number, body: string }

/** One HTTP request on a fresh connection; rejects on a connection error. */
export async function httpCall (port: number, path: string, method = 'GET', host = '127.0.0.1', timeoutMs = 2000): Promise<Reply> {
  return await new Promise<Reply>((resolve, reject) => {
    const req = request({ host, port, path, method, agent: false, timeout: timeoutMs }, res => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { body += chunk })
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, body }) })
      res.on('error', reject)
    })
    req.on('timeout', () => { req.destroy(new Error('timeout')) })
    req.on('error', reject)
    req.end()
  })
}

/** Resolves with the status of GET path, or undefined if nothing answered. */
export async function statusOf (port: number, path: string): Promise<number | undefined> {
  try {
    return (await httpCall(port, path)).status
  } catch {
    return undefined
  }
}

/** Whether a process is running (a zombie is not). */
export function running (pid: number): boolean {
  const stat = readProcStat(pid)
  return stat != null && stat.state !== 'Z'
}

/** Every running process of a process group, from /proc. */
export async function groupMembers (pgid: number): Promise<number[]> {
  const { readdir } = await import('node:fs/promises')
  const pids: number[] = []
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    const stat = readProcStat(Number(entry))
    if (stat != null && stat.pgrp === pgid && stat.state !== 'Z') pids.push(Number(entry))
  }
  return pids
}

/**
 * A scratch directory the process runtime's apps can write to: they run as the default app
 * user (nobody, when the tests run as root), not as the test.
 */
export async function appScratchDir (prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  const user = await resolveAppUser()
  await chown(dir, user.uid, user.gid)
  return dir
}
