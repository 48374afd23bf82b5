import { describe, expect, test } from 'vitest';
import { ReplyParser, type ReplyEvent } from '../../src/smtp/reply-parser.js';
import { formatReply } from '../../src/smtp/reply.js';

function parse(chunks: string[], opts?: { maxLineBytes?: number; maxLines?: number }): ReplyEvent[] {
  const p = new ReplyParser(opts);
  return chunks.flatMap((c) => p.push(Buffer.from(c, 'latin1')));
}

describe('ReplyParser', () => {
  const cases = [
    // single and multi-line replies (RFC 5321 §4.2)
    { name: 'single line', input: '220 mx.example ESMTP\r\n', want: [{ code: 220, lines: ['mx.example ESMTP'] }] },
    {
      name: 'multi-line EHLO',
      input: '250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 8BITMIME\r\n',
      want: [{ code: 250, lines: ['mx.example', 'PIPELINING', 'SIZE 1000', '8BITMIME'] }],
    },
    { name: 'enhanced code stays in the text', input: '550 5.7.1 Relaying denied\r\n', want: [{ code: 550, lines: ['5.7.1 Relaying denied'] }] },
    { name: 'bare code', input: '250\r\n', want: [{ code: 250, lines: [''] }] },
    { name: 'code and space only', input: '354 \r\n', want: [{ code: 354, lines: [''] }] },
    { name: 'empty continuation line', input: '250-\r\n250 ok\r\n', want: [{ code: 250, lines: ['', 'ok'] }] },
    { name: 'LF-only line ends accepted', input: '250-a\n250 b\n', want: [{ code: 250, lines: ['a', 'b'] }] },
    {
      name: 'pipelined replies',
      input: '250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n',
      want: [
        { code: 250, lines: ['2.1.0 Ok'] },
        { code: 250, lines: ['2.1.5 Ok'] },
        { code: 354, lines: ['go'] },
      ],
    },
    { name: '8-bit text kept byte for byte', input: '250 caf\xe9\r\n', want: [{ code: 250, lines: ['caf\xe9'] }] },
  ];
  test.each(cases)('$name', ({ input, want }) => {
    const expected = want.map((reply) => ({ kind: 'reply', reply }));
    expect(parse([input])).toEqual(expected);
    expect(parse([...input])).toEqual(expected);
  });

  const errors = [
    // syntax
    { name: 'not a code', input: 'hello\r\n', error: 'bad_syntax' },
    { name: 'short line', input: '25\r\n', error: 'bad_syntax' },
    { name: 'first digit 1', input: '150 x\r\n', error: 'bad_syntax' },
    { name: 'first digit 6', input: '650 x\r\n', error: 'bad_syntax' },
    { name: 'second digit 6', input: '260 x\r\n', error: 'bad_syntax' },
    { name: 'bad separator', input: '250_x\r\n', error: 'bad_syntax' },
    { name: 'bare CR inside text', input: '250 a\rb\r\n', error: 'bad_syntax' },
    { name: 'empty line', input: '\r\n', error: 'bad_syntax' },
    // consistency and bounds
    { name: 'code changes inside a reply', input: '250-a\r\n251 b\r\n', error: 'inconsistent_code' },
    { name: 'line too long', input: '250 ' + 'x'.repeat(100) + '\r\n', error: 'line_too_long', opts: { maxLineBytes: 50 } },
    { name: 'too many lines', input: '250-a\r\n'.repeat(5) + '250 b\r\n', error: 'too_many_lines', opts: { maxLines: 5 } },
  ];
  test.each(errors)('$name', ({ input, error, opts }) => {
    for (const chunks of [[input], [...input]]) {
      const events = parse(chunks, opts);
      expect(events.at(-1)).toEqual({ kind: 'error', error });
      expect(events.filter((e) => e.kind === 'error')).toHaveLength(1);
    }
  });

  test('limits are inclusive: a line of exactly maxLineBytes and exactly maxLines lines pass', () => {
    const line = '250 ' + 'x'.repeat(6) + '\r\n'; // 12 bytes
    expect(parse([line], { maxLineBytes: 12 })).toEqual([{ kind: 'reply', reply: { code: 250, lines: ['xxxxxx'] } }]);
    expect(parse([line], { maxLineBytes: 11 })).toEqual([{ kind: 'error', error: 'line_too_long' }]);
    expect(parse(['250-a\r\n250 b\r\n'], { maxLines: 2 })).toHaveLength(1);
  });

  test('an unterminated over-long line is refused before its end arrives', () => {
    const p = new ReplyParser({ maxLineBytes: 20 });
    expect(p.push(Buffer.alloc(19, 0x32))).toEqual([]);
    expect(p.push(Buffer.from('2'))).toEqual([{ kind: 'error', error: 'line_too_long' }]);
  });

  test('replies before an error are delivered; after it the parser is finished', () => {
    const p = new ReplyParser();
    expect(p.push(Buffer.from('250 ok\r\nBAD\r\n250 later\r\n'))).toEqual([
      { kind: 'reply', reply: { code: 250, lines: ['ok'] } },
      { kind: 'error', error: 'bad_syntax' },
    ]);
    expect(p.push(Buffer.from('250 more\r\n'))).toEqual([]);
    expect(p.pending).toBe(false);
  });

  test('pending tracks a partial line and an open multi-line reply', () => {
    const p = new ReplyParser();
    expect(p.pending).toBe(false);
    p.push(Buffer.from('250-a\r\n'));
    expect(p.pending).toBe(true);
    p.push(Buffer.from('250 b'));
    expect(p.pending).toBe(true);
    expect(p.push(Buffer.from('\r\n'))).toHaveLength(1);
    expect(p.pending).toBe(false);
  });

  test('formatReply(parsed) gives back the backend bytes', () => {
    const wire = '250-mx.example\r\n250-SIZE 10240000\r\n250 HELP\r\n';
    const [ev] = parse([wire]);
    expect(ev?.kind).toBe('reply');
    if (ev?.kind === 'reply') expect(formatReply(ev.reply).toString('latin1')).toBe(wire);
  });
});

describe('ReplyParser keeps no reference to a pushed chunk', () => {
  // backend-link.ts reads every backend into one buffer and reuses it after push returns.
  test('one reused buffer, every split point: the replies are the bytes as written', () => {
    const wire = '250-2.1.0 first line\r\n250-second\r\n250 2.1.0 Sender ok\r\n354 go\r\n';
    const want = [
      { code: 250, lines: ['2.1.0 first line', 'second', '2.1.0 Sender ok'] },
      { code: 354, lines: ['go'] },
    ];
    const shared = Buffer.alloc(64);
    for (let a = 0; a <= wire.length; a++) {
      for (let b = a; b <= wire.length; b++) {
        const p = new ReplyParser();
        const got: ReplyEvent[] = [];
        for (const piece of [wire.slice(0, a), wire.slice(a, b), wire.slice(b)]) {
          const n = shared.write(piece, 'latin1');
          got.push(...p.push(shared.subarray(0, n)));
          shared.fill(0x58); // what the next read would leave there
        }
        expect(got).toEqual(want.map((reply) => ({ kind: 'reply', reply })));
      }
    }
  });
});
