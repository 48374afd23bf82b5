/**
 * A parser with its answers kept: the same client address and the same few domains are parsed for
 * every connection and command (bans, relay networks, sender and recipient rules). Bounded: the
 * whole set is dropped when full, so hostile input costs no more than parsing it. Answers are shared:
 * callers must not modify them (the result types are readonly).
 */
export function remembered<T>(parse: (s: string) => T, max = 4096): (s: string) => T {
  const answer = keptAnswers<T>(max);
  return (s) => answer(s, () => parse(s));
}

/**
 * The same bounded store for answers that need more than their key to work out: `answer(key, make)`
 * returns the kept answer for key, or calls make() once and keeps what it returns.
 */
export function keptAnswers<T>(max: number): (key: string, make: () => T) => T {
  const known = new Map<string, T>();
  return (key, make) => {
    const hit = known.get(key);
    if (hit !== undefined || known.has(key)) return hit as T;
    const v = make();
    if (known.size >= max) known.clear();
    known.set(key, v);
    return v;
  };
}
