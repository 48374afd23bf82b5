/**
 * RecipientList: the valid recipients of list mode, read from a plain text file (rules/recipients.txt).
 *
 * Format, one entry per line:
 *   alice@example.com        a mailbox (aliases are simply more lines)
 *   @example.org             a catch-all: every local part at example.org is known
 *   # comment                whole-line comment; also after whitespace at the end of an entry
 * Blank lines are ignored. A '#' that touches the address is part of it ('#' is atext, RFC 5322 §3.2.3).
 *
 * Matching is case-insensitive for the whole address. RFC 5321 §2.4 lets a server treat local parts
 * as case-sensitive, but Exchange / Active Directory (like most MTAs) treat them case-insensitively,
 * and a list that disagreed with the backend would refuse mail the backend would have delivered.
 */
import { readFile } from 'node:fs/promises';

export type ListLookupResult = 'known' | 'unknown';

export type ParsedRecipientList = { ok: true; list: RecipientList } | { ok: false; line: number; message: string };

/** RFC 5321 §4.5.3.1.1 / §4.5.3.1.2 length limits. */
const MAX_LOCAL_PART = 64;
const MAX_DOMAIN = 255;
const DOMAIN = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;
/** Printable ASCII and UTF-8 (RFC 6531), no space, no control characters, no '@'. */
const LOCAL_PART = /^[^\s@\p{Cc}]+$/u;

export class RecipientList {
  private readonly mailboxes: ReadonlySet<string>;
  private readonly catchAllDomains: ReadonlySet<string>;

  private constructor(mailboxes: Set<string>, catchAllDomains: Set<string>) {
    this.mailboxes = mailboxes;
    this.catchAllDomains = catchAllDomains;
  }

  /** Parse the text of a list file. The first bad line is reported with its 1-based number. */
  static parse(text: string): ParsedRecipientList {
    const mailboxes = new Set<string>();
    const catchAll = new Set<string>();
    const lines = text.split(/\r?\n/);
    for (let i = 0; i < lines.length; i++) {
      const entry = stripComment(lines[i] ?? '').trim();
      if (entry === '') continue;
      const line = i + 1;
      if (/\s/.test(entry)) return { ok: false, line, message: 'one address per line (found whitespace inside the entry)' };
      const at = entry.lastIndexOf('@');
      if (at < 0) return { ok: false, line, message: `not an address or @domain: ${quote(entry)}` };
      const local = entry.slice(0, at);
      const domain = entry.slice(at + 1).toLowerCase().replace(/\.$/, '');
      if (domain.length === 0 || domain.length > MAX_DOMAIN || !DOMAIN.test(domain)) {
        return { ok: false, line, message: `bad domain (write IDNs as punycode A-labels): ${quote(entry)}` };
      }
      if (local === '') {
        catchAll.add(domain);
        continue;
      }
      if (local.length > MAX_LOCAL_PART || !LOCAL_PART.test(local)) {
        return { ok: false, line, message: `bad local part: ${quote(entry)}` };
      }
      mailboxes.add(`${local.toLowerCase()}@${domain}`);
    }
    return { ok: true, list: new RecipientList(mailboxes, catchAll) };
  }

  /** Read and parse a list file. Throws on I/O errors and on a bad line (the message names file and line). */
  static async load(file: string): Promise<RecipientList> {
    const text = await readFile(file, 'utf8');
    const parsed = RecipientList.parse(text);
    if (!parsed.ok) {
      throw Object.assign(new Error(`${file}:${parsed.line}: ${parsed.message}`), {
        code: 'RG_ERR_DIRECTORY_LIST_SYNTAX',
        file,
        line: parsed.line,
      });
    }
    return parsed.list;
  }

  /** Is this address (local@domain) listed, or is its domain a catch-all? Case-insensitive. */
  lookup(address: string): ListLookupResult {
    const lower = address.toLowerCase();
    if (this.mailboxes.has(lower)) return 'known';
    const at = lower.lastIndexOf('@');
    if (at < 0) return 'unknown';
    const domain = lower.slice(at + 1).replace(/\.$/, '');
    if (this.catchAllDomains.has(domain)) return 'known';
    // A trailing dot on the domain (RFC 1034 §3.1 absolute name) is the same mailbox.
    if (domain.length !== lower.length - at - 1 && this.mailboxes.has(`${lower.slice(0, at)}@${domain}`)) return 'known';
    return 'unknown';
  }

  /** Entries in the list: mailboxes plus catch-all domains. */
  get size(): number {
    return this.mailboxes.size + this.catchAllDomains.size;
  }
}

/** Remove a comment: a '#' at the start of the line or after whitespace starts one. */
function stripComment(line: string): string {
  const m = /(^|\s)#/.exec(line);
  return m ? line.slice(0, m.index) : line;
}

function quote(s: string): string {
  return JSON.stringify(s.length > 80 ? `${s.slice(0, 80)}…` : s);
}
