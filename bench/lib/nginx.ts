import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { freePort, type Child, type ProcessSet } from './procs.js'

export const NGINX_BIN = '/usr/sbin/nginx'
export const OPENSSL_BIN = '/usr/bin/openssl'

export function nginxAvailable (): boolean {
  return existsSync(NGINX_BIN)
}

export function opensslAvailable (): boolean {
  return existsSync(OPENSSL_BIN)
}

/** PEM files of a certificate and its key. */
export interface Certificate {
  cert: string
  key: string
}

/**
 * A self-signed certificate for 127.0.0.1, valid a day, written into dir. P-256: the key most
 * TLS deployments use, so the hops' handshakes cost what they would elsewhere.
 */
export function selfSignedCertificate (dir: string): Certificate {
  mkdirSync(dir, { recursive: true })
  const cert = join(dir, 'cert.pem')
  const key = join(dir, 'key.pem')
  const run = spawnSync(OPENSSL_BIN, [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
    '-subj', '/CN=127.0.0.1', '-keyout', key, '-out', cert
  ], { encoding: 'utf8', timeout: 20_000 })
  if (run.status !== 0) throw new Error(`openssl req failed (${run.error?.message ?? `exit ${String(run.status)}`}): ${run.stderr}`)
  return { cert, key }
}

export interface NginxOptions {
  /** Listen with TLS, with this certificate. */
  tls?: Certificate
  /**
   * Proxy to the upstream over TLS. Its certificate is not verified (it is self-signed, and a
   * check would cost once per pooled connection, not per request).
   */
  upstreamTls?: boolean
}

/**
 * The configuration of one plain reverse proxy: one worker (like one Node proxy process),
 * keep-alive both to clients and to its upstream, no access log, no disk buffering; TLS on
 * either side when asked, with TLS sessions resumed on new upstream connections.
 */
export function nginxConfig (dir: string, listenPort: number, upstreamPort: number, opts: NginxOptions = {}): string {
  // As root the master would hand the worker to `nobody`, who cannot use our temp dir.
  const user = process.getuid?.() === 0 ? 'user root root;\n' : ''
  const listen = opts.tls == null
    ? `listen 127.0.0.1:${listenPort};`
    : `listen 127.0.0.1:${listenPort} ssl;
    ssl_certificate ${opts.tls.cert};
    ssl_certificate_key ${opts.tls.key};`
  const upstream = opts.upstreamTls === true
    ? `proxy_pass https://next_hop;
      proxy_ssl_session_reuse on;`
    : 'proxy_pass http://next_hop;'
  return `${user}worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 60s;
  upstream next_hop {
    server 127.0.0.1:${upstreamPort};
    keepalive 64;
    keepalive_requests 10000000;
    keepalive_timeout 60s;
  }
  server {
    ${listen}
    location / {
      ${upstream}
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`
}

/** Starts one nginx (master + one worker) in front of 127.0.0.1:upstreamPort; resolves once it listens. */
export async function startNginx (procs: ProcessSet, tmp: string, name: string, upstreamPort: number, opts: NginxOptions = {}): Promise<Child & { port: number }> {
  const dir = join(tmp, name)
  mkdirSync(dir, { recursive: true })
  const port = await freePort()
  const conf = join(dir, 'nginx.conf')
  writeFileSync(conf, nginxConfig(dir, port, upstreamPort, opts))
  const child = await procs.start({
    name,
    command: NGINX_BIN,
    args: ['-p', dir, '-c', conf, '-e', join(dir, 'error.log'), '-g', 'daemon off;'],
    readyPort: port,
    timeoutMs: 10_000
  })
  return Object.assign(child, { port })
}
