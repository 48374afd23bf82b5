/**
 * LineEventFinder: where, in a run of DATA bytes, the end-of-data state machine next has work to do.
 *
 * A "line event" is a place in the byte stream the EndOfDataScanner must look at byte by byte;
 * everything before it is ordinary text and ordinary CR LF line ends, which the scanner forwards
 * and counts in bulk. Position k (from ≤ k < to) is an event when, with prev = the byte before k
 * (for k = from: LF when the scanner is at a line start, else an ordinary byte):
 *   - chunk[k] is LF and prev is not CR (a bare LF), or prev is CR and chunk[k] is not LF (a bare
 *     CR: the event is the byte after it) — i.e. (chunk[k] === LF) !== (prev === CR);
 *   - chunk[k] is "." and prev is LF (a line that starts with a dot: stuffing or the terminator).
 * NUL is not an event here: the scanner finds it with one native search per chunk and never asks
 * beyond it. A CR as the very last byte of [from, to) is no event either (its pair lies beyond `to`).
 *
 * The search runs in WebAssembly with 128-bit SIMD (16 bytes per compare, 64 per loop turn) over a
 * scratch copy of the chunk in the module's memory, window by window: one memcpy and one call per
 * chunk instead of two native indexOf calls per line. Without WebAssembly (node --jitless) the same
 * contract is met in JavaScript with native indexOf searches (about the old cost).
 *
 * The scratch copy is only read by the search; the bytes the scanner forwards stay zero-copy slices
 * of the client's chunk. One finder serves every session: calls are synchronous and never interleave.
 */

const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;
/** Any byte that is none of CR, LF, "." (the "prev" of a run that does not start a line). */
const PLAIN = 0x78;

export interface LineEventFinder {
  /** Forget any window loaded from a previous chunk (call once per pushed chunk: a Buffer may be reused). */
  reset(): void;
  /** The first line event in chunk[from, to), or `to` when there is none (see the module comment). */
  find(chunk: Buffer, from: number, to: number, atLineStart: boolean): number;
}

// ───────────────────────────── JavaScript (reference semantics, fallback) ─────────────────────────────

/** The contract in plain JavaScript with native indexOf searches. Also the tests' reference. */
export function createJsLineEventFinder(): LineEventFinder {
  return {
    reset() {},
    find(chunk, from, to, atLineStart) {
      let p = from;
      let lineStart = atLineStart;
      while (p < to) {
        if (lineStart && chunk[p] === DOT) return p;
        // Not at a line start: the prev of p is an ordinary byte (or the LF of a checked CR LF).
        const lf = chunk.indexOf(LF, p);
        const cr = chunk.indexOf(CR, p);
        const lfAt = lf < 0 || lf >= to ? to : lf;
        const crAt = cr < 0 || cr >= to ? to : cr;
        if (lfAt < crAt) return lfAt; // an LF with no CR before it
        if (crAt >= to - 1) return to; // no CR, or a CR as the last byte: its pair lies beyond `to`
        if (chunk[crAt + 1] !== LF) return crAt + 1; // a bare CR: the event is the byte after it
        p = crAt + 2;
        lineStart = true;
      }
      return to;
    },
  };
}

// ───────────────────────────── WebAssembly SIMD ─────────────────────────────

/** Scratch layout: [0, BASE) holds the "prev" byte of a window; the window; 16 bytes of over-read room. */
const BASE = 16;
const WINDOW = 65536;
const PAGES = 2; // BASE + WINDOW + 16 <= 2 × 64 KiB

/** Unsigned LEB128. */
function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
}

/** Signed LEB128 for the small constants used here. */
function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) {
      out.push(b);
      return out;
    }
    out.push(b | 0x80);
  }
}

const section = (id: number, body: number[]): number[] => [id, ...uleb(body.length), ...body];
const vec = (items: number[][]): number[] => [...uleb(items.length), ...items.flat()];
const name = (s: string): number[] => [...uleb(s.length), ...Buffer.from(s, 'latin1')];

// Opcodes (WebAssembly core 2.0 + fixed-width SIMD).
const I32 = 0x7f;
const V128 = 0x7b;
const EMPTY_BLOCK = 0x40;
const op = {
  block: 0x02,
  loop: 0x03,
  if: 0x04,
  end: 0x0b,
  br: 0x0c,
  brIf: 0x0d,
  return: 0x0f,
  localGet: 0x20,
  localSet: 0x21,
  localTee: 0x22,
  i32Const: 0x41,
  i32GeU: 0x4f,
  i32LtU: 0x49,
  i32Ctz: 0x68,
  i32Add: 0x6a,
  i32Sub: 0x6b,
  i32And: 0x71,
  i32Shl: 0x74,
} as const;
const simd = (code: number): number[] => [0xfd, ...uleb(code)];
const v128Load = (offset: number): number[] => [...simd(0x00), 0, ...uleb(offset)]; // align 2^0: any address
const i8x16Splat = simd(0x0f);
const i8x16Eq = simd(0x23);
const v128And = simd(0x4e);
const v128Or = simd(0x50);
const v128Xor = simd(0x51);
const v128AnyTrue = simd(0x53);
const i8x16Bitmask = simd(0x64);

// Locals of find(q, end): q = address of the byte before the next one to check, end = the
// address just past the last one.
const Q = 0;
const END = 1;
const MASK = 2;
const LEFT = 3;
const VCR = 4;
const VLF = 5;
const VDOT = 6;
const VA = 7;
const VB = 8;

const get = (i: number): number[] => [op.localGet, ...uleb(i)];
const set = (i: number): number[] => [op.localSet, ...uleb(i)];
const i32 = (n: number): number[] => [op.i32Const, ...sleb(n)];

/**
 * The event mask of the 16 bytes at q + 1 + off: a = those bytes, b = the bytes one before them.
 *   (a == LF) xor (b == CR)   — a bare LF (LF without CR) or a bare CR (CR without LF after it)
 *   (a == ".") and (b == LF)  — a dot at a line start
 */
function eventMask(off: number): number[] {
  return [
    ...get(Q), ...v128Load(off + 1), ...set(VA),
    ...get(Q), ...v128Load(off), ...set(VB),
    ...get(VA), ...get(VLF), ...i8x16Eq,
    ...get(VB), ...get(VCR), ...i8x16Eq,
    ...v128Xor,
    ...get(VA), ...get(VDOT), ...i8x16Eq,
    ...get(VB), ...get(VLF), ...i8x16Eq,
    ...v128And,
    ...v128Or,
  ];
}

/** find(q, end) → address of the first event in [q + 1, end), or end. */
function findBody(): number[] {
  const body = [
    ...i32(CR), ...i8x16Splat, ...set(VCR),
    ...i32(LF), ...i8x16Splat, ...set(VLF),
    ...i32(DOT), ...i8x16Splat, ...set(VDOT),
    // Wide: 64 bytes a turn while all of them lie before end; any event sends us to the narrow loop.
    op.block, EMPTY_BLOCK,
    op.loop, EMPTY_BLOCK,
    ...get(Q), ...i32(64), op.i32Add, ...get(END), op.i32GeU, op.brIf, 1,
    ...eventMask(0), ...eventMask(16), ...v128Or, ...eventMask(32), ...v128Or, ...eventMask(48), ...v128Or,
    ...v128AnyTrue, op.brIf, 1,
    ...get(Q), ...i32(64), op.i32Add, ...set(Q),
    op.br, 0,
    op.end,
    op.end,
    // Narrow: 16 bytes a turn, exact position, bits at or past end masked off.
    op.loop, EMPTY_BLOCK,
    ...get(Q), ...i32(1), op.i32Add, ...get(END), op.i32GeU,
    op.if, EMPTY_BLOCK, ...get(END), op.return, op.end,
    ...eventMask(0), ...i8x16Bitmask, ...set(MASK),
    ...get(END), ...get(Q), op.i32Sub, ...i32(1), op.i32Sub, op.localTee, ...uleb(LEFT),
    ...i32(16), op.i32LtU,
    op.if, EMPTY_BLOCK,
    ...get(MASK), ...i32(1), ...get(LEFT), op.i32Shl, ...i32(1), op.i32Sub, op.i32And, ...set(MASK),
    op.end,
    ...get(MASK),
    op.if, EMPTY_BLOCK,
    ...get(Q), ...i32(1), op.i32Add, ...get(MASK), op.i32Ctz, op.i32Add, op.return,
    op.end,
    ...get(Q), ...i32(16), op.i32Add, ...set(Q),
    op.br, 0,
    op.end,
    ...get(END),
    op.end,
  ];
  const locals = vec([[...uleb(2), I32], [...uleb(5), V128]]);
  return [...uleb(locals.length + body.length), ...locals, ...body];
}

function moduleBytes(): Uint8Array {
  const bytes = [
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, vec([[0x60, ...vec([[I32], [I32]]), ...vec([[I32]])]])),
    ...section(3, vec([[0]])),
    ...section(5, vec([[0x00, ...uleb(PAGES)]])),
    ...section(7, vec([[...name('find'), 0x00, 0], [...name('memory'), 0x02, 0]])),
    ...section(10, vec([findBody()])),
  ];
  return Uint8Array.from(bytes);
}

/** The few WebAssembly JS API members used here (the project's lib settings do not declare them). */
interface WasmApi {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { exports: { find: (q: number, end: number) => number; memory: { buffer: ArrayBuffer } } };
}

/** The SIMD finder, or undefined when this runtime has no WebAssembly (node --jitless) or no SIMD. */
export function createWasmLineEventFinder(opts: { windowBytes?: number } = {}): LineEventFinder | undefined {
  /** Bytes copied to the scratch memory at a time (tests use small windows to cross many window ends). */
  const window = Math.max(2, Math.min(WINDOW, opts.windowBytes ?? WINDOW));
  let findAt: (q: number, end: number) => number;
  let mem: Uint8Array;
  try {
    const wasm = (globalThis as unknown as { WebAssembly?: WasmApi }).WebAssembly;
    if (!wasm) return undefined;
    const { exports } = new wasm.Instance(new wasm.Module(moduleBytes()), {});
    findAt = exports.find;
    mem = new Uint8Array(exports.memory.buffer);
  } catch {
    return undefined;
  }
  /** The chunk whose bytes [winStart, winEnd) are at mem[BASE…]. */
  let winChunk: Buffer | undefined;
  let winStart = 0;
  let winEnd = 0;
  const load = (chunk: Buffer, start: number): void => {
    winChunk = chunk;
    winStart = start;
    winEnd = Math.min(chunk.length, start + window);
    mem.set(start === 0 && winEnd === chunk.length ? chunk : chunk.subarray(start, winEnd), BASE);
  };
  return {
    reset() {
      winChunk = undefined;
    },
    find(chunk, from, to, atLineStart) {
      if (from >= to) return to;
      if (chunk !== winChunk || from < winStart || from >= winEnd) load(chunk, from);
      // The byte before `from` as the contract defines it. The window is a copy: overwriting the
      // chunk's own byte there is harmless, later searches in it only start further on.
      mem[BASE + (from - winStart) - 1] = atLineStart ? LF : PLAIN;
      /** Chunk index of the byte before the next one to check. */
      let q = from - 1;
      for (;;) {
        const stop = Math.min(to, winEnd);
        const hit = findAt(BASE + (q - winStart), BASE + (stop - winStart)) - BASE + winStart;
        if (hit < stop || stop >= to) return hit;
        // No event before the window's end: go on in a window that starts with the real prev byte.
        q = stop - 1;
        load(chunk, q);
      }
    },
  };
}

let shared: LineEventFinder | undefined;

/** The process's finder: WebAssembly SIMD when available, else JavaScript. */
export function lineEventFinder(): LineEventFinder {
  shared ??= createWasmLineEventFinder() ?? createJsLineEventFinder();
  return shared;
}
