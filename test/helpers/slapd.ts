/**
 * A private OpenLDAP server (Debian slapd) for integration tests: generated slapd.conf in a temp
 * folder, mdb database, suffix dc=example,dc=test, an AD-like `proxyAddresses` attribute, seeded
 * with ldapadd. Listens on 127.0.0.1 only. stop() / start() keep the port and the data, so a test
 * can take the directory away and bring it back.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { access, constants, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import { Client } from 'ldapts';
import { freePort } from './free-port.js';

const SLAPD = '/usr/sbin/slapd';
const LDAPADD = '/usr/bin/ldapadd';
const SCHEMA_DIR = '/etc/ldap/schema';
const MODULE_PATH = '/usr/lib/ldap';
const START_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 5_000;
const BIND_ATTEMPTS = 100;
const BIND_RETRY_MS = 50;
const STOP_POLL_ATTEMPTS = 200;
const STOP_POLL_MS = 10;

export const SLAPD_SUFFIX = 'dc=example,dc=test';
export const SLAPD_ROOT_DN = `cn=admin,${SLAPD_SUFFIX}`;
export const SLAPD_ROOT_PW = 'relay-guard-test-secret';

/**
 * Active Directory's proxyAddresses, modelled in OpenLDAP's experimental OID arc (1.3.6.1.4.1.4203.666):
 * case-insensitive equality and substrings over Directory Strings, on an auxiliary class.
 */
const PROXY_ADDRESSES_SCHEMA = `attributetype ( 1.3.6.1.4.1.4203.666.11.1 NAME 'proxyAddresses'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
objectclass ( 1.3.6.1.4.1.4203.666.11.2 NAME 'exchangeRecipient' SUP top AUXILIARY MAY proxyAddresses )
`;

/** The suffix entry and ou=people: the start of every seed. */
export const BASE_LDIF = `dn: ${SLAPD_SUFFIX}
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: ou=people,${SLAPD_SUFFIX}
objectClass: organizationalUnit
ou: people
`;

/** Users: alice by proxyAddresses (primary SMTP: and alias smtp:), bob by mail, dave only by a non-SMTP address. */
export const SEED_LDIF = `${BASE_LDIF}
dn: cn=Alice,ou=people,${SLAPD_SUFFIX}
objectClass: inetOrgPerson
objectClass: exchangeRecipient
cn: Alice
sn: Alice
proxyAddresses: SMTP:alice@example.test
proxyAddresses: smtp:ally@example.test
proxyAddresses: X500:/o=Example/ou=First Administrative Group/cn=Recipients/cn=alice

dn: cn=Bob,ou=people,${SLAPD_SUFFIX}
objectClass: inetOrgPerson
cn: Bob
sn: Bob
mail: bob@example.test

dn: cn=Dave,ou=people,${SLAPD_SUFFIX}
objectClass: inetOrgPerson
objectClass: exchangeRecipient
cn: Dave
sn: Dave
proxyAddresses: SIP:dave@example.test
`;

export interface SlapdTls {
  certFile: string;
  keyFile: string;
}

export interface Slapd {
  /** ldap:// (StartTLS offered when started with `tls`). */
  readonly url: string;
  readonly port: number;
  /** ldaps:// on a second port, when started with `tls`. */
  readonly ldapsUrl: string | undefined;
  readonly running: boolean;
  /** Stop the server (SIGTERM, SIGKILL after a bounded wait); the data stays. */
  stop(): Promise<void>;
  /** Start it again on the same port with the same data. */
  start(): Promise<void>;
  /** Freeze the process (SIGSTOP): connections are accepted by the kernel but never answered. */
  pause(): Promise<void>;
  /** Thaw it (SIGCONT). */
  resume(): void;
  /** Stop and delete the temp folder. */
  close(): Promise<void>;
}

export async function assertSlapdInstalled(): Promise<void> {
  for (const bin of [SLAPD, LDAPADD]) {
    try {
      await access(bin, constants.X_OK);
    } catch {
      throw new Error(
        `${bin} not found: the LDAP integration tests need Debian's OpenLDAP ` +
          `(DEBIAN_FRONTEND=noninteractive apt-get install -y slapd ldap-utils; CI installs it)`,
      );
    }
  }
}

function slapdConf(dir: string, tls: SlapdTls | undefined): string {
  return [
    ...(tls ? [`TLSCertificateFile ${tls.certFile}`, `TLSCertificateKeyFile ${tls.keyFile}`] : []),
    `include ${SCHEMA_DIR}/core.schema`,
    `include ${SCHEMA_DIR}/cosine.schema`,
    `include ${SCHEMA_DIR}/inetorgperson.schema`,
    `include ${join(dir, 'proxy-addresses.schema')}`,
    `pidfile ${join(dir, 'slapd.pid')}`,
    `argsfile ${join(dir, 'slapd.args')}`,
    `modulepath ${MODULE_PATH}`,
    'moduleload back_mdb',
    'database mdb',
    'maxsize 16777216',
    `suffix "${SLAPD_SUFFIX}"`,
    `rootdn "${SLAPD_ROOT_DN}"`,
    `rootpw ${SLAPD_ROOT_PW}`,
    `directory ${join(dir, 'db')}`,
    'index objectClass eq',
    '',
  ].join('\n');
}

/** Spawn slapd in the foreground; resolve once it logs "slapd starting", reject if it exits first. */
async function spawnSlapd(conf: string, urls: string[]): Promise<ChildProcess> {
  // -d none: stay in the foreground and log only the start/stop lines to stderr.
  const listen = urls.map((u) => `${u}/`).join(' ');
  const child = spawn(SLAPD, ['-f', conf, '-h', listen, '-d', 'none'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`slapd did not start within ${START_TIMEOUT_MS} ms: ${stderr}`));
    }, START_TIMEOUT_MS);
    const onData = (chunk: Buffer): void => {
      stderr += chunk.toString('utf8');
      if (stderr.includes('slapd starting')) {
        clearTimeout(timer);
        child.off('exit', onExit);
        resolve();
      }
    };
    const onExit = (code: number | null, signal: string | null): void => {
      clearTimeout(timer);
      reject(new Error(`slapd exited (code ${code}, signal ${signal}) before starting: ${stderr.trim()}`));
    };
    child.stderr?.on('data', onData);
    child.once('exit', onExit);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
  child.stderr?.resume();
  return child;
}

/**
 * Confirm the server answers a bind as the root DN. slapd logs "slapd starting" before its daemon
 * thread calls listen(), so the first connects may be refused: poll, a bounded number of times.
 */
async function waitForBind(url: string): Promise<void> {
  let lastErr: unknown;
  for (let attempt = 0; attempt < BIND_ATTEMPTS; attempt++) {
    if (attempt > 0) await delay(BIND_RETRY_MS);
    const client = new Client({ url, timeout: 2000, connectTimeout: 2000 });
    try {
      await client.bind(SLAPD_ROOT_DN, SLAPD_ROOT_PW);
      await client.unbind();
      return;
    } catch (err) {
      lastErr = err;
      await client.unbind().catch(() => undefined);
    }
  }
  throw new Error(`slapd at ${url} does not answer a bind: ${String(lastErr)}`);
}

/** Linux: is every thread of the process in state T (stopped)? */
async function allThreadsStopped(pid: number): Promise<boolean> {
  const tids = await readdir(`/proc/${pid}/task`);
  for (const tid of tids) {
    const stat = await readFile(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    // The state follows the parenthesised command name, which may itself contain spaces.
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    if (state !== 'T' && state !== 't') return false;
  }
  return true;
}

export async function startSlapd(opts: { seedLdif?: string; tls?: SlapdTls } = {}): Promise<Slapd> {
  await assertSlapdInstalled();
  const dir = await mkdtemp(join(tmpdir(), 'rg-slapd-'));
  await mkdir(join(dir, 'db'));
  await writeFile(join(dir, 'proxy-addresses.schema'), PROXY_ADDRESSES_SCHEMA);
  const conf = join(dir, 'slapd.conf');
  await writeFile(conf, slapdConf(dir, opts.tls));

  let child: ChildProcess | undefined;
  let port = 0;
  let url = '';
  let ldapsUrl: string | undefined;
  const urls = (): string[] => (ldapsUrl === undefined ? [url] : [url, ldapsUrl]);
  // The free port may be taken between probe and bind: try a few.
  let lastErr: unknown;
  for (let attempt = 0; attempt < 3 && child === undefined; attempt++) {
    port = await freePort();
    url = `ldap://127.0.0.1:${port}`;
    if (opts.tls) ldapsUrl = `ldaps://127.0.0.1:${await freePort()}`;
    try {
      child = await spawnSlapd(conf, urls());
    } catch (err) {
      lastErr = err;
    }
  }
  if (child === undefined) {
    await rm(dir, { recursive: true, force: true });
    throw lastErr instanceof Error ? lastErr : new Error(String(lastErr));
  }
  await waitForBind(url);

  const ldif = join(dir, 'seed.ldif');
  await writeFile(ldif, opts.seedLdif ?? SEED_LDIF);
  await promisify(execFile)(LDAPADD, ['-x', '-H', url, '-D', SLAPD_ROOT_DN, '-w', SLAPD_ROOT_PW, '-f', ldif], { timeout: 10_000 });

  const stop = async (): Promise<void> => {
    const c = child;
    child = undefined;
    if (c === undefined || c.exitCode !== null || c.signalCode !== null) return;
    const exited = once(c, 'exit');
    c.kill('SIGTERM');
    const timer = setTimeout(() => c.kill('SIGKILL'), STOP_TIMEOUT_MS);
    try {
      await exited;
    } finally {
      clearTimeout(timer);
    }
  };

  return {
    url,
    port,
    ldapsUrl,
    get running() {
      return child !== undefined;
    },
    stop,
    async start() {
      if (child !== undefined) return;
      child = await spawnSlapd(conf, urls());
      await waitForBind(url);
    },
    async pause() {
      const c = child;
      if (c?.pid === undefined) throw new Error('slapd is not running');
      c.kill('SIGSTOP');
      // Signal delivery is asynchronous: poll /proc until every thread has stopped (bounded).
      for (let attempt = 0; attempt < STOP_POLL_ATTEMPTS; attempt++) {
        if (await allThreadsStopped(c.pid)) return;
        await delay(STOP_POLL_MS);
      }
      throw new Error('slapd did not stop on SIGSTOP');
    },
    resume() {
      child?.kill('SIGCONT');
    },
    async close() {
      child?.kill('SIGCONT');
      await stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
