/**
 * V8's heap growing factor for the guard process.
 *
 * Node 20's V8 counts the ArrayBuffer bytes allocated since the last full GC (every socket read is one)
 * toward the old generation's limit, and after a full GC it may set that limit only ~8 MB above the live
 * heap. A guard relaying large messages reads tens of MB between two scavenges, so once any full GC has
 * run (an idle night's memory reducer, a burst of sessions) every ~8 MB of message bytes started another
 * full GC of the whole heap: 1 MB messages cost 2–4 times the CPU of the same run before it
 * (bench: README "Performance", the per-MiB row). A growing factor of 3 puts the limit far enough
 * above the live heap that read buffers are freed by scavenges again, as before the first full GC.
 *
 * Applied only when the operator has not chosen a factor (node --heap-growing-percent=N, or in
 * NODE_OPTIONS): theirs wins.
 */
import { setFlagsFromString } from 'node:v8';

export const HEAP_GROWING_PERCENT = 200;

/** True when node's own arguments or NODE_OPTIONS already name a heap growing percent (V8 takes - or _ in flag names). */
export function heapGrowthChosen(execArgv: readonly string[], nodeOptions: string | undefined): boolean {
  const names = (s: string) => /^--heap[-_]growing[-_]percent(=|$)/.test(s);
  return execArgv.some(names) || (nodeOptions ?? '').split(/\s+/).some(names);
}

/** Sets --heap-growing-percent unless the operator chose one; returns what was set, or undefined. */
export function tuneHeapGrowth(execArgv: readonly string[], nodeOptions: string | undefined): number | undefined {
  if (heapGrowthChosen(execArgv, nodeOptions)) return undefined;
  setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
  return HEAP_GROWING_PERCENT;
}
