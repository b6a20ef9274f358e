import { createHash } from 'node:crypto'

/**
 * The page `hyphae dashboard` serves: one self-contained document, no external resource, no
 * build step. Its script follows the surveys on /events (the latest at once, then each new
 * one), and draws the tables with textContent only: every name in a survey comes from
 * a peer, and none of it may become markup.
 */

const STYLE = `
:root { color-scheme: light; --fg: #1f2328; --muted: #656d76; --line: #d0d7de; --head: #f6f8fa; --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; font: 13px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: #fff; }
header { display: flex; align-items: baseline; gap: 16px; padding: 10px 20px; border-bottom: 1px solid var(--line); background: var(--head); position: sticky; top: 0; }
header h1 { margin: 0; font-size: 17px; }
header .meta { color: var(--muted); }
header .meta b { color: var(--fg); }
#connection { margin-left: auto; padding: 1px 8px; border-radius: 10px; font-size: 12px; background: #eaeef2; }
#connection.live { background: #dafbe1; color: var(--ok); }
#connection.reconnecting, #connection.closed { background: #ffebe9; color: var(--bad); }
main { padding: 4px 20px 20px; display: grid; grid-template-columns: minmax(0, 3fr) minmax(260px, 1fr); gap: 0 24px; }
main > section { min-width: 0; }
#services-section, #instances-section, #nodes-section, #caches-section { grid-column: 1; }
#events-section { grid-column: 2; grid-row: 1 / span 4; }
h2 { font-size: 14px; margin: 16px 0 6px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { background: var(--head); font-weight: 600; color: var(--muted); font-size: 12px; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.none { color: var(--muted); font-style: italic; }
.badge { padding: 0 6px; border-radius: 8px; background: #eaeef2; }
.state-healthy, .state-advertised { background: #dafbe1; color: var(--ok); }
.state-starting, .state-relaunching { background: #fff8c5; color: var(--warn); }
.state-unhealthy, .state-failed { background: #ffebe9; color: var(--bad); }
svg.spark { display: block; }
svg.spark polyline { fill: none; stroke: var(--accent); stroke-width: 1.5; }
svg.spark circle { fill: var(--accent); }
svg.spark line { stroke: var(--line); stroke-width: 1; }
#notice { margin: 10px 20px 0; padding: 6px 10px; border: 1px solid #d4a72c; background: #fff8c5; border-radius: 6px; }
#notice ul { margin: 4px 0 0; padding-left: 18px; }
#events { list-style: none; margin: 0; padding: 0; }
#events li { padding: 3px 0; border-bottom: 1px solid var(--line); }
#events .time { color: var(--muted); font-variant-numeric: tabular-nums; margin-right: 6px; }
#events .kind { font-weight: 600; margin-right: 6px; }
#events li[data-kind="started"] .kind { color: var(--ok); }
#events li[data-kind="stopped"] .kind { color: var(--bad); }
#events .detail { color: var(--muted); }
.peer { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
`

// String.raw: the script's own escapes (\u2026) reach the browser as written.
const SCRIPT = String.raw`
'use strict'
var HISTORY_POINTS = 60
var MAX_HISTORIES = 500
var MAX_UNANSWERED_SHOWN = 10
var RECONNECT_MS = 10000
// ?surveys=N: the first N surveys only, then the stream is closed, so that a headless
// browser sees the page settle (an open stream keeps it loading for ever).
var params = new URLSearchParams(location.search)
var SURVEYS = params.has('surveys') ? Math.max(1, Number(params.get('surveys')) || 1) : Infinity
var received = 0
var SVG = 'http://www.w3.org/2000/svg'
var rpsHistory = new Map()
var shownAt = 0

function num (v) { return typeof v === 'number' && isFinite(v) ? v : null }
function text (v) { return v == null ? '-' : String(v) }
function ms (v) { v = num(v); return v == null ? '-' : v < 10 ? v.toFixed(1) + 'ms' : Math.round(v) + 'ms' }
function rate (ok, failed) { ok = num(ok) || 0; failed = num(failed) || 0; return ok + failed === 0 ? '-' : (100 * ok / (ok + failed)).toFixed(2) + '%' }
function pad (n) { return String(n).padStart(2, '0') }
function duration (s) {
  s = num(s); if (s == null) return '-'
  if (s < 60) return Math.round(s) + 's'
  if (s < 3600) return Math.floor(s / 60) + 'm' + pad(Math.round(s % 60)) + 's'
  if (s < 86400) return Math.floor(s / 3600) + 'h' + pad(Math.floor(s % 3600 / 60)) + 'm'
  return Math.floor(s / 86400) + 'd' + Math.floor(s % 86400 / 3600) + 'h'
}
function shortPeer (p) { return p == null ? '-' : '\u2026' + String(p).slice(-8) }
function clock (at) { return new Date(num(at) || 0).toLocaleTimeString() }
function list (v) { return Array.isArray(v) ? v : [] }

function cell (cls, content, title) {
  var td = document.createElement('td')
  td.className = cls
  if (content instanceof Node) td.appendChild(content)
  else td.textContent = text(content)
  if (title != null) td.title = String(title)
  return td
}
function row (data, cells) {
  var tr = document.createElement('tr')
  Object.keys(data).forEach(function (k) { tr.dataset[k] = String(data[k]) })
  cells.forEach(function (td) { tr.appendChild(td) })
  return tr
}
function fill (id, rows, columns) {
  if (rows.length === 0) {
    var td = cell('none', 'none')
    td.colSpan = columns
    rows = [row({}, [td])]
  }
  var tbody = document.querySelector('#' + id + ' tbody')
  tbody.replaceChildren.apply(tbody, rows)
}
function badge (state) {
  var span = document.createElement('span')
  span.className = 'badge state-' + String(state).replace(/[^a-z]/g, '')
  span.textContent = text(state)
  return span
}

function sparkline (values) {
  var w = 120, h = 22
  var svg = document.createElementNS(SVG, 'svg')
  svg.setAttribute('class', 'spark')
  svg.setAttribute('width', w)
  svg.setAttribute('height', h)
  svg.setAttribute('viewBox', '0 0 ' + w + ' ' + h)
  var base = document.createElementNS(SVG, 'line')
  base.setAttribute('x1', 0); base.setAttribute('x2', w); base.setAttribute('y1', h - 1); base.setAttribute('y2', h - 1)
  svg.appendChild(base)
  // At least 1 rps full scale, so that a trickle does not look like a flood.
  var max = Math.max(1, Math.max.apply(null, values))
  var step = (w - 6) / (HISTORY_POINTS - 1)
  var points = values.map(function (v, i) {
    return [(w - 3 - (values.length - 1 - i) * step).toFixed(1), (h - 2 - v / max * (h - 4)).toFixed(1)]
  })
  var line = document.createElementNS(SVG, 'polyline')
  line.setAttribute('points', points.map(function (p) { return p.join(',') }).join(' '))
  svg.appendChild(line)
  // The latest value as a dot: the only mark while there is one point to draw.
  if (points.length > 0) {
    var dot = document.createElementNS(SVG, 'circle')
    dot.setAttribute('cx', points[points.length - 1][0])
    dot.setAttribute('cy', points[points.length - 1][1])
    dot.setAttribute('r', 2)
    svg.appendChild(dot)
  }
  var title = document.createElementNS(SVG, 'title')
  title.textContent = 'rps over the last ' + values.length + ' surveys, up to ' + max
  svg.appendChild(title)
  return svg
}

function recordRps (services) {
  var seen = new Set()
  services.forEach(function (s) {
    var name = String(s.service)
    if (!rpsHistory.has(name) && rpsHistory.size >= MAX_HISTORIES) return
    var points = rpsHistory.get(name) || []
    points.push(num(s.rps) || 0)
    if (points.length > HISTORY_POINTS) points.shift()
    rpsHistory.set(name, points)
    seen.add(name)
  })
  rpsHistory.forEach(function (_, name) { if (!seen.has(name)) rpsHistory.delete(name) })
}

function placed (survey) {
  var out = []
  list(survey.nodes).forEach(function (n) {
    if (n.role === 'proxy' && n.mode !== 'server') return
    list(n.instances).forEach(function (i) { out.push({ i: i, host: n.host }) })
  })
  return out.sort(function (a, b) {
    return String(a.i.service).localeCompare(String(b.i.service)) || String(a.host).localeCompare(String(b.host)) || String(a.i.peerId).localeCompare(String(b.i.peerId))
  })
}

function renderServices (services) {
  fill('services', services.map(function (s) {
    return row({ service: s.service }, [
      cell('service', s.service),
      cell('instances num', text(s.serving) + '/' + text(s.instances)),
      cell('success num', rate(s.ok, s.failed)),
      cell('rps num', num(s.rps)),
      cell('spark', sparkline(rpsHistory.get(String(s.service)) || [])),
      cell('p99 num', ms(s.p99Ms)),
      cell('requests num', (num(s.ok) || 0) + (num(s.failed) || 0))
    ])
  }), 7)
}

function renderInstances (survey) {
  fill('instances', placed(survey).map(function (p) {
    var i = p.i, st = i.stats || {}
    var stats = i.stats == null
      ? ['-', '-', '-', '-', '-', '-']
      : [rate(st.ok, st.failed), num(st.rps), ms(st.avgMs), ms(st.p99Ms), num(st.total), duration(st.idleS)]
    return row({ service: i.service, instance: i.peerId != null ? i.peerId : text(i.instance) }, [
      cell('service', i.service),
      cell('host', p.host),
      cell('instance peer', i.peerId != null ? shortPeer(i.peerId) : i.instance, i.peerId),
      cell('state', badge(i.state)),
      cell('age num', duration(i.ageS)),
      cell('success num', stats[0]),
      cell('rps num', stats[1]),
      cell('avg num', stats[2]),
      cell('p99 num', stats[3]),
      cell('requests num', stats[4]),
      cell('idle num', stats[5])
    ])
  }), 11)
}

function role (n) { return n.role === 'proxy' ? (n.mode || 'client') + ' proxy' : text(n.role) }

function renderNodes (survey) {
  // Nodes answer a survey in any order: sorted, the rows stay put from one survey to the next.
  var nodes = list(survey.nodes).slice().sort(function (a, b) {
    return role(a).localeCompare(role(b)) || String(a.host).localeCompare(String(b.host)) || String(a.peerId).localeCompare(String(b.peerId))
  })
  fill('nodes', nodes.map(function (n) {
    return row({ peer: n.peerId }, [
      cell('role', role(n)),
      cell('host', n.host),
      cell('peer', shortPeer(n.peerId), n.peerId),
      cell('version', n.version),
      cell('uptime num', duration(n.uptimeS)),
      cell('instances num', list(n.instances).length)
    ])
  }), 6)
}

function renderCaches (survey) {
  var rows = []
  list(survey.nodes).forEach(function (n) {
    list(n.services).forEach(function (c) {
      var peers = list(c.peers)
      if (peers.length === 0) return
      var count = function (level) { return peers.filter(function (p) { return p.level === level }).length }
      var limits = c.limits || {}
      rows.push(row({ proxy: n.peerId, service: c.service }, [
        cell('proxy peer', shortPeer(n.peerId), n.peerId),
        cell('service', c.service),
        cell('reliable num', count('reliable')),
        cell('fresh num', count('fresh')),
        cell('removal num', count('removal')),
        cell('rtt num', ms(Math.min.apply(null, peers.map(function (p) { return num(p.rttMs) == null ? Infinity : p.rttMs })))),
        cell('limits num', text(limits.softMs) + '/' + text(limits.hardMs) + 'ms')
      ]))
    })
  })
  fill('caches', rows, 7)
}

function renderEvents (events) {
  var items = events.slice().reverse().map(function (e) {
    var li = document.createElement('li')
    li.dataset.kind = String(e.kind)
    li.dataset.service = String(e.service)
    var parts = [
      ['time', clock(e.at)],
      ['kind', e.kind],
      ['service', e.service],
      ['where', ' on ' + text(e.host) + ' ' + (e.peerId != null ? shortPeer(e.peerId) : text(e.instance)) + ' '],
      ['detail', e.kind === 'stopped' ? '(last seen ' + text(e.state) + ', idle ' + duration(e.idleS) + ')' : '(' + text(e.state) + ')']
    ]
    parts.forEach(function (p) {
      var span = document.createElement('span')
      span.className = p[0]
      span.textContent = text(p[1])
      li.appendChild(span)
    })
    return li
  })
  if (items.length === 0) {
    var none = document.createElement('li')
    none.className = 'none'
    none.textContent = 'no instance started or stopped since the dashboard began'
    items = [none]
  }
  var ol = document.getElementById('events')
  ol.replaceChildren.apply(ol, items)
}

function renderNotice (survey) {
  var notice = document.getElementById('notice')
  var unanswered = list(survey.unanswered)
  notice.dataset.partial = String(survey.partial === true)
  notice.dataset.unanswered = String(unanswered.length)
  var lines = []
  if (survey.partial === true) lines.push('Partial: the survey ran out of time or hit its limit; some nodes may be missing.')
  if (unanswered.length > 0) lines.push(unanswered.length + ' node' + (unanswered.length === 1 ? '' : 's') + ' did not answer:')
  var ul = document.createElement('ul')
  unanswered.slice(0, MAX_UNANSWERED_SHOWN).forEach(function (u) {
    var li = document.createElement('li')
    li.textContent = shortPeer(u.peerId) + ': ' + text(u.error)
    li.title = String(u.peerId)
    ul.appendChild(li)
  })
  var children = lines.map(function (l) { var p = document.createElement('div'); p.textContent = l; return p })
  if (unanswered.length > 0) children.push(ul)
  notice.replaceChildren.apply(notice, children)
  notice.hidden = children.length === 0
}

function render (survey) {
  // A reconnected stream starts again with the survey the page already shows.
  if (survey == null || !(num(survey.at) > shownAt)) return
  shownAt = survey.at
  var services = list(survey.services)
  recordRps(services)
  document.getElementById('node-count').textContent = list(survey.nodes).length
  document.getElementById('survey-time').textContent = clock(survey.at) + ' (took ' + ((num(survey.tookMs) || 0) / 1000).toFixed(1) + ' s)'
  renderNotice(survey)
  renderServices(services)
  renderInstances(survey)
  renderNodes(survey)
  renderCaches(survey)
  renderEvents(list(survey.events))
}

function setConnection (state) {
  var el = document.getElementById('connection')
  el.className = state
  el.textContent = state
}

function connect () {
  var source = new EventSource('/events')
  source.onopen = function () { setConnection('live') }
  source.onmessage = function (e) {
    render(JSON.parse(e.data))
    if (++received < SURVEYS) return
    source.close()
    setConnection('snapshot')
  }
  source.onerror = function () {
    if (source.readyState !== EventSource.CLOSED) return setConnection('reconnecting')
    // Refused (the dashboard has all the pages it serves at once): EventSource gives up, we do not.
    setConnection('closed')
    setTimeout(connect, RECONNECT_MS)
  }
}

connect()
`

const BODY = `<header>
  <h1>hyphae</h1>
  <span class="meta"><b id="node-count">-</b> nodes</span>
  <span class="meta">last survey <b id="survey-time">waiting for the first survey</b></span>
  <span id="connection">connecting</span>
</header>
<div id="notice" hidden></div>
<main>
  <section id="services-section"><h2>Services</h2>
    <table id="services"><thead><tr><th>service</th><th class="num">instances</th><th class="num">success</th><th class="num">rps</th><th>rps, last 60 surveys</th><th class="num">p99</th><th class="num">requests</th></tr></thead><tbody></tbody></table>
  </section>
  <section id="instances-section"><h2>Instances</h2>
    <table id="instances"><thead><tr><th>service</th><th>host</th><th>instance</th><th>state</th><th class="num">age</th><th class="num">success</th><th class="num">rps</th><th class="num">avg</th><th class="num">p99</th><th class="num">requests</th><th class="num">idle</th></tr></thead><tbody></tbody></table>
  </section>
  <section id="nodes-section"><h2>Nodes</h2>
    <table id="nodes"><thead><tr><th>role</th><th>host</th><th>peer</th><th>version</th><th class="num">uptime</th><th class="num">instances</th></tr></thead><tbody></tbody></table>
  </section>
  <section id="caches-section"><h2>Client proxies' caches</h2>
    <table id="caches"><thead><tr><th>proxy</th><th>service</th><th class="num">reliable</th><th class="num">fresh</th><th class="num">removal</th><th class="num">nearest RTT</th><th class="num">soft/hard</th></tr></thead><tbody></tbody></table>
  </section>
  <section id="events-section"><h2>Instances started and stopped</h2>
    <ol id="events"></ol>
  </section>
</main>`

export const DASHBOARD_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>hyphae dashboard</title>
<style>${STYLE}</style>
</head>
<body>
${BODY}
<script>${SCRIPT}</script>
</body>
</html>
`

function cspHash (source: string): string {
  return `'sha256-${createHash('sha256').update(source, 'utf8').digest('base64')}'`
}

/**
 * Only this page's own style and script run, and it talks to its own origin only: were a
 * peer's name ever to slip into markup, it could neither run nor send anything anywhere.
 */
export const DASHBOARD_CSP = [
  "default-src 'none'",
  `script-src ${cspHash(SCRIPT)}`,
  `style-src ${cspHash(STYLE)}`,
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'"
].join('; ')
