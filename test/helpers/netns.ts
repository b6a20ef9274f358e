import { execFile, execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { promisify } from 'node:util'

/**
 * Several "hosts" on one machine, for tests that need real, separate network stacks: each host
 * is a Linux network namespace with an `eth0` on a shared layer-2 segment, and a loopback of its
 * own (each host's 127.0.0.1 is its own). Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and
 * iproute2's `ip`; without them `createHosts` fails with one line saying what failed and why.
 *
 * Layout of one `createHosts` call, `<id>` four random hex digits:
 *
 *   root namespace:   hy<id>br  10.213.X.1/24  (veth; its peer hy<id>up is a port of br0 below)
 *   netns hy<id>-sw:  br0 (bridge), ports hy<id>up and p0, p1, …
 *   netns hy<id>-<i>: eth0 10.213.X.(10+i)/24 (veth, peer p<i>), lo up, default via 10.213.X.1
 *
 * The bridge lives in a namespace of its own ("sw", the switch) rather than in the root
 * namespace: with br_netfilter loaded and net.bridge.bridge-nf-call-iptables=1 (Docker sets
 * both), frames bridged in the root namespace go through the root's iptables FORWARD chain,
 * whose policy Docker sets to DROP, so hosts could reach 10.213.X.1 but not each other. In a
 * namespace of its own the bridge sees an empty ruleset, and this helper never touches the
 * machine's firewall. For the caller the result is the same: hosts reach each other and the
 * root namespace at `bridgeIp`, and the root namespace reaches every host's `ip`.
 *
 * Leftovers: the root-side link carries an alias naming the process that made it
 * (`hyphae-netns pid=<pid> start=<start time>`), set before any namespace exists. Once that
 * process is gone, `removeLeftovers` (which `createHosts` calls first) deletes the link and the
 * namespaces `hy<id>-sw` and `hy<id>-<n>` of that id, and nothing else: not a name without that
 * alias, not the groups of a live process (another test file running at the same time).
 */

export interface NetnsHost {
  /** The network namespace's name, as `ip netns list` shows it: `hy<id>-<index>`. */
  name: string
  /** The host's address on the shared segment (its `eth0`), e.g. 10.213.7.11. */
  ip: string
  /** Runs `command args…` inside the namespace to its end; rejects on a non-zero exit or after `timeoutMs` (default 10 s, then SIGKILL). */
  exec: (command: string, args: string[], opts?: { timeoutMs?: number }) => Promise<{ stdout: string, stderr: string }>
}

export interface NetnsHosts {
  hosts: NetnsHost[]
  /** The root namespace's address on the segment (.1): the hosts' default gateway. */
  bridgeIp: string
  /** The root-side interface that holds `bridgeIp` (`hy<id>br`). */
  link: string
  /** Every namespace this call created: the hosts' and the switch's (`hy<id>-sw`). */
  namespaces: string[]
  /**
   * SIGKILLs the processes `spawnIn` started in these hosts that still run (nothing else), then
   * deletes the namespaces (which deletes the bridge and the veths) and the root-side link.
   * Idempotent; later calls resolve once the first one is done.
   */
  cleanup: () => Promise<void>
}

/** What one `createHosts` call made and still owns, for `cleanup` and the exit hook. */
interface Group {
  link: string
  namespaces: string[]
  /** Processes `spawnIn` started in this group's hosts. */
  children: Set<ChildProcess>
}

const run = promisify(execFile)

const MAX_HOSTS = 244
const IP_TIMEOUT_MS = 10_000
const EXEC_TIMEOUT_MS = 10_000
const KILL_WAIT_MS = 5_000
/** 10.213.X.0/24, X from 1 to 254. */
const SUBNET_BASE = [10, 213] as const
const ATTEMPTS = 5

const LINK_NAME = /^hy([0-9a-f]{4})br$/
const NAMESPACE_NAME = /^hy([0-9a-f]{4})-(?:sw|\d+)$/
const ALIAS = /^hyphae-netns pid=(\d+) start=(\d+)$/

/** The groups of this process not yet cleaned up: the exit hook removes them. */
const live = new Set<Group>()
/** Which group a host (by namespace name) belongs to, for `spawnIn`. */
const groupOfHost = new Map<string, Group>()

/**
 * Creates `count` hosts (namespaces `hy<id>-0` …) on a fresh /24 from 10.213.X.0/24 that no
 * address or route of this machine overlaps. Removes leftovers of earlier, crashed runs first.
 * Throws an Error of one line naming the step that failed, after undoing what it had made.
 */
export async function createHosts (count: number): Promise<NetnsHosts> {
  if (!Number.isInteger(count) || count < 1 || count > MAX_HOSTS) {
    throw new Error(`netns: createHosts needs a host count from 1 to ${MAX_HOSTS}, got ${count}`)
  }
  await removeLeftovers()

  const group = await createLink()
  live.add(group)
  if (live.size === 1) process.once('exit', cleanupAtExit)
  const cleanup = cleanupOnce(group)
  try {
    const id = (LINK_NAME.exec(group.link) as RegExpExecArray)[1]
    const sw = `hy${id}-sw`
    const up = `hy${id}up`
    group.namespaces.push(sw)
    await ip(['netns', 'add', sw], 'creating the switch namespace')
    await ip(['link', 'set', 'dev', up, 'netns', sw], 'moving the bridge uplink into the switch namespace')
    await ip(['-n', sw, 'link', 'add', 'br0', 'type', 'bridge'], 'creating the bridge')
    await ip(['-n', sw, 'link', 'set', 'dev', 'br0', 'up'], 'bringing the bridge up')
    await ip(['-n', sw, 'link', 'set', 'dev', up, 'master', 'br0', 'up'], 'attaching the uplink to the bridge')
    await ip(['link', 'set', 'dev', group.link, 'up'], 'bringing the root-side link up')
    const subnet = await assignSubnet(group.link)
    const bridgeIp = `${subnet}.1`

    const hosts: NetnsHost[] = []
    for (let i = 0; i < count; i++) {
      const name = `hy${id}-${i}`
      const hostIp = `${subnet}.${10 + i}`
      group.namespaces.push(name)
      await ip(['netns', 'add', name], `creating namespace ${name}`)
      await ip(['-n', sw, 'link', 'add', `p${i}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', name], `creating the veth pair of ${name}`)
      await ip(['-n', sw, 'link', 'set', 'dev', `p${i}`, 'master', 'br0', 'up'], `attaching ${name} to the bridge`)
      await ip(['-n', name, 'addr', 'add', `${hostIp}/24`, 'dev', 'eth0'], `giving ${name} its address`)
      await ip(['-n', name, 'link', 'set', 'dev', 'eth0', 'up'], `bringing up eth0 of ${name}`)
      await ip(['-n', name, 'link', 'set', 'dev', 'lo', 'up'], `bringing up lo of ${name}`)
      await ip(['-n', name, 'route', 'add', 'default', 'via', bridgeIp], `giving ${name} its default route`)
      groupOfHost.set(name, group)
      hosts.push({ name, ip: hostIp, exec: async (command, args, opts) => await execIn(name, command, args, opts?.timeoutMs) })
    }
    return { hosts, bridgeIp, link: group.link, namespaces: [...group.namespaces], cleanup }
  } catch (err) {
    await cleanup().catch(() => {})
    throw err
  }
}

/**
 * Spawns `command args…` inside the host's namespace, as `ip netns exec <name> command args…`.
 * `ip netns exec` enters the namespace and then execs the command in its own process (it forks
 * nothing), so the returned child's PID is the command's own: signalling `child.pid` (or its
 * process group, with `detached: true`) reaches the real process, and no `ip` process stays
 * around. `command` is looked up on PATH; pass `process.execPath` for this Node. Whatever still
 * runs at `cleanup` is SIGKILLed then.
 */
export function spawnIn (host: NetnsHost, command: string, args: string[], options: SpawnOptions = {}): ChildProcess {
  const group = groupOfHost.get(host.name)
  if (group === undefined) throw new Error(`netns: ${host.name} is not a host of a live createHosts call`)
  const child = spawn('ip', ['netns', 'exec', host.name, command, ...args], options)
  group.children.add(child)
  child.once('exit', () => { group.children.delete(child) })
  child.once('error', () => { group.children.delete(child) })
  return child
}

/**
 * Deletes what crashed earlier runs left: every root-namespace link named `hy<id>br` whose alias
 * names a process that is gone (or whose PID now belongs to a younger process), and the
 * namespaces `hy<id>-sw` and `hy<id>-<n>` of that id. Resolves with the names it deleted.
 */
export async function removeLeftovers (): Promise<string[]> {
  const links = JSON.parse(await ip(['-j', 'link', 'show'], 'listing links') || '[]') as Array<{ ifname: string, ifalias?: string }>
  const deadIds = new Set<string>()
  for (const { ifname, ifalias } of links) {
    const id = LINK_NAME.exec(ifname)?.[1]
    const owner = ALIAS.exec(ifalias ?? '')
    if (id === undefined || owner === null) continue
    if (!isRunning(Number(owner[1]), owner[2])) deadIds.add(id)
  }
  if (deadIds.size === 0) return []
  const removed: string[] = []
  for (const name of await namespaceNames()) {
    const id = NAMESPACE_NAME.exec(name)?.[1]
    if (id !== undefined && deadIds.has(id) && await deleteIfThere(['netns', 'del', name], `deleting leftover namespace ${name}`)) removed.push(name)
  }
  for (const id of deadIds) {
    if (await deleteIfThere(['link', 'del', 'dev', `hy${id}br`], `deleting leftover link hy${id}br`)) removed.push(`hy${id}br`)
  }
  return removed
}

/** The names `ip netns list` shows. */
export async function namespaceNames (): Promise<string[]> {
  const listed = JSON.parse(await ip(['-j', 'netns', 'list'], 'listing network namespaces') || '[]') as Array<{ name: string }>
  return listed.map(ns => ns.name)
}

/** Creates the root-side veth pair `hy<id>br`/`hy<id>up` with a fresh id, marked as this process's. */
async function createLink (): Promise<Group> {
  for (let attempt = 1; ; attempt++) {
    const id = randomBytes(2).toString('hex')
    const link = `hy${id}br`
    try {
      await ip(['link', 'add', link, 'type', 'veth', 'peer', 'name', `hy${id}up`], `creating link ${link}`)
    } catch (err) {
      // Another run's id, by chance: draw again.
      if (attempt < ATTEMPTS && /File exists/.test((err as Error).message)) continue
      throw err
    }
    const group: Group = { link, namespaces: [], children: new Set() }
    try {
      await ip(['link', 'set', 'dev', link, 'alias', `hyphae-netns pid=${process.pid} start=${startTime(process.pid)}`], `marking link ${link} as this process's`)
    } catch (err) {
      await deleteIfThere(['link', 'del', 'dev', link], `deleting link ${link}`).catch(() => {})
      throw err
    }
    return group
  }
}

/**
 * Gives `link` the address .1 of a 10.213.X.0/24 no address or route of this machine overlaps,
 * and resolves with `10.213.X`. Two runs may pick the same X at once: each checks after adding
 * its address that no other interface has one in that /24, and the later one draws again.
 */
async function assignSubnet (link: string): Promise<string> {
  const tried = new Set<number>()
  for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
    const taken = await takenPrefixes(link)
    const free: number[] = []
    for (let x = 1; x <= 254; x++) {
      if (!tried.has(x) && !taken.some(prefix => overlaps(prefix, subnetPrefix(x)))) free.push(x)
    }
    if (free.length === 0) break
    const x = free[randomBytes(1)[0] % free.length]
    tried.add(x)
    const subnet = `${SUBNET_BASE.join('.')}.${x}`
    await ip(['addr', 'add', `${subnet}.1/24`, 'dev', link], `giving ${link} the address ${subnet}.1/24`)
    if (!(await takenPrefixes(link)).some(prefix => overlaps(prefix, subnetPrefix(x)))) return subnet
    await deleteIfThere(['addr', 'del', `${subnet}.1/24`, 'dev', link], `taking ${subnet}.1/24 off ${link} again`)
  }
  throw new Error(`netns: no free /24 in ${SUBNET_BASE.join('.')}.0.0/16: every one overlaps an address or route of this machine (ip -4 addr, ip -4 route show table all)`)
}

type Prefix = [address: number, length: number]

/** The IPv4 prefixes of every address and route of the root namespace, except `link`'s and default routes. */
async function takenPrefixes (link: string): Promise<Prefix[]> {
  const addrs = JSON.parse(await ip(['-j', '-4', 'addr', 'show'], 'listing addresses') || '[]') as Array<{ ifname: string, addr_info?: Array<{ local?: string, prefixlen?: number }> }>
  const routes = JSON.parse(await ip(['-j', '-4', 'route', 'show', 'table', 'all'], 'listing routes') || '[]') as Array<{ dst?: string, dev?: string }>
  const prefixes: Prefix[] = []
  for (const { ifname, addr_info: infos = [] } of addrs) {
    if (ifname === link) continue
    for (const { local, prefixlen } of infos) {
      const address = local === undefined ? undefined : parseIpv4(local)
      if (address !== undefined) prefixes.push([address, prefixlen ?? 32])
    }
  }
  for (const { dst, dev } of routes) {
    if (dst === undefined || dst === 'default' || dev === link) continue
    const [text, length] = dst.split('/')
    const address = parseIpv4(text)
    if (address !== undefined) prefixes.push([address, length === undefined ? 32 : Number(length)])
  }
  return prefixes
}

function subnetPrefix (x: number): Prefix {
  return [((SUBNET_BASE[0] << 24) | (SUBNET_BASE[1] << 16) | (x << 8)) >>> 0, 24]
}

/** Whether two prefixes share an address: they agree on the bits of the shorter one. */
function overlaps ([a, aLength]: Prefix, [b, bLength]: Prefix): boolean {
  const length = Math.min(aLength, bLength)
  if (length === 0) return true
  const mask = (~0 << (32 - length)) >>> 0
  return ((a & mask) >>> 0) === ((b & mask) >>> 0)
}

function parseIpv4 (text: string): number | undefined {
  const parts = text.split('.').map(Number)
  if (parts.length !== 4 || parts.some(part => !Number.isInteger(part) || part < 0 || part > 255)) return undefined
  return ((parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]) >>> 0
}

async function execIn (name: string, command: string, args: string[], timeoutMs = EXEC_TIMEOUT_MS): Promise<{ stdout: string, stderr: string }> {
  try {
    return await run('ip', ['netns', 'exec', name, command, ...args], { encoding: 'utf8', timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 16 * 1024 * 1024 })
  } catch (err) {
    const failed = err as Error & { stdout?: string, stderr?: string, killed?: boolean }
    const why = failed.killed === true ? `still running after ${timeoutMs} ms` : reason(err)
    throw new Error(`netns: ${command} ${args.join(' ')} in ${name}: ${why}\n--- stderr ---\n${failed.stderr ?? ''}\n--- stdout ---\n${failed.stdout ?? ''}`, { cause: err })
  }
}

/** Runs `ip args…` and resolves with its stdout; rejects with one line naming `what` failed and why. */
async function ip (args: string[], what: string): Promise<string> {
  try {
    return (await run('ip', args, { encoding: 'utf8', timeout: IP_TIMEOUT_MS, killSignal: 'SIGKILL' })).stdout
  } catch (err) {
    throw new Error(`netns: ${what} failed (ip ${args.join(' ')}): ${reason(err)}`, { cause: err })
  }
}

/** Like `ip`, for deletions: resolves false when there was nothing to delete. */
async function deleteIfThere (args: string[], what: string): Promise<boolean> {
  try {
    await ip(args, what)
    return true
  } catch (err) {
    if (/Cannot find device|No such file or directory|Cannot assign requested address/.test((err as Error).message)) return false
    throw err
  }
}

/** Why a command failed, as one line, with what to do about the usual causes. */
function reason (err: unknown): string {
  const failed = err as NodeJS.ErrnoException & { stderr?: string, killed?: boolean }
  if (failed.code === 'ENOENT') return '`ip` is not on PATH (install iproute2)'
  if (failed.killed === true) return `no answer within ${IP_TIMEOUT_MS} ms`
  const said = (failed.stderr ?? '').split('\n').map(line => line.trim()).filter(line => line !== '').join('; ')
  const line = said !== '' ? said : failed.message.split('\n')[0]
  return /Operation not permitted|Permission denied/.test(line)
    ? `${line} (network namespaces need root: CAP_NET_ADMIN and CAP_SYS_ADMIN)`
    : line
}

/** The process's start time (clock ticks after boot, field 22 of /proc/<pid>/stat), or undefined if it is gone. */
function startTime (pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // Fields after the command name, which may hold spaces and parentheses: state is field 3.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[22 - 3]
  } catch {
    return undefined
  }
}

/** Whether `pid` is still the process that started at `start` (a reused PID is not). */
function isRunning (pid: number, start: string): boolean {
  return startTime(pid) === start
}

function cleanupOnce (group: Group): () => Promise<void> {
  let cleaning: Promise<void> | undefined
  return async () => {
    cleaning ??= removeGroup(group).catch((err: unknown) => {
      // Failed: a later call tries again.
      cleaning = undefined
      throw err
    })
    await cleaning
  }
}

async function removeGroup (group: Group): Promise<void> {
  await Promise.all([...group.children].map(async child => await killChild(child)))
  // Hosts first, the switch next and the marked link last: a crash part-way leaves the mark
  // with the rest, for removeLeftovers. Deleting the switch deletes every veth (and the bridge),
  // the link included, but the kernel does that asynchronously: the link is deleted explicitly.
  for (const name of [...group.namespaces].reverse()) {
    await deleteIfThere(['netns', 'del', name], `deleting namespace ${name}`)
    groupOfHost.delete(name)
  }
  await deleteIfThere(['link', 'del', 'dev', group.link], `deleting link ${group.link}`)
  live.delete(group)
  if (live.size === 0) process.off('exit', cleanupAtExit)
}

/** SIGKILLs a child `spawnIn` started, if it still runs, and resolves once it exited. */
async function killChild (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  let timer: NodeJS.Timeout | undefined
  const exited = new Promise<void>(resolve => {
    child.once('exit', () => { resolve() })
    timer = setTimeout(resolve, KILL_WAIT_MS)
  })
  child.kill('SIGKILL')
  await exited
  clearTimeout(timer)
}

/** Last resort when the test process exits with groups left: the same, synchronously. */
function cleanupAtExit (): void {
  for (const group of live) {
    for (const child of group.children) {
      try { child.kill('SIGKILL') } catch { /* gone meanwhile */ }
    }
    for (const args of [...group.namespaces].reverse().map(name => ['netns', 'del', name]).concat([['link', 'del', 'dev', group.link]])) {
      try { execFileSync('ip', args, { stdio: 'ignore', timeout: IP_TIMEOUT_MS }) } catch { /* gone already, or left for removeLeftovers */ }
    }
  }
}
