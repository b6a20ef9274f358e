/**
 * `/http/1.1`: HTTP/1.1 over libp2p streams (DESIGN.md). Client proxies keep streams open for
 * further requests; these are the numbers both ends must agree on.
 */
export const HTTP_PROTOCOL = '/http/1.1'

/** Streams one connection may carry at once, either way. */
export const MAX_HTTP_STREAMS = 4096

/**
 * How long a pooled stream may sit idle on the client side. Below the server side's
 * keep-alive timeout, so the client always gives a stream up before the server closes it
 * under a request.
 */
export const POOLED_STREAM_IDLE_MS = 30_000
export const SERVER_KEEP_ALIVE_MS = 35_000
