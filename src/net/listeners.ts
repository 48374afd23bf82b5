/**
 * Listeners: one net/tls server per configured listener; PROXY protocol (v1/v2) in front when
 * configured, accepted only from the listed load-balancer networks; per-listener connection cap.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { Logger } from 'pino';
import type { ListenerConfig } from '../config/schema.js';
import { NetworkSet } from '../policy/network-set.js';
import { parseNetwork } from '../util/ip-address.js';
import { parseProxyHeader, PROXY_V2_MAX_BYTES } from './proxy-protocol.js';
import type { TlsContextManager } from './tls-context.js';
import type { Metrics } from '../observability/metrics.js';

export interface AcceptedConnection {
  socket: net.Socket;
  clientIp: string;
  clientPort: number;
  tls: boolean;
}

/** "::ffff:192.0.2.1" → "192.0.2.1"; everything else as Node reports it. */
export function canonicalClientIp(addr: string | undefined): string {
  if (!addr) return '0.0.0.0';
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(addr);
  return m ? m[1]! : addr.toLowerCase();
}

export function compileNetworks(list: readonly string[], what: string): NetworkSet {
  return new NetworkSet(
    list.map((s) => {
      const p = parseNetwork(s);
      if (!p.ok) throw new Error(`${what}: ${s}: ${p.reason}`);
      return p.network;
    }),
  );
}

const PROXY_HEADER_TIMEOUT_MS = 10_000;
/** `optional`: how long a peer from proxyNetworks may stay silent before it is taken as a direct client. */
const PROXY_OPTIONAL_WAIT_MS = 2_000;
const PROXY_REFUSED = '421 4.7.0 PROXY protocol header refused\r\n';

export class SmtpListener {
  readonly server: net.Server;
  private readonly proxyNetworks: NetworkSet;

  constructor(
    readonly config: ListenerConfig,
    private readonly tlsManager: TlsContextManager | undefined,
    private readonly onConnection: (c: AcceptedConnection) => void,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {
    this.proxyNetworks = compileNetworks(config.proxyNetworks, `listener ${config.name} proxyNetworks`);
    if (config.kind === 'smtps' && !tlsManager) throw new Error(`listener ${config.name}: smtps needs TLS`);
    // smtps: implicit TLS (RFC 8314 §3) is set up on the accepted socket, after any PROXY header.
    // Plain listeners allow half-open sockets: a client may send its last commands and FIN at once;
    // the session answers them all, then closes (it ends the socket itself).
    this.server = net.createServer({ pauseOnConnect: true, allowHalfOpen: config.kind !== 'smtps' }, (raw) => this.accept(raw));
    this.server.maxConnections = config.maxConnections;
    this.server.on('drop', () => this.metrics.connections.inc({ listener: config.name, outcome: 'capacity' }));
  }

  listen(): Promise<net.AddressInfo> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.config.port, this.config.address, () => {
        this.server.off('error', reject);
        resolve(this.server.address() as net.AddressInfo);
      });
    });
  }

  get address(): net.AddressInfo {
    return this.server.address() as net.AddressInfo;
  }

  /**
   * Stop accepting; open sessions are drained by the guard. Resolves at once: net.Server#close's
   * callback waits for every open connection, which would stall the guard's drain.
   */
  close(): Promise<void> {
    if (this.server.listening) this.server.close();
    return Promise.resolve();
  }

  private accept(raw: net.Socket): void {
    raw.on('error', () => raw.destroy());
    const peerIp = canonicalClientIp(raw.remoteAddress);
    const peerPort = raw.remotePort ?? 0;
    const mode = this.config.proxyProtocol;
    if (mode === 'off') return this.afterProxy(raw, peerIp, peerPort);
    const fromBalancer = this.proxyNetworks.containsText(peerIp);
    if (fromBalancer) return this.readProxyHeader(raw, peerIp, peerPort);
    // Not a configured load balancer: it may never speak for a client (proxy-protocol.txt §1,
    // "the receiver must only accept the header from trusted sources").
    if (mode === 'required') return this.refuseProxy(raw, peerIp, 'peer not in proxyNetworks');
    // optional: an ordinary SMTP client waits for our greeting, so start the session now; a PROXY
    // signature in its first bytes is a spoofing attempt and closes the connection.
    this.refuseProxySignature(raw, peerIp);
    this.afterProxy(raw, peerIp, peerPort);
  }

  private refuseProxy(raw: net.Socket, peerIp: string, reason: string): void {
    this.metrics.connections.inc({ listener: this.config.name, outcome: 'proxy_refused' });
    this.metrics.commandRefusals.inc({ rule: 'proxy-refused' });
    this.log.warn({ peerIp, reason, ruleId: 'proxy-refused' }, 'proxy header refused');
    raw.end(PROXY_REFUSED);
    raw.destroySoon?.();
  }

  /**
   * Watch the first bytes of a connection that must not carry a PROXY header; destroy it (before
   * anything is forwarded) when they start like one. Runs ahead of the session's own reader.
   */
  private refuseProxySignature(raw: net.Socket, peerIp: string): void {
    let seen = Buffer.alloc(0);
    const sniff = (chunk: Buffer): void => {
      seen = Buffer.concat([seen, chunk]).subarray(0, 16);
      const r = parseProxyHeader(seen);
      if (r.status === 'absent' || r.status === 'invalid') {
        raw.off('data', sniff);
        return;
      }
      if (seen.length >= 16 || r.status === 'ok') {
        raw.off('data', sniff);
        this.metrics.connections.inc({ listener: this.config.name, outcome: 'proxy_refused' });
        this.metrics.commandRefusals.inc({ rule: 'proxy-refused' });
        this.log.warn({ peerIp, reason: 'peer not in proxyNetworks', ruleId: 'proxy-refused' }, 'proxy header refused');
        raw.destroy();
      }
    };
    raw.prependListener('data', sniff);
  }

  private readProxyHeader(raw: net.Socket, peerIp: string, peerPort: number): void {
    let buf = Buffer.alloc(0);
    const optional = this.config.proxyProtocol === 'optional';
    const refuse = (reason: string) => {
      cleanup();
      this.refuseProxy(raw, peerIp, reason);
    };
    const proceedWithout = () => {
      cleanup();
      raw.pause();
      if (buf.length > 0) raw.unshift(buf);
      this.afterProxy(raw, peerIp, peerPort);
    };
    // A balancer sends the header at once. With `optional`, a silent peer from the balancer
    // network (a direct SMTP client waiting for our greeting) gets a session after a short wait.
    const timer = optional
      ? setTimeout(proceedWithout, PROXY_OPTIONAL_WAIT_MS)
      : setTimeout(() => refuse('timeout'), PROXY_HEADER_TIMEOUT_MS);
    const cleanup = () => {
      clearTimeout(timer);
      raw.off('data', onData);
    };
    const onData = (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      const r = parseProxyHeader(buf);
      if (r.status === 'need-more') {
        if (buf.length > PROXY_V2_MAX_BYTES) refuse('header too long');
        return;
      }
      if (r.status === 'invalid') return refuse(r.reason);
      if (r.status === 'absent') {
        if (!optional) return refuse('header missing');
        return proceedWithout();
      }
      cleanup();
      raw.pause();
      const rest = buf.subarray(r.consumed);
      if (rest.length > 0) raw.unshift(rest);
      const h = r.header;
      if (h.command === 'proxy' && h.sourceAddress) this.afterProxy(raw, canonicalClientIp(h.sourceAddress), h.sourcePort ?? 0);
      else this.afterProxy(raw, peerIp, peerPort); // LOCAL / UNKNOWN: the balancer's own connection
    };
    raw.on('data', onData);
    raw.resume();
  }

  private afterProxy(raw: net.Socket, clientIp: string, clientPort: number): void {
    if (this.config.kind !== 'smtps') {
      this.onConnection({ socket: raw, clientIp, clientPort, tls: false });
      raw.resume();
      return;
    }
    const secure = new tls.TLSSocket(raw, { ...this.tlsManager!.socketOptions(), isServer: true });
    const timer = setTimeout(() => secure.destroy(), PROXY_HEADER_TIMEOUT_MS);
    secure.once('secure', () => {
      clearTimeout(timer);
      this.metrics.tlsHandshakes.inc({ kind: 'implicit', result: 'success' });
      this.onConnection({ socket: secure, clientIp, clientPort, tls: true });
    });
    secure.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      this.metrics.tlsHandshakes.inc({ kind: 'implicit', result: 'failure' });
      this.log.info({ clientIp, err: { code: err.code, message: err.message } }, 'tls handshake failed');
      secure.destroy();
    });
    // No raw.resume(): it would flow bytes already buffered (a ClientHello that arrived with the PROXY
    // header and was unshifted) to no listener. The TLS socket reads them itself (initRead).
  }
}
