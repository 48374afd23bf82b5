// @ts-check
/**
 * The console's only way to the guard: the /api/v1 routes, with the bearer token from this tab's
 * sessionStorage in the Authorization header (never in a URL, never in a cookie), and the console
 * header that the admin server's cross-site check asks of browsers.
 */

const KEY = 'relay-guard-token';

/** @returns {string | null} */
export function token() {
  return sessionStorage.getItem(KEY);
}

/** @param {string} t */
export function setToken(t) {
  sessionStorage.setItem(KEY, t);
}

export function forgetToken() {
  sessionStorage.removeItem(KEY);
}

/**
 * @typedef {{ status: number, ok: boolean, body: any, etag: string | null }} ApiResult
 */

/** Called when the API says the token is missing or no longer valid. */
let onUnauthorized = () => {};
/** @param {() => void} fn */
export function whenUnauthorized(fn) {
  onUnauthorized = fn;
}

/**
 * @param {string} method
 * @param {string} path under /api/v1
 * @param {{ body?: unknown, ifMatch?: string, token?: string }} [opts]
 * @returns {Promise<ApiResult>}
 */
export async function api(method, path, opts = {}) {
  /** @type {Record<string, string>} */
  const headers = { 'x-relay-guard-console': '1', accept: 'application/json' };
  const t = opts.token ?? token();
  if (t) headers['authorization'] = `Bearer ${t}`;
  if (opts.ifMatch) headers['if-match'] = opts.ifMatch;
  if (opts.body !== undefined) headers['content-type'] = 'application/json';
  let res;
  try {
    res = await fetch(`/api/v1${path}`, {
      method,
      headers,
      credentials: 'omit',
      cache: 'no-store',
      ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}),
    });
  } catch (err) {
    return { status: 0, ok: false, body: { message: `the guard did not answer (${String(err)})` }, etag: null };
  }
  let body = null;
  try {
    body = await res.json();
  } catch {
    body = { message: `HTTP ${res.status}` };
  }
  if (res.status === 401 && opts.token === undefined) onUnauthorized();
  return { status: res.status, ok: res.ok, body, etag: res.headers.get('etag') };
}

/**
 * The message of a failed call, as the server wrote it.
 * @param {ApiResult} r
 */
export function messageOf(r) {
  if (r.status === 403) return `refused: ${r.body?.message ?? 'this token may not change anything'}`;
  return String(r.body?.message ?? `HTTP ${r.status}`);
}

/** Who this tab is signed in as (GET /api/v1/whoami). */
export const me = { id: '', scope: 'ro', open: false };

export function canWrite() {
  return me.scope === 'rw';
}
