/**
 * SmtpSession: the state machine of one client connection and its backend connection.
 * It asks and executes: MAIL and RCPT verdicts come from the envelope judge (src/policy/judge.ts),
 * limits from the limiter, protocol refusals from the codec; the session writes them, counts them
 * by rule id and logs each refusal once. Flow (README "Protocol hardening" says what each step guarantees):
 *   admission (bans, limits, capacity) → backend connect + greeting → command loop
 *   (PIPELINING order kept by ReplySequencer; DATA, AUTH, STARTTLS are barriers) →
 *   DATA streamed through EndOfDataScanner → backend verdict relayed → close.
 */
import type net from 'node:net';
import tls from 'node:tls';
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { CommandLineReader } from '../smtp/line-reader.js';
import { EndOfDataScanner } from '../smtp/end-of-data.js';
import { parseCommand, formatCommand, commandVerbName, type Command } from '../smtp/command.js';
import { filterEhlo, ehloKeywords } from '../smtp/ehlo.js';
import { mailboxAddress } from '../smtp/path.js';
import type { EsmtpParam, ForwardPath, ReversePath } from '../smtp/path.js';
import { formatReply, reply, replyClass, replyText, type ProtocolErrorKind, type Reply } from '../smtp/reply.js';
import * as R from '../smtp/replies.js';
import type { SessionContext } from '../policy/context.js';
import { isTrusted } from '../policy/relay.js';
import { commandSyntaxVerdict, dsnAllowedFor, judgeMail, judgeRcpt, RELAY_RULES, type EnvelopeContext, type EnvelopeLimits, type RcptJudgement, type RcptServicesPort } from '../policy/judge.js';
import type { RcptVerdict, MailVerdict, PolicyRefusal } from '../policy/verdict.js';
import type { RulesSnapshot } from '../policy/compile.js';
import type { LimitDecision, LimitEvent } from '../limits/limiter.js';
import { verbLabel, type Metrics } from '../observability/metrics.js';
import { isFailure, type BackendFailure } from '../backend/backend-link.js';
import type { BackendSeat } from '../backend/seat.js';
import { ReplySequencer, type ReplySlot } from './reply-sequencer.js';
import { Transaction } from './transaction.js';
import type { SessionInfo } from './session-registry.js';
import type { GuardServices, ListenerRuntime } from './services.js';
import type { PolicyRequestFacts } from '../policy-service/policy-request.js';

type Phase = 'admission' | 'connecting' | 'command' | 'data' | 'discard' | 'auth' | 'closing' | 'closed';

/** Client strings in logs are capped (pino: untrusted data under named keys, bounded). */
function cap(s: string | undefined, n = 256): string | undefined {
  return s === undefined ? undefined : s.length > n ? `${s.slice(0, n)}…` : s;
}

/** Session ids: 48 random bits each, drawn from a block fetched 512 ids at a time (one CSPRNG call per block). */
const ID_BYTES = 6;
let idBlock = Buffer.alloc(0);
let idPos = 0;
function newSessionId(): string {
  if (idPos + ID_BYTES > idBlock.length) {
    idBlock = randomBytes(ID_BYTES * 512);
    idPos = 0;
  }
  const id = idBlock.toString('hex', idPos, idPos + ID_BYTES);
  idPos += ID_BYTES;
  return id;
}
const AUTH_LINE_BYTES = 12288;
/** Header lines policy services may PREPEND to one message. */
const MAX_PREPEND_HEADERS = 16;

export class SmtpSession {
  readonly id = newSessionId();
  readonly ended: Promise<void>;
  private resolveEnded!: () => void;
  private phase: Phase = 'admission';
  private client: net.Socket;
  /** This client's place at the backend (src/backend/seat.ts: the session never asks which kind). */
  private readonly seat: BackendSeat;
  private readonly reader: CommandLineReader;
  private readonly seq: ReplySequencer;
  private readonly tx = new Transaction();
  private scanner: EndOfDataScanner | undefined;
  /** The session's child logger, made on first use (pino child() serialises its bindings). */
  private logger: Logger | undefined;
  private readonly startedAt = Date.now();

  // Session facts (policy context).
  private clientIp: string;
  private clientPort: number;
  private helo: string | undefined;
  private ehlo = false;
  private authUser: string | undefined;
  private tlsActive: boolean;
  private backendAuth: string | undefined;
  /** The backend offered SMTPUTF8 / DSN in its EHLO reply (and smtp.ehloAllow passes them): issue 16 items 6, 7. */
  private backendSmtputf8 = false;
  private backendDsn = false;
  private greeted = false;

  // Flow control.
  private blocked = false;
  private draining = false;
  private errors = 0;
  private delayUntil = 0;
  private transactions = 0;
  private messages = 0;
  private bytesIn = 0;
  private bytesOut = 0;
  private rcptAccepted = 0;
  private rcptRefused = 0;
  private outcome = 'closed';
  private closeReason = '';

  // Resources released on close.
  private timers = new Set<NodeJS.Timeout>();
  private idleTimer: NodeJS.Timeout | undefined;
  /** When the armed idle timer fires (Date.now() clock). */
  private idleDue = 0;
  private idleSince = 0;
  private releaseConcurrency: (() => void) | undefined;
  private clientEnded = false;
  private authState: { mechanism: string; step: number; slot?: ReplySlot } | undefined;
  private readonly envelopeLimits: EnvelopeLimits;

  constructor(
    socket: net.Socket,
    private readonly listener: ListenerRuntime,
    private readonly svc: GuardServices,
    opts: { clientIp: string; clientPort: number; tls: boolean },
  ) {
    this.client = socket;
    this.clientIp = opts.clientIp;
    this.clientPort = opts.clientPort;
    this.tlsActive = opts.tls;
    this.envelopeLimits = { maxRecipients: svc.config.smtp.maxRecipients, maxTransactions: svc.config.smtp.maxTransactions, maxMessageBytes: svc.maxMessageBytes };
    this.ended = new Promise((r) => (this.resolveEnded = r));
    this.reader = new CommandLineReader({ maxLineBytes: svc.config.smtp.maxLineBytes });
    this.seq = new ReplySequencer((wire, replies) => this.writeReplies(wire, replies));
    this.seat = svc.seats.create(
      {
        clientIp: this.clientIp,
        clientPort: this.clientPort,
        ...(socket.localAddress !== undefined ? { localIp: socket.localAddress } : {}),
        ...(socket.localPort !== undefined ? { localPort: socket.localPort } : {}),
        helo: () => this.helo,
        esmtp: () => this.ehlo,
        authUser: () => this.authUser,
        idleMs: () => (this.phase === 'command' && this.isIdle() ? Date.now() - this.idleSince : undefined),
        shed: () => this.shed(),
      },
      { lost: (failure) => this.onBackendClosed(failure), log: () => this.log },
    );
    this.attachClient(socket);
  }

  /** The backend session the client holds now, if any. */
  private get link() {
    return this.seat.link;
  }

  private get log(): Logger {
    return (this.logger ??= this.svc.log.child({ sessionId: this.id, clientIp: this.clientIp, listener: this.listener.config.name }));
  }

  /** Info lines on the per-message path are built only when info is logged. */
  private get infoOn(): boolean {
    return this.svc.log.isLevelEnabled('info');
  }

  // ───────────────────────────── lifecycle ─────────────────────────────

  /** Admission checks, then the backend connection and the greeting. */
  async start(): Promise<void> {
    const { svc } = this;
    svc.registry.add(this);
    svc.metrics.sessionsActive.inc({ listener: this.listener.config.name });
    this.armSessionTimer();
    try {
      if (svc.shuttingDown()) return this.refuseConnection(R.SHUTTING_DOWN, 'shutting_down');
      const ban = svc.bans?.check(this.clientIp);
      if (ban) {
        this.log.info({ ban: { target: ban.target, reason: ban.reason } }, 'banned client refused');
        return this.refuseConnection(R.BANNED, 'banned');
      }
      if (svc.limiter && !(this.noLimitFor('concurrent') && this.noLimitFor('connection'))) {
        const subject = this.limitSubject();
        const conc = svc.limiter.acquireConnection(subject);
        if (!conc.allowed) return this.refuseConnection(conc.decision.action === 'allow' ? R.CAPACITY : conc.decision.reply, 'limited');
        this.releaseConcurrency = conc.release;
        const d = await svc.limiter.check('connection', subject);
        if (this.phase === 'closed') return;
        if (d.action !== 'allow' && d.action !== 'tarpit') return this.refuseConnection({ ...d.reply, close: true }, 'limited');
        if (d.action === 'tarpit' && d.delayMs) await this.sleep(d.delayMs);
      }
      // DNS lists, postscreen style: decided before the backend seat is opened.
      if (svc.dnsbl && svc.dnsbl.scores(this.listener.config) && !isTrusted(this.context(), this.rules())) {
        const scored = await svc.dnsbl.score(this.clientIp);
        if (this.phase === 'closed') return;
        if (scored.refused && scored.reply) {
          const lists = scored.answers.filter((a) => a.result === 'listed').map((a) => `${a.zone}(${a.weight > 0 ? '+' : ''}${a.weight})`);
          this.log.info({ ruleId: 'dnsbl', score: scored.score, threshold: scored.threshold, lists, reply: replyText(scored.reply) }, 'client refused');
          this.svc.refusals?.record({ kind: 'connect', sessionId: this.id, clientIp: this.clientIp, listener: this.listener.config.name, ruleId: 'dnsbl', reply: replyText(scored.reply) });
          return this.refuseConnection(scored.reply, 'dnsbl');
        }
      }
      this.phase = 'connecting';
      const opened = await this.seat.open();
      if ((this.phase as Phase) === 'closed') return;
      if (!opened.ok) return this.refuseConnection(opened.reply, opened.outcome);
      if (this.phase !== 'connecting') return; // early talker already refused
      if (svc.timeouts.greetingDelayMs > 0) {
        await this.sleep(svc.timeouts.greetingDelayMs);
        if (this.phase !== 'connecting') return;
      }
      svc.metrics.connections.inc({ listener: this.listener.config.name, outcome: 'accepted' });
      this.phase = 'command';
      this.greeted = true;
      const greeting = opened.greeting.code === 220 ? opened.greeting : { ...opened.greeting, close: true };
      if (opened.source === 'backend') this.relayFromBackend(greeting);
      else this.localReply(greeting);
      this.resetIdle();
      this.pump();
    } catch (err) {
      this.internalError(err);
    }
  }

  private refuseConnection(r: Reply, outcome: string): void {
    this.svc.metrics.connections.inc({ listener: this.listener.config.name, outcome });
    this.outcome = outcome;
    this.greeted = true;
    this.localReply({ ...r, close: true });
  }

  info(): SessionInfo {
    return {
      id: this.id,
      listener: this.listener.config.name,
      clientIp: this.clientIp,
      clientPort: this.clientPort,
      helo: cap(this.helo),
      mailFrom: this.tx.mailSent ? cap(this.tx.sender) : undefined,
      authUser: this.authUser,
      tls: this.tlsActive,
      state: this.phase,
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
      messages: this.messages,
      startedAt: new Date(this.startedAt).toISOString(),
      ageSeconds: Math.round((Date.now() - this.startedAt) / 1000),
      ...(this.link && !this.link.isClosed ? { backendSession: this.link.tag } : {}),
    };
  }

  /** Admin API / shutdown: close with 421 now. */
  terminate(reason: string): void {
    if (this.phase === 'closed' || this.phase === 'closing') return;
    this.closeReason = reason;
    this.outcome = 'terminated';
    this.writeNow(reason === 'shutdown' ? R.SHUTTING_DOWN : { ...reply(421, '4.3.2', 'Session closed by administrator'), close: true });
    if (this.tx.mailSent) this.seat.abandon();
    this.close('terminated');
  }

  /** Backend slots under stress: this idle session's slot went to a newcomer (backend-capacity.ts). */
  private shed(): void {
    if (this.phase === 'closed' || this.phase === 'closing') return;
    this.log.info({ idleMs: Date.now() - this.idleSince }, 'backend slot shed for another client');
    this.outcome = 'shed';
    this.writeNow(R.SHED_UNDER_STRESS);
    this.close('shed');
  }

  /** Shutdown: idle sessions get 421 4.3.2 now; a session in a transaction finishes it first. */
  drain(): void {
    this.draining = true;
    if (this.isIdle()) this.terminate('shutdown');
  }

  private isIdle(): boolean {
    return (this.phase === 'command' || this.phase === 'admission' || this.phase === 'connecting') && !this.tx.mailSent && !this.blocked && this.seq.pending === 0;
  }

  // ───────────────────────────── client input ─────────────────────────────

  private attachClient(socket: net.Socket): void {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onClientData(chunk));
    socket.on('error', (err: NodeJS.ErrnoException) => {
      // Clients that reset after QUIT are common: no child logger for a line nobody reads.
      if (this.svc.log.isLevelEnabled('debug')) this.log.debug({ err: { code: err.code, message: err.message } }, 'client socket error');
      this.close('client_error');
    });
    socket.on('close', () => this.close(this.phase === 'closing' ? 'closed' : 'client_closed'));
    socket.on('end', () => {
      this.clientEnded = true;
      this.closeIfClientDone();
    });
  }

  /**
   * The client half-closed after its last command (a scripted sender: everything, then FIN). Like
   * Postfix, answer every command it sent before closing; a message cut short is never delivered.
   */
  private closeIfClientDone(): void {
    if (!this.clientEnded || this.phase === 'closed' || this.phase === 'closing') return;
    if (this.phase === 'data' || this.phase === 'discard') return this.close('client_closed');
    if (this.phase !== 'command' && this.phase !== 'auth') return;
    if (this.blocked || this.seq.pending > 0) return;
    this.close('client_closed');
  }

  private onClientData(chunk: Buffer): void {
    // Destroyed by a listener that saw this chunk first (a PROXY header from a peer outside
    // proxyNetworks, listeners.ts): not one byte of it is a command.
    if (this.client.destroyed) return;
    this.bytesIn += chunk.length;
    switch (this.phase) {
      case 'admission':
      case 'connecting':
        if (!this.greeted && this.svc.config.smtp.earlyTalker === 'reject') {
          this.svc.metrics.protocolErrors.inc({ kind: 'early_talker' });
          this.log.info({}, 'early talker refused');
          this.refuseConnection(R.EARLY_TALKER, 'early_talker');
          return;
        }
        this.reader.push(chunk);
        return;
      case 'command':
      case 'auth':
        this.resetIdle();
        this.feedCommands(chunk);
        return;
      case 'data':
        this.resetIdle();
        this.feedData(chunk);
        return;
      case 'discard':
        this.resetIdle();
        this.discardData(chunk);
        return;
      default:
        return; // closing: drop
    }
  }

  /**
   * Feed the reader one line-bound slice at a time and consume lines in between, so that a single
   * large TCP chunk (one over-long line, up to 64 KiB) resyncs instead of overflowing the reader.
   */
  private feedCommands(chunk: Buffer): void {
    const step = this.svc.config.smtp.maxLineBytes;
    for (let i = 0; i < chunk.length; i += step) {
      if (this.phase !== 'command' && this.phase !== 'auth') return;
      this.reader.push(chunk.subarray(i, i + step));
      this.pump();
    }
  }

  /** Process complete command lines while nothing blocks. */
  private pump(): void {
    try {
      while ((this.phase === 'command' || this.phase === 'auth') && !this.blocked) {
        if (this.delayUntil > 0) {
          const wait = this.delayUntil - Date.now();
          if (wait > 0) {
            this.block();
            this.after(wait, () => this.unblock());
            break;
          }
          this.delayUntil = 0;
        }
        // RFC 4954 §4: a SASL response line may be up to 12288 octets; commands keep the configured limit.
        this.reader.setMaxLineBytes(this.phase === 'auth' ? AUTH_LINE_BYTES : this.svc.config.smtp.maxLineBytes);
        const ev = this.reader.next();
        if (!ev) break;
        if (ev.kind === 'error') {
          if (this.phase === 'auth') this.abortAuthLineTooLong();
          else this.protocolError('line_too_long', R.LINE_TOO_LONG);
          continue;
        }
        if (this.phase === 'auth') this.onAuthLine(ev.line);
        else this.onCommandLine(ev.line);
      }
      this.flowControl();
      this.closeIfClientDone();
    } catch (err) {
      this.internalError(err);
    }
  }

  private flowControl(): void {
    // While a barrier holds the loop, stop reading once a few lines are buffered (bounded memory).
    const tooMuch = this.reader.bufferedBytes > this.svc.config.smtp.maxLineBytes * 8;
    if (this.reader.overflowed) {
      // Bytes were dropped (more pipelined input than the reader may hold behind a barrier): the
      // stream can no longer be trusted, e.g. a body sent before 354 would be forwarded with a hole.
      this.svc.metrics.protocolErrors.inc({ kind: 'line_too_long' });
      this.outcome = 'input_overflow';
      this.writeNow({ ...reply(421, '4.5.0', 'Too much pipelined input, closing connection'), close: true });
      this.close('input_overflow');
      return;
    }
    if (this.blocked && tooMuch) this.client.pause();
    else if (this.client.isPaused() && this.phase !== 'closed') this.client.resume();
  }

  private block(): void {
    this.blocked = true;
  }

  private unblock(): void {
    this.blocked = false;
    if (this.draining && this.isIdle()) {
      this.terminate('shutdown');
      return;
    }
    this.pump();
  }

  /** Run a handler that may be asynchronous; the loop waits for it (order is kept). */
  private run(p: void | Promise<void>): void {
    if (!p) return;
    this.block();
    p.then(
      () => this.unblock(),
      (err) => this.internalError(err),
    );
  }

  private onCommandLine(line: Buffer): void {
    const parsed = parseCommand(line);
    if (!parsed.ok) {
      this.svc.metrics.commands.inc({ verb: 'other' });
      this.protocolError(parsed.kind, parsed.reply, line);
      return;
    }
    const cmd = parsed.value;
    const verb = commandVerbName(cmd);
    this.svc.metrics.commands.inc({ verb: verbLabel(verb) });
    switch (cmd.verb) {
      case 'HELO':
      case 'EHLO':
        return this.onHelo(cmd);
      case 'MAIL':
        return this.run(this.onMail(cmd.path, cmd.params));
      case 'RCPT':
        return this.run(this.onRcpt(cmd.path, cmd.params));
      case 'DATA':
        return this.onDataCommand();
      case 'RSET':
        this.tx.reset();
        // No backend session held (none lent now): nothing to reset there.
        if (!this.link) return this.localReply(reply(250, '2.0.0', 'OK'));
        return this.forward(cmd, () => this.seat.endTransaction(true));
      case 'NOOP':
        return this.localReply(reply(250, '2.0.0', 'OK'));
      case 'HELP':
        return this.localReply(reply(214, '2.0.0', 'See RFC 5321'));
      case 'QUIT':
        return this.onQuit();
      case 'VRFY':
        if (this.svc.config.smtp.vrfy === '252') return this.localReply(R.VRFY_CANNOT);
        return this.refuseVerb('VRFY');
      case 'EXPN':
        return this.refuseVerb('EXPN');
      case 'STARTTLS':
        return this.onStartTls();
      case 'AUTH':
        return this.onAuth(cmd.mechanism, cmd.initialResponse);
      case 'BDAT':
        return this.refuseVerb('BDAT'); // CHUNKING is never advertised: the guard must see DATA's end.
      case 'OTHER': {
        const name = cmd.name.toUpperCase();
        if (this.svc.config.smtp.trustedVerbs.map((v) => v.toUpperCase()).includes(name) && this.trusted()) {
          if (this.seat.own) return this.forward(cmd);
          // A private verb (ETRN, an X-verb) may change the backend session's state, so this client
          // keeps that session (the one it holds, else a free one) for good, as with AUTH.
          return this.run(this.dedicate().then((ok) => (ok ? this.forward(cmd) : undefined)));
        }
        return this.refuseVerb(name);
      }
    }
  }

  // ───────────────────────────── verbs ─────────────────────────────

  private onHelo(cmd: Extract<Command, { verb: 'HELO' | 'EHLO' }>): void {
    this.helo = cmd.domain;
    this.ehlo = cmd.verb === 'EHLO';
    this.tx.reset();
    const own = this.seat.own;
    if (!own) {
      // EHLO resets the transaction (RFC 5321 §4.1.4): give a held backend session back (RSET first).
      this.seat.endTransaction(false);
      return this.heloFromGuard(cmd.verb);
    }
    const slot = this.seq.later();
    own.send(cmd.verb, formatCommand(cmd), (r) => {
      if (isFailure(r)) return slot.resolve(this.backendFailureReply(r.failure, false));
      if (cmd.verb === 'EHLO' && r.code === 250) {
        const kw = ehloKeywords(r);
        own.pipelining = kw.has('PIPELINING');
        this.backendAuth = kw.get('AUTH');
        this.learnExtensions(kw);
        this.countReply('backend', r);
        return slot.resolve(filterEhlo(r, { allow: this.ehloAllowNow(), maxSizeBytes: this.svc.maxMessageBytes, add: this.extraEhloKeywords() }));
      }
      this.learnExtensions(undefined);
      this.countReply('backend', r);
      slot.resolve(r);
    });
  }

  /** No backend session of the client's own: HELO/EHLO answered by the guard with the backend's capabilities, filtered. */
  private heloFromGuard(verb: 'HELO' | 'EHLO'): void {
    if (verb === 'HELO') {
      this.learnExtensions(undefined);
      return this.localReply(reply(250, undefined, this.svc.config.smtp.hostname));
    }
    const caps = this.seat.capabilities();
    const kw = ehloKeywords(caps);
    this.backendAuth = kw.get('AUTH');
    this.learnExtensions(kw);
    this.localReply(filterEhlo(caps, { allow: this.ehloAllowNow(), maxSizeBytes: this.svc.maxMessageBytes, add: this.extraEhloKeywords() }));
  }

  /**
   * What the backend's EHLO offers that the guard passes on: SMTPUTF8 (RFC 6531) and DSN (RFC 3461)
   * are forwarded only to a backend that advertised them (and smtp.ehloAllow keeps them); HELO or
   * no EHLO yet: neither.
   */
  private learnExtensions(kw: ReadonlyMap<string, string> | undefined): void {
    this.backendSmtputf8 = kw !== undefined && kw.has('SMTPUTF8') && this.svc.ehloAllow.has('SMTPUTF8');
    this.backendDsn = kw !== undefined && kw.has('DSN') && this.svc.ehloAllow.has('DSN');
    if (kw !== undefined) this.svc.backendCaps?.note({ smtputf8: this.backendSmtputf8, dsn: this.backendDsn });
  }

  /** DSN for this client now: the backend offers it and smtp.dsn allows this client (trusted by default). */
  private dsnAllowed(): boolean {
    return this.backendDsn && dsnAllowedFor(this.svc.config.smtp.dsn ?? 'trusted', this.context(), this.rules());
  }

  /** smtp.ehloAllow for this client: without DSN when it may not use it (strangers never see the keyword). */
  private ehloAllowNow(): ReadonlySet<string> {
    if (!this.svc.ehloAllow.has('DSN') || dsnAllowedFor(this.svc.config.smtp.dsn ?? 'trusted', this.context(), this.rules())) return this.svc.ehloAllow;
    const allow = new Set(this.svc.ehloAllow);
    allow.delete('DSN');
    return allow;
  }

  private extraEhloKeywords(): string[] {
    const add: string[] = [];
    if (this.canStartTls()) add.push('STARTTLS');
    if (this.backendAuth && this.authAllowed()) add.push(`AUTH ${this.backendAuth}`);
    return add;
  }

  private async onMail(path: ReversePath, params: readonly EsmtpParam[]): Promise<void> {
    // A transaction whose (lent) backend session was lost ends with the client's next MAIL too.
    if (this.tx.lost) this.tx.reset();
    const j = judgeMail(this.envelope(), { heloGiven: !!this.helo, inTransaction: this.tx.mailSent, transactions: this.transactions }, path, params, this.rules());
    const sender = path.kind === 'null' ? '' : mailboxAddress(path.mailbox);
    if (j.verdict.action !== 'accept') return this.refuseMail(sender, j.verdict);
    this.countMailVerdict(j.verdict);
    if (j.limit && (await this.limit(j.limit, { sender }))) return;
    if (!this.link && !(await this.seat.forTransaction())) {
      if (this.phase !== 'closed') this.localReply(R.BACKEND_FAILED_IN_TRANSACTION);
      return;
    }
    this.transactions++;
    this.tx.mailSent = true;
    this.tx.mailFrom = path;
    this.tx.sender = sender;
    this.tx.smtputf8 = j.smtputf8;
    this.tx.declaredSize = j.declaredSize;
    this.forward({ verb: 'MAIL', path, params: j.params }, (r) => {
      if (r.code >= 300) {
        this.tx.reset();
        // A lent backend session: commands pipelined behind the refused MAIL are still out on it; it
        // goes back only once they are answered (their handlers return it, or the next MAIL reuses it).
        if (!this.link || this.link.outstanding === 0) this.seat.endTransaction(true);
      }
    });
  }

  private async onRcpt(path: ForwardPath, params: readonly EsmtpParam[]): Promise<void> {
    if (this.tx.mailSent && this.tx.lost) {
      this.tx.refused++;
      return this.localReply(R.BACKEND_FAILED_IN_TRANSACTION);
    }
    const state = { mailFrom: this.tx.mailSent ? this.tx.mailFrom : undefined, smtputf8: this.tx.smtputf8, recipients: this.tx.rcptForwarded };
    const j = await judgeRcpt(this.envelope(), state, path, params, this.rules(), this.svc.validator, this.policyServicesPort());
    if (this.phase === 'closed') return;
    if (j.verdict.action !== 'accept') {
      this.refuseRcpt(j, j.verdict);
      if (j.limit && (await this.limit(j.limit, {}, j.verdict.reply))) return;
      return this.localReply(j.verdict.reply);
    }
    this.countRcptVerdict(j.verdict);
    if (j.limit && (await this.limit(j.limit, { sender: this.tx.sender }))) return;
    if (this.svc.log.isLevelEnabled('debug')) this.log.debug({ rcpt: cap(j.rcpt), ruleId: j.verdict.ruleId, lookup: j.lookup?.source }, 'rcpt accepted');
    this.tx.rcptForwarded++;
    const rcpt = j.rcpt;
    const prepend = j.prepend ?? [];
    const serial = this.tx.serial;
    this.forward({ verb: 'RCPT', path, params: j.params }, (r) => {
      // The transaction ended before this reply came (its MAIL was refused): nothing to count.
      if (serial !== this.tx.serial) return;
      if (r.code < 300) {
        this.tx.accepted.push(rcpt);
        this.rcptAccepted++;
        // A header one recipient's policy asked for is added once per message (bounded).
        for (const h of prepend) if (!this.tx.prepend.includes(h) && this.tx.prepend.length < MAX_PREPEND_HEADERS) this.tx.prepend.push(h);
        return;
      }
      this.tx.refused++;
      // The backend itself does not know the mailbox (RFC 3463 X.1.1; Exchange says 5.1.10): harvest
      // protection counts it like the guard's own 550 5.1.1. Not awaited: the loop is not blocked
      // here (a barrier may hold it); a ban stops reading and closes after the pending replies.
      if (r.code >= 500 && /^5\.1\.(1|10)\b/.test(r.enhanced ?? r.lines[0] ?? '')) void this.limit('unknown-recipient', {}, r).catch((err: unknown) => this.internalError(err));
    });
  }

  /** A refused MAIL: one count by rule id, one 'sender refused' line, one console record; then the reply. */
  private refuseMail(sender: string | undefined, v: PolicyRefusal): void {
    this.countMailVerdict(v);
    this.log.info({ helo: cap(this.helo), mailFrom: cap(sender), ruleId: v.ruleId, reply: replyText(v.reply) }, 'sender refused');
    this.noteRefusal('sender', sender, undefined, v.ruleId, v.reply);
    this.localReply(v.reply);
  }

  /** A refused RCPT: one count by rule id, one 'rcpt refused' line, one console record (the caller replies). */
  private refuseRcpt(j: Pick<RcptJudgement, 'rcpt' | 'lookup'>, v: PolicyRefusal): void {
    this.tx.refused++;
    this.rcptRefused++;
    this.countRcptVerdict(v);
    this.log.info(
      { helo: cap(this.helo), mailFrom: cap(this.tx.sender), rcpt: cap(j.rcpt), ruleId: v.ruleId, reply: replyText(v.reply), lookup: j.lookup?.source },
      'rcpt refused',
    );
    this.noteRefusal('rcpt', this.tx.sender, j.rcpt, v.ruleId, v.reply);
  }

  /**
   * Postfix policy services at the RCPT stage as the judge's port: asked (by the judge, only about a
   * recipient it accepted) unless none applies to this client (trusted clients: `trusted: skip`).
   */
  private policyServicesPort(): RcptServicesPort | undefined {
    const ps = this.svc.policyServices;
    if (!ps) return undefined;
    const trusted = isTrusted(this.context(this.tx.mailFrom), this.rules());
    if (!ps.asks('rcpt', trusted)) return undefined;
    return { ask: (rcpt) => ps.evaluate('rcpt', this.policyFacts('RCPT', rcpt), rcpt, trusted) };
  }

  /** The facts the envelope judge decides on, beyond the session context. */
  private envelope(): EnvelopeContext {
    return { session: this.context(), limits: this.envelopeLimits, backendSmtputf8: this.backendSmtputf8, dsnAllowed: this.dsnAllowed() };
  }

  /** The admin console's ring of recent refusals: what the refusal log line just said, no more. */
  private noteRefusal(kind: 'rcpt' | 'sender', mailFrom: string | undefined, rcpt: string | undefined, ruleId: string, r: Reply): void {
    this.svc.refusals?.record({ kind, sessionId: this.id, clientIp: this.clientIp, listener: this.listener.config.name, helo: this.helo, authUser: this.authUser, mailFrom, rcpt, ruleId, reply: replyText(r) });
  }

  /**
   * DATA with policy services at the DATA stage: once every RCPT reply is in (recipient_count is the
   * accepted count, as Postfix sends it), ask them; a refusal answers DATA, else DATA goes on.
   */
  private onDataCommand(): void {
    const ps = this.svc.policyServices;
    if (!ps || !this.tx.mailSent || this.tx.lost || this.tx.rcptForwarded === 0) return this.onData();
    const trusted = isTrusted(this.context(this.tx.mailFrom), this.rules());
    if (!ps.asks('data', trusted)) return this.onData();
    this.block();
    this.seq.whenIdle(() => {
      if (this.phase === 'closed') return;
      if (this.tx.accepted.length === 0 || this.tx.lost) {
        this.blocked = false;
        this.onData();
        if (!this.blocked) this.unblock();
        return;
      }
      ps.evaluate('data', this.policyFacts('DATA'), '', trusted).then(
        (pv) => {
          if (this.phase === 'closed') return;
          if (pv.action !== 'accept') {
            const ruleId = `policy-service:${pv.decidedBy}`;
            this.log.info({ helo: cap(this.helo), mailFrom: cap(this.tx.sender), rcpts: this.tx.accepted.length, ruleId, reply: replyText(pv.reply) }, 'data refused');
            this.svc.refusals?.record({ kind: 'data', sessionId: this.id, clientIp: this.clientIp, listener: this.listener.config.name, helo: this.helo, authUser: this.authUser, mailFrom: this.tx.sender, ruleId, reply: replyText(pv.reply) });
            this.localReply(pv.reply);
            this.unblock();
            return;
          }
          for (const h of pv.prepend) if (!this.tx.prepend.includes(h) && this.tx.prepend.length < MAX_PREPEND_HEADERS) this.tx.prepend.push(h);
          this.blocked = false;
          this.onData();
          if (!this.blocked) this.unblock();
        },
        (err: unknown) => this.internalError(err),
      );
    });
  }

  /** The attributes of a policy request, from what this session knows (SMTPD_POLICY_README). */
  private policyFacts(state: 'RCPT' | 'DATA', rcpt?: string): PolicyRequestFacts {
    const secure = this.tlsActive && this.client instanceof tls.TLSSocket ? this.client : undefined;
    const cipher = secure?.getCipher();
    return {
      protocolState: state,
      protocolName: this.ehlo ? 'ESMTP' : 'SMTP',
      heloName: this.helo,
      sender: this.tx.sender,
      // At DATA Postfix names the recipient only when exactly one was accepted.
      recipient: rcpt ?? (this.tx.accepted.length === 1 ? this.tx.accepted[0] : ''),
      recipientCount: state === 'DATA' ? this.tx.accepted.length : 0,
      clientAddress: this.clientIp,
      clientPort: this.clientPort,
      serverAddress: this.client.localAddress,
      serverPort: this.client.localPort,
      // One message, one instance: the session and its transaction number (postgrey, policyd-spf rely on it).
      instance: `${this.id}.${this.transactions}`,
      saslUsername: this.authUser,
      size: this.tx.declaredSize,
      encryptionProtocol: secure?.getProtocol() ?? undefined,
      encryptionCipher: cipher?.name,
      // The cipher's key bits, as Postfix sends them (AES_256_GCM → 256, CHACHA20 → 256, AES_128 → 128).
      encryptionKeysize: cipher ? (/256|CHACHA20/i.test(cipher.name) ? 256 : /128/.test(cipher.name) ? 128 : undefined) : undefined,
    };
  }

  private onData(): void {
    if (!this.tx.mailSent) return this.refuseCommand('mail-required', reply(503, '5.5.1', 'Need MAIL command'));
    if (this.tx.lost) {
      // The end of that transaction: the client may start the next one with or without RSET.
      this.tx.reset();
      return this.localReply(R.BACKEND_FAILED_IN_TRANSACTION);
    }
    if (this.tx.rcptForwarded === 0) return this.refuseCommand('no-valid-recipients', R.NO_VALID_RECIPIENTS);
    // Barrier: nothing after DATA is read until the backend has answered it (RFC 2920 §3.1).
    this.block();
    const slot = this.seq.later();
    this.link!.send('DATA', formatCommand({ verb: 'DATA' }), (r) => {
      // The session ended while this reply was on its way (close() dealt with the backend session).
      if (this.phase === 'closed') return;
      if (isFailure(r)) {
        const failed = this.backendFailureReply(r.failure, true);
        slot.resolve(failed);
        // Only this transaction is lost (the 451 does not close): lift the DATA barrier.
        if (!failed.close) {
          this.tx.reset();
          this.unblock();
        }
        return;
      }
      this.countReply('backend', r);
      if (r.code !== 354) {
        slot.resolve(r);
        this.tx.reset();
        this.seat.endTransaction(false);
        this.unblock();
        return;
      }
      if (this.phase !== 'command') {
        // Closing (a ban or limit decided while DATA was out): no message now; the 421 follows.
        this.seat.abandon();
        slot.resolve(this.guardMade(R.BACKEND_FAILED_IN_TRANSACTION));
        return;
      }
      if (this.tx.accepted.length === 0) {
        // The backend would take a message with no recipient it accepted: never send one.
        this.seat.abandon();
        slot.resolve(this.guardMade({ ...R.NO_VALID_RECIPIENTS, close: true }));
        return;
      }
      slot.resolve(r);
      if (this.tx.prepend.length > 0) {
        // PREPEND from policy services: header lines at the top of the message, before the client's
        // first byte (dot-stuffed, RFC 5321 §4.5.2, though a field name rarely starts with a dot).
        const headers = Buffer.from(this.tx.prepend.map((h) => `${h.startsWith('.') ? '.' : ''}${h}\r\n`).join(''), 'latin1');
        this.bytesOut += headers.length;
        this.link!.writeRaw(headers);
      }
      this.scanner = new EndOfDataScanner({ mode: this.svc.config.smtp.smuggling, maxBytes: this.svc.maxMessageBytes });
      this.phase = 'data';
      this.resetIdle();
      const early = this.reader.takeBuffered();
      if (early.length > 0) this.feedData(early);
      this.flowControlData();
      this.closeIfClientDone();
    }, this.svc.timeouts.backendReplyMs);
  }

  private onQuit(): void {
    this.outcome = 'quit';
    // A lent backend session is not this client's to close: the guard says goodbye itself and the
    // session goes back (RSET first when a transaction was open).
    const own = this.seat.own;
    if (!own) {
      this.localReply({ ...reply(221, '2.0.0', 'Bye'), close: true });
      this.block();
      return;
    }
    const slot = this.seq.later();
    own.send('QUIT', formatCommand({ verb: 'QUIT' }), (r) => {
      const bye = isFailure(r) ? reply(221, '2.0.0', 'Bye') : r;
      this.countReply(isFailure(r) ? 'guard' : 'backend', bye);
      slot.resolve({ ...bye, close: true });
    });
    this.block();
  }

  /** DATA out of sequence: counted as a sequence error, logged once with its rule id. */
  private refuseCommand(ruleId: string, r: Reply): void {
    this.svc.metrics.protocolErrors.inc({ kind: 'bad_sequence' });
    this.log.info({ ruleId, reply: replyText(r) }, 'command refused');
    this.localReply(r);
  }

  private refuseVerb(verb: string): void {
    this.svc.metrics.refusedVerbs.inc({ verb: verbLabel(verb) });
    this.log.info({ ruleId: 'verb-not-allowed', verb: verbLabel(verb), reply: replyText(R.VERB_NOT_ALLOWED) }, 'command refused');
    this.localReply(R.VERB_NOT_ALLOWED);
  }

  // ───────────────────────────── STARTTLS and AUTH ─────────────────────────────

  private canStartTls(): boolean {
    return !this.tlsActive && this.listener.tls !== undefined && this.listener.config.starttls && this.listener.config.kind !== 'smtps';
  }

  private authAllowed(): boolean {
    return this.tlsActive || this.listener.plaintextAuth(this.clientIp);
  }

  private onStartTls(): void {
    if (!this.canStartTls()) return this.refuseVerb('STARTTLS');
    if (this.tx.mailSent) return this.localReply(R.BAD_SEQUENCE);
    // Discard anything pipelined after STARTTLS (CVE-2011-0411): it was sent in plaintext.
    this.reader.takeBuffered();
    this.block();
    this.localReply(reply(220, '2.0.0', 'Ready to start TLS'));
    this.seq.whenIdle(() => this.upgradeTls());
  }

  private upgradeTls(): void {
    const plain = this.client;
    plain.removeAllListeners('data');
    plain.removeAllListeners('close');
    plain.removeAllListeners('error');
    plain.on('error', () => undefined);
    const secure = new tls.TLSSocket(plain, { ...this.listener.tls!.socketOptions(), isServer: true });
    let done = false;
    const handshakeTimer = this.after(this.svc.timeouts.commandMs, () => {
      if (!done) this.close('tls_timeout');
    });
    secure.once('secure', () => {
      done = true;
      this.timers.delete(handshakeTimer);
      clearTimeout(handshakeTimer);
      this.svc.metrics.tlsHandshakes.inc({ kind: 'starttls', result: 'success' });
      this.tlsActive = true;
      // RFC 3207 §4.2: forget everything learned before TLS; a new EHLO is required.
      this.helo = undefined;
      this.ehlo = false;
      this.learnExtensions(undefined);
      this.tx.reset();
      this.reader.takeBuffered();
      this.unblock();
    });
    secure.on('error', (err: NodeJS.ErrnoException) => {
      if (!done) this.svc.metrics.tlsHandshakes.inc({ kind: 'starttls', result: 'failure' });
      this.log.info({ err: { code: err.code, message: err.message } }, done ? 'tls error' : 'tls handshake failed');
      this.close('tls_error');
    });
    this.client = secure;
    secure.on('data', (chunk: Buffer) => this.onClientData(chunk));
    secure.on('close', () => this.close(this.phase === 'closing' ? 'closed' : 'client_closed'));
  }

  private onAuth(mechanism: string, initial: string | undefined): void {
    if (this.authUser) return this.localReply(reply(503, '5.5.1', 'Already authenticated'));
    // AUTH is an EHLO extension (RFC 4954 §3); after STARTTLS the old EHLO no longer counts (RFC 3207 §4.2).
    if (!this.ehlo || !this.helo) return this.localReply(reply(503, '5.5.1', 'Send EHLO first'));
    if (this.tx.mailSent) return this.localReply(R.BAD_SEQUENCE);
    if (!this.backendAuth || !this.authAllowed()) {
      this.svc.metrics.auth.inc({ result: 'refused' });
      return this.localReply(this.backendAuth && !this.tlsActive ? R.MUST_ISSUE_STARTTLS : R.VERB_NOT_ALLOWED);
    }
    const offered = this.backendAuth.toUpperCase().split(/\s+/);
    if (!offered.includes(mechanism)) return this.localReply(reply(504, '5.5.4', 'Unrecognized authentication type'));
    const authState: { mechanism: string; step: number; user?: string } = { mechanism, step: 0 };
    if (initial !== undefined) this.noteAuthResponse(authState, initial);
    this.authState = authState;
    this.phase = 'auth';
    this.block();
    const wire = Buffer.from(`AUTH ${mechanism}${initial !== undefined ? ` ${initial}` : ''}\r\n`, 'latin1');
    if (this.seat.own) return this.sendAuth(wire, authState);
    // Authentication binds a backend session to this client for good.
    this.dedicate().then(
      (ok) => {
        if (this.phase === 'closed') return;
        if (ok) return this.sendAuth(wire, authState);
        this.phase = 'command';
        this.authState = undefined;
        this.unblock();
      },
      (err) => this.internalError(err),
    );
  }

  /** A backend session that stays this client's (AUTH, a private verb); false (451 sent) when there is none. */
  private async dedicate(): Promise<boolean> {
    const link = await this.seat.dedicate(this.tx.mailSent);
    if (link) return true;
    if (this.phase !== 'closed') this.localReply(R.BACKEND_FAILED_IN_TRANSACTION);
    return false;
  }

  private sendAuth(wire: Buffer, st: { mechanism: string; step: number; user?: string }): void {
    const slot = this.seq.later();
    this.link!.send('AUTH', wire, (r) => {
      if (this.phase === 'closed') return;
      if (isFailure(r)) {
        this.phase = 'command';
        slot.resolve(this.backendFailureReply(r.failure, false));
        return;
      }
      this.countReply('backend', r);
      if (r.code === 334) {
        slot.resolve(r); // continue: the next client line is a SASL response, never a command
        this.unblock();
        return;
      }
      this.phase = 'command';
      this.authState = undefined;
      if (r.code === 235) {
        this.authUser = st.user ?? '(unknown)';
        this.svc.metrics.auth.inc({ result: 'success' });
        this.log.info({ authUser: cap(this.authUser), mechanism: st.mechanism }, 'authenticated');
        slot.resolve(r);
        this.unblock();
        return;
      }
      this.svc.metrics.auth.inc({ result: r.code === 501 ? 'aborted' : 'failure' });
      this.log.info({ authUser: cap(st.user), mechanism: st.mechanism, reply: replyText(r) }, 'authentication failed');
      void this.limit('auth-failure', {}, r).then((limited) => {
        slot.resolve(r);
        this.unblock();
      });
    });
  }

  /**
   * A SASL response line over the line limit: cancel the exchange at the backend with "*" (RFC 4954
   * §4) so both sides leave it together, and tell the client why. Without this the backend kept
   * waiting and took the client's next command as the SASL response.
   */
  private abortAuthLineTooLong(): void {
    this.authState = undefined;
    this.phase = 'command';
    this.svc.metrics.protocolErrors.inc({ kind: 'line_too_long' });
    this.svc.metrics.auth.inc({ result: 'aborted' });
    this.block();
    const slot = this.seq.later();
    this.link!.send('AUTH', Buffer.from('*\r\n'), (r) => {
      if (isFailure(r)) return slot.resolve(this.backendFailureReply(r.failure, false));
      this.countReply('backend', r);
      this.countReply('guard', R.LINE_TOO_LONG);
      slot.resolve(R.LINE_TOO_LONG);
      this.unblock();
    });
  }

  /** A SASL response line from the client (RFC 4954 §4): base64 or "*". Forwarded, never logged. */
  private onAuthLine(line: Buffer): void {
    const st = this.authState as { mechanism: string; step: number; user?: string } | undefined;
    if (!st) {
      this.phase = 'command';
      return;
    }
    const text = line.toString('latin1');
    if (text !== '*' && !/^[A-Za-z0-9+/]*={0,2}$/.test(text)) {
      // Not base64: abort the exchange on the backend too.
      this.block();
      this.sendAuth(Buffer.from('*\r\n'), st);
      return;
    }
    this.noteAuthResponse(st, text);
    this.block();
    this.sendAuth(Buffer.from(`${text}\r\n`, 'latin1'), st);
  }

  /** Learn the user name from PLAIN (authzid\0authcid\0passwd) or LOGIN's first response; never the secret. */
  private noteAuthResponse(st: { mechanism: string; step: number; user?: string }, b64: string): void {
    const step = st.step++;
    if (b64 === '*' || b64 === '=') return;
    const decoded = Buffer.from(b64, 'base64').toString('utf8');
    if (st.mechanism === 'PLAIN' && step === 0) st.user = decoded.split('\0')[1];
    else if (st.mechanism === 'LOGIN' && step === 0) st.user = decoded;
  }

  // ───────────────────────────── DATA ─────────────────────────────

  private feedData(chunk: Buffer): void {
    const scanner = this.scanner!;
    const step = scanner.push(chunk);
    // A lent backend session lost mid-DATA leaves no link; read the rest, then 451.
    const link = this.link;
    let full = false;
    if (link) {
      for (const b of step.forward) {
        this.bytesOut += b.length;
        if (!link.writeRaw(b)) full = true;
      }
    }
    if (full && link) {
      this.client.pause();
      link.once('drain', () => this.flowControlData());
    }
    switch (step.status) {
      case 'more':
        return;
      case 'end':
        if (!link) return this.finishDiscard(R.BACKEND_FAILED_IN_TRANSACTION, step.rest);
        return this.endOfData(step.size, step.rest);
      case 'smuggling':
        this.svc.metrics.smuggling.inc({ kind: step.smuggle, action: 'rejected' });
        this.svc.metrics.protocolErrors.inc({ kind: step.smuggle === 'nul' ? 'bad_bytes' : step.smuggle });
        this.svc.metrics.messages.inc({ outcome: 'smuggling' });
        this.log.warn({ helo: cap(this.helo), mailFrom: cap(this.tx.sender), kind: step.smuggle, rcpts: this.tx.accepted.length }, 'smuggling attempt refused');
        this.seat.abandon();
        this.outcome = 'smuggling';
        this.phase = 'closing';
        this.localReply({ ...R.SMUGGLING, close: true });
        return;
      case 'too_large':
        this.svc.metrics.messages.inc({ outcome: 'too_large' });
        this.log.info({ mailFrom: cap(this.tx.sender), size: step.size }, 'message too large');
        this.seat.abandon();
        this.phase = 'discard';
        // The scanner keeps the rest of the overflowing chunk: scan it first (stay in sync, then 552).
        this.discardData(Buffer.alloc(0));
        return;
    }
  }

  private discardData(chunk: Buffer): void {
    const r = this.scanner!.discardUntilEnd(chunk);
    if (!r.done) return;
    this.outcome = 'too_large';
    // The aborted message took the backend session with it: the client goes on only when another can be had.
    this.finishDiscard(this.seat.replaceable ? R.MESSAGE_TOO_LARGE : { ...R.MESSAGE_TOO_LARGE, close: true }, r.rest);
  }

  /** The client's end-of-data arrived for a message that will not be delivered: answer, go on. */
  private finishDiscard(r: Reply, rest: Buffer): void {
    this.scanner = undefined;
    this.tx.reset();
    if (r.close) {
      this.phase = 'closing';
      this.localReply(r);
      return;
    }
    this.phase = 'command';
    this.localReply(r);
    if (rest.length > 0) this.reader.push(rest);
    this.unblock();
  }

  private flowControlData(): void {
    if (this.phase === 'closed') return;
    if (this.client.isPaused()) this.client.resume();
  }

  private endOfData(size: number, rest: Buffer): void {
    this.phase = 'command';
    this.scanner = undefined;
    const slot = this.seq.later();
    const rcpts = this.tx.accepted.length;
    this.link!.expect('DATA-END', (r) => {
      if (isFailure(r)) {
        this.svc.metrics.messages.inc({ outcome: 'backend_failed' });
        this.log.warn({ failure: r.failure, mailFrom: cap(this.tx.sender), rcpts, size, backendSession: this.link?.tag }, 'backend failed after end-of-data');
        if (this.seat.replaceable) {
          // Never a 2xx the backend did not give: 451, and the client may retry on another backend session.
          this.tx.reset();
          slot.resolve(this.guardMade(R.BACKEND_FAILED_IN_TRANSACTION));
          this.unblock();
          return;
        }
        slot.resolve(this.guardMade({ ...R.BACKEND_FAILED_IN_TRANSACTION, close: true }));
        return;
      }
      this.countReply('backend', r);
      if (r.code >= 200 && r.code < 300) {
        this.messages++;
        this.svc.metrics.messages.inc({ outcome: 'delivered' });
        this.svc.metrics.messageBytes.inc(size);
        this.svc.metrics.messageSize.observe(size);
        if (this.infoOn) this.log.info({ clientPort: this.clientPort, mailFrom: cap(this.tx.sender), rcpts, size, backendSession: this.link?.tag, backendReply: cap(replyText(r), 200) }, 'message accepted');
      } else {
        this.svc.metrics.messages.inc({ outcome: 'rejected_by_backend' });
        if (this.infoOn) this.log.info({ clientPort: this.clientPort, mailFrom: cap(this.tx.sender), rcpts, size, backendSession: this.link?.tag, backendReply: cap(replyText(r), 200) }, 'message rejected by backend');
      }
      this.tx.reset();
      this.seat.endTransaction(true);
      slot.resolve(r);
      this.unblock();
    }, this.svc.timeouts.backendDataReplyMs);
    this.block();
    if (rest.length > 0) this.reader.push(rest);
  }

  // ───────────────────────────── forwarding and replies ─────────────────────────────

  /** Forward a command re-serialised from its parsed form (invariant 1) and relay the reply in order. */
  private forward(cmd: Command, onReply?: (r: Reply) => void): void {
    const slot = this.seq.later();
    this.link!.send(commandVerbName(cmd), formatCommand(cmd), (r) => {
      if (isFailure(r)) return slot.resolve(this.backendFailureReply(r.failure, this.tx.mailSent));
      this.countReply('backend', r);
      onReply?.(r);
      slot.resolve(r);
    });
  }

  private relayFromBackend(r: Reply): void {
    this.countReply('backend', r);
    this.seq.local(r);
  }

  private localReply(r: Reply): void {
    this.countReply('guard', r);
    this.seq.local(r);
  }

  private countReply(source: 'guard' | 'backend', r: Reply): void {
    this.svc.metrics.replies.inc({ source, class: replyClass(r) });
  }

  private writeReplies(wire: Buffer, replies: readonly Reply[]): void {
    if (this.phase === 'closed') return;
    this.client.write(wire);
    this.resetIdle();
    let close = false;
    for (const r of replies) {
      if (r.code >= 400) this.errors++;
      if (r.close) close = true;
    }
    if (close) {
      this.close(this.outcome === 'closed' ? 'reply' : this.outcome);
      return;
    }
    const { softErrorLimit, hardErrorLimit } = this.svc.config.smtp;
    if (this.errors >= hardErrorLimit) {
      this.svc.metrics.protocolErrors.inc({ kind: 'too_many_errors' });
      this.outcome = 'too_many_errors';
      this.writeNow(R.TOO_MANY_ERRORS);
      this.close('too_many_errors');
      return;
    }
    if (this.errors > softErrorLimit && replies.some((r) => r.code >= 400)) {
      // Postfix smtpd_soft_error_limit: a growing delay before the next command is read.
      const delay = Math.min(this.svc.timeouts.errorDelayMs * (this.errors - softErrorLimit), 30_000);
      if (delay > 0) this.delayUntil = Date.now() + delay;
    }
    this.closeIfClientDone();
  }

  /** Write a reply at once, outside the sequence (closing paths only: replies still pending are moot). */
  private writeNow(r: Reply): void {
    if (this.phase === 'closed') return;
    this.countReply('guard', r);
    this.client.write(formatReply(r));
  }

  /**
   * A command the codec refused: counted by kind, logged once. A MAIL or RCPT whose address does
   * not parse is also a verdict (sender-syntax, recipient-syntax), as /api/v1/check reports it.
   */
  private protocolError(kind: ProtocolErrorKind, r: Reply, line?: Buffer): void {
    this.svc.metrics.protocolErrors.inc({ kind });
    if (r.close) this.outcome = kind;
    const verb = line && kind === 'syntax' ? /^(MAIL|RCPT) /i.exec(line.toString('latin1', 0, 5))?.[1]?.toUpperCase() : undefined;
    if (verb === 'MAIL' || verb === 'RCPT') {
      const arg = cap(line!.toString('utf8', 5), 256);
      const v = commandSyntaxVerdict(verb, r, 'address does not parse');
      if (verb === 'MAIL') {
        this.countMailVerdict(v);
        this.log.info({ helo: cap(this.helo), mailFrom: arg, ruleId: v.ruleId, reply: replyText(r) }, 'sender refused');
        this.noteRefusal('sender', arg, undefined, v.ruleId, r);
      } else {
        this.refuseRcpt({ rcpt: arg ?? '', lookup: undefined }, v);
      }
    } else {
      this.log.info({ ruleId: kind, reply: replyText(r) }, 'command refused');
    }
    this.localReply(r);
    if (!r.close && this.svc.limiter) this.run(this.limit('protocol-error', {}).then(() => undefined));
  }

  private backendFailureReply(failure: BackendFailure, inTransaction: boolean): Reply {
    return this.guardMade(this.backendFailureReplyFor(failure, inTransaction));
  }

  /** Count a reply the guard made itself that goes out through a backend slot. */
  private guardMade(r: Reply): Reply {
    this.countReply('guard', r);
    return r;
  }

  private backendFailureReplyFor(failure: BackendFailure, inTransaction: boolean): Reply {
    this.svc.metrics.backendErrors.inc({ kind: failure });
    // Only this transaction is lost: the client may go on with another backend session.
    if (this.seat.replaceable) return R.BACKEND_FAILED_IN_TRANSACTION;
    if (this.phase !== 'closed') this.outcome = 'backend_failed';
    return inTransaction ? { ...R.BACKEND_FAILED_IN_TRANSACTION, close: true } : R.BACKEND_UNAVAILABLE;
  }

  private onBackendClosed(failure: BackendFailure): void {
    if (this.phase === 'closed' || this.phase === 'closing') return;
    this.log.warn({ failure, phase: this.phase }, 'backend connection lost');
    if (this.seat.dropLost()) {
      if (this.phase === 'data') this.svc.metrics.messages.inc({ outcome: 'backend_failed' });
      else if (this.tx.mailSent) this.tx.lost = true;
      return;
    }
    if (this.phase === 'data') {
      this.svc.metrics.messages.inc({ outcome: 'backend_failed' });
      this.phase = 'closing';
      this.localReply({ ...R.BACKEND_FAILED_IN_TRANSACTION, close: true });
      return;
    }
    // Pending commands were answered by their handlers; if nothing was pending, say goodbye now.
    if (this.seq.pending === 0) this.localReply(this.tx.mailSent ? { ...R.BACKEND_FAILED_IN_TRANSACTION, close: true } : R.BACKEND_UNAVAILABLE);
  }

  // ───────────────────────────── policy, limits ─────────────────────────────

  private rules(): RulesSnapshot {
    return this.svc.rules.current();
  }

  private context(mailFrom?: ReversePath): SessionContext {
    return {
      clientIp: this.clientIp,
      listener: this.listener.config.name,
      listenerKind: this.listener.config.kind,
      listenerRelay: this.listener.config.relay === 'allow',
      tls: this.tlsActive,
      ...(this.authUser !== undefined ? { authUser: this.authUser } : {}),
      ...(this.helo !== undefined ? { helo: this.helo } : {}),
      ...(mailFrom !== undefined ? { mailFrom } : {}),
    };
  }

  private trusted(): boolean {
    return isTrusted(this.context(), this.rules());
  }

  private limitSubject(extra: { sender?: string } = {}) {
    return {
      clientIp: this.clientIp,
      trusted: this.trusted(),
      ...(this.authUser !== undefined ? { authUser: this.authUser } : {}),
      ...(extra.sender !== undefined ? { sender: extra.sender === '' ? '<>' : extra.sender } : {}),
    };
  }

  /** No limit counts this event (limits off, or no enabled rule for it): skip building the subject and asking. */
  private noLimitFor(event: LimitEvent | 'concurrent'): boolean {
    return !this.svc.limiter?.counts(event);
  }

  /**
   * Ask the limiter about an event. Returns true when the limiter answered the command
   * (tempfail, close or ban); a tarpit delays and returns false.
   */
  private async limit(event: LimitEvent, extra: { sender?: string }, refusal?: Reply): Promise<boolean> {
    const limiter = this.svc.limiter;
    if (!limiter || this.noLimitFor(event)) return false;
    let d: LimitDecision;
    try {
      d = await limiter.check(event, this.limitSubject(extra));
    } catch (err) {
      this.svc.metrics.internalErrors.inc({ where: 'limits' });
      this.log.error({ err }, 'limiter failed');
      return false; // the stores fall back by themselves; a bug here must not stop mail
    }
    if (this.phase === 'closed' || d.action === 'allow') return false;
    this.log.info({ limit: d.limitId, action: d.action, event }, 'limit hit');
    if (d.action === 'tarpit') {
      await this.sleep(d.delayMs ?? 0);
      return false;
    }
    if (d.action === 'tempfail' && refusal) return false; // the refusal itself is answer enough
    this.outcome = d.action === 'ban' ? 'banned' : 'limited';
    if (d.action === 'tempfail') {
      this.localReply(d.reply);
      return true;
    }
    // close / ban: read no further command, so nothing pipelined behind this one reaches the
    // backend; the 421 is written once the replies before it are in (RFC 2920 §3.1 order). Decided
    // while a message was being read (a late unknown-recipient verdict): that message never ends.
    if (this.phase === 'data' || this.phase === 'discard') this.seat.abandon();
    this.phase = 'closing';
    this.localReply({ ...d.reply, close: true });
    return true;
  }

  private countRcptVerdict(v: RcptVerdict): void {
    this.countVerdict(this.svc.metrics.rcptVerdicts, v, 'rcpt would be refused');
    if (v.action !== 'accept' && RELAY_RULES.has(v.ruleId)) this.svc.metrics.relayDenials.inc({ rule: v.ruleId });
  }

  private countMailVerdict(v: MailVerdict): void {
    this.countVerdict(this.svc.metrics.mailVerdicts, v, 'sender would be refused');
  }

  /** Rules in warn mode are counted and logged as what they would have done; the deciding rule as enforced. */
  private countVerdict(counter: Metrics['rcptVerdicts'], v: RcptVerdict | MailVerdict, wouldRefuse: string): void {
    for (const w of v.warnings) {
      counter.inc({ verdict: 'reject', mode: 'warn', rule: w.ruleId });
      this.log.info({ ruleId: w.ruleId, reply: replyText(w.reply), mode: 'warn' }, wouldRefuse);
    }
    counter.inc({ verdict: v.action, mode: 'enforce', rule: v.ruleId });
  }

  // ───────────────────────────── timers and close ─────────────────────────────

  private after(ms: number, fn: () => void): NodeJS.Timeout {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
    return t;
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.after(ms, resolve));
  }

  /**
   * Activity: the silence starts again now. The timer is not moved on every call (a session calls
   * this a dozen times per message): it is re-armed only when it would fire too late for the limit
   * that now applies; when it fires early, onIdleTimer measures the silence and arms for the rest.
   */
  private resetIdle(): void {
    if (this.phase === 'closed' || this.phase === 'closing') return;
    const now = Date.now();
    this.idleSince = now;
    const ms = this.idleTimerMs(this.idleLimitMs());
    if (this.idleTimer === undefined || this.idleDue > now + ms) this.armIdle(ms);
  }

  /** The silence allowed in this phase: the DATA timeout while reading a message, else the command timeout. */
  private idleLimitMs(): number {
    return this.phase === 'data' || this.phase === 'discard' ? this.svc.timeouts.dataMs : this.svc.timeouts.commandMs;
  }

  /** When to look next: a client holding a backend session others may wait for is looked at sooner (onIdleTimer). */
  private idleTimerMs(leftMs: number): number {
    const contended = this.seat.contendedIdleMs;
    return contended !== undefined ? Math.min(leftMs, contended) : leftMs;
  }

  private armIdle(ms: number): void {
    clearTimeout(this.idleTimer);
    this.idleDue = Date.now() + ms;
    this.idleTimer = setTimeout(this.onIdleTimer, ms);
  }

  /**
   * The idle timer. A client that holds a lent backend session while others wait for one gets
   * only the seat's contended silence (backend stressTimeout) (as Postfix shortens smtpd_timeout under stress):
   * a few silent clients in mid-transaction must not starve everyone else. Otherwise the full
   * command/DATA timeout applies.
   */
  private readonly onIdleTimer = (): void => {
    this.idleTimer = undefined;
    if (this.phase === 'closed' || this.phase === 'closing') return;
    const left = this.idleSince + this.idleLimitMs() - Date.now();
    if (left > 0 && !this.seat.shedForWaiters(Date.now() - this.idleSince)) {
      this.armIdle(this.idleTimerMs(left));
      return;
    }
    this.onTimeout('idle');
  };

  private armSessionTimer(): void {
    this.after(this.svc.timeouts.sessionMs, () => this.onTimeout('session'));
  }

  private onTimeout(which: string): void {
    if (this.phase === 'closed' || this.phase === 'closing') return;
    this.log.info({ which, phase: this.phase }, 'timeout');
    this.outcome = 'timeout';
    if (this.phase === 'data' || this.tx.mailSent) this.seat.abandon();
    this.writeNow(R.TIMEOUT);
    this.close('timeout');
  }

  private internalError(err: unknown): void {
    this.svc.metrics.internalErrors.inc({ where: 'session' });
    this.log.error({ err }, 'internal error');
    this.outcome = 'internal_error';
    this.seat.abandon();
    if (this.phase !== 'closed') {
      this.writeNow({ ...reply(421, '4.3.0', 'Internal error, try again later'), close: true });
      this.close('internal_error');
    }
  }

  /** Close both sides (idempotent): flush replies, end the client, release everything, log the summary. */
  private close(reason: string): void {
    if (this.phase === 'closed') return;
    const wasData = this.phase === 'data' || this.phase === 'discard';
    this.phase = 'closed';
    if (!this.closeReason) this.closeReason = reason;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    clearTimeout(this.idleTimer);
    // Mid-transaction the backend must not deliver: abort without end-of-data. Otherwise QUIT politely
    // (or give a lent backend session back).
    this.seat.release({ inMessage: wasData, inTransaction: this.tx.mailSent });
    const client = this.client;
    if (this.outcome === 'quit') {
      // After the reply to QUIT nothing more is read (RFC 5321 §4.1.1.10): close as soon as the reply
      // is flushed, as Postfix does, rather than wait for the client's FIN (or its reset).
      client.destroySoon();
    } else {
      client.end();
      const linger = setTimeout(() => client.destroy(), 2000);
      linger.unref();
      client.once('close', () => clearTimeout(linger));
    }
    this.releaseConcurrency?.();
    this.svc.registry.remove(this.id);
    this.svc.metrics.sessionsActive.dec({ listener: this.listener.config.name });
    if (this.infoOn) {
      this.log.info(
        {
          helo: cap(this.helo),
          authUser: cap(this.authUser),
          tls: this.tlsActive,
          messages: this.messages,
          rcptAccepted: this.rcptAccepted,
          rcptRefused: this.rcptRefused,
          bytesIn: this.bytesIn,
          bytesOut: this.bytesOut,
          durationMs: Date.now() - this.startedAt,
          outcome: this.outcome === 'closed' ? reason : this.outcome,
        },
        'session closed',
      );
    }
    this.resolveEnded();
  }
}
