/**
 * Writes made in one turn of the event loop leave as one system call. A proxy answers pipelined
 * commands one at a time (50 RCPTs: 50 commands to the backend, 50 replies to the client); written
 * one by one, each is a write(2) and a loopback delivery, the largest part of the guard's CPU per
 * 50-recipient message (README "Performance"). The first write of a turn corks the socket and a
 * process.nextTick uncorks it: after the current callback, before the event loop looks at I/O again,
 * so nothing waits. Order is kept: corked writes wait in the socket's own buffer.
 *
 * Message data is not written this way (DataRelay needs to know whether a write is still pending
 * when the read is done, client-reads.ts), and a socket is flushed (flushBatched) before anything
 * writes to its handle other than the socket itself: a TLS layer put over it (STARTTLS).
 */
import type { Writable } from 'node:stream';

export function writeBatched(socket: Writable, data: Buffer): boolean {
  if (socket.writableCorked === 0) {
    socket.cork();
    process.nextTick(flushBatched, socket);
  }
  return socket.write(data);
}

/** Write out what writeBatched holds now. */
export function flushBatched(socket: Writable): void {
  while (socket.writableCorked > 0) socket.uncork();
}
