/**
 * Listeners: one net/tls server per configured listener; PROXY protocol (v1/v2) in front when
 * configured, accepted only from the listed load-balancer networks; per-listener connection cap.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { Logger } from 'pino';
import type { ListenerConfig } from '../config/schema.js';
import { NetworkSet } from '../policy/network-set.js';
import { parseNetwork } from '../policy/ip-address.js';
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
const PROXY_REFUSED = '421 4.7.0 PROXY protocol header refused\r\n';

export class SmtpListener {
  readonly server: net.Server;
  private readonly proxyNetworks: NetworkSet;
  private readonly open = new Set<net.Socket>();

  constructor(
    readonly config: ListenerConfig,
    private readonly tlsManager: TlsContextManager | undefined,
    private readonly onConnection: (c: AcceptedConnection) => void,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {
    this.proxyNetworks = compileNetworks(config.proxyNetworks, `listener ${config.name} proxyNetworks`);
    if (config.kind === 'smtps') {
      if (!tlsManager) throw new Error(`listener ${config.name}: smtps needs TLS`);
      // Implicit TLS (RFC 8314 §3): the PROXY header, if any, comes before the handshake.
      const server = net.createServer({ pauseOnConnect: true }, (raw) => this.accept(raw));
      this.server = server;
    } else {
      this.server = net.createServer({ pauseOnConnect: true }, (raw) => this.accept(raw));
    }
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
    this.open.add(raw);
    raw.once('close', () => this.open.delete(raw));
    const peerIp = canonicalClientIp(raw.remoteAddress);
    const peerPort = raw.remotePort ?? 0;
    if (this.config.proxyProtocol === 'off') return this.afterProxy(raw, peerIp, peerPort);
    this.readProxyHeader(raw, peerIp, peerPort);
  }

  private readProxyHeader(raw: net.Socket, peerIp: string, peerPort: number): void {
    let buf = Buffer.alloc(0);
    const fromBalancer = this.proxyNetworks.containsText(peerIp);
    const refuse = (reason: string) => {
      cleanup();
      this.metrics.connections.inc({ listener: this.config.name, outcome: 'proxy_refused' });
      this.log.warn({ peerIp, reason }, 'proxy header refused');
      raw.end(PROXY_REFUSED);
      raw.destroySoon?.();
    };
    const timer = setTimeout(() => refuse('timeout'), PROXY_HEADER_TIMEOUT_MS);
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
        if (this.config.proxyProtocol === 'required') return refuse('header missing');
        cleanup();
        raw.pause();
        raw.unshift(buf);
        return this.afterProxy(raw, peerIp, peerPort);
      }
      // A PROXY header from anyone but a configured load balancer is a spoofing attempt.
      if (!fromBalancer) return refuse('peer not in proxyNetworks');
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
    raw.resume();
  }
}
