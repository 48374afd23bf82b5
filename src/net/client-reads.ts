/**
 * ClientReads: a plaintext client socket that streams a large message reads into buffers the guard
 * owns (Node's `onread`), instead of a fresh 64 KiB allocation per read that Node then shrinks to
 * the bytes read. Fewer, larger reads and no allocation per read: per MiB the guard then costs less
 * CPU than a plain Node pipe (README "Performance").
 *
 * - The session switches its socket over (readInto, SmtpSession.takeOverReads) at the first DATA
 *   read that fills half of Node's 64 KiB; short sessions and small messages never do.
 * - From then on, every read goes into one buffer the whole process shares (SHARED_BYTES) unless the
 *   session holds one of its own. A read is handled to its end before the next one (one event
 *   loop), so sharing is safe as long as nothing keeps a view of it: the session copies what it keeps
 *   (command bytes, the bytes after an end-of-data), and message bytes read into it are forwarded as
 *   a copy.
 * - While a large message streams the session holds a buffer of its own (wantPrivate): BIG_BYTES,
 *   from a small pool. Reads into it are forwarded to the backend without a copy. When a write is
 *   still holding a view of it after the read was handled (the backend is slower than the client:
 *   the kernel did not take it all), the buffer is pinned: it never goes back to the pool, and the
 *   socket's next read goes into another one. At the end of the message the buffer goes back to the
 *   pool (unless pinned).
 * - At most MAX_PRIVATE private buffers are out at once (MAX_PRIVATE × BIG_BYTES of memory, plus
 *   pinned ones until their writes finish: a session pauses its client once the backend's socket
 *   buffer is full, so it leaves one or two at most); beyond that a session streams through the
 *   shared buffer, with a copy per read.
 */
import type net from 'node:net';

/** The buffer every taken-over client socket reads into when it holds none of its own. */
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
let socketsTaken = 0;

/**
 * For tests: private buffers out now, kept free, pinned so far (each then left to the GC), and
 * sockets readInto() took over so far.
 */
export function clientReadStats(): { privateOut: number; pooled: number; pinned: number; sockets: number } {
  return { privateOut, pooled: pool.length, pinned: pinnedTotal, sockets: socketsTaken };
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

/** The part of a socket's handle that readInto() needs; absent on a runtime that does not have it. */
interface SocketHandle {
  useUserBuffer(buf: Uint8Array): void;
}

/**
 * Make a plaintext socket read through `reads` from its next read on, as if it had been created with
 * `onread`. Call it between two reads (from the socket's own 'data' handler, with nothing buffered):
 * the caller then takes its 'data' listener off, as no more 'data' events come. Returns false,
 * leaving the socket as it was, where that cannot be done (another runtime, a TLS socket).
 *
 * Node gives `onread` only to sockets made with `new net.Socket` or `net.connect`, not to those a
 * server accepts. Here the socket gets the same three fields its constructor sets from that option
 * (found by their symbols' names) and its handle the first buffer, as the constructor does. Node
 * does not document these fields: test/integration/client-reads.test.ts fails if a Node version
 * stops honouring them (it checks that sockets were taken over and a write pinned a buffer).
 */
export function readInto(socket: net.Socket, reads: ClientReads): boolean {
  const handle = (socket as unknown as { _handle: SocketHandle | null })._handle;
  if (!handle || typeof handle.useUserBuffer !== 'function') return false;
  if (socket.readableLength > 0 || socket.destroyed) return false;
  const f = (fields ??= findFields(socket));
  const own = socket as unknown as Record<symbol, unknown>;
  if (!f || own[f.buffer] !== null || own[f.callback] !== null || own[f.generator] !== null) return false;
  const first = reads.next();
  own[f.generator] = reads.next;
  own[f.callback] = reads.onRead;
  own[f.buffer] = first;
  handle.useUserBuffer(first);
  socket.once('close', () => reads.close());
  socketsTaken++;
  return true;
}

/** The socket fields behind `onread` (looked up once; false where this Node has none). */
let fields: { buffer: symbol; callback: symbol; generator: symbol } | false | undefined;

function findFields(socket: net.Socket): { buffer: symbol; callback: symbol; generator: symbol } | false {
  const byName = new Map(Object.getOwnPropertySymbols(socket).map((sym) => [sym.description, sym]));
  const buffer = byName.get('kBuffer');
  const callback = byName.get('kBufferCb');
  const generator = byName.get('kBufferGen');
  return buffer && callback && generator ? { buffer, callback, generator } : false;
}
