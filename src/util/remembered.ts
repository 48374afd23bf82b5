/**
 * A parser with its answers kept: the same client address and the same few domains are parsed for
 * every connection and command (bans, relay networks, sender and recipient rules). Bounded: the
 * whole set is dropped when full, so hostile input costs no more than parsing it. Answers are shared:
 * callers must not modify them (the result types are readonly).
 */
export function remembered<T>(parse: (s: string) => T, max = 4096): (s: string) => T {
  const known = new Map<string, T>();
  return (s) => {
    const hit = known.get(s);
    if (hit !== undefined || known.has(s)) return hit as T;
    const v = parse(s);
    if (known.size >= max) known.clear();
    known.set(s, v);
    return v;
  };
}
