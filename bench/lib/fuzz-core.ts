/**
 * Fuzzing core (issue 9 §3): seeded random and mutated SMTP sessions driven at a running guard in
 * front of the recording backend, and the invariants checked afterwards.
 *
 * Sessions mix valid and broken commands, relay tricks, pipelined batches, random chunkings of
 * the same bytes, DATA with random bytes (bare CR/LF, NUL, dot lines), early closes. Every DATA
 * body carries a unique token so the backend's messages can be tied to the client's replies.
 *
 * Invariants: the guard stays up (no uncaught error), every session ends once its client is gone
 * (sessions_active back to 0), memory returns near baseline, every RCPT the backend parsed is to an
 * accepted domain (the fuzz client is untrusted), and no message whose end-of-data got 5xx reached
 * the backend.
 */
import net from 'node:net';

/** mulberry32: small, fast, reproducible. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Rng = () => number;
const pick = <T>(r: Rng, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
const int = (r: Rng, lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1));

export const ACCEPTED_DOMAIN = 'example.com';

const RCPTS = [
  '<user@example.com>', '<User@EXAMPLE.COM.>', '<"q"@example.com>', ' user@example.com', '<postmaster>',
  '<victim@elsewhere.test>', '<victim%elsewhere.test@example.com>', '<elsewhere.test!victim@example.com>',
  '<@example.com:victim@elsewhere.test>', '<@a.test,@b.test:v@example.com>', '<victim@[127.0.0.1]>',
  '<"victim@elsewhere.test"@example.com>', '<victim@elsewhere.test@example.com>', '<victim@x.example.com>',
  '<victim@example.com.elsewhere.test>', '<>', '<', '<user@example.com> NOTIFY=NEVER', '<user@example.com> FOO=BAR',
  '<IMCEASMTP-v+40elsewhere.test@example.com>', '<victim@localhost>', '<user@exam\0ple.com>',
];
const SENDERS = ['<>', '<a@sender.test>', '<a@example.com>', '<a@sender.test> SIZE=100', '<a@sender.test> BODY=8BITMIME', '<a@sender.test> SIZE=999999999999', 'a@sender.test', '<a@[1.2.3.4]>', '<@x:a@sender.test>'];
const VERBS = ['NOOP', 'RSET', 'HELP', 'VRFY user', 'EXPN list', 'ETRN example.com', 'TURN', 'BDAT 10 LAST', 'XEXCH50 1 2', 'X-LINK2STATE', 'AUTH PLAIN AGF1AHA=', 'AUTH LOGIN', 'STARTTLS', 'HELO', 'EHLO', 'MAIL', 'RCPT', 'DATA', 'QUIT', 'mail from:<a@b.test>', 'rcpt to:<user@example.com>'];

function randomBytes(r: Rng, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = r() < 0.85 ? int(r, 32, 126) : int(r, 0, 255);
  return b;
}

function randomCommand(r: Rng): Buffer {
  const k = r();
  if (k < 0.15) return Buffer.from(`${pick(r, ['EHLO', 'HELO', 'ehlo'])} ${pick(r, ['client.test', '[127.0.0.1]', '', 'x'.repeat(300)])}\r\n`, 'latin1');
  if (k < 0.3) return Buffer.from(`MAIL FROM:${pick(r, SENDERS)}\r\n`, 'latin1');
  if (k < 0.55) return Buffer.from(`RCPT TO:${pick(r, RCPTS)}\r\n`, 'latin1');
  if (k < 0.75) return Buffer.from(`${pick(r, VERBS)}\r\n`, 'latin1');
  if (k < 0.85) return Buffer.concat([randomBytes(r, int(r, 0, 40)), Buffer.from(pick(r, ['\r\n', '\n', '\r', '']), 'latin1')]);
  if (k < 0.9) return Buffer.from(`NOOP ${'A'.repeat(int(r, 400, 2000))}\r\n`, 'latin1');
  // Mutate a valid command: flip, drop or insert one byte.
  const base = Buffer.from(`RCPT TO:${pick(r, RCPTS)}\r\n`, 'latin1');
  const i = int(r, 0, base.length - 1);
  const m = r();
  if (m < 0.33) base[i] = int(r, 0, 255);
  else if (m < 0.66) return Buffer.concat([base.subarray(0, i), base.subarray(i + 1)]);
  else return Buffer.concat([base.subarray(0, i), Buffer.from([int(r, 0, 255)]), base.subarray(i)]);
  return base;
}

function dataBody(r: Rng, token: string): Buffer {
  const parts: Buffer[] = [Buffer.from(`X-Fuzz-Token: ${token}\r\nSubject: fuzz\r\n\r\n`, 'latin1')];
  const lines = int(r, 0, 12);
  for (let i = 0; i < lines; i++) {
    const k = r();
    if (k < 0.6) parts.push(Buffer.from(`line ${i} ${'x'.repeat(int(r, 0, 100))}\r\n`, 'latin1'));
    else if (k < 0.7) parts.push(Buffer.from(`.${pick(r, ['', '.', 'dot', '\t'])}\r\n`, 'latin1'));
    else if (k < 0.8) parts.push(Buffer.from(pick(r, ['\n.\n', '\r.\r', '\n.\r\n', '\r\n.\n', 'bare\nlf\r\n', 'bare\rcr\r\n', 'nul\0byte\r\n']), 'latin1'));
    else if (k < 0.85) parts.push(Buffer.from(`MAIL FROM:<smuggled@sender.test>\r\nRCPT TO:<victim@elsewhere.test>\r\nDATA\r\n`, 'latin1'));
    else parts.push(randomBytes(r, int(r, 0, 200)));
  }
  if (r() < 0.9) parts.push(Buffer.from('\r\n.\r\n', 'latin1'));
  return Buffer.concat(parts);
}

/** Split bytes into 1..n random pieces. */
function chunks(r: Rng, b: Buffer): Buffer[] {
  if (b.length < 2 || r() < 0.5) return [b];
  const out: Buffer[] = [];
  let i = 0;
  while (i < b.length) {
    const n = int(r, 1, Math.max(1, Math.ceil(b.length / 3)));
    out.push(b.subarray(i, i + n));
    i += n;
  }
  return out;
}

export interface SessionOutcome {
  /** token → the reply code the client saw for that message's end-of-data (undefined: none). */
  dataReplies: Map<string, number | undefined>;
  timedOut: boolean;
}

/** A client that counts final reply lines and can wait for the next one (bounded). */
class FuzzClient {
  private buf = '';
  finals: number[] = [];
  closed = false;
  private waiters: Array<() => void> = [];
  constructor(readonly sock: net.Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf += d.toString('latin1');
      let nl: number;
      while ((nl = this.buf.indexOf('\r\n')) >= 0) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 2);
        if (/^\d{3}( |$)/.test(line)) this.finals.push(Number(line.slice(0, 3)));
      }
      if (this.buf.length > 65536) this.buf = '';
      this.wake();
    });
    sock.on('close', () => {
      this.closed = true;
      this.wake();
    });
    sock.on('error', () => undefined);
  }
  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
  /** Wait until at least n final replies arrived, the socket closed, or ms passed. */
  waitFor(n: number, ms: number): Promise<boolean> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== check);
        resolve(false);
      }, ms);
      const check = () => {
        if (this.finals.length >= n || this.closed) {
          clearTimeout(t);
          resolve(this.finals.length >= n);
        } else this.waiters.push(check);
      };
      check();
    });
  }
  async write(parts: Buffer[]): Promise<void> {
    for (const p of parts) {
      if (this.closed) return;
      this.sock.write(p);
      if (parts.length > 1) await new Promise((r) => setImmediate(r));
    }
  }
}

/** One random session against the guard. */
export async function fuzzSession(port: number, seed: number, sessionId: number, replyWaitMs = 2000): Promise<SessionOutcome> {
  const r = prng(seed ^ Math.imul(sessionId + 1, 0x9e3779b1));
  const dataReplies = new Map<string, number | undefined>();
  const sock = net.connect({ port, host: '127.0.0.1', localAddress: '127.0.0.9' });
  sock.setNoDelay(true);
  const c = new FuzzClient(sock);
  let timedOut = false;
  try {
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', () => resolve());
      sock.once('error', reject);
    });
    if (!(await c.waitFor(1, replyWaitMs))) return { dataReplies, timedOut: !c.closed };
    // A valid prologue most of the time, so the deeper states are reached.
    if (r() < 0.8) {
      const prologue = [`EHLO fuzz.test\r\n`, `MAIL FROM:${pick(r, SENDERS)}\r\n`, `RCPT TO:${pick(r, RCPTS)}\r\n`, `RCPT TO:<user@example.com>\r\n`].slice(0, int(r, 1, 4)).join('');
      const expected = c.finals.length + prologue.split('\r\n').length - 1;
      await c.write(chunks(r, Buffer.from(prologue, 'latin1')));
      await c.waitFor(expected, replyWaitMs);
    }
    const steps = int(r, 1, 10);
    let msg = 0;
    for (let s = 0; s < steps && !c.closed; s++) {
      const k = r();
      if (k < 0.05) {
        sock.destroy(); // early close
        break;
      } else if (k < 0.3) {
        // DATA, lock-step: DATA, then the body only after 354.
        const before = c.finals.length;
        await c.write([Buffer.from('DATA\r\n')]);
        if (!(await c.waitFor(before + 1, replyWaitMs))) break;
        if (c.finals[before] !== 354) continue;
        const token = `t${seed}-${sessionId}-${msg++}`;
        dataReplies.set(token, undefined);
        await c.write(chunks(r, dataBody(r, token)));
        if (await c.waitFor(before + 2, replyWaitMs)) dataReplies.set(token, c.finals[before + 1]);
      } else if (k < 0.5) {
        // A pipelined batch of random commands in one or several writes.
        const batch = Buffer.concat(Array.from({ length: int(r, 2, 8) }, () => randomCommand(r)));
        const before = c.finals.length;
        await c.write(chunks(r, batch));
        await c.waitFor(before + 1, replyWaitMs / 4);
      } else {
        const before = c.finals.length;
        await c.write(chunks(r, randomCommand(r)));
        await c.waitFor(before + 1, replyWaitMs / 4);
      }
    }
    if (!c.closed && r() < 0.7) {
      await c.write([Buffer.from('QUIT\r\n')]);
      await c.waitFor(c.finals.length + 1, replyWaitMs / 4);
    }
  } catch {
    // connection refused/reset: still a session that ended
  } finally {
    sock.destroy();
  }
  return { dataReplies, timedOut };
}

export interface FuzzTarget {
  port: number;
  /** Every recipient the backend's SMTP parser accepted a RCPT for. */
  backendRcpts(): string[];
  /** Message bodies the backend received. */
  backendBodies(): Buffer[];
  /** Live guard sessions. */
  activeSessions(): number;
}

export interface FuzzReport {
  seed: number;
  sessions: number;
  messagesTried: number;
  messagesRefused5xx: number;
  violations: string[];
  heapBeforeMb: number;
  heapAfterMb: number;
  ms: number;
}

export async function runFuzz(target: FuzzTarget, opts: { seed: number; sessions: number; concurrency?: number; onProgress?: (done: number) => void }): Promise<FuzzReport> {
  const started = Date.now();
  const violations: string[] = [];
  const uncaught = (err: unknown) => violations.push(`uncaught: ${String((err as Error)?.stack ?? err)}`);
  process.on('uncaughtException', uncaught);
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  const heapBefore = process.memoryUsage().heapUsed;
  const concurrency = opts.concurrency ?? 16;
  const refused = new Set<string>();
  let tried = 0;
  let next = 0;
  let done = 0;
  const worker = async () => {
    while (next < opts.sessions) {
      const id = next++;
      const out = await fuzzSession(target.port, opts.seed, id);
      for (const [token, code] of out.dataReplies) {
        tried++;
        if (code !== undefined && code >= 500) refused.add(token);
      }
      if (++done % 1000 === 0) opts.onProgress?.(done);
    }
  };
  try {
    await Promise.all(Array.from({ length: concurrency }, worker));
    // Every session must end once its client is gone (bounded wait).
    const deadline = Date.now() + 10_000;
    while (target.activeSessions() > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    if (target.activeSessions() > 0) violations.push(`${target.activeSessions()} guard sessions still active 10 s after every client left`);
    for (const rcpt of target.backendRcpts()) {
      const domain = rcpt.slice(rcpt.lastIndexOf('@') + 1).toLowerCase();
      if (rcpt.includes('@') ? domain !== ACCEPTED_DOMAIN : rcpt.toLowerCase() !== 'postmaster') violations.push(`backend got RCPT for ${JSON.stringify(rcpt)}`);
    }
    for (const body of target.backendBodies()) {
      const m = /X-Fuzz-Token: (t[0-9-]+)/.exec(body.toString('latin1'));
      if (m && refused.has(m[1]!)) violations.push(`message ${m[1]} delivered although its client got 5xx`);
      if (body.toString('latin1').includes('smuggled@sender.test') && /\r\nMAIL FROM:<smuggled/.test(body.toString('latin1')) && m && refused.has(m[1]!)) violations.push(`smuggled commands delivered in ${m[1]}`);
    }
  } finally {
    process.off('uncaughtException', uncaught);
  }
  gc?.();
  const heapAfter = process.memoryUsage().heapUsed;
  return {
    seed: opts.seed,
    sessions: opts.sessions,
    messagesTried: tried,
    messagesRefused5xx: refused.size,
    violations,
    heapBeforeMb: heapBefore / 2 ** 20,
    heapAfterMb: heapAfter / 2 ** 20,
    ms: Date.now() - started,
  };
}
