/**
 * The Prometheus files in deploy/ pass promtool (Debian's `prometheus` package; CI installs it):
 * check config, check rules, and the alert unit tests in alerts.test.yml. Plus structure checks:
 * every alert has a severity, a summary and a description, and is tested both firing and silent.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { REPO_ROOT, alertRules } from '../helpers/prometheus.js';

const PROM_DIR = join(REPO_ROOT, 'deploy/prometheus');

function promtool(args: string[], cwd = PROM_DIR): { status: number | null; output: string } {
  const r = spawnSync('promtool', args, { cwd, encoding: 'utf8', timeout: 30_000 });
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ENOENT') {
    throw new Error("promtool not found on PATH: install Debian's prometheus package (apt-get install -y prometheus)");
  }
  if (r.error) throw r.error;
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

function expectSuccess(args: string[]): void {
  const r = promtool(args);
  expect(r.status, `promtool ${args.join(' ')}\n${r.output}`).toBe(0);
}

describe('promtool on deploy/prometheus', () => {
  test('promtool check config prometheus.yml', () => expectSuccess(['check', 'config', 'prometheus.yml']));
  test('promtool check rules alerts.yml', () => expectSuccess(['check', 'rules', 'alerts.yml']));
  test('promtool test rules alerts.test.yml', () => expectSuccess(['test', 'rules', 'alerts.test.yml']));

  test('promtool check config on the compose stack\'s prometheus.yml (alerts.yml mounted beside it)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'relay-guard-compose-prom-'));
    try {
      copyFileSync(join(REPO_ROOT, 'deploy/compose/prometheus.yml'), join(dir, 'prometheus.yml'));
      copyFileSync(join(PROM_DIR, 'alerts.yml'), join(dir, 'alerts.yml'));
      const r = promtool(['check', 'config', 'prometheus.yml'], dir);
      expect(r.status, r.output).toBe(0);
      expect(r.output).toMatch(/1 rule files found/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  describe('the harness notices broken alerts', () => {
    const dir = mkdtempSync(join(tmpdir(), 'relay-guard-promtool-'));
    afterAll(() => rmSync(dir, { recursive: true, force: true }));

    test('a weakened threshold makes the alert unit tests fail', () => {
      // BackendDown must wait 2m; firing at once must break the "pending" expectations.
      const broken = readFileSync(join(PROM_DIR, 'alerts.yml'), 'utf8').replace(/(- alert: BackendDown\n\s+expr: .*\n)\s+for: 2m\n/, '$1');
      expect(broken).not.toBe(readFileSync(join(PROM_DIR, 'alerts.yml'), 'utf8'));
      writeFileSync(join(dir, 'alerts.yml'), broken);
      copyFileSync(join(PROM_DIR, 'alerts.test.yml'), join(dir, 'alerts.test.yml'));
      const r = promtool(['test', 'rules', 'alerts.test.yml'], dir);
      expect(r.status).not.toBe(0);
      expect(r.output).toMatch(/BackendDown/);
    });
  });
});

interface AlertTest {
  alert_rule_test?: Array<{ alertname: string; exp_alerts?: unknown[] }>;
}

describe('alerts.yml structure', () => {
  const rules = alertRules();
  const tests = (parseYaml(readFileSync(join(PROM_DIR, 'alerts.test.yml'), 'utf8')) as { tests: AlertTest[] }).tests;
  const cases = tests.flatMap((t) => t.alert_rule_test ?? []);

  test('holds the alerts the issue asks for', () => {
    expect(rules.map((r) => r.alert)).toEqual(
      expect.arrayContaining([
        'RelayAttackSpike', 'BackendDown', 'AllBackendsDown', 'BanStorm', 'RulesReloadFailing',
        'TlsCertificateExpiringSoon', 'SmugglingAttempts', 'GuardInternalErrors', 'LimitStoreFallback', 'BackendAcceptsAnyCredentials',
      ]),
    );
  });

  test.each(rules.map((r) => [r.alert ?? '?', r] as const))('%s has severity, summary and description', (_, r) => {
    expect(['critical', 'warning', 'info']).toContain(r.labels?.severity);
    expect(r.annotations?.summary?.length ?? 0).toBeGreaterThan(10);
    expect(r.annotations?.description?.length ?? 0).toBeGreaterThan(30);
  });

  test.each(rules.map((r) => r.alert ?? '?'))('%s is tested both firing and not firing', (name) => {
    const mine = cases.filter((c) => c.alertname === name);
    expect(mine.some((c) => (c.exp_alerts?.length ?? 0) > 0), `${name} has a firing case`).toBe(true);
    expect(mine.some((c) => (c.exp_alerts?.length ?? 0) === 0), `${name} has a silent case`).toBe(true);
  });
});
