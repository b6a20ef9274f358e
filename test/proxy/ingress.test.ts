import { describe, expect, it } from 'vitest'
import { MeshError } from '../../shared/errors.js'
import { Ingress, parseAppTarget } from '../../proxy/ingress.js'
import type { MeshAgents } from '../../proxy/mesh-agents.js'
import type { Router } from '../../proxy/router.js'
import { createLogger } from '../../shared/log.js'
import { rawHttp } from '../helpers/http.js'

describe('parseAppTarget', () => {
  it.each([
    ['/hello/a/b?x=1', 'hello', '/a/b?x=1'],
    ['/hello', 'hello', '/'],
    ['/hello/', 'hello', '/'],
    ['/hello?x=1', 'hello', '/?x=1'],
    ['/my-app-2/deep/path/', 'my-app-2', '/deep/path/'],
    ['http://127.0.0.1:1234/hello/a?b', 'hello', '/a?b']
  ])('%s → app %s, path %s', (url, app, path) => {
    expect(parseAppTarget(url)).toEqual({ app, path })
  })

  it.each(['/', '', '/Hello/x', '/-bad/x', '/a_b/x', `/${'a'.repeat(64)}/x`, '*'])('refuses %j with a 400', url => {
    let error: unknown
    try {
      parseAppTarget(url)
    } catch (err) {
      error = err
    }
    expect(error).toBeInstanceOf(MeshError)
    expect((error as MeshError).status).toBe(400)
  })
})

describe('an instance\'s door (Ingress with admit)', () => {
  /** An ingress whose registry knows no service: an admitted request gets a JSON 404. */
  async function door (admit?: (remote: string) => boolean, host = '127.0.0.1'): Promise<{ ingress: Ingress, port: number }> {
    const ingress = new Ingress({
      port: 0,
      host,
      admit,
      registry: { resolve: async () => undefined },
      router: undefined as unknown as Router,
      agents: undefined as unknown as MeshAgents,
      log: createLogger('test', 'silent')
    })
    return { ingress, port: await ingress.start() }
  }

  it('serves the addresses it admits and closes on the others without a byte', async () => {
    const seen: string[] = []
    const open = await door(remote => { seen.push(remote); return true })
    const shut = await door(() => false)
    try {
      expect(await rawHttp(open.port, 'GET /nosuch/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')).toMatch(/^HTTP\/1\.1 404 /)
      expect(seen).toEqual(['127.0.0.1'])
      expect(await rawHttp(shut.port, 'GET /nosuch/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')).toBe('')
    } finally {
      await open.ingress.stop()
      await shut.ingress.stop()
    }
  })

  it('refuses to listen beyond loopback without an admission check', async () => {
    await expect(door(undefined, '0.0.0.0')).rejects.toThrow('an ingress on 0.0.0.0 must admit only its own clients')
  })
})
