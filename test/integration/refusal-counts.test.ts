/**
 * Issue 18 item 3: every refusal the guard writes itself — policy, limits, protocol — gets one log
 * line and one count by rule id (relay_guard_command_refusals_total{rule}).
 * A real guard in front of a recording backend (smtp-server), in both backend modes. Each row below
 * drives one refusal over a real socket, each from its own client address (limits are keyed by
 * address); around it /metrics is scraped over HTTP from the admin listener. The counter must have
 * moved by exactly the row's rule ids (nothing else), and the log must have gained exactly one line
 * with a `ruleId` per refusal, under the same rule id.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { REFUSAL_RULES } from '../../src/observability/metrics.js';
import type { LimitRule } from '../../src/limits/schema.js';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { MODES, withMode } from '../helpers/modes.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';

const METRIC = 'relay_guard_command_refusals_total';

/** Test limits: a second message from one sender is deferred; a second relay attempt from one address bans it. */
const LIMITS: LimitRule[] = [
  { id: 'test-messages-per-sender', event: 'message', key: 'sender', limit: 1, window: '1h', action: 'tempfail', exemptTrusted: true },
  { id: 'test-relay-ban', event: 'relay-denied', key: 'ip', limit: 1, window: '1h', action: 'ban', ban: '1h', maxBan: '1h', exemptTrusted: true },
];

/** Log lines that carry a ruleId but are not refusals the guard wrote. */
const NOT_REFUSALS = new Set(['rcpt accepted', 'rcpt would be refused', 'sender would be refused']);

interface Row {
  name: string;
  /** The rule ids this row's refusals are counted under, one entry per refusal. */
  rules: string[];
  run(c: Client): Promise<void>;
}

interface Client {
  /** Connect from this row's own address; expect the 220 greeting and (unless told) answer EHLO. */
  greet(ehlo?: boolean): Promise<Dialog>;
  /** Connect from this row's own address, and nothing else. */
  connect(): Promise<Dialog>;
  /** A sender address used by this row only. */
  sender: string;
}

async function expectReply(d: Dialog, line: string, code: number, enhanced?: string): Promise<void> {
  const r = await d.cmd(line);
  expect(r.code, `${line.slice(0, 40)} → ${r.text}`).toBe(code);
  if (enhanced) expect(r.lines[0]).toMatch(new RegExp(`^${enhanced.replace(/\./g, '\\.')}\\b`));
}

const ROWS: Row[] = [
  // ── policy: the envelope judge ──
  {
    name: 'relay denied',
    rules: ['relay-denied'],
    async run(c) {
      const d = await c.greet();
      await expectReply(d, `MAIL FROM:<${c.sender}>`, 250);
      await expectReply(d, 'RCPT TO:<victim@elsewhere.test>', 550, '5.7.1');
      await expectReply(d, 'QUIT', 221);
    },
  },
  {
    name: 'routing trick (percent hack)',
    rules: ['routing-tricks'],
    async run(c) {
      const d = await c.greet();
      await expectReply(d, `MAIL FROM:<${c.sender}>`, 250);
      await expectReply(d, 'RCPT TO:<victim%elsewhere.test@example.com>', 501, '5.1.3');
      await expectReply(d, 'QUIT', 221);
    },
  },
  {
    name: 'too many recipients',
    rules: ['too-many-recipients'],
    async run(c) {
      const d = await c.greet();
      await expectReply(d, `MAIL FROM:<${c.sender}>`, 250);
      await expectReply(d, 'RCPT TO:<a@example.com>', 250);
      await expectReply(d, 'RCPT TO:<b@example.com>', 250);
      await expectReply(d, 'RCPT TO:<c@example.com>', 452, '4.5.3');
      await expectReply(d, 'QUIT', 221);
    },
  },
  {
    name: 'sender address syntax',
    rules: ['sender-syntax'],
    async run(c) {
      const d = await c.greet();
      await expectReply(d, 'MAIL FROM:<no-domain@>', 501);
      await expectReply(d, 'QUIT', 221);
    },
  },
  {
    name: 'DATA without MAIL',
    rules: ['mail-required'],
    async run(c) {
      const d = await c.greet();
      await expectReply(d, 'DATA', 503);
      await expectReply(d, 'QUIT', 221);
    },
  },
  // ── protocol ──
  {
    name: 'unknown verb',
    rules: ['unknown-verb'],
    async run(c) {
      const d = await c.greet();
      await expectReply(d, 'FOOBAR something', 500);
      await expectReply(d, 'QUIT', 221);
    },
  },
  {
    name: 'too many errors: the hard error limit closes with 421',
    rules: ['unknown-verb', 'unknown-verb', 'unknown-verb', 'unknown-verb', 'too-many-errors'],
    async run(c) {
      const d = await c.greet();
      for (let i = 0; i < 4; i++) await expectReply(d, `FOOBAR ${i}`, 500);
      const r = await d.reply();
      expect(r.code, r.text).toBe(421);
      await d.waitClosed();
    },
  },
  {
    name: 'VRFY',
    rules: ['verb-not-allowed'],
    async run(c) {
      const d = await c.greet();
      await expectReply(d, 'VRFY postmaster', 502);
      await expectReply(d, 'QUIT', 221);
    },
  },
  {
    name: 'EXPN',
    rules: ['verb-not-allowed'],
    async run(c) {
      const d = await c.greet();
      await expectReply(d, 'EXPN staff', 502);
      await expectReply(d, 'QUIT', 221);
    },
  },
  {
    name: 'command syntax (EHLO without a domain)',
    rules: ['command-syntax'],
    async run(c) {
      const d = await c.greet(false);
      await expectReply(d, 'EHLO', 501);
      await expectReply(d, 'QUIT', 221);
    },
  },
  {
    name: 'line too long',
    rules: ['line-too-long'],
    async run(c) {
      const d = await c.greet();
      await expectReply(d, 'A'.repeat(2000), 500, '5.5.2');
      await expectReply(d, 'QUIT', 221);
    },
  },
  {
    name: 'HTTP request on the SMTP port',
    rules: ['http-request'],
    async run(c) {
      const d = await c.greet(false);
      d.send('GET / HTTP/1.1\r\n');
      const r = await d.reply();
      expect(r.code, r.text).toBe(421);
      await d.waitClosed();
    },
  },
  {
    name: 'STARTTLS on a listener without TLS',
    rules: ['starttls-not-offered'],
    async run(c) {
      const d = await c.greet();
      await expectReply(d, 'STARTTLS', 502);
      await expectReply(d, 'QUIT', 221);
    },
  },
  {
    name: 'AUTH over plaintext from a stranger',
    rules: ['auth-requires-tls'],
    async run(c) {
      const d = await c.greet();
      await expectReply(d, `AUTH PLAIN ${Buffer.from('\0alice\0secret').toString('base64')}`, 530, '5.7.0');
      await expectReply(d, 'QUIT', 221);
    },
  },
  {
    name: 'an early talker',
    rules: ['early-talker'],
    async run(c) {
      const d = await c.connect();
      d.send('EHLO impatient.test\r\n');
      const r = await d.reply();
      expect(r.code, r.text).toBe(554);
      await d.waitClosed();
    },
  },
  {
    name: 'SMTP smuggling in DATA',
    rules: ['smuggling'],
    async run(c) {
      const d = await c.greet();
      await expectReply(d, `MAIL FROM:<${c.sender}>`, 250);
      await expectReply(d, 'RCPT TO:<smuggle@example.com>', 250);
      await expectReply(d, 'DATA', 354);
      await expectReply(d, 'Subject: s\r\n\r\nhello\n.\nMAIL FROM:<evil@outside.test>\r\n.', 554, '5.6.0');
      await d.waitClosed();
    },
  },
  {
    name: 'message too large',
    rules: ['message-too-large'],
    async run(c) {
      const d = await c.greet();
      await expectReply(d, `MAIL FROM:<${c.sender}>`, 250);
      await expectReply(d, 'RCPT TO:<big@example.com>', 250);
      await expectReply(d, 'DATA', 354);
      // Read to its end, then 552 (per client the aborted message took the backend connection: and close).
      await expectReply(d, `Subject: big\r\n\r\n${`${'x'.repeat(70)}\r\n`.repeat(100)}.`, 552, '5.3.4');
      d.socket.end();
      await d.waitClosed();
    },
  },
  // ── limits ──
  {
    name: 'rate limit: a second message from one sender is deferred',
    rules: ['test-messages-per-sender'],
    async run(c) {
      const d = await c.greet();
      await expectReply(d, `MAIL FROM:<${c.sender}>`, 250);
      await expectReply(d, 'RSET', 250);
      await expectReply(d, `MAIL FROM:<${c.sender}>`, 450);
      await expectReply(d, 'QUIT', 221);
    },
  },
  {
    name: 'ban: a second relay attempt bans the address (the RCPT is refused, then the limit closes)',
    rules: ['relay-denied', 'relay-denied', 'test-relay-ban'],
    async run(c) {
      const d = await c.greet();
      await expectReply(d, `MAIL FROM:<${c.sender}>`, 250);
      await expectReply(d, 'RCPT TO:<one@elsewhere.test>', 550, '5.7.1');
      await expectReply(d, 'RCPT TO:<two@elsewhere.test>', 421);
      await d.waitClosed();
    },
  },
  {
    name: 'a banned client at connect',
    rules: ['ban'],
    async run(c) {
      // The previous row's address, banned there.
      const d = await c.connect();
      const r = await d.reply();
      expect(r.code, r.text).toBe(554);
      await d.waitClosed();
    },
  },
];

/** Each row's own client address (limits count per address); the ban row reuses the banned one. */
function addressOf(i: number): string {
  const row = ROWS[i]!;
  if (row.name.startsWith('a banned client')) return addressOf(i - 1);
  return `127.0.0.${20 + i}`;
}

/** relay_guard_command_refusals_total by rule, from the Prometheus text format. */
function parseRefusals(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^relay_guard_command_refusals_total\{rule="([^"]*)"\} (\S+)$/gm)) out[m[1]!] = Number(m[2]);
  return out;
}

function tally(rules: readonly string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const r of rules) out[r] = (out[r] ?? 0) + 1;
  return out;
}

for (const { mode, config: modeConfig } of MODES) describe(`refusals counted by rule id (${mode} mode)`, () => {
  let backend: RecordingBackend;
  let g: StartedGuard;
  let metricsUrl: string;

  async function scrape(): Promise<Record<string, number>> {
    const res = await fetch(metricsUrl);
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(text).toContain(`# TYPE ${METRIC} counter`);
    return parseRefusals(text);
  }

  beforeAll(async () => {
    backend = await startRecordingBackend({
      server: {
        authMethods: ['PLAIN'],
        allowInsecureAuth: true,
        onAuth(_auth, _session, callback) {
          callback(new Error('Invalid username or password'));
        },
      },
    });
    g = await startGuard({
      backendPort: backend.port,
      rules: { acceptedDomains: ['example.com'], limits: { enabled: true, prefixV4: 24, prefixV6: 64, limits: LIMITS } },
      config: withMode(modeConfig, {
        admin: { enabled: true, address: '127.0.0.1', port: 0, metricsAuth: false },
        listeners: [{ name: 'mx', address: '127.0.0.1', port: 0, kind: 'mx', starttls: false }],
        // A greeting delay makes "talks before the greeting" deterministic for the early talker.
        smtp: { greetingDelay: '100ms', maxRecipients: 2, maxMessageBytes: 4096, vrfy: 'refuse', softErrorLimit: 3, hardErrorLimit: 4, errorDelay: '0s' },
        timeouts: { drain: '1s' },
      }),
    });
    expect(g.guard.services.pool !== undefined, 'pooled mode is on').toBe(mode === 'pooled');
    const a = g.guard.adminAddress();
    if (!a) throw new Error('admin listener not bound');
    metricsUrl = `http://${a.host}:${a.port}/metrics`;
  });

  afterAll(async () => {
    await g?.stop();
    await backend?.close();
  });

  test('the counter is declared and its everyday rule ids are published at 0 before the first refusal', async () => {
    const start = await scrape();
    for (const rule of ['relay-denied', 'routing-tricks', 'verb-not-allowed', 'unknown-verb', 'line-too-long', 'early-talker', 'ban']) expect(start[rule], rule).toBe(0);
  });

  test.each(ROWS.map((row, i) => ({ ...row, i })))('$name: counted once by rule id, one log line each', async ({ i, rules, run }) => {
    const before = await scrape();
    const logMark = g.logs.length;
    const from = addressOf(i);
    const client: Client = {
      sender: `row${i}@outside.test`,
      connect: () => Dialog.connect(g.port, { localAddress: from }),
      async greet(ehlo = true) {
        const d = await Dialog.connect(g.port, { localAddress: from });
        const hello = await d.reply();
        expect(hello.code, hello.text).toBe(220);
        if (ehlo) await expectReply(d, 'EHLO client.test', 250);
        return d;
      },
    };
    await run(client);
    // The refusal is counted and logged before its reply is written: both are in by now.
    const after = await scrape();
    const moved: Record<string, number> = {};
    for (const [rule, n] of Object.entries(after)) if (n !== (before[rule] ?? 0)) moved[rule] = n - (before[rule] ?? 0);
    expect(moved).toEqual(tally(rules));
    const lines = g.logs.slice(logMark).filter((l) => typeof l.ruleId === 'string' && !NOT_REFUSALS.has(String(l.msg)));
    expect(lines.map((l) => l.ruleId).sort(), JSON.stringify(lines.map((l) => l.msg))).toEqual([...rules].sort());
    // Each line says what the client was told.
    for (const l of lines) if (l.ruleId !== 'backend-client-share') expect(l.reply, String(l.msg)).toMatch(/^[45]\d\d /);
  });

  test('every rule id the rows produced is a built-in one or a configured limit id (a closed vocabulary)', async () => {
    const all = await scrape();
    const known = new Set<string>([...REFUSAL_RULES, ...LIMITS.map((l) => l.id)]);
    const seen = Object.entries(all).filter(([, n]) => n > 0).map(([r]) => r);
    expect(seen.length).toBeGreaterThanOrEqual(15);
    expect(seen.filter((r) => !known.has(r))).toEqual([]);
    // Nothing any client said is a label value.
    for (const r of seen) expect(r).toMatch(/^[a-z0-9]+(-[a-z0-9]+)*$/);
  });
});
