/**
 * The deployment files in deploy/ hold configurations the guard accepts: every relay-guard.yaml
 * passes the config schema, the Kubernetes rules directory loads and compiles, and the manifests
 * keep the properties the issue asks for (2 replicas, probes, non-root, read-only root fs).
 */
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
