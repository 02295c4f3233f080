// Metis operator console: one plain script, no third-party code (served under a CSP without
// 'unsafe-inline'). Pages are routed on the URL hash (#/spend?group_by=team&bucket=day) so
// every view is bookmarkable. Data is only ever put into the page as text (textContent,
// attributes), never parsed as HTML.
'use strict';

(function () {
  const state = { session: null, generation: 0, timers: [] };
  const ROLE_RANK = { viewer: 0, operator: 1, admin: 2 };
  const AUDIT_TYPES = [
    'gateway.key_issued', 'gateway.key_revoked', 'gateway.key_rotated', 'gateway.key_expired',
    'gateway.key_updated', 'gateway.auth_failed',
    'gateway.quota_exceeded', 'quota.alert', 'quota.alert_delivered', 'quota.alert_undelivered',
    'gateway.key_leak_suspected', 'gateway.rate_limited',
    'trace.swept', 'routing.policy_invalid', 'pattern.evicted', 'memory.eviction',
    'gateway.budget_set', 'gateway.budget_deleted', 'gateway.model_group_set',
    'gateway.model_group_deleted', 'gateway.route_set', 'gateway.route_deleted',
  ];
  const SVG_NS = 'http://www.w3.org/2000/svg';

  // ---------- DOM helpers ----------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    applyAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    applyAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function applyAttrs(node, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'text') node.textContent = String(v);
      else if (k.startsWith('on') && typeof v === 'function') node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? '' : String(v));
    }
  }

  function append(node, children) {
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }

  // Replace a container's content (skipping absent parts, which replaceChildren would print).
  function fill(node, ...children) {
    node.replaceChildren();
    append(node, children);
  }

  function tooltip(text) {
    return svg('title', { text });
  }

  // ---------- formatting ----------

  function usd(x) {
    const v = Number(x) || 0;
    if (v === 0) return '$0';
    if (Math.abs(v) >= 100) return '$' + v.toFixed(2);
    if (Math.abs(v) >= 1) return '$' + v.toFixed(3);
    return '$' + v.toPrecision(3);
  }

  function int(x) {
    return (Number(x) || 0).toLocaleString('en-US');
  }

  function ms(x) {
    return x === null || x === undefined ? '—' : `${Math.round(Number(x))} ms`;
  }

  function when(iso) {
    if (!iso) return '—';
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return iso;
    return `${d.toISOString().slice(0, 19).replace('T', ' ')}Z`;
  }

  function isoSeconds(d) {
    return d.toISOString().replace(/\.\d+Z$/, 'Z');
  }

  // ---------- API ----------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function request(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (state.session) headers['X-Metis-CSRF'] = state.session.csrf;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      cache: 'no-store',
    });
    if (!resp.ok) {
      let message = `${resp.status} ${resp.statusText}`;
      try {
        const data = await resp.json();
        if (data && data.error && data.error.message) message = data.error.message;
      } catch (_) { /* not JSON: keep the status line */ }
      throw new ApiError(resp.status, `${method} ${path.split('?')[0]}: ${message}`);
    }
    return resp;
  }

  async function api(method, path, body) {
    const resp = await request(method, path, body);
    const text = await resp.text();
    return text ? JSON.parse(text) : null;
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
      if (Array.isArray(v)) v.forEach((x) => q.append(k, x));
      else if (v !== undefined && v !== null && v !== '') q.set(k, v);
    }
    const s = q.toString();
    return s ? `?${s}` : '';
  }

  function can(role) {
    return state.session && ROLE_RANK[state.session.role] >= ROLE_RANK[role];
  }

  // ---------- banner ----------

  function showError(err) {
    const banner = document.getElementById('banner');
    banner.replaceChildren(el('span', { text: err.message || String(err) }));
    if (err.status === 401) {
      banner.append(' ', el('a', { href: '/ui/login', text: 'Log in again' }));
    }
    banner.hidden = false;
  }

  function clearError() {
    const banner = document.getElementById('banner');
    banner.hidden = true;
    banner.replaceChildren();
  }

  // ---------- sortable tables ----------

  // columns: [{key, label, num, render(row) -> Node|string, value(row) -> sortable}]
  function table(columns, rows, opts) {
    const options = opts || {};
    let sortKey = options.sortKey || null;
    let sortDir = options.sortDir || 'descending';
    const tbody = el('tbody');
    const heads = columns.map((c) => {
      const th = el('th', {
        class: `${c.num ? 'num ' : ''}${c.sortable === false ? '' : 'sortable'}`,
        scope: 'col',
        'data-key': c.key,
        text: c.label,
      });
      if (c.sortable !== false) {
        th.addEventListener('click', () => {
          sortDir = sortKey === c.key && sortDir === 'ascending' ? 'descending' : 'ascending';
          sortKey = c.key;
          draw();
        });
      }
      return th;
    });
    const valueOf = (c, r) => (c.value ? c.value(r) : r[c.key]);
    function draw() {
      heads.forEach((th, i) => {
        if (columns[i].key === sortKey) th.setAttribute('aria-sort', sortDir);
        else th.removeAttribute('aria-sort');
      });
      const col = columns.find((c) => c.key === sortKey);
      const sorted = rows.slice();
      if (col) {
        const sign = sortDir === 'ascending' ? 1 : -1;
        sorted.sort((a, b) => {
          const x = valueOf(col, a);
          const y = valueOf(col, b);
          if (x === y) return 0;
          if (x === null || x === undefined) return 1;
          if (y === null || y === undefined) return -1;
          return (typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y))) * sign;
        });
      }
      tbody.replaceChildren(...sorted.map((r) => el('tr', { 'data-row': options.rowId ? options.rowId(r) : undefined },
        columns.map((c) => {
          const v = c.render ? c.render(r) : valueOf(c, r);
          return el('td', { class: c.num ? 'num' : undefined }, v === null || v === undefined ? '—' : v);
        }))));
      if (!sorted.length) {
        tbody.append(el('tr', {}, el('td', { colspan: columns.length, class: 'muted', text: options.empty || 'Nothing to show.' })));
      }
    }
    draw();
    return el('div', { class: 'table-wrap' }, el('table', { id: options.id }, el('thead', {}, el('tr', {}, heads)), tbody));
  }

  function badge(text, kind) {
    return el('span', { class: `badge ${kind || text}`, text });
  }

  // ---------- charts (hand-written SVG) ----------

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  // series: [{name, values: [number per bucket]}]; labels: bucket start labels.
  function chart(kind, series, labels, fmt, title) {
    const W = 960;
    const H = 250;
    const m = { l: 70, r: 16, t: 36, b: 40 };
    const iw = W - m.l - m.r;
    const ih = H - m.t - m.b;
    const n = labels.length;
    const totals = labels.map((_, i) => series.reduce((s, x) => s + (x.values[i] || 0), 0));
    const peak = kind === 'bar' ? Math.max(0, ...totals) : Math.max(0, ...series.flatMap((s) => s.values));
    const ymax = niceMax(peak);
    const x = (i) => m.l + (n <= 1 ? iw / 2 : (i * iw) / (n - 1));
    const y = (v) => m.t + ih - (v / ymax) * ih;
    const root = svg('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title, 'data-kind': kind });
    root.append(tooltip(title));
    for (let k = 0; k <= 4; k++) {
      const v = (ymax * k) / 4;
      root.append(svg('line', { class: 'grid', x1: m.l, x2: W - m.r, y1: y(v), y2: y(v) }));
      root.append(svg('text', { x: m.l - 6, y: y(v) + 4, 'text-anchor': 'end', text: fmt(v) }));
    }
    root.append(svg('line', { class: 'axis', x1: m.l, x2: m.l, y1: m.t, y2: m.t + ih }));
    root.append(svg('line', { class: 'axis', x1: m.l, x2: W - m.r, y1: m.t + ih, y2: m.t + ih }));
    const every = Math.max(1, Math.ceil(n / 10));
    const slot = iw / Math.max(1, n);
    const bx = (i) => m.l + i * slot;
    labels.forEach((lab, i) => {
      if (i % every !== 0) return;
      const cx = kind === 'bar' ? bx(i) + slot / 2 : x(i);
      root.append(svg('text', { x: cx, y: H - m.b + 16, 'text-anchor': 'middle', text: lab.short }));
    });
    if (kind === 'bar') {
      const w = Math.max(1, slot * 0.8);
      labels.forEach((lab, i) => {
        let base = 0;
        series.forEach((s, si) => {
          const v = s.values[i] || 0;
          if (v <= 0) return;
          const top = y(base + v);
          const rect = svg('rect', {
            class: `bar s${si % 8}`, x: bx(i) + (slot - w) / 2, y: top, width: w, height: Math.max(0.5, y(base) - top),
            'data-group': s.name, 'data-value': v,
          });
          rect.append(tooltip(`${s.name} · ${lab.long} · ${fmt(v)}`));
          root.append(rect);
          base += v;
        });
      });
    } else {
      series.forEach((s, si) => {
        const pts = s.values.map((v, i) => `${x(i).toFixed(1)},${y(v || 0).toFixed(1)}`).join(' ');
        root.append(svg('polyline', { class: `line s${si % 8}`, points: pts, 'data-group': s.name }));
        s.values.forEach((v, i) => {
          if (!(v > 0) && n > 48) return; // keep dense hourly charts light: zero points only as line
          const dot = svg('circle', { class: `dot s${si % 8}`, cx: x(i), cy: y(v || 0), r: 3.5, 'data-group': s.name, 'data-value': v || 0 });
          dot.append(tooltip(`${s.name} · ${labels[i].long} · ${fmt(v || 0)}`));
          root.append(dot);
        });
      });
    }
    const legend = svg('g', { class: 'legend' });
    let lx = m.l;
    series.forEach((s, si) => {
      legend.append(svg('rect', { class: `s${si % 8}`, x: lx, y: 10, width: 10, height: 10 }));
      const label = s.name.length > 28 ? `${s.name.slice(0, 27)}…` : s.name;
      legend.append(svg('text', { x: lx + 14, y: 19, text: label }));
      lx += 24 + label.length * 6.5;
    });
    root.append(legend);
    return root;
  }

  // A cap as a progress bar with the 80 % and 95 % alert marks.
  function capBar(spent, cap, what, keyId) {
    if (cap === null || cap === undefined) return el('span', { class: 'muted', text: 'no cap' });
    const limit = Number(cap);
    const ratio = limit > 0 ? spent / limit : 0;
    const W = 400;
    const fill = Math.min(1, ratio) * W;
    const cls = ratio >= 0.95 ? 'fill bad' : ratio >= 0.8 ? 'fill warn' : 'fill';
    const text = `${usd(spent)} of ${usd(limit)} ${what} (${(ratio * 100).toFixed(1)} %)`;
    const bar = svg('svg', {
      class: 'capbar', viewBox: `0 0 ${W} 22`, preserveAspectRatio: 'none', role: 'img', 'aria-label': text,
      'data-key-id': keyId, 'data-cap': what, 'data-ratio': ratio.toFixed(6),
    },
    tooltip(text),
    svg('rect', { class: 'track', x: 0, y: 4, width: W, height: 14, rx: 3 }),
    svg('rect', { class: cls, x: 0, y: 4, width: fill.toFixed(2), height: 14, rx: 3 }),
    svg('line', { class: 'mark', x1: W * 0.8, x2: W * 0.8, y1: 0, y2: 22 }, tooltip('80 % alert')),
    svg('line', { class: 'mark', x1: W * 0.95, x2: W * 0.95, y1: 0, y2: 22 }, tooltip('95 % alert')));
    return el('div', {}, bar, el('span', { class: 'small muted', text }));
  }

  // ---------- the one-time secret display ----------

  // The token is only ever in this panel: dismissing it (or leaving the page, which rebuilds
  // <main>) removes it from the DOM, and nothing else keeps a reference to it.
  function secretPanel(title, token, onDismiss) {
    const code = el('code', { id: 'one-time-token', text: token });
    const status = el('span', { class: 'small muted', role: 'status' });
    const copy = el('button', {
      type: 'button', id: 'copy-token', text: 'Copy',
      onclick: async () => {
        try {
          await navigator.clipboard.writeText(code.textContent);
          status.textContent = 'Copied.';
        } catch (_) {
          const range = document.createRange();
          range.selectNodeContents(code);
          const sel = window.getSelection();
          sel.removeAllRanges();
          sel.addRange(range);
          status.textContent = 'Selected: press Ctrl+C / ⌘C to copy.';
        }
      },
    });
    const panel = el('div', { class: 'panel token-once', id: 'token-panel', role: 'region', 'aria-label': title },
      el('strong', { text: title }),
      el('p', { text: 'Copy it now: it is shown only once and cannot be recovered (only its SHA-256 is stored).' }),
      code,
      el('div', { class: 'row' }, copy,
        el('button', { type: 'button', class: 'secondary', id: 'dismiss-token', text: 'Done, hide it', onclick: () => { panel.remove(); if (onDismiss) onDismiss(); } }),
        status));
    return panel;
  }

  // ---------- pages ----------

  async function pageOverview(main) {
    const data = await api('GET', '/admin/v1/overview');
    const win = (label, w) => el('section', { class: 'panel', 'data-window': label },
      el('h2', { text: label === 'hour' ? 'Last hour' : 'Last day' }),
      el('div', { class: 'cards' },
        card('Requests', int(w.requests), 'requests'),
        card('Errors', `${int(w.errors)}${w.requests ? ` (${((100 * w.errors) / w.requests).toFixed(1)} %)` : ''}`, 'errors'),
        card('p50 latency', ms(w.p50_ms), 'p50'),
        card('p99 latency', ms(w.p99_ms), 'p99'),
        card('Input tokens', int(w.input_tokens), 'input_tokens'),
        card('Output tokens', int(w.output_tokens), 'output_tokens'),
        card('Cost', usd(w.cost_usd), 'cost')));
    const providers = table([
      { key: 'provider', label: 'Provider' },
      { key: 'status', label: 'Health', render: (p) => badge(p.status) },
      { key: 'calls', label: 'Calls (5 min)', num: true, render: (p) => int(p.calls) },
      { key: 'failures', label: 'Failures', num: true, render: (p) => int(p.failures) },
      { key: 'last_success_at', label: 'Last success', render: (p) => when(p.last_success_at) },
      { key: 'last_failure_at', label: 'Last failure', render: (p) => when(p.last_failure_at) },
      { key: 'last_error', label: 'Last error' },
    ], data.providers || [], { id: 'providers', sortKey: 'provider', sortDir: 'ascending', empty: 'No providers configured.' });
    fill(main, 
      el('h1', { text: 'Overview' }),
      el('p', { class: 'muted', text: `This replica's own counters (${data.replica_scope === 'this_process' ? 'this process only' : data.replica_scope}), up ${Math.round(data.uptime_seconds)} s, as of ${when(data.generated_at)}. Refreshes every 15 s.` }),
      win('hour', data.windows.hour),
      win('day', data.windows.day),
      el('h2', { text: 'Providers' }),
      providers);
    later(15000, 'overview');
  }

  function card(label, value, id) {
    return el('div', { class: 'card', 'data-metric': id }, el('div', { class: 'label', text: label }), el('div', { class: 'value', text: value }));
  }

  const RANGES = { '24h': 86400, '7d': 7 * 86400, '30d': 30 * 86400 };
  const METRICS = {
    cost_usd: { label: 'Cost (USD)', value: (p) => p.cost_usd, fmt: usd },
    tokens: { label: 'Tokens (input + output)', value: (p) => p.input_tokens + p.output_tokens, fmt: int },
    calls: { label: 'Calls', value: (p) => p.calls, fmt: int },
  };

  async function pageSpend(main, route) {
    const p = route.params;
    const groupBy = ['key', 'user', 'team', 'model'].includes(p.get('group_by')) ? p.get('group_by') : 'key';
    const bucket = p.get('bucket') === 'hour' ? 'hour' : 'day';
    const range = RANGES[p.get('range')] ? p.get('range') : (bucket === 'hour' ? '24h' : '7d');
    const metric = METRICS[p.get('metric')] ? p.get('metric') : 'cost_usd';
    const kind = ['line', 'bar'].includes(p.get('chart')) ? p.get('chart') : (bucket === 'day' ? 'bar' : 'line');
    const until = new Date();
    const since = new Date(until.getTime() - RANGES[range] * 1000);
    const span = { since: isoSeconds(since), until: isoSeconds(until), group_by: groupBy };
    const [series, keys] = await Promise.all([
      api('GET', `/admin/v1/usage/series${query({ ...span, bucket })}`),
      api('GET', '/admin/v1/keys'),
    ]);
    // Totals over exactly the chart's window (the series aligns it to whole buckets).
    const usage = await api('GET', `/admin/v1/usage${query({ since: series.since, until: series.until, group_by: groupBy })}`);
    const names = keyNames(keys.keys);
    const groupName = (g) => (g === null || g === undefined ? `(no ${groupBy})` : groupBy === 'key' && names[g] ? `${names[g]} (${g})` : g);

    const controls = el('form', { class: 'row panel', id: 'spend-controls' },
      select('group_by', 'Group by', ['key', 'user', 'team', 'model'], groupBy),
      select('bucket', 'Bucket', ['hour', 'day'], bucket),
      select('range', 'Range', Object.keys(RANGES), range),
      select('metric', 'Metric', Object.keys(METRICS), metric, (k) => METRICS[k].label),
      select('chart', 'Chart', ['line', 'bar'], kind));
    controls.addEventListener('change', () => {
      const f = new FormData(controls);
      navigate('spend', Object.fromEntries(f.entries()));
    });

    const m = METRICS[metric];
    const all = (series.series || []).map((s) => ({ name: groupName(s.group), values: s.points.map(m.value), total: s.points.reduce((a, x) => a + m.value(x), 0) }));
    all.sort((a, b) => b.total - a.total);
    const shown = all.slice(0, 8);
    if (all.length > 8) {
      const rest = all.slice(8);
      shown.push({ name: `${rest.length} more`, values: rest[0].values.map((_, i) => rest.reduce((a, s) => a + s.values[i], 0)) });
    }
    const first = (series.series || [])[0];
    const labels = first ? first.points.map((pt) => bucketLabel(pt.start, bucket)) : [];
    const chartPanel = el('section', { class: 'panel', id: 'spend-chart' },
      el('h2', { text: `${m.label} per ${bucket}, by ${groupBy}` }),
      labels.length && shown.length ? chart(kind, shown, labels, m.fmt, `${m.label} per ${bucket} by ${groupBy}`)
        : el('p', { class: 'muted', text: 'No usage in this window.' }));

    const totals = table([
      { key: 'group', label: groupBy, render: (r) => groupName(r.group) },
      { key: 'cost_usd', label: 'Cost', num: true, render: (r) => usd(r.cost_usd) },
      { key: 'input_tokens', label: 'Input tokens', num: true, render: (r) => int(r.input_tokens) },
      { key: 'output_tokens', label: 'Output tokens', num: true, render: (r) => int(r.output_tokens) },
      { key: 'cached_input_tokens', label: 'Cached input', num: true, render: (r) => int(r.cached_input_tokens) },
      { key: 'calls', label: 'Calls', num: true, render: (r) => int(r.calls) },
      { key: 'failed_calls', label: 'Failed', num: true, render: (r) => int(r.failed_calls) },
    ], usage.rows || [], { id: 'usage-totals', sortKey: 'cost_usd', empty: 'No usage in this window.' });

    const capped = keys.keys.filter((k) => k.daily_cap_usd !== null || k.monthly_cap_usd !== null);
    const caps = table([
      { key: 'name', label: 'Key', render: (k) => el('span', {}, k.name, ' ', el('code', { class: 'muted', text: k.key_id })) },
      { key: 'effective_status', label: 'Status', render: (k) => badge(k.effective_status) },
      { key: 'day', label: 'Today (UTC)', value: (k) => ratio(k.spend_day_usd, k.daily_cap_usd), render: (k) => capBar(k.spend_day_usd, k.daily_cap_usd, 'daily cap', k.key_id) },
      { key: 'month', label: 'This month (UTC)', value: (k) => ratio(k.spend_month_usd, k.monthly_cap_usd), render: (k) => capBar(k.spend_month_usd, k.monthly_cap_usd, 'monthly cap', k.key_id) },
    ], capped, { id: 'caps', sortKey: 'day', empty: 'No key has a daily or monthly cap.' });

    fill(main, 
      el('h1', { text: 'Spend' }),
      controls,
      chartPanel,
      el('h2', { text: 'Caps (dashed marks: the 80 % and 95 % alerts)' }),
      el('div', { class: 'caps' }, caps),
      el('h2', { text: `Totals ${when(usage.since)} – ${when(usage.until)}` }),
      totals);
  }

  function ratio(spent, cap) {
    return cap === null || cap === undefined ? null : Number(spent) / Number(cap);
  }

  function keyNames(keys) {
    const out = {};
    for (const k of keys) out[k.key_id] = k.name;
    return out;
  }

  function bucketLabel(iso, bucket) {
    const d = new Date(iso);
    const day = d.toISOString().slice(5, 10);
    const hour = d.toISOString().slice(11, 16);
    return bucket === 'hour'
      ? { short: hour === '00:00' ? day : hour, long: `${d.toISOString().slice(0, 10)} ${hour} UTC` }
      : { short: day, long: d.toISOString().slice(0, 10) };
  }

  function select(name, label, options, current, text) {
    return el('label', {}, label,
      el('select', { name, id: `f-${name}` }, options.map((o) => el('option', { value: o, selected: o === current, text: text ? text(o) : o }))));
  }

  async function pageKeys(main) {
    const section = el('div', { id: 'keys-table' }, el('p', { class: 'muted', text: 'Loading…' }));
    const notices = el('div', { id: 'key-notices' });
    const issue = can('operator') ? issueForm(notices, reload) : null;
    fill(main, 
      el('h1', { text: 'Keys' }),
      can('operator') ? null : el('p', { class: 'muted', text: `Your role (${state.session.role}) can read keys; issuing, rotating and revoking need operator.` }),
      notices,
      issue,
      section);

    async function reload() {
      const data = await api('GET', '/admin/v1/keys');
      section.replaceChildren(keysTable(data.keys, notices, reload));
    }
    await reload();
  }

  function issueForm(notices, reload) {
    const field = (name, label, attrs) => el('label', {}, label, el('input', { name, id: `k-${name}`, ...(attrs || {}) }));
    const form = el('form', { class: 'panel', id: 'issue-form' },
      el('h2', { text: 'Issue a key' }),
      el('div', { class: 'row' },
        field('name', 'Name', { required: true, placeholder: 'ci-runner' }),
        field('workspace', 'Workspace (absolute path)', { required: true, placeholder: '/srv/app', pattern: '/.*' }),
        field('allowed_models', 'Models (comma-separated, empty = all)'),
        field('daily_cap_usd', 'Daily cap (USD)', { inputmode: 'decimal' }),
        field('monthly_cap_usd', 'Monthly cap (USD)', { inputmode: 'decimal' }),
        field('rpm', 'Requests/min', { type: 'number', min: 1 }),
        field('user', 'User'),
        field('team', 'Team'),
        el('label', {}, 'Tier', el('select', { name: 'customer_tier', id: 'k-customer_tier' }, ['', 'trial', 'paid', 'internal'].map((t) => el('option', { value: t, text: t || '—' })))),
        field('expires_in', 'Expires in (e.g. 30d; empty = never)', { pattern: '\\s*[0-9]+[smhdw]?\\s*' }),
        el('button', { type: 'submit', id: 'issue-submit', text: 'Issue key' })));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      clearError();
      const f = new FormData(form);
      const text = (k) => (f.get(k) || '').trim();
      const body = { name: text('name'), workspace: text('workspace') };
      const models = text('allowed_models').split(',').map((s) => s.trim()).filter(Boolean);
      if (models.length) body.allowed_models = models;
      for (const k of ['daily_cap_usd', 'monthly_cap_usd', 'user', 'team', 'customer_tier', 'expires_in']) if (text(k)) body[k] = text(k);
      if (text('rpm')) body.rpm = Number(text('rpm'));
      try {
        const created = await api('POST', '/admin/v1/keys', body);
        notices.replaceChildren(secretPanel(`Key ${created.key.name} (${created.key_id}) issued. Its token:`, created.token));
        form.reset();
        await reload();
      } catch (e) {
        showError(e);
      }
    });
    return form;
  }

  function keysTable(keys, notices, reload) {
    const actions = (k) => {
      if (!can('operator') || k.effective_status !== 'active') return '';
      return el('span', { class: 'actions' },
        el('button', { type: 'button', class: 'small secondary', 'data-action': 'rotate', text: 'Rotate', onclick: () => rotatePanel(k, notices, reload) }),
        el('button', {
          type: 'button', class: 'small danger', 'data-action': 'revoke', text: 'Revoke',
          onclick: async () => {
            if (!window.confirm(`Revoke key ${k.name} (${k.key_id})? Clients using it are refused within seconds. This cannot be undone.`)) return;
            clearError();
            try {
              const r = await api('POST', `/admin/v1/keys/${encodeURIComponent(k.key_id)}/revoke`);
              notices.replaceChildren(el('div', { class: 'banner info', role: 'status', text: `Key ${k.key_id} revoked at ${when(r.revoked_at)}.` }));
              await reload();
            } catch (e) {
              showError(e);
            }
          },
        }));
    };
    return table([
      { key: 'name', label: 'Name' },
      { key: 'actions', label: '', sortable: false, render: actions },
      { key: 'key_id', label: 'Key id', render: (k) => el('code', { text: k.key_id }) },
      { key: 'workspace_path', label: 'Workspace' },
      { key: 'status', label: 'Status', render: (k) => badge(k.status) },
      { key: 'effective_status', label: 'Effective', render: (k) => badge(k.effective_status) },
      { key: 'owner', label: 'User · team · tier', value: (k) => [k.user_id, k.team_id, k.customer_tier].filter(Boolean).join(' · ') || null },
      { key: 'allowed_models', label: 'Models', value: (k) => (k.allowed_models || []).join(', '), render: (k) => (k.allowed_models ? k.allowed_models.join(', ') : 'all') },
      { key: 'daily_cap_usd', label: 'Daily cap', num: true, value: (k) => (k.daily_cap_usd === null ? null : Number(k.daily_cap_usd)), render: (k) => (k.daily_cap_usd === null ? '—' : usd(k.daily_cap_usd)) },
      { key: 'monthly_cap_usd', label: 'Monthly cap', num: true, value: (k) => (k.monthly_cap_usd === null ? null : Number(k.monthly_cap_usd)), render: (k) => (k.monthly_cap_usd === null ? '—' : usd(k.monthly_cap_usd)) },
      { key: 'spend_day_usd', label: 'Spend today', num: true, render: (k) => usd(k.spend_day_usd) },
      { key: 'spend_month_usd', label: 'Spend month', num: true, render: (k) => usd(k.spend_month_usd) },
      { key: 'created_at', label: 'Created', render: (k) => when(k.created_at) },
      { key: 'grace_period_until', label: 'Grace until', render: (k) => (k.grace_period_until ? when(k.grace_period_until) : '—') },
      { key: 'expires_at', label: 'Expires', render: (k) => (k.expires_at ? when(k.expires_at) : 'never') },
    ], keys, { id: 'keys', sortKey: 'created_at', rowId: (k) => k.key_id, empty: 'No keys.' });
  }

  function rotatePanel(k, notices, reload) {
    const grace = el('input', { name: 'grace_period', id: 'rotate-grace', value: '24h', required: true, pattern: '\\s*0*[1-9][0-9]{0,4}[smhdw]?\\s*', title: 'seconds, or 30m, 24h, 7d, 2w' });
    const form = el('form', { class: 'panel', id: 'rotate-form' },
      el('h2', { text: `Rotate ${k.name} (${k.key_id})` }),
      el('p', { class: 'muted', text: 'The successor inherits scope, caps, tags and spend; the old token keeps working until the grace period ends.' }),
      el('div', { class: 'row' },
        el('label', {}, 'Grace period', grace),
        el('button', { type: 'submit', id: 'rotate-submit', text: 'Rotate' }),
        el('button', { type: 'button', class: 'secondary', text: 'Cancel', onclick: () => form.remove() })));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      clearError();
      try {
        const r = await api('POST', `/admin/v1/keys/${encodeURIComponent(k.key_id)}/rotate`, { grace_period: grace.value.trim() });
        notices.replaceChildren(secretPanel(`Key ${k.key_id} rotated: successor ${r.new_key_id}; the old token works until ${when(r.grace_period_until)}. The new token:`, r.new_token));
        await reload();
      } catch (e) {
        showError(e);
      }
    });
    notices.replaceChildren(form);
    grace.focus();
  }

  function localInput(iso) {
    // <input type=datetime-local> works in local time without a zone.
    if (!iso) return '';
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return '';
    const pad = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  async function pageAudit(main, route) {
    const p = route.params;
    const since = p.get('since') || '';
    const until = p.get('until') || '';
    const type = p.get('type') || '';
    const filter = { since: since || undefined, until: until || undefined, type: type || undefined };
    const form = el('form', { class: 'row panel', id: 'audit-filters' },
      el('label', {}, 'Since (local time)', el('input', { type: 'datetime-local', name: 'since', value: localInput(since) })),
      el('label', {}, 'Until (local time)', el('input', { type: 'datetime-local', name: 'until', value: localInput(until) })),
      el('label', {}, 'Type', el('select', { name: 'type', id: 'f-type' }, el('option', { value: '', text: 'all audit types' }), AUDIT_TYPES.map((t) => el('option', { value: t, selected: t === type, text: t })))),
      el('button', { type: 'submit', text: 'Apply' }),
      el('span', { class: 'muted small', text: 'Default window: the last 7 days.' }));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const f = new FormData(form);
      const toIso = (v) => (v ? isoSeconds(new Date(v)) : '');
      navigate('audit', { since: toIso(f.get('since')), until: toIso(f.get('until')), type: f.get('type') });
    });
    const exportButton = (format) => el('button', {
      type: 'button', class: 'secondary', id: `export-${format}`, text: `Export ${format.toUpperCase()}`,
      onclick: () => download(`/admin/v1/audit/export${query({ format, ...filter })}`, `metis-audit.${format}`),
    });
    const [events, verify] = await Promise.all([
      api('GET', `/admin/v1/audit${query(filter)}`),
      api('GET', '/admin/v1/audit/verify').catch((e) => ({ error: e })),
    ]);
    const rows = events.events || [];
    fill(main, 
      el('h1', { text: 'Audit' }),
      chainStatus(verify),
      form,
      el('div', { class: 'row' }, exportButton('jsonl'), exportButton('csv'),
        el('span', { class: 'muted small', text: `${rows.length} events, ${when(events.since)} – ${when(events.until)}` })),
      el('h2', { text: 'Events' }),
      table([
        { key: 'timestamp', label: 'Time', render: (e) => when(e.timestamp) },
        { key: 'type', label: 'Type', render: (e) => el('code', { text: e.type }) },
        { key: 'actor', label: 'Actor' },
        { key: 'who', label: 'Admin', value: (e) => adminName(e.payload && e.payload.admin) },
        { key: 'subject', label: 'Key', value: (e) => auditKey(e.payload) },
        { key: 'payload', label: 'Payload', sortable: false, render: (e) => el('details', {}, el('summary', { text: summary(e.payload) }), el('pre', { text: JSON.stringify(e.payload, null, 2) })) },
      ], rows, { id: 'audit-events', sortKey: 'timestamp', rowId: (e) => e.id, empty: 'No audit events in this window.' }));
  }

  // The key an audit event is about (issue/revoke name one key, rotate names both).
  // Who made an admin change: email and subject for single sign-on identities (the subject
  // is the stable id), the subject alone otherwise.
  function adminName(admin) {
    if (!admin) return null;
    return admin.email && admin.email !== admin.sub ? `${admin.email} (${admin.sub})` : admin.sub;
  }

  function auditKey(p) {
    if (!p || typeof p !== 'object') return null;
    if (p.old_gateway_key_id) return `${p.old_gateway_key_id} → ${p.new_gateway_key_id}`;
    return p.gateway_key_id || p.key_id || null;
  }

  function summary(payload) {
    if (!payload || typeof payload !== 'object') return String(payload);
    const keys = Object.keys(payload).filter((k) => k !== 'prev_hash' && k !== 'hash');
    const s = keys.slice(0, 4).map((k) => `${k}=${typeof payload[k] === 'object' ? '…' : payload[k]}`).join(' ');
    return s.length > 90 ? `${s.slice(0, 89)}…` : s || '{}';
  }

  function chainStatus(v) {
    if (v.error) return el('section', { class: 'panel', id: 'chain-status' }, el('h2', { text: 'Audit chain' }), el('p', { class: 'banner error', text: v.error.message }));
    // Everything else the verification reports (e.g. where the chain first breaks).
    const details = Object.entries(v).filter(([k]) => !['ok', 'events_checked', 'checked_at'].includes(k));
    const show = (val) => (val === null ? 'none' : typeof val === 'object' ? JSON.stringify(val) : String(val));
    return el('section', { class: 'panel', id: 'chain-status', 'data-ok': String(v.ok) },
      el('h2', { text: 'Audit chain' }),
      el('p', {}, v.ok ? badge('intact', 'ok') : badge('broken', 'bad'), ` ${int(v.events_checked)} events checked at ${when(v.checked_at)}`),
      details.length ? el('dl', { class: 'facts' }, details.flatMap(([k, val]) => [el('dt', { text: k.replace(/_/g, ' ') }), el('dd', {}, el('code', { text: show(val) }))])) : null);
  }

  async function download(path, filename) {
    clearError();
    try {
      const resp = await request('GET', path);
      const blob = await resp.blob();
      const url = URL.createObjectURL(blob);
      const a = el('a', { href: url, download: filename, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (e) {
      showError(e);
    }
  }

  async function pageSessions(main, route) {
    if (route.rest.length) return pageSessionTree(main, route.rest.join('/'));
    const p = route.params;
    const workspace = p.get('workspace') || '';
    const limit = p.get('limit') || '100';
    const form = el('form', { class: 'row panel', id: 'session-filters' },
      el('label', {}, 'Workspace', el('input', { name: 'workspace', value: workspace, placeholder: 'all' })),
      el('label', {}, 'Limit', el('input', { name: 'limit', type: 'number', min: 1, value: limit })),
      el('button', { type: 'submit', text: 'Apply' }));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      navigate('sessions', Object.fromEntries(new FormData(form).entries()));
    });
    const data = await api('GET', `/admin/v1/sessions${query({ workspace, limit })}`);
    const sessions = Array.isArray(data) ? data : data.sessions || [];
    fill(main, 
      el('h1', { text: 'Sessions' }),
      form,
      table([
        { key: 'id', label: 'Session', value: sessionId, render: (s) => el('a', { href: `#/sessions/${encodeURIComponent(sessionId(s))}`, text: sessionId(s) }) },
        { key: 'workspace_path', label: 'Workspace' },
        { key: 'active_model', label: 'Model' },
        { key: 'turns', label: 'Turns', num: true, value: turns, render: (s) => int(turns(s)) },
        { key: 'cost', label: 'Cost', num: true, value: cost, render: (s) => usd(cost(s)) },
        { key: 'is_worker', label: 'Worker', render: (s) => (s.is_worker ? 'worker' : '') },
        { key: 'parent_session_id', label: 'Parent', render: (s) => (s.parent_session_id ? el('a', { href: `#/sessions/${encodeURIComponent(s.parent_session_id)}`, text: s.parent_session_id }) : '—') },
        { key: 'updated_at', label: 'Updated', render: (s) => when(s.updated_at) },
      ], sessions, { id: 'sessions', sortKey: 'updated_at', rowId: sessionId, empty: 'No sessions.' }));
  }

  const sessionId = (s) => s.id || s.session_id;
  const turns = (s) => Number(s.turn_count !== undefined ? s.turn_count : s.turns) || 0;
  const cost = (s) => Number(s.cost_so_far_usd !== undefined ? s.cost_so_far_usd : s.cost_usd) || 0;

  async function pageSessionTree(main, id) {
    const tree = await api('GET', `/admin/v1/sessions/${encodeURIComponent(id)}`);
    const root = tree.session ? { ...tree.session, ...tree } : tree;
    const total = (n) => (n.subtree_cost_usd !== undefined ? Number(n.subtree_cost_usd) : cost(n) + (n.children || []).reduce((a, c) => a + total(c), 0));
    const node = (n) => {
      const s = n.session ? { ...n.session, ...n } : n;
      const kids = s.children || [];
      return el('li', { 'data-session': sessionId(s) },
        el('div', { class: 'node' },
          el('span', { class: 'id', text: sessionId(s) }),
          s.is_worker ? badge('worker', 'idle') : null,
          el('span', { text: `turns ${int(turns(s))}` }),
          el('span', { text: `cost ${usd(cost(s))}` }),
          kids.length ? el('span', { class: 'muted', text: `with workers ${usd(total(s))}` }) : null,
          s.active_model ? el('span', { class: 'muted', text: s.active_model }) : null,
          s.parent_tool_use_id ? el('span', { class: 'muted small', text: `tool use ${s.parent_tool_use_id}` }) : null,
          el('span', { class: 'muted small', text: `${when(s.created_at)} → ${when(s.updated_at)}` })),
        kids.length ? el('ul', {}, kids.map(node)) : null);
    };
    fill(main, 
      el('p', {}, el('a', { href: '#/sessions', text: '← all sessions' })),
      el('h1', { text: `Session ${sessionId(root)}` }),
      el('p', { class: 'muted', text: `Workspace ${root.workspace_path || '—'}; ${usd(total(root))} in total over the session and its workers.` }),
      el('section', { class: 'panel' }, el('ul', { class: 'tree', id: 'session-tree' }, node(root))));
  }

  // ---------- routing ----------

  const PAGES = { overview: pageOverview, spend: pageSpend, keys: pageKeys, audit: pageAudit, sessions: pageSessions };

  function parseHash() {
    const h = location.hash.replace(/^#/, '');
    const [path, qs] = h.split('?');
    const parts = (path || '').split('/').filter(Boolean).map(decodeURIComponent);
    const page = PAGES[parts[0]] ? parts[0] : 'overview';
    return { page, rest: parts.slice(1), params: new URLSearchParams(qs || '') };
  }

  function navigate(page, params) {
    location.hash = `#/${page}${query(params)}`;
  }

  function later(msDelay, page) {
    const gen = state.generation;
    state.timers.push(setTimeout(() => {
      if (gen === state.generation && parseHash().page === page) render();
    }, msDelay));
  }

  async function render() {
    state.generation += 1;
    const gen = state.generation;
    state.timers.forEach(clearTimeout);
    state.timers = [];
    const route = parseHash();
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === route.page);
    const main = document.getElementById('main');
    // A fresh container per render: a page that finishes loading after the operator moved
    // on writes into a detached node, never over the current page.
    const target = el('main', { id: 'main', 'aria-live': 'polite', 'data-page': route.page }, el('p', { class: 'muted', text: 'Loading…' }));
    main.replaceWith(target);
    clearError();
    document.title = `Metis · ${route.page}`;
    try {
      await PAGES[route.page](target, route);
      if (gen === state.generation) target.setAttribute('data-ready', 'true');
    } catch (e) {
      if (gen !== state.generation) return;
      target.replaceChildren(el('h1', { text: route.page[0].toUpperCase() + route.page.slice(1) }));
      target.setAttribute('data-ready', 'error');
      showError(e);
    }
  }

  async function start() {
    try {
      const resp = await fetch('/ui/api/session', { credentials: 'same-origin', cache: 'no-store' });
      if (resp.status === 401) {
        location.replace('/ui/login');
        return;
      }
      state.session = await resp.json();
    } catch (e) {
      showError(e);
      return;
    }
    const s = state.session;
    // Single sign-on identities show their email and subject (the subject is what the audit
    // trail records); the static token shows its fixed subject.
    const who = s.email && s.email !== s.sub ? `${s.email} (${s.sub})` : s.sub;
    const identity = document.getElementById('identity');
    identity.textContent = `${who} · ${s.role}`;
    identity.title = `Signed in through ${s.method === 'oidc' ? 'single sign-on' : 'the admin token'} as ${s.sub}, role ${s.role}`;
    document.getElementById('logout').addEventListener('click', async () => {
      try {
        await request('POST', '/ui/logout');
      } catch (_) { /* the cookie is cleared either way below */ }
      state.session = null;
      location.replace('/ui/login');
    });
    window.addEventListener('hashchange', render);
    if (!location.hash) history.replaceState(null, '', '#/overview');
    render();
  }

  document.addEventListener('DOMContentLoaded', start);
}());
