/**
 * ClientReads bookkeeping (src/net/client-reads.ts), driven as Node drives it: next() before each
 * read, onRead() with the bytes. The rule that keeps bytes safe: a buffer a write still holds
 * (pinned) is never read into again, by this socket or any other.
 */
import { describe, expect, test } from 'vitest';
import { BIG_BYTES, ClientReads, MAX_PRIVATE, SHARED_BYTES, clientReadStats } from '../../src/net/client-reads.js';

/** One read as Node does it: the bytes go into the buffer next() gave; returns what deliver saw. */
function read(r: ClientReads, bytes: number, during?: (view: Buffer) => void): { view: Buffer; privateView: boolean } {
  const buf = r.next();
  let seen: { view: Buffer; privateView: boolean } | undefined;
  r.deliver = (view) => {
    seen = { view, privateView: r.privateView };
    during?.(view);
  };
  buf.fill(0x61, 0, bytes);
  r.onRead(bytes, buf);
  return seen!;
}

describe('ClientReads', () => {
  test('every socket reads into the one shared buffer until it asks for its own', () => {
    const a = new ClientReads();
    const b = new ClientReads();
    const ba = a.next();
    expect(ba.length).toBe(SHARED_BYTES);
    expect(b.next()).toBe(ba);
    const r = read(a, 100);
    expect(r.view.length).toBe(100);
    expect(r.view.buffer).toBe(ba.buffer);
    expect(r.privateView).toBe(false);
  });

  test('a private buffer after wantPrivate, the shared one again after release, then reused', () => {
    const a = new ClientReads();
    const shared = a.next();
    a.wantPrivate();
    const own = a.next();
    expect(own).not.toBe(shared);
    expect(own.length).toBe(BIG_BYTES);
    expect(clientReadStats().privateOut).toBe(1);
    a.deliver = () => expect(a.privateView).toBe(true);
    a.onRead(10, own);
    a.release();
    expect(a.next()).toBe(shared);
    expect(clientReadStats().privateOut).toBe(0);
    const b = new ClientReads();
    b.wantPrivate();
    expect(b.next()).toBe(own); // from the pool, not a new allocation
    b.close();
    expect(clientReadStats().privateOut).toBe(0);
  });

  test('a pinned buffer is never read into again, by any socket', () => {
    const a = new ClientReads();
    a.wantPrivate();
    a.next();
    const pinnedBefore = clientReadStats().pinned;
    let held: Buffer | undefined;
    // The read's bytes go to a write that the kernel has not finished: pinned while it is handled.
    const r = read(a, 1000, (view) => {
      held = view;
      a.pin();
    });
    expect(r.privateView).toBe(true);
    expect(clientReadStats().pinned).toBe(pinnedBefore + 1);
    const pinned = held!.buffer;
    // The same socket's next read, and every buffer handed out after, lie elsewhere.
    const others = Array.from({ length: 8 }, () => new ClientReads());
    for (let round = 0; round < 4; round++) {
      expect(a.next().buffer).not.toBe(pinned);
      for (const o of others) {
        o.wantPrivate();
        expect(o.next().buffer).not.toBe(pinned);
        o.release();
        expect(o.next().buffer).not.toBe(pinned);
      }
      a.release();
      expect(a.next().buffer).not.toBe(pinned);
      a.wantPrivate();
    }
    a.close();
    expect(clientReadStats().privateOut).toBe(0);
  });

  test('pin() outside a private read does nothing (the shared buffer is never written as a view)', () => {
    const a = new ClientReads();
    const before = clientReadStats().pinned;
    read(a, 10, () => a.pin());
    a.pin();
    expect(clientReadStats().pinned).toBe(before);
  });

  test(`at most ${MAX_PRIVATE} private buffers at once; beyond that the shared one`, () => {
    const many = Array.from({ length: MAX_PRIVATE + 3 }, () => new ClientReads());
    const shared = new ClientReads().next();
    const got = many.map((r) => {
      r.wantPrivate();
      return r.next();
    });
    expect(got.filter((b) => b !== shared)).toHaveLength(MAX_PRIVATE);
    expect(got.slice(MAX_PRIVATE).every((b) => b === shared)).toBe(true);
    expect(clientReadStats().privateOut).toBe(MAX_PRIVATE);
    // One gives its buffer back: a waiting socket gets one at its next read.
    many[0]!.close();
    expect(many[MAX_PRIVATE]!.next()).not.toBe(shared);
    for (const r of many) r.close();
    expect(clientReadStats().privateOut).toBe(0);
  });
});
