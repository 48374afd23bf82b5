/**
 * CommandLineReader: splits the client's command stream (Buffer chunks) into lines.
 * Pure: no I/O. Pull-driven: push() appends, next() returns one complete item at a time.
 *
 * - A line ends at LF. If the byte before the LF is CR it is stripped (bareLf = false), else the
 *   line is reported with bareLf = true. The reader never guesses: a CR not followed by LF stays
 *   inside the line, and the command parser refuses it as a bad byte.
 * - RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including CR LF. A longer line
 *   yields ONE { kind: 'error', error: 'line_too_long' }; the reader then drops bytes up to and
 *   including the next LF without buffering them, so it stays in sync (as chasquid does).
 * - Memory: the reader never holds more than `maxBufferedBytes` (default 64 KiB). Bytes pushed
 *   beyond that are dropped and `overflowed` becomes true (sticky); the session must then close
 *   the connection. To never get there, the session pauses reading from the socket while
 *   `bufferedBytes > maxLineBytes * 4` (a pipelined batch it has not consumed yet) and resumes
 *   once next() has drained it.
 */

export type LineEvent =
  | { kind: 'line'; line: Buffer; bareLf: boolean }
  | { kind: 'error'; error: 'line_too_long' };

export interface CommandLineReaderOptions {
  /** Longest accepted line including its CR LF (RFC 5321 §4.5.3.1.4: 512). */
  maxLineBytes: number;
  /** Hard bound of bytes held (default 64 KiB). */
  maxBufferedBytes?: number;
}

const LF = 0x0a;
const CR = 0x0d;
const EMPTY = Buffer.alloc(0);

export const DEFAULT_MAX_LINE_BYTES = 512;
export const DEFAULT_MAX_BUFFERED_BYTES = 64 * 1024;

export class CommandLineReader {
  private maxLine: number;
  private readonly maxBuffered: number;
  /** Buffered chunks; chunks[head] starts at byte `offset`. */
  private chunks: Buffer[] = [];
  private head = 0;
  private offset = 0;
  private total = 0;
  /** Bytes at the front of the buffer already known to contain no LF. */
  private scanned = 0;
  /** Dropping bytes up to and including the next LF after an over-long line. */
  private discarding = false;
  private overflow = false;

  constructor(opts: CommandLineReaderOptions) {
    this.maxLine = opts.maxLineBytes > 0 ? opts.maxLineBytes : DEFAULT_MAX_LINE_BYTES;
    this.maxBuffered = Math.max(opts.maxBufferedBytes ?? DEFAULT_MAX_BUFFERED_BYTES, this.maxLine);
  }

  /** Bytes pushed and not yet consumed. */
  get bufferedBytes(): number {
    return this.total;
  }

  /** True once bytes had to be dropped because the buffer bound was hit (sticky). */
  get overflowed(): boolean {
    return this.overflow;
  }

  /** Append a chunk. Keeps a reference to it (no copy). */
  /**
   * Change the line limit for the lines still to come (AUTH responses may be up to 12288 octets,
   * RFC 4954 §4, while command lines keep RFC 5321's 512).
   */
  setMaxLineBytes(n: number): void {
    if (n > 0) this.maxLine = Math.min(n, this.maxBuffered);
  }

  push(chunk: Buffer): void {
    let data = chunk;
    if (this.discarding) {
      const lf = data.indexOf(LF);
      if (lf < 0) return;
      this.discarding = false;
      data = data.subarray(lf + 1);
    }
    if (data.length === 0) return;
    const room = this.maxBuffered - this.total;
    if (data.length > room) {
      this.overflow = true;
      if (room <= 0) return;
      data = data.subarray(0, room);
    }
    this.chunks.push(data);
    this.total += data.length;
  }

  /** The next complete line or error, or undefined when more bytes are needed. */
  next(): LineEvent | undefined {
    const lf = this.findLf();
    if (lf < 0) {
      // No LF yet: once the partial line cannot fit any more, report it and resync at the next LF.
      if (this.total >= this.maxLine) {
        this.clear();
        this.discarding = true;
        return { kind: 'error', error: 'line_too_long' };
      }
      return undefined;
    }
    if (lf + 1 > this.maxLine) {
      this.consume(lf + 1);
      return { kind: 'error', error: 'line_too_long' };
    }
    const raw = this.consume(lf + 1);
    const bareLf = lf === 0 || raw[lf - 1] !== CR;
    const line = raw.subarray(0, bareLf ? lf : lf - 1);
    return { kind: 'line', line, bareLf };
  }

  /**
   * All bytes pushed but not consumed by next(), in one Buffer; the reader is empty afterwards
   * and any discard-until-LF state ends (DATA mode starts, or plaintext after STARTTLS is dropped).
   */
  takeBuffered(): Buffer {
    const out = this.total === 0 ? EMPTY : this.consume(this.total);
    this.clear();
    this.discarding = false;
    return out;
  }

  /** Position of the first LF in the buffered bytes, or -1. Never rescans known LF-free bytes. */
  private findLf(): number {
    if (this.scanned >= this.total) return -1;
    let pos = 0;
    for (let c = this.head; c < this.chunks.length; c++) {
      const chunk = this.chunks[c] as Buffer;
      const start = c === this.head ? this.offset : 0;
      const len = chunk.length - start;
      if (pos + len > this.scanned) {
        const from = start + Math.max(0, this.scanned - pos);
        const at = chunk.indexOf(LF, from);
        if (at >= 0) return pos + (at - start);
      }
      pos += len;
    }
    this.scanned = this.total;
    return -1;
  }

  /** Remove and return the first n buffered bytes (a zero-copy slice when they sit in one chunk). */
  private consume(n: number): Buffer {
    const first = this.chunks[this.head] as Buffer;
    let out: Buffer;
    if (first.length - this.offset >= n) {
      out = first.subarray(this.offset, this.offset + n);
      this.offset += n;
    } else {
      const parts: Buffer[] = [];
      let need = n;
      while (need > 0) {
        const chunk = this.chunks[this.head] as Buffer;
        const avail = chunk.length - this.offset;
        const take = Math.min(avail, need);
        parts.push(chunk.subarray(this.offset, this.offset + take));
        need -= take;
        this.offset += take;
        if (this.offset >= chunk.length && need > 0) {
          this.head++;
          this.offset = 0;
        }
      }
      out = Buffer.concat(parts, n);
    }
    // Drop fully consumed chunks; compact the array now and then.
    while (this.head < this.chunks.length && this.offset >= (this.chunks[this.head] as Buffer).length) {
      this.head++;
      this.offset = 0;
    }
    if (this.head > 64 || this.head === this.chunks.length) {
      this.chunks = this.chunks.slice(this.head);
      this.head = 0;
    }
    this.total -= n;
    this.scanned = Math.max(0, this.scanned - n);
    return out;
  }

  private clear(): void {
    this.chunks = [];
    this.head = 0;
    this.offset = 0;
    this.total = 0;
    this.scanned = 0;
  }
}
