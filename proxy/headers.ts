/**
 * Hop-by-hop headers (RFC 9110 §7.6.1) belong to one connection and are never forwarded;
 * Node's HTTP layer writes its own framing (Transfer-Encoding, Connection, Keep-Alive).
 * Trailer is kept: trailers are forwarded end to end.
 */
const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization',
  'te', 'transfer-encoding', 'upgrade'
])

export const VIA = '1.1 hyphae'

/** Names listed in Connection headers are hop-by-hop too. */
function connectionListed (raw: string[]): Set<string> | undefined {
  let listed: Set<string> | undefined
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i].length === 10 && raw[i].toLowerCase() === 'connection') {
      for (const name of raw[i + 1].split(',')) {
        const trimmed = name.trim().toLowerCase()
        if (trimmed !== '') (listed ??= new Set()).add(trimmed)
      }
    }
  }
  return listed
}

export interface ForwardHeaders {
  /** Appended to X-Forwarded-For (requests only). */
  forwardedFor?: string
  /** Set as X-Forwarded-Prefix (requests only): the app prefix the client proxy removed. */
  forwardedPrefix?: string
  /**
   * The remote peer a request came from (server side). What a peer says about where the
   * request came from is only its word: Forwarded, X-Forwarded-For and X-Real-IP as sent are
   * dropped, and `Forwarded: for="_<peer ID>"` says what this proxy knows.
   */
  peer?: string
  /** Host to add when the request has none (HTTP/1.0 allows that; the app may not). */
  defaultHost?: string
  /**
   * Whether the message goes on chunked, the only framing that carries trailers. Otherwise a
   * Trailer header announces what cannot come (and Node refuses to send the message at all).
   */
  chunked?: boolean
}

/** Set by a peer, these could claim any origin; the server side replaces them. */
const CLAIMS_ORIGIN = new Set(['forwarded', 'x-forwarded-for', 'x-real-ip'])

/**
 * Copies raw headers (names and order byte-exact) without hop-by-hop ones, and adds Via and,
 * for requests, X-Forwarded-For / X-Forwarded-Prefix. Returns Node's flat raw-header array.
 */
export function forwardRawHeaders (raw: string[], extra: ForwardHeaders = {}): string[] {
  const listed = connectionListed(raw)
  const out: string[] = []
  let via: string | undefined
  let forwardedFor: string | undefined
  let hasHost = false
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]
    const lower = name.toLowerCase()
    if (HOP_BY_HOP.has(lower) || listed?.has(lower) === true) continue
    if (extra.peer != null && CLAIMS_ORIGIN.has(lower)) continue
    if (extra.chunked === false && lower === 'trailer') continue
    if (lower === 'host') hasHost = true
    if (lower === 'via') {
      via = via == null ? raw[i + 1] : `${via}, ${raw[i + 1]}`
      continue
    }
    if (extra.forwardedFor != null && lower === 'x-forwarded-for') {
      forwardedFor = forwardedFor == null ? raw[i + 1] : `${forwardedFor}, ${raw[i + 1]}`
      continue
    }
    if (extra.forwardedPrefix != null && lower === 'x-forwarded-prefix') continue
    out.push(name, raw[i + 1])
  }
  if (!hasHost && extra.defaultHost != null) out.unshift('Host', extra.defaultHost)
  out.push('Via', via == null ? VIA : `${via}, ${VIA}`)
  // RFC 7239 §6.3: an obfuscated identifier starts with an underscore (peer IDs are base58).
  if (extra.peer != null) out.push('Forwarded', `for="_${extra.peer}"`)
  if (extra.forwardedFor != null) out.push('X-Forwarded-For', forwardedFor == null ? extra.forwardedFor : `${forwardedFor}, ${extra.forwardedFor}`)
  if (extra.forwardedPrefix != null) out.push('X-Forwarded-Prefix', extra.forwardedPrefix)
  return out
}

/** Raw trailers as the [name, value] pairs that addTrailers takes. */
export function trailerPairs (raw: string[]): Array<[string, string]> {
  const pairs: Array<[string, string]> = []
  for (let i = 0; i < raw.length; i += 2) pairs.push([raw[i], raw[i + 1]])
  return pairs
}

/** Makes sure the head carries the Content-Length its body is framed by. */
export function withContentLength (headers: string[], length: number | string): void {
  for (let i = 0; i < headers.length; i += 2) {
    if (headers[i].length === 14 && headers[i].toLowerCase() === 'content-length') return
  }
  headers.push('Content-Length', String(length))
}
