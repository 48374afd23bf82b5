import { Value } from '@sinclair/typebox/value';
import { describe, expect, test } from 'vitest';
import { buildLookupFilter, escapeFilterValue } from '../../src/directory/ldap-directory.js';
import {
  DEFAULT_LDAP_FILTER,
  DEFAULT_RECIPIENT_VALIDATION,
  RecipientValidationSchema,
  recipientValidationMode,
  resolveLdapSettings,
  type RecipientValidationRules,
} from '../../src/directory/schema.js';

describe('recipientValidationMode', () => {
  const rules: RecipientValidationRules = { default: 'list', domains: { 'example.com': 'ldap', 'example.net': 'off' } };
  const cases = [
    { name: 'listed domain uses its own mode', domain: 'example.com', rules, want: 'ldap' },
    { name: 'listed domain may turn validation off', domain: 'example.net', rules, want: 'off' },
    { name: 'unlisted domain uses the default', domain: 'example.org', rules, want: 'list' },
    { name: 'subdomains are not the parent', domain: 'sub.example.com', rules, want: 'list' },
    { name: 'lookup is case-insensitive', domain: 'EXAMPLE.com', rules, want: 'ldap' },
    { name: 'trailing dot is the same domain', domain: 'example.com.', rules, want: 'ldap' },
    { name: 'shipped default is off everywhere', domain: 'example.com', rules: DEFAULT_RECIPIENT_VALIDATION, want: 'off' },
    { name: 'an empty file is off', domain: 'example.com', rules: {}, want: 'off' },
  ] as const;
  test.each(cases)('$name', ({ domain, rules, want }) => {
    expect(recipientValidationMode(domain, rules)).toBe(want);
  });
});

describe('RecipientValidationSchema', () => {
  const cases = [
    { name: 'shipped default', value: DEFAULT_RECIPIENT_VALIDATION, valid: true },
    {
      name: 'full example',
      value: {
        default: 'off',
        domains: { 'example.com': 'ldap', 'xn--bcher-kva.example': 'list' },
        list: { file: 'recipients.txt' },
        ldap: {
          url: 'ldaps://dc1.example.com:636', startTls: false, tlsRejectUnauthorized: true,
          bindDn: 'CN=relay-guard,OU=Service,DC=example,DC=com', bindPasswordEnv: 'RELAY_GUARD_LDAP_PASSWORD',
          baseDn: 'DC=example,DC=com', filter: DEFAULT_LDAP_FILTER, timeout: '3s', positiveTtl: '10m', negativeTtl: '2m', cacheSize: 50000,
        },
      },
      valid: true,
    },
    { name: 'unknown mode', value: { default: 'maybe' }, valid: false },
    { name: 'upper-case domain key is not canonical', value: { domains: { 'Example.com': 'ldap' } }, valid: false },
    { name: 'U-label domain key', value: { domains: { 'bücher.example': 'ldap' } }, valid: false },
    { name: 'unknown top-level key', value: { defualt: 'off' }, valid: false },
    { name: 'ldap without baseDn', value: { ldap: { url: 'ldap://dc1:389' } }, valid: false },
    { name: 'ldap url must be ldap or ldaps', value: { ldap: { url: 'http://dc1', baseDn: 'dc=x' } }, valid: false },
    { name: 'filter without {address}', value: { ldap: { url: 'ldap://dc1', baseDn: 'dc=x', filter: '(mail=*)' } }, valid: false },
    { name: 'duration needs a unit', value: { ldap: { url: 'ldap://dc1', baseDn: 'dc=x', timeout: '3' } }, valid: false },
    { name: 'unknown ldap key', value: { ldap: { url: 'ldap://dc1', baseDn: 'dc=x', password: 'x' } }, valid: false },
  ];
  test.each(cases)('$name', ({ value, valid }) => {
    expect(Value.Check(RecipientValidationSchema, value)).toBe(valid);
  });
});

describe('resolveLdapSettings', () => {
  test('applies defaults and converts durations to milliseconds', () => {
    expect(resolveLdapSettings({ url: 'ldap://dc1:389', baseDn: 'dc=x' })).toEqual({
      url: 'ldap://dc1:389', baseDn: 'dc=x', filter: DEFAULT_LDAP_FILTER, startTls: false, tlsRejectUnauthorized: true,
      timeoutMs: 3000, positiveTtlMs: 600_000, negativeTtlMs: 120_000, cacheSize: 50_000,
    });
    const r = resolveLdapSettings({ url: 'ldap://dc1', baseDn: 'dc=x', timeout: '500ms', bindDn: 'cn=a', bindPasswordFile: '/p' });
    expect(r.timeoutMs).toBe(500);
    expect(r.bindDn).toBe('cn=a');
    expect(r.bindPasswordFile).toBe('/p');
  });
});

describe('LDAP filter building (RFC 4515 §3)', () => {
  const cases = [
    { name: 'plain address unchanged', value: 'alice@example.com', want: 'alice@example.com' },
    { name: 'asterisk cannot become a wildcard', value: '*@example.com', want: '\\2a@example.com' },
    { name: 'parentheses cannot close the filter', value: 'a)(mail=*', want: 'a\\29\\28mail=\\2a' },
    { name: 'backslash', value: 'a\\b@x', want: 'a\\5cb@x' },
    { name: 'NUL', value: 'a\0b', want: 'a\\00b' },
    { name: 'UTF-8 passes through (RFC 6531 local part)', value: 'jörg@example.com', want: 'jörg@example.com' },
  ];
  test.each(cases)('$name', ({ value, want }) => {
    expect(escapeFilterValue(value)).toBe(want);
  });

  test('every {address} in the template is replaced, "$" patterns are not special', () => {
    expect(buildLookupFilter(DEFAULT_LDAP_FILTER, "a$&*@x")).toBe('(|(proxyAddresses=smtp:a$&\\2a@x)(mail=a$&\\2a@x))');
  });
});
