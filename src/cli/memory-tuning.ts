/**
 * Two memory settings of the guard process that decide its CPU per MiB of message data (README
 * "Performance", "Memory settings").
 *
 * 1. V8's heap growing factor. Node 20's V8 counts the ArrayBuffer bytes allocated since the last full
 *    GC (every socket read is one) toward the old generation's limit, and after a full GC may set that
 *    limit only ~8 MB above the live heap. Once any full GC had run (an idle night's memory reducer, a
 *    burst of sessions), relaying large messages started a full GC for every ~8 MB read: 1 MB messages
 *    cost 2–4 times the CPU of a fresh process. A factor of 3 puts the limit far enough above the live
 *    heap that read buffers are freed by scavenges again. Set here, at start, unless the operator chose
 *    one on node's command line (node --heap-growing-percent=N …; Node refuses V8 flags of this kind
 *    in NODE_OPTIONS): theirs wins.
 *
 * 2. glibc's malloc trim threshold. Those read buffers come from malloc; a scavenge frees tens of MB of
 *    them at once, glibc may give the top of its heap back to the kernel (default threshold 128 KiB),
 *    and the next reads fault every page in again: ~41,000 page faults per 200 MiB, system time twice
 *    the user time, in most full bench runs without this setting and in none with it. glibc reads its
 *    tunables only when the process starts, so this one cannot be set from here: `npm start`, the
 *    systemd unit, the container image and the Kubernetes deployment set GLIBC_TUNABLES
 *    (MALLOC_TUNABLES below); the guard only reports whether it is in effect.
 */
import { setFlagsFromString } from 'node:v8';

export const HEAP_GROWING_PERCENT = 200;

/** The GLIBC_TUNABLES value the deploy files and `npm start` give the guard: keep up to 64 MiB freed at the heap top. */
export const MALLOC_TUNABLES = 'glibc.malloc.trim_threshold=67108864';

/** True when node's own arguments already name a heap growing percent (V8 takes - or _ in flag names). */
export function heapGrowthChosen(execArgv: readonly string[]): boolean {
  return execArgv.some((s) => /^--heap[-_]growing[-_]percent(=|$)/.test(s));
}

/** Sets --heap-growing-percent unless the operator chose one; returns what was set, or undefined. */
export function tuneHeapGrowth(execArgv: readonly string[]): number | undefined {
  if (heapGrowthChosen(execArgv)) return undefined;
  setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
  return HEAP_GROWING_PERCENT;
}

/**
 * The malloc trim threshold in effect, from the environment glibc read at start: GLIBC_TUNABLES'
 * glibc.malloc.trim_threshold (colon-separated name=value pairs), else the older MALLOC_TRIM_THRESHOLD_;
 * 'glibc default' when neither names one. Only a decimal byte count is reported as given; anything
 * else (empty, text, a value of any length) as 'not a number', never copied into the log.
 */
export function mallocTrimThreshold(env: NodeJS.ProcessEnv): string {
  const shown = (v: string) => (/^\d{1,20}$/.test(v.trim()) ? v.trim() : 'not a number');
  for (const pair of (env.GLIBC_TUNABLES ?? '').split(':')) {
    const eq = pair.indexOf('=');
    if (eq > 0 && pair.slice(0, eq).trim() === 'glibc.malloc.trim_threshold') return shown(pair.slice(eq + 1));
  }
  const old = env.MALLOC_TRIM_THRESHOLD_;
  return old === undefined || old.trim() === '' ? 'glibc default' : shown(old);
}
