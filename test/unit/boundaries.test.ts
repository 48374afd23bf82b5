/**
 * The import boundaries of ../shared/DESIGN.md, checked by dependency-cruiser
 * (.dependency-cruiser.cjs, also `npm run lint:deps`): the tree as it is passes, and a temporary
 * copy with one planted violation per rule fails, naming that rule.
 */
import { execFile } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '../..');
const DEPCRUISE = path.join(ROOT, 'node_modules/dependency-cruiser/bin/dependency-cruise.mjs');

function cruise(cwd: string): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [DEPCRUISE, 'src', '--config', '.dependency-cruiser.cjs', '--output-type', 'err'], { cwd, timeout: 120_000, maxBuffer: 8 << 20, env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0' } }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, out: `${stdout}${stderr}` });
    });
  });
}

/** One planted violation per rule: the file it goes into and the import line added to it. */
const PLANTED: Array<{ rule: string; file: string; line: string }> = [
  { rule: 'codec-no-io', file: 'src/smtp/reply.ts', line: "import 'node:net';" },
  { rule: 'codec-no-io', file: 'src/smtp/path.ts', line: "import '../session/transaction.js';" },
  { rule: 'policy-no-io', file: 'src/policy/judge.ts', line: "import 'ioredis';" },
  { rule: 'policy-no-io', file: 'src/policy/relay.ts', line: "import 'node:fs';" },
  { rule: 'policy-not-limits-metrics-directory', file: 'src/policy/sender.ts', line: "import '../limits/schema.js';" },
  { rule: 'policy-not-limits-metrics-directory', file: 'src/policy/trust.ts', line: "import '../observability/metrics.js';" },
  { rule: 'policy-not-limits-metrics-directory', file: 'src/policy/recipient.ts', line: "import '../directory/schema.js';" },
  { rule: 'shared-helpers-pure', file: 'src/util/duration.ts', line: "import '../smtp/reply.js';" },
  { rule: 'session-only-from-root-and-listeners', file: 'src/admin/dry-run-check.ts', line: "import '../session/session.js';" },
];

describe('import boundaries (dependency-cruiser)', () => {
  const tmp = mkdtempSync(path.join(tmpdir(), 'rg-boundaries-'));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  test('the source tree keeps every boundary', async () => {
    const r = await cruise(ROOT);
    expect(r.out).not.toMatch(/error /);
    expect(r.code, r.out).toBe(0);
  }, 180_000);

  test('a copy with planted violations fails, naming each broken rule and file', async () => {
    cpSync(path.join(ROOT, 'src'), path.join(tmp, 'src'), { recursive: true });
    for (const f of ['.dependency-cruiser.cjs', 'tsconfig.json', 'package.json']) cpSync(path.join(ROOT, f), path.join(tmp, f));
    symlinkSync(path.join(ROOT, 'node_modules'), path.join(tmp, 'node_modules'), 'dir');
    for (const p of PLANTED) {
      const file = path.join(tmp, p.file);
      writeFileSync(file, `${p.line}\n${readFileSync(file, 'utf8')}`);
    }
    const r = await cruise(tmp);
    expect(r.code).not.toBe(0);
    for (const p of PLANTED) expect(r.out, `${p.rule} in ${p.file}`).toMatch(new RegExp(`error ${p.rule}: ${p.file.replace(/[.]/g, '\\.')} →`));
    expect(r.out).toMatch(new RegExp(`${PLANTED.length} dependency violations`));
  }, 180_000);
});
