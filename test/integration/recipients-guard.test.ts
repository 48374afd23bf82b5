/**
 * Issue 8 acceptance, list mode, through the real guard: a recipients file in the rules directory
 * (per-domain modes), known and alias addresses delivered, unknown ones refused with 550 5.1.1 and
 * never forwarded, the `@domain` catch-all, a live edit of the file picked up by the next RCPT,
 * the --recipients-file path (config recipientsFile) and harvest protection by network prefix.
 * All of it twice: one backend connection per client, and pooled mode (the guard greets and
 * answers EHLO itself and lends a pre-opened backend session from MAIL to end-of-data), where what
 * the backend saw is searched across all its connections since the test began, and a next client's
 * message still goes through the pool after refusals and bans.
 */
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import type { ListReloadResult, RecipientValidator } from '../../src/directory/recipient-validator.js';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { MODES, since } from '../helpers/modes.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';
import { withTimeout } from '../helpers/with-timeout.js';

const STRANGER = '127.0.0.9';
/** Outside 127.0.0.0/24 (every address of 127/8 is loopback on Linux): not hit by a /24 ban. */
const OTHER_PREFIX = '127.0.1.9';

const LIST = `# valid recipients of example.com
alice@example.com
ally@example.com     # alias of alice
bob@example.com
@example.org         # catch-all
`;

/** RCPT lines, lower-cased. */
const rcptLines = (lines: string[]) => lines.filter((l) => /^RCPT TO:/i.test(l)).map((l) => l.toLowerCase());

function validatorOf(s: StartedGuard): RecipientValidator {
  return s.guard.services.validator as unknown as RecipientValidator;
}

async function open(port: number, from = STRANGER): Promise<Dialog> {
  const d = await Dialog.connect(port, { localAddress: from });
  expect((await d.reply()).code).toBe(220);
  expect((await d.cmd('EHLO client.test')).code).toBe(250);
  return d;
}

/** RCPT each address in one transaction; returns "code" (accepted) or "code enhanced" (refused) per recipient. */
async function rcpts(d: Dialog, addresses: string[]): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const a of addresses) {
    const r = await d.cmd(`RCPT TO:<${a}>`);
    // the backend's 250 carries no enhanced code; the guard's refusals do
    out[a] = r.code < 400 ? String(r.code) : `${r.code} ${r.lines[0]?.split(' ')[0] ?? ''}`;
  }
  return out;
}

/** Replace the file as editors do (write a temporary file, rename over) and wait for the reload that sees `entries`. */
async function editList(s: StartedGuard, file: string, text: string, want: (r: ListReloadResult) => boolean): Promise<ListReloadResult> {
  const validator = validatorOf(s);
  const seen = new Promise<ListReloadResult>((resolve) => {
    const onReload = (r: ListReloadResult) => {
      if (!want(r)) return;
      validator.off('listReloaded', onReload);
      resolve(r);
    };
    validator.on('listReloaded', onReload);
  });
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, text);
  renameSync(tmp, file);
  return withTimeout(seen, 5_000, 'listReloaded');
}

/** A next client's message is delivered through `s` (pooled mode: the pool is still healthy). */
async function messageGoesThrough(s: StartedGuard, b: RecordingBackend, from: string, to: string, tag: string): Promise<void> {
  const before = b.messages.length;
  const d = await open(s.port, from);
  expect((await d.cmd('MAIL FROM:<next@outside.test>')).code).toBe(250);
  expect((await d.cmd(`RCPT TO:<${to}>`)).code).toBe(250);
  expect((await d.cmd('DATA')).code).toBe(354);
  const end = await d.cmd(`Subject: ${tag}\r\n\r\n${tag}\r\n.`);
  expect(end.code, end.text).toBe(250);
  await withTimeout(b.waitForMessages(before + 1), 5_000, 'message');
  expect(b.messages.slice(before).map((m) => [m.rcptTo, m.body.toString('latin1')])).toEqual([[[to], `Subject: ${tag}\r\n\r\n${tag}\r\n`]]);
  expect((await d.cmd('QUIT')).code).toBe(221);
}

for (const { mode, config } of MODES) describe(`${mode} mode`, () => {
  let backend: RecordingBackend;
  let g: StartedGuard;
  const extra: StartedGuard[] = [];

  /** A guard for one test, in this mode (stopped after the test). */
  async function extraGuard(opts: Parameters<typeof startGuard>[0]): Promise<StartedGuard> {
    const s = await startGuard({ ...opts, config: { ...config, ...opts.config } });
    extra.push(s);
    expect(s.guard.services.pool !== undefined, 'pooled mode is on').toBe(mode === 'pooled');
    return s;
  }

  beforeAll(async () => {
    backend = await startRecordingBackend();
    g = await startGuard({
      backendPort: backend.port,
      rules: {
        acceptedDomains: ['example.com', 'example.org', 'example.net'],
        recipientValidation: { default: 'off', domains: { 'example.com': 'list', 'example.org': 'list' } },
        recipients: LIST,
      },
      config: { ...config, timeouts: { drain: '1s' } },
    });
    expect(g.guard.services.pool !== undefined, 'pooled mode is on').toBe(mode === 'pooled');
  });

  afterEach(async () => {
    for (const x of extra.splice(0)) await x.stop();
  });

  afterAll(async () => {
    await g?.stop();
    await backend?.close();
  });

  const forwardedRcpts = () => rcptLines(backend.lines());

  describe('list mode per domain', () => {
    test('known and alias addresses pass and are delivered; unknown get 550 5.1.1 and never reach the backend', async () => {
      const seen = since(backend);
      const d = await open(g.port);
      expect((await d.cmd('MAIL FROM:<sender@outside.test>')).code).toBe(250);
      const got = await rcpts(d, ['alice@example.com', 'ALLY@Example.COM', 'nobody@example.com', 'bob@example.com', 'bobby@example.com']);
      expect(got).toEqual({
        'alice@example.com': '250',
        'ALLY@Example.COM': '250',
        'nobody@example.com': '550 5.1.1',
        'bob@example.com': '250',
        'bobby@example.com': '550 5.1.1',
      });
      expect((await d.cmd('DATA')).code).toBe(354);
      const before = backend.messages.length;
      expect((await d.cmd('Subject: list mode\r\n\r\nhello list\r\n.')).code).toBe(250);
      await withTimeout(backend.waitForMessages(before + 1), 5_000, 'message');
      const msg = backend.messages.at(-1)!;
      expect(msg.rcptTo.map((r) => r.toLowerCase()).sort()).toEqual(['alice@example.com', 'ally@example.com', 'bob@example.com']);
      expect(forwardedRcpts().filter((l) => l.includes('nobody@') || l.includes('bobby@'))).toEqual([]);
      expect(rcptLines(seen())).toEqual(['rcpt to:<alice@example.com>', 'rcpt to:<ally@example.com>', 'rcpt to:<bob@example.com>']);
      await d.cmd('QUIT');
      d.close();
      await messageGoesThrough(g, backend, STRANGER, 'alice@example.com', 'after list refusals');
    });

    test('pipelined: unknown recipients in one batch are refused in order and never reach the backend', async () => {
      const seen = since(backend);
      const d = await open(g.port);
      const before = backend.messages.length;
      d.send(
        'MAIL FROM:<batch@outside.test>\r\n' +
          'RCPT TO:<alice@example.com>\r\n' +
          'RCPT TO:<ghost@example.com>\r\n' +
          'RCPT TO:<bob@example.com>\r\n' +
          'RCPT TO:<phantom@example.com>\r\n' +
          'DATA\r\n',
      );
      const r = await d.replyN(6);
      expect(r.map((x) => x.code)).toEqual([250, 250, 550, 250, 550, 354]);
      expect(r[2]!.text).toContain('5.1.1');
      expect(r[4]!.text).toContain('5.1.1');
      d.send('Subject: batch\r\n\r\nbatch\r\n.\r\nQUIT\r\n');
      expect((await d.reply()).code).toBe(250);
      expect((await d.reply()).code).toBe(221);
      await withTimeout(backend.waitForMessages(before + 1), 5_000, 'message');
      expect(backend.messages.slice(before).map((m) => m.rcptTo)).toEqual([['alice@example.com', 'bob@example.com']]);
      expect(rcptLines(seen())).toEqual(['rcpt to:<alice@example.com>', 'rcpt to:<bob@example.com>']);
    });

    test('every recipient unknown: DATA gets 554 5.5.1, nothing is forwarded, the session goes on', async () => {
      const seen = since(backend);
      const d = await open(g.port);
      expect((await d.cmd('MAIL FROM:<lost@outside.test>')).code).toBe(250);
      expect(await rcpts(d, ['ghost@example.com', 'phantom@example.com'])).toEqual({ 'ghost@example.com': '550 5.1.1', 'phantom@example.com': '550 5.1.1' });
      const data = await d.cmd('DATA');
      expect(data.code, data.text).toBe(554);
      expect(data.text).toContain('5.5.1');
      expect((await d.cmd('RSET')).code).toBe(250);
      expect((await d.cmd('MAIL FROM:<found@outside.test>')).code).toBe(250);
      expect(await rcpts(d, ['bob@example.com'])).toEqual({ 'bob@example.com': '250' });
      await d.cmd('QUIT');
      d.close();
      expect(rcptLines(seen())).toEqual(['rcpt to:<bob@example.com>']);
      expect(seen().filter((l) => /^DATA/i.test(l))).toEqual([]);
      await messageGoesThrough(g, backend, STRANGER, 'bob@example.com', 'after no valid recipients');
    });

    test('postmaster at a validated domain is accepted though not listed (RFC 5321 §4.5.1)', async () => {
      const seen = since(backend);
      const d = await open(g.port);
      expect((await d.cmd('MAIL FROM:<sender@outside.test>')).code).toBe(250);
      expect(await rcpts(d, ['postmaster@example.com', 'PostMaster@example.com', 'postmaster-not@example.com'])).toEqual({
        'postmaster@example.com': '250',
        'PostMaster@example.com': '250',
        'postmaster-not@example.com': '550 5.1.1',
      });
      await d.cmd('QUIT');
      d.close();
      expect(rcptLines(seen())).toEqual(['rcpt to:<postmaster@example.com>', 'rcpt to:<postmaster@example.com>']);
    });

    test('catch-all @domain accepts any local part; a domain in mode off is not validated; relay is still 5.7.1', async () => {
      const seen = since(backend);
      const d = await open(g.port);
      expect((await d.cmd('MAIL FROM:<sender@outside.test>')).code).toBe(250);
      const got = await rcpts(d, ['anyone@example.org', 'x.y+z@EXAMPLE.ORG', 'whoever@example.net', 'victim@elsewhere.test']);
      expect(got).toEqual({
        'anyone@example.org': '250',
        'x.y+z@EXAMPLE.ORG': '250',
        'whoever@example.net': '250',
        'victim@elsewhere.test': '550 5.7.1',
      });
      // Cut off in mid-transaction (pooled mode: the backend session is RSET and reused).
      d.close();
      await messageGoesThrough(g, backend, STRANGER, 'anyone@example.org', 'after a cut transaction');
      expect(rcptLines(seen()).filter((l) => !l.includes('anyone@example.org'))).toEqual(['rcpt to:<x.y+z@example.org>', 'rcpt to:<whoever@example.net>']);
      expect(forwardedRcpts().filter((l) => l.includes('elsewhere.test'))).toEqual([]);
    });

    test('an edit of the list file is picked up by the next RCPT; a broken edit keeps the previous list', async () => {
      const seen = since(backend);
      const file = path.join(g.rulesDir, 'recipients.txt');
      const d = await open(g.port);
      expect((await d.cmd('MAIL FROM:<sender@outside.test>')).code).toBe(250);
      expect(await rcpts(d, ['carol@example.com', 'ally@example.com'])).toEqual({ 'carol@example.com': '550 5.1.1', 'ally@example.com': '250' });

      // carol added, ally removed, the catch-all gone
      const r = await editList(g, file, 'alice@example.com\nbob@example.com\ncarol@example.com\n', (x) => x.ok && x.entries === 3);
      expect(r).toMatchObject({ ok: true, entries: 3 });
      expect(await rcpts(d, ['carol@example.com', 'ally@example.com', 'anyone@example.org'])).toEqual({
        'carol@example.com': '250',
        'ally@example.com': '550 5.1.1',
        'anyone@example.org': '550 5.1.1',
      });

      // A typo: the reload fails, the last good list stays in force.
      const bad = await editList(g, file, 'alice@example.com\nthis is not an address\n', (x) => !x.ok);
      expect(bad.ok).toBe(false);
      expect(await rcpts(d, ['carol@example.com', 'ally@example.com'])).toEqual({ 'carol@example.com': '250', 'ally@example.com': '550 5.1.1' });

      // Restore the original list for the other tests.
      await editList(g, file, LIST, (x) => x.ok && x.entries === 4);
      expect(await rcpts(d, ['ally@example.com'])).toEqual({ 'ally@example.com': '250' });
      await d.cmd('QUIT');
      d.close();
      // Only what the list in force accepted reached the backend.
      expect(rcptLines(seen())).toEqual(['rcpt to:<ally@example.com>', 'rcpt to:<carol@example.com>', 'rcpt to:<carol@example.com>', 'rcpt to:<ally@example.com>']);
    });
  });

  describe('--recipients-file (config recipientsFile)', () => {
    test('turns on list mode for every accepted domain', async () => {
      const dir = mkdtempSync(path.join(tmpdir(), 'rg-rcpt-file-'));
      try {
        const file = path.join(dir, 'valid.txt');
        writeFileSync(file, '# quick path\nalice@example.com\n@example.org\n');
        const s = await extraGuard({
          backendPort: backend.port,
          // No recipient-validation.yaml: validation would be off without the flag.
          rules: { acceptedDomains: ['example.com', 'example.org', 'example.net'] },
          config: { recipientsFile: file, timeouts: { drain: '1s' } },
        });
        const seen = since(backend);
        const d = await open(s.port);
        expect((await d.cmd('MAIL FROM:<sender@outside.test>')).code).toBe(250);
        expect(await rcpts(d, ['alice@example.com', 'nobody@example.com', 'someone@example.org', 'whoever@example.net'])).toEqual({
          'alice@example.com': '250',
          'nobody@example.com': '550 5.1.1',
          'someone@example.org': '250',
          'whoever@example.net': '550 5.1.1',
        });
        // The flag's file is watched too.
        await editList(s, file, 'alice@example.com\nwhoever@example.net\n', (x) => x.ok && x.entries === 2);
        expect(await rcpts(d, ['whoever@example.net', 'someone@example.org'])).toEqual({ 'whoever@example.net': '250', 'someone@example.org': '550 5.1.1' });
        await d.cmd('QUIT');
        d.close();
        expect(rcptLines(seen())).toEqual(['rcpt to:<alice@example.com>', 'rcpt to:<someone@example.org>', 'rcpt to:<whoever@example.net>']);
        await messageGoesThrough(s, backend, STRANGER, 'whoever@example.net', 'recipients-file');
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  describe('directory-harvest protection', () => {
    test('validation off: the backend\'s own 550 5.1.1 answers count too (a validating backend such as Exchange with recipient filtering)', async () => {
      const known = new Set(['alice@example.com']);
      const picky = await startRecordingBackend({
        server: {
          onRcptTo(address, _session, callback) {
            if (known.has(address.address.toLowerCase())) return callback();
            callback(Object.assign(new Error('5.1.1 User unknown'), { responseCode: 550 }));
          },
        },
      });
      try {
        const s = await extraGuard({
          backendPort: picky.port,
          rules: {
            acceptedDomains: ['example.com'],
            limits: {
              enabled: true,
              prefixV4: 24,
              prefixV6: 64,
              limits: [{ id: 'unknown-recipient-per-ip', event: 'unknown-recipient', key: 'ip', limit: 3, window: '10m', action: 'ban', ban: '1h' }],
            },
          },
          config: { timeouts: { drain: '1s' } },
        });
        const seen = since(picky);
        const d = await open(s.port, '127.0.0.33');
        expect((await d.cmd('MAIL FROM:<h@outside.test>')).code).toBe(250);
        const guesses = ['aaron', 'abby', 'adam'].map((n) => `${n}@example.com`);
        expect(await rcpts(d, ['alice@example.com', ...guesses])).toEqual({
          'alice@example.com': '250',
          [guesses[0]!]: '550 5.1.1',
          [guesses[1]!]: '550 5.1.1',
          [guesses[2]!]: '550 5.1.1',
        });
        d.send('RCPT TO:<adele@example.com>\r\n');
        const [refused, banned] = await d.replyN(2);
        expect(refused!.code).toBe(550);
        expect(banned!.code, banned!.text).toBe(421);
        await d.waitClosed();
        const before = picky.connections.length;
        const next = await Dialog.connect(s.port, { localAddress: '127.0.0.33' });
        expect((await next.reply()).code).toBe(554);
        await next.waitClosed();
        // Per-client mode: the banned client cost no backend connection (a pool opens its own).
        if (mode === 'per-client') expect(picky.connections.length).toBe(before);
        // Nothing after the ban reached the backend for this transaction.
        expect(seen().filter((l) => /^(MAIL|RCPT|DATA)/i.test(l))).toEqual([
          'MAIL FROM:<h@outside.test>',
          'RCPT TO:<alice@example.com>',
          ...guesses.map((x) => `RCPT TO:<${x}>`),
          'RCPT TO:<adele@example.com>',
        ]);
        // Another address is served (pooled mode: on a backend session the harvester gave back).
        await messageGoesThrough(s, picky, '127.0.0.34', 'alice@example.com', 'after a harvest ban');
      } finally {
        await picky.close();
      }
    });

    test('unknown recipients from one /24 → the prefix is banned: every address in it gets 554 before the backend', async () => {
      const s = await extraGuard({
        backendPort: backend.port,
        rules: {
          acceptedDomains: ['example.com'],
          recipientValidation: { default: 'list', domains: {} },
          recipients: 'alice@example.com\n',
          limits: {
            enabled: true,
            prefixV4: 24,
            prefixV6: 64,
            limits: [{ id: 'unknown-recipient-per-prefix', event: 'unknown-recipient', key: 'prefix', limit: 4, window: '10m', action: 'ban', ban: '1h' }],
          },
        },
        config: { timeouts: { drain: '1s' } },
      });
      const seen = since(backend);
      const guesses = ['aaron', 'abby', 'adam', 'adele', 'adrian', 'agnes'].map((n) => `${n}@example.com`);
      // Two harvesters in one /24 share the budget.
      const a = await open(s.port, '127.0.0.9');
      const b = await open(s.port, '127.0.0.10');
      expect((await a.cmd('MAIL FROM:<h@outside.test>')).code).toBe(250);
      expect((await b.cmd('MAIL FROM:<h@outside.test>')).code).toBe(250);
      expect(await rcpts(a, guesses.slice(0, 2))).toEqual({ [guesses[0]!]: '550 5.1.1', [guesses[1]!]: '550 5.1.1' });
      expect(await rcpts(b, guesses.slice(2, 4))).toEqual({ [guesses[2]!]: '550 5.1.1', [guesses[3]!]: '550 5.1.1' });
      const banned = await b.cmd(`RCPT TO:<${guesses[4]}>`);
      expect(banned.code, banned.text).toBe(421);
      await b.waitClosed();
      expect(s.guard.services.bans!.list()).toEqual([expect.objectContaining({ target: '127.0.0.0/24', source: 'automatic' })]);
      expect(forwardedRcpts().filter((l) => guesses.some((x) => l.includes(x)))).toEqual([]);
      a.close();

      // A third address of the prefix never reaches the backend.
      const before = backend.connections.length;
      const c = await Dialog.connect(s.port, { localAddress: '127.0.0.11' });
      const r = await c.reply();
      expect(r.code, r.text).toBe(554);
      expect(r.text).toContain('5.7.1');
      await c.waitClosed();
      if (mode === 'per-client') expect(backend.connections.length).toBe(before);
      expect(rcptLines(seen())).toEqual([]);
      // Another network is served.
      await messageGoesThrough(s, backend, OTHER_PREFIX, 'alice@example.com', 'after a prefix ban');
    });
  });
});
