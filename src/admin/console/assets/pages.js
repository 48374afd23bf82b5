// @ts-check
/**
 * The console's pages. Each one renders into the page element and returns a function that stops
 * its polling. Every change goes through confirmAction first, and every control that changes
 * something carries data-write (disabled for read-only tokens by the shell).
 */
import { api, canWrite, messageOf } from './api.js';
import { age, clearErrors, clock, confirmAction, field, h, replace, showError, svg, table, toast } from './dom.js';

/** @typedef {(root: HTMLElement, query: URLSearchParams) => () => void} Page */

/**
 * Run fn now and every ms while the page is shown (no overlap: the next run waits for this one).
 * @param {() => Promise<void>} fn
 * @param {number} ms
 */
function poll(fn, ms) {
  let alive = true;
  /** @type {number | undefined} */
  let timer;
  const run = async () => {
    try {
      await fn();
    } finally {
      if (alive) timer = window.setTimeout(run, ms);
    }
  };
  void run();
  return () => {
    alive = false;
    clearTimeout(timer);
  };
}

/**
 * The client's network as the limits count it: /24 for IPv4, /64 for IPv6.
 * @param {string} ip
 */
function prefixOf(ip) {
  const m = /^(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(ip);
  if (m) return `${m[1]}.${m[2]}.${m[3]}.0/24`;
  if (!ip.includes(':') || ip.includes('.')) return undefined;
  const [head = '', tail = ''] = ip.split('::');
  const left = head ? head.split(':') : [];
  const right = ip.includes('::') && tail ? tail.split(':') : [];
  const groups = ip.includes('::') ? [...left, ...new Array(Math.max(0, 8 - left.length - right.length)).fill('0'), ...right] : left;
  if (groups.length !== 8 || !groups.every((g) => /^[0-9a-f]{1,4}$/i.test(g))) return undefined;
  return `${groups.slice(0, 4).map((g) => g.toLowerCase().replace(/^0+(?=.)/, '')).join(':')}::/64`;
}

/**
 * @param {string} label
 * @param {string | number} value
 * @param {string} [testid]
 */
function tile(label, value, testid) {
  return h('div', { class: 'tile', 'data-testid': testid }, h('div', { class: 'tile-value' }, String(value)), h('div', { class: 'tile-label' }, label));
}

/** @param {{ minute: string, messages: number, refusals: number }[]} series */
function chart(series) {
  const W = 600;
  const H = 120;
  const n = Math.max(series.length, 1);
  const max = Math.max(1, ...series.map((m) => Math.max(m.messages, m.refusals)));
  const slot = W / 60;
  const bar = Math.max(1, slot / 2 - 1);
  const start = 60 - n;
  const bars = series.flatMap((m, i) => {
    const x = (start + i) * slot;
    const hm = (m.messages / max) * (H - 10);
    const hr = (m.refusals / max) * (H - 10);
    const label = `${clock(m.minute)}: ${m.messages} delivered, ${m.refusals} refused`;
    return [
      svg('rect', { class: 'bar-messages', x, y: H - hm, width: bar, height: hm }, svg('title', {}, label)),
      svg('rect', { class: 'bar-refusals', x: x + bar + 1, y: H - hr, width: bar, height: hr }, svg('title', {}, label)),
    ];
  });
  return h('figure', { class: 'chart' },
    svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': 'messages and refusals per minute, last hour' },
      svg('rect', { class: 'chart-bg', x: 0, y: 0, width: W, height: H }), bars),
    h('figcaption', {}, h('span', { class: 'key key-messages' }, 'delivered'), ' ', h('span', { class: 'key key-refusals' }, 'refused'), ` per minute, last hour (peak ${max})`),
  );
}

/**
 * @typedef {{ name: string, rev: number, version: string, behind: boolean, lastSeenSeconds: number, storeUp: boolean, admin?: string, self: boolean }} FleetGuard
 */

/**
 * The Fleet card (GET /api/v1/fleet): every live guard sharing the rules store, the rules version it
 * enforces, behind or not, and the age of its last heartbeat; one line for a guard on its own
 * rules directory.
 * @param {import('./api.js').ApiResult} r
 */
function fleetCard(r) {
  const card = (/** @type {(Node | string | null)[]} */ ...children) => h('section', { class: 'card', 'data-testid': 'fleet' }, h('h2', {}, 'Fleet'), ...children);
  if (!r.ok) return card(h('p', { class: 'error' }, messageOf(r)));
  const f = r.body;
  if (!f.shared) return card(h('p', { class: 'muted', 'data-testid': 'fleet-single' }, 'single guard (rules directory)'));
  /** @type {FleetGuard[]} */
  const guards = f.guards;
  const behind = guards.filter((g) => g.behind).length;
  const store = f.store ?? {};
  return card(
    h('p', { 'data-testid': 'fleet-store' },
      'Shared rules store ', h('code', {}, String(store.url ?? '')), ' ',
      h('span', { class: store.up ? 'badge ok' : 'badge bad' }, store.up ? 'up' : 'unreachable'),
      store.rev !== undefined ? ` · rev ${store.rev} (${String(store.version ?? '').slice(0, 12)})` : '',
      ` · ${guards.length} live guard${guards.length === 1 ? '' : 's'}, ${behind} behind`),
    table(['guard', 'rules version', 'state', 'last heartbeat'], guards.map((g) =>
      h('tr', { class: g.behind ? 'behind' : undefined, 'data-id': g.name, 'data-state': g.behind ? 'behind' : 'current' },
        h('td', { class: 'wrap' }, g.name, g.self ? h('span', { class: 'muted' }, ' (this guard)') : null),
        h('td', { class: 'nowrap' }, h('code', {}, `rev ${g.rev} · ${String(g.version).slice(0, 12)}`)),
        h('td', {}, h('span', { class: g.behind ? 'badge bad' : 'badge ok' }, g.behind ? 'behind' : 'current'), g.storeUp ? null : h('span', { class: 'muted' }, ' store unreachable')),
        h('td', { class: 'num' }, `${age(g.lastSeenSeconds)} ago`),
      ))),
  );
}

/** @type {Page} */
function nowPage(root) {
  const body = h('div', { class: 'now' }, h('p', { class: 'muted' }, 'loading…'));
  replace(root, h('h1', {}, 'Now'), body);
  return poll(async () => {
    const [r, fleet] = await Promise.all([api('GET', '/overview'), api('GET', '/fleet')]);
    if (!r.ok) return replace(body, h('p', { class: 'error' }, messageOf(r)));
    const o = r.body;
    const states = Object.entries(o.sessions.byState).map(([s, n]) => `${n} ${s}`).join(', ');
    replace(body,
      h('div', { class: 'tiles' },
        tile('sessions open', o.sessions.open, 'sessions-open'),
        tile('delivered / min', o.lastMinute.messages, 'messages-min'),
        tile('refused / min', o.lastMinute.refusals, 'refusals-min'),
        tile('bans in force', o.bans.active, 'bans-active'),
      ),
      states ? h('p', { class: 'muted' }, `sessions by state: ${states}`) : null,
      chart(o.perMinute),
      h('div', { class: 'cols' },
        h('section', {},
          h('h2', {}, 'Most refused clients, last hour'),
          table(['client', 'refusals'], o.lastHour.clients.map((/** @type {{key: string, count: number}} */ c) =>
            h('tr', {}, h('td', {}, h('a', { href: `#/refusals?client=${encodeURIComponent(c.key)}` }, c.key)), h('td', { class: 'num' }, c.count)))),
        ),
        h('section', {},
          h('h2', {}, 'Refusals by rule, last hour'),
          table(['rule', 'refusals'], o.lastHour.rules.map((/** @type {{key: string, count: number}} */ c) =>
            h('tr', {}, h('td', {}, h('a', { href: `#/refusals?rule=${encodeURIComponent(c.key)}` }, c.key)), h('td', { class: 'num' }, c.count)))),
        ),
      ),
      h('p', { class: 'muted' }, `Counted from the ${o.recentRefusals.held} most recent refusals kept in memory (of ${o.recentRefusals.total} since start; admin.recentRefusals = ${o.recentRefusals.capacity}).`),
      h('div', { class: 'cols' },
        h('section', {},
          h('h2', {}, 'Backends'),
          table(['backend', 'state', 'connections'], o.backends.map((/** @type {{name: string, up: boolean, connections: number}} */ b) =>
            h('tr', {}, h('td', {}, b.name), h('td', {}, h('span', { class: b.up ? 'badge ok' : 'badge bad' }, b.up ? 'up' : 'down')), h('td', { class: 'num' }, b.connections)))),
          o.pool.enabled
            ? h('p', { 'data-testid': 'pool' }, `Pool: ${o.pool.idle} idle, ${o.pool.lent} lent, ${o.pool.dedicated} dedicated, ${o.pool.opening} opening, ${o.pool.waiting} waiting (max ${o.pool.max}, min idle ${o.pool.minIdle})`)
            : h('p', { class: 'muted', 'data-testid': 'pool' }, 'Per-client mode: one backend connection per client (no pool).'),
        ),
        h('section', {},
          h('h2', {}, 'Limits'),
          h('dl', { class: 'facts' },
            h('dt', {}, 'limits'), h('dd', {}, o.limits.enabled ? 'on' : 'off'),
            h('dt', {}, 'store'), h('dd', {}, o.limits.store),
            h('dt', {}, 'state'), h('dd', {}, h('span', { class: o.limits.fallback ? 'badge bad' : 'badge ok' }, o.limits.fallback ? 'on local counters (shared store unreachable)' : 'healthy')),
            h('dt', {}, 'store errors'), h('dd', {}, String(o.limits.storeErrors)),
          ),
        ),
      ),
      fleetCard(fleet),
      h('p', { class: 'muted small' }, `updated ${clock(o.time)}`),
    );
  }, 2000);
}

// ─────────────────────────────── refusals ───────────────────────────────

const FILTERS = /** @type {const} */ (['client', 'sender', 'recipient', 'rule']);

/**
 * One move that fixes (or punishes) what a refusal shows, one confirmation away.
 * @param {string} label
 * @param {string} title
 * @param {string} detail
 * @param {() => Promise<import('./api.js').ApiResult>} run
 * @param {() => void} after
 */
function move(label, title, detail, run, after) {
  return h('button', {
    type: 'button', 'data-write': '1', class: 'move',
    onclick: async () => {
      if (!(await confirmAction(title, detail, label))) return;
      const r = await run();
      if (r.ok) toast(`done: ${title}`);
      else toast(messageOf(r), 'error');
      after();
    },
  }, label);
}

/**
 * @param {HTMLElement} box
 * @param {any} e a refusal
 */
async function showWhy(box, e) {
  const facts = [
    ['time', new Date(e.time).toLocaleString()], ['client', e.clientIp], ['listener', e.listener], ['session', e.sessionId],
    ['HELO', e.helo], ['AUTH user', e.authUser], ['sender', e.mailFrom === '' ? '<>' : e.mailFrom], ['recipient', e.rcpt],
    ['reply', e.reply], ['rule', e.ruleId],
  ].filter(([, v]) => v !== undefined);
  const why = h('div', { class: 'why', 'data-testid': 'why' }, h('p', { class: 'muted' }, 'asking the judge…'));
  const prefix = prefixOf(e.clientIp);
  const domain = typeof e.rcpt === 'string' && e.rcpt.includes('@') ? e.rcpt.slice(e.rcpt.lastIndexOf('@') + 1) : undefined;
  const refresh = () => void judge();
  const moves = h('div', { class: 'moves' },
    move(`Trust ${e.clientIp}`, `Let ${e.clientIp} relay`, `Adds ${e.clientIp} to relay-networks: it may then send mail to any domain.`,
      () => api('POST', '/rules/relay-networks', { body: { value: e.clientIp } }), refresh),
    prefix ? move(`Trust ${prefix}`, `Let ${prefix} relay`, `Adds ${prefix} to relay-networks: every address in it may then send mail to any domain.`,
      () => api('POST', '/rules/relay-networks', { body: { value: prefix } }), refresh) : null,
    move(`Ban ${e.clientIp} for 1 h`, `Ban ${e.clientIp} for one hour`, `Its connections get 554 at once, before the backend is touched.`,
      () => api('POST', '/bans', { body: { target: e.clientIp, duration: '1h', reason: `console: refused by ${e.ruleId}` } }), refresh),
    prefix ? move(`Ban ${prefix} for 1 h`, `Ban ${prefix} for one hour`, `Connections from every address in ${prefix} get 554 at once.`,
      () => api('POST', '/bans', { body: { target: prefix, duration: '1h', reason: `console: refused by ${e.ruleId}` } }), refresh) : null,
    domain ? move(`Accept domain ${domain}`, `Accept mail for ${domain}`, `Adds ${domain} to accepted-domains: the backend must really serve it.`,
      () => api('POST', '/rules/accepted-domains', { body: { value: domain } }), refresh) : null,
  );
  replace(box,
    h('h2', {}, `Refusal #${e.id}`),
    h('dl', { class: 'facts' }, facts.flatMap(([k, v]) => [h('dt', {}, String(k)), h('dd', {}, String(v))])),
    h('h3', {}, 'Why — the same judge, against the rules in force now'),
    why,
    h('h3', {}, 'Fix it'),
    moves,
  );
  async function judge() {
    const body = {
      clientIp: e.clientIp,
      mailFrom: e.mailFrom === undefined || e.mailFrom === '' ? '<>' : e.mailFrom,
      rcptTo: e.rcpt ?? 'postmaster',
      listener: e.listener,
      ...(e.helo ? { helo: String(e.helo).slice(0, 255) } : {}),
      ...(e.authUser ? { authUser: String(e.authUser).slice(0, 255) } : {}),
    };
    const r = await api('POST', '/check', { body });
    if (!r.ok) return replace(why, h('p', { class: 'error' }, messageOf(r)));
    replace(why, verdictView(r.body));
  }
  await judge();
}

/** @param {any} c a /check answer */
function verdictView(c) {
  return h('div', {},
    h('p', { class: `verdict verdict-${c.verdict}`, 'data-testid': 'verdict' }, `${c.verdict} by ${c.ruleId}: ${c.reply}`),
    c.ban ? h('p', {}, `banned: ${c.ban.target} (${c.ban.reason})${c.ban.expiresAt ? ` until ${new Date(c.ban.expiresAt).toLocaleString()}` : ''}`) : null,
    c.lookup ? h('p', {}, `directory lookup: ${c.lookup.result} (${c.lookup.source})`) : null,
    table(['rule', 'result', 'note'], c.trace.map((/** @type {{ruleId: string, result: string, note?: string}} */ s) =>
      h('tr', { class: `step-${s.result}` }, h('td', {}, s.ruleId), h('td', {}, s.result), h('td', {}, s.note ?? '')))),
    c.warnings.length > 0 ? h('p', { class: 'muted' }, `warn-mode rules that would refuse: ${c.warnings.map((/** @type {{ruleId: string, reply: string}} */ w) => `${w.ruleId} (${w.reply})`).join(', ')}`) : null,
  );
}

/** @type {Page} */
function refusalsPage(root, query) {
  const inputs = Object.fromEntries(FILTERS.map((f) => [f, /** @type {HTMLInputElement} */ (h('input', { name: f, type: 'search', value: query.get(f) ?? '', autocomplete: 'off', spellcheck: 'false' }))]));
  const filters = h('form', { class: 'filters', role: 'search', onsubmit: (/** @type {Event} */ ev) => ev.preventDefault() }, FILTERS.map((f) => field(f, /** @type {HTMLElement} */ (inputs[f]))));
  const status = h('p', { class: 'muted small' });
  const list = h('div', { 'data-testid': 'refusals' });
  const detail = h('aside', { class: 'detail', hidden: true });
  replace(root, h('h1', {}, 'Refusals'), filters, status, h('div', { class: 'split' }, list, detail));
  let selected = -1;
  let last = '';
  const fetchList = async () => {
    const q = new URLSearchParams();
    for (const f of FILTERS) {
      const v = /** @type {HTMLInputElement} */ (inputs[f]).value.trim();
      if (v) q.set(f, v);
    }
    q.set('limit', '200');
    const r = await api('GET', `/refusals?${q}`);
    if (!r.ok) return replace(list, h('p', { class: 'error' }, messageOf(r)));
    const key = JSON.stringify([r.body.total, q.toString(), selected]);
    replace(status, `${r.body.refusals.length} shown · ${r.body.held} held of the last ${r.body.capacity} · ${r.body.total} since start`);
    if (key === last) return;
    last = key;
    replace(list, table(['time', 'client', 'HELO', 'sender', 'recipient', 'reply', 'rule'], r.body.refusals.map((/** @type {any} */ e) =>
      h('tr', {
        class: e.id === selected ? 'row selected' : 'row', 'data-id': e.id, tabindex: 0,
        onclick: () => open(e), onkeydown: (/** @type {KeyboardEvent} */ ev) => { if (ev.key === 'Enter') open(e); },
      },
      h('td', { class: 'nowrap' }, clock(e.time)), h('td', { class: 'nowrap' }, e.clientIp), h('td', { class: 'wrap' }, e.helo ?? ''), h('td', { class: 'wrap' }, e.mailFrom === '' ? '<>' : e.mailFrom ?? ''),
      h('td', { class: 'wrap' }, e.rcpt ?? ''), h('td', {}, e.reply), h('td', {}, h('code', {}, e.ruleId)))), 'refusals'));
  };
  /** @param {any} e */
  const open = (e) => {
    selected = e.id;
    detail.hidden = false;
    last = '';
    void fetchList();
    void showWhy(detail, e);
  };
  let stop = poll(fetchList, 1000);
  filters.addEventListener('input', () => {
    last = '';
    const q = new URLSearchParams();
    for (const f of FILTERS) if (/** @type {HTMLInputElement} */ (inputs[f]).value) q.set(f, /** @type {HTMLInputElement} */ (inputs[f]).value);
    history.replaceState(null, '', `#/refusals${q.size > 0 ? `?${q}` : ''}`);
    stop();
    stop = poll(fetchList, 1000);
  });
  return () => stop();
}

// ─────────────────────────────── sessions ───────────────────────────────

/** @type {Page} */
function sessionsPage(root) {
  const list = h('div', { 'data-testid': 'sessions' });
  replace(root, h('h1', {}, 'Sessions'), list);
  return poll(async () => {
    const r = await api('GET', '/sessions');
    if (!r.ok) return replace(list, h('p', { class: 'error' }, messageOf(r)));
    replace(list, table(['client', 'listener', 'HELO', 'sender', 'AUTH', 'TLS', 'state', 'age', 'msgs', 'backend', ''], r.body.sessions.map((/** @type {any} */ s) =>
      h('tr', { 'data-id': s.id },
        h('td', {}, `${s.clientIp}:${s.clientPort}`), h('td', {}, s.listener), h('td', { class: 'wrap' }, s.helo ?? ''), h('td', { class: 'wrap' }, s.mailFrom ?? ''),
        h('td', {}, s.authUser ?? ''), h('td', {}, s.tls ? 'yes' : 'no'), h('td', {}, s.state), h('td', { class: 'num' }, age(s.ageSeconds)), h('td', { class: 'num' }, s.messages),
        h('td', {}, s.backendSession ?? ''),
        h('td', {}, h('button', {
          type: 'button', 'data-write': '1', class: 'danger',
          onclick: async () => {
            if (!(await confirmAction(`Close the session of ${s.clientIp}`, 'It gets 421 and is disconnected; a transaction in progress is abandoned.', 'Close'))) return;
            const d = await api('DELETE', `/sessions/${encodeURIComponent(s.id)}`);
            toast(d.ok ? `closed session ${s.id}` : messageOf(d), d.ok ? 'ok' : 'error');
          },
        }, 'Close'))))));
  }, 2000);
}

// ─────────────────────────────── rules ───────────────────────────────

const STRING_LISTS = new Set(['accepted-domains', 'relay-networks', 'never-relay-networks']);

/**
 * Line diff (longest common subsequence) of two JSON values.
 * @param {unknown} before
 * @param {unknown} after
 */
function diffView(before, after) {
  const a = before === undefined ? [] : JSON.stringify(before, null, 2).split('\n');
  const b = after === undefined ? [] : JSON.stringify(after, null, 2).split('\n');
  /** @type {HTMLElement[]} */
  const out = [];
  if (a.length * b.length > 250_000) {
    for (const l of a) out.push(h('div', { class: 'del' }, `- ${l}`));
    for (const l of b) out.push(h('div', { class: 'add' }, `+ ${l}`));
  } else {
    const L = Array.from({ length: a.length + 1 }, () => new Array(b.length + 1).fill(0));
    for (let i = a.length - 1; i >= 0; i--) for (let j = b.length - 1; j >= 0; j--) L[i][j] = a[i] === b[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
    let i = 0;
    let j = 0;
    while (i < a.length || j < b.length) {
      if (i < a.length && j < b.length && a[i] === b[j]) { out.push(h('div', { class: 'same' }, `  ${a[i]}`)); i++; j++; }
      else if (j < b.length && (i >= a.length || L[i][j + 1] >= L[i + 1][j])) { out.push(h('div', { class: 'add' }, `+ ${b[j]}`)); j++; }
      else { out.push(h('div', { class: 'del' }, `- ${a[i]}`)); i++; }
    }
  }
  return h('pre', { class: 'diff', 'data-testid': 'diff' }, out);
}

/**
 * @param {string} name
 * @param {{ value: any, etag: string }} s
 * @param {() => void} reload
 */
function sectionCard(name, s, reload) {
  const conflict = h('div', { class: 'conflict', role: 'alert', hidden: true },
    'Someone else changed this — reload. ',
    h('button', { type: 'button', onclick: reload }, 'Reload'));
  /** @param {import('./api.js').ApiResult} r @param {HTMLElement} form */
  const answer = (r, form) => {
    if (r.ok) {
      toast(`${name} saved`);
      reload();
      return;
    }
    if (r.status === 412) {
      conflict.hidden = false;
      return;
    }
    const detail = Array.isArray(r.body?.errors) ? r.body.errors.map((/** @type {any} */ e) => `${e.path ?? ''} ${e.message}`.trim()).join('; ') : '';
    showError(form, detail && !String(r.body?.message).includes(detail) ? `${messageOf(r)} (${detail})` : messageOf(r), { value: 'value' }, 'value');
  };
  if (STRING_LISTS.has(name)) {
    const input = h('input', { name: 'value', type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: name === 'accepted-domains' ? 'example.org' : '198.51.100.0/24' });
    const form = h('form', { class: 'inline', 'data-section': name },
      field('add', input),
      h('div', { class: 'form-error', role: 'alert' }),
      h('button', { type: 'submit', 'data-write': '1' }, 'Add'));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      clearErrors(form);
      const value = /** @type {HTMLInputElement} */ (input).value.trim();
      if (!value) return;
      answer(await api('POST', `/rules/${name}`, { body: { value }, ifMatch: s.etag }), form);
    });
    return h('section', { class: 'card', 'data-section': name },
      h('h2', {}, name), conflict,
      h('ul', { class: 'items' }, s.value.length === 0 ? h('li', { class: 'muted' }, '(empty)') : s.value.map((/** @type {string} */ item) =>
        h('li', {}, h('code', {}, item), h('button', {
          type: 'button', 'data-write': '1', class: 'small danger',
          onclick: async () => {
            if (!(await confirmAction(`Remove ${item} from ${name}`, 'The change applies to new decisions at once.', 'Remove'))) return;
            answer(await api('DELETE', `/rules/${name}/${encodeURIComponent(item)}`, { ifMatch: s.etag }), form);
          },
        }, 'Remove')))),
      form);
  }
  const text = /** @type {HTMLTextAreaElement} */ (h('textarea', { name: 'value', rows: Math.min(24, JSON.stringify(s.value, null, 2).split('\n').length + 1), spellcheck: 'false' }));
  text.value = JSON.stringify(s.value, null, 2);
  const form = h('form', { 'data-section': name }, field('JSON', text), h('div', { class: 'form-error', role: 'alert' }), h('button', { type: 'submit', 'data-write': '1' }, 'Save'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    let body;
    try {
      body = JSON.parse(text.value);
    } catch (err) {
      showError(form, `not valid JSON: ${String(err)}`, {}, 'value');
      return;
    }
    if (!(await confirmAction(`Replace the ${name} section`, 'The new rules apply to new decisions at once (the old version stays in the history).', 'Save'))) return;
    answer(await api('PUT', `/rules/${name}`, { body, ifMatch: s.etag }), form);
  });
  return h('section', { class: 'card', 'data-section': name }, h('h2', {}, name), conflict, form);
}

/** @type {Page} */
function rulesPage(root) {
  const sections = h('div', { class: 'sections' });
  const history = h('section', { class: 'card', 'data-testid': 'history' });
  const audit = h('section', { class: 'card', 'data-testid': 'audit' });
  replace(root, h('h1', {}, 'Rules'), sections, history, audit);
  let alive = true;
  const load = async () => {
    const [rules, hist, aud] = await Promise.all([api('GET', '/rules'), api('GET', '/rules/history'), api('GET', '/audit?limit=200')]);
    if (!alive) return;
    if (!rules.ok) return replace(sections, h('p', { class: 'error' }, messageOf(rules)));
    replace(sections, h('p', { class: 'muted small' }, `version ${rules.body.version}`),
      Object.entries(rules.body.sections).map(([name, s]) => sectionCard(name, /** @type {any} */ (s), () => void load())));
    const entries = aud.ok ? aud.body.entries : [];
    const current = hist.ok ? hist.body.versions[0]?.id : undefined;
    replace(history, h('h2', {}, 'History'), hist.ok ? table(['time', 'by', 'operation', 'sections', 'version', ''], hist.body.versions.map((/** @type {any} */ v) => {
      const changes = entries.filter((/** @type {any} */ a) => a.version === v.id);
      const diffs = h('div', { class: 'diffs', hidden: true },
        changes.length > 0
          ? changes.map((/** @type {any} */ a) => h('div', {}, h('h4', {}, `${a.section} (${a.operation})`), diffView(a.before, a.after)))
          : h('p', { class: 'muted small' }, v.operation === 'load' ? 'loaded from the rules files at start (no recorded change)' : 'no change recorded in the newest 200 audit entries'));
      return h('tr', { 'data-id': v.id },
        h('td', {}, new Date(v.time).toLocaleString()), h('td', {}, v.actor), h('td', {}, v.operation), h('td', {}, v.sections.join(', ')),
        h('td', {}, h('code', {}, String(v.id).slice(0, 12))),
        h('td', { class: 'actions' },
          h('button', { type: 'button', class: 'small', onclick: () => { diffs.hidden = !diffs.hidden; } }, 'Diff'),
          v.id === current ? h('span', { class: 'badge ok' }, 'current') : h('button', {
            type: 'button', class: 'small danger', 'data-write': '1',
            onclick: async () => {
              if (!(await confirmAction(`Roll back to ${String(v.id).slice(0, 12)}`, `The rules as they were at ${new Date(v.time).toLocaleString()} become current again (recorded as a new version).`, 'Roll back'))) return;
              const r = await api('POST', '/rules/rollback', { body: { version: v.id } });
              toast(r.ok ? 'rolled back' : messageOf(r), r.ok ? 'ok' : 'error');
              void load();
            },
          }, 'Roll back'),
          diffs));
    })) : h('p', { class: 'error' }, messageOf(hist)));
    replace(audit, h('h2', {}, 'Audit log'), aud.ok ? table(['time', 'by', 'section', 'operation', 'change'], entries.map((/** @type {any} */ a) => {
      const d = h('details', {}, h('summary', {}, 'diff'), diffView(a.before, a.after));
      return h('tr', {}, h('td', {}, new Date(a.time).toLocaleString()), h('td', {}, a.actor), h('td', {}, a.section), h('td', {}, a.operation), h('td', {}, d));
    })) : h('p', { class: 'error' }, messageOf(aud)));
  };
  void load();
  return () => {
    alive = false;
  };
}

// ─────────────────────────────── bans ───────────────────────────────

/** @type {Page} */
function bansPage(root) {
  const list = h('div', { 'data-testid': 'bans' });
  const target = h('input', { name: 'target', type: 'text', required: true, autocomplete: 'off', spellcheck: 'false', placeholder: '203.0.113.7 or 203.0.113.0/24' });
  const duration = h('input', { name: 'duration', type: 'text', value: '1h', autocomplete: 'off', placeholder: '30m, 1h, 7d; empty = until lifted' });
  const reason = h('input', { name: 'reason', type: 'text', required: true, autocomplete: 'off', placeholder: 'relay probing' });
  const form = h('form', { class: 'ban-form' },
    field('address or network', target), field('duration', duration), field('reason', reason),
    h('div', { class: 'form-error', role: 'alert' }),
    h('button', { type: 'submit', 'data-write': '1', class: 'danger' }, 'Ban'));
  replace(root, h('h1', {}, 'Bans'), form, list);
  const refresh = async () => {
    const r = await api('GET', '/bans');
    if (!r.ok) return replace(list, h('p', { class: 'error' }, messageOf(r)));
    replace(list, table(['target', 'source', 'reason', 'since', 'until', ''], r.body.bans.map((/** @type {any} */ b) =>
      h('tr', { 'data-id': b.target },
        h('td', {}, h('code', {}, b.target)), h('td', {}, b.source), h('td', { class: 'wrap' }, b.reason), h('td', {}, new Date(b.createdAt).toLocaleString()),
        h('td', {}, b.expiresAt ? new Date(b.expiresAt).toLocaleString() : 'lifted by hand'),
        h('td', {}, h('button', {
          type: 'button', 'data-write': '1', class: 'small',
          onclick: async () => {
            if (!(await confirmAction(`Lift the ban of ${b.target}`, 'Its next connection is served again.', 'Lift'))) return;
            const d = await api('DELETE', `/bans/${encodeURIComponent(b.target)}`);
            toast(d.ok ? `lifted ${b.target}` : messageOf(d), d.ok ? 'ok' : 'error');
            void refresh();
          },
        }, 'Lift'))))));
  };
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    const t = /** @type {HTMLInputElement} */ (target).value.trim();
    const d = /** @type {HTMLInputElement} */ (duration).value.trim();
    const why = /** @type {HTMLInputElement} */ (reason).value.trim();
    if (!(await confirmAction(`Ban ${t}`, d ? `For ${d}: its connections get 554 at once.` : 'Until lifted: its connections get 554 at once.', 'Ban'))) return;
    const r = await api('POST', '/bans', { body: { target: t, reason: why, ...(d ? { duration: d } : {}) } });
    if (!r.ok) {
      const f = r.body?.code === 'RG_ERR_BANS_BAD_TARGET' ? 'target' : undefined;
      showError(form, messageOf(r), {}, f);
      return;
    }
    toast(`banned ${r.body.ban.target}`);
    /** @type {HTMLInputElement} */ (target).value = '';
    void refresh();
  });
  return poll(refresh, 5000);
}

// ─────────────────────────────── test an envelope ───────────────────────────────

/** @type {Page} */
function testPage(root, query) {
  /** @param {string} name @param {string} placeholder */
  const input = (name, placeholder) => h('input', { name, type: 'text', value: query.get(name) ?? '', placeholder, autocomplete: 'off', spellcheck: 'false' });
  const inputs = {
    clientIp: input('clientIp', '203.0.113.9'),
    helo: input('helo', 'mail.partner.example'),
    authUser: input('authUser', '(not authenticated)'),
    mailFrom: input('mailFrom', 'someone@partner.example or <>'),
    rcptTo: input('rcptTo', 'user@example.com'),
    listener: input('listener', '(first listener)'),
  };
  const result = h('div', { 'data-testid': 'check-result' });
  const form = h('form', { class: 'check-form' },
    field('client address', inputs.clientIp), field('HELO', inputs.helo), field('AUTH user', inputs.authUser),
    field('MAIL FROM', inputs.mailFrom), field('RCPT TO', inputs.rcptTo), field('listener', inputs.listener),
    h('div', { class: 'form-error', role: 'alert' }),
    h('button', { type: 'submit', class: 'primary' }, 'Judge'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    /** @type {Record<string, string>} */
    const body = {};
    for (const [k, el] of Object.entries(inputs)) {
      const v = /** @type {HTMLInputElement} */ (el).value.trim();
      if (v !== '' || k === 'mailFrom' || k === 'rcptTo' || k === 'clientIp') body[k] = v;
    }
    const r = await api('POST', '/check', { body });
    if (!r.ok) {
      replace(result);
      showError(form, messageOf(r));
      return;
    }
    replace(result, verdictView(r.body));
  });
  replace(root, h('h1', {}, 'Test an envelope'), h('p', { class: 'muted' }, 'The dry run of one transaction through the same judge the sessions use (rate limits are not consulted). Nothing is sent anywhere.'), form, result);
  return () => {};
}

/** @type {Record<string, Page>} */
export const PAGES = { now: nowPage, refusals: refusalsPage, sessions: sessionsPage, rules: rulesPage, bans: bansPage, test: testPage };
export { canWrite };
