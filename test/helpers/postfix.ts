/**
 * A private Postfix (Debian `postfix`) under a temporary folder: a WIDE-OPEN relay on loopback,
 * the stand-in for an unpatched Exchange behind the guard.
 *
 * - mynetworks = 127.0.0.0/8: everyone on loopback may relay to anywhere.
 * - smtpd_forbid_bare_newline = no: bare LF ends lines, so "\n.\n" ends DATA (smuggling-prone).
 * - Every message is put on HOLD (an access-map action on every RCPT), so nothing is ever
 *   delivered: tests read the hold queue with `postqueue -j` and the message with `postcat`.
 * - maillog_file in the folder: smtpd logs each RCPT it saw ("hold: RCPT from … to=<…>") and, per
 *   connection, the commands it received ("disconnect from … ehlo=1 mail=1 rcpt=1 data=1").
 *
 * Running as root in a sandbox needs: the folder traversable by the mail_owner (0755), the data
 * directory owned by mail_owner, maillog_file_prefixes covering the folder, chroot off in
 * master.cf, and `postfix check` once to create the queue directories with their owners.
 */
import { execFile, execFileSync } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { freePort } from './free-port.js';

const run = promisify(execFile);

export interface QueuedMessage {
  queueName: string;
  queueId: string;
  sender: string;
  recipients: string[];
  size: number;
}

export interface PrivatePostfix {
  readonly port: number;
  readonly dir: string;
  /** Every message in the queues (`postqueue -j`). */
  queued(): Promise<QueuedMessage[]>;
  /** The message content as Postfix stored it (`postcat -bh -q ID`). */
  content(queueId: string): Promise<string>;
  /** The mail log so far. */
  maillog(): string;
  /** smtpd connections logged so far. */
  connections(): number;
  /**
   * Resolves once at least `atLeast` smtpd connections were logged and every one of them logged its
   * disconnect (no session half-way: nothing more can be queued by them).
   */
  settled(atLeast: number, timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

export interface PostfixOptions {
  /** Default false: bare LF accepted as a line end (like an unpatched server). */
  forbidBareNewline?: boolean;
}

/** Why the e2e suite cannot run here, or undefined when it can. */
export function postfixUnavailable(): string | undefined {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'a private Postfix needs root (it runs as in CI)';
  if (!existsSync('/usr/sbin/postfix')) return 'postfix is not installed (Debian: apt-get install -y postfix)';
  return undefined;
}

function mainCf(dir: string, opts: PostfixOptions): string {
  return [
    'compatibility_level = 3.6',
    `queue_directory = ${dir}/queue`,
    `data_directory = ${dir}/data`,
    'mail_owner = postfix',
    'setgid_group = postdrop',
    'myhostname = backend.test',
    'mydomain = backend.test',
    'mydestination =',
    'inet_interfaces = 127.0.0.1',
    'inet_protocols = ipv4',
    // The open relay: anyone on loopback relays anywhere.
    'mynetworks = 127.0.0.0/8',
    'smtpd_relay_restrictions = check_client_access static:HOLD, permit_mynetworks, reject_unauth_destination',
    'smtpd_recipient_restrictions =',
    `smtpd_forbid_bare_newline = ${opts.forbidBareNewline ? 'yes' : 'no'}`,
    // Belt and braces: even a released message goes nowhere.
    'relayhost = [127.0.0.1]:9',
    'defer_transports = smtp, relay, local, virtual',
    `maillog_file = ${dir}/maillog`,
    `maillog_file_prefixes = ${dir}`,
    'alias_maps =',
    'alias_database =',
    'local_recipient_maps =',
    'smtputf8_enable = no',
    'biff = no',
    'smtpd_error_sleep_time = 0',
    'smtpd_soft_error_limit = 1000',
    'smtpd_hard_error_limit = 1000',
    '',
  ].join('\n');
}

function masterCf(port: number): string {
  // Columns: service type private unpriv chroot wakeup maxproc command. chroot = n everywhere.
  return [
    `127.0.0.1:${port} inet n - n - - smtpd`,
    'pickup    unix  n - n 60 1 pickup',
    'cleanup   unix  n - n - 0 cleanup',
    'qmgr      unix  n - n 300 1 qmgr',
    'rewrite   unix  - - n - - trivial-rewrite',
    'bounce    unix  - - n - 0 bounce',
    'defer     unix  - - n - 0 bounce',
    'trace     unix  - - n - 0 bounce',
    'verify    unix  - - n - 1 verify',
    'flush     unix  n - n 1000? 0 flush',
    'proxymap  unix  - - n - - proxymap',
    'showq     unix  n - n - - showq',
    'error     unix  - - n - - error',
    'retry     unix  - - n - - error',
    'discard   unix  - - n - - discard',
    'smtp      unix  - - n - - smtp',
    'relay     unix  - - n - - smtp',
    'anvil     unix  - - n - 1 anvil',
    'scache    unix  - - n - 1 scache',
    'postlog   unix-dgram n - n - 1 postlogd',
    '',
  ].join('\n');
}

function countConnects(log: string): number {
  return log.match(/postfix\/smtpd\[\d+\]: connect from /g)?.length ?? 0;
}

async function greets(port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    const t = setTimeout(() => done(false), timeoutMs);
    let buf = '';
    const done = (v: boolean) => {
      clearTimeout(t);
      s.destroy();
      resolve(v);
    };
    s.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      if (buf.includes('\r\n')) {
        s.write('QUIT\r\n');
        done(buf.startsWith('220'));
      }
    });
    s.on('error', () => done(false));
  });
}

export async function startPostfix(opts: PostfixOptions = {}): Promise<PrivatePostfix> {
  const why = postfixUnavailable();
  if (why) throw new Error(why);
  let lastError: unknown;
  // The port is chosen free and then bound by Postfix: retry if someone took it in between.
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startOnce(await freePort(), opts);
    } catch (err) {
      lastError = err;
    }
  }
  throw lastError;
}

async function startOnce(port: number, opts: PostfixOptions): Promise<PrivatePostfix> {
  const dir = mkdtempSync(path.join(tmpdir(), 'rg-postfix-'));
  chmodSync(dir, 0o755); // the postfix user must traverse it
  const etc = path.join(dir, 'etc');
  mkdirSync(etc);
  mkdirSync(path.join(dir, 'queue'));
  mkdirSync(path.join(dir, 'data'));
  const owner = execFileSync('id', ['-u', 'postfix']).toString().trim();
  chownSync(path.join(dir, 'data'), Number(owner), 0);
  writeFileSync(path.join(etc, 'main.cf'), mainCf(dir, opts));
  writeFileSync(path.join(etc, 'master.cf'), masterCf(port));
  const logFile = path.join(dir, 'maillog');
  const maillog = () => (existsSync(logFile) ? readFileSync(logFile, 'utf8') : '');

  const killOnExit = () => {
    try {
      execFileSync('postfix', ['-c', etc, 'abort'], { stdio: 'ignore', timeout: 5000 });
    } catch {
      /* already gone */
    }
  };
  const cleanup = () => {
    process.off('exit', killOnExit);
    killOnExit();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await run('postfix', ['-c', etc, 'check'], { timeout: 30_000 });
    process.once('exit', killOnExit);
    await run('postfix', ['-c', etc, 'start'], { timeout: 30_000 });
    // master -w has bound the listener when `start` returns; a greeting proves smtpd runs.
    if (!(await greets(port, 10_000))) throw new Error('no 220 greeting from the private postfix');
  } catch (err) {
    const log = maillog();
    cleanup();
    throw new Error(`private postfix failed to start on port ${port}: ${(err as Error).message}\nmaillog:\n${log.slice(-4000)}`);
  }

  return {
    port,
    dir,
    maillog,
    async queued() {
      const { stdout } = await run('postqueue', ['-c', etc, '-j'], { timeout: 10_000 });
      return stdout
        .split('\n')
        .filter((l) => l.trim())
        .map((l) => {
          const j = JSON.parse(l) as { queue_name: string; queue_id: string; sender: string; recipients: Array<{ address: string }>; message_size: number };
          return { queueName: j.queue_name, queueId: j.queue_id, sender: j.sender, recipients: j.recipients.map((r) => r.address), size: j.message_size };
        });
    },
    async content(queueId: string) {
      const { stdout } = await run('postcat', ['-c', etc, '-bh', '-q', queueId], { timeout: 10_000 });
      return stdout;
    },
    connections: () => countConnects(maillog()),
    async settled(atLeast: number, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const text = maillog();
        const connects = countConnects(text);
        const disconnects = text.match(/postfix\/smtpd\[\d+\]: disconnect from /g)?.length ?? 0;
        if (connects >= atLeast && connects === disconnects) return;
        if (Date.now() > deadline) throw new Error(`postfix not settled: ${connects} connects, ${disconnects} disconnects`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    async stop() {
      try {
        await run('postfix', ['-c', etc, 'stop'], { timeout: 30_000 });
      } catch {
        /* abort below */
      }
      cleanup();
    },
  };
}
