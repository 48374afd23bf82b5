/**
 * The filter on a DNS list's A records, in postscreen's syntax (postscreen_dnsbl_sites
 * `zone=filter*weight`): four dot-separated octets, each a number or a bracketed set of numbers and
 * ranges separated by ";" — `127.0.0.2`, `127.0.0.[2..11]`, `127.0.[2..15].[0;1]`.
 * Pure: no I/O.
 */

export type RecordFilter = (address: string) => boolean;

export type ParsedFilter = { ok: true; filter: RecordFilter } | { ok: false; reason: string };

type OctetSet = Array<[number, number]>;

function parseOctet(s: string): OctetSet | string {
  const num = (t: string): number | undefined => (/^[0-9]{1,3}$/.test(t) && Number(t) <= 255 ? Number(t) : undefined);
  if (!s.startsWith('[')) {
    const n = num(s);
    return n === undefined ? `"${s}" is not a number 0..255` : [[n, n]];
  }
  if (!s.endsWith(']') || s.length < 3) return `"${s}" lacks its closing "]"`;
  const out: OctetSet = [];
  for (const part of s.slice(1, -1).split(';')) {
    const range = /^([0-9]{1,3})\.\.([0-9]{1,3})$/.exec(part);
    if (range) {
      const lo = num(range[1]!);
      const hi = num(range[2]!);
      if (lo === undefined || hi === undefined || lo > hi) return `"${part}" is not a range of octets (low..high, 0..255)`;
      out.push([lo, hi]);
      continue;
    }
    const n = num(part);
    if (n === undefined) return `"${part}" is not a number 0..255 or a range low..high`;
    out.push([n, n]);
  }
  return out;
}

/** Compile a filter such as `127.0.0.[2..11]`; an answer matches when every octet is in its set. */
export function parseRecordFilter(text: string): ParsedFilter {
  // Split on dots outside brackets ("[2..11]" holds dots of its own).
  const octets: string[] = [];
  let cur = '';
  let depth = 0;
  for (const ch of text.trim()) {
    if (ch === '[') depth++;
    if (ch === ']') depth--;
    if (ch === '.' && depth === 0) {
      octets.push(cur);
      cur = '';
    } else cur += ch;
  }
  octets.push(cur);
  if (octets.length !== 4) return { ok: false, reason: `"${text}" must have four octets (e.g. 127.0.0.[2..11])` };
  const sets: OctetSet[] = [];
  for (const o of octets) {
    const s = parseOctet(o);
    if (typeof s === 'string') return { ok: false, reason: s };
    sets.push(s);
  }
  const filter: RecordFilter = (address) => {
    const parts = address.split('.');
    if (parts.length !== 4) return false;
    return parts.every((p, i) => {
      const v = Number(p);
      return sets[i]!.some(([lo, hi]) => v >= lo && v <= hi);
    });
  };
  return { ok: true, filter };
}

/**
 * Without a filter: any answer in 127.0.0.0/8 except 127.255.255.0/24, which lists such as Spamhaus
 * use to say "query refused" or "bad query" (a refusal is not a listing). Anything outside 127/8 is
 * not a DNSBL answer at all (a wildcard or a hijacking resolver).
 */
export const DEFAULT_RECORD_FILTER: RecordFilter = (address) => address.startsWith('127.') && !address.startsWith('127.255.255.');
