import { describe, expect, test } from 'vitest';
import {
  analyzeForwardPath,
  analyzeReversePath,
  formatForwardPath,
  formatParams,
  formatReversePath,
  mailboxAddress,
  parseForwardPath,
  parseReversePath,
  type ForwardPath,
  type Mailbox,
  type ReversePath,
  type RoutingTrick,
} from '../../src/smtp/path.js';
import { canonicalIpv6, isDotAtom, normalizeDomain, routingTricks } from '../../src/smtp/mailbox.js';
import { BAD_RECIPIENT_SYNTAX, BAD_SENDER_SYNTAX } from '../../src/smtp/replies.js';

interface PathCase {
  name: string;
  /** 'mail' parses as MAIL FROM argument, 'rcpt' as RCPT TO argument. */
  role: 'mail' | 'rcpt';
  arg: string;
  /** 'syntax' = refused; else the canonical formatted path, params and routing tricks. */
  want:
    | 'syntax'
    | {
        path: string;
        params?: string;
        tricks?: RoutingTrick[];
        localPart?: string;
        quoted?: boolean;
        domainKind?: Mailbox['domainKind'];
        sourceRoute?: string[];
      };
}

const long = (n: number, ch = 'a'): string => ch.repeat(n);
const label63 = long(63);

const pathCases: PathCase[] = [
  // plain mailboxes and canonical domains
  { name: 'simple', role: 'rcpt', arg: '<user@example.com>', want: { path: '<user@example.com>', tricks: [], localPart: 'user', quoted: false } },
  { name: 'domain upper case', role: 'rcpt', arg: '<User@EXAMPLE.COM>', want: { path: '<User@example.com>', localPart: 'User' } },
  { name: 'local part case is kept', role: 'mail', arg: '<MiXeD.Case@example.com>', want: { path: '<MiXeD.Case@example.com>' } },
  { name: 'trailing dot stripped', role: 'rcpt', arg: '<bob@example.com.>', want: { path: '<bob@example.com>' } },
  { name: 'upper case and trailing dot', role: 'rcpt', arg: '<bob@Example.COM.>', want: { path: '<bob@example.com>' } },
  { name: 'two trailing dots', role: 'rcpt', arg: '<bob@example.com..>', want: 'syntax' },
  { name: 'dot-atom with atext specials', role: 'rcpt', arg: "<a.b+tag-x_y=z'q{}|~`^#$&*/?@example.com>", want: { path: "<a.b+tag-x_y=z'q{}|~`^#$&*/?@example.com>" } },
  { name: 'leading dot in local part', role: 'rcpt', arg: '<.user@example.com>', want: 'syntax' },
  { name: 'double dot in local part', role: 'rcpt', arg: '<us..er@example.com>', want: 'syntax' },
  { name: 'hyphen at label end', role: 'rcpt', arg: '<a@example-.com>', want: 'syntax' },
  { name: 'underscore in domain', role: 'rcpt', arg: '<a@ex_ample.com>', want: 'syntax' },
  { name: 'numeric top-level label (bare IP)', role: 'rcpt', arg: '<a@192.0.2.1>', want: 'syntax' },
  { name: 'hex-ish numeric host', role: 'rcpt', arg: '<a@0x7f.1>', want: 'syntax' },
  { name: 'single-label domain', role: 'rcpt', arg: '<a@localhost>', want: { path: '<a@localhost>' } },

  // null sender, postmaster
  { name: 'null reverse path', role: 'mail', arg: '<>', want: { path: '<>' } },
  { name: 'null sender with params', role: 'mail', arg: '<> SIZE=1000 BODY=8BITMIME', want: { path: '<>', params: ' SIZE=1000 BODY=8BITMIME' } },
  { name: 'null forward path', role: 'rcpt', arg: '<>', want: 'syntax' },
  { name: 'postmaster', role: 'rcpt', arg: '<postmaster>', want: { path: '<postmaster>' } },
  { name: 'postmaster any case', role: 'rcpt', arg: '<PostMaster>', want: { path: '<postmaster>' } },
  { name: 'postmaster with domain is a mailbox', role: 'rcpt', arg: '<Postmaster@Example.com>', want: { path: '<Postmaster@example.com>', localPart: 'Postmaster' } },
  { name: 'postmaster without domain as sender', role: 'mail', arg: '<postmaster>', want: 'syntax' },
  { name: 'local part without domain', role: 'rcpt', arg: '<user>', want: 'syntax' },

  // relay tricks: percent hack, bang path, extra @, quoted forms
  { name: 'percent hack', role: 'rcpt', arg: '<user%evil.test@example.com>', want: { path: '<user%evil.test@example.com>', tricks: ['percent'] } },
  { name: 'quoted percent', role: 'rcpt', arg: '<"user%evil.test"@example.com>', want: { path: '<user%evil.test@example.com>', tricks: ['percent'], quoted: true } },
  { name: 'bang path', role: 'rcpt', arg: '<evil.test!user@example.com>', want: { path: '<evil.test!user@example.com>', tricks: ['bang'] } },
  { name: 'percent and bang', role: 'rcpt', arg: '<a!b%c@example.com>', want: { path: '<a!b%c@example.com>', tricks: ['percent', 'bang'] } },
  { name: 'second unquoted @', role: 'rcpt', arg: '<user@evil.test@example.com>', want: 'syntax' },
  { name: 'second unquoted @ in sender', role: 'mail', arg: '<user@evil.test@example.com>', want: 'syntax' },
  { name: 'quoted @', role: 'rcpt', arg: '<"user@evil.test"@example.com>', want: { path: '<"user@evil.test"@example.com>', tricks: ['at-in-local-part'], localPart: 'user@evil.test' } },
  { name: 'escaped @ inside quotes', role: 'rcpt', arg: '<"user\\@evil.test"@example.com>', want: { path: '<"user@evil.test"@example.com>', tricks: ['at-in-local-part'] } },
  { name: 'escaped @ without quotes', role: 'rcpt', arg: '<user\\@evil.test@example.com>', want: 'syntax' },
  { name: 'quoted dot-atom loses its quotes', role: 'rcpt', arg: '<"user"@example.com>', want: { path: '<user@example.com>', quoted: true, tricks: [] } },
  { name: 'quoted space', role: 'rcpt', arg: '<"john smith"@example.com>', want: { path: '<"john smith"@example.com>', localPart: 'john smith' } },
  { name: 'quoted escaped quote and backslash', role: 'rcpt', arg: '<"a\\"b\\\\c"@example.com>', want: { path: '<"a\\"b\\\\c"@example.com>', localPart: 'a"b\\c' } },
  { name: 'needless escape dropped', role: 'rcpt', arg: '<"a\\bc"@example.com>', want: { path: '<abc@example.com>', localPart: 'abc' } },
  { name: 'quoted > inside brackets', role: 'rcpt', arg: '<"a>b"@example.com>', want: { path: '<"a>b"@example.com>', localPart: 'a>b' } },
  { name: 'empty quoted local part', role: 'rcpt', arg: '<""@example.com>', want: 'syntax' },
  { name: 'unterminated quote', role: 'rcpt', arg: '<"abc@example.com>', want: 'syntax' },
  { name: 'quoted-pair with non-ASCII', role: 'rcpt', arg: '<"a\\é"@example.com>', want: 'syntax' },
  { name: 'C1 control inside quotes', role: 'rcpt', arg: '<"a\u0085"@example.com>', want: 'syntax' },
  { name: 'quoted < without brackets', role: 'rcpt', arg: '"a<b"@c.test', want: { path: '<"a<b"@c.test>', localPart: 'a<b' } },
  { name: 'stray < without brackets', role: 'rcpt', arg: 'a<b@c.test', want: 'syntax' },
  { name: 'junk after quoted local part', role: 'rcpt', arg: '<"a"b@example.com>', want: 'syntax' },

  // source routes: parsed, reported, dropped when formatting
  { name: 'source route', role: 'rcpt', arg: '<@example.com:user@evil.test>', want: { path: '<user@evil.test>', tricks: ['source-route'], sourceRoute: ['example.com'] } },
  { name: 'two-hop source route', role: 'rcpt', arg: '<@a.test,@B.test:user@c.test>', want: { path: '<user@c.test>', tricks: ['source-route'], sourceRoute: ['a.test', 'b.test'] } },
  { name: 'source route in sender', role: 'mail', arg: '<@relay.test:user@example.com>', want: { path: '<user@example.com>', tricks: ['source-route'] } },
  { name: 'source route with percent', role: 'rcpt', arg: '<@a.test:u%v@c.test>', want: { path: '<u%v@c.test>', tricks: ['source-route', 'percent'] } },
  { name: 'source route missing colon', role: 'rcpt', arg: '<@a.test,user@c.test>', want: 'syntax' },
  { name: 'source route with literal', role: 'rcpt', arg: '<@[192.0.2.1]:user@c.test>', want: 'syntax' },
  { name: 'source route without brackets', role: 'rcpt', arg: '@a.test:user@c.test', want: 'syntax' },
  { name: 'empty local part (at-sign first)', role: 'rcpt', arg: '<@example.com>', want: 'syntax' },

  // Exchange encapsulated addresses (IMCEA<type>-)
  { name: 'IMCEASMTP with +40', role: 'rcpt', arg: '<IMCEASMTP-user+40evil+2Etest@example.com>', want: { path: '<IMCEASMTP-user+40evil+2Etest@example.com>', tricks: ['encapsulated'] } },
  { name: 'imceasmtp lower case', role: 'rcpt', arg: '<imceasmtp-user+40evil.test@example.com>', want: { path: '<imceasmtp-user+40evil.test@example.com>', tricks: ['encapsulated'] } },
  { name: 'IMCEAEX', role: 'rcpt', arg: '<IMCEAEX-_O=ORG_OU=SITE_CN=RECIPIENTS_CN=BOB@example.com>', want: { path: '<IMCEAEX-_O=ORG_OU=SITE_CN=RECIPIENTS_CN=BOB@example.com>', tricks: ['encapsulated'] } },
  { name: 'IMCEAX400', role: 'rcpt', arg: '<IMCEAX400-c=US+3Ba=+20+3Bp=org+3B@example.com>', want: { path: '<IMCEAX400-c=US+3Ba=+20+3Bp=org+3B@example.com>', tricks: ['encapsulated'] } },
  { name: 'IMCEANOTES', role: 'rcpt', arg: '<IMCEANOTES-bob+20smith+2Fdomino@example.com>', want: { path: '<IMCEANOTES-bob+20smith+2Fdomino@example.com>', tricks: ['encapsulated'] } },
  { name: 'IMCEAINVALID', role: 'rcpt', arg: '<IMCEAINVALID-x@example.com>', want: { path: '<IMCEAINVALID-x@example.com>', tricks: ['encapsulated'] } },
  { name: 'IMCEA hidden in +XX escape', role: 'rcpt', arg: '<+49MCEASMTP-u+40evil.test@example.com>', want: { path: '<+49MCEASMTP-u+40evil.test@example.com>', tricks: ['encapsulated'] } },
  { name: 'quoted IMCEA', role: 'rcpt', arg: '<"IMCEASMTP-a+40b.test"@example.com>', want: { path: '<IMCEASMTP-a+40b.test@example.com>', tricks: ['encapsulated'] } },
  { name: 'not IMCEA (no hyphen)', role: 'rcpt', arg: '<imceasmtp@example.com>', want: { path: '<imceasmtp@example.com>', tricks: [] } },

  // address literals
  { name: 'IPv4 literal', role: 'rcpt', arg: '<a@[192.0.2.1]>', want: { path: '<a@[192.0.2.1]>', domainKind: 'ipv4' } },
  { name: 'IPv4 literal leading zero', role: 'rcpt', arg: '<a@[192.0.2.01]>', want: 'syntax' },
  { name: 'IPv4 literal out of range', role: 'rcpt', arg: '<a@[192.0.2.256]>', want: 'syntax' },
  { name: 'IPv4 literal three parts', role: 'rcpt', arg: '<a@[192.0.2]>', want: 'syntax' },
  { name: 'IPv6 literal canonicalised', role: 'rcpt', arg: '<a@[IPv6:2001:DB8:0:0:0:0:0:1]>', want: { path: '<a@[IPv6:2001:db8::1]>', domainKind: 'ipv6' } },
  { name: 'IPv6 tag any case', role: 'rcpt', arg: '<a@[ipv6:2001:db8::1]>', want: { path: '<a@[IPv6:2001:db8::1]>' } },
  { name: 'IPv6 v4-mapped', role: 'rcpt', arg: '<a@[IPv6:::FFFF:192.0.2.1]>', want: { path: '<a@[IPv6:::ffff:192.0.2.1]>' } },
  { name: 'IPv6 literal without tag', role: 'rcpt', arg: '<a@[2001:db8::1]>', want: 'syntax' },
  { name: 'IPv6 literal invalid', role: 'rcpt', arg: '<a@[IPv6:2001:db8::1::2]>', want: 'syntax' },
  { name: 'general address literal', role: 'rcpt', arg: '<a@[x400:c=us]>', want: 'syntax' },
  { name: 'unterminated literal', role: 'rcpt', arg: '<a@[192.0.2.1>', want: 'syntax' },

  // internationalised names and addresses (RFC 6531)
  { name: 'IDN to A-label', role: 'rcpt', arg: '<a@bücher.example>', want: { path: '<a@xn--bcher-kva.example>' } },
  { name: 'upper-case IDN', role: 'rcpt', arg: '<a@BÜCHER.EXAMPLE>', want: { path: '<a@xn--bcher-kva.example>' } },
  { name: 'A-label kept', role: 'rcpt', arg: '<a@XN--BCHER-KVA.example>', want: { path: '<a@xn--bcher-kva.example>' } },
  { name: 'bad punycode', role: 'rcpt', arg: '<a@xn--zz.example>', want: 'syntax' },
  { name: 'UTF-8 local part', role: 'mail', arg: '<jöran@example.com> SMTPUTF8', want: { path: '<jöran@example.com>', params: ' SMTPUTF8', localPart: 'jöran' } },
  { name: 'C1 control in local part', role: 'rcpt', arg: '<a\u0085b@example.com>', want: 'syntax' },

  // leniency
  { name: 'space after colon', role: 'mail', arg: ' <a@example.com>', want: { path: '<a@example.com>' } },
  { name: 'several spaces after colon', role: 'rcpt', arg: '   <a@example.com>', want: { path: '<a@example.com>' } },
  { name: 'no angle brackets', role: 'mail', arg: 'a@b.test', want: { path: '<a@b.test>' } },
  { name: 'no angle brackets with params', role: 'mail', arg: 'a@b.test SIZE=10', want: { path: '<a@b.test>', params: ' SIZE=10' } },
  { name: 'no brackets, quoted local part with space', role: 'rcpt', arg: '"a b"@c.test', want: { path: '<"a b"@c.test>' } },
  { name: 'trailing spaces', role: 'rcpt', arg: '<a@example.com>   ', want: { path: '<a@example.com>' } },
  { name: 'several spaces between params', role: 'mail', arg: '<a@example.com>  SIZE=1   BODY=7BIT ', want: { path: '<a@example.com>', params: ' SIZE=1 BODY=7BIT' } },

  // structure errors: brackets, comments, spaces, controls
  { name: 'missing closing bracket', role: 'rcpt', arg: '<a@example.com', want: 'syntax' },
  { name: 'missing opening bracket', role: 'rcpt', arg: 'a@example.com>', want: 'syntax' },
  { name: 'nested brackets', role: 'rcpt', arg: '<<a@example.com>>', want: 'syntax' },
  { name: 'two paths', role: 'rcpt', arg: '<a@x.test><b@y.test>', want: 'syntax' },
  { name: 'comment before local part', role: 'rcpt', arg: '<(evil.test)a@example.com>', want: 'syntax' },
  { name: 'comment after domain', role: 'rcpt', arg: '<a@example.com(evil.test)>', want: 'syntax' },
  { name: 'comment outside brackets', role: 'rcpt', arg: '<a@example.com> (comment)', want: 'syntax' },
  { name: 'space inside brackets', role: 'rcpt', arg: '< a@example.com>', want: 'syntax' },
  { name: 'space before domain', role: 'rcpt', arg: '<a@ example.com>', want: 'syntax' },
  { name: 'junk after closing bracket', role: 'rcpt', arg: '<a@example.com>x', want: 'syntax' },
  { name: 'NUL in local part', role: 'rcpt', arg: '<a\u0000b@example.com>', want: 'syntax' },
  { name: 'tab after colon', role: 'mail', arg: '\t<a@example.com>', want: 'syntax' },
  { name: 'CR in path', role: 'rcpt', arg: '<a@example.com\r>', want: 'syntax' },
  { name: 'DEL in path', role: 'rcpt', arg: '<a\u007f@example.com>', want: 'syntax' },
  { name: 'empty argument', role: 'mail', arg: '', want: 'syntax' },
  { name: 'only spaces', role: 'rcpt', arg: '   ', want: 'syntax' },
  { name: 'missing local part', role: 'rcpt', arg: '<@>', want: 'syntax' },
  { name: 'missing domain', role: 'rcpt', arg: '<a@>', want: 'syntax' },

  // lengths (RFC 5321 §4.5.3.1)
  { name: 'local part of 64 octets', role: 'rcpt', arg: `<${long(64)}@example.com>`, want: { path: `<${long(64)}@example.com>` } },
  { name: 'local part of 65 octets', role: 'rcpt', arg: `<${long(65)}@example.com>`, want: 'syntax' },
  { name: 'local part of 33 two-octet chars', role: 'rcpt', arg: `<${long(33, 'ö')}@example.com>`, want: 'syntax' },
  { name: 'label of 63 octets', role: 'rcpt', arg: `<a@${label63}.test>`, want: { path: `<a@${label63}.test>` } },
  { name: 'label of 64 octets', role: 'rcpt', arg: `<a@${long(64)}.test>`, want: 'syntax' },
  { name: 'path of 256 octets', role: 'rcpt', arg: `<${long(60)}@${label63}.${label63}.${long(60)}.test>`, want: { path: `<${long(60)}@${label63}.${label63}.${long(60)}.test>` } },
  { name: 'path of 257 octets', role: 'rcpt', arg: `<${long(60)}@${label63}.${label63}.${long(61)}.test>`, want: 'syntax' },
  { name: 'domain of 255 octets (path over 256)', role: 'rcpt', arg: `a@${[label63, label63, label63, label63].join('.')}`, want: 'syntax' },

  // ESMTP parameters (RFC 5321 §4.1.2 and the extensions that define them)
  { name: 'SIZE', role: 'mail', arg: '<a@example.com> SIZE=12345', want: { path: '<a@example.com>', params: ' SIZE=12345' } },
  { name: 'BODY', role: 'mail', arg: '<a@example.com> BODY=8BITMIME', want: { path: '<a@example.com>', params: ' BODY=8BITMIME' } },
  { name: 'keyword upper-cased, value kept', role: 'mail', arg: '<a@example.com> body=8bitmime', want: { path: '<a@example.com>', params: ' BODY=8bitmime' } },
  { name: 'RET and ENVID', role: 'mail', arg: '<a@example.com> RET=HDRS ENVID=QQ314159+2Bx', want: { path: '<a@example.com>', params: ' RET=HDRS ENVID=QQ314159+2Bx' } },
  { name: 'SMTPUTF8 bare keyword', role: 'mail', arg: '<a@example.com> SMTPUTF8', want: { path: '<a@example.com>', params: ' SMTPUTF8' } },
  { name: 'AUTH=<>', role: 'mail', arg: '<a@example.com> AUTH=<>', want: { path: '<a@example.com>', params: ' AUTH=<>' } },
  { name: 'AUTH=xtext mailbox', role: 'mail', arg: '<a@example.com> AUTH=a+2Bb@example.com', want: { path: '<a@example.com>', params: ' AUTH=a+2Bb@example.com' } },
  { name: 'NOTIFY and ORCPT', role: 'rcpt', arg: '<a@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40example.com', want: { path: '<a@example.com>', params: ' NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40example.com' } },
  { name: 'duplicate keyword', role: 'mail', arg: '<a@example.com> SIZE=1 size=2', want: 'syntax' },
  { name: 'empty value', role: 'mail', arg: '<a@example.com> SIZE=', want: 'syntax' },
  { name: 'value with =', role: 'mail', arg: '<a@example.com> ENVID=a=b', want: 'syntax' },
  { name: 'keyword starting with hyphen', role: 'mail', arg: '<a@example.com> -X=1', want: 'syntax' },
  { name: 'keyword with underscore', role: 'mail', arg: '<a@example.com> X_Y=1', want: 'syntax' },
  { name: 'non-ASCII value', role: 'mail', arg: '<a@example.com> ENVID=ö', want: 'syntax' },
  { name: 'vendor keyword', role: 'rcpt', arg: '<a@example.com> X-FOO=bar', want: { path: '<a@example.com>', params: ' X-FOO=bar' } },
];

function parse(role: 'mail' | 'rcpt', arg: string) {
  return role === 'mail' ? parseReversePath(arg) : parseForwardPath(arg);
}

function format(role: 'mail' | 'rcpt', path: ReversePath | ForwardPath): string {
  return role === 'mail' ? formatReversePath(path as ReversePath) : formatForwardPath(path as ForwardPath);
}

/** The parse result with what formatting changes on purpose: source routes dropped, quoting canonical. */
function canonical<P extends ReversePath | ForwardPath>(p: P): P {
  if (p.kind !== 'mailbox') return p;
  return { ...p, sourceRoute: [], mailbox: { ...p.mailbox, quoted: !isDotAtom(p.mailbox.localPart) } };
}

describe('path parsing table', () => {
  test('has the promised breadth', () => {
    expect(pathCases.length).toBeGreaterThanOrEqual(80);
  });

  test.each(pathCases)('$role $name', ({ role, arg, want }) => {
    const r = parse(role, arg);
    if (want === 'syntax') {
      expect(r.ok).toBe(false);
      if (r.ok) return;
      expect(r.kind).toBe('syntax');
      expect(r.reply).toEqual(role === 'mail' ? BAD_SENDER_SYNTAX : BAD_RECIPIENT_SYNTAX);
      return;
    }
    if (!r.ok) {
      const why = role === 'mail' ? analyzeReversePath(arg) : analyzeForwardPath(arg);
      throw new Error(`refused: ${why.ok ? '?' : why.reason}`);
    }
    const { path, params } = r.value;
    expect(format(role, path)).toBe(want.path);
    expect(formatParams(params)).toBe(want.params ?? '');
    if (want.tricks) expect(routingTricks(path)).toEqual(want.tricks);
    if (path.kind === 'mailbox') {
      if (want.localPart !== undefined) expect(path.mailbox.localPart).toBe(want.localPart);
      if (want.quoted !== undefined) expect(path.mailbox.quoted).toBe(want.quoted);
      if (want.domainKind !== undefined) expect(path.mailbox.domainKind).toBe(want.domainKind);
      if (want.sourceRoute !== undefined) expect(path.sourceRoute).toEqual(want.sourceRoute);
    }
  });

  // parse(format(parse(x))) equals parse(x), up to what formatting drops on purpose
  const accepted = pathCases.filter((c) => c.want !== 'syntax');
  test.each(accepted)('round trip: $role $name', ({ role, arg }) => {
    const first = parse(role, arg);
    if (!first.ok) throw new Error('first parse refused');
    const wire = format(role, first.value.path) + formatParams(first.value.params);
    const second = parse(role, wire);
    if (!second.ok) throw new Error(`canonical form refused: ${wire}`);
    expect(second.value.path).toEqual(canonical(first.value.path));
    expect(second.value.params).toEqual(first.value.params);
    // formatting is idempotent
    expect(format(role, second.value.path) + formatParams(second.value.params)).toBe(wire);
  });
});

describe('normalizeDomain', () => {
  const cases = [
    // names
    { name: 'lower-cased', raw: 'Example.COM', want: 'example.com', kind: 'name' },
    { name: 'one trailing dot', raw: 'example.com.', want: 'example.com', kind: 'name' },
    { name: 'only a dot', raw: '.', want: undefined },
    { name: 'empty', raw: '', want: undefined },
    { name: 'leading dot', raw: '.example.com', want: undefined },
    { name: 'leading hyphen', raw: '-a.example', want: undefined },
    { name: 'percent escape', raw: 'a%41.example', want: undefined },
    { name: 'IDN', raw: 'bücher.example', want: 'xn--bcher-kva.example', kind: 'name' },
    { name: 'IDN ß (non-transitional)', raw: 'straße.de', want: 'xn--strae-oqa.de', kind: 'name' },
    { name: 'fullwidth digits forming an IP', raw: '１２７.０.０.１', want: undefined },
    { name: 'numeric TLD', raw: 'host.123', want: undefined },
    { name: 'domain of 255 octets', raw: `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(63)}`, want: `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(63)}`, kind: 'name' },
    { name: 'domain of 256 octets', raw: `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(62)}.e`, want: undefined },
    { name: 'label of 64 octets', raw: `${'a'.repeat(64)}.example`, want: undefined },
    { name: 'digits-only inner label', raw: '123.example', want: '123.example', kind: 'name' },
    // literals
    { name: 'IPv4', raw: '[198.51.100.7]', want: '[198.51.100.7]', kind: 'ipv4' },
    { name: 'IPv4 zero', raw: '[0.0.0.0]', want: '[0.0.0.0]', kind: 'ipv4' },
    { name: 'IPv6 loopback', raw: '[IPv6:0:0:0:0:0:0:0:1]', want: '[IPv6:::1]', kind: 'ipv6' },
    { name: 'IPv6 zone id', raw: '[IPv6:fe80::1%eth0]', want: undefined },
    { name: 'empty literal', raw: '[]', want: undefined },
    { name: 'general literal', raw: '[tag:content]', want: undefined },
  ] satisfies { name: string; raw: string; want: string | undefined; kind?: string }[];
  test.each(cases)('$name', (c) => {
    const r = normalizeDomain(c.raw);
    if (c.want === undefined) {
      expect(r.ok).toBe(false);
      return;
    }
    expect(r).toEqual({ ok: true, domain: c.want, kind: c.kind });
  });
});

describe('canonicalIpv6 (RFC 5952)', () => {
  const cases = [
    { text: '2001:DB8:0:0:0:0:0:1', want: '2001:db8::1' },
    { text: '2001:0db8:0000:0000:0001:0000:0000:0001', want: '2001:db8::1:0:0:1' },
    { text: '2001:db8:0:1:1:1:1:1', want: '2001:db8:0:1:1:1:1:1' },
    { text: '2001:db8:0:0:1:0:0:1', want: '2001:db8::1:0:0:1' },
    { text: '::', want: '::' },
    { text: '::1', want: '::1' },
    { text: 'fe80::', want: 'fe80::' },
    { text: '1:2:3:4:5:6:7::', want: '1:2:3:4:5:6:7:0' },
    { text: '::ffff:c000:0201', want: '::ffff:192.0.2.1' },
    { text: '64:ff9b::192.0.2.33', want: '64:ff9b::c000:221' },
    { text: '1:2:3:4:5:6:7:8:9', want: undefined },
    { text: '1:2:3:4:5:6:7', want: undefined },
    { text: '12345::1', want: undefined },
    { text: ':1:2:3:4:5:6:7', want: undefined },
    { text: '1::2::3', want: undefined },
    { text: '::1.2.3', want: undefined },
    { text: '1.2.3.4::', want: undefined },
    { text: 'g::1', want: undefined },
    { text: '', want: undefined },
  ];
  test.each(cases)('$text', ({ text, want }) => {
    expect(canonicalIpv6(text)).toBe(want);
  });
});

describe('mailboxAddress and formatting', () => {
  const mb = (localPart: string, domain = 'example.com'): Mailbox => ({ localPart, quoted: false, domain, domainKind: 'name' });
  const cases = [
    { name: 'dot-atom', m: mb('a.b'), want: 'a.b@example.com' },
    { name: 'needs quotes (space)', m: mb('a b'), want: '"a b"@example.com' },
    { name: 'escapes quote and backslash', m: mb('a"\\b'), want: '"a\\"\\\\b"@example.com' },
    { name: 'at sign is quoted', m: mb('u@evil.test'), want: '"u@evil.test"@example.com' },
    { name: 'trailing dot is quoted', m: mb('a.'), want: '"a."@example.com' },
    { name: 'UTF-8 dot-atom', m: mb('jöran'), want: 'jöran@example.com' },
  ];
  test.each(cases)('$name', ({ m, want }) => {
    expect(mailboxAddress(m)).toBe(want);
  });

  test('source routes are dropped', () => {
    const p: ForwardPath = { kind: 'mailbox', mailbox: mb('u'), sourceRoute: ['relay.test'] };
    expect(formatForwardPath(p)).toBe('<u@example.com>');
  });

  test('params: none, bare keyword, value', () => {
    expect(formatParams([])).toBe('');
    expect(formatParams([{ keyword: 'SMTPUTF8' }, { keyword: 'SIZE', value: '1' }])).toBe(' SMTPUTF8 SIZE=1');
  });
});

describe('isDotAtom', () => {
  const cases: [string, boolean][] = [
    ['a', true],
    ['a.b.c', true],
    ["!#$%&'*+-/=?^_`{|}~", true],
    ['', false],
    ['.a', false],
    ['a.', false],
    ['a..b', false],
    ['a b', false],
    ['a"b', false],
    ['a@b', false],
    ['a(b)', false],
    ['ö', true],
    ['a\u0085', false],
  ];
  test.each(cases)('%j → %s', (s, want) => {
    expect(isDotAtom(s)).toBe(want);
  });
});

describe('domain results are cached, never confused', () => {
  test('the same answers for 10 000 distinct domains, asked twice, across cache overflows', async () => {
    const { canonicalDomain } = await import('../../src/policy/domain-name.js');
    const raws = Array.from({ length: 10_000 }, (_, i) => (i % 3 === 0 ? `Host${i}.Example.COM.` : i % 3 === 1 ? `[192.0.2.${i % 256}]` : `bad..${i}`));
    const first = raws.map((r) => [normalizeDomain(r), canonicalDomain(r)]);
    const second = raws.map((r) => [normalizeDomain(r), canonicalDomain(r)]);
    expect(second).toEqual(first);
    expect(normalizeDomain('Host3.Example.COM.')).toEqual({ ok: true, domain: 'host3.example.com', kind: 'name' });
    expect(canonicalDomain('Host3.Example.COM.')).toEqual({ ok: true, domain: 'host3.example.com', kind: 'name' });
    expect(normalizeDomain('bad..5').ok).toBe(false);
  });
});
