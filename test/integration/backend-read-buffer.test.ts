/**
 * Every plaintext backend socket reads into one shared buffer (backend-link.ts, Node's onread): a
 * reply that arrives in pieces must survive other backend sessions' reads in between. Here one
 * client's MAIL reply stops in the middle of a line; a second client then runs a whole dialogue,
 * whose backend replies pass through the same buffer; only then does the first reply end. The
 * first client must get the backend's reply byte for byte, in both backend modes.
 */
import net from 'node:net';
import { afterEach, describe, expect, test } from 'vitest';
import { MODES } from '../helpers/modes.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';
import { until } from '../helpers/with-timeout.js';
import { startScriptedBackend, type ScriptedBackend } from '../helpers/scripted-backend.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function dialog(port: number): Promise<Dialog> {
  const d = await Dialog.connect(port);
  cleanups.push(() => d.close());
  expect((await d.reply()).code).toBe(220);
  expect((await d.cmd('EHLO client.test')).code).toBe(250);
  return d;
}

describe.each(MODES)('a backend reply split across reads, other sessions read in between ($mode)', ({ config }) => {
  test('the client gets the reply as the backend wrote it', async () => {
    let held: net.Socket | undefined;
    const backend: ScriptedBackend = await startScriptedBackend({
      onLine: (line, socket) => {
        if (line !== 'MAIL FROM:<first@elsewhere.test>') return undefined;
        held = socket;
        // Half a line, then nothing until the test says so: the guard keeps it while other reads come.
        socket.write('250-2.1.0 the first line of a reply that arrives in two pie');
        return null;
      },
    });
    cleanups.push(() => backend.close());
    const g: StartedGuard = await startGuard({ backendPort: backend.port, config });
    cleanups.push(() => g.stop());

    const first = await dialog(g.port);
    first.socket.write('MAIL FROM:<first@elsewhere.test>\r\n');
    await until(() => held !== undefined, 5000, 'the first MAIL at the backend');

    // A whole second dialogue: its greeting, EHLO, MAIL, RCPT and DATA replies are read meanwhile.
    const second = await dialog(g.port);
    expect((await second.cmd('MAIL FROM:<second@elsewhere.test>')).text).toBe('250 2.0.0 ok');
    expect((await second.cmd('RCPT TO:<someone@example.com>')).code).toBe(250);
    expect((await second.cmd('DATA')).code).toBe(354);
    expect((await second.cmd('Subject: x\r\n\r\nbody\r\n.')).text).toBe('250 2.0.0 queued');

    held!.write('ces\r\n250 2.1.0 Sender ok\r\n');
    const r = await first.reply();
    expect(r.code).toBe(250);
    expect(r.lines).toEqual(['2.1.0 the first line of a reply that arrives in two pieces', '2.1.0 Sender ok']);
    expect((await first.cmd('RCPT TO:<someone@example.com>')).code).toBe(250);
  });
});
