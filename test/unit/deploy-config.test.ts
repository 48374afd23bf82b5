/**
 * The deployment files in deploy/ hold configurations the guard accepts: every relay-guard.yaml
 * passes the config schema, the Kubernetes rules directory loads and compiles, and the manifests
 * keep the properties the issue asks for (2 replicas, probes, non-root, read-only root fs).
 */
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { parse as parseYaml, parseAllDocuments } from 'yaml';
import { parseConfigText } from '../../src/config/load-config.js';
import { RulesStore } from '../../src/rules/rules-store.js';
import { REPO_ROOT } from '../helpers/prometheus.js';

const DEPLOY = join(REPO_ROOT, 'deploy');
const read = (p: string): string => readFileSync(join(DEPLOY, p), 'utf8');
const silent = { info() {}, warn() {}, error() {} };

describe('relay-guard.yaml files in deploy/', () => {
  const cases = [
    { file: 'compose/relay-guard.yaml', store: 'memory', adminAddress: '0.0.0.0', port: 2525 },
    { file: 'systemd/relay-guard.yaml', store: 'memory', adminAddress: '127.0.0.1', port: 25 },
    { file: 'kubernetes/relay-guard.yaml', store: 'redis', adminAddress: '0.0.0.0', port: 2525 },
    { file: 'compose/relay-guard.fleet.yaml', store: 'redis', adminAddress: '0.0.0.0', port: 2525 },
  ];
  test.each(cases)('$file passes the config schema', ({ file, store, adminAddress, port }) => {
    const c = parseConfigText(read(file), file);
    expect(c.limits.store).toBe(store);
    expect(c.admin).toMatchObject({ enabled: true, address: adminAddress, port: 8025 });
    expect(c.listeners[0]).toMatchObject({ name: 'mx', port });
  });

  test('compose: every name Prometheus scrapes is an admin host name (else 421 RG_ERR_ADMIN_HOST)', () => {
    const c = parseConfigText(read('compose/relay-guard.yaml'), 'compose/relay-guard.yaml');
    const prom = parseYaml(read('compose/prometheus.yml')) as { scrape_configs: Array<{ static_configs?: Array<{ targets: string[] }> }> };
    const hosts = prom.scrape_configs.flatMap((s) => (s.static_configs ?? []).flatMap((x) => x.targets)).filter((t) => t.endsWith(':8025')).map((t) => t.split(':')[0]);
    expect(hosts.length).toBeGreaterThan(0);
    for (const h of hosts) expect(c.admin.hostNames ?? []).toContain(h);
  });

  test('the schema check is real: an unknown key is refused', () => {
    expect(() => parseConfigText(`${read('systemd/relay-guard.yaml')}\nrulesDirectory: /x\n`, 'bad.yaml')).toThrow(/unknown key/);
  });
});

describe('kubernetes', () => {
  const k = parseYaml(read('kubernetes/kustomization.yaml')) as {
    resources: string[];
    configMapGenerator: Array<{ name: string; files: string[] }>;
  };
  const docs = k.resources.flatMap((r) => parseAllDocuments(read(`kubernetes/${r}`)).map((d) => d.toJS() as Record<string, any>));
  const guard = docs.find((d) => d.kind === 'Deployment' && d.metadata.name === 'relay-guard')!;

  test('every rule file is in the rules ConfigMap, and the rules load and compile', async () => {
    const rulesFiles = readdirSync(join(DEPLOY, 'kubernetes/rules')).sort();
    const generated = k.configMapGenerator.find((g) => g.name === 'relay-guard-rules')!.files.map((f) => f.replace(/^rules\//, '')).sort();
    expect(generated).toEqual(rulesFiles);
    const dir = mkdtempSync(join(tmpdir(), 'relay-guard-k8s-rules-'));
    try {
      cpSync(join(DEPLOY, 'kubernetes/rules'), dir, { recursive: true });
      const store = await RulesStore.open(dir, { log: silent });
      expect(store.current()).toBeDefined();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('the guard runs 2 replicas, non-root, read-only, with /healthz and /readyz probes', () => {
    expect(guard.spec.replicas).toBe(2);
    expect(guard.spec.template.spec.securityContext).toMatchObject({ runAsNonRoot: true });
    const c = guard.spec.template.spec.containers[0];
    expect(c.securityContext).toMatchObject({ readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } });
    expect(c.livenessProbe.httpGet.path).toBe('/healthz');
    expect(c.readinessProbe.httpGet.path).toBe('/readyz');
    // The Secret is created out of band (not applied by kustomize, see deploy-kubernetes.test.ts) and required.
    expect(c.envFrom).toEqual([{ secretRef: { name: 'relay-guard-admin' } }]);
  });

  test('Redis is deployed with a Service matching the configured redisUrl', () => {
    const cfg = parseConfigText(read('kubernetes/relay-guard.yaml'), 'k8s');
    const host = new URL(cfg.limits.redisUrl!).hostname;
    expect(docs.some((d) => d.kind === 'Service' && d.metadata.name === host)).toBe(true);
    expect(docs.some((d) => d.kind === 'Deployment' && d.metadata.name === host)).toBe(true);
  });
});

describe('systemd unit', () => {
  const unit = read('systemd/relay-guard.service');
  const directives = new Map<string, string[]>();
  for (const line of unit.split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (m) directives.set(m[1]!, [...(directives.get(m[1]!) ?? []), m[2]!]);
  }
  const cases = [
    ['AmbientCapabilities', 'CAP_NET_BIND_SERVICE'],
    ['CapabilityBoundingSet', 'CAP_NET_BIND_SERVICE'],
    ['NoNewPrivileges', 'yes'],
    ['ProtectSystem', 'strict'],
    ['ProtectHome', 'yes'],
    ['PrivateTmp', 'yes'],
    ['ReadWritePaths', '/etc/relay-guard/rules'],
    ['SystemCallFilter', '@system-service'],
    ['User', 'relay-guard'],
  ] as const;
  test.each(cases)('%s=%s', (key, value) => {
    expect(directives.get(key)).toContain(value);
  });
  test('restricts address families to IP and local sockets', () => {
    expect(directives.get('RestrictAddressFamilies')?.[0]?.split(' ').sort()).toEqual(['AF_INET', 'AF_INET6', 'AF_NETLINK', 'AF_UNIX']);
  });
});

// Issue 19: a fleet shares its rules through Redis, which therefore persists.
describe('fleet: rules in the shared store', () => {
  const k = parseYaml(read('kubernetes/kustomization.yaml')) as { resources: string[]; configMapGenerator: Array<{ name: string; options?: { disableNameSuffixHash?: boolean } }> };
  const docs = k.resources.flatMap((r) => parseAllDocuments(read(`kubernetes/${r}`)).map((d) => d.toJS() as Record<string, any>));
  const guard = docs.find((d) => d.kind === 'Deployment' && d.metadata.name === 'relay-guard')!;
  const redis = docs.find((d) => d.kind === 'Deployment' && d.metadata.name === 'relay-guard-redis')!;

  test('kubernetes: every replica uses the Redis Service as rules store; the ConfigMap rules are mounted read-only to seed it; the last-known-good copy is on a writable volume', () => {
    const cfg = parseConfigText(read('kubernetes/relay-guard.yaml'), 'k8s');
    expect(cfg.rulesStore).toBe(cfg.limits.redisUrl);
    const c = guard.spec.template.spec.containers[0];
    const mounts = c.volumeMounts as Array<{ name: string; mountPath: string; readOnly?: boolean }>;
    const rulesMount = mounts.find((m) => m.mountPath === cfg.rulesDir)!;
    expect(rulesMount).toMatchObject({ name: 'rules-source', readOnly: true });
    const volumes = guard.spec.template.spec.volumes as Array<{ name: string; configMap?: { name: string }; emptyDir?: unknown }>;
    expect(volumes.find((v) => v.name === 'rules-source')?.configMap?.name).toBe('relay-guard-rules');
    const cacheMount = mounts.find((m) => cfg.rulesStoreCache!.startsWith(`${m.mountPath}/`))!;
    expect(cacheMount.readOnly).not.toBe(true);
    expect(volumes.find((v) => v.name === cacheMount.name)?.emptyDir).toBeDefined();
    expect(guard.spec.template.spec.initContainers).toBeUndefined();
    expect(k.configMapGenerator.find((g) => g.name === 'relay-guard-rules')?.options?.disableNameSuffixHash).toBe(true);
    expect(read('kubernetes/deployment.yaml')).not.toMatch(/live only in that pod/);
  });

  test('kubernetes: Redis keeps its data (append-only file on a PersistentVolumeClaim, one writer at a time)', () => {
    const args = redis.spec.template.spec.containers[0].args as string[];
    expect(args[args.indexOf('--appendonly') + 1]).toBe('yes');
    const dataDir = args[args.indexOf('--dir') + 1];
    const mount = (redis.spec.template.spec.containers[0].volumeMounts as Array<{ name: string; mountPath: string }>).find((m) => m.mountPath === dataDir)!;
    const volume = (redis.spec.template.spec.volumes as Array<{ name: string; persistentVolumeClaim?: { claimName: string } }>).find((v) => v.name === mount.name)!;
    expect(docs.some((d) => d.kind === 'PersistentVolumeClaim' && d.metadata.name === volume.persistentVolumeClaim?.claimName)).toBe(true);
    expect(redis.spec.strategy?.type).toBe('Recreate');
  });

  test('compose fleet: two guards behind HAProxy (PROXY v2, the only address allowed to send it) sharing one persistent Redis', () => {
    const compose = parseYaml(read('compose/docker-compose.fleet.yml')) as { services: Record<string, any>; networks: Record<string, any> };
    const cfg = parseConfigText(read('compose/relay-guard.fleet.yaml'), 'fleet');
    expect(new URL(cfg.rulesStore!).hostname).toBe('redis');
    expect(cfg.listeners[0]).toMatchObject({ proxyProtocol: 'required' });
    const haproxyIp = compose.services['haproxy'].networks.fleet.ipv4_address as string;
    expect(cfg.listeners[0]!.proxyNetworks).toEqual([`${haproxyIp}/32`]);
    const names = Object.keys(compose.services).filter((n) => n.startsWith('guard-'));
    expect(names).toEqual(['guard-1', 'guard-2']);
    for (const n of names) {
      const cmd = compose.services[n].command as string[];
      expect(cmd[cmd.indexOf('--guard-name') + 1]).toBe(n);
      expect(cfg.admin.hostNames).toContain(n);
    }
    const redisCmd = compose.services['redis'].command as string[];
    expect(redisCmd[redisCmd.indexOf('--appendonly') + 1]).toBe('yes');
    const haproxy = read('compose/haproxy.fleet.cfg');
    for (const n of names) expect(haproxy).toMatch(new RegExp(`server ${n} ${n}:2525 send-proxy-v2`));
  });

  test('compose fleet: haproxy -c accepts haproxy.fleet.cfg', () => {
    const r = spawnSync('haproxy', ['-c', '-f', join(DEPLOY, 'compose/haproxy.fleet.cfg')], { encoding: 'utf8', timeout: 30_000 });
    expect(r.status, r.stdout + r.stderr).toBe(0);
  });
});

test('compose fleet: docker-compose config accepts docker-compose.fleet.yml', () => {
  const r = spawnSync('docker-compose', ['-f', 'docker-compose.fleet.yml', 'config', '-q'], { cwd: join(DEPLOY, 'compose'), encoding: 'utf8', timeout: 60_000, env: { ...process.env, RELAY_GUARD_ADMIN_TOKEN: 'a'.repeat(64) } });
  expect(r.status, r.stdout + r.stderr).toBe(0);
}, 90_000);

