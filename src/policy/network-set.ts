/**
 * NetworkSet: a compiled list of CIDR networks. Built once at compile time; a check is one
 * mask-and-lookup per distinct prefix length (never a parse per check).
 */
import { maskOf, parseIp, unmapIPv4, type IpAddress, type IpFamily, type IpNetwork } from '../util/ip-address.js';

export class NetworkSet {
  readonly #byFamily: ReadonlyMap<IpFamily, ReadonlyArray<{ mask: bigint; networks: ReadonlySet<bigint> }>>;
  readonly size: number;

  constructor(networks: readonly IpNetwork[]) {
    const tmp = new Map<IpFamily, Map<number, Set<bigint>>>();
    for (const n of networks) {
      let byPrefix = tmp.get(n.family);
      if (!byPrefix) tmp.set(n.family, (byPrefix = new Map()));
      let set = byPrefix.get(n.prefix);
      if (!set) byPrefix.set(n.prefix, (set = new Set()));
      set.add(n.network);
    }
    const out = new Map<IpFamily, { mask: bigint; networks: ReadonlySet<bigint> }[]>();
    for (const [family, byPrefix] of tmp) {
      out.set(family, [...byPrefix].map(([prefix, set]) => ({ mask: maskOf(family, prefix), networks: set })));
    }
    this.#byFamily = out;
    this.size = networks.length;
    Object.freeze(this);
  }

  /** True when the address lies in one of the networks. IPv4-mapped IPv6 addresses match IPv4 entries. */
  contains(address: IpAddress | undefined): boolean {
    if (!address) return false;
    const a = unmapIPv4(address);
    const groups = this.#byFamily.get(a.family);
    if (!groups) return false;
    for (const g of groups) if (g.networks.has(a.value & g.mask)) return true;
    return false;
  }

  /** Same as contains() for a text address; an unparseable address is in no network. */
  containsText(ip: string): boolean {
    return this.contains(parseIp(ip));
  }
}
