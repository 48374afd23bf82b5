/**
 * ReplySequencer: replies leave in the order the client sent the commands (RFC 2920 §3.1),
 * whether the guard answers a command itself or the backend does. Ready replies at the head of
 * the queue are written together in one write.
 */
import { formatReply, type Reply } from '../smtp/reply.js';

export interface ReplySlot {
  /** Fill the slot with the reply to send (once; later calls are ignored). */
  resolve(reply: Reply): void;
}

interface Slot {
  reply?: Reply;
}

export class ReplySequencer {
  private readonly queue: Slot[] = [];
  private head = 0;
  private waiters: Array<() => void> = [];

  constructor(private readonly write: (wire: Buffer, replies: readonly Reply[]) => void) {}

  /** A reply the guard makes itself, in command order. */
  local(reply: Reply): void {
    this.queue.push({ reply });
    this.flush();
  }

  /** A place for a reply that comes later (from the backend). */
  later(): ReplySlot {
    const slot: Slot = {};
    this.queue.push(slot);
    return {
      resolve: (reply: Reply) => {
        if (slot.reply) return;
        slot.reply = reply;
        this.flush();
      },
    };
  }

  /** Number of replies not yet written. */
  get pending(): number {
    return this.queue.length - this.head;
  }

  /** Resolves when every reply queued so far has been written. */
  whenIdle(fn: () => void): void {
    if (this.pending === 0) fn();
    else this.waiters.push(fn);
  }

  private flush(): void {
    const ready: Reply[] = [];
    while (this.head < this.queue.length) {
      const r = this.queue[this.head]!.reply;
      if (!r) break;
      ready.push(r);
      this.head++;
      if (r.close) break; // nothing is written after a closing reply
    }
    if (this.head === this.queue.length) {
      this.queue.length = 0;
      this.head = 0;
    }
    if (ready.length > 0) {
      const wire = ready.length === 1 ? formatReply(ready[0]!) : Buffer.concat(ready.map(formatReply));
      this.write(wire, ready);
    }
    if (this.pending === 0 && this.waiters.length > 0) {
      const w = this.waiters;
      this.waiters = [];
      for (const fn of w) fn();
    }
  }
}
