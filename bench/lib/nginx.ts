import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { freePort, type Child, type ProcessSet } from './procs.js'

export const NGINX_BIN = '/usr/sbin/nginx'

export function nginxAvailable (): boolean {
  return existsSync(NGINX_BIN)
}

/**
 * The configuration of one plain reverse proxy: one worker (like one Node proxy process),
 * keep-alive both to clients and to its upstream, no access log, no disk buffering.
 */
export function nginxConfig (dir: string, listenPort: number, upstreamPort: number): string {
  // As root the master would hand the worker to `nobody`, who cannot use our temp dir.
  const user = process.getuid?.() === 0 ? 'user root root;\n' : ''
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
    listen 127.0.0.1:${listenPort};
    location / {
      proxy_pass http://next_hop;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`
}

/** Starts one nginx (master + one worker) in front of 127.0.0.1:upstreamPort; resolves once it listens. */
export async function startNginx (procs: ProcessSet, tmp: string, name: string, upstreamPort: number): Promise<Child & { port: number }> {
  const dir = join(tmp, name)
  mkdirSync(dir, { recursive: true })
  const port = await freePort()
  const conf = join(dir, 'nginx.conf')
  writeFileSync(conf, nginxConfig(dir, port, upstreamPort))
  const child = await procs.start({
    name,
    command: NGINX_BIN,
    args: ['-p', dir, '-c', conf, '-e', join(dir, 'error.log'), '-g', 'daemon off;'],
    readyPort: port,
    timeoutMs: 10_000
  })
  return Object.assign(child, { port })
}
