/**
 * Start a real guard on 127.0.0.1:0 in front of a backend, with a temporary rules directory and
 * a captured JSON log. Short timeouts and zero delays come from the test's config overrides.
 */
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { Registry } from 'prom-client';
import pino from 'pino';
import { stringify } from 'yaml';
import { DEFAULT_CONFIG, type Config } from '../../src/config/schema.js';
import { mergeConfig, validateConfig } from '../../src/config/load-config.js';
import { createGuard, type Guard } from '../../src/guard.js';

export interface TestRules {
  acceptedDomains?: string[];
  relayNetworks?: string[];
  neverRelayNetworks?: string[];
  senders?: unknown[];
  policy?: unknown;
  limits?: unknown;
  recipientValidation?: unknown;
  recipients?: string;
}

export interface StartedGuard {
  guard: Guard;
  port: number;
  rulesDir: string;
  logs: Array<Record<string, unknown>>;
  /** Raw log text (for "the password never appears" greps). */
  logText(): string;
  stop(): Promise<void>;
}

const FILES: Record<string, string> = {
  acceptedDomains: 'accepted-domains.yaml',
  relayNetworks: 'relay-networks.yaml',
  neverRelayNetworks: 'never-relay-networks.yaml',
  senders: 'senders.yaml',
  policy: 'policy.yaml',
  limits: 'limits.yaml',
  recipientValidation: 'recipient-validation.yaml',
};

/** Limits off unless a test asks: most tests send many relay attempts from one address. */
export const NO_LIMITS = { enabled: false, prefixV4: 24, prefixV6: 64, limits: [] };

export function writeRules(dir: string, rules: TestRules): void {
  for (const [key, file] of Object.entries(FILES)) {
    const v = (rules as Record<string, unknown>)[key];
    if (v !== undefined) writeFileSync(path.join(dir, file), stringify(v));
  }
  if (rules.recipients !== undefined) writeFileSync(path.join(dir, 'recipients.txt'), rules.recipients);
}

export async function startGuard(opts: {
  backendPort: number;
  rules?: TestRules;
  config?: Record<string, unknown>;
  env?: NodeJS.ProcessEnv;
}): Promise<StartedGuard> {
  const rulesDir = mkdtempSync(path.join(tmpdir(), 'rg-rules-'));
  writeRules(rulesDir, { acceptedDomains: ['example.com'], limits: NO_LIMITS, ...opts.rules });
  const base: Config = mergeConfig(structuredClone(DEFAULT_CONFIG), {
    listeners: [{ name: 'mx', address: '127.0.0.1', port: 0 }],
    backends: [{ host: '127.0.0.1', port: opts.backendPort }],
    rulesDir,
    log: { level: 'debug' },
    admin: { enabled: false, address: '127.0.0.1', port: 0, metricsAuth: false },
    smtp: { errorDelay: '0s' },
    // The auth canary (issue 16) opens a backend session of its own at start: off unless a test asks,
    // so suites that count backend connections or AUTH attempts see only their clients'.
    authCanary: { enabled: false, interval: '15m' },
  });
  const config = validateConfig(mergeConfig(base, opts.config ?? {}), 'test');
  let text = '';
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      const s = chunk.toString();
      text += s;
      for (const line of s.split('\n')) if (line.trim()) logs.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  const log = pino({ level: 'debug' }, sink);
  const guard = await createGuard(config, { log, registry: new Registry(), env: opts.env ?? {} });
  await guard.start();
  return {
    guard,
    port: guard.address().port,
    rulesDir,
    logs,
    logText: () => text,
    stop: async () => {
      await guard.close();
      rmSync(rulesDir, { recursive: true, force: true });
    },
  };
}
