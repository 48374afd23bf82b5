/**
 * The guard's server certificate: load PEM files, or generate a self-signed certificate when none is
 * configured; hot reload (file watch, debounced, and SIGHUP via reload()) that never drops a session.
 *
 * Sessions already established keep the SSL state they negotiated; only new handshakes use a
 * reloaded context. Three ways to hand the current context to a handshake:
 *  - STARTTLS (RFC 3207) upgrades: `new tls.TLSSocket(socket, mgr.socketOptions())`;
 *  - implicit TLS (RFC 8314 §3): `tls.createServer(mgr.serverOptions())` then `mgr.attach(server)`,
 *    so clients that send no SNI also get the new certificate after a reload;
 *  - SNI clients are always served the current context by the SNICallback.
 */
import { EventEmitter } from 'node:events';
import { watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { hostname as osHostname } from 'node:os';
import { isIP } from 'node:net';
import { dirname, resolve } from 'node:path';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import tls from 'node:tls';
import { generate } from 'selfsigned';

export interface TlsLog {
  info(o: object, m: string): void;
  warn(o: object, m: string): void;
  error(o: object, m: string): void;
}

export interface TlsContextOptions {
  /** PEM certificate (chain) file; with keyFile, or neither (self-signed). */
  certFile?: string;
  keyFile?: string;
  minVersion?: 'TLSv1.2' | 'TLSv1.3';
  /** OpenSSL cipher list for TLS ≤ 1.2; Node's default when absent. */
  ciphers?: string;
  /** Common name and DNS SAN of the self-signed certificate; the OS host name when absent. */
  hostname?: string;
  log: TlsLog;
  /** Watch the PEM files' directories and reload on change. */
  watch?: boolean;
  /** Quiet time after the last file event before reloading (certbot writes several files). */
  watchDebounceMs?: number;
}

export interface TlsReloadResult {
  ok: boolean;
  error?: string;
}

interface LoadedCertificate {
  cert: string;
  key: string;
  context: tls.SecureContext;
  notAfter: Date;
  fingerprint256: string;
}

const DEFAULT_DEBOUNCE_MS = 500;
const SELF_SIGNED_DAYS = 365;
const EXPIRY_WARNING_MS = 14 * 24 * 3600 * 1000;

export class TlsContextManager extends EventEmitter {
  private loaded: LoadedCertificate;
  private readonly watchers: FSWatcher[] = [];
  private debounceTimer: NodeJS.Timeout | undefined;
  /** Reloads run one after the other, never interleaved. */
  private reloadChain: Promise<unknown> = Promise.resolve();
  private closed = false;

  private constructor(
    private readonly opts: TlsContextOptions,
    initial: LoadedCertificate,
    /** True when no files are configured and the certificate was generated at start. */
    readonly selfSigned: boolean,
  ) {
    super();
    this.loaded = initial;
  }

  /** Load the configured files (throws on a bad file: config at startup fails loudly) or generate a self-signed pair. */
  static async create(opts: TlsContextOptions): Promise<TlsContextManager> {
    const { certFile, keyFile } = opts;
    if ((certFile === undefined) !== (keyFile === undefined)) {
      throw new Error('RG_ERR_CONFIG_TLS: certFile and keyFile must be configured together');
    }
    if (certFile === undefined || keyFile === undefined) {
      const name = opts.hostname ?? osHostname();
      const pems = await generateSelfSigned(name);
      const mgr = new TlsContextManager(opts, buildCertificate(pems.cert, pems.key, opts), true);
      opts.log.warn(
        { commonName: name, notAfter: mgr.notAfter.toISOString(), fingerprint256: mgr.fingerprint256 },
        'no tls certificate configured, using a generated self-signed certificate',
      );
      return mgr;
    }
    const pems = await readPems(certFile, keyFile);
    const mgr = new TlsContextManager(opts, buildCertificate(pems.cert, pems.key, opts), false);
    mgr.logLoaded('tls certificate loaded');
    if (opts.watch) mgr.startWatching(certFile, keyFile);
    return mgr;
  }

  /** The context new handshakes should use. */
  current(): tls.SecureContext {
    return this.loaded.context;
  }

  get notAfter(): Date {
    return this.loaded.notAfter;
  }

  /** SHA-256 fingerprint of the served certificate, "AB:CD:…" as Node's peer certificate reports it. */
  get fingerprint256(): string {
    return this.loaded.fingerprint256;
  }

  /**
   * Re-read the PEM files. A bad or mismatched pair keeps the old context and reports the error.
   * Emits 'reload' ({ notAfter, fingerprint256 }) when a different certificate was installed.
   */
  reload(): Promise<TlsReloadResult> {
    const run = this.reloadChain.then(() => this.reloadNow());
    this.reloadChain = run;
    return run;
  }

  /** Options for tls.createServer: the current pair for clients without SNI, SNICallback for the rest. */
  serverOptions(): tls.TlsOptions {
    return {
      ...this.contextOptions(),
      cert: this.loaded.cert,
      key: this.loaded.key,
      SNICallback: (_servername, cb) => cb(null, this.current()),
    };
  }

  /** Options for a server-side STARTTLS upgrade: `new tls.TLSSocket(plainSocket, mgr.socketOptions())`. */
  socketOptions(): tls.TLSSocketOptions {
    return {
      isServer: true,
      secureContext: this.current(),
      SNICallback: (_servername, cb) => cb(null, this.current()),
    };
  }

  /**
   * Keep a tls.Server's default context (used for clients that send no SNI) in step with reloads.
   * Returns a function that detaches. Established connections are not affected (Node docs, setSecureContext).
   */
  attach(server: tls.Server): () => void {
    const onReload = (): void => server.setSecureContext(this.serverOptions());
    this.on('reload', onReload);
    return () => this.off('reload', onReload);
  }

  /** Stop watching files; pending debounced reloads are dropped. */
  close(): void {
    this.closed = true;
    if (this.debounceTimer) clearTimeout(this.debounceTimer);
    this.debounceTimer = undefined;
    for (const w of this.watchers.splice(0)) w.close();
  }

  private contextOptions(): tls.SecureContextOptions {
    return contextOptionsOf(this.opts);
  }

  private async reloadNow(): Promise<TlsReloadResult> {
    const { certFile, keyFile, log } = this.opts;
    if (certFile === undefined || keyFile === undefined) {
      log.info({}, 'tls reload skipped: self-signed certificate has no files');
      return { ok: true };
    }
    let next: LoadedCertificate;
    try {
      const pems = await readPems(certFile, keyFile);
      if (pems.cert === this.loaded.cert && pems.key === this.loaded.key) {
        log.info({ certFile }, 'tls certificate unchanged');
        return { ok: true };
      }
      next = buildCertificate(pems.cert, pems.key, this.opts);
    } catch (err) {
      const error = err instanceof Error ? err.message : String(err);
      log.error({ err, certFile, keyFile }, 'tls reload failed, keeping the previous certificate');
      return { ok: false, error };
    }
    this.loaded = next;
    this.logLoaded('tls certificate reloaded');
    this.emit('reload', { notAfter: next.notAfter, fingerprint256: next.fingerprint256 });
    return { ok: true };
  }

  private logLoaded(message: string): void {
    const { notAfter, fingerprint256 } = this.loaded;
    const fields = { certFile: this.opts.certFile, notAfter: notAfter.toISOString(), fingerprint256 };
    this.opts.log.info(fields, message);
    const left = notAfter.getTime() - Date.now();
    if (left <= 0) this.opts.log.warn(fields, 'tls certificate has expired');
    else if (left < EXPIRY_WARNING_MS) this.opts.log.warn(fields, 'tls certificate expires soon');
  }

  /**
   * Watch the directories, not the files: renewal tools replace files by rename (and Kubernetes
   * swaps a symlinked directory), which a watch on the old inode would never see.
   */
  private startWatching(certFile: string, keyFile: string): void {
    const debounceMs = this.opts.watchDebounceMs ?? DEFAULT_DEBOUNCE_MS;
    const dirs = new Set([dirname(resolve(certFile)), dirname(resolve(keyFile))]);
    const onChange = (): void => {
      if (this.closed) return;
      if (this.debounceTimer) clearTimeout(this.debounceTimer);
      this.debounceTimer = setTimeout(() => {
        this.debounceTimer = undefined;
        void this.reload();
      }, debounceMs);
      this.debounceTimer.unref();
    };
    for (const dir of dirs) {
      try {
        const w = watch(dir, { persistent: false }, onChange);
        w.on('error', (err) => this.opts.log.warn({ err, dir }, 'tls certificate watch failed'));
        this.watchers.push(w);
      } catch (err) {
        this.opts.log.warn({ err, dir }, 'tls certificate watch failed');
      }
    }
  }
}

function contextOptionsOf(opts: TlsContextOptions): tls.SecureContextOptions {
  return {
    minVersion: opts.minVersion ?? 'TLSv1.2',
    ...(opts.ciphers !== undefined ? { ciphers: opts.ciphers } : {}),
    honorCipherOrder: true,
  };
}

async function readPems(certFile: string, keyFile: string): Promise<{ cert: string; key: string }> {
  const [cert, key] = await Promise.all([readFile(certFile, 'utf8'), readFile(keyFile, 'utf8')]);
  return { cert, key };
}

/** Validate a PEM pair and build its context; throws with a readable message on any fault. */
function buildCertificate(cert: string, key: string, opts: TlsContextOptions): LoadedCertificate {
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch {
    throw new Error('certificate file holds no valid PEM certificate');
  }
  let privateKey;
  try {
    privateKey = createPrivateKey(key);
  } catch {
    throw new Error('key file holds no valid PEM private key');
  }
  if (!x509.checkPrivateKey(privateKey)) throw new Error('private key does not match the certificate');
  const context = tls.createSecureContext({ ...contextOptionsOf(opts), cert, key });
  return { cert, key, context, notAfter: new Date(x509.validTo), fingerprint256: x509.fingerprint256 };
}

async function generateSelfSigned(name: string): Promise<{ cert: string; key: string }> {
  const notBeforeDate = new Date(Date.now() - 60_000);
  const notAfterDate = new Date(notBeforeDate.getTime() + SELF_SIGNED_DAYS * 24 * 3600 * 1000);
  const pems = await generate([{ name: 'commonName', value: name }], {
    keySize: 2048,
    algorithm: 'sha256',
    notBeforeDate,
    notAfterDate,
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
      { name: 'extKeyUsage', serverAuth: true },
      { name: 'subjectAltName', altNames: [isIP(name) ? { type: 7, ip: name } : { type: 2, value: name }] },
    ],
  });
  return { cert: pems.cert, key: pems.private };
}
