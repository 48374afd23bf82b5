/**
 * deploy/container and deploy/compose (issue 17), checked on the files; scripts/container-smoke.sh
 * builds and runs the image itself (a pre-release step: it needs root and podman).
 *  - the Dockerfile fetches no frontend (`# syntax=` breaks air-gapped builds), its default command
 *    keeps the admin API on loopback, and no runtime file of rules/ reaches the image;
 *  - the compose file has no top-level `name:` (Debian's docker-compose 1.29 refuses it) and no
 *    default admin token; when docker-compose is on PATH, `docker-compose config` accepts it.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { isLoopbackAddress } from '../../src/admin/admin-tokens.js';
import { DEFAULT_CONFIG } from '../../src/config/schema.js';
import { REPO_ROOT } from '../helpers/prometheus.js';

const read = (p: string): string => readFileSync(join(REPO_ROOT, p), 'utf8');
const dockerfile = read('deploy/container/Dockerfile');
/** Instructions with their continuation lines joined, comments dropped. */
const instructions = dockerfile
  .replace(/\\\n/g, ' ')
  .split('\n')
  .filter((l) => l.trim() !== '' && !l.startsWith('#'));
const jsonArgs = (keyword: string): string[] => {
  const line = instructions.filter((l) => l.startsWith(`${keyword} `)).at(-1)!;
  return JSON.parse(line.slice(keyword.length + 1)) as string[];
};

describe('Dockerfile', () => {
  test('no "# syntax=" parser directive: the builder needs no frontend from a registry', () => {
    expect(dockerfile).not.toMatch(/^#\s*syntax\s*=/im);
  });

  test('the default command binds SMTP for the published port and leaves the admin API on loopback (no token needed)', () => {
    const cmd = jsonArgs('CMD');
    expect(cmd).toEqual(['--listen', '0.0.0.0:2525']);
    expect(isLoopbackAddress(DEFAULT_CONFIG.admin.address)).toBe(true);
    // HEALTHCHECK reaches the admin API where the default command puts it.
    expect(instructions.find((l) => l.startsWith('HEALTHCHECK '))).toContain(`http://127.0.0.1:${DEFAULT_CONFIG.admin.port}/healthz`);
  });

  test('rules/ in the image come from the build stage after removing runtime files (dotfiles, bans.yaml, directories)', () => {
    expect(instructions).toContain(`RUN find rules -mindepth 1 \\( -name '.*' -o -name 'bans.yaml*' -o -type d \\) -prune -exec rm -rf {} +`);
    expect(instructions.filter((l) => /^COPY .*rules/.test(l))).toEqual(['COPY rules ./rules', 'COPY --from=build --chown=relay-guard:relay-guard /src/rules ./rules']);
  });

  test('the root .dockerignore (podman, legacy builder, docker-compose 1.29) is the same as Dockerfile.dockerignore (BuildKit)', () => {
    expect(read('.dockerignore')).toBe(read('deploy/container/Dockerfile.dockerignore'));
  });

  test('the .dockerignore admits the shipped rule files only and excludes the runtime files after them', () => {
    const lines = read('deploy/container/Dockerfile.dockerignore')
      .split('\n')
      .filter((l) => l.trim() !== '' && !l.startsWith('#'));
    expect(lines).not.toContain('!rules/**');
    expect(lines.indexOf('rules/.*')).toBeGreaterThan(lines.indexOf('!rules/*.yaml'));
    expect(lines.indexOf('rules/bans.yaml*')).toBeGreaterThan(lines.indexOf('!rules/*.yaml'));
    // Every shipped rule file is admitted by one of the patterns.
    const shipped = execFileSync('git', ['ls-files', 'rules'], { cwd: REPO_ROOT, encoding: 'utf8' }).trim().split('\n');
    for (const f of shipped) expect(/^rules\/[^/.][^/]*\.(yaml|txt)$/.test(f) && f !== 'rules/bans.yaml', f).toBe(true);
  });
});

describe('compose', () => {
  const text = read('deploy/compose/docker-compose.yml');
  const compose = parseYaml(text) as { name?: string; version?: string; services: Record<string, any> };

  test('no top-level name: (docker-compose 1.29 refuses it); the project name comes from .env', () => {
    expect(compose.name).toBeUndefined();
    expect(read('deploy/compose/.env')).toMatch(/^COMPOSE_PROJECT_NAME=relay-guard$/m);
  });

  test('the admin token has no default value: compose stops with one sentence until it is set', () => {
    expect(compose.services['relay-guard'].environment.RELAY_GUARD_ADMIN_TOKEN).toMatch(/^\$\{RELAY_GUARD_ADMIN_TOKEN:\?[^}]+\}$/);
  });

  test('the rules volume is mounted on the rules directory of the config and the image', () => {
    const cfg = parseYaml(read('deploy/compose/relay-guard.yaml')) as { rulesDir: string };
    expect(compose.services['relay-guard'].volumes).toContain(`relay-guard-rules:${cfg.rulesDir}`);
    expect(dockerfile).toContain(`WORKDIR ${cfg.rulesDir.replace(/\/rules$/, '')}`);
  });

  test('docker-compose config accepts the file with a token and names the missing one without', () => {
    const cwd = join(REPO_ROOT, 'deploy/compose');
    const env = { PATH: process.env.PATH };
    const ok = spawnSync('docker-compose', ['config', '--quiet'], { cwd, env: { ...env, RELAY_GUARD_ADMIN_TOKEN: 'x'.repeat(64) }, encoding: 'utf8', timeout: 60_000 });
    expect(ok.stderr).toBe('');
    expect(ok.status).toBe(0);
    const missing = spawnSync('docker-compose', ['config', '--quiet'], { cwd, env, encoding: 'utf8', timeout: 60_000 });
    expect(missing.status).not.toBe(0);
    expect(missing.stderr).toMatch(/set RELAY_GUARD_ADMIN_TOKEN first/);
  }, 90_000);
});
