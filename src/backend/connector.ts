/**
 * BackendConnector: the steps that open one backend session, in order — connect (trying each
 * backend in turn; an outbound PROXY header first when configured), greeting, backend STARTTLS,
 * XCLIENT, and the XFORWARD hook before each MAIL. Per-client seats run all of it for their client;
 * the pool runs the STARTTLS step on each session it opens (XCLIENT/XFORWARD are per transaction
 * there, backend-pool.ts). The readiness probe lives here too: it is a connect and a greeting.
 */
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import type { Metrics } from '../observability/metrics.js';
import type { Reply } from '../smtp/reply.js';
import { BackendLink, type BackendFailure, type BackendLinkOptions, type BackendTarget } from './backend-link.js';
import { startBackendTls } from './backend-tls.js';
import { formatProxyForSelf, formatProxyPreamble, sendXclient, xforwardBeforeMail, type ClientEndpoint } from './xclient.js';

export interface BackendConnectorOptions {
  readonly targets: readonly BackendTarget[];
  readonly link: BackendLinkOptions;
  /** Name the guard gives in its own EHLO (backend STARTTLS, XCLIENT). */
  readonly ehloName: string;
  readonly proxyProtocol: 'off' | 'v1' | 'v2';
  readonly xclient: boolean;
  readonly xforward: boolean;
  /** Backend leg STARTTLS (issue 4). */
  readonly tls: { readonly mode: 'off' | 'starttls'; readonly rejectUnauthorized: boolean; readonly ca?: Buffer; readonly handshakeTimeoutMs: number };
  readonly metrics: Metrics;
  readonly log: Logger;
}

export type Connected = { ok: true; link: BackendLink; greeting: Reply } | { ok: false; failure: BackendFailure; target?: BackendTarget };

export class BackendConnector {
  private readonly labels: string[];

  constructor(private readonly opts: BackendConnectorOptions) {
    this.labels = opts.targets.map((t) => t.name ?? '');
  }

  /** The outbound PROXY header names the guard address the client reached (ClientEndpoint.localIp/localPort). */
  get namesLocalAddress(): boolean {
    return this.opts.proxyProtocol !== 'off';
  }

  /** A backend session for one client: every configured step ran, or it failed and is closed. */
  async connect(client: ClientEndpoint): Promise<Connected> {
    const { proxyProtocol, xclient, xforward } = this.opts;
    const r = await this.open(proxyProtocol !== 'off' ? formatProxyPreamble(proxyProtocol, client) : undefined);
    if (!r.ok) return r;
    const t = await this.secure(r.link);
    if (!t.ok) {
      r.link.close(false);
      return { ok: false, failure: t.failure, target: r.link.target };
    }
    let xclientSent = false;
    if (xclient) {
      const x = await sendXclient(r.link, client, this.opts.ehloName);
      if (!x.ok) {
        this.opts.log.warn({ backend: r.link.target.name, reason: x.reason }, 'backend xclient failed');
        r.link.close(false);
        return { ok: false, failure: x.failure, target: r.link.target };
      }
      if (!x.sent) this.opts.log.info({ backend: r.link.target.name, reason: x.reason }, 'backend xclient not sent');
      xclientSent = x.sent;
    }
    if (xforward && !xclientSent) {
      // XFORWARD before each MAIL, with the HELO the client gave on this connection (forwarded as is).
      let refusalLogged = false;
      r.link.beforeMail = xforwardBeforeMail(
        (l) => ({ ...client, helo: l.lastHelo?.name ?? '', esmtp: l.lastHelo?.verb === 'EHLO' }),
        (l, rep) => {
          if (refusalLogged) return;
          refusalLogged = true;
          this.opts.log.warn({ backend: l.target.name, backendSession: l.tag, code: rep.code }, 'backend refused XFORWARD; it sees the guard as the client');
        },
      );
    }
    return r;
  }

  /**
   * A backend session for the guard's own use (the auth canary, issue 16): a PROXY header naming the
   * guard itself when one is configured, backend STARTTLS; no client to tell the backend about.
   */
  async connectOwn(): Promise<Connected> {
    const { proxyProtocol } = this.opts;
    const r = await this.open(proxyProtocol !== 'off' ? (socket: Socket) => formatProxyForSelf(proxyProtocol, socket) : undefined);
    if (!r.ok) return r;
    const t = await this.secure(r.link);
    if (!t.ok) {
      r.link.close(false);
      return { ok: false, failure: t.failure, target: r.link.target };
    }
    return r;
  }

  /** Backend leg STARTTLS when configured (right after the greeting); a failed handshake drops the link. */
  async secure(link: BackendLink): Promise<{ ok: true } | { ok: false; failure: BackendFailure }> {
    const tls = this.opts.tls;
    if (tls.mode !== 'starttls') return { ok: true };
    const t = await startBackendTls(link, {
      ehloName: this.opts.ehloName,
      rejectUnauthorized: tls.rejectUnauthorized,
      handshakeTimeoutMs: tls.handshakeTimeoutMs,
      ...(tls.ca ? { ca: tls.ca } : {}),
    });
    if (t.ok && !t.tls) this.opts.log.warn({ backend: link.target.name, reason: t.reason }, 'backend tls not started, continuing in plaintext');
    if (!t.ok) this.opts.log.warn({ backend: link.target.name, reason: t.reason }, 'backend tls failed');
    return t.ok ? { ok: true } : { ok: false, failure: t.failure };
  }

  /** Connect to the first backend that answers, and keep the backend metrics. */
  private async open(preamble?: BackendLinkOptions['preamble']): Promise<Connected> {
    const { metrics } = this.opts;
    const r = await BackendLink.connect(this.opts.targets, preamble ? { ...this.opts.link, preamble } : this.opts.link);
    if (r.ok) {
      metrics.backendConnectDuration.observe(r.connectSeconds);
      const name = r.link.target.name ?? '';
      metrics.backendUp.set({ backend: name }, 1);
      metrics.backendConnections.inc({ backend: name });
      r.link.once('closed', () => metrics.backendConnections.dec({ backend: name }));
      // Backends before the one that answered are down.
      for (const l of this.labels) {
        if (l === name) break;
        metrics.backendUp.set({ backend: l }, 0);
      }
    } else for (const l of this.labels) metrics.backendUp.set({ backend: l }, 0);
    return r;
  }
}

/**
 * Readiness: a backend answers with a 220 greeting (a 421 — e.g. Exchange at its connection limit —
 * is not ready). A backend that expects a PROXY header gets one naming the probe itself.
 */
export async function backendReady(targets: readonly BackendTarget[], timeoutMs: number, proxy: 'off' | 'v1' | 'v2'): Promise<boolean> {
  const r = await BackendLink.connect(targets, {
    connectTimeoutMs: Math.min(timeoutMs, 3000),
    greetingTimeoutMs: 3000,
    replyTimeoutMs: 3000,
    ...(proxy !== 'off' ? { preamble: (socket: Socket) => formatProxyForSelf(proxy, socket) } : {}),
  });
  if (!r.ok) return false;
  r.link.close(true);
  return r.greeting.code === 220;
}
