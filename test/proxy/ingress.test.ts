import { describe, expect, it } from 'vitest'
import { MeshError } from '../../shared/errors.js'
import { parseAppTarget } from '../../proxy/ingress.js'

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
