/**
 * Recipient validation against a real OpenLDAP server (Debian slapd), seeded with AD-like entries.
 * Fails (does not skip) when slapd is not installed: CI installs it.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { InvalidCredentialsError } from 'ldapts';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { LdapDirectory } from '../../src/directory/ldap-directory.js';
import { RecipientValidator, type MinimalLogger } from '../../src/directory/recipient-validator.js';
import { resolveLdapSettings, type RecipientValidationRules } from '../../src/directory/schema.js';
import { createMetrics, type Metrics } from '../../src/observability/metrics.js';
import { SLAPD_ROOT_DN, SLAPD_ROOT_PW, SLAPD_SUFFIX, startSlapd, type Slapd } from '../helpers/slapd.js';

const PASSWORD_ENV = 'RG_TEST_LDAP_PASSWORD';
const TIMEOUT_MS = 1500;
const quietLog: MinimalLogger = { info: () => undefined, warn: () => undefined, error: () => undefined };

let slapd: Slapd;
let metrics: Metrics;
let validator: RecipientValidator;

function rulesFor(s: Slapd, extra: Partial<NonNullable<RecipientValidationRules['ldap']>> = {}): RecipientValidationRules {
  return {
    default: 'off',
    domains: { 'example.test': 'ldap' },
    ldap: {
      url: s.url,
      bindDn: SLAPD_ROOT_DN,
      bindPasswordEnv: PASSWORD_ENV,
      baseDn: SLAPD_SUFFIX,
      timeout: `${TIMEOUT_MS}ms`,
      positiveTtl: '10m',
      negativeTtl: '2m',
      cacheSize: 100,
      ...extra,
    },
  };
}

async function lookupCount(source: string, result: string): Promise<number> {
  const m = await metrics.recipientLookups.get();
  return m.values.find((v) => v.labels.source === source && v.labels.result === result)?.value ?? 0;
}

beforeAll(async () => {
  slapd = await startSlapd();
  metrics = createMetrics(new Registry(), { defaultMetrics: false });
  const rules = rulesFor(slapd);
  validator = new RecipientValidator({ rulesDir: '/nonexistent', rules: () => rules, metrics, log: quietLog, ldap: { env: { [PASSWORD_ENV]: SLAPD_ROOT_PW } } });
  await validator.start();
});

afterAll(async () => {
  await validator?.close();
  await slapd?.close();
});

describe('LdapDirectory against slapd', () => {
  const cases = [
    // proxyAddresses: SMTP: is the primary, smtp: an alias; matching ignores case (caseIgnoreMatch)
    { name: 'primary SMTP address', address: 'alice@example.test', want: 'known' },
    { name: 'primary, other case', address: 'ALICE@Example.Test', want: 'known' },
    { name: 'alias smtp address', address: 'ally@example.test', want: 'known' },
    { name: 'alias, other case', address: 'Ally@EXAMPLE.test', want: 'known' },
    // mail attribute
    { name: 'mail attribute', address: 'bob@example.test', want: 'known' },
    { name: 'mail attribute, other case', address: 'BOB@example.test', want: 'known' },
    // unknown
    { name: 'nobody', address: 'nobody@example.test', want: 'unknown' },
    { name: 'a SIP proxy address is not a mailbox', address: 'dave@example.test', want: 'unknown' },
    { name: 'known local part, other domain', address: 'alice@example.org', want: 'unknown' },
    // filter injection is escaped (RFC 4515)
    { name: 'wildcard does not match everyone', address: '*@example.test', want: 'unknown' },
    { name: 'substring wildcard', address: 'al*@example.test', want: 'unknown' },
    { name: 'filter break-out', address: 'x)(mail=*', want: 'unknown' },
  ];

  test.each(cases)('$name', async ({ address, want }) => {
    const dir = new LdapDirectory(resolveLdapSettings(rulesFor(slapd).ldap!), { env: { [PASSWORD_ENV]: SLAPD_ROOT_PW } });
    try {
      expect(await dir.lookup(address)).toBe(want);
    } finally {
      await dir.close();
    }
  });

  test('one bound connection is reused for many lookups', async () => {
    const dir = new LdapDirectory(resolveLdapSettings(rulesFor(slapd).ldap!), { env: { [PASSWORD_ENV]: SLAPD_ROOT_PW } });
    try {
      const results = await Promise.all(['alice@example.test', 'bob@example.test', 'nobody@example.test'].map((a) => dir.lookup(a)));
      expect(results).toEqual(['known', 'known', 'unknown']);
      for (let i = 0; i < 5; i++) expect(await dir.lookup('ally@example.test')).toBe('known');
      expect(dir.searches).toBe(8);
      expect(dir.connects).toBe(1);
    } finally {
      await dir.close();
    }
  });

  test('a wrong bind password is an error, never unknown', async () => {
    const dir = new LdapDirectory(resolveLdapSettings(rulesFor(slapd).ldap!), { env: { [PASSWORD_ENV]: 'wrong' } });
    try {
      await expect(dir.lookup('nobody@example.test')).rejects.toBeInstanceOf(InvalidCredentialsError);
    } finally {
      await dir.close();
    }
  });

  test('a wrong base DN is an error, never unknown', async () => {
    const dir = new LdapDirectory(resolveLdapSettings(rulesFor(slapd, { baseDn: 'dc=nowhere,dc=test' }).ldap!), {
      env: { [PASSWORD_ENV]: SLAPD_ROOT_PW },
    });
    try {
      await expect(dir.lookup('nobody@example.test')).rejects.toThrow();
    } finally {
      await dir.close();
    }
  });
});

describe('RecipientValidator in ldap mode against slapd', () => {
  test('known, alias and mail pass; unknown is unknown; all from the directory first', async () => {
    expect(validator.mode('example.test')).toBe('ldap');
    expect(await validator.lookup('alice@example.test', 'example.test')).toEqual({ result: 'known', source: 'ldap' });
    expect(await validator.lookup('ally@example.test', 'example.test')).toEqual({ result: 'known', source: 'ldap' });
    expect(await validator.lookup('bob@example.test', 'example.test')).toEqual({ result: 'known', source: 'ldap' });
    expect(await validator.lookup('nobody@example.test', 'example.test')).toEqual({ result: 'unknown', source: 'ldap' });
    expect(await lookupCount('ldap', 'known')).toBe(3);
    expect(await lookupCount('ldap', 'unknown')).toBe(1);
  });

  test('the cache serves repeats (positive and negative, any case) without a query', async () => {
    const before = validator.cacheStats.ldapQueries;
    expect(before).toBeGreaterThanOrEqual(4);
    expect(await validator.lookup('ALICE@example.test', 'example.test')).toEqual({ result: 'known', source: 'cache' });
    expect(await validator.lookup('bob@example.test', 'example.test')).toEqual({ result: 'known', source: 'cache' });
    expect(await validator.lookup('nobody@example.test', 'example.test')).toEqual({ result: 'unknown', source: 'cache' });
    expect(validator.cacheStats.ldapQueries).toBe(before);
    expect(await lookupCount('cache', 'known')).toBe(2);
    expect(await lookupCount('cache', 'unknown')).toBe(1);
    expect(validator.cacheStats.size).toBe(4);
  });

  test('concurrent lookups of one new address share one query', async () => {
    const before = validator.cacheStats.ldapQueries;
    const results = await Promise.all(Array.from({ length: 5 }, () => validator.lookup('newbie@example.test', 'example.test')));
    expect(results.map((r) => r.result)).toEqual(['unknown', 'unknown', 'unknown', 'unknown', 'unknown']);
    expect(validator.cacheStats.ldapQueries).toBe(before + 1);
  });

  test('slapd frozen (slow directory): error after the timeout, never unknown; recovers when it thaws', async () => {
    await slapd.pause();
    try {
      const t0 = performance.now();
      const res = await validator.lookup('slow@example.test', 'example.test');
      const elapsed = performance.now() - t0;
      expect({ ...res, slowEnough: elapsed >= TIMEOUT_MS - 100, fastEnough: elapsed < TIMEOUT_MS + 1000 }).toEqual({
        result: 'error', source: 'ldap', detail: 'RG_ERR_DIRECTORY_TIMEOUT', slowEnough: true, fastEnough: true,
      });
    } finally {
      slapd.resume();
    }
    expect(await validator.lookup('slow@example.test', 'example.test')).toEqual({ result: 'unknown', source: 'ldap' });
  });

  test('slapd stopped: error within the timeout, never unknown; cached answers still served', async () => {
    await slapd.stop();
    const t0 = performance.now();
    const res = await validator.lookup('stranger@example.test', 'example.test');
    expect(performance.now() - t0).toBeLessThan(TIMEOUT_MS + 500);
    expect(res.result).toBe('error');
    expect(res.source).toBe('ldap');
    // Errors are not cached: asking again asks the directory again, and is still an error.
    expect((await validator.lookup('stranger@example.test', 'example.test')).result).toBe('error');
    expect(await lookupCount('ldap', 'error')).toBe(3);
    expect((await validator.lookup('alice@example.test', 'example.test')).source).toBe('cache');
  });

  test('slapd back: lookups recover without a restart of the validator', async () => {
    await slapd.start();
    expect(await validator.lookup('stranger@example.test', 'example.test')).toEqual({ result: 'unknown', source: 'ldap' });
    expect(await validator.lookup('ally@EXAMPLE.TEST', 'example.test')).toEqual({ result: 'known', source: 'cache' });
    validator.clearCache();
    expect(await validator.lookup('ally@example.test', 'example.test')).toEqual({ result: 'known', source: 'ldap' });
  });

  test('the cache is bounded by cacheSize (LRU)', async () => {
    const rules = rulesFor(slapd, { cacheSize: 2 });
    const small = new RecipientValidator({ rulesDir: '/nonexistent', rules: () => rules, log: quietLog, ldap: { env: { [PASSWORD_ENV]: SLAPD_ROOT_PW } } });
    try {
      for (const a of ['alice@example.test', 'bob@example.test', 'nobody@example.test']) await small.lookup(a, 'example.test');
      expect(small.cacheStats).toMatchObject({ size: 2, max: 2, ldapQueries: 3 });
      // The least recently used entry was evicted and is asked again.
      expect((await small.lookup('alice@example.test', 'example.test')).source).toBe('ldap');
      expect((await small.lookup('nobody@example.test', 'example.test')).source).toBe('cache');
    } finally {
      await small.close();
    }
  });
});

describe('LdapDirectory over TLS (StartTLS and LDAPS) against slapd', () => {
  let tlsSlapd: Slapd;
  let certDir: string;
  let caFile: string;

  beforeAll(async () => {
    certDir = await mkdtemp(join(tmpdir(), 'rg-ldap-tls-'));
    caFile = join(certDir, 'cert.pem');
    const keyFile = join(certDir, 'key.pem');
    // A self-signed certificate for 127.0.0.1 that is its own CA.
    await promisify(execFile)('openssl', [
      'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', caFile, '-days', '2',
      '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
    ], { timeout: 20_000 });
    tlsSlapd = await startSlapd({ tls: { certFile: caFile, keyFile } });
  });

  afterAll(async () => {
    await tlsSlapd?.close();
    if (certDir) await rm(certDir, { recursive: true, force: true });
  });

  function directory(extra: Partial<NonNullable<RecipientValidationRules['ldap']>>): LdapDirectory {
    return new LdapDirectory(resolveLdapSettings(rulesFor(tlsSlapd, extra).ldap!), { env: { [PASSWORD_ENV]: SLAPD_ROOT_PW } });
  }

  const cases = [
    // RFC 4513 §3: StartTLS before the bind, so the password never crosses in clear text
    { name: 'StartTLS with the CA', settings: () => ({ startTls: true, tlsCaFile: caFile }), want: 'known' },
    { name: 'LDAPS with the CA', settings: () => ({ url: tlsSlapd.ldapsUrl ?? '', tlsCaFile: caFile }), want: 'known' },
    // certificates are verified by default
    { name: 'StartTLS, untrusted certificate', settings: () => ({ startTls: true }), want: 'throws' },
    { name: 'LDAPS, untrusted certificate', settings: () => ({ url: tlsSlapd.ldapsUrl ?? '' }), want: 'throws' },
    { name: 'LDAPS, verification turned off', settings: () => ({ url: tlsSlapd.ldapsUrl ?? '', tlsRejectUnauthorized: false }), want: 'known' },
  ];
  test.each(cases)('$name', async ({ settings, want }) => {
    const dir = directory(settings());
    try {
      if (want === 'throws') await expect(dir.lookup('alice@example.test')).rejects.toThrow();
      else expect(await dir.lookup('alice@example.test')).toBe(want);
    } finally {
      await dir.close();
    }
  });

  test('StartTLS to a server without TLS is an error, not a silent clear-text bind', async () => {
    const dir = new LdapDirectory(resolveLdapSettings(rulesFor(slapd, { startTls: true, tlsCaFile: caFile }).ldap!), {
      env: { [PASSWORD_ENV]: SLAPD_ROOT_PW },
    });
    try {
      await expect(dir.lookup('alice@example.test')).rejects.toThrow();
      expect(dir.connects).toBe(0);
    } finally {
      await dir.close();
    }
  });
});
