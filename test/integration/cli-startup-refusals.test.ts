/**
 * The first commands an operator tries fail with one sentence saying what to add (issue 17), not a
 * stack trace or a misleading ENOENT: a rules directory the guard cannot write (a container's
 * read-only root without a rules volume), and an admin token copied from an example file.
 */
import { spawn } from 'node:child_process';
import { chmodSync, cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import { withTimeout } from '../helpers/with-timeout.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/**
 * Run the CLI to its exit (SIGTERM once stdout matches stopWhen); as root, as nobody (root writes
 * anywhere, so a mode bit would not stop it).
 */
async function runCli(args: string[], env: NodeJS.ProcessEnv = {}, stopWhen?: RegExp): Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> {
  const asNobody = process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : {};
  const proc = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { PATH: process.env.PATH, HOME: tmpdir(), ...env },
    ...asNobody,
  });
  let stdout = '';
  let stderr = '';
  proc.stdout.on('data', (c: Buffer) => {
    stdout += c.toString();
    if (stopWhen?.test(stdout) && proc.exitCode === null) proc.kill('SIGTERM');
  });
  proc.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const [code, signal] = await withTimeout(
    new Promise<[number | null, NodeJS.Signals | null]>((resolve) => proc.once('exit', (c, sig) => resolve([c, sig]))),
    60_000,
    'guard exit',
  );
  return { code, signal, stdout, stderr };
}

function rulesCopy(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'rg-refusal-'));
  dirs.push(dir);
  cpSync('rules', dir, { recursive: true, filter: (src) => !src.includes('.history') && !src.endsWith('.audit.jsonl') && !src.endsWith('bans.yaml') });
  chmodSync(dir, 0o755);
  return dir;
}

describe('startup refusals: one sentence, exit 2', () => {
  test('a rules directory the guard cannot write: says which directory and what to do', async () => {
    const rules = rulesCopy();
    chmodSync(rules, 0o555);
    const { code, stderr } = await runCli(['--listen', '127.0.0.1:0', '--no-admin', '--rules-dir', rules]);
    expect(code).toBe(2);
    expect(stderr.trim().split('\n')).toEqual([
      `relay-guard: rules directory ${rules} is not writable (EACCES): the guard records rule versions and the audit log there, so mount a writable volume on it or point --rules-dir (rulesDir) at a writable directory`,
    ]);
  }, 90_000);

  test('control: the same directory made writable starts the guard (the refusal was about writability only)', async () => {
    const rules = rulesCopy();
    chmodSync(rules, 0o777);
    const { code, signal, stdout, stderr } = await runCli(['--listen', '127.0.0.1:0', '--no-admin', '--rules-dir', rules], {}, /"msg":"listening"/);
    expect(stdout).toMatch(/"msg":"rules loaded"/);
    expect(stderr).not.toMatch(/not writable|Error/);
    // Stopped by our SIGTERM: exit 0 once its handler is installed, or the signal itself just before.
    expect(code === 0 || signal === 'SIGTERM').toBe(true);
  }, 90_000);

  test.each(['replace-me-with-openssl-rand-hex-32', 'demo-admin-token-change-me'])('the placeholder token %s from an example file is refused', async (token) => {
    const rules = rulesCopy();
    chmodSync(rules, 0o777);
    const { code, stderr } = await runCli(['--listen', '127.0.0.1:0', '--admin', '0.0.0.0:0', '--rules-dir', rules], { RELAY_GUARD_ADMIN_TOKEN: token });
    expect(code).toBe(2);
    expect(stderr.trim().split('\n')).toEqual(['relay-guard: RELAY_GUARD_ADMIN_TOKEN is an example placeholder, not a secret: set a generated token (openssl rand -hex 32)']);
  }, 90_000);
});
