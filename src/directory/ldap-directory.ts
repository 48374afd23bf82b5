/**
 * LdapDirectory: "does this address belong to a recipient?" asked of Active Directory or any LDAP server.
 *
 * One bound ldapts Client is kept and reused for every lookup; on any error (or a timeout) it is
 * dropped and the next lookup connects and binds afresh. Transport: ldaps:// (TLS from the start)
 * or ldap:// with StartTLS (RFC 4511 §4.14, RFC 4513 §3). lookup() throws on every directory
 * fault: the caller turns that into a temporary failure, never into "unknown".
 */
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import { Client } from 'ldapts';
import type { ResolvedLdapSettings } from './schema.js';

export type DirectoryLookupResult = 'known' | 'unknown';

/** Escape an assertion value for a string filter (RFC 4515 §3: '*', '(', ')', '\' and NUL). */
export function escapeFilterValue(value: string): string {
  let out = '';
  for (const ch of value) {
    switch (ch) {
      case '*': out += '\\2a'; break;
      case '(': out += '\\28'; break;
      case ')': out += '\\29'; break;
      case '\\': out += '\\5c'; break;
      case '\0': out += '\\00'; break;
      default: out += ch;
    }
  }
  return out;
}

/** Substitute the escaped address for every {address} in the configured filter. */
export function buildLookupFilter(template: string, address: string): string {
  return template.split('{address}').join(escapeFilterValue(address));
}

/** Substitute the escaped login for every {user} in auth.ldapUserFilter. */
export function buildUserFilter(template: string, user: string): string {
  return template.split('{user}').join(escapeFilterValue(user));
}

export class LdapTimeoutError extends Error {
  readonly code = 'RG_ERR_DIRECTORY_TIMEOUT';
  constructor(ms: number) {
    super(`ldap lookup timed out after ${ms} ms`);
    this.name = 'LdapTimeoutError';
  }
}

export interface LdapDirectoryDeps {
  /** Where bindPasswordEnv is read (default process.env). */
  env?: NodeJS.ProcessEnv;
}

export class LdapDirectory {
  private readonly settings: ResolvedLdapSettings;
  private readonly env: NodeJS.ProcessEnv;
  private client: Client | undefined;
  private connecting: Promise<Client> | undefined;
  private closed = false;
  private searchCount = 0;
  private connectCount = 0;

  constructor(settings: ResolvedLdapSettings, deps: LdapDirectoryDeps = {}) {
    this.settings = settings;
    this.env = deps.env ?? process.env;
  }

  /** Searches sent to the directory so far (tests and /api/v1/check use it to see the cache work). */
  get searches(): number {
    return this.searchCount;
  }

  /** Connections opened (and bound) so far. */
  get connects(): number {
    return this.connectCount;
  }

  /**
   * 'known' when at least one entry matches the filter, 'unknown' when none does.
   * Throws on connection, bind, TLS or search errors and after `timeout`.
   */
  async lookup(address: string): Promise<DirectoryLookupResult> {
    if (this.closed) throw new Error('ldap directory is closed');
    const filter = buildLookupFilter(this.settings.filter, address);
    const timeoutMs = this.settings.timeoutMs;
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new LdapTimeoutError(timeoutMs)), timeoutMs);
    });
    const used: { client?: Client } = {};
    try {
      return await Promise.race([this.search(filter, used), deadline]);
    } catch (err) {
      // Whatever went wrong, do not trust this connection again (a late answer is ignored).
      if (used.client) this.discard(used.client);
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Prove a login without trusting the mail server (issue 16, auth.verify: ldap): find the user's
   * entry with the service connection (`userFilter`, {user} escaped), then bind as that entry with
   * the password on a connection of its own, closed at once. 'valid' or 'invalid' (no entry, several
   * entries, wrong password, an empty password: RFC 4513 §5.1.2 would make that an unauthenticated
   * bind that "succeeds"). Throws on directory faults and after `timeout`.
   */
  async verifyCredentials(user: string, password: string, userFilter: string): Promise<'valid' | 'invalid'> {
    if (this.closed) throw new Error('ldap directory is closed');
    if (password === '' || user === '') return 'invalid';
    const timeoutMs = this.settings.timeoutMs;
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new LdapTimeoutError(timeoutMs)), timeoutMs);
    });
    const used: { client?: Client; userClient?: Client } = {};
    try {
      return await Promise.race([this.bindAsUser(user, password, userFilter, used), deadline]);
    } catch (err) {
      if (used.client) this.discard(used.client);
      throw err;
    } finally {
      clearTimeout(timer);
      if (used.userClient) void used.userClient.unbind().catch(() => undefined);
    }
  }

  private async bindAsUser(user: string, password: string, userFilter: string, used: { client?: Client; userClient?: Client }): Promise<'valid' | 'invalid'> {
    const client = await this.connection();
    used.client = client;
    this.searchCount++;
    const res = await client.search(this.settings.baseDn, {
      scope: 'sub',
      filter: buildUserFilter(userFilter, user),
      attributes: ['1.1'],
      // Two are enough to know the login is ambiguous.
      sizeLimit: 2,
      timeLimit: Math.max(1, Math.ceil(this.settings.timeoutMs / 1000)),
      derefAliases: 'never',
    });
    if (res.searchEntries.length !== 1) return 'invalid';
    const dn = res.searchEntries[0]!.dn;
    const userClient = await this.newClient();
    used.userClient = userClient;
    try {
      await userClient.bind(dn, password);
      return 'valid';
    } catch (err) {
      // RFC 4511 §4.1.9 resultCode 49: invalidCredentials.
      if ((err as { code?: unknown }).code === 49) return 'invalid';
      throw err;
    }
  }

  /** A fresh connection with the configured transport (TLS / StartTLS), not bound. */
  private async newClient(): Promise<Client> {
    const { client, tlsOptions } = await this.createClient(false);
    if (this.settings.startTls) await client.startTLS(tlsOptions);
    return client;
  }

  /** A client for the configured URL, not yet connected; `autoRebind` for the long-lived search connection. */
  private async createClient(autoRebind: boolean): Promise<{ client: Client; tlsOptions: ConnectionOptions }> {
    const s = this.settings;
    const url = new URL(s.url);
    const tlsOptions = await this.tlsOptions(url.hostname);
    const client = new Client({
      url: s.url,
      timeout: s.timeoutMs,
      connectTimeout: s.timeoutMs,
      ...(url.protocol === 'ldaps:' ? { tlsOptions } : {}),
      strictDN: false,
      ...(autoRebind ? { autoRebind: true } : {}),
    });
    return { client, tlsOptions };
  }

  /** Drop the connection; later lookups throw. */
  async close(): Promise<void> {
    this.closed = true;
    this.discard();
  }

  private async search(filter: string, used: { client?: Client }): Promise<DirectoryLookupResult> {
    const client = await this.connection();
    used.client = client;
    this.searchCount++;
    const res = await client.search(this.settings.baseDn, {
      scope: 'sub',
      filter,
      // RFC 4511 §4.5.1.8: '1.1' asks for no attributes; existence is all we need.
      attributes: ['1.1'],
      // One entry is enough; ldapts returns what it got on sizeLimitExceeded (RFC 4511 §4.5.1.4).
      sizeLimit: 1,
      timeLimit: Math.max(1, Math.ceil(this.settings.timeoutMs / 1000)),
      derefAliases: 'never',
    });
    return res.searchEntries.length > 0 ? 'known' : 'unknown';
  }

  private connection(): Promise<Client> {
    if (this.client?.isConnected) return Promise.resolve(this.client);
    this.discard();
    this.connecting ??= this.connect().finally(() => {
      this.connecting = undefined;
    });
    return this.connecting;
  }

  private async connect(): Promise<Client> {
    const s = this.settings;
    // A transparent reconnect must not run unauthenticated; ldapts never replays over StartTLS.
    const { client, tlsOptions } = await this.createClient(!s.startTls);
    try {
      if (s.startTls) await client.startTLS(tlsOptions);
      if (s.bindDn !== undefined) await client.bind(s.bindDn, await this.bindPassword());
      this.connectCount++;
    } catch (err) {
      void client.unbind().catch(() => undefined);
      throw err;
    }
    if (this.closed) {
      void client.unbind().catch(() => undefined);
      throw new Error('ldap directory is closed');
    }
    this.client = client;
    return client;
  }

  private async tlsOptions(hostname: string): Promise<ConnectionOptions> {
    const s = this.settings;
    const host = hostname.replace(/^\[|\]$/g, '');
    const opts: ConnectionOptions = { host, rejectUnauthorized: s.tlsRejectUnauthorized };
    // SNI carries host names only (RFC 6066 §3).
    if (isIP(host) === 0) opts.servername = host;
    if (s.tlsCaFile !== undefined) opts.ca = await readFile(s.tlsCaFile);
    return opts;
  }

  /** Read at every (re)connect, so a rotated password is picked up without a restart. */
  private async bindPassword(): Promise<string> {
    const s = this.settings;
    let password: string | undefined;
    if (s.bindPasswordFile !== undefined) {
      password = (await readFile(s.bindPasswordFile, 'utf8')).replace(/\r?\n$/, '');
    } else if (s.bindPasswordEnv !== undefined) {
      password = this.env[s.bindPasswordEnv];
    }
    // An empty password makes a simple bind "unauthenticated" (RFC 4513 §5.1.2): refuse it.
    if (password === undefined || password === '') {
      throw Object.assign(new Error('ldap bind password is missing or empty (bindPasswordFile / bindPasswordEnv)'), {
        code: 'RG_ERR_DIRECTORY_NO_PASSWORD',
      });
    }
    return password;
  }

  /** Forget a connection (the current one by default) and close it in the background. */
  private discard(client: Client | undefined = this.client): void {
    if (client === undefined) return;
    if (this.client === client) this.client = undefined;
    void client.unbind().catch(() => undefined);
  }
}
