import { describe, expect, test } from 'vitest';
import fc from 'fast-check';
import { formatCommand, parseCommand } from '../../src/smtp/command.js';
import {
  formatForwardPath,
  formatLocalPart,
  formatReversePath,
  parseForwardPath,
  parseReversePath,
  MAX_LOCAL_PART_OCTETS,
  MAX_PATH_OCTETS,
  type ForwardPath,
  type Mailbox,
} from '../../src/smtp/path.js';
import { canonicalIpv6, isDotAtom } from '../../src/smtp/mailbox.js';

/** Per-call budget: generous for a slow CI box, far below what a quadratic blow-up would take. */
const CALL_BUDGET_MS = 250;

function timed<T>(f: () => T): { value: T; ms: number } {
  const t0 = performance.now();
  const value = f();
  return { value, ms: performance.now() - t0 };
}

/** Characters an attacker would mix into a command line to reach the deep parser branches. */
const smtpishToken = fc.constantFrom(
  'MAIL FROM:', 'RCPT TO:', 'mail from:', 'EHLO ', 'AUTH ', 'BDAT ', 'DATA', 'X', '<', '>', '<>', '@', '"', '\\', '%', '!',
  ':', ',', '.', ' ', '  ', '[', ']', 'IPv6:', '::', '1', 'ff', '192.0.2.1', 'a', 'Z', 'ö', 'xn--', '-', '=', 'SIZE=1',
  '(', ')', 'postmaster', 'IMCEASMTP-', '+40', '\t', '\r', '\n', '\u0000', '\u007f', '\u0085', 'é',
);
const smtpishLine = fc.array(smtpishToken, { maxLength: 40 }).map((ts) => Buffer.from(ts.join(''), 'utf8'));

/** Every accepted command formats to one CRLF-terminated line without other controls, and is stable. */
function checkFormatted(line: Buffer): void {
  const r = parseCommand(line);
  if (!r.ok) return;
  const wire = formatCommand(r.value);
  const body = wire.subarray(0, -2);
  expect(wire.subarray(-2).toString('latin1')).toBe('\r\n');
  for (const b of body) expect(b < 0x20 || b === 0x7f).toBe(false);
  const again = parseCommand(body);
  expect(again.ok).toBe(true);
  if (again.ok) expect(formatCommand(again.value).equals(wire)).toBe(true);
}

describe('parseCommand on hostile input', () => {
  test('arbitrary bytes never throw and return in bounded time', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2048 }), (arr) => {
        const { ms } = timed(() => parseCommand(Buffer.from(arr)));
        expect(ms).toBeLessThan(CALL_BUDGET_MS);
      }),
      { numRuns: 2000 },
    );
  });

  test('SMTP-shaped garbage never throws, and what is accepted re-serialises cleanly', () => {
    fc.assert(
      fc.property(smtpishLine, (line) => {
        const { ms } = timed(() => checkFormatted(line));
        expect(ms).toBeLessThan(CALL_BUDGET_MS);
      }),
      { numRuns: 3000 },
    );
  });

  // Inputs that make naive regexes or slicing loops quadratic (the line reader may allow long lines).
  const adversarial = [
    { name: 'many spaces then junk', line: `NOOP ${' '.repeat(100_000)}x` },
    { name: 'spaces after MAIL FROM:', line: `MAIL FROM:${' '.repeat(100_000)}x` },
    { name: 'escaped quotes without brackets', line: `MAIL FROM:a${'"\\'.repeat(50_000)}` },
    { name: 'escaped quotes in brackets', line: `RCPT TO:<${'"\\'.repeat(50_000)}` },
    { name: 'many params', line: `MAIL FROM:<a@b.test>${' A'.repeat(50_000)}` },
    { name: 'long source route', line: `RCPT TO:<@${'a,@'.repeat(30_000)}` },
    { name: 'long quoted string', line: `RCPT TO:<"${'x'.repeat(100_000)}"@b.test>` },
    { name: 'many brackets', line: `RCPT TO:${'<'.repeat(100_000)}` },
    { name: 'long verb', line: 'X'.repeat(100_000) },
  ];
  test.each(adversarial)('bounded time: $name', ({ line }) => {
    const { ms } = timed(() => parseCommand(Buffer.from(line, 'utf8')));
    expect(ms).toBeLessThan(CALL_BUDGET_MS * 2);
  });
});

// ── generators of valid mailboxes, already in canonical form ──

const ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~";
const atom = fc.string({ unit: fc.constantFrom(...ATEXT.split(''), 'ö', 'ß', '中'), minLength: 1, maxLength: 10 });
const dotAtom = fc.array(atom, { minLength: 1, maxLength: 4 }).map((as) => as.join('.'));
// qtextSMTP / quoted-pairSMTP content: printable ASCII incl. space, '"' and '\' (escaped when written).
const quotedContent = fc.string({
  unit: fc.oneof(fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)), fc.constantFrom('é', '"', '\\', '@')),
  minLength: 1,
  maxLength: 30,
});
const localPart = fc.oneof(dotAtom, quotedContent);

const LDH = 'abcdefghijklmnopqrstuvwxyz0123456789';
const label = fc
  .tuple(
    fc.string({ unit: fc.constantFrom(...LDH.split('')), minLength: 1, maxLength: 1 }),
    fc.string({ unit: fc.constantFrom(...(LDH + '-').split('')), maxLength: 20 }),
    fc.string({ unit: fc.constantFrom(...LDH.split('')), minLength: 1, maxLength: 1 }),
  )
  .map(([a, mid, z]) => (mid === '' ? a : `${a}${mid}${z}`))
  .filter((l) => !/^..--/.test(l)); // "ab--" labels are reserved for IDNA (RFC 5891 §4.2.3.1)
const tld = fc.string({ unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz'.split('')), minLength: 2, maxLength: 8 });
const domainName = fc.tuple(fc.array(label, { minLength: 0, maxLength: 3 }), tld).map(([ls, t]) => [...ls, t].join('.'));
const ipv4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((o) => `[${o.join('.')}]`);
const ipv6 = fc
  .array(fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xffff })), { minLength: 8, maxLength: 8 })
  .map((gs) => `[IPv6:${canonicalIpv6(gs.map((g) => g.toString(16)).join(':'))}]`);

const mailbox: fc.Arbitrary<Mailbox> = fc
  .tuple(localPart, fc.oneof(
    domainName.map((d) => ({ domain: d, domainKind: 'name' as const })),
    ipv4.map((d) => ({ domain: d, domainKind: 'ipv4' as const })),
    ipv6.map((d) => ({ domain: d, domainKind: 'ipv6' as const })),
  ))
  .map(([lp, d]) => ({ localPart: lp, quoted: !isDotAtom(lp), ...d }))
  .filter((m) => Buffer.byteLength(formatLocalPart(m.localPart)) <= MAX_LOCAL_PART_OCTETS)
  .filter((m) => Buffer.byteLength(formatForwardPath({ kind: 'mailbox', mailbox: m, sourceRoute: [] })) <= MAX_PATH_OCTETS);

/** Count '@' outside quoted-strings in a formatted path. */
function unquotedAts(formatted: string): number {
  let n = 0;
  let inQuote = false;
  for (let i = 0; i < formatted.length; i++) {
    const ch = formatted[i];
    if (inQuote) {
      if (ch === '\\') i++;
      else if (ch === '"') inQuote = false;
    } else if (ch === '"') inQuote = true;
    else if (ch === '@') n++;
  }
  return n;
}

describe('valid mailboxes round-trip', () => {
  test('parse(format(m)) === m, for RCPT and MAIL', () => {
    fc.assert(
      fc.property(mailbox, (m) => {
        const path: ForwardPath = { kind: 'mailbox', mailbox: m, sourceRoute: [] };
        const f = formatForwardPath(path);
        const r = parseForwardPath(f);
        expect(r).toEqual({ ok: true, value: { path, params: [] } });
        const s = parseReversePath(formatReversePath(path));
        expect(s).toEqual({ ok: true, value: { path, params: [] } });
      }),
      { numRuns: 2000 },
    );
  });

  test('formatted output never holds CR, LF, NUL or a second unquoted @', () => {
    fc.assert(
      fc.property(mailbox, (m) => {
        const f = formatForwardPath({ kind: 'mailbox', mailbox: m, sourceRoute: ['relay.test'] });
        expect(f).not.toMatch(/[\r\n\0]/);
        expect(unquotedAts(f)).toBe(1);
        expect(f.startsWith('<') && f.endsWith('>')).toBe(true);
      }),
      { numRuns: 2000 },
    );
  });

  test('whatever RCPT accepts formats with exactly one unquoted @ (or none for postmaster)', () => {
    fc.assert(
      fc.property(fc.array(smtpishToken, { maxLength: 30 }), (ts) => {
        const r = parseForwardPath(ts.join(''));
        if (!r.ok) return;
        const f = formatForwardPath(r.value.path);
        expect(f).not.toMatch(/[\r\n\0]/);
        expect(unquotedAts(f)).toBe(r.value.path.kind === 'postmaster' ? 0 : 1);
      }),
      { numRuns: 3000 },
    );
  });
});
