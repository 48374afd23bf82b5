/**
 * Bearer tokens of the admin API (RFC 6750): a read-write token from RELAY_GUARD_ADMIN_TOKEN (id
 * "env") and a YAML token file of { id, token, scope: ro|rw }. Tokens are compared as SHA-256
 * digests with timingSafeEqual, every configured token every time, so neither a token's length nor
 * its position in the file shows in the response time.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { Type, type Static } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { parse as parseYaml } from 'yaml';
import type { Config } from '../config/schema.js';

export const ADMIN_TOKEN_ENV = 'RELAY_GUARD_ADMIN_TOKEN';

export type TokenScope = 'ro' | 'rw';

export const TokenFileSchema = Type.Array(
  Type.Object(
    {
      id: Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$', description: 'Name written to the audit log' }),
      token: Type.String({ minLength: 16, maxLength: 4096, description: 'The bearer secret (at least 16 characters)' }),
      scope: Type.Union([Type.Literal('ro'), Type.Literal('rw')]),
    },
    { additionalProperties: false },
  ),
  { maxItems: 1000 },
);
export type TokenFileEntry = Static<typeof TokenFileSchema>[number];

export interface TokenIdentity {
  readonly id: string;
  readonly scope: TokenScope;
}

interface StoredToken extends TokenIdentity {
  readonly digest: Buffer;
}

/** An error that stops the guard at startup (main.ts prints it and exits 2). */
export class AdminConfigError extends Error {
  override readonly name = 'AdminConfigError';
  constructor(
    readonly code: 'RG_ERR_ADMIN_NO_TOKEN' | 'RG_ERR_ADMIN_TOKEN_FILE' | 'RG_ERR_ADMIN_PLACEHOLDER_TOKEN',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

function digest(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

/**
 * Tokens that are example values, never secrets: the placeholders our deploy files once shipped
 * (deploy/kubernetes/secret.yaml, the compose demo) and any token that says to replace it.
 */
const PLACEHOLDER_TOKENS = new Set(['replace-me-with-openssl-rand-hex-32', 'demo-admin-token-change-me']);
const PLACEHOLDER_PATTERN = /(^|[^a-z])(replace[-_ ]?me|change[-_ ]?me|change[-_ ]?it)([^a-z]|$)/i;

/** True for a token copied from an example instead of generated (the guard refuses to start with one). */
export function isPlaceholderToken(token: string): boolean {
  const t = token.trim();
  return PLACEHOLDER_TOKENS.has(t) || PLACEHOLDER_PATTERN.test(t);
}

function refusePlaceholder(token: string, where: string): void {
  if (isPlaceholderToken(token)) {
    throw new AdminConfigError(
      'RG_ERR_ADMIN_PLACEHOLDER_TOKEN',
      `${where} is an example placeholder, not a secret: set a generated token (openssl rand -hex 32)`,
    );
  }
}

export class AdminTokens {
  private constructor(private readonly tokens: readonly StoredToken[]) {}

  /** Read the environment token and the token file of the config. Throws AdminConfigError on a bad file. */
  static load(config: Pick<Config, 'admin'>, env: NodeJS.ProcessEnv): AdminTokens {
    const out: StoredToken[] = [];
    const envToken = env[ADMIN_TOKEN_ENV];
    if (typeof envToken === 'string' && envToken.trim().length > 0) {
      refusePlaceholder(envToken, ADMIN_TOKEN_ENV);
      out.push({ id: 'env', scope: 'rw', digest: digest(envToken.trim()) });
    }
    const file = config.admin.tokenFile;
    if (file !== undefined) {
      for (const t of readTokenFile(file)) {
        refusePlaceholder(t.token, `the token of "${t.id}" in admin token file ${file}`);
        out.push({ id: t.id, scope: t.scope, digest: digest(t.token) });
      }
    }
    return new AdminTokens(out);
  }

  static of(entries: readonly { id: string; token: string; scope: TokenScope }[]): AdminTokens {
    return new AdminTokens(entries.map((t) => ({ id: t.id, scope: t.scope, digest: digest(t.token) })));
  }

  get size(): number {
    return this.tokens.length;
  }

  /** The identity of a presented token, or undefined. Constant time in the presented value. */
  verify(presented: string): TokenIdentity | undefined {
    const d = digest(presented);
    let found: StoredToken | undefined;
    for (const t of this.tokens) {
      // No early exit: every token is compared.
      if (timingSafeEqual(d, t.digest) && found === undefined) found = t;
    }
    return found === undefined ? undefined : { id: found.id, scope: found.scope };
  }
}

function readTokenFile(file: string): TokenFileEntry[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new AdminConfigError('RG_ERR_ADMIN_TOKEN_FILE', `cannot read admin token file ${file}`, { cause: err });
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new AdminConfigError('RG_ERR_ADMIN_TOKEN_FILE', `admin token file ${file} is not valid YAML`, { cause: err });
  }
  if (doc === null || doc === undefined) return [];
  if (!Value.Check(TokenFileSchema, doc)) {
    const first = Value.Errors(TokenFileSchema, doc).First();
    // Never echo the value: it may be a secret.
    throw new AdminConfigError('RG_ERR_ADMIN_TOKEN_FILE', `admin token file ${file}: ${first ? `${first.path || '/'}: ${first.message}` : 'want a list of { id, token, scope: ro|rw }'}`);
  }
  const ids = new Set<string>();
  for (const t of doc) {
    if (ids.has(t.id) || t.id === 'env') throw new AdminConfigError('RG_ERR_ADMIN_TOKEN_FILE', `admin token file ${file}: duplicate or reserved id "${t.id}"`);
    ids.add(t.id);
  }
  return doc;
}

/** 127.0.0.0/8, ::1, ::ffff:127.x.x.x and "localhost". */
export function isLoopbackAddress(address: string): boolean {
  const a = address.trim().toLowerCase().replace(/^\[(.*)\]$/, '$1');
  if (a === 'localhost') return true;
  const v = isIP(a);
  if (v === 4) return a.startsWith('127.');
  if (v === 6) return a === '::1' || a === '0:0:0:0:0:0:0:1' || /^::ffff:127\./.test(a);
  return false;
}

/**
 * Refuse an admin API reachable from the network without a token (the CLI and the guard call this
 * at start). Also throws when the token file is unreadable or invalid, or a token is a placeholder.
 */
export function assertAdminSafe(config: Pick<Config, 'admin'>, env: NodeJS.ProcessEnv): void {
  if (!config.admin.enabled) return;
  const tokens = AdminTokens.load(config, env);
  if (tokens.size === 0 && !isLoopbackAddress(config.admin.address)) {
    throw new AdminConfigError(
      'RG_ERR_ADMIN_NO_TOKEN',
      `admin API on ${config.admin.address} is not a loopback address and no token is configured: set ${ADMIN_TOKEN_ENV} or admin.tokenFile, or bind it to 127.0.0.1`,
    );
  }
}
