'use strict';
// Studio UI: a small hash-routed page over the /api/v1 JSON API. No framework, no build step.
// Security: API data (script names, owners, job output...) is untrusted. The DOM is built only with
// createElement / setAttribute / text nodes, never innerHTML, and only same-origin URLs are linked.

const STATES = ['queued', 'running', 'interrupted', 'finished', 'failed', 'cancelled'];
const TERMINAL = new Set(['finished', 'failed', 'cancelled']);
const main = document.getElementById('main');
const enc = encodeURIComponent;

// ---------- DOM helpers ----------
// h('a', {href, class, onclick}, ...children): children may be nodes, strings, numbers, arrays, null.
function build(el, attrs, kids) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (typeof v === 'function') el.addEventListener(k.replace(/^on/, ''), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid != null && kid !== false) el.append(kid instanceof Node ? kid : String(kid));
  }
  return el;
}
const h = (tag, attrs, ...kids) => build(document.createElement(tag), attrs, kids);
const svg = (tag, attrs, ...kids) =>
  build(document.createElementNS('http://www.w3.org/2000/svg', tag), attrs, kids);

const section = (title, ...kids) => h('section', {}, h('h2', {}, title), kids);
const tableIn = (id, label, cols, tbody) => h('div', { class: 'table-wrap' },
  h('table', { id, 'aria-label': label },
    h('thead', {}, h('tr', {}, cols.map((c) => h('th', { scope: 'col' }, c)))), tbody));
// Definition list from [label, value] pairs; missing values show as a dash.
const kv = (pairs) => pairs.flatMap(([k, v]) =>
  [h('dt', {}, k), h('dd', {}, v == null || v === '' ? '—' : v)]);
const clean = (s) => String(s).replace(/[^a-z-]/g, '');
const badge = (state) => h('span', { class: 'badge st-' + clean(state) }, state);

// Only link to same-origin URLs (the API gives paths like /api/v1/jobs/ID/outputs/2/file).
function sameOrigin(u) {
  try { return new URL(u, location.href).origin === location.origin ? u : null; } catch { return null; }
}

// ---------- Formatting ----------
const iso = (ms) => new Date(ms).toISOString();
function ago(ms) {
  const s = Math.round((Date.now() - ms) / 1000);
  if (s < 5) return 'just now';
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}
// Relative time with the exact ISO time as tooltip; refreshTimes() keeps the text current.
const timeEl = (ms) => ms == null ? '—'
  : h('time', { datetime: iso(ms), title: iso(ms), 'data-ms': ms }, ago(ms));
function refreshTimes() {
  for (const t of document.querySelectorAll('time[data-ms]')) {
    const text = ago(Number(t.dataset.ms));
    if (t.textContent !== text) t.textContent = text;
  }
}
// "45s", "12m 05s", "1h 02m"
function dur(secs) {
  if (secs == null) return '';
  secs = Math.max(0, Math.round(secs));
  const hh = Math.floor(secs / 3600), mm = Math.floor((secs % 3600) / 60), ss = secs % 60;
  const p2 = (n) => String(n).padStart(2, '0');
  return hh ? `${hh}h ${p2(mm)}m` : mm ? `${mm}m ${p2(ss)}s` : `${ss}s`;
}
function bytes(n) {
  if (n == null) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}
const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
const pct = (p) => `${Math.round(Math.min(1, Math.max(0, p)) * 100)}%`;

// ---------- Error banner (one message per source; a source's success clears its message) ----------
const errBox = document.getElementById('error');
const errors = new Map();
function setError(key, msg) {
  if (msg) errors.set(key, msg); else errors.delete(key);
  const text = [...new Set(errors.values())].join(' — ');
  if (errBox.textContent !== text) errBox.textContent = text;
  errBox.hidden = !text;
}

// ---------- HTTP with ETags ----------
// url -> {etag, data}. On 304 we return the *same* data object as before, so callers detect
// "nothing changed" by identity (data === shown) and skip redrawing.
const cache = new Map();
async function request(url, init) {
  try { return await fetch(url, { cache: 'no-store', ...init }); }
  catch (e) { throw new Error(`Cannot reach the studio ui server (${e.message})`); }
}
async function readJSON(res) {
  let d = null;
  try { d = await res.json(); } catch { /* not JSON */ }
  if (!res.ok) throw new Error(d && typeof d.error === 'string' ? d.error : `HTTP ${res.status} ${res.statusText}`.trim());
  if (d === null || typeof d !== 'object') throw new Error('Unexpected response from the server');
  return d;
}
async function getJSON(url) {
  const hit = cache.get(url);
  const res = await request(url, { headers: hit ? { 'If-None-Match': hit.etag } : {} });
  cache.delete(url); // re-inserted below: the Map's order is least-recently-used first
  if (res.status === 304 && hit) { cache.set(url, hit); return hit.data; }
  const data = await readJSON(res);
  const etag = res.headers.get('ETag');
  if (etag) cache.set(url, { etag, data });
  if (cache.size > 60) cache.delete(cache.keys().next().value);
  return data;
}

// ---------- Polling ----------
// poll(key, ms, fn): runs fn(p) now and then ms after each completion (never overlapping).
// Paused while document.hidden; all pollers of a page are killed when the route changes.
let pollers = [];
function poll(key, ms, fn) {
  const p = { stopped: false, dead: false, busy: false, again: false, timer: 0 };
  p.stop = () => { p.stopped = true; clearTimeout(p.timer); };
  p.run = async () => {
    clearTimeout(p.timer);
    if (p.stopped || document.hidden) return;
    if (p.busy) { p.again = true; return; } // run once more as soon as the current call ends
    p.busy = true;
    try {
      await fn(p);
      if (!p.dead) setError(key, null);
    } catch (e) {
      if (!p.dead) setError(key, e.message || String(e));
    }
    p.busy = false;
    refreshTimes();
    if (p.stopped || document.hidden) return;
    if (p.again) { p.again = false; p.run(); } else p.timer = setTimeout(p.run, ms);
  };
  pollers.push(p);
  p.run();
  return p;
}
document.addEventListener('visibilitychange', () => {
  if (!document.hidden) for (const p of pollers) p.run();
});

// ---------- Router ----------
function parseHash() {
  const raw = location.hash.replace(/^#/, '');
  const q = raw.indexOf('?');
  return { path: q < 0 ? raw : raw.slice(0, q), params: new URLSearchParams(q < 0 ? '' : raw.slice(q + 1)) };
}
function route(ev) {
  for (const p of pollers) { p.dead = true; p.stop(); }
  pollers = [];
  errors.clear();
  setError('', null);
  main.replaceChildren();
  const { path, params } = parseHash();
  const m = path.match(/^\/jobs\/([^/]+)$/);
  let id = null;
  try { id = m && decodeURIComponent(m[1]); } catch { /* malformed: not found */ }
  const page = path === '' || path === '/' ? 'jobs' : id ? 'job' : path === '/pools' ? 'pools' : 'none';
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === (page === 'job' ? 'jobs' : page)) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (page === 'jobs') listView(params);
  else if (page === 'job') jobView(id);
  else if (page === 'pools') poolsView();
  else {
    document.title = 'Not found · Studio';
    main.append(h('h1', { tabindex: -1 }, 'Not found'), h('p', {}, h('a', { href: '#/' }, 'Back to jobs')));
  }
  if (ev) { window.scrollTo(0, 0); main.querySelector('h1')?.focus(); } // announce the new page
}
window.addEventListener('hashchange', route);
document.querySelector('.skip').addEventListener('click', (e) => { e.preventDefault(); main.focus(); });

// ---------- Jobs list: #/?state=&pool=&owner= ----------
function listView(params) {
  document.title = 'Jobs · Studio';
  const f = { state: params.get('state') || '', pool: params.get('pool') || '', owner: params.get('owner') || '' };
  let cursor = null, stack = [], nextCursor = null, shown = null, debounce = 0;

  const stateSel = h('select', { id: 'filter-state', name: 'state', onchange: () => apply() },
    h('option', { value: '' }, 'All'), STATES.map((s) => h('option', { value: s }, s)));
  stateSel.value = f.state;
  const text = (id, value) => h('input', {
    id, value, type: 'search', autocomplete: 'off', spellcheck: 'false',
    oninput: () => { clearTimeout(debounce); debounce = setTimeout(apply, 300); }, onchange: () => apply(),
  });
  const poolIn = text('filter-pool', f.pool), ownerIn = text('filter-owner', f.owner);
  const field = (id, label, ctl) => h('div', { class: 'field' }, h('label', { for: id }, label), ctl);
  const tbody = h('tbody');
  const empty = h('p', { class: 'empty', hidden: true }, 'No jobs');
  const prev = h('button', { id: 'prev-page', type: 'button', disabled: true }, 'Previous');
  const next = h('button', { id: 'next-page', type: 'button', disabled: true, hidden: true }, 'Next');
  const pageNo = h('span', { class: 'muted' }, 'Page 1');

  main.append(
    h('h1', { tabindex: -1 }, 'Jobs'),
    h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter jobs',
      onsubmit: (e) => { e.preventDefault(); apply(); } },
      field('filter-state', 'State', stateSel), field('filter-pool', 'Pool', poolIn),
      field('filter-owner', 'Owner', ownerIn)),
    tableIn('jobs', 'Jobs, newest first', ['ID', 'State', 'Progress', 'Script', 'Owner', 'Cloud',
      'Machine', 'Attempts', 'Started', 'Duration', 'Cost'], tbody),
    empty,
    h('nav', { class: 'pager', 'aria-label': 'Pages' }, prev, pageNo, next));

  const url = () => {
    const q = new URLSearchParams({ limit: '50' });
    for (const k in f) if (f[k]) q.set(k, f[k]);
    if (cursor) q.set('cursor', cursor);
    return '/api/v1/jobs?' + q;
  };
  // Filters live in the hash query (replaceState: no hashchange, so no re-render of the form).
  function apply() {
    clearTimeout(debounce);
    const nf = { state: stateSel.value, pool: poolIn.value.trim(), owner: ownerIn.value.trim() };
    if (Object.keys(nf).every((k) => nf[k] === f[k])) return;
    Object.assign(f, nf);
    const q = new URLSearchParams();
    for (const k in f) if (f[k]) q.set(k, f[k]);
    history.replaceState(null, '', '#/' + (String(q) ? '?' + q : ''));
    cursor = null; stack = [];
    p.run();
  }
  next.addEventListener('click', () => {
    if (!nextCursor) return;
    stack.push(cursor); cursor = nextCursor;
    next.disabled = prev.disabled = true; // until the page arrives (no double clicks)
    p.run();
  });
  prev.addEventListener('click', () => {
    if (!stack.length) return;
    cursor = stack.pop();
    next.disabled = prev.disabled = true;
    p.run();
  });

  const p = poll('jobs', 2000, async (p) => {
    const u = url();
    const d = await getJSON(u);
    if (p.stopped || u !== url() || d === shown) return; // stale, or 304 (same object)
    shown = d;
    const jobs = d.jobs || [];
    tbody.replaceChildren(...jobs.map(jobRow));
    empty.hidden = jobs.length > 0;
    nextCursor = d.next_cursor || null;
    next.hidden = next.disabled = !nextCursor;
    prev.disabled = !stack.length;
    pageNo.textContent = `Page ${stack.length + 1}`;
  });
}

// A <progress> bar and its percentage as text ("42%"), or null when the job reports none.
const progressOf = (p) => p == null ? null
  : [h('progress', { max: 1, value: p, 'aria-label': 'Progress' }), h('span', { class: 'pct' }, pct(p))];

// Columns: the ones that matter most on a phone (id, state, progress) come first.
function jobRow(j) {
  const td = (cls, kids, attrs) => h('td', { class: cls, ...attrs }, kids);
  return h('tr', { 'data-job-id': j.id },
    td('id', h('a', { href: '#/jobs/' + enc(j.id) }, j.id)),
    // An ended job's reason under its state, where it failed or was cancelled.
    td('state', [badge(j.state), (j.state === 'failed' || j.state === 'cancelled') && j.reason
      ? h('span', { class: 'why muted' }, j.reason) : null].filter(Boolean), { title: j.reason }),
    td('progress', progressOf(j.progress)),
    td('script', j.script, { title: j.script }),
    td('owner', j.owner),
    td('cloud', j.cloud),
    td('machine', j.machine, { title: j.market }),
    td('attempts', j.attempts),
    td('started', timeEl(j.started_at)),
    td('duration', dur(j.duration_secs)),
    td('cost', j.cost));
}

// ---------- One job: #/jobs/ID ----------
function jobView(id) {
  document.title = `Job ${id} · Studio`;
  const stateEl = h('span', { id: 'job-state', class: 'badge', 'aria-live': 'polite' });
  const cancel = h('button', { id: 'cancel', type: 'button', class: 'danger', hidden: true }, 'Cancel job');
  const status = h('p', { id: 'status', role: 'status' });
  const summary = h('dl', { id: 'summary', class: 'summary' });
  const timeline = h('ol', { id: 'timeline' });
  const attempts = h('tbody');
  const outputs = h('ul', { id: 'outputs' });
  const outNote = h('p', { class: 'muted' }, 'No output files yet.');
  const env = h('tbody');
  const logPre = h('pre', { id: 'log', tabindex: 0, 'aria-label': 'Job output' });
  const logText = document.createTextNode('');
  const logNote = h('span', { class: 'muted' }, '(earlier output not shown)\n');
  logPre.append(logText);

  main.append(
    h('div', { class: 'page-head' },
      h('h1', { tabindex: -1 }, 'Job ', h('code', {}, id), ' ', stateEl),
      h('div', { class: 'actions' }, cancel, status)),
    h('section', { 'aria-labelledby': 'summary-h' }, h('h2', { id: 'summary-h', class: 'visually-hidden' }, 'Summary'), summary),
    section('Timeline', timeline),
    section('Attempts', tableIn('attempts', 'Attempts', ['#', 'Instance', 'Machine', 'Market', 'Zone',
      'Price/h', 'Started', 'Duration', 'Outcome', 'Exit', 'Cost', 'Outputs'], attempts)),
    section('Output', logPre),
    section('Files', outputs, outNote),
    section('Environment', tableIn('env', 'Environment variables', ['Name', 'Value'], env)));

  let shown = null;
  const jp = poll('job', 1000, async (p) => {
    const j = await getJSON(`/api/v1/jobs/${enc(id)}`);
    if (p.stopped || j === shown) return;
    shown = j;
    // Touch the live region only when the state really changes (avoids repeated announcements).
    if (stateEl.textContent !== j.state) {
      stateEl.textContent = j.state;
      stateEl.className = 'badge st-' + clean(j.state);
    }
    cancel.hidden = TERMINAL.has(j.state);
    document.title = `Job ${id} (${j.state}) · Studio`;
    const list = Array.isArray(j.attempts) ? j.attempts : [];
    // Each label/value pair in its own <div> (valid in a <dl>) so the pairs flow as a grid.
    summary.replaceChildren(...[
      ['Script', h('code', {}, j.script), 'wide'],
      j.progress != null && ['Progress', progressOf(j.progress), 'span2'],
      ['Owner', j.owner], ['Cloud', j.cloud], ['Machine', j.machine], ['Market', j.market],
      ['Pool', j.pool, 'span2'], ['Attempts', list.length], ['Created', timeEl(j.created_at)],
      ['Started', timeEl(j.started_at)], ['Ended', timeEl(j.ended_at)], ['Duration', dur(j.duration_secs)],
      ['Cost', j.cost], ['Budget', j.budget], ['Exit code', j.exit_code],
      j.reason != null && j.reason !== '' && ['Reason', j.reason, 'wide'],
    ].filter(Boolean).map(([k, v, cls]) => h('div', { class: cls }, kv([[k, v]]))));
    timeline.replaceChildren(...(j.events || []).map((e) => h('li', {},
      timeEl(e.at), ' ', h('strong', {}, e.to), e.reason ? `: ${e.reason}` : '',
      e.by ? h('span', { class: 'muted' }, ` · by ${e.by}`) : '')));
    attempts.replaceChildren(...list.map((a) => h('tr', { 'data-attempt': a.number }, [
      a.number, a.instance, a.machine, a.market, a.zone,
      a.price_per_hour_usd == null ? null
        : h('span', { title: a.price_basis }, `$${Number(a.price_per_hour_usd).toFixed(4)}/h`),
      timeEl(a.started_at), dur(a.duration_secs), a.outcome ?? (a.ended_at == null ? 'running' : null),
      a.exit_code, a.cost, a.outputs ? `${a.outputs.files} files, ${bytes(a.outputs.bytes)}` : null,
    ].map((v) => h('td', {}, v == null || v === '' ? '—' : v)))));
    const files = (j.outputs && j.outputs.files) || [];
    outputs.replaceChildren(...files.map((f) => h('li', {},
      h('a', { href: sameOrigin(f.url), download: true }, f.path), ` (${bytes(f.size)})`)));
    outNote.textContent = files.length ? `Files of attempt ${j.outputs.attempt}.`
      : TERMINAL.has(j.state) ? 'This job left no output files.' : 'No output files yet.';
    const vars = Object.entries(j.env || {});
    env.replaceChildren(...(vars.length
      ? vars.map(([k, v]) => h('tr', {}, h('th', { scope: 'row' }, k), h('td', {}, v)))
      : [h('tr', {}, h('td', { colspan: 2, class: 'muted' }, 'No environment variables'))]));
  });

  // Log: the first request has no offset (server sends the last 64 KiB); then offset=next.
  // `STUDIO_PROGRESS=` lines are the progress bar's (in the summary), not shown here;
  // a line split across two reads waits for its end.
  let next = null, last = null, carry = '';
  const readable = (text, ended) => {
    const all = carry + text;
    const cut = ended ? all.length : all.lastIndexOf('\n') + 1;
    carry = all.slice(cut);
    return all.slice(0, cut).split('\n').filter((l) => !l.startsWith('STUDIO_PROGRESS=')).join('\n');
  };
  const lp = poll('log', 1000, async (p) => {
    const d = await getJSON(`/api/v1/jobs/${enc(id)}/log` + (next == null ? '' : `?offset=${next}`));
    if (p.stopped || d === last) return; // 304: nothing new
    if (last === null && d.offset > 0) logPre.prepend(logNote);
    last = d;
    next = d.next;
    const text = readable(d.text || '', d.ended);
    if (text) {
      const atBottom = logPre.scrollHeight - logPre.scrollTop - logPre.clientHeight < 8;
      logText.appendData(text);
      if (logText.length > 4e6) { // keep the browser responsive on huge logs
        logText.deleteData(0, logText.length - 2e6);
        if (!logNote.isConnected) logPre.prepend(logNote);
      }
      if (atBottom) logPre.scrollTop = logPre.scrollHeight;
    }
    if (d.ended) p.stop();
  });

  cancel.addEventListener('click', async () => {
    if (!window.confirm(`Cancel job ${id}?`)) return;
    cancel.disabled = true;
    status.textContent = 'Cancelling…';
    try {
      const res = await request(`/api/v1/jobs/${enc(id)}/cancel`,
        { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
      const d = await readJSON(res);
      if (!cancel.isConnected) return; // the user left this page meanwhile
      status.textContent = `Cancel: ${d.outcome}`;
      setError('cancel', null);
    } catch (e) {
      if (!cancel.isConnected) return;
      status.textContent = `Cancel failed: ${e.message}`;
      setError('cancel', `Cancel failed: ${e.message}`);
    }
    cancel.disabled = false;
    jp.run(); lp.run();
  });
}

// ---------- Pools: #/pools ----------
function poolsView() {
  document.title = 'Pools · Studio';
  const box = h('div', { id: 'pools' }, h('p', { class: 'muted' }, 'Loading…'));
  main.append(h('h1', { tabindex: -1 }, 'Pools'), box);
  let shown = null;
  poll('pools', 2000, async (p) => {
    const d = await getJSON('/api/v1/pools');
    if (p.stopped || d === shown) return;
    shown = d;
    const pools = d.pools || [];
    box.replaceChildren(...(pools.length ? pools.map(poolSection) : [h('p', { class: 'empty' }, 'No pools')]));
  });
}

function poolSection(pl) {
  const vis = pl.queue_visible ?? 0, fly = pl.queue_in_flight ?? 0;
  return h('section', { class: 'pool', 'data-pool': pl.key },
    h('h2', {}, h('code', {}, pl.key), ' ', badge(pl.state)),
    h('dl', { class: 'kv' }, kv([
      ['Group', pl.group || pl.key],
      ['Where', [pl.cloud, pl.region, pl.market].filter(Boolean).join(' · ')],
      ['Machine types', (pl.machine_types || []).join(', ')],
      ['Policy', pl.policy], ['Target', pl.target], ['Actual', pl.actual],
      ['Queue depth', `${vis + fly} (${vis} waiting, ${fly} in flight)`],
      ['Updated', timeEl(pl.updated_at)]])),
    chart(pl));
}

// Hand-drawn SVG chart: pool size and queue depth on one y axis (0..max, max >= 1), x = time.
function chart(pl) {
  const S = pl.samples || [];
  const W = 480, H = 210, L = 40, R = 470, T = 34, B = 180; // plot area: x L..R, y T..B
  const size = S.map((s) => s.actual ?? s.target ?? 0);
  const depth = S.map((s) => (s.visible ?? 0) + (s.in_flight ?? 0));
  const max = Math.max(1, ...size, ...depth);
  const t0 = S.length ? S[0].at : 0, t1 = S.length ? S[S.length - 1].at : 0;
  const x = (t) => (t1 > t0 ? L + ((t - t0) / (t1 - t0)) * (R - L) : (L + R) / 2);
  const y = (v) => B - (v / max) * (B - T);
  const pts = (vals) => vals.map((v, i) => `${x(S[i].at).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
  const label = S.length
    ? `Pool ${pl.key}: size now ${size[size.length - 1]}, queue depth now ${depth[depth.length - 1]}; `
      + `${S.length} samples from ${clock(t0)} to ${clock(t1)}; y axis 0 to ${max}`
    : `Pool ${pl.key}: no samples yet`;
  const text = (tx, ty, anchor, str) => svg('text', { x: tx, y: ty, 'text-anchor': anchor }, str);
  const legend = (cls, lx, name) => [
    svg('line', { class: cls, x1: lx, y1: 14, x2: lx + 28, y2: 14 }), text(lx + 34, 18, 'start', name)];
  return svg('svg', { class: 'chart', role: 'img', 'aria-label': label, viewBox: `0 0 ${W} ${H}`,
    width: '100%', preserveAspectRatio: 'xMidYMid meet' },
  svg('title', {}, label),
  legend('legend-size', L, 'pool size'), legend('legend-depth', L + 140, 'queue depth'),
  svg('line', { class: 'grid', x1: L, y1: T, x2: R, y2: T }),
  svg('line', { class: 'axis', x1: L, y1: T, x2: L, y2: B }),
  svg('line', { class: 'axis', x1: L, y1: B, x2: R, y2: B }),
  text(L - 6, T + 4, 'end', max), text(L - 6, B + 4, 'end', 0),
  !S.length ? text((L + R) / 2, (T + B) / 2, 'middle', 'No samples yet')
    : t1 > t0 ? [text(L, H - 8, 'start', clock(t0)), text(R, H - 8, 'end', clock(t1))]
      : text((L + R) / 2, H - 8, 'middle', clock(t0)),
  svg('polyline', { class: 'series-size', fill: 'none', points: pts(size) }),
  svg('polyline', { class: 'series-depth', fill: 'none', points: pts(depth) }),
  S.length === 1 && [ // a single sample: polylines of one point are invisible, so mark them
    svg('circle', { class: 'point-size', cx: x(t0), cy: y(size[0]), r: 5 }),
    svg('circle', { class: 'point-depth', cx: x(t0), cy: y(depth[0]), r: 3.5 })]);
}

route();
