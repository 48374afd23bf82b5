/** relay-guard.yaml: strict validation that names file, key and line; flags compose with the file. */
import { describe, expect, test } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { ConfigError, loadConfigFile, parseConfigText, resolveTimeouts } from '../../src/config/load-config.js';
import { demoBanner, parseHostPort, planFromArgs } from '../../src/cli/args.js';

const dir = mkdtempSync(path.join(tmpdir(), 'rg-config-'));
function file(name: string, text: string): string {
  const p = path.join(dir, name);
  writeFileSync(p, text);
  return p;
}

describe('config file', () => {
  test('the shipped example is valid', () => {
    const c = loadConfigFile('relay-guard.example.yaml');
    expect(c.listeners[0]).toMatchObject({ name: 'mx', port: 25, kind: 'mx' });
    expect(resolveTimeouts(c).commandMs).toBe(300_000);
  });

  test('an empty file means all defaults', () => {
    const c = parseConfigText('', 'empty.yaml');
    expect(c.smtp.maxLineBytes).toBe(512);
    expect(c.backend.maxConnections).toBe(20);
  });

  const BAD: Array<[string, string, string, number | undefined]> = [
    // [name, yaml, key named in the error, line]
    ['unknown top-level key', 'listners: []\n', 'listners', 1],
    ['unknown nested key', 'smtp:\n  maxLineByte: 600\n', 'smtp.maxLineByte', 2],
    ['wrong type', 'smtp:\n  maxRecipients: lots\n', 'smtp.maxRecipients', 2],
    ['below minimum', 'smtp:\n  maxLineBytes: 100\n', 'smtp.maxLineBytes', 2],
    ['bad enum', 'smtp:\n  smuggling: ignore\n', 'smtp.smuggling', 2],
    ['bad duration', 'timeouts:\n  command: 5 minutes\n', 'timeouts.command', 2],
    ['bad listener kind', 'listeners:\n  - name: a\n    port: 25\n    kind: pop3\n', 'listeners.0.kind', 4],
    ['duplicate listener names', 'listeners:\n  - name: a\n    port: 25\n  - name: a\n    port: 26\n', 'listeners.1.name', 4],
    ['redis without url', 'limits:\n  store: redis\n', 'limits.redisUrl', 2],
    ['outbound PROXY with a pool', 'backend:\n  proxyProtocol: v2\n  pool:\n    enabled: true\n    minIdle: 1\n    max: 5\n    acquireTimeout: 5s\n    healthInterval: 30s\n', 'backend.proxyProtocol', 2],
    ['bad port', 'backends:\n  - host: x\n    port: 70000\n', 'backends.0.port', 3],
  ];
  test.each(BAD)('%s → ConfigError naming the key and line', (_name, yaml, key, line) => {
    let err: unknown;
    try {
      parseConfigText(yaml, 'bad.yaml');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const ce = err as ConfigError;
    expect(ce.key).toBe(key);
    expect(ce.file).toBe('bad.yaml');
    expect(ce.message).toContain(`bad.yaml`);
    expect(ce.message).toContain(key);
    if (line !== undefined) expect(ce.line).toBe(line);
  });

  test('YAML syntax errors name the line', () => {
    expect(() => parseConfigText('smtp:\n  maxLineBytes: [1,\n', 'broken.yaml')).toThrow(/broken\.yaml:\d+: YAML syntax error/);
  });

  test('a missing file is a ConfigError', () => {
    expect(() => loadConfigFile(path.join(dir, 'nope.yaml'))).toThrow(ConfigError);
  });
});

describe('command line', () => {
  test('flags compose with the file and override it', () => {
    const f = file('base.yaml', 'backends:\n  - host: exchange.internal\n    port: 25\nsmtp:\n  maxRecipients: 50\n');
    const plan = planFromArgs({ config: f, listen: '0.0.0.0:25', backend: ['[2001:db8::25]:2525'], 'accepted-domain': ['example.com', 'example.org'], 'relay-network': ['10.0.0.0/8'], admin: '127.0.0.1:9000' }, 'rules');
    expect(plan.demo).toBe(false);
    expect(plan.config.listeners[0]).toMatchObject({ address: '0.0.0.0', port: 25 });
    expect(plan.config.backends).toEqual([{ host: '2001:db8::25', port: 2525 }]);
    expect(plan.config.smtp.maxRecipients).toBe(50);
    expect(plan.config.admin).toMatchObject({ address: '127.0.0.1', port: 9000 });
    expect(plan.extra).toEqual({ acceptedDomains: ['example.com', 'example.org'], relayNetworks: ['10.0.0.0/8'] });
  });

  test('no config and no backend: the embedded demo default', () => {
    const plan = planFromArgs({}, 'rules');
    expect(plan.demo).toBe(true);
    expect(plan.config.listeners[0]).toMatchObject({ address: '127.0.0.1', port: 2525 });
    expect(plan.extra.acceptedDomains).toEqual(['example.com']);
  });

  test('the demo banner names the metrics URL only when the admin listener is on (not with --no-admin)', () => {
    const smtp = { host: '127.0.0.1', port: 2525 };
    const on = planFromArgs({}, 'rules');
    expect(demoBanner(smtp, on.config.admin)).toContain(`Metrics: curl http://127.0.0.1:${on.config.admin.port}/metrics\n`);
    const off = planFromArgs({ 'no-admin': true }, 'rules');
    expect(off.demo).toBe(true);
    const banner = demoBanner(smtp, off.config.admin);
    expect(banner).not.toMatch(/metrics/i);
    expect(banner).toContain('swaks --server 127.0.0.1:2525 --from a@outside.test --to victim@elsewhere.test');
  });

  test('--pool N turns pooled mode on with at most N backend sessions; junk is a ConfigError naming --pool', () => {
    const plan = planFromArgs({ backend: ['127.0.0.1:25'], pool: '1' }, 'rules');
    expect(plan.config.backend.pool).toMatchObject({ enabled: true, max: 1, minIdle: 1 });
    expect(planFromArgs({ backend: ['127.0.0.1:25'], pool: '8' }, 'rules').config.backend.pool).toMatchObject({ enabled: true, max: 8, minIdle: 2 });
    expect(planFromArgs({ backend: ['127.0.0.1:25'] }, 'rules').config.backend.pool.enabled).toBe(false);
    for (const bad of ['0', '-1', 'ten', '', '1.5', '99999']) expect(() => planFromArgs({ backend: ['127.0.0.1:25'], pool: bad }, 'rules')).toThrow(/--pool/);
  });

  test.each(['nohost', 'host:', 'host:99999', ':25'])('bad HOST:PORT %s', (s) => {
    expect(() => parseHostPort(s, '--listen')).toThrow(ConfigError);
  });

  test('relay-guard --check-config exits 2 on a bad file and names the key; 0 on a good one', () => {
    const bad = file('bad.yaml', 'smtp:\n  maxLineByte: 600\n');
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', '--check-config', bad], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('smtp.maxLineByte');
    expect(r.stderr).toContain('bad.yaml:2');
    const good = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', '--check-config', 'relay-guard.example.yaml'], { encoding: 'utf8', timeout: 60_000 });
    expect(good.status).toBe(0);
  }, 90_000); // two processes started through tsx: slow on a loaded 2-core machine

  test('relay-guard --config with a bad file exits 2', () => {
    const bad = file('bad2.yaml', 'backends: nope\n');
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', '--config', bad], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('backends');
  }, 60_000);
});
