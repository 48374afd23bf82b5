import { describe, expect, test } from 'vitest';
import { EndOfDataScanner, type ScanStep } from '../../src/smtp/end-of-data.js';

type Mode = 'reject' | 'normalize';

interface Outcome {
  forward: string;
  status: ScanStep['status'];
  rest?: string;
  smuggle?: string;
  size: number;
}

/** Feed the chunks until a terminal status; return what the backend would have received. */
function scan(chunks: string[], mode: Mode = 'reject', maxBytes = 1_000_000): Outcome {
  const s = new EndOfDataScanner({ mode, maxBytes });
  const fwd: Buffer[] = [];
  let last: ScanStep = { forward: [], size: 0, status: 'more' };
  let k = 0;
  while (k < chunks.length) {
    last = s.push(Buffer.from(chunks[k] ?? '', 'latin1'));
    k++;
    fwd.push(...last.forward);
    if (last.status !== 'more') break;
  }
  const out: Outcome = { forward: Buffer.concat(fwd).toString('latin1'), status: last.status, size: last.size };
  // The rest is what followed the terminator in its chunk plus every chunk not pushed.
  if (last.status === 'end') out.rest = last.rest.toString('latin1') + chunks.slice(k).join('');
  if (last.status === 'smuggling') out.smuggle = last.smuggle;
  return out;
}

describe('EndOfDataScanner: clean messages', () => {
  const cases = [
    // the terminator
    { name: 'simple message', input: 'Subject: x\r\n\r\nbody\r\n.\r\n', forward: 'Subject: x\r\n\r\nbody\r\n.\r\n', rest: '', size: 20 },
    { name: 'empty message', input: '.\r\n', forward: '.\r\n', rest: '', size: 0 },
    { name: 'empty line then end', input: '\r\n.\r\n', forward: '\r\n.\r\n', rest: '', size: 2 },
    { name: 'pipelined QUIT in rest', input: 'a\r\n.\r\nQUIT\r\n', forward: 'a\r\n.\r\n', rest: 'QUIT\r\n', size: 3 },
    { name: 'pipelined MAIL in rest', input: 'a\r\n.\r\nMAIL FROM:<x@y>\r\nRCPT TO:<z@w>\r\n', forward: 'a\r\n.\r\n', rest: 'MAIL FROM:<x@y>\r\nRCPT TO:<z@w>\r\n', size: 3 },
    // dot-stuffing passes byte-identical; the stuffing dot is not counted (RFC 1870 §3)
    { name: 'dot-stuffed line', input: '..foo\r\n.\r\n', forward: '..foo\r\n.\r\n', rest: '', size: 6 },
    { name: 'stuffed lone dot is not an end', input: 'a\r\n..\r\nb\r\n.\r\n', forward: 'a\r\n..\r\nb\r\n.\r\n', rest: '', size: 9 },
    { name: 'dot mid-line', input: 'a.b\r\n.x\r\n.\r\n', forward: 'a.b\r\n.x\r\n.\r\n', rest: '', size: 8 },
    { name: 'dot then space', input: '. \r\n.\r\n', forward: '. \r\n.\r\n', rest: '', size: 3 },
    { name: '8-bit bytes', input: 'h\xe9\xff\r\n.\r\n', forward: 'h\xe9\xff\r\n.\r\n', rest: '', size: 5 },
  ];
  test.each(cases)('$name', ({ input, forward, rest, size }) => {
    for (const mode of ['reject', 'normalize'] as const) {
      const got = scan([input], mode);
      expect(got).toEqual({ forward, status: 'end', rest, size });
    }
  });

  test('terminator split at every position gives the same result', () => {
    const input = 'line one\r\n..two\r\n.\r\nQUIT\r\n';
    const whole = scan([input]);
    expect(whole.status).toBe('end');
    for (let a = 0; a <= input.length; a++) {
      for (let b = a; b <= input.length; b++) {
        const got = scan([input.slice(0, a), input.slice(a, b), input.slice(b)]);
        expect(got, `split at ${a},${b}`).toEqual(whole);
      }
    }
  });

  test('one-byte chunks: the end arrives with the final LF', () => {
    const s = new EndOfDataScanner({ mode: 'reject', maxBytes: 100 });
    const input = 'x\r\n.\r\n';
    const statuses: string[] = [];
    const fwd: Buffer[] = [];
    for (const ch of input) {
      const step = s.push(Buffer.from(ch, 'latin1'));
      statuses.push(step.status);
      fwd.push(...step.forward);
    }
    expect(statuses).toEqual(['more', 'more', 'more', 'more', 'more', 'end']);
    expect(Buffer.concat(fwd).toString('latin1')).toBe(input);
    expect(s.bytesSeen).toBe(input.length);
  });

  test('held-back bytes are not forwarded before they are decided', () => {
    const s = new EndOfDataScanner({ mode: 'reject', maxBytes: 100 });
    const a = s.push(Buffer.from('abc\r', 'latin1'));
    expect(Buffer.concat(a.forward).toString('latin1')).toBe('abc');
    const b = s.push(Buffer.from('\n.', 'latin1'));
    expect(Buffer.concat(b.forward).toString('latin1')).toBe('\r\n');
    const c = s.push(Buffer.from('\r', 'latin1'));
    expect(c.forward).toEqual([]);
    const d = s.push(Buffer.from('\nRSET\r\n', 'latin1'));
    expect(d.status).toBe('end');
    expect(Buffer.concat(d.forward).toString('latin1')).toBe('.\r\n');
    if (d.status === 'end') expect(d.rest.toString('latin1')).toBe('RSET\r\n');
  });

  test('forward slices share memory with the input (zero-copy)', () => {
    const s = new EndOfDataScanner({ mode: 'reject', maxBytes: 1000 });
    const input = Buffer.from('hello world\r\nsecond line\r\n', 'latin1');
    const step = s.push(input);
    expect(step.forward).toHaveLength(1);
    expect(step.forward[0]?.buffer).toBe(input.buffer);
  });

  test('push after end returns the chunk as rest', () => {
    const s = new EndOfDataScanner({ mode: 'reject', maxBytes: 1000 });
    expect(s.push(Buffer.from('.\r\n')).status).toBe('end');
    const again = s.push(Buffer.from('NOOP\r\n'));
    expect(again.status).toBe('end');
    if (again.status === 'end') expect(again.rest.toString()).toBe('NOOP\r\n');
    expect(again.forward).toEqual([]);
  });
});

describe('EndOfDataScanner: smuggling (reject mode)', () => {
  const cases = [
    // the SMTP smuggling terminators (CVE-2023-51764/51765/51766) and their relatives
    { name: '\\n.\\n', input: 'a\n.\nMAIL FROM:<x@y>\r\n', smuggle: 'bare_lf', forward: 'a' },
    { name: '\\n.\\r\\n', input: 'a\n.\r\nMAIL FROM:<x@y>\r\n', smuggle: 'bare_lf', forward: 'a' },
    { name: '\\r.\\r', input: 'a\r.\r', smuggle: 'bare_cr', forward: 'a' },
    { name: '\\r\\n.\\r (bare CR after dot)', input: 'a\r\n.\rMAIL', smuggle: 'bare_cr', forward: 'a\r\n' },
    { name: '\\r\\n.\\n', input: 'a\r\n.\nMAIL FROM:<x@y>\r\n', smuggle: 'bare_lf', forward: 'a\r\n' },
    { name: '.\\n at the very start', input: '.\nMAIL FROM:<x@y>\r\n', smuggle: 'bare_lf', forward: '' },
    { name: '\\n at the very start', input: '\nx\r\n', smuggle: 'bare_lf', forward: '' },
    { name: '\\r\\n.\\r\\r\\n', input: 'a\r\n.\r\r\n', smuggle: 'bare_cr', forward: 'a\r\n' },
    { name: '\\r\\r\\n', input: 'a\r\r\n.\r\n', smuggle: 'bare_cr', forward: 'a' },
    // bare bytes inside a line
    { name: 'bare CR inside a line', input: 'ab\rcd\r\n.\r\n', smuggle: 'bare_cr', forward: 'ab' },
    { name: 'bare LF inside a line', input: 'ab\ncd\r\n.\r\n', smuggle: 'bare_lf', forward: 'ab' },
    { name: 'bare CR at line start', input: 'x\r\n\rcd\r\n.\r\n', smuggle: 'bare_cr', forward: 'x\r\n' },
    { name: 'bare LF after CRLF', input: 'x\r\n\n.\r\n', smuggle: 'bare_lf', forward: 'x\r\n' },
    // NUL
    { name: 'NUL inside a line', input: 'ab\0cd\r\n.\r\n', smuggle: 'nul', forward: 'ab' },
    { name: '\\r\\n.\\0\\r\\n', input: 'a\r\n.\0\r\n', smuggle: 'nul', forward: 'a\r\n' },
    { name: '\\r\\n\\0.\\r\\n', input: 'a\r\n\0.\r\n', smuggle: 'nul', forward: 'a\r\n' },
    { name: 'NUL after CR', input: 'a\r\0\n', smuggle: 'bare_cr', forward: 'a' },
    // after a clean line: earlier lines were already forwarded
    { name: 'smuggle after many lines', input: 'l1\r\nl2\r\nl3\n.\n', smuggle: 'bare_lf', forward: 'l1\r\nl2\r\nl3' },
  ];
  test.each(cases)('$name', ({ input, smuggle, forward }) => {
    const got = scan([input], 'reject');
    expect(got.status).toBe('smuggling');
    expect(got.smuggle).toBe(smuggle);
    expect(got.forward).toBe(forward);
    // Same verdict and never more forwarded bytes in 1-byte chunks.
    const bytewise = scan([...input], 'reject');
    expect(bytewise).toEqual(got);
  });

  test('after smuggling further pushes stay smuggling and forward nothing', () => {
    const s = new EndOfDataScanner({ mode: 'reject', maxBytes: 1000 });
    expect(s.push(Buffer.from('a\n')).status).toBe('smuggling');
    const again = s.push(Buffer.from('.\r\n'));
    expect(again).toMatchObject({ status: 'smuggling', smuggle: 'bare_lf', forward: [] });
  });
});

describe('EndOfDataScanner: normalize mode', () => {
  const cases = [
    // a bare LF is a line end, rewritten to CRLF for the backend
    { name: '\\n.\\n ends (guard and backend agree)', input: 'a\n.\nQUIT\r\n', status: 'end', forward: 'a\r\n.\r\n', rest: 'QUIT\r\n' },
    { name: '\\n.\\r\\n ends', input: 'a\n.\r\nQUIT\r\n', status: 'end', forward: 'a\r\n.\r\n', rest: 'QUIT\r\n' },
    { name: '\\r\\n.\\n ends', input: 'a\r\n.\nX', status: 'end', forward: 'a\r\n.\r\n', rest: 'X' },
    { name: '.\\n at the very start ends', input: '.\nX', status: 'end', forward: '.\r\n', rest: 'X' },
    { name: 'bare LF inside a line rewritten', input: 'ab\ncd\r\n.\r\n', status: 'end', forward: 'ab\r\ncd\r\n.\r\n', rest: '' },
    { name: 'empty bare-LF lines', input: '\n\n.\n', status: 'end', forward: '\r\n\r\n.\r\n', rest: '' },
    // bare CR and NUL are still refused
    { name: '\\r.\\r refused', input: 'a\r.\r', status: 'smuggling', smuggle: 'bare_cr', forward: 'a' },
    { name: '\\r\\n.\\r refused', input: 'a\r\n.\rX', status: 'smuggling', smuggle: 'bare_cr', forward: 'a\r\n' },
    { name: 'bare CR inside a line refused', input: 'a\rb\r\n.\r\n', status: 'smuggling', smuggle: 'bare_cr', forward: 'a' },
    { name: 'NUL refused', input: 'a\n\0\r\n', status: 'smuggling', smuggle: 'nul', forward: 'a\r\n' },
  ];
  test.each(cases)('$name', ({ input, status, forward, rest, smuggle }) => {
    for (const chunks of [[input], [...input]]) {
      const got = scan(chunks, 'normalize');
      expect(got.status).toBe(status);
      expect(got.forward).toBe(forward);
      if (rest !== undefined) expect(got.rest).toBe(rest);
      if (smuggle !== undefined) expect(got.smuggle).toBe(smuggle);
    }
  });

  test('normalised bare LF counts as two octets', () => {
    expect(scan(['ab\ncd\n.\n'], 'normalize').size).toBe(8);
  });
});

describe('EndOfDataScanner: size limit', () => {
  test('a message of exactly maxBytes passes', () => {
    const body = 'x'.repeat(8) + '\r\n'; // 10 octets
    expect(scan([body + '.\r\n'], 'reject', 10)).toEqual({ forward: body + '.\r\n', status: 'end', rest: '', size: 10 });
  });

  test('one octet more is too large; nothing past the limit is forwarded', () => {
    const got = scan(['x'.repeat(9) + '\r\n.\r\n'], 'reject', 10);
    expect(got.status).toBe('too_large');
    expect(got.forward).toBe('x'.repeat(9));
    // The CRLF that did not fit is not counted.
    expect(got.size).toBe(9);
  });

  test('stuffing dots do not count', () => {
    expect(scan(['..\r\n.\r\n'], 'reject', 3).status).toBe('end');
  });

  test('too large is the same in 1-byte chunks', () => {
    const input = 'abc\r\ndef\r\nghi\r\n.\r\n';
    for (let max = 0; max < 12; max++) {
      const whole = scan([input], 'reject', max);
      expect(whole.status).toBe('too_large');
      expect(scan([...input], 'reject', max)).toEqual(whole);
    }
  });

  test('discardUntilEnd resyncs at the real CRLF.CRLF and returns the pipelined rest', () => {
    const s = new EndOfDataScanner({ mode: 'reject', maxBytes: 4 });
    const step = s.push(Buffer.from('hello\r\n..\r\nworld\n.\n', 'latin1'));
    expect(step.status).toBe('too_large');
    expect(step.forward.map((b) => b.toString()).join('')).toBe('hell');
    // The remainder of the overflowing chunk is kept inside the scanner.
    expect(s.discardUntilEnd(Buffer.alloc(0))).toEqual({ done: false, rest: Buffer.alloc(0) });
    // push() no longer consumes.
    expect(s.push(Buffer.from('x'))).toMatchObject({ status: 'too_large', forward: [] });
    expect(s.discardUntilEnd(Buffer.from('more\r\n.'))).toMatchObject({ done: false });
    const done = s.discardUntilEnd(Buffer.from('\r\nQUIT\r\n'));
    expect(done.done).toBe(true);
    expect(done.rest.toString()).toBe('QUIT\r\n');
  });

  test('discardUntilEnd finds the end inside the overflowing chunk', () => {
    const s = new EndOfDataScanner({ mode: 'reject', maxBytes: 2 });
    expect(s.push(Buffer.from('abcdef\r\n.\r\nQUIT\r\n')).status).toBe('too_large');
    const done = s.discardUntilEnd(Buffer.alloc(0));
    expect(done.done).toBe(true);
    expect(done.rest.toString()).toBe('QUIT\r\n');
    expect(s.bytesSeen).toBe('abcdef\r\n.\r\n'.length);
  });

  test('discardUntilEnd in normalize mode also ends on \\n.\\n', () => {
    const s = new EndOfDataScanner({ mode: 'normalize', maxBytes: 1 });
    expect(s.push(Buffer.from('abc\n')).status).toBe('too_large');
    const done = s.discardUntilEnd(Buffer.from('x\n.\nNOOP\r\n'));
    expect(done).toEqual({ done: true, rest: Buffer.from('NOOP\r\n') });
  });

  test('overflow on the CRLF itself drops the held CR', () => {
    const got = scan(['ab\r\n.\r\n'], 'reject', 3);
    expect(got).toMatchObject({ status: 'too_large', forward: 'ab' });
    expect(scan([...'ab\r\n.\r\n'], 'reject', 3)).toEqual(got);
  });
});
