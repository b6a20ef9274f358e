import { readFileSync } from 'node:fs'

/** The parts of a V8 .cpuprofile (node --cpu-prof) that a self-time summary needs. */
interface CpuProfile {
  nodes: Array<{ id: number, callFrame: { functionName: string, url: string, lineNumber: number }, children?: number[] }>
  startTime: number
  endTime: number
  samples: number[]
  timeDeltas: number[]
}

export interface SelfTime {
  name: string
  ms: number
  /** Of all sampled time, idle included. */
  percent: number
  /** Of the busy time (everything but (idle)). */
  busyPercent: number
}

export interface ProfileSummary {
  totalMs: number
  busyMs: number
  functions: SelfTime[]
  modules: SelfTime[]
  layers: SelfTime[]
}

const SOCKET_WRITES = new Set(['writeBuffer', 'writev', 'writeLatin1String', 'writeUtf8String', 'writeAsciiString', 'writeUcs2String'])

/** A coarse layer for a module: where in the stack the time goes. */
export function layerOf (mod: string, functionName: string): string {
  if (SOCKET_WRITES.has(functionName) && mod === '(native)') return 'socket writes (native: syscall, and waiting for the CPU after waking the reader)'
  if (mod === '(idle)') return '(idle)'
  if (mod === '(garbage collector)') return 'garbage collector'
  if (mod === '(program)') return '(program): native, outside JS'
  if (mod === '(native)') return 'other native functions'
  if (mod.startsWith('node:_http_')) return 'Node http (server, client, agent, parser)'
  if (mod === 'node:internal/crypto') return 'Node crypto (ChaCha20-Poly1305 for noise)'
  if (mod === 'node:internal/modules') return 'module loading (start-up)'
  if (mod.startsWith('node:')) return 'Node streams, events, net, buffers, timers'
  if (mod === '@chainsafe/libp2p-noise' || mod === '@chainsafe/as-chacha20poly1305' || mod.startsWith('wasm://') || mod.startsWith('@noble/')) return 'libp2p noise (framing, JS/wasm crypto)'
  if (mod === '@chainsafe/libp2p-yamux') return 'libp2p yamux'
  if (mod.startsWith('@libp2p/') || mod === 'libp2p' || mod === 'uint8arraylist' || mod.startsWith('it-') || mod === 'uint8arrays' || mod === 'multiformats' || mod.startsWith('@multiformats/') || mod === 'main-event' || mod === 'p-queue' || mod === 'race-signal') return 'libp2p other (stream utils, uint8arraylist, connection)'
  if (mod.startsWith('hyphae ')) return 'hyphae code'
  return 'other packages'
}

/** The package (or Node core area, or project file) a script URL belongs to. */
export function moduleOf (url: string, functionName: string): string {
  if (url === '') return functionName.startsWith('(') ? functionName : '(native)'
  if (url.startsWith('node:')) {
    const parts = url.split('/')
    return parts.length > 2 ? `${parts[0]}/${parts[1]}` : url
  }
  const path = url.replace(/^file:\/\//, '')
  const nm = path.lastIndexOf('/node_modules/')
  if (nm !== -1) {
    const rest = path.slice(nm + '/node_modules/'.length).split('/')
    return rest[0].startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]
  }
  const dist = path.indexOf('/dist/')
  return dist !== -1 ? `hyphae ${path.slice(dist + 1)}` : path
}

/** Self time by function and by module, largest first. */
export function summarizeProfile (file: string, top = 20): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile
  const byId = new Map(profile.nodes.map(n => [n.id, n]))
  const selfUs = new Map<number, number>()
  // timeDeltas[i] is the time before sample i; the time after it is timeDeltas[i + 1].
  for (let i = 0; i < profile.samples.length; i++) {
    const dt = profile.timeDeltas[i + 1] ?? 0
    selfUs.set(profile.samples[i], (selfUs.get(profile.samples[i]) ?? 0) + dt)
  }
  const functions = new Map<string, number>()
  const modules = new Map<string, number>()
  const layers = new Map<string, number>()
  let total = 0
  let idle = 0
  for (const [id, us] of selfUs) {
    const node = byId.get(id)
    if (node == null) continue
    const { functionName, url, lineNumber } = node.callFrame
    total += us
    if (functionName === '(idle)') idle += us
    const mod = moduleOf(url, functionName)
    const fn = url === '' ? (functionName === '' ? '(anonymous)' : functionName) : `${functionName === '' ? '(anonymous)' : functionName} ${mod}:${lineNumber + 1}`
    functions.set(fn, (functions.get(fn) ?? 0) + us)
    modules.set(mod, (modules.get(mod) ?? 0) + us)
    const layer = layerOf(mod, functionName)
    layers.set(layer, (layers.get(layer) ?? 0) + us)
  }
  const busy = total - idle
  const list = (map: Map<string, number>): SelfTime[] => [...map.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(([name, us]) => ({
      name,
      ms: Math.round(us / 100) / 10,
      percent: Math.round(us / total * 1000) / 10,
      busyPercent: name === '(idle)' ? 0 : Math.round(us / busy * 1000) / 10
    }))
  return { totalMs: Math.round(total / 1000), busyMs: Math.round(busy / 1000), functions: list(functions), modules: list(modules), layers: list(layers) }
}

export function formatSummary (title: string, s: ProfileSummary): string {
  const block = (heading: string, items: SelfTime[]): string[] => [
    `  ${heading}`,
    `    ${'self ms'.padStart(9)} ${'% busy'.padStart(7)}  name`,
    ...items.map(i => `    ${i.ms.toFixed(1).padStart(9)} ${i.busyPercent.toFixed(1).padStart(7)}  ${i.name}`)
  ]
  return [
    `${title}: ${s.totalMs} ms sampled, ${s.busyMs} ms busy (not idle); (program) is native work outside JS (libuv, syscalls)`,
    ...block('self time by layer', s.layers.filter(l => l.name !== '(idle)')),
    ...block('self time by module', s.modules),
    ...block('self time by function', s.functions)
  ].join('\n')
}
