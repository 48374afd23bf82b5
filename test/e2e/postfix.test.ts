/**
 * End to end against a real MTA (issue 9 §2): swaks → relay-guard → a private Postfix configured
 * as a wide-open relay on loopback that splits DATA on a bare LF (the stand-in for an unpatched
 * Exchange). Assertions are on what Postfix logged and queued, never on the guard's own view.
 *
 * Every guard-facing test runs twice against the same Postfix: one backend connection per client,
 * and pooled mode (the guard greets and answers EHLO itself and lends a pre-opened backend session
 * from MAIL to the reply to end-of-data, so one Postfix connection carries many clients). What
 * Postfix queued or logged is therefore told apart per message, never per connection: each test
 * uses its own envelope sender (…-<mode>@sender.test), unique across both modes.
 *
 * Control tests send the same traffic straight to Postfix first: they prove the backend really is
 * open and vulnerable, so every "never queued" assertion below can fail.
 */
import { execFile } from 'node:child_process';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startPostfix, postfixUnavailable, type PrivatePostfix, type QueuedMessage } from '../helpers/postfix.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';
import { until, withTimeout } from '../helpers/with-timeout.js';

const STRANGER = '127.0.0.9';
const unavailable = postfixUnavailable();
if (unavailable && !process.env.CI) process.stderr.write(`postfix e2e: skipped on this machine: ${unavailable}\n`);

const POOLED = { backend: { maxConnections: 20, pool: { enabled: true, minIdle: 2, max: 4, acquireTimeout: '10s', healthInterval: '30s' } } };
const MODES: Array<{ mode: 'per-client' | 'pooled'; tag: string; config: Record<string, unknown> }> = [
  { mode: 'per-client', tag: 'pc', config: {} },
  { mode: 'pooled', tag: 'pool', config: POOLED },
];

let pf: PrivatePostfix;
/** The guard of the mode running now (none during the control tests). */
let g: StartedGuard | undefined;
/**
 * smtpd connections we caused and Postfix must log (the start-up probe is the first): direct ones,
 * and per-client guard sessions. A pooled guard's clients open none: its own sessions are counted
 * by the pool.
 */
let expectedConnects = 1;

beforeAll(async () => {
  if (unavailable) {
    if (process.env.CI) throw new Error(`the Postfix end-to-end suite cannot run: ${unavailable}`);
    return;
  }
  pf = await startPostfix();
}, 60_000);

afterAll(async () => {
  await stopGuard();
  await pf?.stop();
}, 60_000);

function guard(): StartedGuard {
  if (!g) throw new Error('no guard running');
  return g;
}

async function stopGuard(): Promise<void> {
  const running = g;
  g = undefined;
  await running?.stop();
}

/** A client connection to the guard: Postfix sees a connection of its own only in per-client mode. */
function guardClient(): void {
  if (!guard().guard.services.pool) expectedConnects++;
}

interface SwaksResult {
  exit: number;
  out: string;
}

/** Run swaks (exit status and transcript; a refusal is a non-zero exit, not an exception). */
function swaks(args: string[]): Promise<SwaksResult> {
  return withTimeout(
    new Promise((resolve, reject) => {
      execFile('swaks', ['--timeout', '15', '--helo', 'client.test', ...args], { timeout: 20_000 }, (err, stdout, stderr) => {
        const code = (err as { code?: unknown } | null)?.code;
        if (err && typeof code !== 'number') return reject(err);
        resolve({ exit: typeof code === 'number' ? code : 0, out: `${stdout}${stderr}` });
      });
    }),
    25_000,
    'swaks',
  );
}

/** swaks through the guard, as an untrusted stranger. */
function viaGuard(args: string[]): Promise<SwaksResult> {
  guardClient();
  return swaks(['--server', `127.0.0.1:${guard().port}`, '--local-interface', STRANGER, ...args]);
}

function direct(args: string[]): Promise<SwaksResult> {
  expectedConnects++;
  return swaks(['--server', `127.0.0.1:${pf.port}`, ...args]);
}

/** smtpd connections Postfix logged as opened, and as closed. */
function connectCounts(): { connects: number; disconnects: number } {
  const log = pf.maillog();
  return {
    connects: log.match(/postfix\/smtpd\[\d+\]: connect from /g)?.length ?? 0,
    disconnects: log.match(/postfix\/smtpd\[\d+\]: disconnect from /g)?.length ?? 0,
  };
}

/** A connection straight to Postfix: greeting, QUIT, closed. */
function probe(): Promise<void> {
  expectedConnects++;
  return withTimeout(
    new Promise((resolve, reject) => {
      const s = net.connect(pf.port, '127.0.0.1');
      let got = '';
      s.on('data', (d: Buffer) => {
        got += d.toString('latin1');
        if (got.includes('\r\n') && !s.writableEnded) s.end('QUIT\r\n');
      });
      s.on('error', reject);
      s.on('close', () => resolve());
    }),
    10_000,
    'probe',
  );
}

/**
 * Nothing more can be queued or logged for what was sent so far. Per-client mode: every client
 * session ended and every smtpd connection logged its disconnect. Pooled mode: every client session
 * ended, every pooled session is idle (the backend answered everything sent on it, an RSET included)
 * and every smtpd connection but the pool's open ones logged its disconnect; then a probe straight
 * to Postfix, whose disconnect is logged after any line the pooled sessions caused (one log socket,
 * in order), so a RCPT Postfix accepted on a still-open pooled connection is in the log by then.
 */
async function settled(): Promise<void> {
  if (g) await until(() => guard().guard.services.registry.size === 0, 10_000, 'every client session to end');
  const pool = g?.guard.services.pool;
  if (!pool) return pf.settled(expectedConnects);
  await until(() => pool.total === pool.idleCount, 10_000, 'every pooled session idle');
  await probe();
  await until(
    () => {
      const { connects, disconnects } = connectCounts();
      return pool.total === pool.idleCount && connects >= expectedConnects && connects - disconnects === pool.live;
    },
    10_000,
    'postfix to log every connection but the pooled ones as closed',
  );
}

async function queuedFrom(sender: string): Promise<QueuedMessage[]> {
  await settled();
  return (await pf.queued()).filter((m) => m.sender === sender);
}

/** smtpd log lines about RCPTs Postfix accepted for this sender ("hold: RCPT from … from=<s> to=<r>"). */
function rcptLogLines(sender: string): string[] {
  return pf
    .maillog()
    .split('\n')
    .filter((l) => l.includes('hold: RCPT from') && l.includes(`from=<${sender}>`));
}

/** A raw step: send `data` once the server has sent `after` final reply lines in total. */
interface RawStep {
  after: number;
  data: string | Buffer;
}

/** Lock-step: each step waits for one more reply (the greeting first). */
function lockstep(steps: Array<string | Buffer>): RawStep[] {
  return steps.map((data, i) => ({ after: i + 1, data }));
}

/** Raw bytes to a port; resolves with everything the server said once it closes (bounded). */
function rawSession(port: number, steps: RawStep[], opts: { localAddress?: string } = {}): Promise<string> {
  return withTimeout(
    new Promise((resolve, reject) => {
      const s = net.connect({ port, host: '127.0.0.1', ...(opts.localAddress ? { localAddress: opts.localAddress } : {}) });
      let got = '';
      let step = 0;
      s.on('data', (d: Buffer) => {
        got += d.toString('latin1');
        const finals = got.split('\r\n').filter((l) => /^\d{3} /.test(l)).length;
        while (step < steps.length && steps[step]!.after <= finals) s.write(steps[step++]!.data);
      });
      s.on('error', reject);
      s.on('close', () => resolve(got));
    }),
    20_000,
    'raw session',
  );
}

function directRaw(steps: RawStep[]): Promise<string> {
  expectedConnects++;
  return rawSession(pf.port, steps);
}

/** Raw bytes to the guard, as an untrusted stranger. */
function guardRaw(steps: RawStep[]): Promise<string> {
  guardClient();
  return rawSession(guard().port, steps, { localAddress: STRANGER });
}

function codesOf(out: string): number[] {
  return out.split('\r\n').filter((l) => /^\d{3} /.test(l)).map((l) => Number(l.slice(0, 3)));
}

/** Relay attempts expressible as swaks --to (no commas: swaks splits recipient lists on them). */
const SWAKS_RELAY: string[] = [
  'victim@elsewhere.test',
  'VICTIM@ELSEWHERE.TEST',
  'victim@elsewhere.test.',
  '"victim"@elsewhere.test',
  'postmaster@elsewhere.test',
  'victim%elsewhere.test@example.com',
  '"victim%elsewhere.test"@example.com',
  'victim%elsewhere.test',
  'victim%elsewhere.test%example.com@example.com',
  'elsewhere.test!victim@example.com',
  '"elsewhere.test!victim"@example.com',
  'elsewhere.test!victim',
  'victim@elsewhere.test@example.com',
  '"victim@elsewhere.test"@example.com',
  '@example.com:victim@elsewhere.test',
  '@example.com:victim%elsewhere.test@example.com',
  'victim@[192.0.2.1]',
  'victim@[127.0.0.1]',
  'victim@[IPv6:::ffff:127.0.0.1]',
  'victim@localhost',
  'victim@backend.test',
  'victim@example.com.elsewhere.test',
  'victim@x.example.com',
  'IMCEASMTP-victim+40elsewhere+2Etest@example.com',
];

/** Relay attempts only a raw socket can send: the text after "RCPT TO:". */
const RAW_RELAY: string[] = [
  ' victim@elsewhere.test',
  '<@example.com,@mx.example.com:victim@elsewhere.test>',
  '<victim@elsewhere.test> NOTIFY=NEVER ORCPT=rfc822;victim@elsewhere.test',
  '<victim@elsewhere.test (comment)>',
  '<victim\\@elsewhere.test@example.com>',
  '<victim@elsewhere.test>\0<user@example.com>',
];

/** End-of-data look-alikes Postfix (smtpd_forbid_bare_newline = no) or another MTA may honour. */
const SMUGGLING: Array<[string, string]> = [
  ['LF . LF', '\n.\n'],
  ['CR LF . LF', '\r\n.\n'],
  ['LF . CR LF', '\n.\r\n'],
  ['CR . CR', '\r.\r'],
  ['CR . CR LF', '\r.\r\n'],
  ['CR LF . CR', '\r\n.\r'],
  ['NUL before end', '\0\r\n.\r\n'],
];

/** Postfix's per-connection command counts for verbs the guard must keep from it. */
const KEPT_VERBS = /disconnect from .*\b(bdat|vrfy|expn|etrn)=/;

// Skipped only on a developer machine without root or Postfix (the reason is printed at load);
// in CI (CI=true, root, postfix installed by .ci/run) it always runs, and fails loudly if it cannot.
const d = unavailable && !process.env.CI ? describe.skip : describe;

d('control: the backend alone is an open, smuggling-prone relay', () => {
  test('Postfix relays to a foreign domain for a loopback client', async () => {
    const r = await direct(['--from', 'ctl-relay@sender.test', '--to', 'victim@elsewhere.test']);
    expect(r.exit, r.out).toBe(0);
    const q = await queuedFrom('ctl-relay@sender.test');
    expect(q.map((m) => m.recipients)).toEqual([['victim@elsewhere.test']]);
  });

  test('Postfix relays the plain tricks too (percent hack)', async () => {
    // Not every form is accepted by Postfix itself, but the plain ones are: the backend is open.
    const r = await direct(['--from', 'ctl-relay-2@sender.test', '--to', 'victim@elsewhere.test,victim%elsewhere.test@example.com']);
    expect(r.exit, r.out).toBe(0);
    expect(rcptLogLines('ctl-relay-2@sender.test').length).toBeGreaterThan(0);
  });

  test('Postfix ends DATA on a bare LF dot LF: one connection, two queued messages', async () => {
    const out = await directRaw(lockstep([
      'EHLO client.test\r\n',
      'MAIL FROM:<ctl-outer@sender.test>\r\n',
      'RCPT TO:<user@example.com>\r\n',
      'DATA\r\n',
      'Subject: outer\r\n\r\nhello\n.\nMAIL FROM:<ctl-inner@sender.test>\r\nRCPT TO:<victim@elsewhere.test>\r\nDATA\r\nSubject: inner\r\n\r\nsmuggled\r\n.\r\n',
      'QUIT\r\n',
    ]));
    expect(out).toContain('354');
    expect(await queuedFrom('ctl-outer@sender.test')).toHaveLength(1);
    const inner = await queuedFrom('ctl-inner@sender.test');
    expect(inner.map((m) => m.recipients)).toEqual([['victim@elsewhere.test']]);
  });

  test('Postfix logs VRFY in its per-connection counts (so "never reached Postfix" can fail)', async () => {
    await directRaw(lockstep(['EHLO client.test\r\n', 'VRFY postmaster\r\n', 'QUIT\r\n']));
    await settled();
    expect(pf.maillog()).toMatch(/disconnect from .*\bvrfy=1/);
  });
});

for (const { mode, tag, config } of MODES) d(`through the guard, ${mode} mode`, () => {
  /** A sender unique to this test and this mode. */
  const s = (name: string) => `${name}-${tag}@sender.test`;
  /** Where this mode's part of the mail log begins. */
  let mark = 0;

  beforeAll(async () => {
    await settled();
    mark = pf.maillog().length;
    g = await startGuard({ backendPort: pf.port, rules: { acceptedDomains: ['example.com'] }, config: { log: { level: 'warn' }, ...config } });
    expect(g.guard.services.pool !== undefined, 'pooled mode is on').toBe(mode === 'pooled');
  }, 60_000);

  afterAll(async () => {
    await stopGuard();
  }, 60_000);

  describe('inbound delivery', () => {
    test('mail to an accepted domain is queued by Postfix, envelope and body intact', async () => {
      const body = `first line\n.leading dot\n..two dots\nlast line token-7f3a-${tag}`;
      const r = await viaGuard([
        '--from', s('in-1'),
        '--to', 'alice@example.com',
        '--header', `Message-Id: <e2e-in-1-${tag}@sender.test>`,
        '--body', body,
      ]);
      expect(r.exit, r.out).toBe(0);
      expect(r.out).toMatch(/<- {2}250 2\.0\.0 Ok: queued as [0-9A-F]+/);
      const q = await queuedFrom(s('in-1'));
      expect(q).toHaveLength(1);
      expect(q[0]!.recipients).toEqual(['alice@example.com']);
      expect(q[0]!.queueName).toBe('hold');
      const content = await pf.content(q[0]!.queueId);
      expect(content).toContain(`Message-Id: <e2e-in-1-${tag}@sender.test>`);
      expect(content).toContain('.leading dot');
      expect(content).toContain('..two dots');
      expect(content).toContain(`last line token-7f3a-${tag}`);
    });

    test('canonical forms reach Postfix: upper-case domain, trailing dot, needless quotes', async () => {
      const r = await viaGuard(['--from', s('in-2'), '--to', 'Bob@EXAMPLE.COM.,"carol"@example.com']);
      expect(r.exit, r.out).toBe(0);
      const q = await queuedFrom(s('in-2'));
      expect(q).toHaveLength(1);
      expect(q[0]!.recipients.sort()).toEqual(['Bob@example.com', 'carol@example.com']);
    });

    test('several messages on one connection are each queued, each with its own body', async () => {
      guardClient();
      const dlg = await Dialog.connect(guard().port, { localAddress: STRANGER });
      expect((await dlg.reply()).code).toBe(220);
      expect((await dlg.cmd('EHLO client.test')).code).toBe(250);
      for (let i = 0; i < 3; i++) {
        expect((await dlg.cmd(`MAIL FROM:<${s('in-3')}>`)).code).toBe(250);
        expect((await dlg.cmd(`RCPT TO:<user${i}@example.com>`)).code).toBe(250);
        expect((await dlg.cmd('DATA')).code).toBe(354);
        expect((await dlg.cmd(`Subject: in-3-${tag}-m${i}\r\n\r\nbody ${i}\r\n.`)).code).toBe(250);
      }
      expect((await dlg.cmd('QUIT')).code).toBe(221);
      await dlg.waitClosed();
      const q = await queuedFrom(s('in-3'));
      expect(q).toHaveLength(3);
      for (const m of q) {
        const i = Number(/^user(\d)@example\.com$/.exec(m.recipients[0]!)?.[1]);
        expect(m.recipients).toEqual([`user${i}@example.com`]);
        expect(await pf.content(m.queueId)).toContain(`Subject: in-3-${tag}-m${i}`);
      }
      expect(q.map((m) => m.recipients[0]).sort()).toEqual(['user0@example.com', 'user1@example.com', 'user2@example.com']);
    });
  });

  describe('relay attempts are refused and never reach Postfix', () => {
    test.each(SWAKS_RELAY.map((to, i) => [i, to] as const))('swaks variant %i: %s', async (i, to) => {
      const sender = s(`relay-s${i}`);
      const r = await viaGuard(['--from', sender, '--to', to]);
      expect(r.exit, r.out).not.toBe(0);
      expect(r.out, r.out).toMatch(/<\*\* +5\d\d /);
      expect(await queuedFrom(sender)).toEqual([]);
      expect(rcptLogLines(sender)).toEqual([]);
    });

    test(`${RAW_RELAY.length} raw-socket variants are refused and never reach Postfix`, async () => {
      for (const [i, arg] of RAW_RELAY.entries()) {
        const sender = s(`relay-r${i}`);
        const out = await guardRaw(
          lockstep(['EHLO client.test\r\n', `MAIL FROM:<${sender}>\r\n`, Buffer.from(`RCPT TO:${arg}\r\n`, 'latin1'), 'DATA\r\n', 'QUIT\r\n']),
        );
        const codes = codesOf(out);
        // greeting, EHLO, MAIL, then RCPT refused with 5xx, DATA refused.
        expect(codes[3], `${arg}: ${out}`).toBeGreaterThanOrEqual(500);
        expect(codes[4], `${arg}: ${out}`).toBeGreaterThanOrEqual(500);
        expect(await queuedFrom(sender)).toEqual([]);
        expect(rcptLogLines(sender)).toEqual([]);
      }
    });

    test('mixed recipients: only the accepted one is queued', async () => {
      const r = await viaGuard(['--from', s('mixed'), '--to', 'victim@elsewhere.test,dave@example.com,victim%elsewhere.test@example.com']);
      expect(r.out).toMatch(/<\*\* +550 /);
      const q = await queuedFrom(s('mixed'));
      expect(q.map((m) => m.recipients)).toEqual([['dave@example.com']]);
      const lines = rcptLogLines(s('mixed'));
      expect(lines).toHaveLength(1);
      expect(lines[0]).toContain('to=<dave@example.com>');
    });
  });

  describe('pipelining', () => {
    test('swaks --pipeline: replies in order, only accepted recipients queued', async () => {
      const r = await viaGuard([
        '--pipeline',
        '--from', s('pipe-1'),
        '--to', 'erin@example.com,victim@elsewhere.test,frank@example.com',
      ]);
      expect(r.out).toContain('PIPELINING');
      expect(r.out).toMatch(/<\*\* +550 5\.7\.1/);
      expect(r.out).toMatch(/<- {2}250 2\.0\.0 Ok: queued as/);
      const q = await queuedFrom(s('pipe-1'));
      expect(q).toHaveLength(1);
      expect(q[0]!.recipients.sort()).toEqual(['erin@example.com', 'frank@example.com']);
    });

    test('a whole transaction in one write (RFC 2920): queued once, replies in command order', async () => {
      const out = await guardRaw([
        { after: 1, data: 'EHLO client.test\r\n' },
        { after: 2, data: `MAIL FROM:<${s('pipe-2')}>\r\nRCPT TO:<gina@example.com>\r\nRCPT TO:<victim@elsewhere.test>\r\nDATA\r\n` },
        { after: 6, data: `Subject: pipelined-${tag}\r\n\r\nbody\r\n.\r\nQUIT\r\n` },
      ]);
      const codes = codesOf(out);
      expect(codes).toEqual([220, 250, 250, 250, 550, 354, 250, 221]);
      const q = await queuedFrom(s('pipe-2'));
      expect(q.map((m) => m.recipients)).toEqual([['gina@example.com']]);
      expect(await pf.content(q[0]!.queueId)).toContain(`Subject: pipelined-${tag}`);
    });
  });

  describe('SMTP smuggling', () => {
    test.each(SMUGGLING.map(([name, end], i) => [name, end, i] as const))('%s is refused, never a second queued message', async (_name, end, i) => {
      const outer = s(`smug-outer-${i}`);
      const inner = s(`smug-inner-${i}`);
      const out = await guardRaw(
        lockstep([
          'EHLO client.test\r\n',
          `MAIL FROM:<${outer}>\r\n`,
          'RCPT TO:<user@example.com>\r\n',
          'DATA\r\n',
          Buffer.from(
            `Subject: outer\r\n\r\nhello${end}MAIL FROM:<${inner}>\r\nRCPT TO:<victim@elsewhere.test>\r\nDATA\r\nSubject: inner\r\n\r\nsmuggled\r\n.\r\n`,
            'latin1',
          ),
          'QUIT\r\n',
        ]),
      );
      expect(out).toContain('354');
      expect(out).toMatch(/\r\n554 5\.6\.0 /);
      expect(await queuedFrom(inner)).toEqual([]);
      // The outer message is aborted without an end-of-data (DESIGN invariant 3): nothing queued.
      expect(await queuedFrom(outer)).toEqual([]);
      expect(rcptLogLines(inner)).toEqual([]);
    });
  });

  describe('what the guard keeps from Postfix', () => {
    test('CHUNKING and ETRN are not advertised; VRFY, EXPN, ETRN and BDAT get the guard\'s answers', async () => {
      const out = await guardRaw(
        lockstep(['EHLO client.test\r\n', 'VRFY postmaster\r\n', 'EXPN staff\r\n', 'ETRN example.com\r\n', 'BDAT 5 LAST\r\n', 'QUIT\r\n']),
      );
      expect(out).toContain('250-PIPELINING');
      expect(out).not.toMatch(/CHUNKING|ETRN|XCLIENT|XFORWARD/);
      // Whether any of them reached Postfix is read from its per-connection counts, which a pooled
      // session logs only when it closes: checked once this mode's guard has stopped (last test).
      // VRFY gets the guard's non-committal 252, the others 502, in both modes.
      expect(codesOf(out)).toEqual([220, 250, 252, 502, 502, 502, 221]);
      await settled();
    });
  });

  describe('after all those hostile sessions', () => {
    test('an ordinary message is still delivered and no client session is left', async () => {
      const r = await viaGuard(['--from', s('after'), '--to', 'zoe@example.com', '--header', `Subject: after-hostile-${tag}`]);
      expect(r.exit, r.out).toBe(0);
      expect(r.out).toMatch(/<- {2}250 2\.0\.0 Ok: queued as [0-9A-F]+/);
      const q = await queuedFrom(s('after'));
      expect(q.map((m) => m.recipients)).toEqual([['zoe@example.com']]);
      expect(await pf.content(q[0]!.queueId)).toContain(`Subject: after-hostile-${tag}`);
      const services = guard().guard.services;
      expect(services.registry.size).toBe(0);
      if (services.pool) {
        expect(services.pool.waiting).toBe(0);
        expect(services.pool.total).toBe(services.pool.idleCount);
        expect(services.pool.live).toBeGreaterThanOrEqual(1);
        expect(services.pool.live).toBeLessThanOrEqual(4);
      }
    });

    test('once the guard stopped: Postfix never got BDAT, VRFY, EXPN or ETRN on any of its connections', async () => {
      await stopGuard();
      // Every connection of this mode, pooled ones included, has now logged its command counts.
      await pf.settled(expectedConnects);
      const log = pf.maillog().slice(mark);
      expect(log).toMatch(/disconnect from /);
      expect(log).not.toMatch(KEPT_VERBS);
    });
  });
});
