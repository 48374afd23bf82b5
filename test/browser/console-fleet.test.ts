/**
 * The console's Fleet card (issue 20 after issue 19) in a real headless Chromium (Debian `chromium`
 * through puppeteer-core): a relay-guard process on a real redis-server rules store (--rules-store,
 * open admin API on loopback, so the console enters without a token). A second "guard" heartbeats
 * into the store's fleet hash on an old rules version, with markup in its name: the card lists both,
 * the old one highlighted as behind, and its name is text that runs nothing.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import puppeteer, { type Browser } from 'puppeteer-core';
import { afterAll, beforeAll, expect, test, vi } from 'vitest';
import { startGuardProcess, type GuardProcess } from '../helpers/guard-process.js';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { startRedisServer, type RedisServer } from '../helpers/redis-server.js';

const CHROMIUM = process.env['CHROMIUM_PATH'] ?? '/usr/bin/chromium';
const EVIL_NAME = '<img src=x onerror=alert(7)>';

vi.setConfig({ testTimeout: 90_000, hookTimeout: 120_000 });

let browser: Browser;
let userDir: string;
let redis: RedisServer;
let cli: Redis;
let backend: RecordingBackend;
let rulesDir: string;
let guard: GuardProcess;
let beat: NodeJS.Timeout | undefined;

beforeAll(async () => {
  redis = await startRedisServer();
  cli = new Redis(redis.url, { maxRetriesPerRequest: 1 });
  cli.on('error', () => undefined);
  backend = await startRecordingBackend();
  rulesDir = mkdtempSync(path.join(tmpdir(), 'rg-console-fleet-'));
  writeFileSync(path.join(rulesDir, 'accepted-domains.yaml'), '- example.com\n');
  writeFileSync(path.join(rulesDir, 'limits.yaml'), 'enabled: false\nprefixV4: 24\nprefixV6: 64\nlimits: []\n');
  guard = await startGuardProcess({ name: 'guard-a', rulesDir, backendPort: backend.port, args: ['--rules-store', redis.url] });
  userDir = mkdtempSync(path.join(tmpdir(), 'rg-chromium-'));
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', `--user-data-dir=${userDir}`],
  });
});

afterAll(async () => {
  if (beat) clearInterval(beat);
  await browser?.close();
  await guard?.stop('SIGKILL');
  cli?.disconnect();
  await redis?.stop();
  await backend?.close();
  for (const d of [rulesDir, userDir]) if (d) rmSync(d, { recursive: true, force: true });
});

test('the Fleet card lists every live guard with its rules version, the one behind highlighted, names as text', async () => {
  // A guard that still enforces an old version: its heartbeat, refreshed like a live guard's.
  const write = () => cli.hset('relay-guard:fleet', EVIL_NAME, JSON.stringify({ name: EVIL_NAME, rev: 0, version: 'old-version', startedAt: new Date().toISOString(), seenAt: Date.now(), storeUp: true }));
  await write();
  beat = setInterval(() => void write().catch(() => undefined), 500);

  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  const dialogs: string[] = [];
  const errors: string[] = [];
  page.on('dialog', (d) => {
    dialogs.push(d.message());
    void d.dismiss();
  });
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => (m.type() === 'error' ? errors.push(m.text()) : undefined));
  page.setDefaultTimeout(20_000);
  await page.goto(`http://127.0.0.1:${guard.adminPort}/console/#/now`);
  await page.waitForFunction(() => document.querySelectorAll('[data-testid=fleet] tbody tr[data-id]').length === 2);

  const rows = await page.$$eval('[data-testid=fleet] tbody tr[data-id]', (trs) => trs.map((tr) => ({
    id: tr.getAttribute('data-id'), state: tr.getAttribute('data-state'), behindClass: tr.classList.contains('behind'),
    cells: [...tr.querySelectorAll('td')].map((td) => td.textContent),
  })));
  const a = rows.find((r) => r.id === 'guard-a');
  const old = rows.find((r) => r.id === EVIL_NAME);
  expect(a).toMatchObject({ state: 'current', behindClass: false });
  expect(a!.cells[0]).toBe('guard-a (this guard)');
  expect(a!.cells[1]).toMatch(/^rev 1 · [0-9a-f]/);
  expect(a!.cells[3]).toMatch(/^\d+s ago$/);
  expect(old).toMatchObject({ state: 'behind', behindClass: true });
  expect(old!.cells[0]).toBe(EVIL_NAME);
  expect(old!.cells[1]).toBe('rev 0 · old-version');
  expect(old!.cells[2]).toBe('behind');
  // The highlight is the stylesheet's, not an inline style.
  expect(await page.$eval('[data-testid=fleet] tr.behind td', (td) => getComputedStyle(td).fontWeight)).toBe('600');
  expect(await page.$eval('[data-testid=fleet-store]', (e) => e.textContent)).toMatch(/^Shared rules store redis:\/\/127\.0\.0\.1:\d+.*up · rev 1 .* · 2 live guards, 1 behind$/);
  expect(await page.$$('[data-testid=fleet] img')).toHaveLength(0);
  expect(await page.$$('[data-testid=fleet-single]')).toHaveLength(0);
  await page.screenshot({ path: path.resolve('docs/console/now-fleet.png'), fullPage: true });

  // The old guard leaves the fleet hash: the next poll drops it from the card.
  clearInterval(beat);
  beat = undefined;
  await cli.hdel('relay-guard:fleet', EVIL_NAME);
  await page.waitForFunction(() => document.querySelectorAll('[data-testid=fleet] tbody tr[data-id]').length === 1);
  expect(await page.$eval('[data-testid=fleet-store]', (e) => e.textContent)).toMatch(/1 live guard, 0 behind$/);
  expect(dialogs).toEqual([]);
  expect(errors).toEqual([]);
  await context.close();
});
