/**
 * AcceptedDomains: the domains we serve. Exact names; "*.example.com" accepts every subdomain of
 * example.com at any depth but not example.com itself; address literals only when listed.
 * Entries are canonical (compile.ts); a lookup canonicalises its input the same way.
 */
import { canonicalDomain } from './domain-name.js';

export class AcceptedDomains {
  readonly #exact: ReadonlySet<string>;
  readonly #wildcardBases: ReadonlySet<string>;

  /** `exact` and `wildcardBases` must already be canonical ("example.com" for "*.example.com"). */
  constructor(exact: Iterable<string>, wildcardBases: Iterable<string>) {
    this.#exact = new Set(exact);
    this.#wildcardBases = new Set(wildcardBases);
    Object.freeze(this);
  }

  has(domain: string): boolean {
    const c = canonicalDomain(domain);
    if (!c.ok) return false;
    if (this.#exact.has(c.domain)) return true;
    if (c.kind !== 'name') return false;
    // Walk up the parents: a.b.example.com → b.example.com → example.com → com.
    let rest = c.domain;
    for (let dot = rest.indexOf('.'); dot >= 0; dot = rest.indexOf('.')) {
      rest = rest.slice(dot + 1);
      if (this.#wildcardBases.has(rest)) return true;
    }
    return false;
  }
}
