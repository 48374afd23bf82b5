import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { RecipientList } from '../../src/directory/recipient-list.js';

function parseOk(text: string): RecipientList {
  const parsed = RecipientList.parse(text);
  if (!parsed.ok) throw new Error(`unexpected parse error line ${parsed.line}: ${parsed.message}`);
  return parsed.list;
}

const SAMPLE = [
  '# valid recipients',
  '',
  'alice@example.com',
  '  ally@example.com   # alias of alice',
  'Bob.Smith@Example.COM',
  'x#y@example.com',
  '@catchall.example.org',
  'carol@trailing.example.',
  '\t',
  'dora@example.com\r',
].join('\n');

describe('RecipientList.parse + lookup', () => {
  const list = parseOk(SAMPLE);
  const cases = [
    // listed mailboxes and aliases
    { name: 'primary address', address: 'alice@example.com', want: 'known' },
    { name: 'alias with trailing comment', address: 'ally@example.com', want: 'known' },
    { name: "'#' inside an address is atext, not a comment", address: 'x#y@example.com', want: 'known' },
    { name: 'CRLF line endings', address: 'dora@example.com', want: 'known' },
    // case-insensitive, as Exchange treats local parts
    { name: 'upper-case local part', address: 'ALICE@example.com', want: 'known' },
    { name: 'mixed case in the file', address: 'bob.smith@example.com', want: 'known' },
    // catch-all
    { name: 'catch-all domain, any local part', address: 'anyone@catchall.example.org', want: 'known' },
    { name: 'catch-all does not cover subdomains', address: 'anyone@sub.catchall.example.org', want: 'unknown' },
    // trailing dots
    { name: 'trailing dot in the file is dropped', address: 'carol@trailing.example', want: 'known' },
    { name: 'trailing dot in the lookup', address: 'alice@example.com.', want: 'known' },
    // unknown
    { name: 'unlisted local part', address: 'mallory@example.com', want: 'unknown' },
    { name: 'listed local part, other domain', address: 'alice@example.net', want: 'unknown' },
    { name: 'comment text is not an entry', address: 'alias@example.com', want: 'unknown' },
    { name: 'no @ at all', address: 'alice', want: 'unknown' },
  ];
  test.each(cases)('$name', ({ address, want }) => {
    expect(list.lookup(address)).toBe(want);
  });

  test('size counts mailboxes and catch-all domains, not comments or blank lines', () => {
    expect(list.size).toBe(7);
  });

  test('an empty or comment-only file is an empty list', () => {
    expect(parseOk('').size).toBe(0);
    expect(parseOk('# nothing\n\n   # still nothing\n').size).toBe(0);
  });
});

describe('RecipientList.parse errors name the line', () => {
  const cases = [
    { name: 'no @', text: 'alice@example.com\nbob\n', line: 2, message: /not an address/ },
    { name: 'two tokens on a line', text: '# c\n\nalice@example.com bob@example.com\n', line: 3, message: /one address per line/ },
    { name: 'empty domain', text: 'alice@\n', line: 1, message: /bad domain/ },
    { name: 'domain with an underscore', text: 'a@exa_mple.com\n', line: 1, message: /bad domain/ },
    { name: 'non-ASCII domain must be an A-label', text: 'a@bücher.example\n', line: 1, message: /punycode/ },
    { name: 'local part over 64 octets', text: `${'a'.repeat(65)}@example.com\n`, line: 1, message: /bad local part/ },
    { name: 'control character in the local part', text: 'ok@example.com\r\nal\u0001ice@example.com\n', line: 2, message: /bad local part/ },
  ];
  test.each(cases)('$name', ({ text, line, message }) => {
    const parsed = RecipientList.parse(text);
    expect(parsed.ok).toBe(false);
    if (parsed.ok) return;
    expect(parsed.line).toBe(line);
    expect(parsed.message).toMatch(message);
  });
});

describe('RecipientList.load', () => {
  test('reads a file; a bad file throws naming file and line', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'rg-list-'));
    try {
      const good = join(dir, 'good.txt');
      await writeFile(good, 'alice@example.com\n@example.org\n');
      const list = await RecipientList.load(good);
      expect(list.size).toBe(2);
      const bad = join(dir, 'bad.txt');
      await writeFile(bad, 'alice@example.com\nnot-an-address\n');
      await expect(RecipientList.load(bad)).rejects.toThrow(`${bad}:2:`);
      await expect(RecipientList.load(join(dir, 'missing.txt'))).rejects.toThrow(/ENOENT/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('RecipientList properties', () => {
  const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?$/);
  const domain = fc.array(label, { minLength: 1, maxLength: 3 }).map((ls) => ls.join('.'));
  const local = fc.stringMatching(/^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,20}$/).filter((l) => !l.startsWith('#'));

  test('arbitrary text never throws', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 300 }), (text) => {
        const parsed = RecipientList.parse(text);
        if (parsed.ok) parsed.list.lookup('a@b.example');
        else expect(parsed.line).toBeGreaterThanOrEqual(1);
      }),
    );
  }, 60_000);

  test('every listed address is known in any case, and other local parts are unknown', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.tuple(local, domain), { minLength: 1, maxLength: 20 }), fc.boolean(), (entries, upper) => {
        const list = parseOk(entries.map(([l, d]) => `${l}@${d}`).join('\n'));
        for (const [l, d] of entries) {
          const addr = `${l}@${d}`;
          expect(list.lookup(upper ? addr.toUpperCase() : addr)).toBe('known');
        }
        const listed = new Set(entries.map(([l, d]) => `${l}@${d}`.toLowerCase()));
        const [l0, d0] = entries[0] ?? ['', ''];
        const other = `${l0}-not-listed@${d0}`;
        if (!listed.has(other.toLowerCase())) expect(list.lookup(other)).toBe('unknown');
      }),
    );
  });
});
