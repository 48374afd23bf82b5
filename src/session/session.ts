/**
 * SmtpSession: one client connection — admission, the command loop, and the end. Its parts, one
 * file each: EnvelopeRelay (HELO/EHLO, MAIL, RCPT), DataRelay (DATA), AuthRelay (AUTH), StartTls,
 * SessionLimits, SessionTimers, SessionSummary, SessionReplies (the one way out: order, counts,
 * error limits) and SessionRefusals (one log line and one count per refusal). The backend is a
 * seat (src/backend/seat.ts): the session never asks which kind. Verb handlers (command-handlers.ts
 * and the parts) return an Outcome (outcome.ts) and run() below is the one place that applies it.
 * Flow (README "Protocol hardening" says what each step guarantees):
 *   admission (bans, limits) → seat.open (the backend's greeting, or the guard's) → command loop
 *   (PIPELINING order kept by ReplySequencer; DATA, AUTH, STARTTLS are barriers) →
 *   DATA streamed through EndOfDataScanner → backend verdict relayed → close.
 */
import type net from 'node:net';
import type { Logger } from 'pino';
import { CommandLineReader } from '../smtp/line-reader.js';
import { reply, type Reply } from '../smtp/reply.js';
import * as R from '../smtp/replies.js';
import type { SessionContext } from '../policy/context.js';
import { isTrusted } from '../policy/relay.js';
import type { RulesSnapshot } from '../policy/compile.js';
import type { BackendFailure } from '../backend/backend-link.js';
import type { BackendSeat } from '../backend/seat.js';
import { Transaction } from './transaction.js';
import type { SessionInfo } from './session-registry.js';
import type { GuardServices, ListenerRuntime } from './services.js';
import type { Outcome } from './outcome.js';
import { AuthRelay, AUTH_LINE_BYTES } from './auth-relay.js';
import { DataRelay } from './data-relay.js';
import { EnvelopeRelay } from './envelope-relay.js';
import { StartTls } from './starttls.js';
import { SessionLimits } from './session-limits.js';
import { SessionTimers } from './session-timers.js';
import { SessionSummary, newSessionId } from './session-summary.js';
import { SessionReplies } from './session-replies.js';
import { SessionRefusals } from './session-refusals.js';
import { PolicyServiceStage } from './policy-service-stage.js';
import { admit } from './admission.js';
import { commandOutcome } from './command-handlers.js';
import { ClientReads, readInto } from '../net/client-reads.js';

export type Phase = 'admission' | 'connecting' | 'command' | 'data' | 'discard' | 'auth' | 'closing' | 'closed';

/**
 * Members without `private` are the session's own parts' (the files named above), not an API:
 * only the listeners and the composition root hold a session, and they use start, info, terminate,
 * drain and ended.
 */
export class SmtpSession {
  readonly id = newSessionId();
  readonly ended: Promise<void>;
  private resolveEnded!: () => void;
  phase: Phase = 'admission';
  client: net.Socket;
  /** This client's place at the backend (the session never asks which kind). */
  readonly seat: BackendSeat;
  readonly reader: CommandLineReader;
  readonly replies = new SessionReplies(this);
  readonly refusals = new SessionRefusals(this);
  readonly tx = new Transaction();
  readonly timers = new SessionTimers(this);
  readonly summary = new SessionSummary(this);
  readonly limits = new SessionLimits(this);
  readonly auth = new AuthRelay(this);
  readonly startTls = new StartTls(this);
  readonly policy = new PolicyServiceStage(this);
  readonly envelope: EnvelopeRelay;
  readonly data = new DataRelay(this);
  /** context() without mailFrom, kept while the facts it holds stay the same (baseContext). */
  private contextKept: SessionContext | undefined;
  /** The session's child logger, made on first use (pino child() serialises its bindings). */
  private logger: Logger | undefined;

  // Session facts (policy context).
  readonly clientIp: string;
  readonly clientPort: number;
  helo: string | undefined;
  ehlo = false;
  authUser: string | undefined;
  tlsActive: boolean;
  private greeted = false;

  // Flow control.
  /** A barrier (DATA, AUTH, STARTTLS, QUIT, an error delay) holds the loop. */
  private blocked = false;
  /** Outcomes still settling (run): the loop reads nothing until they have. */
  private waiting = 0;
  private draining = false;
  private releaseConcurrency: (() => void) | undefined;
  private clientEnded = false;
  /** The client socket reads into the guard's buffers (src/net/client-reads.ts), not through 'data'. */
  private reads: ClientReads | undefined;
  /** takeOverReads() ran (once per session). */
  private readsTried = false;
  private readonly onData = (chunk: Buffer): void => this.onClientData(chunk);

  constructor(
    socket: net.Socket,
    readonly listener: ListenerRuntime,
    readonly svc: GuardServices,
    opts: { clientIp: string; clientPort: number; tls: boolean },
  ) {
    this.client = socket;
    this.clientIp = opts.clientIp;
    this.clientPort = opts.clientPort;
    this.tlsActive = opts.tls;
    this.ended = new Promise((r) => (this.resolveEnded = r));
    this.reader = new CommandLineReader({ maxLineBytes: svc.config.smtp.maxLineBytes });
    this.envelope = new EnvelopeRelay(this);
    this.seat = svc.seats.create(
      {
        clientIp: this.clientIp,
        clientPort: this.clientPort,
        local: () => ({
          ...(socket.localAddress !== undefined ? { localIp: socket.localAddress } : {}),
          ...(socket.localPort !== undefined ? { localPort: socket.localPort } : {}),
        }),
        helo: () => this.helo,
        esmtp: () => this.ehlo,
        authUser: () => this.authUser,
        idleMs: () => (this.phase === 'command' && this.isIdle() ? Date.now() - this.timers.idleSince : undefined),
        shed: () => this.shed(),
      },
      { lost: (failure) => this.onBackendClosed(failure), log: () => this.log },
    );
    this.attachClient(socket);
  }

  get log(): Logger {
    return (this.logger ??= this.svc.log.child({ sessionId: this.id, clientIp: this.clientIp, listener: this.listener.config.name }));
  }

  /** Info lines on the per-message path are built only when info is logged. */
  get infoOn(): boolean {
    return this.svc.log.isLevelEnabled('info');
  }

  // ───────────────────────────── lifecycle ─────────────────────────────

  /** Admission (admission.ts), then the backend seat and the greeting. */
  async start(): Promise<void> {
    const { svc } = this;
    svc.registry.add(this);
    svc.metrics.sessionsActive.inc({ listener: this.listener.config.name });
    this.timers.armSession();
    try {
      const admission = await admit(this);
      if (this.phase === 'closed') {
        admission.release?.(); // closed while being admitted: close() had no slot to free yet
        return;
      }
      // The concurrent-connections slot is held until the session ends.
      this.releaseConcurrency = admission.release;
      if (!admission.admitted) return admission.reply && this.refuseConnection(admission.reply, admission.outcome ?? 'refused');
      this.phase = 'connecting';
      const opened = await this.seat.open();
      if ((this.phase as Phase) === 'closed') return;
      if (!opened.ok) {
        if (opened.outcome === 'capacity') this.refusals.seatRefused(opened.reply);
        return this.refuseConnection(opened.reply, opened.outcome);
      }
      if (this.phase !== 'connecting') return; // early talker already refused
      if (svc.timeouts.greetingDelayMs > 0) {
        await this.timers.sleep(svc.timeouts.greetingDelayMs);
        if (this.phase !== 'connecting') return;
      }
      svc.metrics.connections.inc({ listener: this.listener.config.name, outcome: 'accepted' });
      this.phase = 'command';
      this.greeted = true;
      const greeting = opened.greeting.code === 220 ? opened.greeting : { ...opened.greeting, close: true };
      if (opened.source === 'backend') this.replies.relayed(greeting);
      else this.replies.local(greeting);
      this.timers.resetIdle();
      this.pump();
    } catch (err) {
      this.internalError(err);
    }
  }

  private refuseConnection(r: Reply, outcome: string): void {
    this.svc.metrics.connections.inc({ listener: this.listener.config.name, outcome });
    this.summary.outcome = outcome;
    this.greeted = true;
    this.replies.local({ ...r, close: true });
  }

  info(): SessionInfo {
    return this.summary.info();
  }

  /** Admin API / shutdown: close with 421 now. */
  terminate(reason: string): void {
    if (this.phase === 'closed' || this.phase === 'closing') return;
    this.summary.closeReason = reason;
    this.summary.outcome = 'terminated';
    this.replies.now(reason === 'shutdown' ? R.SHUTTING_DOWN : { ...reply(421, '4.3.2', 'Session closed by administrator'), close: true });
    if (this.tx.mailSent) this.seat.abandon();
    this.close('terminated');
  }

  /** Backend slots under stress: this idle session's slot went to a newcomer (backend-capacity.ts). */
  private shed(): void {
    if (this.phase === 'closed' || this.phase === 'closing') return;
    this.log.info({ idleMs: Date.now() - this.timers.idleSince }, 'backend slot shed for another client');
    this.summary.outcome = 'shed';
    this.replies.now(R.SHED_UNDER_STRESS);
    this.close('shed');
  }

  /** Shutdown: idle sessions get 421 4.3.2 now; a session in a transaction finishes it first. */
  drain(): void {
    this.draining = true;
    if (this.isIdle()) this.terminate('shutdown');
  }

  private isIdle(): boolean {
    return (this.phase === 'command' || this.phase === 'admission' || this.phase === 'connecting') && !this.tx.mailSent && !this.held && this.replies.seq.pending === 0;
  }

  // ───────────────────────────── client input ─────────────────────────────

  private attachClient(socket: net.Socket): void {
    socket.setNoDelay(true);
    socket.on('data', this.onData);
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
  closeIfClientDone(): void {
    if (!this.clientEnded || this.phase === 'closed' || this.phase === 'closing') return;
    if (this.phase === 'data' || this.phase === 'discard') return this.close('client_closed');
    if (this.phase !== 'command' && this.phase !== 'auth') return;
    if (this.held || this.replies.seq.pending > 0) return;
    this.close('client_closed');
  }

  /**
   * Bytes from the client. With `reads` the chunk is a view of a read buffer that the next read
   * overwrites: the command reader keeps what it is given, so it gets a copy; DataRelay copies what
   * it keeps itself.
   */
  onClientData(chunk: Buffer, reads?: ClientReads): void {
    // Destroyed by a listener that saw this chunk first (a PROXY header from a peer outside
    // proxyNetworks, listeners.ts): not one byte of it is a command.
    if (this.client.destroyed) return;
    this.summary.bytesIn += chunk.length;
    switch (this.phase) {
      case 'admission':
      case 'connecting':
        if (!this.greeted && this.svc.config.smtp.earlyTalker === 'reject') {
          this.refusals.record({ stage: 'session', ruleId: 'early-talker', kind: 'early_talker', reply: R.EARLY_TALKER, msg: 'early talker refused' });
          this.refuseConnection(R.EARLY_TALKER, 'early_talker');
          return;
        }
        this.reader.push(reads ? Buffer.from(chunk) : chunk);
        return;
      case 'command':
      case 'auth':
        this.timers.resetIdle();
        this.feedCommands(reads ? Buffer.from(chunk) : chunk);
        return;
      case 'data':
        this.timers.resetIdle();
        this.data.feed(chunk, reads);
        return;
      case 'discard':
        this.timers.resetIdle();
        this.data.discard(chunk, reads);
        return;
      default:
        return; // closing: drop
    }
  }

  /**
   * A large message is streaming (DataRelay): from the next read on, the plaintext client socket
   * reads into the guard's buffers instead of Node's (src/net/client-reads.ts). Undefined where
   * that cannot be done (TLS, another runtime) or was already tried.
   */
  takeOverReads(): ClientReads | undefined {
    if (this.reads || this.readsTried || this.tlsActive) return this.reads;
    this.readsTried = true;
    const reads = new ClientReads();
    if (!readInto(this.client, reads)) return undefined;
    this.client.off('data', this.onData);
    reads.deliver = (chunk) => this.onClientData(chunk, reads);
    this.reads = reads;
    return reads;
  }

  /** STARTTLS: the TLS socket reads from now on, through 'data' (its own buffers). */
  detachReads(): void {
    if (!this.reads) return;
    this.reads.deliver = undefined;
    this.reads.release();
    this.reads = undefined;
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
      while ((this.phase === 'command' || this.phase === 'auth') && !this.held) {
        if (this.replies.delayUntil > 0) {
          const wait = this.replies.delayUntil - Date.now();
          if (wait > 0) {
            this.block();
            this.timers.after(wait, () => this.unblock());
            break;
          }
          this.replies.delayUntil = 0;
        }
        // RFC 4954 §4: a SASL response line may be up to 12288 octets; commands keep the configured limit.
        this.reader.setMaxLineBytes(this.phase === 'auth' ? AUTH_LINE_BYTES : this.svc.config.smtp.maxLineBytes);
        const ev = this.reader.next();
        if (!ev) break;
        if (ev.kind === 'error') {
          if (this.phase === 'auth') this.auth.abortLineTooLong();
          else this.run(this.refusals.protocolError('line_too_long', R.LINE_TOO_LONG));
          continue;
        }
        if (this.phase === 'auth') this.auth.onLine(ev.line);
        else this.run(commandOutcome(this, ev.line));
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
      const overflow = { ...reply(421, '4.5.0', 'Too much pipelined input, closing connection'), close: true };
      this.refusals.record({ stage: 'session', ruleId: 'input-overflow', kind: 'line_too_long', reply: overflow, msg: 'command refused' });
      this.summary.outcome = 'input_overflow';
      this.replies.now(overflow);
      this.close('input_overflow');
      return;
    }
    if (this.held && tooMuch) this.client.pause();
    else if (this.client.isPaused() && this.phase !== 'closed') this.client.resume();
  }

  private get held(): boolean {
    return this.blocked || this.waiting > 0;
  }

  block(): void {
    this.blocked = true;
  }

  unblock(): void {
    this.blocked = false;
    if (this.draining && this.isIdle()) {
      this.terminate('shutdown');
      return;
    }
    this.pump();
  }

  // ───────────────────────────── commands → outcomes ─────────────────────────────

  /**
   * The one place an outcome happens: replies are queued in command order (and counted), refusals
   * logged and counted, commands forwarded. An outcome still settling (a 'wait') keeps the loop
   * blocked until it has settled, so commands are handled one at a time, in order.
   */
  private run(o: Outcome): void {
    const p = this.apply(o);
    if (!p) return;
    this.waiting++;
    p.then(
      () => {
        this.waiting--;
        // A barrier the outcome set (DATA after a policy service said yes) keeps holding the loop.
        if (!this.blocked) this.unblock();
      },
      (err) => this.internalError(err),
    );
  }

  /** Apply an outcome; a promise when part of it is still to come. */
  private apply(o: Outcome): Promise<void> | undefined {
    switch (o.kind) {
      case 'reply':
        this.replies.local(o.reply);
        return undefined;
      case 'refuse': {
        this.refusals.record(o.refusal);
        let p: Promise<void> | undefined;
        if (o.answer) p = this.apply(o.answer());
        else this.replies.local(SessionRefusals.reply(o.refusal));
        const after = o.after;
        if (!after) return p;
        return p ? p.then(() => this.apply(after())) : this.apply(after());
      }
      case 'forward':
        this.replies.forward(o.command, o.onReply);
        return undefined;
      case 'wait':
        return o.until.then((next) => this.apply(next));
      case 'held':
        return undefined;
    }
  }

  /** A backend session that stays this client's (AUTH, a private verb); false (451 sent) when there is none. */
  async dedicate(): Promise<boolean> {
    const link = await this.seat.dedicate(this.tx.mailSent);
    if (link) return true;
    if (this.phase !== 'closed') this.replies.local(R.BACKEND_FAILED_IN_TRANSACTION);
    return false;
  }

  // ───────────────────────────── the backend seat ─────────────────────────────

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
      this.replies.local({ ...R.BACKEND_FAILED_IN_TRANSACTION, close: true });
      return;
    }
    // Pending commands were answered by their handlers; if nothing was pending, say goodbye now.
    if (this.replies.seq.pending === 0) this.replies.local(this.tx.mailSent ? { ...R.BACKEND_FAILED_IN_TRANSACTION, close: true } : R.BACKEND_UNAVAILABLE);
  }

  // ───────────────────────────── policy facts ─────────────────────────────

  rules(): RulesSnapshot {
    return this.svc.rules.current();
  }

  context(mailFrom?: SessionContext['mailFrom']): SessionContext {
    const base = this.baseContext();
    return mailFrom === undefined ? base : { ...base, mailFrom };
  }

  /**
   * The facts as they stand, asked several times per command: kept while HELO and TLS stay as they
   * are and nobody has logged in (an AUTH's grant follows the canary, so it is worked out each time).
   */
  private baseContext(): SessionContext {
    const kept = this.contextKept;
    if (kept && this.authUser === undefined && kept.helo === this.helo && kept.tls === this.tlsActive) return kept;
    const ctx: SessionContext = {
      clientIp: this.clientIp,
      listener: this.listener.config.name,
      listenerKind: this.listener.config.kind,
      listenerRelay: this.listener.config.relay === 'allow',
      tls: this.tlsActive,
      ...(this.authUser !== undefined ? { authUser: this.authUser, authGrant: this.auth.grant()! } : {}),
      ...(this.helo !== undefined ? { helo: this.helo } : {}),
    };
    this.contextKept = this.authUser === undefined ? ctx : undefined;
    return ctx;
  }

  trusted(mailFrom?: SessionContext['mailFrom']): boolean {
    return isTrusted(this.context(mailFrom), this.rules());
  }

  // ───────────────────────────── the end ─────────────────────────────

  onTimeout(which: string): void {
    if (this.phase === 'closed' || this.phase === 'closing') return;
    this.log.info({ which, phase: this.phase }, 'timeout');
    this.summary.outcome = 'timeout';
    if (this.phase === 'data' || this.tx.mailSent) this.seat.abandon();
    this.replies.now(R.TIMEOUT);
    this.close('timeout');
  }

  internalError(err: unknown): void {
    this.svc.metrics.internalErrors.inc({ where: 'session' });
    this.log.error({ err }, 'internal error');
    this.summary.outcome = 'internal_error';
    this.seat.abandon();
    if (this.phase !== 'closed') {
      this.replies.now({ ...reply(421, '4.3.0', 'Internal error, try again later'), close: true });
      this.close('internal_error');
    }
  }

  /** Close both sides (idempotent): flush replies, end the client, release everything, log the summary. */
  close(reason: string): void {
    if (this.phase === 'closed') return;
    const wasData = this.phase === 'data' || this.phase === 'discard';
    this.phase = 'closed';
    if (!this.summary.closeReason) this.summary.closeReason = reason;
    this.timers.clear();
    // Mid-transaction the backend must not deliver: abort without end-of-data. Otherwise QUIT politely
    // (or give a lent backend session back).
    this.seat.release({ inMessage: wasData, inTransaction: this.tx.mailSent });
    const client = this.client;
    if (this.summary.outcome === 'quit') {
      // After the reply to QUIT nothing more is read (RFC 5321 §4.1.1.10): close as soon as the reply
      // is flushed, as Postfix does, rather than wait for the client's FIN (or its reset). When the
      // kernel already holds every byte, close() alone sends the FIN after them; a shutdown() first
      // would mostly fail (the client closes at once after QUIT). TLS says close_notify first.
      if (!this.tlsActive && client.writableLength === 0) client.destroy();
      else client.destroySoon();
    } else {
      client.end();
      const linger = setTimeout(() => client.destroy(), 2000);
      linger.unref();
      client.once('close', () => clearTimeout(linger));
    }
    this.releaseConcurrency?.();
    this.svc.registry.remove(this.id);
    this.svc.metrics.sessionsActive.dec({ listener: this.listener.config.name });
    this.summary.logClosed(reason);
    this.resolveEnded();
  }
}
