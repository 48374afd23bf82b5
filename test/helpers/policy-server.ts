/**
 * A scripted Postfix policy server for tests: reads requests (name=value lines, empty line) on
 * 127.0.0.1:0, records each with the connection it came on, and answers what the test's script says:
 * an action line, raw bytes (garbage, over-long lines), silence (a slow service) or a close.
 */
import net from 'node:net';

export type PolicyRequest = Record<string, string> & { _conn: string };

export type ScriptedAnswer = string | { raw: string } | { silent: true } | { close: true };

export interface ScriptedPolicyServer {
  readonly port: number;
  readonly address: string;
  readonly requests: PolicyRequest[];
  /** Connections accepted so far. */
  connections(): number;
  /** Close every open connection from the server side (as a daemon's idle timeout would). */
  dropConnections(): void;
  script: (req: PolicyRequest) => ScriptedAnswer;
  close(): Promise<void>;
}

export async function startPolicyServer(script: (req: PolicyRequest) => ScriptedAnswer = () => 'action=DUNNO'): Promise<ScriptedPolicyServer> {
  const sockets = new Set<net.Socket>();
  let accepted = 0;
  const requests: PolicyRequest[] = [];
  const state = {} as ScriptedPolicyServer;
  const server = net.createServer((s) => {
    const conn = `c${++accepted}`;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    let buf = '';
    let lines: string[] = [];
    s.on('data', (d) => {
      buf += d.toString('utf8');
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line !== '') {
          lines.push(line);
          continue;
        }
        const req = { _conn: conn } as PolicyRequest;
        for (const l of lines) {
          const eq = l.indexOf('=');
          req[l.slice(0, eq)] = l.slice(eq + 1);
        }
        lines = [];
        requests.push(req);
        const a = state.script(req);
        if (typeof a === 'string') s.write(`${a}\n\n`);
        else if ('raw' in a) s.write(a.raw);
        else if ('close' in a) s.destroy();
        // silent: never answers
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as net.AddressInfo).port;
  Object.assign(state, {
    port,
    address: `127.0.0.1:${port}`,
    requests,
    connections: () => accepted,
    dropConnections: () => {
      for (const s of sockets) s.destroy();
    },
    script,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  });
  return state;
}
