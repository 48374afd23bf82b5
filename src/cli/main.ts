#!/usr/bin/env node
/**
 * relay-guard command line: argv → config → createGuard → start; signals. The only process.exit.
 * Exit status: 0 normal, 1 runtime failure, 2 bad configuration or usage.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ConfigError, loadConfigFile } from '../config/load-config.js';
import { OPTIONS, USAGE, parseHostPort, planFromArgs, type CliPlan } from './args.js';
import { createLogger } from '../observability/logger.js';
import { createGuard } from '../guard.js';
import { VERSION } from '../version.js';
import { startDemoBackend } from '../demo/demo-backend.js';
import { assertAdminSafe } from '../admin/admin-server.js';

async function main(argv: string[]): Promise<number> {
  if (argv[0] === 'ctl') {
    const { runCtl } = await import('./ctl.js');
    return runCtl(argv.slice(1), { stdout: (s: string) => process.stdout.write(s), stderr: (s: string) => process.stderr.write(s), env: process.env });
  }
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
  if (values['demo-backend']) {
    const { host, port } = parseHostPort(values['demo-backend'] as string, '--demo-backend');
    const demo = await startDemoBackend(host, port);
    process.stdout.write(`demo backend (an open relay sink) listening on ${host}:${demo.port}\n`);
    await new Promise<void>((resolve) => {
      process.once('SIGTERM', resolve);
      process.once('SIGINT', resolve);
    });
    await demo.close();
    return 0;
  }

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
  if (plan.demo) {
    const a = guard.address();
    process.stderr.write(
      `\nrelay-guard is guarding the embedded demo backend (an open relay) on ${a.host}:${a.port}.\n` +
        `Try it:\n` +
        `  swaks --server ${a.host}:${a.port} --from a@outside.test --to user@example.com      # accepted: example.com is ours\n` +
        `  swaks --server ${a.host}:${a.port} --from a@outside.test --to victim@elsewhere.test  # 550 5.7.1 Relaying denied\n` +
        `  telnet ${a.host} ${a.port}\n` +
        `Metrics: curl http://${config.admin.address}:${config.admin.port}/metrics\n\n`,
    );
  }
  const g = guard;
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info({ signal }, 'shutting down');
      resolve();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
    process.on('SIGHUP', () => {
      log.info({}, 'SIGHUP: reloading rules, certificates and recipient list');
      void g.reload();
    });
  });
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
