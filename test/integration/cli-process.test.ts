/**
 * The relay-guard process itself: flags, the embedded demo default, SIGTERM (graceful: idle
 * sessions get 421 4.3.2, exit 0) and SIGHUP (rules reloaded without dropping a session).
 */
import { afterEach, describe, expect, test } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, cpSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { Dialog } from '../helpers/dialog.js';
import { withTimeout } from '../helpers/with-timeout.js';
import { freePort } from '../helpers/free-port.js';

let child: ChildProcess | undefined;
let backend: RecordingBackend | undefined;

afterEach(async () => {
  if (child && child.exitCode === null) child.kill('SIGKILL');
  child = undefined;
  await backend?.close();
  backend = undefined;
});

/** Start the CLI and resolve once it logs that the mx listener is up. */
async function startCli(args: string[]): Promise<{ proc: ChildProcess; output: () => string }> {
  const proc = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  child = proc;
  let out = '';
  proc.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  proc.stderr!.on('data', (c: Buffer) => (out += c.toString()));
  await withTimeout(
    new Promise<void>((resolve, reject) => {
      const check = () => (/"msg":"listening"/.test(out) ? resolve() : undefined);
      proc.stdout!.on('data', check);
      proc.once('exit', (code) => reject(new Error(`exited ${code}: ${out}`)));
    }),
    30_000,
    'guard start',
  );
  return { proc, output: () => out };
}

function exitOf(proc: ChildProcess): Promise<number | null> {
  return proc.exitCode !== null ? Promise.resolve(proc.exitCode) : new Promise((resolve) => proc.once('exit', (code) => resolve(code)));
}

describe('relay-guard process', () => {
  test('flags alone: refuses relaying, accepts our domain, trusts --relay-network', async () => {
    backend = await startRecordingBackend();
    const port = await freePort();
    const rules = mkdtempSync(path.join(tmpdir(), 'rg-cli-'));
    writeFileSync(path.join(rules, 'limits.yaml'), 'enabled: false\nprefixV4: 24\nprefixV6: 64\nlimits: []\n');
    const { proc } = await startCli(['--listen', `127.0.0.1:${port}`, '--backend', `127.0.0.1:${backend.port}`, '--accepted-domain', 'example.org', '--relay-network', '127.0.0.2/32', '--rules-dir', rules, '--no-admin', '--log-level', 'info']);
    const stranger = await Dialog.connect(port, { localAddress: '127.0.0.9' });
    expect((await stranger.reply()).code).toBe(220);
    await stranger.cmd('EHLO s.test');
    await stranger.cmd('MAIL FROM:<a@elsewhere.test>');
    expect((await stranger.cmd('RCPT TO:<v@elsewhere.test>')).code).toBe(550);
    expect((await stranger.cmd('RCPT TO:<u@EXAMPLE.org>')).code).toBe(250);
    stranger.close();
    const friend = await Dialog.connect(port, { localAddress: '127.0.0.2' });
    await friend.reply();
    await friend.cmd('EHLO f.test');
    await friend.cmd('MAIL FROM:<a@example.org>');
    expect((await friend.cmd('RCPT TO:<v@elsewhere.test>')).code).toBe(250);
    friend.close();
    proc.kill('SIGTERM');
    expect(await withTimeout(exitOf(proc), 15_000, 'exit')).toBe(0);
  }, 90_000); // a process started through tsx: slow on a loaded 2-core machine

  test('SIGHUP reloads the rules without dropping a session; SIGTERM gives idle sessions 421 4.3.2 and exits 0', async () => {
    backend = await startRecordingBackend();
    const port = await freePort();
    const rules = mkdtempSync(path.join(tmpdir(), 'rg-cli-'));
    cpSync('rules', rules, { recursive: true, filter: (src) => !src.includes('.history') && !src.endsWith('.audit.jsonl') });
    writeFileSync(path.join(rules, 'limits.yaml'), 'enabled: false\nprefixV4: 24\nprefixV6: 64\nlimits: []\n');
    const { proc, output } = await startCli(['--listen', `127.0.0.1:${port}`, '--backend', `127.0.0.1:${backend.port}`, '--rules-dir', rules, '--no-admin']);
    const d = await Dialog.connect(port, { localAddress: '127.0.0.9' });
    await d.reply();
    await d.cmd('EHLO s.test');
    await d.cmd('MAIL FROM:<a@elsewhere.test>');
    expect((await d.cmd('RCPT TO:<u@example.net>')).code).toBe(550);
    writeFileSync(path.join(rules, 'accepted-domains.yaml'), '- example.com\n- example.net\n');
    const before = (output().match(/rules reloaded/g) ?? []).length;
    proc.kill('SIGHUP');
    await withTimeout(
      new Promise<void>((resolve) => {
        const check = () => ((output().match(/rules reloaded/g) ?? []).length > before ? resolve() : setTimeout(check, 20));
        check();
      }),
      10_000,
      'reload',
    );
    // Same session, still open, sees the new rule.
    expect((await d.cmd('RCPT TO:<u@example.net>')).code).toBe(250);
    await d.cmd('RSET');
    proc.kill('SIGTERM');
    const bye = await d.reply(10_000);
    expect(bye.code).toBe(421);
    expect(bye.text).toContain('4.3.2');
    expect(await withTimeout(exitOf(proc), 15_000, 'exit')).toBe(0);
  }, 90_000);
});
