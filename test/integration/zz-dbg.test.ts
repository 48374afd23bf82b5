import net from 'node:net';
import { test, expect } from 'vitest';
import { startGuard } from '/work/main/test/helpers/start-guard.js';
import { startScriptedBackend } from '/work/main/test/helpers/scripted-backend.js';
import { Dialog } from '/work/main/test/helpers/dialog.js';
test('dbg', async () => {
  const backend = await startScriptedBackend();
  const g = await startGuard({ backendPort: backend.port, config: {} });
  const d = await Dialog.connect(g.port);
  console.log('greet', (await d.reply()).code);
  const reg = (g.guard as any).services?.registry;
  const sessions = reg ? [...(reg.list?.() ?? [])] : [];
  console.log('sessions', sessions.length);
  console.log('quit', (await d.cmd('QUIT')).code);
  const closed = await Promise.race([new Promise((r) => d.socket.once('close', () => r('closed'))), new Promise((r) => setTimeout(() => r('timeout'), 2000))]);
  console.log('client', closed, (g.guard.listeners[0]!.server as any)._connections);
  await g.stop(); await backend.close();
});
