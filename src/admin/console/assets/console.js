// @ts-check
/**
 * The console's shell: sign-in, the page router (#/now, #/refusals, …) and read-only gating.
 * A tab without a token sees only the sign-in form; the page never holds data the API did not
 * hand to this token.
 */
import { api, canWrite, forgetToken, me, setToken, token, whenUnauthorized } from './api.js';
import { clearErrors, showError, toast } from './dom.js';
import { PAGES } from './pages.js';

const page = /** @type {HTMLElement} */ (document.getElementById('page'));
const login = /** @type {HTMLElement} */ (document.getElementById('login'));
const nav = /** @type {HTMLElement} */ (document.getElementById('nav'));
const who = /** @type {HTMLElement} */ (document.getElementById('who'));
const logout = /** @type {HTMLButtonElement} */ (document.getElementById('logout'));
const form = /** @type {HTMLFormElement} */ (document.getElementById('login-form'));

/** @type {(() => void) | undefined} */
let stopPage;

function showLogin() {
  stopPage?.();
  stopPage = undefined;
  page.replaceChildren();
  page.hidden = true;
  nav.hidden = true;
  logout.hidden = true;
  who.textContent = '';
  login.hidden = false;
  document.body.dataset['state'] = 'login';
  /** @type {HTMLInputElement | null} */ (form.querySelector('#token'))?.focus();
}

/** Read-only tokens: every control that would change something is disabled, whenever it appears. */
function gate(/** @type {ParentNode} */ root) {
  if (canWrite()) return;
  for (const el of root.querySelectorAll('[data-write]')) {
    const c = /** @type {HTMLButtonElement} */ (el);
    c.disabled = true;
    c.title = 'read-only token: this changes nothing';
  }
}
new MutationObserver(() => gate(page)).observe(page, { childList: true, subtree: true });

function route() {
  if (login.hidden === false) return;
  const hash = location.hash.replace(/^#\/?/, '');
  const [name = 'now', query = ''] = hash.split('?');
  const render = PAGES[name] ?? PAGES['now'];
  if (!render) return;
  stopPage?.();
  page.replaceChildren();
  for (const a of nav.querySelectorAll('a')) {
    if (a.dataset['page'] === (PAGES[name] ? name : 'now')) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.body.dataset['state'] = PAGES[name] ? name : 'now';
  stopPage = render(page, new URLSearchParams(query));
}

async function enter() {
  const r = await api('GET', '/whoami');
  if (!r.ok) {
    if (r.status !== 401) toast(`the guard answered ${r.status}`, 'error');
    showLogin();
    return false;
  }
  me.id = String(r.body.id ?? '');
  me.scope = r.body.scope === 'rw' ? 'rw' : 'ro';
  me.open = r.body.open === true;
  login.hidden = true;
  page.hidden = false;
  nav.hidden = false;
  logout.hidden = me.open;
  who.textContent = me.open ? 'open API (no token configured)' : `${me.id} · ${me.scope === 'rw' ? 'read-write' : 'read-only'}`;
  who.dataset['scope'] = me.scope;
  route();
  return true;
}

form.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  clearErrors(form);
  const input = /** @type {HTMLInputElement} */ (form.querySelector('#token'));
  const t = input.value.trim();
  if (t === '') return;
  const r = await api('GET', '/whoami', { token: t });
  if (r.status === 401) {
    showError(form, 'this token is not valid', {}, 'token');
    return;
  }
  if (!r.ok) {
    showError(form, `the guard answered ${r.status}`);
    return;
  }
  setToken(t);
  input.value = '';
  await enter();
});

logout.addEventListener('click', () => {
  forgetToken();
  showLogin();
});

whenUnauthorized(() => {
  forgetToken();
  showLogin();
});

window.addEventListener('hashchange', route);

// A token in this tab, or an API open on loopback: go in; otherwise the sign-in form.
if (token() !== null) void enter();
else
  void api('GET', '/whoami').then((r) => {
    if (r.ok && r.body.open === true) void enter();
    else showLogin();
  });
