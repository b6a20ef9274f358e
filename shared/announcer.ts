import type { CID } from 'multiformats/cid'
import type { Logger } from './log.js'
import type { MeshNode } from './node.js'

export interface AnnouncerInit {
  node: MeshNode
  cid: CID
  log: Logger
  /** How often the provider record is put again: well before it expires in the DHT. */
  reprovideMs?: number
}

/** A peer that joins may be among the closest to the CID: provide again after this pause. */
const REJOIN_DEBOUNCE_MS = 300
/** After a failed provide, try again this soon. */
const RETRY_MS = 2000

/**
 * Keeps this node advertised as a provider of one CID: puts the provider record now, again
 * before it expires, and again soon after a peer joins (Kademlia hands stored values to new
 * neighbours; a small mesh would otherwise not find a provider that came up before a peer).
 */
export class Announcer {
  private active = false
  /** Provided at least once since announce() was called. */
  private provided = false
  private timer: NodeJS.Timeout | undefined
  private rejoinTimer: NodeJS.Timeout | undefined
  private readonly reprovideMs: number

  constructor (private readonly init: AnnouncerInit) {
    this.reprovideMs = init.reprovideMs ?? 3 * 60_000
  }

  /** True once the provider record was put since announce(). */
  get announced (): boolean {
    return this.active && this.provided
  }

  /** Whether announce() was called and withdraw() was not. */
  get announcing (): boolean {
    return this.active
  }

  /**
   * Provides the CID and keeps it provided. Resolves once the record was put; if that fails,
   * it throws and keeps retrying in the background.
   */
  async announce (): Promise<void> {
    if (!this.active) {
      this.active = true
      this.provided = false
      this.init.node.addEventListener('peer:identify', this.onPeerJoined)
    }
    await this.provide()
  }

  /** Stops re-providing, so the record ages out of the DHT. */
  async withdraw (): Promise<void> {
    if (!this.active) return
    this.active = false
    clearTimeout(this.timer)
    clearTimeout(this.rejoinTimer)
    this.rejoinTimer = undefined
    this.init.node.removeEventListener('peer:identify', this.onPeerJoined)
    await this.init.node.contentRouting.cancelReprovide(this.init.cid).catch(() => {})
  }

  private async provide (): Promise<void> {
    clearTimeout(this.timer)
    let ok = false
    try {
      await this.init.node.contentRouting.provide(this.init.cid, { signal: AbortSignal.timeout(10_000) })
      ok = true
      if (this.active) this.provided = true
    } finally {
      if (this.active) {
        this.timer = setTimeout(() => { this.reprovide() }, ok ? this.reprovideMs : RETRY_MS)
        this.timer.unref()
      }
    }
  }

  private reprovide (): void {
    if (!this.active) return
    this.provide().catch(err => { this.init.log.debug({ cid: this.init.cid.toString(), err }, 're-provide failed') })
  }

  private readonly onPeerJoined = (): void => {
    if (!this.active || this.rejoinTimer != null) return
    this.rejoinTimer = setTimeout(() => {
      this.rejoinTimer = undefined
      this.reprovide()
    }, REJOIN_DEBOUNCE_MS)
  }
}
