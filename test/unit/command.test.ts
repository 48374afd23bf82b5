import { describe, expect, test } from 'vitest';
import { commandVerbName, formatCommand, parseCommand, TLS_ON_PLAIN, type Command } from '../../src/smtp/command.js';
import type { ProtocolErrorKind, Reply } from '../../src/smtp/reply.js';
import {
  BAD_BYTES,
  BAD_RECIPIENT_SYNTAX,
  BAD_SENDER_SYNTAX,
  HTTP_ON_SMTP,
  SYNTAX_ERROR,
  UNKNOWN_VERB,
} from '../../src/smtp/replies.js';
import { routingTricks } from '../../src/smtp/mailbox.js';
import type { RoutingTrick } from '../../src/smtp/path.js';

interface CommandCase {
  name: string;
  /** The line without CRLF; a string is taken as UTF-8 bytes. */
  line: string | Buffer;
  /** Accepted: the canonical wire form (without CRLF) and optional checks; refused: kind and reply. */
  want:
    | { wire: string; verb?: string; tricks?: RoutingTrick[]; value?: Partial<Command> }
    | { kind: ProtocolErrorKind; reply: Reply };
}

const bytes = (...b: number[]): Buffer => Buffer.from(b);
const withByte = (prefix: string, b: number, suffix: string): Buffer =>
  Buffer.concat([Buffer.from(prefix, 'latin1'), bytes(b), Buffer.from(suffix, 'latin1')]);

const refused = (kind: ProtocolErrorKind, reply: Reply) => ({ kind, reply });

const cases: CommandCase[] = [
  // HELO / EHLO
  { name: 'EHLO domain', line: 'EHLO client.example', want: { wire: 'EHLO client.example', verb: 'EHLO' } },
  { name: 'ehlo lower case verb', line: 'ehlo client.example', want: { wire: 'EHLO client.example' } },
  { name: 'HELO address literal', line: 'HELO [192.0.2.1]', want: { wire: 'HELO [192.0.2.1]' } },
  { name: 'EHLO argument kept as given', line: 'EHLO Client_Host', want: { wire: 'EHLO Client_Host' } },
  { name: 'EHLO extra spaces', line: 'EHLO   client.example  ', want: { wire: 'EHLO client.example' } },
  { name: 'EHLO without argument', line: 'EHLO', want: refused('syntax', SYNTAX_ERROR) },
  { name: 'HELO only spaces', line: 'HELO   ', want: refused('syntax', SYNTAX_ERROR) },
  { name: 'EHLO two words', line: 'EHLO a.example b.example', want: refused('syntax', SYNTAX_ERROR) },
  { name: 'EHLO with NUL', line: withByte('EHLO a', 0, '.example'), want: refused('bad_bytes', BAD_BYTES) },
  { name: 'EHLO with UTF-8', line: 'EHLO bücher.example', want: refused('bad_bytes', BAD_BYTES) },

  // MAIL
  { name: 'MAIL', line: 'MAIL FROM:<a@example.com>', want: { wire: 'MAIL FROM:<a@example.com>', verb: 'MAIL' } },
  { name: 'mail from lower case', line: 'mail from:<a@Example.COM>', want: { wire: 'MAIL FROM:<a@example.com>' } },
  { name: 'MAIL null sender', line: 'MAIL FROM:<>', want: { wire: 'MAIL FROM:<>' } },
  { name: 'MAIL null sender with params', line: 'MAIL FROM:<> SIZE=100 BODY=7BIT', want: { wire: 'MAIL FROM:<> SIZE=100 BODY=7BIT' } },
  { name: 'MAIL every param', line: 'MAIL FROM:<a@example.com> SIZE=1 BODY=BINARYMIME RET=FULL ENVID=x+2By SMTPUTF8 AUTH=<>', want: { wire: 'MAIL FROM:<a@example.com> SIZE=1 BODY=BINARYMIME RET=FULL ENVID=x+2By SMTPUTF8 AUTH=<>' } },
  { name: 'MAIL space after colon', line: 'MAIL FROM: <a@example.com>', want: { wire: 'MAIL FROM:<a@example.com>' } },
  { name: 'MAIL no brackets', line: 'MAIL FROM:a@b.test', want: { wire: 'MAIL FROM:<a@b.test>' } },
  { name: 'MAIL trailing spaces', line: 'MAIL FROM:<a@example.com>  ', want: { wire: 'MAIL FROM:<a@example.com>' } },
  { name: 'MAIL source route dropped', line: 'MAIL FROM:<@relay.test:a@example.com>', want: { wire: 'MAIL FROM:<a@example.com>', tricks: ['source-route'] } },
  { name: 'MAIL UTF-8 address', line: 'MAIL FROM:<jöran@bücher.example> SMTPUTF8', want: { wire: 'MAIL FROM:<jöran@xn--bcher-kva.example> SMTPUTF8' } },
  { name: 'MAIL invalid UTF-8', line: withByte('MAIL FROM:<a', 0xc3, '@example.com>'), want: refused('bad_bytes', BAD_BYTES) },
  { name: 'MAIL overlong UTF-8 for @', line: withByte('MAIL FROM:<a', 0xc0, '\x80example.com>'), want: refused('bad_bytes', BAD_BYTES) },
  { name: 'MAIL without FROM', line: 'MAIL <a@example.com>', want: refused('syntax', BAD_SENDER_SYNTAX) },
  { name: 'MAIL with space before colon', line: 'MAIL FROM :<a@example.com>', want: refused('syntax', BAD_SENDER_SYNTAX) },
  { name: 'MAIL bare verb', line: 'MAIL', want: refused('syntax', BAD_SENDER_SYNTAX) },
  { name: 'MAIL two @', line: 'MAIL FROM:<a@evil.test@example.com>', want: refused('syntax', BAD_SENDER_SYNTAX) },
  { name: 'MAIL comment', line: 'MAIL FROM:<a@example.com(x)>', want: refused('syntax', BAD_SENDER_SYNTAX) },
  { name: 'MAIL unbalanced', line: 'MAIL FROM:<a@example.com', want: refused('syntax', BAD_SENDER_SYNTAX) },
  { name: 'MAIL NUL', line: withByte('MAIL FROM:<a', 0, '@example.com>'), want: refused('bad_bytes', BAD_BYTES) },
  { name: 'MAIL tab', line: 'MAIL FROM:\t<a@example.com>', want: refused('bad_bytes', BAD_BYTES) },
  { name: 'MAIL bare CR', line: 'MAIL FROM:<a@example.com>\rRCPT TO:<b@evil.test>', want: refused('bad_bytes', BAD_BYTES) },
  { name: 'MAIL bare LF', line: 'MAIL FROM:<a@example.com>\nRCPT TO:<b@evil.test>', want: refused('bad_bytes', BAD_BYTES) },
  { name: 'MAIL DEL', line: 'MAIL FROM:<a@example.com>\x7f', want: refused('bad_bytes', BAD_BYTES) },
  { name: 'MAIL duplicate param', line: 'MAIL FROM:<a@example.com> SIZE=1 SIZE=2', want: refused('syntax', BAD_SENDER_SYNTAX) },
  { name: 'MAIL over-long path', line: `MAIL FROM:<${'a'.repeat(64)}@${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(63)}>`, want: refused('syntax', BAD_SENDER_SYNTAX) },

  // RCPT
  { name: 'RCPT', line: 'RCPT TO:<b@example.com>', want: { wire: 'RCPT TO:<b@example.com>', verb: 'RCPT', tricks: [] } },
  { name: 'rcpt to lower case', line: 'rcpt to:<b@example.com>', want: { wire: 'RCPT TO:<b@example.com>' } },
  { name: 'RCPT postmaster', line: 'RCPT TO:<POSTMASTER>', want: { wire: 'RCPT TO:<postmaster>', value: { verb: 'RCPT', path: { kind: 'postmaster' }, params: [] } } },
  { name: 'RCPT DSN params', line: 'RCPT TO:<b@example.com> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b+40example.com', want: { wire: 'RCPT TO:<b@example.com> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b+40example.com' } },
  { name: 'RCPT percent hack', line: 'RCPT TO:<user%evil.test@example.com>', want: { wire: 'RCPT TO:<user%evil.test@example.com>', tricks: ['percent'] } },
  { name: 'RCPT quoted percent', line: 'RCPT TO:<"user%evil.test"@example.com>', want: { wire: 'RCPT TO:<user%evil.test@example.com>', tricks: ['percent'] } },
  { name: 'RCPT bang', line: 'RCPT TO:<evil.test!user@example.com>', want: { wire: 'RCPT TO:<evil.test!user@example.com>', tricks: ['bang'] } },
  { name: 'RCPT quoted @', line: 'RCPT TO:<"user@evil.test"@example.com>', want: { wire: 'RCPT TO:<"user@evil.test"@example.com>', tricks: ['at-in-local-part'] } },
  { name: 'RCPT source route', line: 'RCPT TO:<@example.com:user@evil.test>', want: { wire: 'RCPT TO:<user@evil.test>', tricks: ['source-route'] } },
  { name: 'RCPT multi-hop source route', line: 'RCPT TO:<@a.test,@b.test:user@c.test>', want: { wire: 'RCPT TO:<user@c.test>', tricks: ['source-route'] } },
  { name: 'RCPT IMCEA', line: 'RCPT TO:<IMCEASMTP-user+40evil+2Etest@example.com>', want: { wire: 'RCPT TO:<IMCEASMTP-user+40evil+2Etest@example.com>', tricks: ['encapsulated'] } },
  { name: 'RCPT IPv6 literal', line: 'RCPT TO:<a@[IPv6:2001:DB8:0:0:0:0:0:1]>', want: { wire: 'RCPT TO:<a@[IPv6:2001:db8::1]>' } },
  { name: 'RCPT null path', line: 'RCPT TO:<>', want: refused('syntax', BAD_RECIPIENT_SYNTAX) },
  { name: 'RCPT two @', line: 'RCPT TO:<user@evil.test@example.com>', want: refused('syntax', BAD_RECIPIENT_SYNTAX) },
  { name: 'RCPT without TO', line: 'RCPT <b@example.com>', want: refused('syntax', BAD_RECIPIENT_SYNTAX) },
  { name: 'RCPT FROM instead of TO', line: 'RCPT FROM:<b@example.com>', want: refused('syntax', BAD_RECIPIENT_SYNTAX) },
  { name: 'RCPT over-long local part', line: `RCPT TO:<${'x'.repeat(65)}@example.com>`, want: refused('syntax', BAD_RECIPIENT_SYNTAX) },
  { name: 'RCPT control in quoted local part', line: 'RCPT TO:<"a\x01b"@example.com>', want: refused('bad_bytes', BAD_BYTES) },

  // verbs without arguments
  { name: 'DATA', line: 'DATA', want: { wire: 'DATA', verb: 'DATA' } },
  { name: 'data lower case, trailing space', line: 'data ', want: { wire: 'DATA' } },
  { name: 'DATA with argument', line: 'DATA now', want: refused('syntax', SYNTAX_ERROR) },
  { name: 'RSET', line: 'RSET', want: { wire: 'RSET' } },
  { name: 'RSET with argument', line: 'RSET x', want: refused('syntax', SYNTAX_ERROR) },
  { name: 'QUIT', line: 'Quit', want: { wire: 'QUIT' } },
  { name: 'STARTTLS', line: 'STARTTLS', want: { wire: 'STARTTLS' } },
  { name: 'STARTTLS with argument', line: 'STARTTLS now', want: refused('syntax', SYNTAX_ERROR) },

  // verbs with a free argument
  { name: 'NOOP', line: 'NOOP', want: { wire: 'NOOP' } },
  { name: 'NOOP with text', line: 'NOOP hello there', want: { wire: 'NOOP hello there' } },
  { name: 'HELP topic', line: 'help MAIL', want: { wire: 'HELP MAIL' } },
  { name: 'VRFY', line: 'VRFY postmaster', want: { wire: 'VRFY postmaster', value: { verb: 'VRFY', arg: 'postmaster' } } },
  { name: 'EXPN', line: 'EXPN staff', want: { wire: 'EXPN staff' } },

  // AUTH (RFC 4954)
  { name: 'AUTH PLAIN with initial response', line: 'AUTH PLAIN AGFsaWNlAHNlY3JldA==', want: { wire: 'AUTH PLAIN AGFsaWNlAHNlY3JldA==', verb: 'AUTH' } },
  { name: 'auth login lower case', line: 'auth login', want: { wire: 'AUTH LOGIN' } },
  { name: 'AUTH empty initial response', line: 'AUTH PLAIN =', want: { wire: 'AUTH PLAIN =' } },
  { name: 'AUTH without mechanism', line: 'AUTH', want: refused('syntax', SYNTAX_ERROR) },
  { name: 'AUTH mechanism too long', line: `AUTH ${'A'.repeat(21)}`, want: refused('syntax', SYNTAX_ERROR) },
  { name: 'AUTH bad initial response', line: 'AUTH PLAIN abc!def', want: refused('syntax', SYNTAX_ERROR) },
  { name: 'AUTH three words', line: 'AUTH PLAIN abc def', want: refused('syntax', SYNTAX_ERROR) },

  // BDAT (RFC 3030)
  { name: 'BDAT', line: 'BDAT 1000', want: { wire: 'BDAT 1000', value: { verb: 'BDAT', size: 1000, last: false } } },
  { name: 'BDAT LAST', line: 'bdat 0 last', want: { wire: 'BDAT 0 LAST', value: { verb: 'BDAT', size: 0, last: true } } },
  { name: 'BDAT without size', line: 'BDAT', want: refused('syntax', SYNTAX_ERROR) },
  { name: 'BDAT negative size', line: 'BDAT -1', want: refused('syntax', SYNTAX_ERROR) },
  { name: 'BDAT huge size', line: 'BDAT 1234567890123456', want: refused('syntax', SYNTAX_ERROR) },
  { name: 'BDAT bad marker', line: 'BDAT 10 FIRST', want: refused('syntax', SYNTAX_ERROR) },

  // known but unimplemented verbs, vendor X-verbs
  { name: 'TURN', line: 'TURN', want: { wire: 'TURN', verb: 'TURN' } },
  { name: 'ETRN', line: 'ETRN example.com', want: { wire: 'ETRN example.com', verb: 'ETRN' } },
  { name: 'ATRN', line: 'atrn example.com', want: { wire: 'ATRN example.com', verb: 'ATRN' } },
  { name: 'XEXCH50', line: 'XEXCH50 1024 2', want: { wire: 'XEXCH50 1024 2', verb: 'XEXCH50' } },
  { name: 'X-LINK2STATE', line: 'X-LINK2STATE LAST CHUNK=abc', want: { wire: 'X-LINK2STATE LAST CHUNK=abc', verb: 'X-LINK2STATE' } },
  { name: 'XCLIENT', line: 'XCLIENT ADDR=192.0.2.1', want: { wire: 'XCLIENT ADDR=192.0.2.1', verb: 'XCLIENT' } },
  { name: 'XFORWARD', line: 'XFORWARD NAME=x', want: { wire: 'XFORWARD NAME=x', verb: 'XFORWARD' } },
  { name: 'XRDST', line: 'XRDST', want: { wire: 'XRDST', verb: 'XRDST' } },
  { name: 'any X-verb', line: 'xshadow foo', want: { wire: 'XSHADOW foo', verb: 'XSHADOW' } },

  // unknown verbs and garbage
  { name: 'unknown verb', line: 'FOO bar', want: refused('unknown_verb', UNKNOWN_VERB) },
  { name: 'empty line', line: '', want: refused('unknown_verb', UNKNOWN_VERB) },
  { name: 'leading space', line: ' MAIL FROM:<a@example.com>', want: refused('unknown_verb', UNKNOWN_VERB) },
  { name: 'verb with digits first', line: '1MAIL', want: refused('unknown_verb', UNKNOWN_VERB) },
  { name: 'verb with punctuation', line: 'MAIL:FROM<a@b.test>', want: refused('unknown_verb', UNKNOWN_VERB) },
  { name: 'non-ASCII verb', line: 'MÄIL FROM:<a@example.com>', want: refused('unknown_verb', UNKNOWN_VERB) },
  { name: 'NUL alone', line: bytes(0), want: refused('bad_bytes', BAD_BYTES) },
  { name: 'DEL in verb', line: 'NO\x7fOP', want: refused('bad_bytes', BAD_BYTES) },
  { name: 'ESC sequence', line: 'NOOP \x1b[31m', want: refused('bad_bytes', BAD_BYTES) },

  // HTTP and TLS on the SMTP port
  { name: 'HTTP GET', line: 'GET / HTTP/1.1', want: refused('http', HTTP_ON_SMTP) },
  { name: 'HTTP POST', line: 'POST /submit HTTP/1.0', want: refused('http', HTTP_ON_SMTP) },
  { name: 'HTTP HEAD', line: 'HEAD / HTTP/1.1', want: refused('http', HTTP_ON_SMTP) },
  { name: 'HTTP PUT', line: 'PUT /x HTTP/1.1', want: refused('http', HTTP_ON_SMTP) },
  { name: 'HTTP CONNECT', line: 'CONNECT mail.example:25 HTTP/1.1', want: refused('http', HTTP_ON_SMTP) },
  { name: 'HTTP OPTIONS', line: 'OPTIONS * HTTP/1.1', want: refused('http', HTTP_ON_SMTP) },
  { name: 'HTTP/2 preface', line: 'PRI * HTTP/2.0', want: refused('http', HTTP_ON_SMTP) },
  { name: 'TLS ClientHello', line: bytes(0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03), want: refused('tls_on_plain', TLS_ON_PLAIN) },
];

describe('parseCommand table', () => {
  test('has the promised breadth', () => {
    expect(cases.length).toBeGreaterThanOrEqual(80);
  });

  test.each(cases)('$name', ({ line, want }) => {
    const buf = typeof line === 'string' ? Buffer.from(line, 'utf8') : line;
    const r = parseCommand(buf);
    if ('kind' in want) {
      expect(r).toEqual({ ok: false, kind: want.kind, reply: want.reply });
      return;
    }
    if (!r.ok) throw new Error(`refused: ${r.kind} ${r.reply.code}`);
    expect(formatCommand(r.value).toString('utf8')).toBe(`${want.wire}\r\n`);
    if (want.verb !== undefined) expect(commandVerbName(r.value)).toBe(want.verb);
    if (want.value !== undefined) expect(r.value).toMatchObject(want.value);
    if (want.tricks !== undefined) {
      if (r.value.verb !== 'MAIL' && r.value.verb !== 'RCPT') throw new Error('tricks only apply to MAIL/RCPT');
      expect(routingTricks(r.value.path)).toEqual(want.tricks);
    }
  });

  test('refusals that close the connection', () => {
    expect(TLS_ON_PLAIN.close).toBe(true);
    expect(TLS_ON_PLAIN.code).toBeGreaterThanOrEqual(500);
    expect(HTTP_ON_SMTP.close).toBe(true);
  });

  // the canonical form parses to the same command, and formats to itself
  const accepted = cases.filter((c) => !('kind' in c.want));
  test.each(accepted)('round trip: $name', ({ line }) => {
    const first = parseCommand(typeof line === 'string' ? Buffer.from(line, 'utf8') : line);
    if (!first.ok) throw new Error('first parse refused');
    const wire = formatCommand(first.value);
    expect(wire.subarray(-2).toString('latin1')).toBe('\r\n');
    const second = parseCommand(wire.subarray(0, -2));
    if (!second.ok) throw new Error(`canonical form refused: ${wire.toString('utf8')}`);
    expect(formatCommand(second.value).equals(wire)).toBe(true);
  });
});

describe('formatCommand', () => {
  test('throws rather than put CR/LF on the wire (broken invariant)', () => {
    expect(() => formatCommand({ verb: 'EHLO', domain: 'a\r\nRCPT TO:<x@evil.test>' })).toThrow(/control/);
    expect(() => formatCommand({ verb: 'NOOP', arg: 'a\u0000' })).toThrow(/control/);
    expect(() =>
      formatCommand({
        verb: 'RCPT',
        path: { kind: 'mailbox', mailbox: { localPart: 'a\nb', quoted: true, domain: 'example.com', domainKind: 'name' }, sourceRoute: [] },
        params: [],
      }),
    ).toThrow(/control/);
  });

  test('throws on non-ASCII outside MAIL/RCPT', () => {
    expect(() => formatCommand({ verb: 'EHLO', domain: 'bücher.example' })).toThrow(/non-ASCII/);
  });

  test('OTHER without argument has no trailing space', () => {
    expect(formatCommand({ verb: 'OTHER', name: 'TURN', arg: '' }).toString('latin1')).toBe('TURN\r\n');
  });

  test('commandVerbName', () => {
    expect(commandVerbName({ verb: 'RCPT', path: { kind: 'postmaster' }, params: [] })).toBe('RCPT');
    expect(commandVerbName({ verb: 'OTHER', name: 'XEXCH50', arg: '' })).toBe('XEXCH50');
  });
});
