/**
 * The relay-guard process itself: flags, the embedded demo default, SIGTERM (graceful: idle
 * sessions get 421 4.3.2, exit 0) and SIGHUP (rules reloaded without dropping a session); and
 * `--pool N` (pooled mode: the guard greets and answers EHLO itself and lends one of at most N
 * warm backend sessions per transaction), with the pool shown in /metrics on `--admin`.
 */
import { afterEach, describe, expect, test } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, cpSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { Dialog } from '../helpers/dialog.js';
import { until, withTimeout } from '../helpers/with-timeout.js';
import { freePort } from '../helpers/free-port.js';
import { since } from '../helpers/modes.js';
import { MALLOC_TUNABLES } from '../../src/cli/memory-tuning.js';

let child: ChildProcess | undefined;
let backend: RecordingBackend | undefined;

afterEach(async () => {
  if (child && child.exitCode === null) child.kill('SIGKILL');
  child = undefined;
  await backend?.close();
  backend = undefined;
});

/** Start the CLI and resolve once it logs that the mx listener is up. */
async function startCli(args: string[], env: NodeJS.ProcessEnv = process.env, nodeArgs: string[] = []): Promise<{ proc: ChildProcess; output: () => string }> {
  const proc = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', 'src/cli/main.ts', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
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
  test('SIGTERM while the guard is still starting (at its first output byte, before it listens): exit 0, not killed by the signal', async () => {
    const rules = mkdtempSync(path.join(tmpdir(), 'rg-cli-'));
    writeFileSync(path.join(rules, 'limits.yaml'), 'enabled: false\nprefixV4: 24\nprefixV6: 64\nlimits: []\n');
    const proc = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', '--listen', '127.0.0.1:0', '--backend', `127.0.0.1:${await freePort()}`, '--rules-dir', rules, '--no-admin', '--log-level', 'info'], { stdio: ['ignore', 'pipe', 'pipe'] });
    child = proc;
    let out = '';
    let atSignal: string | undefined;
    const onData = (c: Buffer) => {
      out += c.toString();
      if (atSignal === undefined) {
        atSignal = out;
        proc.kill('SIGTERM');
      }
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', onData);
    const [code, signal] = await withTimeout(new Promise<[number | null, NodeJS.Signals | null]>((resolve) => proc.once('exit', (c, s) => resolve([c, s]))), 60_000, 'exit');
    expect({ code, signal, out: code === 0 ? '' : out }).toEqual({ code: 0, signal: null, out: '' });
    // The signal came while starting: the first line is not the listener's, and the guard says so.
    expect(atSignal).not.toMatch(/"msg":"listening"/);
    expect(out).toMatch(/"msg":"stop asked for during startup"/);
    expect(out).toMatch(/"msg":"stopped"/);
  }, 90_000);

  test('flags alone: refuses relaying, accepts our domain, trusts --relay-network', async () => {
    backend = await startRecordingBackend();
    const port = await freePort();
    const rules = mkdtempSync(path.join(tmpdir(), 'rg-cli-'));
    writeFileSync(path.join(rules, 'limits.yaml'), 'enabled: false\nprefixV4: 24\nprefixV6: 64\nlimits: []\n');
    const { proc, output } = await startCli(['--listen', `127.0.0.1:${port}`, '--backend', `127.0.0.1:${backend.port}`, '--accepted-domain', 'example.org', '--relay-network', '127.0.0.2/32', '--rules-dir', rules, '--no-admin', '--log-level', 'info'], { ...process.env, GLIBC_TUNABLES: MALLOC_TUNABLES });
    // No heap flag on node's command line: the guard sets its own; the malloc
    // setting it reports is the one glibc read from this process's environment (README "Memory settings").
    expect(output()).toMatch(/"heapGrowingPercent":200,"mallocTrimThreshold":"67108864","msg":"memory settings"/);
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

  test("a heap growing percent on node's command line wins over the guard's own; no GLIBC_TUNABLES: the glibc default is reported", async () => {
    const rules = mkdtempSync(path.join(tmpdir(), 'rg-cli-'));
    writeFileSync(path.join(rules, 'limits.yaml'), 'enabled: false\nprefixV4: 24\nprefixV6: 64\nlimits: []\n');
    const env = { ...process.env };
    delete env.GLIBC_TUNABLES;
    delete env.MALLOC_TRIM_THRESHOLD_;
    const { proc, output } = await startCli(['--listen', `127.0.0.1:${await freePort()}`, '--backend', `127.0.0.1:${await freePort()}`, '--accepted-domain', 'example.org', '--rules-dir', rules, '--no-admin', '--log-level', 'info'], env, ['--heap-growing-percent=50']);
    expect(output()).toMatch(/"heapGrowingPercent":"chosen on the node command line","mallocTrimThreshold":"glibc default","msg":"memory settings"/);
    proc.kill('SIGTERM');
    expect(await withTimeout(exitOf(proc), 15_000, 'exit')).toBe(0);
  }, 90_000);

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

  test('--pool 3: warm backend sessions before any client; the guard greets and answers EHLO; a message is delivered over a lent session; /metrics shows the pool', async () => {
    backend = await startRecordingBackend();
    const port = await freePort();
    const adminPort = await freePort();
    const rules = mkdtempSync(path.join(tmpdir(), 'rg-cli-'));
    writeFileSync(path.join(rules, 'limits.yaml'), 'enabled: false\nprefixV4: 24\nprefixV6: 64\nlimits: []\n');
    const { proc, output } = await startCli([
      '--listen', `127.0.0.1:${port}`, '--backend', `127.0.0.1:${backend.port}`, '--accepted-domain', 'example.org',
      '--rules-dir', rules, '--admin', `127.0.0.1:${adminPort}`, '--pool', '3', '--log-level', 'info',
    ]);
    await until(() => /"msg":"admin api listening"/.test(output()), 10_000, 'admin listener');
    const metrics = async (): Promise<string> => {
      const res = await fetch(`http://127.0.0.1:${adminPort}/metrics`, { signal: AbortSignal.timeout(10_000) });
      expect(res.status).toBe(200);
      return res.text();
    };
    const sample = (text: string, series: string): number | undefined => {
      const line = text.split('\n').find((l) => l.startsWith(`${series} `));
      return line === undefined ? undefined : Number(line.slice(series.length + 1));
    };
    const idle = 'relay_guard_pool_sessions{backend="backend1",state="idle"}';
    const busy = 'relay_guard_pool_sessions{backend="backend1",state="busy"}';
    /** Scrape until the pool has settled: every open backend connection an idle pooled session (bounded). */
    const settledScrape = async (): Promise<string> => {
      const deadline = Date.now() + 10_000;
      for (;;) {
        const text = await metrics();
        if (sample(text, busy) === 0 && sample(text, idle) === backend!.openConnections() && backend!.openConnections() >= 2) return text;
        if (Date.now() > deadline) throw new Error(`pool never settled: ${text.split('\n').filter((l) => l.startsWith('relay_guard_pool_')).join('; ')}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };

    // The warm sessions (minIdle 2) are open and greeted with the guard's own EHLO before any client.
    let text = await settledScrape();
    const warm = backend.openConnections();
    expect(warm).toBeGreaterThanOrEqual(2);
    expect(warm).toBeLessThanOrEqual(3);
    expect(sample(text, 'relay_guard_backend_connections{backend="backend1"}')).toBe(warm);
    for (const c of backend.connections) expect(Buffer.concat(c).toString('latin1')).toMatch(/^EHLO \S+\r\n/);

    const seen = since(backend);
    const d = await Dialog.connect(port, { localAddress: '127.0.0.9' });
    expect((await d.reply()).code).toBe(220);
    expect((await d.cmd('EHLO s.test')).code).toBe(250);
    expect((await d.cmd('MAIL FROM:<a@elsewhere.test>')).code).toBe(250);
    expect((await d.cmd('RCPT TO:<v@elsewhere.test>')).code).toBe(550);
    expect((await d.cmd('RCPT TO:<u@example.org>')).code).toBe(250);
    // Mid-transaction the lent session counts as busy.
    expect(sample(await metrics(), busy)).toBe(1);
    expect((await d.cmd('DATA')).code).toBe(354);
    expect((await d.cmd('Subject: pooled\r\n\r\nthrough the pool\r\n.')).code).toBe(250);
    expect((await d.cmd('QUIT')).code).toBe(221);
    await d.waitClosed();
    await withTimeout(backend.waitForMessages(1), 5_000, 'message');
    expect(backend.messages.map((m) => ({ from: m.mailFrom, to: m.rcptTo, body: m.body.toString('latin1') }))).toEqual([
      { from: 'a@elsewhere.test', to: ['u@example.org'], body: 'Subject: pooled\r\n\r\nthrough the pool\r\n' },
    ]);
    // The client's greeting and EHLO were the guard's: the backend saw only the transaction, never
    // the refused recipient, on one of at most 3 connections.
    const lines = seen();
    expect(lines.filter((l) => l === 'EHLO s.test' || /^(HELO|QUIT)\b/.test(l))).toEqual([]);
    expect(lines.filter((l) => /^(MAIL|RCPT)/.test(l))).toEqual(['MAIL FROM:<a@elsewhere.test>', 'RCPT TO:<u@example.org>']);
    expect(backend.maxConcurrent()).toBeLessThanOrEqual(3);

    text = await settledScrape();
    expect(sample(text, 'relay_guard_messages_total{outcome="delivered"}')).toBe(1);
    expect(sample(text, 'relay_guard_backend_connections{backend="backend1"}')).toBe(backend.openConnections());
    expect(sample(text, 'relay_guard_pool_waits_total{result="got"}') ?? 0).toBe(0);
    expect(sample(text, 'relay_guard_pool_waits_total{result="timeout"}') ?? 0).toBe(0);
    expect(text).toMatch(/^# TYPE relay_guard_pool_replacements_total counter$/m);
    expect(sample(text, 'relay_guard_sessions_active{listener="mx"}')).toBe(0);

    proc.kill('SIGTERM');
    expect(await withTimeout(exitOf(proc), 15_000, 'exit')).toBe(0);
    // The pooled sessions are closed on the way out.
    await until(() => backend!.openConnections() === 0, 5_000, 'pooled sessions closed');
  }, 90_000);
});
