/**
 * Issue 6 acceptance, end to end through a real guard in front of a real open-relay backend:
 * a relay attempt is refused; the relay network is added through the admin API (with
 * `relay-guard ctl` over HTTP); the same attempt on a new connection passes, while a session
 * opened before the change is still alive; the file in rules/ holds the network and survives a
 * restart; rollback restores the refusal.
 */
import { readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { Registry } from 'prom-client';
import { parse as parseYaml } from 'yaml';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { runCtl } from '../../src/cli/ctl.js';
import { createGuard, type Guard } from '../../src/guard.js';
import { Dialog } from '../helpers/dialog.js';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';

const STRANGER = '127.0.0.9';
const TOKEN = 'admin-e2e-token-0123456789abcdef';

let backend: RecordingBackend;
let first: StartedGuard;
let second: Guard | undefined;

beforeAll(async () => {
  backend = await startRecordingBackend();
  first = await startGuard({
    backendPort: backend.port,
    rules: { acceptedDomains: ['example.com'] },
    config: { admin: { enabled: true, address: '127.0.0.1', port: 0, metricsAuth: false }, timeouts: { drain: '1s' } },
    env: { RELAY_GUARD_ADMIN_TOKEN: TOKEN },
  });
});

afterAll(async () => {
  await second?.close();
  await first.guard.close().catch(() => undefined);
  rmSync(first.rulesDir, { recursive: true, force: true });
  await backend.close();
});

async function ctl(guard: Guard, args: string[]): Promise<{ code: number; out: string; err: string }> {
  const a = guard.adminAddress();
  if (!a) throw new Error('admin listener not bound');
  let out = '';
  let err = '';
  const code = await runCtl(['--admin', `${a.host}:${a.port}`, ...args], { stdout: (s) => (out += s), stderr: (s) => (err += s), env: { RELAY_GUARD_ADMIN_TOKEN: TOKEN } });
  return { code, out, err };
}

async function greeted(port: number): Promise<Dialog> {
  const d = await Dialog.connect(port, { localAddress: STRANGER });
  expect((await d.reply()).code).toBe(220);
  expect((await d.cmd('EHLO client.test')).code).toBe(250);
  return d;
}

/** One relay attempt on a new connection: the RCPT reply code. */
async function relayAttempt(port: number): Promise<number> {
  const d = await greeted(port);
  expect((await d.cmd('MAIL FROM:<a@outside.test>')).code).toBe(250);
  const code = (await d.cmd('RCPT TO:<victim@elsewhere.test>')).code;
  await d.cmd('QUIT');
  await d.waitClosed();
  return code;
}

test('relay refused → network added via the API → allowed, old session kept, persisted across restart → rollback refuses again', async () => {
  const v0 = first.guard.rules.current().version;
  const before = await greeted(first.port);

  expect(await relayAttempt(first.port)).toBe(550);
  const rcptLinesBefore = backend.lines().filter((l) => l.startsWith('RCPT')).length;

  const add = await ctl(first.guard, ['relay-networks', 'add', `${STRANGER}/32`]);
  expect(add).toMatchObject({ code: 0, err: '' });

  expect(await relayAttempt(first.port)).toBe(250);
  expect(backend.lines().filter((l) => l.startsWith('RCPT'))).toHaveLength(rcptLinesBefore + 1);

  // The session opened before the change was not dropped.
  expect(before.closed).toBe(false);
  expect((await before.cmd('NOOP')).code).toBe(250);
  await before.cmd('QUIT');
  await before.waitClosed();

  // Persisted, and survives a restart.
  const file = path.join(first.rulesDir, 'relay-networks.yaml');
  expect(parseYaml(readFileSync(file, 'utf8'))).toEqual([`${STRANGER}/32`]);
  const config = first.guard.services.config;
  await first.guard.close();
  const log = pino({ level: 'silent' }, new Writable({ write: (_c, _e, cb) => cb() }));
  second = await createGuard(config, { log, registry: new Registry(), env: { RELAY_GUARD_ADMIN_TOKEN: TOKEN } });
  await second.start();
  expect(second.rules.current().raw.relayNetworks).toEqual([`${STRANGER}/32`]);
  expect(await relayAttempt(second.address().port)).toBe(250);

  // Rollback to the first version restores the refusal, in memory and on disk.
  const rb = await ctl(second, ['rules', 'rollback', v0]);
  expect(rb).toMatchObject({ code: 0, err: '' });
  expect(await relayAttempt(second.address().port)).toBe(550);
  expect(parseYaml(readFileSync(file, 'utf8'))).toEqual([]);
  const audit = await ctl(second, ['--json', 'audit', '--limit', '2']);
  expect((JSON.parse(audit.out) as { entries: { operation: string; actor: string }[] }).entries.map((e) => [e.operation, e.actor])).toEqual([
    ['rollback', 'env'],
    ['add', 'env'],
  ]);
});
