/**
 * Raw SMTP dialog over TLS: upgrade a plain socket after STARTTLS (RFC 3207) or connect with
 * implicit TLS (RFC 8314). The dialog itself is dialog.ts's Dialog over the TLSSocket, so replies
 * are read the same way (whole, multi-line aware) and waits are bounded.
 */
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { Dialog } from './dialog.js';
import { withTimeout } from './with-timeout.js';

export type TlsDialog = Dialog<tls.TLSSocket>;

export const TlsDialog = {
  /** Take over a plain socket that just got "220 Ready to start TLS" and run the client handshake. */
  upgrade(plain: net.Socket, opts: tls.ConnectionOptions = {}): Promise<TlsDialog> {
    plain.removeAllListeners('data');
    plain.removeAllListeners('close');
    return handshake(tls.connect({ socket: plain, rejectUnauthorized: false, ...opts }));
  },

  /** Implicit TLS over any stream (e.g. one that adds a PROXY header in front). */
  over(stream: Duplex, opts: tls.ConnectionOptions = {}): Promise<TlsDialog> {
    return handshake(tls.connect({ socket: stream as net.Socket, rejectUnauthorized: false, ...opts }));
  },

  /** Implicit TLS: the handshake comes first, then the greeting. */
  connect(port: number, localAddress?: string, opts: tls.ConnectionOptions = {}): Promise<TlsDialog> {
    return handshake(tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false, ...(localAddress ? { localAddress } : {}), ...opts }));
  },
};

function handshake(s: tls.TLSSocket): Promise<TlsDialog> {
  const d = Dialog.wrap(s);
  return withTimeout(
    new Promise((resolve, reject) => {
      s.once('secureConnect', () => resolve(d));
      s.once('error', reject);
      s.once('close', () => reject(new Error('closed during the TLS handshake')));
    }),
    5000,
    'tls handshake',
  );
}
