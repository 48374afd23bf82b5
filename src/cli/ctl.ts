/**
 * `relay-guard ctl …`: the common incident moves over the admin API (add a partner's network, ban a
 * subnet, ask why a recipient is refused). Talks HTTP to --admin HOST:PORT with a bearer token.
 * Exit status: 0 done, 1 the API refused or could not be reached, 2 usage error.
 */
import { parseArgs } from 'node:util';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../rules/atomic-write.js';
import { formatRuleError } from '../rules/rules-change.js';
import { SECTIONS, SECTION_NAMES, isSectionName } from '../rules/schemas.js';
import { formatSectionText, parseSectionText } from '../rules/section-file.js';

export interface CtlIo {
  stdout: (s: string) => void;
  stderr: (s: string) => void;
  env: NodeJS.ProcessEnv;
  fetch?: typeof fetch;
}

export const DEFAULT_ADMIN = '127.0.0.1:8025';
const REQUEST_TIMEOUT_MS = 15_000;

export const CTL_USAGE = `Usage: relay-guard ctl [--admin HOST:PORT] [--token TOKEN] [--json] COMMAND …

Rules (SECTION: ${SECTION_NAMES.join(', ')}):
  SECTION list                      show a section
  SECTION add VALUE                 add one item, e.g. relay-networks add 198.51.100.0/24
                                    (senders: VALUE is a JSON rule object)
  SECTION remove VALUE [--force]    remove one item (senders: the rule id); removing the last
                                    accepted domain is refused (409) unless --force
  rules show                        every section with its ETag
  rules history                     versions, newest first
  rules reload                      re-read the rules files now (hand edits), as SIGHUP does
  rules rollback VERSION [--force]  make a previous version current again
  rules export DIR                  write every section to DIR as rule files (keep them in git)
  rules import DIR [--force]        push the rule files of DIR as one audited change (checked
                                    here and by the guard: schema, empty files, open relay)
  fleet                             guards sharing the rules store: version, behind or not
  audit [--limit N]                 who changed what, newest first

Why is this refused?
  check --ip IP --rcpt ADDR [--from ADDR] [--helo NAME] [--user USER] [--listener NAME]

Bans and sessions:
  bans list
  bans add TARGET [--duration 1h] [--reason TEXT] [--force]
                                    TARGET: an address or CIDR network; --force is needed for a
                                    network covering the Internet (wider than IPv4 /8 or IPv6 /16,
                                    or an IPv6 transition prefix such as 2002::/16)
  bans remove TARGET
  sessions list
  sessions close ID                 close a live session with 421
  pool                              pooled mode: backend sessions (idle, lent, dedicated), waiting clients
  reload-recipients                 re-read the recipient list file

AUTH trust:
  auth-canary                       does the backend accept random credentials? (AUTH grants no
                                    relay while it does)
  auth-canary run                   run the canary now and show the result

Options:
  --admin HOST:PORT   admin API address (default: $RELAY_GUARD_ADMIN or ${DEFAULT_ADMIN})
  --token TOKEN       bearer token (default: $RELAY_GUARD_ADMIN_TOKEN; prefer the variable,
                      a command line is visible to other local users)
  --json              print the API's JSON answer as is
  --force             allow a change that leaves no accepted domain, or a ban covering
                      the Internet
  -h, --help          this help
`;

const OPTIONS = {
  admin: { type: 'string' },
  token: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  ip: { type: 'string' },
  rcpt: { type: 'string' },
  from: { type: 'string' },
  helo: { type: 'string' },
  user: { type: 'string' },
  listener: { type: 'string' },
  duration: { type: 'string' },
  reason: { type: 'string' },
  limit: { type: 'string' },
  force: { type: 'boolean' },
} as const;

type Values = { [K in keyof typeof OPTIONS]?: (typeof OPTIONS)[K]['type'] extends 'boolean' ? boolean : string };

class UsageError extends Error {}

interface ApiAnswer {
  status: number;
  body: unknown;
}

type Json = Record<string, unknown>;

/** "HOST:PORT", "[v6]:PORT" or a full http(s) URL → base URL of the API. */
export function adminBaseUrl(admin: string): string {
  const a = admin.trim();
  if (/^https?:\/\//i.test(a)) return `${a.replace(/\/+$/, '')}/api/v1`;
  const m = /^\[([0-9A-Fa-f:.]+)\]:(\d{1,5})$/.exec(a) ?? /^([^:/\s]+):(\d{1,5})$/.exec(a);
  if (!m || Number(m[2]) > 65535) throw new UsageError(`--admin: expected HOST:PORT, got ${JSON.stringify(admin)}`);
  const host = m[1]!.includes(':') ? `[${m[1]}]` : m[1]!;
  return `http://${host}:${m[2]}/api/v1`;
}

export async function runCtl(argv: string[], io: CtlIo): Promise<number> {
  let values: Values;
  let positionals: string[];
  try {
    const parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
    values = parsed.values as Values;
    positionals = parsed.positionals;
  } catch (err) {
    io.stderr(`relay-guard ctl: ${(err as Error).message}\n\n${CTL_USAGE}`);
    return 2;
  }
  if (values.help || positionals.length === 0) {
    (values.help ? io.stdout : io.stderr)(CTL_USAGE);
    return values.help ? 0 : 2;
  }
  try {
    const base = adminBaseUrl(values.admin ?? io.env['RELAY_GUARD_ADMIN'] ?? DEFAULT_ADMIN);
    const token = values.token ?? io.env['RELAY_GUARD_ADMIN_TOKEN'];
    const doFetch = io.fetch ?? fetch;
    const api = async (method: string, path: string, body?: unknown): Promise<ApiAnswer> => {
      const headers: Record<string, string> = { accept: 'application/json' };
      if (token) headers['authorization'] = `Bearer ${token}`;
      if (body !== undefined) headers['content-type'] = 'application/json';
      const res = await doFetch(`${base}${path}`, {
        method,
        headers,
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      });
      const text = await res.text();
      let parsed: unknown = text;
      try {
        parsed = text === '' ? undefined : JSON.parse(text);
      } catch {
        // not JSON: keep the text
      }
      return { status: res.status, body: parsed };
    };
    return await dispatch(positionals, values, api, io);
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr(`relay-guard ctl: ${err.message}\n(relay-guard ctl --help for usage)\n`);
      return 2;
    }
    const e = err as Error & { cause?: { code?: string; message?: string } };
    const why = e.name === 'TimeoutError' ? 'timed out' : (e.cause?.code ?? e.cause?.message ?? e.message);
    io.stderr(`relay-guard ctl: cannot reach the admin API: ${why}\n`);
    return 1;
  }
}

type Api = (method: string, path: string, body?: unknown) => Promise<ApiAnswer>;

function need(positionals: string[], i: number, what: string): string {
  const v = positionals[i];
  if (v === undefined || v === '') throw new UsageError(`missing ${what}`);
  return v;
}

function noMore(positionals: string[], n: number): void {
  if (positionals.length > n) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[n])}`);
}

async function dispatch(p: string[], v: Values, api: Api, io: CtlIo): Promise<number> {
  const cmd = p[0]!;
  const enc = encodeURIComponent;
  /** Print the answer: JSON with --json, else the human form; errors go to stderr. */
  const finish = (a: ApiAnswer, human: (body: Json) => string): number => {
    if (a.status >= 400) {
      io.stderr(formatError(a));
      return 1;
    }
    io.stdout(v.json ? `${JSON.stringify(a.body, null, 2)}\n` : human((a.body ?? {}) as Json));
    return 0;
  };

  if (isSectionName(cmd)) {
    const sub = need(p, 1, `action (list, add VALUE, remove VALUE) after ${cmd}`);
    const spec = SECTIONS[cmd];
    if (sub === 'list' || sub === 'show') {
      noMore(p, 2);
      return finish(await api('GET', `/rules/${cmd}`), (b) => formatValue(b['value']));
    }
    if (sub === 'add' || sub === 'remove') {
      if (spec.kind !== 'list') throw new UsageError(`${cmd} is not a list: change it with PUT /api/v1/rules/${cmd}`);
      const value = need(p, 2, 'VALUE');
      noMore(p, 3);
      if (sub === 'remove') return finish(await api('DELETE', `/rules/${cmd}/${enc(value)}${v.force ? '?force=true' : ''}`), () => `removed ${value} from ${cmd}\n`);
      let item: unknown = value;
      if (cmd === 'senders') {
        try {
          item = JSON.parse(value);
        } catch {
          throw new UsageError('senders add: VALUE must be a JSON rule object, e.g. \'{"id":"x","match":["@spam.test"],"action":"reject"}\'');
        }
      }
      return finish(await api('POST', `/rules/${cmd}`, { value: item }), () => `added ${value} to ${cmd}\n`);
    }
    throw new UsageError(`unknown action ${JSON.stringify(sub)} for ${cmd} (list, add VALUE, remove VALUE)`);
  }

  switch (cmd) {
    case 'rules': {
      const sub = need(p, 1, 'action (show, history, reload, rollback VERSION)');
      if (sub === 'show') {
        noMore(p, 2);
        return finish(await api('GET', '/rules'), (b) => {
          const sections = (b['sections'] ?? {}) as Record<string, { value: unknown; etag: string }>;
          return Object.entries(sections).map(([name, s]) => `${name} ${s.etag}\n${indent(formatValue(s.value))}`).join('');
        });
      }
      if (sub === 'history') {
        noMore(p, 2);
        return finish(await api('GET', '/rules/history'), (b) =>
          table(['VERSION', 'TIME', 'ACTOR', 'GUARD', 'OPERATION', 'SECTIONS'], ((b['versions'] ?? []) as Json[]).map((x) => [x['id'], x['time'], x['actor'], x['guard'] ?? '-', x['operation'], (x['sections'] as string[] | undefined)?.join(',') ?? ''])),
        );
      }
      if (sub === 'reload') {
        noMore(p, 2);
        return finish(await api('POST', '/rules/reload'), (b) => `rules reloaded (version ${String(b['version'])})\n`);
      }
      if (sub === 'rollback') {
        const version = need(p, 2, 'VERSION');
        noMore(p, 3);
        return finish(await api('POST', `/rules/rollback${v.force ? '?force=true' : ''}`, { version }), (b) => `rolled back to ${version} (now version ${String(b['version'])})\n`);
      }
      if (sub === 'export') {
        const dir = need(p, 2, 'DIR');
        noMore(p, 3);
        const a = await api('GET', '/rules');
        if (a.status >= 400) return finish(a, () => '');
        const sections = ((a.body ?? {}) as Json)['sections'] as Record<string, { value: unknown }> | undefined;
        await mkdir(dir, { recursive: true });
        const written: string[] = [];
        for (const name of SECTION_NAMES) {
          const s = sections?.[name];
          if (!s) continue;
          await writeFileAtomic(join(dir, SECTIONS[name].file), formatSectionText(name, s.value));
          written.push(SECTIONS[name].file);
        }
        io.stdout(v.json ? `${JSON.stringify({ dir, files: written, version: (a.body as Json)['version'] }, null, 2)}\n` : `exported ${written.length} rule files to ${dir} (version ${String((a.body as Json)['version'])})\n`);
        return 0;
      }
      if (sub === 'import') {
        const dir = need(p, 2, 'DIR');
        noMore(p, 3);
        const sections: Record<string, unknown> = {};
        const problems: string[] = [];
        for (const name of SECTION_NAMES) {
          const file = join(dir, SECTIONS[name].file);
          let text: string;
          try {
            text = await readFile(file, 'utf8');
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
            throw new UsageError(`cannot read ${file}: ${(err as Error).message}`);
          }
          const parsed = parseSectionText(name, text, file);
          if (parsed.ok) sections[name] = parsed.value;
          else problems.push(...parsed.errors.map((e) => formatRuleError(e)));
        }
        if (problems.length > 0) {
          io.stderr(`relay-guard ctl: rules not imported, the files of ${dir} are invalid:\n${problems.map((x) => `  ${x}\n`).join('')}`);
          return 1;
        }
        if (Object.keys(sections).length === 0) throw new UsageError(`no rule files in ${dir} (expected ${SECTION_NAMES.map((n) => SECTIONS[n].file).join(', ')})`);
        return finish(await api('PUT', `/rules${v.force ? '?force=true' : ''}`, { sections }), (b) => `imported ${Object.keys(sections).length} sections from ${dir} (now version ${String(b['version'])})\n`);
      }
      throw new UsageError(`unknown action ${JSON.stringify(sub)} for rules (show, history, reload, rollback VERSION, export DIR, import DIR)`);
    }
    case 'fleet': {
      noMore(p, 1);
      return finish(await api('GET', '/fleet'), (b) => {
        const store = b['store'] as Json | undefined;
        const head = b['shared'] === true && store
          ? `rules store ${String(store['url'])}: ${store['up'] === true ? 'up' : 'UNREACHABLE'}${store['rev'] !== undefined ? `, revision ${String(store['rev'])} (${String(store['version'])})${store['valid'] === false ? ' REFUSED (invalid entry)' : ''}` : ''}\n`
          : 'no shared rules store: this guard has its own rules directory\n';
        return head + table(
          ['GUARD', 'REV', 'VERSION', 'BEHIND', 'SEEN', 'STORE', 'ADMIN'],
          ((b['guards'] ?? []) as Json[]).map((g) => [`${String(g['name'])}${g['self'] === true ? ' *' : ''}`, g['rev'], g['version'], g['behind'] === true ? 'yes' : 'no', `${String(g['lastSeenSeconds'])}s ago`, g['storeUp'] === true ? 'up' : 'down', g['admin'] ?? '-']),
        );
      });
    }
    case 'audit': {
      noMore(p, 1);
      if (v.limit !== undefined && !/^[0-9]{1,6}$/.test(v.limit)) throw new UsageError('--limit must be a number');
      return finish(await api('GET', `/audit${v.limit ? `?limit=${v.limit}` : ''}`), (b) =>
        table(['TIME', 'ACTOR', 'GUARD', 'OPERATION', 'SECTION', 'VERSION'], ((b['entries'] ?? []) as Json[]).map((x) => [x['time'], x['actor'], x['guard'] ?? '-', x['operation'], x['section'], x['version']])),
      );
    }
    case 'check': {
      noMore(p, 1);
      if (!v.ip) throw new UsageError('check needs --ip IP');
      if (!v.rcpt) throw new UsageError('check needs --rcpt ADDRESS');
      const body = {
        clientIp: v.ip,
        mailFrom: v.from ?? '<>',
        rcptTo: v.rcpt,
        ...(v.helo !== undefined ? { helo: v.helo } : {}),
        ...(v.user !== undefined ? { authUser: v.user } : {}),
        ...(v.listener !== undefined ? { listener: v.listener } : {}),
      };
      return finish(await api('POST', '/check', body), formatCheck);
    }
    case 'bans': {
      const sub = need(p, 1, 'action (list, add TARGET, remove TARGET)');
      if (sub === 'list') {
        noMore(p, 2);
        return finish(await api('GET', '/bans'), (b) =>
          table(['TARGET', 'SOURCE', 'EXPIRES', 'REASON'], ((b['bans'] ?? []) as Json[]).map((x) => [x['target'], x['source'], x['expiresAt'] ?? 'never', x['reason']])),
        );
      }
      if (sub === 'add') {
        const target = need(p, 2, 'TARGET');
        noMore(p, 3);
        const body = { target, reason: v.reason ?? 'banned with relay-guard ctl', ...(v.duration ? { duration: v.duration } : {}), ...(v.force ? { force: true } : {}) };
        return finish(await api('POST', '/bans', body), (b) => {
          const ban = (b['ban'] ?? {}) as Json;
          return `banned ${String(ban['target'])} ${ban['expiresAt'] ? `until ${String(ban['expiresAt'])}` : 'permanently'}\n`;
        });
      }
      if (sub === 'remove') {
        const target = need(p, 2, 'TARGET');
        noMore(p, 3);
        return finish(await api('DELETE', `/bans/${enc(target)}`), () => `ban of ${target} lifted\n`);
      }
      throw new UsageError(`unknown action ${JSON.stringify(sub)} for bans (list, add TARGET, remove TARGET)`);
    }
    case 'sessions': {
      const sub = need(p, 1, 'action (list, close ID)');
      if (sub === 'list') {
        noMore(p, 2);
        return finish(await api('GET', '/sessions'), (b) =>
          table(
            ['ID', 'LISTENER', 'CLIENT', 'HELO', 'FROM', 'STATE', 'IN', 'OUT', 'AGE', 'BACKEND'],
            ((b['sessions'] ?? []) as Json[]).map((x) => [x['id'], x['listener'], x['clientIp'], x['helo'] ?? '-', x['mailFrom'] ?? '-', x['state'], x['bytesIn'], x['bytesOut'], `${String(x['ageSeconds'])}s`, x['backendSession'] ?? '-']),
          ),
        );
      }
      if (sub === 'close') {
        const id = need(p, 2, 'ID');
        noMore(p, 3);
        return finish(await api('DELETE', `/sessions/${enc(id)}`), () => `session ${id} closed\n`);
      }
      throw new UsageError(`unknown action ${JSON.stringify(sub)} for sessions (list, close ID)`);
    }
    case 'pool': {
      noMore(p, 1);
      return finish(await api('GET', '/pool'), (b) => {
        if (b['enabled'] !== true) return 'pooled mode is off: every client has its own backend connection\n';
        const head = `backend ${String(b['backend'])}: ${String(b['idle'])} idle, ${String(b['lent'])} lent, ${String(b['dedicated'])} dedicated, ${String(b['opening'])} opening (min idle ${String(b['minIdle'])}, max ${String(b['max'])}); ${String(b['waiting'])} client(s) waiting\n`;
        return head + table(['BACKEND SESSION', 'STATE', 'IDLE'], ((b['sessions'] ?? []) as Json[]).map((x) => [x['backendSession'], x['state'], x['idleSeconds'] === undefined ? '-' : `${String(x['idleSeconds'])}s`]));
      });
    }
    case 'auth-canary': {
      const sub = p[1];
      if (sub !== undefined && sub !== 'run') throw new UsageError(`unknown action ${JSON.stringify(sub)} for auth-canary (run)`);
      noMore(p, sub === undefined ? 1 : 2);
      return finish(sub === 'run' ? await api('POST', '/auth/canary') : await api('GET', '/auth/canary'), formatCanary);
    }
    case 'reload-recipients': {
      noMore(p, 1);
      return finish(await api('POST', '/recipients/reload'), (b) => `recipient list reloaded${b['entries'] !== undefined ? ` (${String(b['entries'])} entries)` : ''}\n`);
    }
    default:
      throw new UsageError(`unknown command ${JSON.stringify(cmd)}`);
  }
}

function formatError(a: ApiAnswer): string {
  const b = a.body as { code?: unknown; message?: unknown; errors?: unknown } | string | undefined;
  if (b === undefined || typeof b === 'string') return `relay-guard ctl: HTTP ${a.status}${b ? `: ${b.slice(0, 500)}` : ''}\n`;
  let out = `relay-guard ctl: ${a.status} ${String(b.code ?? '')}: ${String(b.message ?? '')}\n`;
  if (Array.isArray(b.errors)) {
    for (const e of b.errors.slice(0, 20) as { message?: unknown; path?: unknown }[]) out += `  ${String(e.message ?? JSON.stringify(e))}\n`;
  }
  return out;
}

function formatValue(value: unknown): string {
  if (Array.isArray(value) && value.every((x) => typeof x === 'string')) return value.map((x) => `${x}\n`).join('');
  if (Array.isArray(value)) return value.map((x) => `${JSON.stringify(x)}\n`).join('');
  return `${JSON.stringify(value, null, 2)}\n`;
}

function indent(s: string): string {
  return s.split('\n').map((l) => (l === '' ? l : `  ${l}`)).join('\n');
}

function table(head: string[], rows: unknown[][]): string {
  if (rows.length === 0) return '(none)\n';
  const cells = [head, ...rows.map((r) => r.map((c) => (c === undefined || c === null ? '-' : String(c))))];
  const widths = head.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  return cells.map((r) => `${r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ').trimEnd()}\n`).join('');
}

function formatCanary(b: Json): string {
  if (b['enabled'] !== true) return 'auth canary: off (authCanary.enabled is false, or no listener has auth: relay)\n';
  const state = String(b['state']);
  const verdict =
    b['accepted'] === true
      ? `ACCEPTED since ${String(b['acceptedSince'])}: the backend takes random credentials; AUTH grants no relay`
      : state === 'refused'
        ? 'refused: the backend turns random credentials away; AUTH may relay'
        : state === 'not_offered'
          ? 'the backend offers no AUTH'
          : 'unknown: no conclusive run yet';
  const lines = [`auth canary: ${verdict}`, `runs: ${String(b['runs'])}, every ${String(b['intervalSeconds'])}s${b['running'] === true ? ' (a run is under way)' : ''}`];
  const last = b['lastRun'] as Json | undefined;
  if (last) lines.push(`last run: ${String(last['at'])} ${String(last['result'])}${last['mechanism'] ? ` (${String(last['mechanism'])})` : ''}${last['detail'] ? `: ${String(last['detail'])}` : ''}`);
  return `${lines.join('\n')}\n`;
}

function formatCheck(b: Json): string {
  const mail = (b['mail'] ?? {}) as Json;
  const lookup = b['lookup'] as Json | undefined;
  const lines = [
    `verdict:  ${String(b['verdict'])}`,
    `reply:    ${String(b['reply'])}`,
    `rule:     ${String(b['ruleId'])}`,
    `mail:     ${String(mail['verdict'])} by ${String(mail['ruleId'])} (${String(mail['reply'])})`,
  ];
  if (lookup) lines.push(`lookup:   ${String(lookup['result'])} (${String(lookup['source'])})`);
  const ban = b['ban'] as Json | undefined;
  if (ban) lines.push(`ban:      ${String(ban['target'])}${ban['reason'] ? ` (${String(ban['reason'])})` : ''}`);
  const warnings = (b['warnings'] ?? []) as Json[];
  for (const w of warnings) lines.push(`warning:  ${String(w['ruleId'])} would answer ${String(w['reply'])} (warn mode)`);
  const trace = (b['trace'] ?? []) as Json[];
  lines.push('trace:');
  const width = Math.max(0, ...trace.map((s) => String(s['ruleId']).length));
  for (const s of trace) lines.push(`  ${String(s['ruleId']).padEnd(width)}  ${String(s['result']).padEnd(6)}${s['note'] ? `  ${String(s['note'])}` : ''}`.trimEnd());
  return `${lines.join('\n')}\n`;
}
