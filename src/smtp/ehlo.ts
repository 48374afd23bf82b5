/**
 * EHLO capability filter: the guard shows clients only the extensions it understands and
 * enforces (RFC 5321 §4.1.1.1, §2.2.2). Everything else the backend offers — CHUNKING/BDAT and
 * BINARYMIME (the guard only scans DATA), Exchange's XEXCH50, X-LINK2STATE, X-EXPS, XRDST,
 * TURN/ETRN/ATRN, the backend's own STARTTLS and AUTH — is hidden unless explicitly allowed.
 * Pure: no I/O.
 */
import type { Reply } from './reply.js';
import { keptAnswers, remembered } from '../util/remembered.js';

/** Extensions that are safe to pass through by default. */
export const DEFAULT_EHLO_ALLOW = ['PIPELINING', 'SIZE', '8BITMIME', 'SMTPUTF8', 'DSN', 'ENHANCEDSTATUSCODES', 'HELP'];

export interface FilterEhloOptions {
  /** Keywords to keep (compared case-insensitively). */
  allow: ReadonlySet<string>;
  /** The guard's own message size limit; SIZE is advertised as min(backend, this). */
  maxSizeBytes?: number;
  /** Lines the guard adds itself (e.g. 'STARTTLS', 'AUTH PLAIN LOGIN'); they replace a backend line with the same keyword. */
  add?: readonly string[];
}

/**
 * Keyword of an EHLO line, upper-cased (RFC 5321 §4.1.1.1: ehlo-keyword is case-insensitive).
 * The legacy "AUTH=LOGIN" form (pre-RFC 4954 clients) belongs to AUTH.
 */
function keywordOf(line: string): string {
  const token = line.trim().split(/\s+/, 1)[0] ?? '';
  const upper = token.toUpperCase();
  return upper.startsWith('AUTH=') ? 'AUTH' : upper;
}

function paramsOf(line: string): string {
  const trimmed = line.trim();
  const sp = trimmed.search(/\s/);
  return sp < 0 ? '' : trimmed.slice(sp + 1).trim();
}

/** SIZE parameter (RFC 1870 §4): a decimal number; 0 or missing means "no fixed limit". */
function parseSize(params: string): number | undefined {
  if (!/^\d{1,15}$/.test(params)) return undefined;
  const n = Number(params);
  return n > 0 ? n : undefined;
}

/**
 * Filter the backend's EHLO reply. Keeps the first line (greeting), keeps keyword lines whose
 * keyword is allowed (first occurrence only), rewrites SIZE to min(backend, maxSizeBytes) — or
 * adds SIZE when the backend has none and maxSizeBytes is set, as long as SIZE is allowed —
 * and appends `add` lines, replacing backend lines with the same keyword.
 */
export function filterEhlo(r: Reply, opts: FilterEhloOptions): Reply {
  // The backend says the same EHLO reply to every connection, and the options take a few shapes:
  // the filtered reply is worked out once per (reply, options) and shared (replies are never modified).
  const text = r.lines.join('\n');
  if (text.length > MEMO_TEXT_MAX) return filterEhloUncached(r, opts);
  let answer = filteredBy.get(opts.allow);
  if (!answer) filteredBy.set(opts.allow, (answer = keptAnswers<Reply>(64)));
  return answer(`${opts.maxSizeBytes ?? ''}\n${(opts.add ?? []).join('\n')}\n\n${text}`, () => filterEhloUncached(r, opts));
}

/**
 * Replies longer than this are worked out each time, never kept: real EHLO replies are a few hundred
 * bytes, and a backend that sends 200 long lines must not make the memos hold megabytes.
 */
const MEMO_TEXT_MAX = 4096;

/** Filtered replies by allow set (the configured set, or its copy without DSN), then by options and reply text; bounded. */
const filteredBy = new WeakMap<ReadonlySet<string>, (key: string, make: () => Reply) => Reply>();

function filterEhloUncached(r: Reply, opts: FilterEhloOptions): Reply {
  const allow = new Set<string>();
  for (const k of opts.allow) allow.add(k.toUpperCase());
  const added = new Map<string, string>();
  for (const line of opts.add ?? []) {
    const k = keywordOf(line);
    if (k !== '' && !added.has(k)) added.set(k, line.trim());
  }

  const out: string[] = [r.lines[0] ?? ''];
  const seen = new Set<string>();
  let sizeDone = false;
  for (const line of r.lines.slice(1)) {
    const k = keywordOf(line);
    if (k === '' || !allow.has(k) || added.has(k)) continue;
    const upperLine = line.trim().toUpperCase();
    // Several AUTH lines (AUTH and AUTH=…) may coexist; other keywords appear once.
    const dedupKey = k === 'AUTH' ? upperLine : k;
    if (seen.has(dedupKey)) continue;
    seen.add(dedupKey);
    if (k === 'SIZE') {
      out.push(sizeLine(parseSize(paramsOf(line)), opts.maxSizeBytes));
      sizeDone = true;
      continue;
    }
    out.push(line.trim());
  }
  if (!sizeDone && allow.has('SIZE') && !added.has('SIZE') && opts.maxSizeBytes !== undefined) {
    out.push(sizeLine(undefined, opts.maxSizeBytes));
  }
  for (const line of added.values()) out.push(line);
  return { code: 250, lines: out };
}

function sizeLine(backend: number | undefined, guard: number | undefined): string {
  const limit = guard !== undefined && guard > 0 ? (backend !== undefined ? Math.min(backend, guard) : guard) : backend;
  return limit === undefined ? 'SIZE' : `SIZE ${limit}`;
}

/**
 * What the backend offers: keyword (upper-case) → parameters, for learning PIPELINING,
 * STARTTLS, AUTH mechanisms, SIZE… Repeated keywords (e.g. "AUTH LOGIN" and the legacy
 * "AUTH=LOGIN PLAIN") have their parameters merged, without case-insensitive duplicates.
 */
export function ehloKeywords(r: Reply): ReadonlyMap<string, string> {
  const text = r.lines.join('\n');
  return text.length > MEMO_TEXT_MAX ? parseKeywords(r.lines) : keywordsOfText(text);
}

/** Keyword maps by reply text (the backend's EHLO reply is the same for every connection); shared, so read-only. */
const keywordsOfText = remembered((text: string): ReadonlyMap<string, string> => parseKeywords(text.split('\n')), 64);

function parseKeywords(lines: readonly string[]): Map<string, string> {
  const map = new Map<string, string>();
  for (const line of lines.slice(1)) {
    const k = keywordOf(line);
    if (k === '') continue;
    const trimmed = line.trim();
    // "AUTH=LOGIN PLAIN": the mechanisms after "=" count as parameters.
    const params = trimmed.toUpperCase().startsWith('AUTH=') ? trimmed.slice(5).trim() : paramsOf(trimmed);
    const prev = map.get(k);
    if (prev === undefined) {
      map.set(k, params);
      continue;
    }
    const have = prev.split(/\s+/).filter((p) => p !== '');
    const upper = new Set(have.map((p) => p.toUpperCase()));
    for (const p of params.split(/\s+/)) {
      if (p !== '' && !upper.has(p.toUpperCase())) {
        have.push(p);
        upper.add(p.toUpperCase());
      }
    }
    map.set(k, have.join(' '));
  }
  return map;
}
