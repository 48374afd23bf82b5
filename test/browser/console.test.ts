/**
 * The web console in a real headless Chromium (Debian `chromium`, driven by puppeteer-core; nothing
 * downloads a browser), against a live guard in both backend modes. One browser for the whole file;
 * each mode gets fresh incognito contexts. Every page listens for dialogs, page errors and console
 * errors (a CSP violation is one): markup from a client must stay text and run nothing.
 * Screenshots of each page (per-client run) go to docs/console/ (README "Web console").
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import puppeteer, { type Browser, type BrowserContext, type Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';
import { Dialog } from '../helpers/dialog.js';
import { MODES, withMode } from '../helpers/modes.js';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';

const CHROMIUM = process.env['CHROMIUM_PATH'] ?? '/usr/bin/chromium';
const RW = 'console-rw-token-0123456789';
const RO = 'console-ro-token-0123456789';
const SHOTS = path.resolve('docs/console');

// What a hostile client sends: markup in HELO (no spaces: HELO takes one word), sender and recipient.
const EVIL_HELO = '<img/src=x/onerror=alert(1)>';
const EVIL_FROM = '"<img/src=x/onerror=alert(2)>"@evil.test';
const EVIL_RCPT = '"\\"><script>alert(3)</script>"@elsewhere.test';

// A browser on a busy 2-core CI machine: generous ceilings; the waits themselves are event-driven.
vi.setConfig({ testTimeout: 60_000, hookTimeout: 60_000 });

let browser: Browser;
let userDir: string;

beforeAll(async () => {
  userDir = mkdtempSync(path.join(tmpdir(), 'rg-chromium-'));
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', `--user-data-dir=${userDir}`],
  });
  mkdirSync(SHOTS, { recursive: true });
});

afterAll(async () => {
  await browser?.close();
  rmSync(userDir, { recursive: true, force: true });
});

/** Everything a page did that it should not: dialogs (alert from injected markup), errors, console errors. */
interface Watched {
  page: Page;
  context: BrowserContext;
  dialogs: string[];
  errors: string[];
}

async function openPage(base: string, viewport = { width: 1280, height: 860 }): Promise<Watched> {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  await page.setViewport(viewport);
  const w: Watched = { page, context, dialogs: [], errors: [] };
  page.on('dialog', (d) => {
    w.dialogs.push(`${d.type()}: ${d.message()}`);
    void d.dismiss();
  });
  page.on('pageerror', (e) => w.errors.push(`pageerror: ${String(e)}`));
  page.on('console', (m) => {
    // Chromium logs every 4xx answer to fetch as a console error; the refusals the tests provoke
    // (401 before sign-in, 400/403/412 from the API) are expected. Script errors and CSP violations are not.
    if (m.type() === 'error' && !/^Failed to load resource: the server responded with a status of 4\d\d /.test(m.text())) w.errors.push(`console: ${m.text()}`);
  });
  page.setDefaultTimeout(15_000);
  await page.goto(`${base}/console/`);
  return w;
}

async function signIn(w: Watched, token: string): Promise<void> {
  await w.page.waitForSelector('#login-form #token', { visible: true });
  await w.page.type('#token', token);
  await w.page.click('#login-form button[type=submit]');
  await w.page.waitForSelector('#nav:not([hidden])');
}

async function go(w: Watched, hash: string, ready: string): Promise<void> {
  await w.page.evaluate((h) => (location.hash = h), hash);
  await w.page.waitForSelector(ready);
}

/**
 * Clicks an element of a table the page re-renders on its own (the live pages poll): a render between
 * finding the element and clicking it detaches the node, so find it again and retry, a bounded number of times.
 */
async function clickLive(w: Watched, selector: string): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    await w.page.waitForSelector(selector, { visible: true });
    try {
      await w.page.click(selector);
      return;
    } catch (err) {
      if (attempt >= 5 || !/detached|not clickable|not an HTMLElement|No node found/i.test(String(err))) throw err;
    }
  }
}

async function confirm(w: Watched): Promise<void> {
  await w.page.waitForSelector('dialog#confirm[open] [data-testid=confirm-ok]', { visible: true });
  await w.page.click('dialog#confirm[open] [data-testid=confirm-ok]');
}

async function shot(w: Watched, name: string, on: boolean): Promise<void> {
  if (on) await w.page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

/** One SMTP transaction up to RCPT; returns the RCPT reply code. */
async function tryRelay(port: number, from: string, opts: { helo?: string; mailFrom?: string; rcpt?: string } = {}): Promise<number> {
  const d = await Dialog.connect(port, { localAddress: from });
  try {
    expect((await d.reply()).code).toBe(220);
    expect((await d.cmd(`EHLO ${opts.helo ?? 'probe.test'}`)).code).toBe(250);
    expect((await d.cmd(`MAIL FROM:<${opts.mailFrom ?? 'a@outside.test'}>`)).code).toBe(250);
    return (await d.cmd(`RCPT TO:<${opts.rcpt ?? 'victim@elsewhere.test'}>`)).code;
  } finally {
    d.socket.destroy();
  }
}

describe.each(MODES)('web console ($mode)', ({ mode, config }) => {
  const screenshots = mode === 'per-client';
  let backend: RecordingBackend;
  let g: StartedGuard;
  let base: string;
  let tokenDir: string;
  const opened: Watched[] = [];

  async function watched(viewport?: { width: number; height: number }): Promise<Watched> {
    const w = await openPage(base, viewport);
    opened.push(w);
    return w;
  }

  async function api(method: string, route: string, body?: unknown): Promise<{ status: number; json: any }> {
    const res = await fetch(`${base}/api/v1${route}`, {
      method,
      headers: { authorization: `Bearer ${RW}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    return { status: res.status, json: await res.json() };
  }

  beforeAll(async () => {
    backend = await startRecordingBackend();
    tokenDir = mkdtempSync(path.join(tmpdir(), 'rg-console-tokens-'));
    const tokenFile = path.join(tokenDir, 'tokens.yaml');
    writeFileSync(tokenFile, `- id: night-ops\n  token: ${RW}\n  scope: rw\n- id: auditor\n  token: ${RO}\n  scope: ro\n`);
    g = await startGuard({
      backendPort: backend.port,
      rules: { senders: [{ id: 'evil', match: ['*@evil.test'], action: 'reject' }] },
      config: withMode(config, { timeouts: { drain: '1s' }, admin: { enabled: true, address: '127.0.0.1', port: 0, metricsAuth: false, tokenFile, recentRefusals: 50 } }),
    });
    const a = g.guard.adminAddress();
    if (!a) throw new Error('admin not listening');
    base = `http://127.0.0.1:${a.port}`;
  });

  afterAll(async () => {
    for (const w of opened) await w.context.close().catch(() => undefined);
    await g?.stop();
    await backend?.close();
    rmSync(tokenDir, { recursive: true, force: true });
  });

  test('without a token: the login page, never data', async () => {
    expect(await tryRelay(g.port, '127.0.0.9')).toBe(550);
    const root = await fetch(`${base}/`, { redirect: 'manual' });
    expect(root.status).toBe(302);
    expect(root.headers.get('location')).toBe('/console/');
    for (const route of ['/refusals', '/overview', '/sessions', '/rules', '/bans', '/whoami']) {
      const r = await fetch(`${base}/api/v1${route}`);
      expect(r.status, route).toBe(401);
      expect(await r.text()).not.toContain('127.0.0.9');
    }
    const w = await watched();
    const ok: string[] = [];
    w.page.on('response', (r) => {
      if (r.url().includes('/api/v1/') && r.status() < 400) ok.push(r.url());
    });
    await w.page.waitForSelector('#login-form #token', { visible: true });
    expect(await w.page.$eval('#page', (e) => (e as HTMLElement).hidden && e.childElementCount === 0)).toBe(true);
    expect(await w.page.$eval('body', (e) => e.textContent ?? '')).not.toContain('127.0.0.9');
    // A wrong token stays on the login page, with the error on the field.
    await w.page.type('#token', 'not-a-token-at-all-0000');
    await w.page.click('#login-form button[type=submit]');
    await w.page.waitForFunction(() => document.querySelector('[data-field="token"] .field-error')?.textContent === 'this token is not valid');
    // Not one page link or control is shown before sign-in, and the error is said once.
    expect(await w.page.$eval('#nav', (e) => getComputedStyle(e).display)).toBe('none');
    expect(await w.page.$eval('#logout', (e) => getComputedStyle(e).display)).toBe('none');
    expect(await w.page.$$eval('[role=alert]', (es) => es.map((e) => e.textContent).filter((t) => t))).toEqual(['this token is not valid']);
    expect(ok).toEqual([]);
    await shot(w, 'login', screenshots);
    expect(w.dialogs).toEqual([]);
  });

  test('log in; a relay attempt from 127.0.0.9 is under Refusals within 2 s with rule relay-denied; trusting it from the console lets the next attempt relay', async () => {
    const w = await watched();
    await signIn(w, RW);
    expect(await w.page.$eval('#who', (e) => e.textContent)).toBe('night-ops · read-write');
    // Nothing in the URL but the page (no token in it, ever).
    expect(w.page.url()).not.toContain(RW);
    await go(w, '#/refusals', '[data-testid=refusals] table');
    expect(await tryRelay(g.port, '127.0.0.9', { rcpt: 'victim2@elsewhere.test' })).toBe(550);
    const t0 = Date.now();
    const row = await w.page.waitForFunction(
      () => [...document.querySelectorAll('[data-testid=refusals] tbody tr')].find((tr) => tr.textContent?.includes('victim2@elsewhere.test')),
      { timeout: 2000, polling: 50 },
    );
    const seenMs = Date.now() - t0;
    const cells = await w.page.evaluate((tr) => [...(tr as HTMLTableRowElement).cells].map((c) => c.textContent), row);
    expect(cells.slice(1)).toEqual(['127.0.0.9', 'probe.test', 'a@outside.test', 'victim2@elsewhere.test', '550 5.7.1 Relaying denied', 'relay-denied']);
    console.log(`[${mode}] refusal shown in the console ${seenMs} ms after the 550`);

    // Why, from the same judge as the dry run, and the fix one confirmation away.
    await w.page.evaluate((tr) => (tr as HTMLElement).click(), row);
    await w.page.waitForFunction(() => document.querySelector('[data-testid=verdict]')?.textContent?.startsWith('reject by relay-denied'));
    await shot(w, 'refusals', screenshots);
    const trust = await w.page.waitForSelector('.moves button:not([disabled])');
    expect(await trust!.evaluate((b) => b.textContent)).toBe('Trust 127.0.0.9');
    await trust!.click();
    // Cancel changes nothing.
    await w.page.click('dialog#confirm[open] [data-testid=confirm-cancel]');
    expect((await api('GET', '/rules/relay-networks')).json.value).toEqual([]);
    await trust!.click();
    await confirm(w);
    await w.page.waitForFunction(() => document.querySelector('[data-testid=verdict]')?.textContent?.startsWith('accept by relay-networks'));
    expect((await api('GET', '/rules/relay-networks')).json.value).toEqual(['127.0.0.9']);
    const before = backend.lines().filter((l) => l.startsWith('RCPT TO:<victim3@elsewhere.test>')).length;
    expect(await tryRelay(g.port, '127.0.0.9', { rcpt: 'victim3@elsewhere.test' })).toBe(250);
    expect(backend.lines().filter((l) => l.startsWith('RCPT TO:<victim3@elsewhere.test>')).length).toBe(before + 1);
    // The change is audited under the token's id.
    const audit = await api('GET', '/audit?limit=1');
    expect(audit.json.entries[0]).toMatchObject({ actor: 'night-ops', section: 'relay-networks', operation: 'add' });
    expect(w.dialogs).toEqual([]);
    expect(w.errors).toEqual([]);
  });

  test('a ban from the console makes the next connection get 554; lifting it serves it again', async () => {
    const w = await watched();
    await signIn(w, RW);
    await go(w, '#/bans', '[data-testid=bans] table');
    // The server's validation error lands on the field it names.
    await w.page.type('input[name=target]', '999.1.2.3');
    await w.page.type('input[name=reason]', 'relay probing');
    await w.page.click('.ban-form button[type=submit]');
    await confirm(w);
    await w.page.waitForSelector('[data-field=target].invalid');
    expect(await w.page.$eval('[data-field=target] .field-error', (e) => e.textContent)).toMatch(/999\.1\.2\.3|address|network/i);
    await w.page.$eval('input[name=target]', (e) => ((e as HTMLInputElement).value = ''));
    await w.page.type('input[name=target]', '127.0.0.10');
    await w.page.click('.ban-form button[type=submit]');
    await confirm(w);
    await w.page.waitForSelector('[data-testid=bans] tr[data-id="127.0.0.10"]');
    const d = await Dialog.connect(g.port, { localAddress: '127.0.0.10' });
    expect((await d.reply()).code).toBe(554);
    d.socket.destroy();
    await shot(w, 'bans', screenshots);
    await clickLive(w, '[data-testid=bans] tr[data-id="127.0.0.10"] button');
    await confirm(w);
    await w.page.waitForFunction(() => !document.querySelector('[data-testid=bans] tr[data-id="127.0.0.10"]'));
    const d2 = await Dialog.connect(g.port, { localAddress: '127.0.0.10' });
    expect((await d2.reply()).code).toBe(220);
    d2.socket.destroy();
    expect(w.errors).toEqual([]);
  });

  test('a hostile HELO and addresses full of markup are shown as text and run nothing; Sessions shows that client live and closes it', async () => {
    // The sender is refused by a sender rule (so the guard, not the backend, answers it); the
    // recipient by relay-denied.
    const d = await Dialog.connect(g.port, { localAddress: '127.0.0.11' });
    try {
      expect((await d.reply()).code).toBe(220);
      expect((await d.cmd(`EHLO ${EVIL_HELO}`)).code).toBe(250);
      expect((await d.cmd(`MAIL FROM:<${EVIL_FROM}>`)).code).toBe(550);
      expect((await d.cmd('MAIL FROM:<a@outside.test>')).code).toBe(250);
      expect((await d.cmd(`RCPT TO:<${EVIL_RCPT}>`)).code).toBeGreaterThanOrEqual(500);
    } finally {
      d.socket.destroy();
    }
    // A live session with the hostile HELO, for the Sessions page.
    const live = await Dialog.connect(g.port, { localAddress: '127.0.0.11' });
    expect((await live.reply()).code).toBe(220);
    expect((await live.cmd(`EHLO ${EVIL_HELO}`)).code).toBe(250);
    try {
      const w = await watched();
      await signIn(w, RW);
      await go(w, '#/refusals?client=127.0.0.11', '[data-testid=refusals] tbody tr[data-id]');
      await w.page.waitForFunction(() => document.querySelectorAll('[data-testid=refusals] tbody tr[data-id]').length === 2);
      const rows = await w.page.$$eval('[data-testid=refusals] tbody tr[data-id]', (trs) => trs.map((tr) => [...(tr as HTMLTableRowElement).cells].map((c) => c.textContent)));
      expect(rows.map((r) => r.slice(1, 5))).toEqual([
        ['127.0.0.11', EVIL_HELO, 'a@outside.test', EVIL_RCPT],
        ['127.0.0.11', EVIL_HELO, EVIL_FROM, ''],
      ]);
      expect(rows[1]?.[6]).toBe('sender-rules:evil');
      await clickLive(w, '[data-testid=refusals] tbody tr[data-id]');
      await w.page.waitForSelector('[data-testid=verdict]');
      const facts = await w.page.$eval('aside.detail .facts', (e) => e.textContent ?? '');
      expect(facts).toContain(EVIL_HELO);
      expect(facts).toContain(EVIL_RCPT);
      await go(w, '#/sessions', '[data-testid=sessions] tbody tr[data-id]');
      await w.page.waitForFunction((helo) => [...document.querySelectorAll('[data-testid=sessions] td')].some((td) => td.textContent === helo), {}, EVIL_HELO);
      await shot(w, 'sessions', screenshots);
      // Close it from the console: the client gets 421 and the connection ends.
      await clickLive(w, '[data-testid=sessions] tbody tr[data-id] button');
      await confirm(w);
      const bye = await live.reply();
      expect(bye.code).toBe(421);
      await w.page.waitForFunction(() => !document.querySelector('[data-testid=sessions] tbody tr[data-id]'), { timeout: 5000 });
      // Nothing the client sent became an element, ran, or broke the CSP.
      expect(await w.page.evaluate(() => document.querySelectorAll('img, iframe, object, embed').length)).toBe(0);
      expect(await w.page.evaluate(() => [...document.scripts].map((s) => new URL(s.src).pathname))).toEqual(['/console/console.js']);
      expect(w.dialogs).toEqual([]);
      expect(w.errors).toEqual([]);
    } finally {
      live.socket.destroy();
    }
  });

  test('a read-only token sees everything and can change nothing', async () => {
    const w = await watched();
    await signIn(w, RO);
    expect(await w.page.$eval('#who', (e) => e.textContent)).toBe('auditor · read-only');
    await go(w, '#/refusals?client=127.0.0.9', '[data-testid=refusals] tbody tr[data-id]');
    await clickLive(w, '[data-testid=refusals] tbody tr[data-id]');
    await w.page.waitForSelector('[data-testid=verdict]');
    const moves = await w.page.$$eval('.moves button', (bs) => bs.map((b) => (b as HTMLButtonElement).disabled));
    expect(moves.length).toBeGreaterThan(0);
    expect(moves.every(Boolean)).toBe(true);
    await go(w, '#/bans', '[data-testid=bans] table');
    expect(await w.page.$eval('.ban-form button[type=submit]', (b) => (b as HTMLButtonElement).disabled)).toBe(true);
    await go(w, '#/rules', '.card[data-section=relay-networks]');
    const writes = await w.page.$$eval('[data-write]', (bs) => bs.map((b) => (b as HTMLButtonElement).disabled));
    expect(writes.length).toBeGreaterThan(3);
    expect(writes.every(Boolean)).toBe(true);
    // Even a hand-made request from the page with this token is refused by the API.
    const status = await w.page.evaluate(async () => {
      const r = await fetch('/api/v1/bans', {
        method: 'POST',
        headers: { authorization: `Bearer ${sessionStorage.getItem('relay-guard-token')}`, 'content-type': 'application/json', 'x-relay-guard-console': '1' },
        body: JSON.stringify({ target: '127.0.0.12', reason: 'x' }),
      });
      return r.status;
    });
    expect(status).toBe(403);
    expect((await api('GET', '/bans')).json.bans).toEqual([]);
    expect(w.errors).toEqual([]);
  });

  test('rules: edited in place, the server\'s error on the field, a stale edit says someone else changed it, history diff and rollback', async () => {
    const w = await watched();
    await signIn(w, RW);
    await go(w, '#/rules', '.card[data-section=accepted-domains] form');
    await w.page.waitForSelector('[data-testid=history] table');
    const card = '.card[data-section=accepted-domains]';
    // Invalid value: the server's message under the field.
    await w.page.type(`${card} input[name=value]`, '*');
    await w.page.click(`${card} button[type=submit]`);
    await w.page.waitForSelector(`${card} [data-field=value].invalid`);
    expect(await w.page.$eval(`${card} [data-field=value] .field-error`, (e) => e.textContent)).not.toBe('');
    // Someone else changes the section behind the page's back: the page's ETag is stale.
    expect((await api('POST', '/rules/accepted-domains', { value: 'other.test' })).status).toBe(200);
    await w.page.$eval(`${card} input[name=value]`, (e) => ((e as HTMLInputElement).value = ''));
    await w.page.type(`${card} input[name=value]`, 'partner.test');
    await w.page.click(`${card} button[type=submit]`);
    await w.page.waitForSelector(`${card} .conflict:not([hidden])`);
    expect(await w.page.$eval(`${card} .conflict`, (e) => e.textContent)).toContain('Someone else changed this — reload');
    expect((await api('GET', '/rules/accepted-domains')).json.value).toEqual(['example.com', 'other.test']);
    await w.page.click(`${card} .conflict button`);
    await w.page.waitForFunction((c) => [...document.querySelectorAll(`${c} .items code`)].some((e) => e.textContent === 'other.test'), {}, card);
    await w.page.type(`${card} input[name=value]`, 'partner.test');
    await w.page.click(`${card} button[type=submit]`);
    await w.page.waitForFunction((c) => [...document.querySelectorAll(`${c} .items code`)].some((e) => e.textContent === 'partner.test'), {}, card);
    // History: the newest version's diff shows the added domain; roll back to the one before it.
    await w.page.waitForFunction(() => document.querySelectorAll('[data-testid=history] tbody tr').length >= 3);
    await w.page.click('[data-testid=history] tbody tr:first-child td.actions button');
    const diff = await w.page.$eval('[data-testid=history] tbody tr:first-child [data-testid=diff]', (e) => e.textContent ?? '');
    expect(diff).toContain('+   "partner.test"');
    await shot(w, 'rules', screenshots);
    await w.page.click('[data-testid=history] tbody tr:nth-child(2) td.actions button[data-write]');
    await confirm(w);
    await w.page.waitForFunction((c) => ![...document.querySelectorAll(`${c} .items code`)].some((e) => e.textContent === 'partner.test'), {}, card);
    expect((await api('GET', '/rules/accepted-domains')).json.value).toEqual(['example.com', 'other.test']);
    // An object section: invalid JSON is caught in the page, a schema error comes from the server.
    const policy = '.card[data-section=policy]';
    await w.page.$eval(`${policy} textarea`, (e) => ((e as HTMLTextAreaElement).value = '{"antiSpoofing": "maybe"}'));
    await w.page.click(`${policy} button[type=submit]`);
    await confirm(w);
    await w.page.waitForSelector(`${policy} [data-field=value].invalid`);
    expect(await w.page.$eval(`${policy} .field-error`, (e) => e.textContent)).toMatch(/antiSpoofing/);
    // Clean up for the next tests: no relay network from the trust test.
    const rn = await api('GET', '/rules/relay-networks');
    if (rn.json.value.length > 0) await api('PUT', '/rules/relay-networks', []);
    expect(w.errors).toEqual([]);
  });

  test('the Now page and the dry-run form', async () => {
    // Some mail for the picture: three messages delivered, counted per minute.
    const delivered = backend.messages.length;
    const d = await Dialog.connect(g.port, { localAddress: '127.0.0.2' });
    try {
      expect((await d.reply()).code).toBe(220);
      expect((await d.cmd('EHLO partner.test')).code).toBe(250);
      for (let i = 0; i < 3; i++) {
        expect((await d.cmd('MAIL FROM:<news@partner.test>')).code).toBe(250);
        expect((await d.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
        expect((await d.cmd('DATA')).code).toBe(354);
        expect((await d.cmd(`Subject: ${i}\r\n\r\nhello ${i}\r\n.`)).code).toBe(250);
      }
    } finally {
      d.socket.destroy();
    }
    await backend.waitForMessages(delivered + 3);
    const w = await watched();
    await signIn(w, RW);
    await go(w, '#/now', '[data-testid=sessions-open]');
    await w.page.waitForFunction(() => [...document.querySelectorAll('.now td a')].some((a) => a.textContent === '127.0.0.9'));
    await w.page.waitForFunction(() => Number(document.querySelector('[data-testid=messages-min] .tile-value')?.textContent) >= 3);
    expect(await w.page.$eval('[data-testid=pool]', (e) => e.textContent)).toMatch(mode === 'pooled' ? /^Pool: \d+ idle/ : /Per-client mode/);
    // No shared rules store: the Fleet card is one line, no table.
    expect(await w.page.$eval('[data-testid=fleet] [data-testid=fleet-single]', (e) => e.textContent)).toBe('single guard (rules directory)');
    expect(await w.page.$$('[data-testid=fleet] table')).toHaveLength(0);
    await shot(w, 'now', screenshots);
    await go(w, '#/test', '.check-form');
    await w.page.type('input[name=clientIp]', 'not-an-ip');
    await w.page.type('input[name=mailFrom]', 'a@outside.test');
    await w.page.type('input[name=rcptTo]', 'victim@elsewhere.test');
    await w.page.click('.check-form button[type=submit]');
    await w.page.waitForSelector('[data-field=clientIp].invalid');
    await w.page.$eval('input[name=clientIp]', (e) => ((e as HTMLInputElement).value = '203.0.113.9'));
    await w.page.click('.check-form button[type=submit]');
    await w.page.waitForFunction(() => document.querySelector('[data-testid=verdict]')?.textContent === 'reject by relay-denied: 550 5.7.1 Relaying denied');
    await shot(w, 'test', screenshots);
    if (screenshots) {
      const phone = await watched({ width: 390, height: 844 });
      await signIn(phone, RW);
      await go(phone, '#/refusals', '[data-testid=refusals] tbody tr[data-id]');
      await shot(phone, 'refusals-phone', true);
      // On a phone the page does not scroll sideways (tables scroll inside their own box).
      expect(await phone.page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1)).toBe(true);
      expect(phone.errors).toEqual([]);
    }
    expect(w.errors).toEqual([]);
  });

  test('the refusal ring holds what the refusal log lines hold and no more, bounded by admin.recentRefusals', async () => {
    const before = (await api('GET', '/refusals?limit=1')).json.total as number;
    // 60 relay attempts, more than the ring's 50: 4 sessions of 15 pipelined RCPTs (under the
    // hard error limit of 20, which would close a session).
    for (let k = 0; k < 4; k++) {
      const d = await Dialog.connect(g.port, { localAddress: '127.0.0.13' });
      try {
        expect((await d.reply()).code).toBe(220);
        expect((await d.cmd('EHLO flood.test')).code).toBe(250);
        expect((await d.cmd('MAIL FROM:<spam@flood.test>')).code).toBe(250);
        d.send(Array.from({ length: 15 }, (_, i) => `RCPT TO:<v${k * 15 + i}@elsewhere.test>\r\n`).join(''));
        const replies = await d.replyN(15);
        expect(replies.every((r) => r.code === 550)).toBe(true);
      } finally {
        d.socket.destroy();
      }
    }
    const r = (await api('GET', '/refusals?limit=1000')).json as { refusals: Record<string, unknown>[]; held: number; capacity: number; total: number };
    expect(r.capacity).toBe(50);
    expect(r.held).toBe(50);
    expect(r.refusals).toHaveLength(50);
    expect(r.total).toBe(before + 60);
    // Newest first: the last 50 of the batch.
    expect(r.refusals.map((e) => e['rcpt'])).toEqual(Array.from({ length: 50 }, (_, i) => `v${59 - i}@elsewhere.test`));
    const logged = g.logs.filter((l) => l['msg'] === 'rcpt refused' && l['clientIp'] === '127.0.0.13');
    expect(logged).toHaveLength(60);
    for (const e of r.refusals) {
      const line = logged.find((l) => l['rcpt'] === e['rcpt'] && l['sessionId'] === e['sessionId']);
      expect(line, String(e['rcpt'])).toBeDefined();
      for (const k of ['clientIp', 'listener', 'helo', 'mailFrom', 'rcpt', 'ruleId', 'reply', 'sessionId']) expect(e[k], k).toBe(line![k]);
      expect(Object.keys(e).sort()).toEqual(['clientIp', 'helo', 'id', 'kind', 'listener', 'mailFrom', 'rcpt', 'reply', 'ruleId', 'sessionId', 'time']);
    }
  });
});
