/**
 * One address cannot take every backend slot (issue 16 item 4), in both backend modes, with the
 * default backend settings (backend.maxConnections 20, maxPerAddress 5, maxPerPrefix 10,
 * stressTimeout 10s) and limits off (the worst case: rate limits cannot help):
 * 25 idle sessions from 127.0.0.2, then 127.0.0.3 still gets a session and its mail through.
 * Per-client mode: the cap is reached, 127.0.0.2 is over its share, so its later connections are
 * refused and one of its idle sessions is shed (421 4.4.2) for 127.0.0.3. Pooled mode: idle
 * sessions hold no backend session at all.
 */
import { afterEach, describe, expect, test } from 'vitest';
import { Dialog } from '../helpers/dialog.js';
import { MODES, withMode } from '../helpers/modes.js';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';

const HOG = '127.0.0.2';
const OTHER = '127.0.0.3';

for (const { mode, config: modeConfig } of MODES) {
  describe(`backend slots are shared fairly (${mode} mode)`, () => {
    let backend: RecordingBackend | undefined;
    let g: StartedGuard | undefined;
    const dialogs: Dialog[] = [];
    afterEach(async () => {
      for (const d of dialogs.splice(0)) d.socket.destroy();
      await g?.stop();
      await backend?.close();
      g = undefined;
      backend = undefined;
    });

    test('25 idle sessions from one address: a second address still gets a session and its mail through', async () => {
      backend = await startRecordingBackend();
      g = await startGuard({ backendPort: backend.port, config: withMode(modeConfig, {}) });
      expect(g.guard.services.config.backend.maxConnections).toBe(20);
      const greetings: number[] = [];
      const idle: Dialog[] = [];
      for (let i = 0; i < 25; i++) {
        const d = await Dialog.connect(g.port, { localAddress: HOG });
        dialogs.push(d);
        const r = await d.reply();
        greetings.push(r.code);
        if (r.code === 220) {
          expect((await d.cmd('EHLO hog.test')).code).toBe(250);
          idle.push(d);
        } else {
          expect(r.text).toContain('4.7.0');
        }
      }
      if (mode === 'per-client') {
        // 20 slots, all taken by the hog; its later connections are over its share.
        expect(greetings.filter((c) => c === 220)).toHaveLength(20);
        expect(greetings.filter((c) => c === 421)).toHaveLength(5);
      } else {
        expect(greetings.every((c) => c === 220)).toBe(true);
      }

      const d = await Dialog.connect(g.port, { localAddress: OTHER });
      dialogs.push(d);
      expect((await d.reply()).code).toBe(220);
      expect((await d.cmd('EHLO other.test')).code).toBe(250);
      expect((await d.cmd('MAIL FROM:<a@outside.test>')).code).toBe(250);
      expect((await d.cmd('RCPT TO:<user@example.com>')).code).toBe(250);
      expect((await d.cmd('DATA')).code).toBe(354);
      expect((await d.cmd('Subject: fair\r\n\r\nslot for everyone\r\n.')).code).toBe(250);
      expect((await d.cmd('QUIT')).code).toBe(221);
      expect(backend.messages.at(-1)?.rcptTo).toEqual(['user@example.com']);

      if (mode === 'per-client') {
        // Exactly one of the hog's idle sessions gave its slot up, with 421 4.4.2.
        const shed = await Promise.any(idle.map((x) => x.reply(5000)));
        expect(shed.code).toBe(421);
        expect(shed.text).toContain('4.4.2');
        expect(g.logs.filter((l) => l['msg'] === 'backend slot shed for another client')).toHaveLength(1);
        expect(g.logs.filter((l) => l['msg'] === 'backend slot refused: client share reached')).toHaveLength(5);
      }
    });

    test('under stress, an idle session keeps its slot only backend.stressTimeout', async () => {
      if (mode === 'pooled') return; // pooled mode: idle sessions hold no backend session (pool stressTimeout covers mid-transaction holders)
      backend = await startRecordingBackend();
      g = await startGuard({ backendPort: backend.port, config: withMode(modeConfig, { backend: { maxConnections: 2, stressTimeout: '300ms' } }) });
      const a = await Dialog.connect(g.port, { localAddress: HOG });
      const b = await Dialog.connect(g.port, { localAddress: OTHER });
      dialogs.push(a, b);
      expect((await a.reply()).code).toBe(220);
      expect((await b.reply()).code).toBe(220);
      // Both slots taken (stress): an idle session is closed after stressTimeout, not timeouts.command
      // (5m); then the stress is over and the other keeps its slot.
      const r = await Promise.any([a, b].map((x) => x.reply(10_000)));
      expect(r.code).toBe(421);
      expect(r.text).toContain('4.4.2');
      expect(g.logs.filter((l) => l['msg'] === 'backend slots under stress: idle client gives its slot up')).toHaveLength(1);
      // The slots are free again: a new client is served.
      const c = await Dialog.connect(g.port, { localAddress: HOG });
      dialogs.push(c);
      expect((await c.reply()).code).toBe(220);
    });
  });
}
