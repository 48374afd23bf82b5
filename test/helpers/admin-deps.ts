/**
 * Real dependencies of the admin server on a temporary rules directory: RulesStore, BanList with a
 * file, RecipientValidator in list mode for one domain, a SessionRegistry with fake sessions, a
 * fresh prom-client Registry, and a pino logger writing JSON lines into an array.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { Registry } from 'prom-client';
import { ManualClock } from '../../src/clock.js';
import { DEFAULT_CONFIG, type Config } from '../../src/config/schema.js';
import { RecipientValidator } from '../../src/directory/recipient-validator.js';
import { BanList } from '../../src/limits/bans.js';
import { createMetrics } from '../../src/observability/metrics.js';
import { RulesStore } from '../../src/rules/rules-store.js';
import { SessionRegistry, type RegisteredSession, type SessionInfo } from '../../src/session/session-registry.js';
import type { AdminDeps } from '../../src/admin/admin-server.js';

export const RW_TOKEN = 'rw-token-0123456789abcdef';
export const RO_TOKEN = 'ro-token-0123456789abcdef';
export const ENV_TOKEN = 'env-token-0123456789abcdef';

/** Rule files written before the store opens (file name → YAML text). */
export const BASE_RULE_FILES: Record<string, string> = {
  'accepted-domains.yaml': '- example.com\n- validated.example\n',
  'relay-networks.yaml': '- 192.0.2.0/24\n',
  'never-relay-networks.yaml': '- 192.0.2.66\n',
  'recipient-validation.yaml': 'default: off\ndomains:\n  validated.example: list\n',
  'recipients.txt': 'alice@validated.example\n',
};

export interface FakeSession extends RegisteredSession {
  terminated: string[];
}

export function fakeSession(id: string, over: Partial<SessionInfo> = {}): FakeSession {
  const terminated: string[] = [];
  let resolveEnded = (): void => undefined;
  const ended = new Promise<void>((r) => (resolveEnded = r));
  return {
    id,
    terminated,
    ended,
    info: () => ({
      id, listener: 'mx', clientIp: '203.0.113.9', clientPort: 40000, helo: 'client.test', mailFrom: undefined, authUser: undefined,
      tls: false, state: 'idle', bytesIn: 10, bytesOut: 20, messages: 0, startedAt: new Date(0).toISOString(), ageSeconds: 1, ...over,
    }),
    terminate(reason: string) {
      terminated.push(reason);
      resolveEnded();
    },
    drain() {
      resolveEnded();
    },
  };
}

export interface AdminTestEnv {
  deps: AdminDeps;
  dir: string;
  store: RulesStore;
  bans: BanList;
  sessions: SessionRegistry;
  validator: RecipientValidator;
  registry: Registry;
  clock: ManualClock;
  /** Parsed pino lines. */
  logs: Record<string, unknown>[];
  backendUp: { value: boolean };
  cleanup(): Promise<void>;
}

export interface AdminTestOptions {
  /** Token file entries (written to a temp file); default: one rw and one ro token. `null`: no token file. */
  tokenFile?: { id: string; token: string; scope: 'ro' | 'rw' }[] | null;
  env?: NodeJS.ProcessEnv;
  admin?: Partial<Config['admin']>;
  ruleFiles?: Record<string, string>;
}

export async function makeAdminDeps(opts: AdminTestOptions = {}): Promise<AdminTestEnv> {
  const dir = await mkdtemp(join(tmpdir(), 'rg-admin-'));
  for (const [name, text] of Object.entries({ ...BASE_RULE_FILES, ...(opts.ruleFiles ?? {}) })) await writeFile(join(dir, name), text);
  const logs: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) if (line.trim() !== '') logs.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  const log = pino({ level: 'debug' }, sink);
  const registry = new Registry();
  const metrics = createMetrics(registry, { defaultMetrics: false });
  const store = await RulesStore.open(dir, { log, metrics });
  const clock = new ManualClock();
  const bans = new BanList({ file: join(dir, 'bans.yaml'), clock, metrics });
  const sessions = new SessionRegistry();
  const validator = new RecipientValidator({ rulesDir: dir, rules: () => store.current().raw.recipientValidation, metrics, log });
  await validator.start();

  const tokenEntries = opts.tokenFile === undefined
    ? [{ id: 'ops', token: RW_TOKEN, scope: 'rw' as const }, { id: 'viewer', token: RO_TOKEN, scope: 'ro' as const }]
    : opts.tokenFile;
  let tokenFile: string | undefined;
  if (tokenEntries !== null) {
    tokenFile = join(dir, 'tokens.yaml');
    await writeFile(tokenFile, tokenEntries.map((t) => `- id: ${t.id}\n  token: ${t.token}\n  scope: ${t.scope}\n`).join(''));
  }
  const config: Config = {
    ...DEFAULT_CONFIG,
    listeners: [
      { ...DEFAULT_CONFIG.listeners[0]!, name: 'mx' },
      { ...DEFAULT_CONFIG.listeners[0]!, name: 'internal', relay: 'allow' },
      { ...DEFAULT_CONFIG.listeners[0]!, name: 'submission', kind: 'submission' },
    ],
    rulesDir: dir,
    admin: { ...DEFAULT_CONFIG.admin, ...(tokenFile ? { tokenFile } : {}), ...(opts.admin ?? {}) },
  };
  const backendUp = { value: true };
  const deps: AdminDeps = {
    config, rules: store, bans, sessions, metrics, validator, log, env: opts.env ?? {},
    checkBackend: async () => backendUp.value,
  };
  return {
    deps, dir, store, bans, sessions, validator, registry, clock, logs, backendUp,
    async cleanup() {
      store.close();
      await validator.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export function bearer(token: string): { authorization: string } {
  return { authorization: `Bearer ${token}` };
}
