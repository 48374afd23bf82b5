#!/usr/bin/env node
/**
 * relay-guard command line: argv → config → createGuard → start; signals. The only process.exit.
 * Exit status: 0 normal, 1 runtime failure, 2 bad configuration or usage.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { CliPlan } from './args.js';

/**
 * SIGTERM / SIGINT handlers, installed before anything else loads (the guard's modules are imported
 * below, on demand): a stop asked for while the guard is still starting is remembered, the start is
 * let finish, then the guard closes and the process exits 0 — never killed by the signal itself.
 * Not for `ctl` (a client: the default, die on the signal, is right there).
 */
let stopAsked: string | undefined;
let onStop: ((signal: string) => void) | undefined;
const stopRequested = new Promise<string>((resolve) => {
  onStop = resolve;
});
if (process.argv[2] !== 'ctl') {
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, () => {
      stopAsked ??= signal;
      onStop?.(signal);
    });
  }
}

async function main(argv: string[]): Promise<number> {
  if (argv[0] === 'ctl') {
    const { runCtl } = await import('./ctl.js');
    return runCtl(argv.slice(1), { stdout: (s: string) => process.stdout.write(s), stderr: (s: string) => process.stderr.write(s), env: process.env });
  }
  const { OPTIONS, USAGE, demoBanner, parseHostPort, planFromArgs } = await import('./args.js');
  const { ConfigError, loadConfigFile } = await import('../config/load-config.js');
  const { VERSION } = await import('../version.js');
  let values: Record<string, unknown>;
  try {
    values = parseArgs({ args: argv, options: OPTIONS, allowPositionals: false, strict: true }).values;
  } catch (err) {
    process.stderr.write(`relay-guard: ${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (values.version) {
    process.stdout.write(`${VERSION}\n`);
    return 0;
  }
  if (values['check-config']) {
    try {
      loadConfigFile(values['check-config'] as string);
      process.stdout.write(`${values['check-config'] as string}: ok\n`);
      return 0;
    } catch (err) {
      process.stderr.write(`relay-guard: ${(err as Error).message}\n`);
      return 2;
    }
  }
  const { startDemoBackend } = await import('../demo/demo-backend.js');
  if (values['demo-backend']) {
    const { host, port } = parseHostPort(values['demo-backend'] as string, '--demo-backend');
    const demo = await startDemoBackend(host, port);
    process.stdout.write(`demo backend (an open relay sink) listening on ${host}:${demo.port}\n`);
    await stopRequested;
    await demo.close();
    return 0;
  }
  const { assertAdminSafe } = await import('../admin/admin-server.js');
  const { createLogger } = await import('../observability/logger.js');
  const { createGuard } = await import('../guard.js');

  const packageRulesDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'rules');
  let plan: CliPlan;
  try {
    plan = planFromArgs(values, packageRulesDir);
    assertAdminSafe(plan.config, process.env);
  } catch (err) {
    process.stderr.write(`relay-guard: ${(err as Error).message}\n`);
    return 2;
  }
  const { config } = plan;
  const log = createLogger(config.log.level);
  const { mallocTrimThreshold, tuneHeapGrowth } = await import('./memory-tuning.js');
  const heapGrowingPercent = tuneHeapGrowth(process.execArgv);
  log.info({ heapGrowingPercent: heapGrowingPercent ?? 'chosen on the node command line', mallocTrimThreshold: mallocTrimThreshold(process.env) }, 'memory settings');
  let demoBackend: Awaited<ReturnType<typeof startDemoBackend>> | undefined;
  if (plan.demo) {
    const b = config.backends[0]!;
    demoBackend = await startDemoBackend(b.host, b.port, { log: (e) => log.info({ demo: { mailFrom: e.mailFrom, rcptTo: e.rcptTo, size: e.size } }, 'demo backend received a message') });
  }
  let guard;
  try {
    guard = await createGuard(config, { log, env: process.env, overlay: plan.extra });
    await guard.start();
  } catch (err) {
    if (err instanceof ConfigError || (err as { code?: string }).code?.startsWith('RG_ERR_')) {
      process.stderr.write(`relay-guard: ${(err as Error).message}\n`);
      log.flush?.();
      return 2;
    }
    log.fatal({ err }, 'startup failed');
    log.flush?.();
    return 1;
  }
  if (stopAsked !== undefined) log.info({ signal: stopAsked }, 'stop asked for during startup');
  if (plan.demo && stopAsked === undefined) {
    process.stderr.write(demoBanner(guard.address(), config.admin));
  }
  const g = guard;
  process.on('SIGHUP', () => {
    log.info({}, 'SIGHUP: reloading rules, certificates and recipient list');
    void g.reload();
  });
  log.info({ signal: await stopRequested }, 'shutting down');
  await g.close();
  await demoBackend?.close();
  log.info({}, 'stopped');
  log.flush?.();
  return 0;
}

process.on('uncaughtException', (err) => {
  process.stderr.write(`relay-guard: uncaught exception: ${err.stack ?? String(err)}\n`);
  process.exit(1);
});

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
    if (code !== 0) setTimeout(() => process.exit(code), 100).unref();
  },
  (err) => {
    process.stderr.write(`relay-guard: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
