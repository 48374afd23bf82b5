/**
 * Read relay-guard.yaml, merge it over the defaults, validate it strictly, and resolve durations
 * and sizes. Errors name the file, the key and (when known) the line: ConfigError.
 */
import { readFileSync } from 'node:fs';
import { LineCounter, parseDocument, isMap, isSeq, type Node } from 'yaml';
import { Value } from '@sinclair/typebox/value';
import { ConfigSchema, DEFAULT_CONFIG, parseSize, type Config, type ListenerConfig } from './schema.js';
import { parseDuration } from '../util/duration.js';
import { compileLists, createResolver } from '../dnsbl/dnsbl-scorer.js';
import { parseServiceAddress, serviceName } from '../policy-service/schema.js';

export class ConfigError extends Error {
  readonly code = 'RG_ERR_CONFIG_INVALID';
  constructor(
    readonly file: string,
    readonly key: string,
    readonly detail: string,
    readonly line?: number,
  ) {
    super(`${file}${line !== undefined ? `:${line}` : ''}: ${key ? `key "${key}": ` : ''}${detail}`);
    this.name = 'ConfigError';
  }
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** Objects merge key by key; arrays and scalars replace. */
export function mergeConfig<T>(base: T, over: unknown): T {
  if (over === undefined) return base;
  if (isPlainObject(base) && isPlainObject(over)) {
    const out: Record<string, unknown> = { ...base };
    for (const [k, v] of Object.entries(over)) out[k] = k in out ? mergeConfig(out[k], v) : v;
    return out as T;
  }
  return over as T;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Validate a merged configuration object; `lineOf` maps a JSON-pointer path to a line number. */
export function validateConfig(candidate: unknown, file: string, lineOf: (path: string[]) => number | undefined = () => undefined): Config {
  // Fill listener defaults (name/kind/...) per item: TypeBox defaults are applied by Value.Default.
  const withDefaults = Value.Default(ConfigSchema, structuredClone(candidate));
  const first = Value.Errors(ConfigSchema, withDefaults).First();
  if (first) {
    const path = first.path.split('/').filter(Boolean);
    const key = path.join('.');
    const unknown = /Unexpected property/i.test(first.message);
    throw new ConfigError(file, key, unknown ? 'unknown key' : first.message.toLowerCase(), lineOf(path));
  }
  const config = withDefaults as Config;
  checkSemantics(config, file, lineOf);
  return config;
}

function checkSemantics(c: Config, file: string, lineOf: (path: string[]) => number | undefined): void {
  const durations: Array<[string[], string]> = [];
  for (const [k, v] of Object.entries(c.backend)) if (k.endsWith('Timeout') && typeof v === 'string') durations.push([['backend', k], v]);
  for (const [k, v] of Object.entries(c.timeouts)) durations.push([['timeouts', k], v]);
  durations.push([['smtp', 'errorDelay'], c.smtp.errorDelay], [['smtp', 'greetingDelay'], c.smtp.greetingDelay], [['authCanary', 'interval'], c.authCanary.interval]);
  for (const [path, v] of durations) {
    try {
      parseDuration(v);
    } catch (err) {
      throw new ConfigError(file, path.join('.'), (err as Error).message, lineOf(path));
    }
  }
  const names = new Set<string>();
  c.listeners.forEach((l: ListenerConfig, i: number) => {
    if (names.has(l.name)) throw new ConfigError(file, `listeners.${i}.name`, `duplicate listener name "${l.name}"`, lineOf(['listeners', String(i), 'name']));
    names.add(l.name);
  });
  if (c.smtp.hardErrorLimit < c.smtp.softErrorLimit) {
    throw new ConfigError(file, 'smtp.hardErrorLimit', 'must not be below smtp.softErrorLimit', lineOf(['smtp', 'hardErrorLimit']));
  }
  if (c.backend.pool.enabled && c.backend.proxyProtocol !== 'off') {
    // A PROXY header names one client for the whole connection; a pooled backend session carries many.
    throw new ConfigError(file, 'backend.proxyProtocol', 'cannot be used with backend.pool (a pooled backend session serves many clients): use backend.xclient or backend.xforward', lineOf(['backend', 'proxyProtocol']));
  }
  checkDnsAndPolicy(c, file, lineOf);
  if (c.authCanary.enabled && parseDuration(c.authCanary.interval) < 10_000) {
    throw new ConfigError(file, 'authCanary.interval', 'must be at least 10s (each run is a backend connection and a failed login in its log)', lineOf(['authCanary', 'interval']));
  }
  if (c.limits.store === 'redis' && !c.limits.redisUrl) {
    throw new ConfigError(file, 'limits.redisUrl', 'required when limits.store is redis', lineOf(['limits', 'store']));
  }
}

/** DNS lists and policy services: durations, filters, listener names, addresses, distinct names. */
function checkDnsAndPolicy(c: Config, file: string, lineOf: (path: string[]) => number | undefined): void {
  const fail = (path: string[], detail: string): never => {
    throw new ConfigError(file, path.join('.'), detail, lineOf(path));
  };
  const duration = (path: string[], v: string | undefined) => {
    if (v === undefined) return;
    try {
      parseDuration(v);
    } catch (err) {
      fail(path, (err as Error).message);
    }
  };
  duration(['dns', 'timeout'], c.dns.timeout);
  try {
    createResolver(c.dns);
  } catch (err) {
    fail(['dns', 'servers'], (err as Error).message.replace(/^dns\.servers: /, ''));
  }
  if (c.dnsbl) {
    duration(['dnsbl', 'minTtl'], c.dnsbl.minTtl);
    duration(['dnsbl', 'maxTtl'], c.dnsbl.maxTtl);
    try {
      compileLists(c.dnsbl);
    } catch (err) {
      const m = /^(dnsbl\.lists\.[0-9]+\.match): (.*)$/.exec((err as Error).message);
      fail(m ? m[1]!.split('.') : ['dnsbl', 'lists'], m ? m[2]! : (err as Error).message);
    }
    c.dnsbl.listeners?.forEach((name, i) => {
      if (!c.listeners.some((l) => l.name === name)) fail(['dnsbl', 'listeners', String(i)], `no listener named "${name}"`);
    });
  }
  const names = new Set<string>();
  c.policyServices.forEach((s, i) => {
    if (!parseServiceAddress(s.address)) fail(['policyServices', String(i), 'address'], 'want HOST:PORT with a port 1..65535');
    duration(['policyServices', String(i), 'timeout'], s.timeout);
    const name = serviceName(s);
    if (names.has(name)) fail(['policyServices', String(i)], `a second service named "${name}": give each a distinct name`);
    names.add(name);
  });
}

/** Parse YAML text (the file's content) into a validated Config, merged over `base`. */
export function parseConfigText(text: string, file: string, base: Config = DEFAULT_CONFIG): Config {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    const e = doc.errors[0]!;
    const line = lineCounter.linePos(e.pos[0]).line;
    throw new ConfigError(file, '', `YAML syntax error: ${e.message.split('\n')[0]}`, line);
  }
  const data = (doc.toJS() ?? {}) as Json;
  if (!isPlainObject(data)) throw new ConfigError(file, '', 'the file must hold a mapping of keys');
  const lineOf = (path: string[]): number | undefined => {
    let node: unknown = doc.contents;
    let best: number | undefined;
    for (const seg of path) {
      if (isMap(node)) {
        const pair = node.items.find((p) => String((p.key as { value?: unknown })?.value ?? p.key) === seg);
        if (!pair) break;
        const keyNode = pair.key as Node | undefined;
        if (keyNode?.range) best = lineCounter.linePos(keyNode.range[0]).line;
        node = pair.value;
      } else if (isSeq(node)) {
        const item = node.items[Number(seg)] as Node | undefined;
        if (!item) break;
        if (item.range) best = lineCounter.linePos(item.range[0]).line;
        node = item;
      } else break;
    }
    return best;
  };
  return validateConfig(mergeConfig(base, data), file, lineOf);
}

export function loadConfigFile(file: string, base: Config = DEFAULT_CONFIG): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(file, '', `cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  return parseConfigText(text, file, base);
}

/** Durations and sizes resolved to numbers, for the running guard. */
export interface ResolvedTimeouts {
  backendConnectMs: number;
  backendGreetingMs: number;
  backendReplyMs: number;
  backendDataReplyMs: number;
  commandMs: number;
  dataMs: number;
  sessionMs: number;
  drainMs: number;
  errorDelayMs: number;
  greetingDelayMs: number;
  /** Pooled mode: silence allowed to a client holding a backend session while others wait for one. */
  poolStressMs: number;
}

export function resolveTimeouts(c: Config): ResolvedTimeouts {
  return {
    backendConnectMs: parseDuration(c.backend.connectTimeout),
    backendGreetingMs: parseDuration(c.backend.greetingTimeout),
    backendReplyMs: parseDuration(c.backend.replyTimeout),
    backendDataReplyMs: parseDuration(c.backend.dataReplyTimeout),
    commandMs: parseDuration(c.timeouts.command),
    dataMs: parseDuration(c.timeouts.data),
    sessionMs: parseDuration(c.timeouts.session),
    drainMs: parseDuration(c.timeouts.drain),
    errorDelayMs: parseDuration(c.smtp.errorDelay),
    greetingDelayMs: parseDuration(c.smtp.greetingDelay),
    poolStressMs: parseDuration(c.backend.pool.stressTimeout),
  };
}

export function maxMessageBytes(c: Pick<Config, 'smtp'>): number {
  return parseSize(c.smtp.maxMessageBytes);
}
