/**
 * A closed session must be garbage to V8's young-generation GC, not only to a full one.
 *
 * V8 keeps the old backing table of a Map or Set that grew or was rehashed, with every entry it
 * held, until a full GC. Once the collection itself lives in the old generation (after the first
 * mark-compact), each of those dead tables is a root for every scavenge until the next full GC, and
 * the entries it held survive and are promoted. The guard adds one session to its registry and one
 * slot to its backend capacity per connection; before the fix, every session present at a rehash
 * (about half of them) was copied and promoted, ~1.9 MB per scavenge in one-message connections.
 *
 * The test does what a long-running guard does: the collections are tenured by full GCs first, then
 * thousands of short-lived "sessions" (each holding 16 KB on the heap) pass through them with at most
 * 20 alive, and a minor GC runs every 200 of them. A session that outlives its removal is promoted at
 * its second scavenge; the old generation's growth tells how many were. With the sessions released
 * it stays near the 20 live ones; when the collection kept them (checked by hand against the
 * previous code) it grew by about 20 MB here.
 */
import v8 from 'node:v8';
import vm from 'node:vm';
import { describe, expect, test } from 'vitest';
import { SessionRegistry, type RegisteredSession, type SessionInfo } from '../../src/session/session-registry.js';
import { BackendCapacity } from '../../src/backend/backend-capacity.js';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as (opts?: { type: 'minor' | 'major' }) => void;

const SESSIONS = 3000;
const LIVE = 20;
const PAYLOAD = 2000; // numbers: ~16 KB on the heap per session
const MINOR_EVERY = 200;

function oldSpaceUsed(): number {
  return v8.getHeapSpaceStatistics().find((s) => s.space_name === 'old_space')!.space_used_size;
}

function fakeSession(i: number): RegisteredSession & { payload: number[] } {
  return {
    id: `s${i}`,
    payload: new Array<number>(PAYLOAD).fill(i + 0.5),
    info: () => ({ id: `s${i}` }) as SessionInfo,
    terminate: () => undefined,
    drain: () => undefined,
    ended: Promise.resolve(),
  };
}

/** Old-space growth (bytes) while `SESSIONS` sessions pass through add/remove with `LIVE` alive at a time. */
function churn(add: (i: number) => () => void): number {
  const live: Array<() => void> = [];
  // Tenure the collection (and what it was built with) as a long-running guard's is.
  for (let i = 0; i < LIVE; i++) live.push(add(-1 - i));
  gc();
  gc();
  const before = oldSpaceUsed();
  for (let i = 0; i < SESSIONS; i++) {
    live.push(add(i));
    if (live.length > LIVE) live.shift()!();
    if (i % MINOR_EVERY === MINOR_EVERY - 1) gc({ type: 'minor' });
  }
  for (const remove of live.splice(0)) remove();
  gc({ type: 'minor' });
  gc({ type: 'minor' });
  return oldSpaceUsed() - before;
}

describe('closed sessions are young garbage: no collection of the guard keeps them past their removal', () => {
  // What LIVE sessions promoted at once would take, with room for the test's own small objects.
  const bound = 4 * LIVE * PAYLOAD * 8 + 2 * 1024 * 1024;

  test('the session registry', () => {
    const registry = new SessionRegistry();
    const grown = churn((i) => {
      const s = fakeSession(i);
      registry.add(s);
      return () => registry.remove(s.id);
    });
    expect(registry.size).toBe(0);
    expect(grown).toBeLessThan(bound);
  });

  test('the backend slots (the holder of a released slot)', () => {
    const capacity = new BackendCapacity(1_000_000);
    const grown = churn((i) => {
      const s = fakeSession(i);
      const got = capacity.acquire('127.0.0.1', { idleMs: () => (s.payload.length > 0 ? undefined : 0), shed: () => undefined });
      if (!got.ok) throw new Error('no slot');
      return got.release;
    });
    expect(capacity.inUse).toBe(0);
    expect(grown).toBeLessThan(bound);
  });

  test('the registry still finds, lists and forgets its sessions', () => {
    const registry = new SessionRegistry();
    const a = fakeSession(1);
    const b = fakeSession(2);
    registry.add(a);
    registry.add(b);
    expect(registry.get('s1')).toBe(a);
    expect(registry.all()).toEqual([a, b]);
    expect(registry.list().map((x) => x.id)).toEqual(['s1', 's2']);
    registry.remove('s1');
    expect(registry.get('s1')).toBeUndefined();
    expect(registry.all()).toEqual([b]);
    expect(registry.size).toBe(1);
  });
});
