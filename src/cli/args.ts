/** Command-line arguments of relay-guard: usage text, parsing, and the plan (config + overlay) they make. */
import { existsSync } from 'node:fs';
import { DEFAULT_CONFIG, type Config } from '../config/schema.js';
import { ConfigError, loadConfigFile, validateConfig } from '../config/load-config.js';
import { VERSION } from '../version.js';

export const USAGE = `relay-guard ${VERSION} — an inline SMTP proxy that closes an open relay

Usage:
  relay-guard [options]                 run the guard
  relay-guard --check-config FILE       validate a configuration file and exit (0 ok, 2 invalid)
  relay-guard --demo-backend HOST:PORT  run only the embedded demo backend (an open relay sink)
  relay-guard ctl COMMAND …             incident commands over the admin API (relay-guard ctl --help)

Options (flags override the configuration file):
  --config FILE            configuration file (relay-guard.yaml); see relay-guard.example.yaml
  --listen HOST:PORT       address of the first (mx) listener            [127.0.0.1:2525]
  --backend HOST:PORT      backend mail server; repeat for fallbacks, tried in order
  --accepted-domain D      a domain the backend serves (repeatable); added to rules/accepted-domains.yaml's list
  --relay-network CIDR     a trusted network that may relay (repeatable); added to rules/relay-networks.yaml's list
  --recipients-file FILE   validate recipients of every accepted domain against FILE
                           (one address per line, '#' comments, '@domain' = catch-all)
  --rules-dir DIR          directory of the rule files                   [rules]
  --rules-store URL        share the rules with a fleet of guards: redis://HOST:PORT[/DB]
                           (the rules directory then only seeds an empty store)
  --guard-name NAME        this guard's name in the fleet and the audit log [host name]
  --pool N                 pooled mode: at most N backend sessions, lent per transaction
                           (backend.pool; keep N below the backend's per-source limit)
  --admin HOST:PORT        admin API and /metrics listener               [127.0.0.1:8025]
  --no-admin               do not start the admin API
  --admin-host-name NAME   a name the admin listener answers to in Host (repeatable; localhost and
                           loopback addresses always, any IP address when a token is set)
  --log-level LEVEL        fatal|error|warn|info|debug|trace|silent      [info]
  --help, --version

With no --config and no --backend, the guard starts on 127.0.0.1:2525 in front of an embedded
demo backend (an accept-everything sink on 127.0.0.1:2526) with example.com as accepted domain.

Environment:
  RELAY_GUARD_ADMIN_TOKEN  read-write bearer token for the admin API (required for a non-loopback --admin)
`;

export function parseHostPort(s: string, what: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(s) ?? /^([^:]+):(\d{1,5})$/.exec(s);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) throw new ConfigError('command line', what, `expected HOST:PORT, got ${JSON.stringify(s)}`);
  return { host: m[1]!, port };
}

export interface CliPlan {
  config: Config;
  demo: boolean;
  extra: { acceptedDomains: string[]; relayNetworks: string[] };
}

/** Turn argv into a validated configuration (throws ConfigError). Pure apart from reading --config. */
export function planFromArgs(values: Record<string, unknown>, packageRulesDir: string): CliPlan {
  const file = values.config as string | undefined;
  let config: Config = file ? loadConfigFile(file) : structuredClone(DEFAULT_CONFIG);
  const over = structuredClone(config) as Config;
  if (values.listen) {
    const { host, port } = parseHostPort(values.listen as string, '--listen');
    over.listeners[0] = { ...over.listeners[0]!, address: host, port };
  }
  const backends = (values.backend as string[] | undefined) ?? [];
  if (backends.length > 0) over.backends = backends.map((b) => parseHostPort(b, '--backend'));
  if (values.admin) {
    const { host, port } = parseHostPort(values.admin as string, '--admin');
    over.admin = { ...over.admin, address: host, port };
  }
  if (values['no-admin']) over.admin = { ...over.admin, enabled: false };
  const adminHostNames = (values['admin-host-name'] as string[] | undefined) ?? [];
  if (adminHostNames.length > 0) over.admin = { ...over.admin, hostNames: [...(over.admin.hostNames ?? []), ...adminHostNames] };
  if (values.pool !== undefined) {
    const text = values.pool as string;
    const max = /^[0-9]{1,4}$/.test(text) ? Number(text) : NaN;
    if (!(max >= 1)) throw new ConfigError('command line', '--pool', `expected a number of backend sessions (1 or more), got ${JSON.stringify(text)}`);
    const pool = over.backend.pool;
    over.backend = { ...over.backend, pool: { ...pool, enabled: true, max, minIdle: Math.min(pool.minIdle, max) } };
  }
  if (values['rules-dir']) over.rulesDir = values['rules-dir'] as string;
  if (values['rules-store']) over.rulesStore = values['rules-store'] as string;
  if (values['guard-name']) over.guardName = values['guard-name'] as string;
  if (values['recipients-file']) over.recipientsFile = values['recipients-file'] as string;
  if (values['log-level']) over.log = { level: values['log-level'] as Config['log']['level'] };
  const demo = !file && backends.length === 0;
  if (!file && !values['rules-dir'] && !existsSync(over.rulesDir)) over.rulesDir = packageRulesDir;
  config = validateConfig(over, file ?? 'command line');
  const extra = {
    acceptedDomains: (values['accepted-domain'] as string[] | undefined) ?? [],
    relayNetworks: (values['relay-network'] as string[] | undefined) ?? [],
  };
  if (demo && extra.acceptedDomains.length === 0) extra.acceptedDomains.push('example.com');
  return { config, demo, extra };
}

export const OPTIONS = {
  config: { type: 'string' },
  'check-config': { type: 'string' },
  'demo-backend': { type: 'string' },
  listen: { type: 'string' },
  backend: { type: 'string', multiple: true },
  'accepted-domain': { type: 'string', multiple: true },
  'relay-network': { type: 'string', multiple: true },
  'recipients-file': { type: 'string' },
  'rules-dir': { type: 'string' },
  'rules-store': { type: 'string' },
  'guard-name': { type: 'string' },
  admin: { type: 'string' },
  'no-admin': { type: 'boolean' },
  'admin-host-name': { type: 'string', multiple: true },
  pool: { type: 'string' },
  'log-level': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean' },
} as const;


/**
 * What the demo prints once it is up (stderr): where to point swaks, and the metrics URL only when
 * the admin listener (which serves /metrics) is on — not with --no-admin.
 */
export function demoBanner(smtp: { host: string; port: number }, admin: { enabled: boolean; address: string; port: number }): string {
  const at = `${smtp.host}:${smtp.port}`;
  return (
    `\nrelay-guard is guarding the embedded demo backend (an open relay) on ${at}.\n` +
    `Try it:\n` +
    `  swaks --server ${at} --from a@outside.test --to user@example.com      # accepted: example.com is ours\n` +
    `  swaks --server ${at} --from a@outside.test --to victim@elsewhere.test  # 550 5.7.1 Relaying denied\n` +
    `  telnet ${smtp.host} ${smtp.port}\n` +
    (admin.enabled ? `Metrics: curl http://${admin.address}:${admin.port}/metrics\n` : '') +
    `\n`
  );
}
