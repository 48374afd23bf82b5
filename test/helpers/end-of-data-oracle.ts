/**
 * The EndOfDataScanner as it was before the WebAssembly line-event search (issue 22), kept
 * unchanged as a test oracle: test/unit/end-of-data-oracle.property.test.ts checks that the
 * production scanner gives the same steps for random inputs, random chunkings and both modes.
 * Not used by the guard.
 */
/**
 * EndOfDataScanner: streams the bytes a client sends after DATA / 354 and decides, chunk by
 * chunk, which bytes may go to the backend, where the message ends, and whether the client is
 * trying SMTP smuggling (CVE-2023-51764 / 51765 / 51766).
 *
 * Pure: no I/O. Bytes are never decoded to strings; the forwarded bytes are zero-copy slices of
 * the input (plus small constant buffers for held-back or rewritten line ends).
 *
 * Rules (RFC 5321 §4.1.1.4, §2.3.8, §4.5.2):
 * - Only CR LF "." CR LF ends the message; a "." CR LF as the very first line ends an empty one.
 * - A line that starts with "." but is not the terminator is dot-stuffed: it is forwarded
 *   byte-identical (the backend un-stuffs it); the stuffing dot is not counted in `size`.
 * - mode 'reject': a bare LF, a bare CR or a NUL anywhere gives status 'smuggling'. Bytes from the
 *   bad byte on (and any held-back bytes) are never forwarded.
 * - mode 'normalize' (Postfix `smtpd_forbid_bare_newline = normalize`): a bare LF is rewritten to
 *   CR LF in the forwarded bytes and ends the line, so "\n.\n" ends the message for the guard and
 *   the backend alike. A bare CR is still 'smuggling': no legitimate client sends one, and
 *   guessing what a backend does with it is exactly the ambiguity smuggling exploits. NUL is
 *   'smuggling' in both modes (RFC 5321 §4.1.1.4 text must not contain it; backends truncate at it).
 *
 * Chunking never changes the result: bytes that could start a CR LF pair or a terminator
 * ("\r", ".", ".\r" at the end of a chunk) are held back until the next chunk decides them.
 *
 * `size` follows RFC 1870 §3: message octets including CR LF pairs, excluding stuffing dots and
 * the terminator. A normalised bare LF counts as the two octets the backend receives. When a
 * byte would make `size` exceed `maxBytes` the step is 'too_large': bytes before it have been
 * forwarded, nothing after it ever is.
 */

export type SmuggleKind = 'bare_lf' | 'bare_cr' | 'nul';

export type ScanStep =
  | { forward: Buffer[]; size: number; status: 'more' }
  | { forward: Buffer[]; size: number; status: 'end'; rest: Buffer }
  | { forward: Buffer[]; size: number; status: 'smuggling'; smuggle: SmuggleKind }
  | { forward: Buffer[]; size: number; status: 'too_large' };

export interface EndOfDataScannerOptions {
  mode: 'reject' | 'normalize';
  maxBytes: number;
}

const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;
const NUL = 0x00;

const CRLF_BUF = Buffer.from('\r\n', 'latin1');
const EMPTY = Buffer.alloc(0);
/** The held-back bytes for each holding state, as constants (never copied from the input). */
const HELD_CR = Buffer.from('\r', 'latin1');
const HELD_DOT = Buffer.from('.', 'latin1');
const HELD_DOT_CR = Buffer.from('.\r', 'latin1');

const enum S {
  /** At the start of a line (after CR LF, or at the very start of DATA). */
  LineStart,
  /** Inside a line. */
  Text,
  /** Held "\r": waiting for LF. */
  Cr,
  /** Held "." at the start of a line. */
  Dot,
  /** Held ".\r" at the start of a line. */
  DotCr,
  End,
  Smuggling,
  TooLarge,
}

/** Line state used while discarding an oversized message (nothing is forwarded). */
const enum D {
  LineStart,
  Text,
  Cr,
  Dot,
  DotCr,
  End,
}

export class OracleEndOfDataScanner {
  private readonly normalize: boolean;
  private readonly maxBytes: number;
  private state: S = S.LineStart;
  /** Held-back bytes from the previous chunk (a constant buffer), not yet forwarded or dropped. */
  private carry: Buffer | undefined;
  private size = 0;
  private seen = 0;
  private smuggle: SmuggleKind = 'bare_lf';
  /** Discard (resync) state; starts from wherever the scanner stopped. */
  private discard: D | undefined;
  /** Unscanned remainder of the chunk that overflowed, consumed by the next discardUntilEnd(). */
  private overflowRest: Buffer = EMPTY;

  constructor(opts: EndOfDataScannerOptions) {
    this.normalize = opts.mode === 'normalize';
    this.maxBytes = opts.maxBytes;
  }

  /** Total input bytes consumed so far (push and discardUntilEnd), excluding any returned `rest`. */
  get bytesSeen(): number {
    return this.seen;
  }

  /**
   * Scan the next chunk of DATA bytes.
   * After 'end' further pushes return 'end' with the whole chunk as `rest`; after 'smuggling'
   * they return 'smuggling' again; after 'too_large' they return 'too_large' and consume
   * nothing: use discardUntilEnd() instead.
   */
  push(chunk: Buffer): ScanStep {
    switch (this.state) {
      case S.End:
        return { forward: [], size: this.size, status: 'end', rest: chunk };
      case S.Smuggling:
        return { forward: [], size: this.size, status: 'smuggling', smuggle: this.smuggle };
      case S.TooLarge:
        return { forward: [], size: this.size, status: 'too_large' };
      default:
        break;
    }

    const forward: Buffer[] = [];
    const n = chunk.length;
    const max = this.maxBytes;
    const normalize = this.normalize;
    let state: S = this.state;
    let size = this.size;
    /** Start of chunk bytes decided forwardable but not yet put in `forward`. */
    let segStart = 0;
    /** Index in chunk where the held-back bytes of `state` start (when !carry). */
    let heldStart = 0;
    let i = 0;
    // Cached positions of the next CR / LF / NUL at or after i (n when none): O(n) per chunk.
    let nextCr = -1;
    let nextLf = -1;
    const nulAt = chunk.indexOf(NUL);
    const nextNul = nulAt < 0 ? n : nulAt;

    while (i < n) {
      const b = chunk[i] as number;
      switch (state) {
        case S.LineStart: {
          if (b !== DOT && b !== CR && b !== LF && b !== NUL) {
            // Fast path, the common case: a run of whole ordinary lines — the line's first CR is the
            // one right before its LF, no NUL, within maxBytes, next line not starting with a byte
            // the state machine must see. Two native scans per line; anything else falls through
            // to the byte-level states below, which decide it exactly as before.
            let p = i;
            for (;;) {
              const lf = chunk.indexOf(LF, p); // > p: chunk[p] is not LF
              if (lf < 0 || lf > nextNul) break;
              if (chunk.indexOf(CR, p) !== lf - 1) break;
              const len = lf + 1 - p;
              if (size + len > max) break;
              size += len;
              p = lf + 1;
              if (p >= n) break;
              const c = chunk[p] as number;
              if (c === DOT || c === CR || c === LF || c === NUL) break;
            }
            if (p > i) {
              i = p;
              continue;
            }
            state = S.Text;
          } else if (b === DOT) {
            state = S.Dot;
            heldStart = i;
            i++;
          } else if (b === CR) {
            state = S.Cr;
            heldStart = i;
            i++;
          } else if (b === LF) {
            if (!normalize) return this.stopSmuggling(forward, chunk, segStart, heldStart, state, size, 'bare_lf', i);
            if (size + 2 > max) return this.stopTooLarge(forward, chunk, segStart, size, i, i + 1, D.LineStart);
            size += 2;
            segStart = this.flush(forward, chunk, segStart, i);
            forward.push(CRLF_BUF);
            segStart = i + 1;
            i++;
          } else {
            return this.stopSmuggling(forward, chunk, segStart, heldStart, state, size, 'nul', i);
          }
          break;
        }
        case S.Text: {
          // Skip plain bytes up to the next CR / LF / NUL.
          if (nextCr < i) nextCr = indexOrEnd(chunk, CR, i);
          if (nextLf < i) nextLf = indexOrEnd(chunk, LF, i);
          const j = Math.min(nextCr, nextLf, nextNul);
          const len = j - i;
          if (len > 0) {
            if (size + len > max) {
              const at = i + (max - size);
              return this.stopTooLarge(forward, chunk, segStart, max, at, at + 1, D.Text);
            }
            size += len;
            i = j;
            continue;
          }
          if (b === CR) {
            if (chunk[i + 1] === LF) {
              // Common case inline: CR LF inside this chunk ends the line.
              if (size + 2 > max) return this.stopTooLarge(forward, chunk, segStart, size, i, i + 2, D.LineStart);
              size += 2;
              state = S.LineStart;
              i += 2;
              continue;
            }
            state = S.Cr;
            heldStart = i;
            i++;
          } else if (b === LF) {
            if (!normalize) return this.stopSmuggling(forward, chunk, segStart, heldStart, state, size, 'bare_lf', i);
            if (size + 2 > max) return this.stopTooLarge(forward, chunk, segStart, size, i, i + 1, D.LineStart);
            size += 2;
            segStart = this.flush(forward, chunk, segStart, i);
            forward.push(CRLF_BUF);
            segStart = i + 1;
            state = S.LineStart;
            i++;
          } else {
            return this.stopSmuggling(forward, chunk, segStart, heldStart, state, size, 'nul', i);
          }
          break;
        }
        case S.Cr: {
          if (b !== LF) return this.stopSmuggling(forward, chunk, segStart, heldStart, state, size, 'bare_cr', i);
          if (size + 2 > max) return this.stopTooLarge(forward, chunk, segStart, size, this.carry ? 0 : heldStart, i + 1, D.LineStart);
          size += 2;
          this.releaseCarry(forward);
          state = S.LineStart;
          i++;
          break;
        }
        case S.Dot: {
          if (b === CR) {
            state = S.DotCr;
            i++;
          } else if (b === LF) {
            if (!normalize) return this.stopSmuggling(forward, chunk, segStart, heldStart, state, size, 'bare_lf', i);
            // ".\n" after a line end: the terminator, rewritten to ".\r\n".
            this.flush(forward, chunk, segStart, i);
            forward.push(CRLF_BUF);
            return this.finish(forward, size, chunk, i + 1);
          } else if (b === NUL) {
            return this.stopSmuggling(forward, chunk, segStart, heldStart, state, size, 'nul', i);
          } else {
            // Dot-stuffed line: the held "." is forwarded as is and not counted (RFC 1870 §3).
            this.releaseCarry(forward);
            state = S.Text;
          }
          break;
        }
        case S.DotCr: {
          if (b !== LF) return this.stopSmuggling(forward, chunk, segStart, heldStart, state, size, 'bare_cr', i);
          this.flush(forward, chunk, segStart, i + 1);
          return this.finish(forward, size, chunk, i + 1);
        }
        default:
          // Terminal states never reach the loop.
          throw new Error(`EndOfDataScanner: unexpected state ${state}`);
      }
    }

    // Chunk exhausted: forward everything decided, hold back what the next chunk must decide.
    if (isHolding(state)) {
      const end = this.carry ? 0 : heldStart;
      if (end > segStart) forward.push(chunk.subarray(segStart, end));
      this.carry = heldBytes(state);
    } else {
      this.flush(forward, chunk, segStart, n);
    }
    this.state = state;
    this.size = size;
    this.seen += n;
    return { forward, size, status: 'more' };
  }

  /** Held bytes were decided forwardable: the carried part goes out first (the rest is in the segment). */
  private releaseCarry(forward: Buffer[]): void {
    if (this.carry) {
      forward.push(this.carry);
      this.carry = undefined;
    }
  }

  /** Forward the carried bytes (if any) then chunk[segStart, end); returns the new segment start. */
  private flush(forward: Buffer[], chunk: Buffer, segStart: number, end: number): number {
    this.releaseCarry(forward);
    if (end > segStart) forward.push(chunk.subarray(segStart, end));
    return end;
  }

  /** Stop at `at`, or before the held-back bytes (dropped) when holding; forward nothing after. */
  private stopSmuggling(forward: Buffer[], chunk: Buffer, segStart: number, heldStart: number, state: S, size: number, kind: SmuggleKind, at: number): ScanStep {
    const end = isHolding(state) ? (this.carry ? 0 : heldStart) : at;
    this.carry = undefined;
    if (end > segStart) forward.push(chunk.subarray(segStart, end));
    this.state = S.Smuggling;
    this.smuggle = kind;
    this.size = size;
    this.seen += chunk.length;
    return { forward, size, status: 'smuggling', smuggle: kind };
  }

  /** The byte before `resumeAt` overflows: forward up to `end`, resume discarding at `resumeAt`. */
  private stopTooLarge(forward: Buffer[], chunk: Buffer, segStart: number, size: number, end: number, resumeAt: number, discardState: D): ScanStep {
    this.carry = undefined;
    if (end > segStart) forward.push(chunk.subarray(segStart, end));
    this.state = S.TooLarge;
    this.size = size;
    this.discard = discardState;
    this.overflowRest = chunk.subarray(resumeAt);
    this.seen += resumeAt;
    return { forward, size, status: 'too_large' };
  }

  /**
   * Skip message bytes until the client's real end of data, forwarding nothing. Used after
   * 'too_large' so the session stays in sync and can answer 552 after the client's terminator.
   * The remainder of the chunk that overflowed is kept internally and scanned first: call this
   * right after 'too_large' (an empty Buffer is fine) and then with every further chunk until
   * `done`. `rest` holds the bytes after the terminator (pipelined commands).
   * In 'reject' mode only CR LF "." CR LF ends the message here; in 'normalize' a bare LF also
   * ends a line, as it does for push().
   */
  discardUntilEnd(chunk: Buffer): { done: boolean; rest: Buffer } {
    if (this.state === S.End) return { done: true, rest: chunk };
    let d = this.discard ?? toDiscardState(this.state);
    this.state = S.TooLarge;
    let input = chunk;
    if (this.overflowRest.length > 0) {
      input = chunk.length > 0 ? Buffer.concat([this.overflowRest, chunk]) : this.overflowRest;
      this.overflowRest = EMPTY;
    }
    const lfEndsLine = this.normalize;
    const n = input.length;
    let i = 0;
    while (i < n) {
      if (d === D.Text) {
        // Fast skip to the next byte that can change the line state.
        const cr = input.indexOf(CR, i);
        let j = cr < 0 ? n : cr;
        if (lfEndsLine) {
          const lf = input.indexOf(LF, i);
          if (lf >= 0 && lf < j) j = lf;
        }
        if (j >= n) {
          i = n;
          break;
        }
        i = j;
      }
      const b = input[i] as number;
      i++;
      d = discardStep(d, b, lfEndsLine);
      if (d === D.End) {
        this.state = S.End;
        this.discard = undefined;
        this.seen += i;
        return { done: true, rest: input.subarray(i) };
      }
    }
    this.discard = d;
    this.seen += n;
    return { done: false, rest: EMPTY };
  }

  private finish(forward: Buffer[], size: number, chunk: Buffer, restAt: number): ScanStep {
    this.state = S.End;
    this.carry = undefined;
    this.size = size;
    this.seen += restAt;
    return { forward, size, status: 'end', rest: chunk.subarray(restAt) };
  }
}

function indexOrEnd(buf: Buffer, byte: number, from: number): number {
  const at = buf.indexOf(byte, from);
  return at < 0 ? buf.length : at;
}

function isHolding(s: S): boolean {
  return s === S.Cr || s === S.Dot || s === S.DotCr;
}

function heldBytes(s: S): Buffer {
  if (s === S.Cr) return HELD_CR;
  if (s === S.Dot) return HELD_DOT;
  if (s === S.DotCr) return HELD_DOT_CR;
  return EMPTY;
}

function toDiscardState(s: S): D {
  switch (s) {
    case S.LineStart:
      return D.LineStart;
    case S.Cr:
      return D.Cr;
    case S.Dot:
      return D.Dot;
    case S.DotCr:
      return D.DotCr;
    default:
      return D.Text;
  }
}

function discardStep(d: D, b: number, lfEndsLine: boolean): D {
  switch (d) {
    case D.LineStart:
      if (b === DOT) return D.Dot;
      if (b === CR) return D.Cr;
      if (b === LF && lfEndsLine) return D.LineStart;
      return D.Text;
    case D.Text:
      if (b === CR) return D.Cr;
      if (b === LF && lfEndsLine) return D.LineStart;
      return D.Text;
    case D.Cr:
      if (b === LF) return D.LineStart;
      if (b === CR) return D.Cr;
      return D.Text;
    case D.Dot:
      if (b === CR) return D.DotCr;
      if (b === LF && lfEndsLine) return D.End;
      return D.Text;
    case D.DotCr:
      if (b === LF) return D.End;
      if (b === CR) return D.Cr;
      return D.Text;
    default:
      return d;
  }
}
