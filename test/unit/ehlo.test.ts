import { describe, expect, test } from 'vitest';
import { DEFAULT_EHLO_ALLOW, ehloKeywords, filterEhlo } from '../../src/smtp/ehlo.js';
import type { Reply } from '../../src/smtp/reply.js';

/** A typical old Exchange EHLO reply, with everything a guard must not pass on. */
const exchange: Reply = {
  code: 250,
  lines: [
    'exch.example.com Hello [203.0.113.9]',
    'SIZE 10240000',
    'PIPELINING',
    'DSN',
    'ENHANCEDSTATUSCODES',
    'STARTTLS',
    'X-ANONYMOUSTLS',
    'AUTH NTLM LOGIN',
    'AUTH=LOGIN',
    'X-EXPS GSSAPI NTLM',
    '8BITMIME',
    'BINARYMIME',
    'CHUNKING',
    'XEXCH50',
    'XRDST',
    'X-LINK2STATE',
    'TURN',
    'ETRN',
    'ATRN',
    'SMTPUTF8',
    'HELP',
  ],
};

const allow = new Set(DEFAULT_EHLO_ALLOW);

describe('filterEhlo', () => {
  test('keeps the greeting and only allowed keywords, in backend order', () => {
    expect(filterEhlo(exchange, { allow })).toEqual({
      code: 250,
      lines: [
        'exch.example.com Hello [203.0.113.9]',
        'SIZE 10240000',
        'PIPELINING',
        'DSN',
        'ENHANCEDSTATUSCODES',
        '8BITMIME',
        'SMTPUTF8',
        'HELP',
      ],
    });
  });

  const stripped = ['CHUNKING', 'BINARYMIME', 'XEXCH50', 'X-LINK2STATE', 'XRDST', 'TURN', 'ETRN', 'ATRN', 'X-EXPS', 'STARTTLS', 'AUTH', 'X-ANONYMOUSTLS'];
  test.each(stripped)('%s from the backend is stripped by default', (kw) => {
    const out = filterEhlo(exchange, { allow });
    expect(out.lines.slice(1).some((l) => l.toUpperCase().split(/[\s=]/)[0] === kw)).toBe(false);
  });

  test('a stripped keyword passes when allowed', () => {
    const out = filterEhlo(exchange, { allow: new Set([...DEFAULT_EHLO_ALLOW, 'ETRN']) });
    expect(out.lines).toContain('ETRN');
  });

  // SIZE (RFC 1870): the smaller of the two limits is advertised
  const sizes = [
    { name: 'guard smaller', backend: 'SIZE 10240000', max: 5_000_000, want: 'SIZE 5000000' },
    { name: 'backend smaller', backend: 'SIZE 1000', max: 5_000_000, want: 'SIZE 1000' },
    { name: 'no guard limit', backend: 'SIZE 1000', max: undefined, want: 'SIZE 1000' },
    { name: 'backend SIZE without number', backend: 'SIZE', max: 2000, want: 'SIZE 2000' },
    { name: 'backend SIZE 0 (no limit)', backend: 'SIZE 0', max: 2000, want: 'SIZE 2000' },
    { name: 'backend SIZE garbage', backend: 'SIZE lots', max: 2000, want: 'SIZE 2000' },
    { name: 'backend SIZE 0, no guard limit', backend: 'SIZE 0', max: undefined, want: 'SIZE' },
    { name: 'lower-case size', backend: 'size 300', max: 2000, want: 'SIZE 300' },
  ];
  test.each(sizes)('SIZE: $name', ({ backend, max, want }) => {
    const r: Reply = { code: 250, lines: ['mx', backend, 'PIPELINING'] };
    const out = filterEhlo(r, max === undefined ? { allow } : { allow, maxSizeBytes: max });
    expect(out.lines).toEqual(['mx', want, 'PIPELINING']);
  });

  test('SIZE is added when the backend has none and maxSizeBytes is set', () => {
    const out = filterEhlo({ code: 250, lines: ['mx', 'PIPELINING'] }, { allow, maxSizeBytes: 1234 });
    expect(out.lines).toEqual(['mx', 'PIPELINING', 'SIZE 1234']);
  });

  test('SIZE is not advertised when not allowed', () => {
    const out = filterEhlo(exchange, { allow: new Set(['PIPELINING']), maxSizeBytes: 1234 });
    expect(out.lines).toEqual(['exch.example.com Hello [203.0.113.9]', 'PIPELINING']);
  });

  test('keywords and allow list compare case-insensitively', () => {
    const r: Reply = { code: 250, lines: ['mx', 'pipelining', 'Dsn', 'chunking'] };
    expect(filterEhlo(r, { allow: new Set(['PIPELINING', 'dsn']) }).lines).toEqual(['mx', 'pipelining', 'Dsn']);
  });

  test('add lines are appended and replace backend lines with the same keyword', () => {
    const out = filterEhlo(exchange, { allow: new Set([...DEFAULT_EHLO_ALLOW, 'AUTH', 'STARTTLS']), add: ['STARTTLS', 'AUTH PLAIN LOGIN', 'STARTTLS'] });
    expect(out.lines.filter((l) => l === 'STARTTLS')).toHaveLength(1);
    expect(out.lines.filter((l) => l.toUpperCase().startsWith('AUTH'))).toEqual(['AUTH PLAIN LOGIN']);
    expect(out.lines.slice(-2)).toEqual(['STARTTLS', 'AUTH PLAIN LOGIN']);
  });

  test('AUTH=LOGIN follows the fate of AUTH', () => {
    const r: Reply = { code: 250, lines: ['mx', 'AUTH LOGIN PLAIN', 'AUTH=LOGIN PLAIN'] };
    expect(filterEhlo(r, { allow: new Set(['AUTH']) }).lines).toEqual(['mx', 'AUTH LOGIN PLAIN', 'AUTH=LOGIN PLAIN']);
    expect(filterEhlo(r, { allow: new Set(['PIPELINING']) }).lines).toEqual(['mx']);
  });

  test('duplicates and blank lines from the backend are dropped; result has no enhanced code', () => {
    const r: Reply = { code: 250, enhanced: '2.0.0', lines: ['mx', 'PIPELINING', '', 'pipelining', '  '] };
    expect(filterEhlo(r, { allow })).toEqual({ code: 250, lines: ['mx', 'PIPELINING'] });
  });

  test('a reply with only the greeting stays a greeting', () => {
    expect(filterEhlo({ code: 250, lines: ['mx'] }, { allow })).toEqual({ code: 250, lines: ['mx'] });
  });
});

describe('ehloKeywords', () => {
  test('maps keywords to their parameters', () => {
    const k = ehloKeywords(exchange);
    expect(k.get('SIZE')).toBe('10240000');
    expect(k.get('PIPELINING')).toBe('');
    expect(k.get('STARTTLS')).toBe('');
    expect(k.get('X-EXPS')).toBe('GSSAPI NTLM');
    expect(k.has('EXCH.EXAMPLE.COM')).toBe(false);
  });

  test('AUTH and legacy AUTH= lines merge without duplicates', () => {
    const k = ehloKeywords({ code: 250, lines: ['mx', 'auth login PLAIN', 'AUTH=LOGIN CRAM-MD5'] });
    expect(k.get('AUTH')).toBe('login PLAIN CRAM-MD5');
  });

  test('keywords are upper-cased', () => {
    expect([...ehloKeywords({ code: 250, lines: ['mx', 'pipelining', 'Size 5'] }).entries()]).toEqual([
      ['PIPELINING', ''],
      ['SIZE', '5'],
    ]);
  });
});

describe('filtered replies and keyword maps are kept per reply text (same answers as working them out)', () => {
  const allow = new Set(DEFAULT_EHLO_ALLOW);
  test('the same reply text with other options, or another reply, never gets a kept answer that does not fit', () => {
    const first = filterEhlo({ code: 250, lines: ['mx', 'SIZE 5000', 'PIPELINING'] }, { allow, maxSizeBytes: 1000 });
    expect(first.lines).toEqual(['mx', 'SIZE 1000', 'PIPELINING']);
    // A fresh Reply object with the same text: the kept answer, the same object.
    expect(filterEhlo({ code: 250, lines: ['mx', 'SIZE 5000', 'PIPELINING'] }, { allow, maxSizeBytes: 1000 })).toBe(first);
    expect(filterEhlo({ code: 250, lines: ['mx', 'SIZE 5000', 'PIPELINING'] }, { allow, maxSizeBytes: 2000 }).lines).toEqual(['mx', 'SIZE 2000', 'PIPELINING']);
    expect(filterEhlo({ code: 250, lines: ['mx', 'SIZE 5000', 'PIPELINING'] }, { allow, maxSizeBytes: 1000, add: ['STARTTLS'] }).lines).toEqual(['mx', 'SIZE 1000', 'PIPELINING', 'STARTTLS']);
    expect(filterEhlo({ code: 250, lines: ['mx', 'SIZE 5000', 'PIPELINING'] }, { allow: new Set(['SIZE']), maxSizeBytes: 1000 }).lines).toEqual(['mx', 'SIZE 1000']);
    expect(filterEhlo({ code: 250, lines: ['mx', 'SIZE 5000', 'DSN'] }, { allow, maxSizeBytes: 1000 }).lines).toEqual(['mx', 'SIZE 1000', 'DSN']);
    expect(ehloKeywords({ code: 250, lines: ['mx', 'DSN'] }).has('DSN')).toBe(true);
    expect(ehloKeywords({ code: 250, lines: ['mx', 'PIPELINING'] }).has('DSN')).toBe(false);
  });

  test('a reply longer than the memo keeps is still filtered (worked out each time)', () => {
    const long = ['mx', ...Array.from({ length: 60 }, (_, i) => `X-PRIVATE-${i} ${'p'.repeat(80)}`), 'PIPELINING', 'SIZE 10'];
    expect(long.join('\n').length).toBeGreaterThan(4096);
    const r = filterEhlo({ code: 250, lines: long }, { allow, maxSizeBytes: 1000 });
    expect(r.lines).toEqual(['mx', 'PIPELINING', 'SIZE 10']);
    expect(ehloKeywords({ code: 250, lines: long }).get('SIZE')).toBe('10');
  });
});
