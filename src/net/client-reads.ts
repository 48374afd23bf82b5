/**
 * ClientReads: a plaintext client socket reads into buffers the guard owns (Node's `onread`),
 * instead of a fresh 64 KiB allocation per read that Node then shrinks to the bytes read.
 *
 * - Every socket reads into one buffer the whole process shares (SHARED_BYTES). A read is handled
 *   to its end before the next one (one event loop), so sharing is safe as long as nothing keeps a
 *   view of it: the session copies what it keeps (command bytes, the bytes after an end-of-data),
 *   and message bytes read into it are forwarded as a copy.
 * - A session streaming a large message asks for a buffer of its own (wantPrivate): BIG_BYTES,
 *   from a small pool. Reads into it are forwarded to the backend without a copy, and fewer,
 *   larger reads mean fewer system calls per MiB. When a write is still holding a view of it after
 *   the read was handled (the backend is slower than the client: the kernel did not take it all),
 *   the buffer is pinned: it never goes back to the pool, and the socket's next read goes into
 *   another one. At the end of the message the buffer goes back to the pool (unless pinned).
 * - At most MAX_PRIVATE private buffers are out at once (MAX_PRIVATE × BIG_BYTES of memory);
 *   beyond that a session streams through the shared buffer, with a copy per read.
 *
 * Node gives `onread` to sockets it creates through `new net.Socket` or `net.connect`, not to the
 * ones `net.Server` accepts: adopt() moves an accepted socket's handle to a new socket that has it
 * (see there). Without that handle (another runtime, a TLS socket) the caller keeps the socket and
 * its 'data' events.
 */
import net from 'node:net';

/** The buffer all plaintext client sockets read into. */
export const SHARED_BYTES = 64 * 1024;
/** A session's own buffer while it streams a large message. */
export const BIG_BYTES = 256 * 1024;
/** Private buffers out at once, at most (16 MiB). */
export const MAX_PRIVATE = 64;
/** Free private buffers kept for the next session (the rest are left to the GC). */
const POOL_KEEP = 16;

let shared: Buffer | undefined;
const pool: Buffer[] = [];
let privateOut = 0;
let pinnedTotal = 0;

/** For tests: private buffers out now, kept free, and pinned so far (each then left to the GC). */
export function clientReadStats(): { privateOut: number; pooled: number; pinned: number } {
  return { privateOut, pooled: pool.length, pinned: pinnedTotal };
}

export class ClientReads {
  /** Where the bytes of each read go (the session sets it); undefined drops them (after STARTTLS). */
  deliver: ((chunk: Buffer) => void) | undefined;
  /** This socket's own buffer, while it has one. */
  private own: Buffer | undefined;
  private pinned = false;
  /** The buffer the read being handled went into. */
  private current: Buffer | undefined;
  private wanted = false;

  /** onread.buffer: the buffer the socket's next read goes into (Node asks after every read). */
  readonly next = (): Buffer => {
    if (this.own && this.pinned) {
      // A write still reads from it: this socket's next read must not overwrite those bytes.
      this.own = undefined;
      this.pinned = false;
      privateOut--;
    }
    if (this.wanted && !this.own && privateOut < MAX_PRIVATE) {
      this.own = pool.pop() ?? Buffer.allocUnsafe(BIG_BYTES);
      privateOut++;
    }
    if (!this.wanted && this.own) this.giveBack();
    return this.own ?? (shared ??= Buffer.allocUnsafe(SHARED_BYTES));
  };

  /** onread.callback: the bytes of one read, handed on as a view valid during the call. */
  readonly onRead = (nread: number, buf: Uint8Array): boolean => {
    this.current = buf as Buffer;
    try {
      this.deliver?.((buf as Buffer).subarray(0, nread));
    } finally {
      this.current = undefined;
    }
    return true;
  };

  /** The bytes being handled lie in this socket's own buffer: they may be written without a copy. */
  get privateView(): boolean {
    return this.current !== undefined && this.current === this.own;
  }

  /** A write still holds a view of this socket's own buffer: never read into it again. */
  pin(): void {
    if (!this.privateView || this.pinned) return;
    this.pinned = true;
    pinnedTotal++;
  }

  /** Ask for a buffer of its own from the next read on (a large message is streaming). */
  wantPrivate(): void {
    this.wanted = true;
  }

  /** The message ended: back to the shared buffer from the next read on. */
  release(): void {
    this.wanted = false;
  }

  /** The socket closed: its buffer goes back to the pool unless a write still holds it. */
  close(): void {
    this.wanted = false;
    this.deliver = undefined;
    if (this.own) this.giveBack();
  }

  private giveBack(): void {
    const own = this.own!;
    this.own = undefined;
    privateOut--;
    if (!this.pinned && pool.length < POOL_KEEP) pool.push(own);
    this.pinned = false;
  }
}

/** The parts of an accepted socket that adopt() needs; absent on a runtime that does not have them. */
interface AcceptedHandle {
  readStart(): number;
  readStop(): number;
  useUserBuffer(buf: Uint8Array): void;
}

/**
 * Move an accepted, not yet reading socket (net.createServer with pauseOnConnect) onto a new
 * socket that reads through `reads`. Returns undefined, leaving `raw` as it was, when the socket is
 * not a plain TCP socket whose handle can do that.
 *
 * This uses two things Node does not document: the accepted socket's `_handle` and the `handle`
 * option of `new net.Socket` (what `net.Server` itself does with each connection). The old socket
 * keeps its place in the server's connection count (maxConnections): it is destroyed, without its
 * handle, when the new one closes. test/integration/client-reads.test.ts fails if this stops
 * working on a Node version.
 */
export function adopt(raw: net.Socket, reads: ClientReads, opts: { allowHalfOpen: boolean }): net.Socket | undefined {
  const holder = raw as unknown as { _handle: AcceptedHandle | null };
  const handle = holder._handle;

  if (!handle || typeof handle.useUserBuffer !== 'function' || typeof handle.readStart !== 'function') return undefined;
  if (raw.readableLength > 0 || raw.readableFlowing === true || raw.destroyed) return undefined;
  holder._handle = null;
  const socket = new net.Socket({
    handle,
    allowHalfOpen: opts.allowHalfOpen,
    pauseOnCreate: true,
    readable: true,
    writable: true,
    onread: { buffer: reads.next, callback: reads.onRead },
  } as net.SocketConstructorOpts);
  socket.once('close', () => {
    reads.close();
    raw.destroy();
  });
  return socket;
}
