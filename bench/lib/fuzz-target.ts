/** The fuzz and soak target: an in-process guard (limits off) in front of the recording backend. */
import { startGuard, type StartedGuard } from '../../test/helpers/start-guard.js';
import { startRecordingBackend, type RecordingBackend } from '../../test/helpers/recording-backend.js';
import type { FuzzTarget } from './fuzz-core.js';

export interface RunningFuzzTarget extends FuzzTarget {
  guard: StartedGuard;
  backend: RecordingBackend;
  /** Handles the target may legitimately hold more at the end than at the start: a pool grown to its max (both ends of each backend connection are in this process). */
  handleAllowance: number;
  stop(): Promise<void>;
}

/** pool: the guard in pooled mode (backend.pool) with at most `pool` backend sessions. */
export async function startFuzzTarget(opts: { pool?: number } = {}): Promise<RunningFuzzTarget> {
  const rcpts: string[] = [];
  const backend = await startRecordingBackend({
    server: {
      onRcptTo(address, _session, cb) {
        rcpts.push(address.address);
        cb();
      },
    },
  });
  const guard = await startGuard({
    backendPort: backend.port,
    rules: { acceptedDomains: ['example.com'] },
    // Short timeouts keep abandoned sessions bounded; quiet logs keep the run fast.
    config: {
      log: { level: 'silent' },
      timeouts: { command: '5s', data: '5s', session: '60s', drain: '2s' },
      backend: {
        maxConnections: 1000,
        ...(opts.pool ? { pool: { enabled: true, minIdle: Math.min(2, opts.pool), max: opts.pool, acquireTimeout: '10s', healthInterval: '30s' } } : {}),
      },
    },
  });
  return {
    port: guard.port,
    guard,
    backend,
    // Pooled mode keeps up to `pool` backend sessions open after the run, and each is four handles in
    // this process: the guard's socket, and the recording backend's tap (accepted socket, its
    // connection on to smtp-server) and smtp-server's accepted socket.
    handleAllowance: opts.pool ? 4 * opts.pool : 0,
    backendRcpts: () => rcpts,
    backendBodies: () => backend.messages.map((m) => m.body),
    activeSessions: () => guard.guard.services.registry.all().length,
    stop: async () => {
      await guard.stop();
      await backend.close();
    },
  };
}
