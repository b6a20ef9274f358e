import { execFile, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { readlinkSync, realpathSync, statSync } from 'node:fs'
import { createServer } from 'node:http'
import { createInterface } from 'node:readline'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { http } from './http.js'
import { createHosts, namespaceNames, removeLeftovers, spawnIn, type NetnsHosts } from './netns.js'
import { waitFor } from './wait-for.js'

const run = promisify(execFile)

/** An HTTP server on the host's address and one on its 127.0.0.1, both answering who asked whom. */
const SERVER = `
const http = require('node:http')
const handler = (req, res) => { res.end('hello from ' + req.socket.localAddress + ' to ' + req.socket.remoteAddress) }
const onHostIp = http.createServer(handler).listen(0, process.argv[1], () => {
  const onLoopback = http.createServer(handler).listen(0, '127.0.0.1', () => {
    console.log('listening ' + onHostIp.address().port + ' ' + onLoopback.address().port)
  })
})
`

/** Prints the body at the URL. */
const FETCH = 'fetch(process.argv[1]).then(async res => { console.log(await res.text()) })'

/** Prints "connected", or the error code, for a TCP connection to 127.0.0.1:<port>. */
const CONNECT_LOOPBACK = `
const socket = require('node:net').connect(Number(process.argv[1]), '127.0.0.1')
socket.on('connect', () => { console.log('connected'); socket.destroy() })
socket.on('error', err => { console.log(err.code) })
`

async function ipLinkNames (): Promise<string[]> {
  const { stdout } = await run('ip', ['-j', 'link', 'show'], { encoding: 'utf8' })
  return (JSON.parse(stdout) as Array<{ ifname: string }>).map(link => link.ifname)
}

describe('createHosts', () => {
  let net: NetnsHosts
  let server: ChildProcess
  let serverPort: number
  let loopbackPort: number

  beforeAll(async () => {
    net = await createHosts(3)
    const [host0] = net.hosts
    // The node of this test, by absolute path: `ip netns exec` looks commands up on PATH.
    server = spawnIn(host0, process.execPath, ['-e', SERVER, host0.ip], { stdio: ['ignore', 'pipe', 'pipe'] })
    const lines: string[] = []
    let stderr = ''
    createInterface({ input: server.stdout as NodeJS.ReadableStream }).on('line', line => lines.push(line))
    server.stderr?.setEncoding('utf8').on('data', (text: string) => { stderr += text })
    const listening = await waitFor(() => {
      if (server.exitCode !== null || server.signalCode !== null) throw new Error(`the server in ${host0.name} exited: ${stderr}`)
      return lines.find(line => line.startsWith('listening '))
    }, `the server in ${host0.name} to listen`, 5_000)
    ;[serverPort, loopbackPort] = listening.split(' ').slice(1).map(Number)
  })

  afterAll(async () => {
    await net?.cleanup()
  })

  it('gives every host its own address on one /24, the root namespace .1', () => {
    const subnet = net.bridgeIp.replace(/\.1$/, '')
    expect(net.bridgeIp).toMatch(/^10\.213\.\d+\.1$/)
    expect(net.hosts.map(host => host.ip)).toEqual([`${subnet}.10`, `${subnet}.11`, `${subnet}.12`])
    expect(net.hosts.map(host => host.name)).toEqual([0, 1, 2].map(i => net.link.replace(/br$/, `-${i}`)))
  })

  it('lets one host fetch from another by its address', async () => {
    const [host0, , host2] = net.hosts
    const { stdout } = await host2.exec(process.execPath, ['-e', FETCH, `http://${host0.ip}:${serverPort}/`])
    expect(stdout.trim()).toBe(`hello from ${host0.ip} to ${host2.ip}`)
  })

  it('connects the root namespace and the hosts both ways through the bridge address', async () => {
    const [host0, host1] = net.hosts
    const fromRoot = await http(`http://${host0.ip}:${serverPort}/`, { timeoutMs: 5_000 })
    expect(fromRoot.body.toString('utf8')).toBe(`hello from ${host0.ip} to ${net.bridgeIp}`)

    const rootServer = createServer((req, res) => { res.end(`root saw ${req.socket.remoteAddress}`) })
    rootServer.listen(0, net.bridgeIp)
    await once(rootServer, 'listening')
    try {
      const { port } = rootServer.address() as { port: number }
      const { stdout } = await host1.exec(process.execPath, ['-e', FETCH, `http://${net.bridgeIp}:${port}/`])
      expect(stdout.trim()).toBe(`root saw ${host1.ip}`)
    } finally {
      await new Promise(resolve => rootServer.close(resolve))
    }
  })

  it('gives every host a loopback of its own', async () => {
    const [host0, host1] = net.hosts
    const onHost0 = await host0.exec(process.execPath, ['-e', CONNECT_LOOPBACK, String(loopbackPort)])
    expect(onHost0.stdout.trim()).toBe('connected')
    const onHost1 = await host1.exec(process.execPath, ['-e', CONNECT_LOOPBACK, String(loopbackPort)])
    expect(onHost1.stdout.trim()).toBe('ECONNREFUSED')
  })

  it('returns the real process from spawnIn: no ip process in between, killed by its PID', async () => {
    const pid = server.pid as number
    expect(realpathSync(readlinkSync(`/proc/${pid}/exe`))).toBe(realpathSync(process.execPath))
    // In the host's namespace (the inode /run/netns/<name> is bound to), not in this one.
    expect(readlinkSync(`/proc/${pid}/ns/net`)).toBe(`net:[${statSync(`/run/netns/${net.hosts[0].name}`).ino}]`)
    expect(readlinkSync(`/proc/${pid}/ns/net`)).not.toBe(readlinkSync('/proc/self/ns/net'))

    const exited = once(server, 'exit')
    process.kill(pid, 'SIGTERM')
    expect(await exited).toEqual([null, 'SIGTERM'])
    expect(() => statSync(`/proc/${pid}`)).toThrow(/ENOENT/)
  })

  it('removes only the leftovers of processes that are gone', async () => {
    // Random ids: another run of this file may be doing the same at the same time (and its
    // removeLeftovers may well remove this run's dead group first, which is fine).
    const [deadId, unmarkedId] = [randomBytes(2).toString('hex'), randomBytes(2).toString('hex')]
    // A group "made" by a process that is gone: this PID, but another start time.
    const dead = `hy${deadId}br`
    const deadNamespace = `hy${deadId}-0`
    await run('ip', ['link', 'add', dead, 'type', 'veth', 'peer', 'name', `hy${deadId}up`])
    await run('ip', ['link', 'set', 'dev', dead, 'alias', `hyphae-netns pid=${process.pid} start=0`])
    await run('ip', ['netns', 'add', deadNamespace])
    // The helper's name pattern, but no mark: not the helper's, left alone.
    const unmarked = `hy${unmarkedId}br`
    await run('ip', ['link', 'add', unmarked, 'type', 'veth', 'peer', 'name', `hy${unmarkedId}up`])
    try {
      const removed = await removeLeftovers()
      expect(removed).not.toContain(unmarked)
      expect(removed).not.toContain(net.link)
      const links = await ipLinkNames()
      expect(links).not.toContain(dead)
      expect(await namespaceNames()).not.toContain(deadNamespace)
      expect(links).toContain(unmarked)
      // This process's live group is untouched.
      expect(links).toContain(net.link)
      expect(await namespaceNames()).toEqual(expect.arrayContaining(net.namespaces))
    } finally {
      await run('ip', ['link', 'del', 'dev', unmarked])
      await run('ip', ['netns', 'del', deadNamespace]).catch(() => {})
      await run('ip', ['link', 'del', 'dev', dead]).catch(() => {})
    }
  })

  it('cleans up everything it made, and again without failing', async () => {
    expect(await namespaceNames()).toEqual(expect.arrayContaining(net.namespaces))
    await net.cleanup()
    const left = await namespaceNames()
    for (const name of net.namespaces) expect(left).not.toContain(name)
    expect(await ipLinkNames()).not.toContain(net.link)
    await net.cleanup()
  })
})
