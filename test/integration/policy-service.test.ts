/**
 * The Postfix policy delegation client against real servers on loopback: a scripted policy server
 * (every action, slow, garbage, over-long, closing) and postgrey from Debian (greylisting: the first
 * attempt of a triplet is deferred, the retry after the delay passes with its X-Greylist header).
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { Registry } from 'prom-client';
import { createMetrics } from '../../src/observability/metrics.js';
import { PolicyServices } from '../../src/policy-service/policy-services.js';
import { PolicyServiceClient } from '../../src/policy-service/policy-client.js';
import type { PolicyRequestFacts } from '../../src/policy-service/policy-request.js';
import type { PolicyServiceConfig } from '../../src/policy-service/schema.js';
import { replyText } from '../../src/smtp/reply.js';
import { startPolicyServer, type ScriptedPolicyServer } from '../helpers/policy-server.js';
import { startPostgrey, type Postgrey } from '../helpers/postgrey.js';

const facts = (over: Partial<PolicyRequestFacts> = {}): PolicyRequestFacts => ({
  protocolState: 'RCPT',
  protocolName: 'ESMTP',
  heloName: 'client.test',
  sender: 'alice@sender.test',
  recipient: 'bob@example.com',
  recipientCount: 0,
  clientAddress: '127.0.0.9',
  clientPort: 40000,
  instance: 's1.1',
  ...over,
});

let server: ScriptedPolicyServer;
const opened: PolicyServices[] = [];

function services(configs: Array<Partial<PolicyServiceConfig>>) {
  const metrics = createMetrics(new Registry(), { defaultMetrics: false });
  const s = new PolicyServices(configs.map((c) => ({ address: server.address, stage: 'rcpt', timeout: '2s', onError: 'tempfail', maxConnections: 4, ...c }) as PolicyServiceConfig), { metrics });
  opened.push(s);
  return { s, metrics };
}

async function value(metrics: ReturnType<typeof createMetrics>, name: string, labels: Record<string, string>): Promise<number> {
  const got = await metrics.register.getSingleMetric(name)!.get();
  return got.values.find((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x))?.value ?? 0;
}

describe('policy services against a scripted policy server', () => {
  beforeAll(async () => {
    server = await startPolicyServer();
  });
  afterEach(() => {
    for (const s of opened.splice(0)) s.close();
  });
  afterAll(async () => server.close());

  // One row per action a policy server may answer: what the stage makes of it.
  const actions = [
    { action: 'OK', want: 'accept' },
    { action: 'DUNNO', want: 'accept' },
    { action: 'REJECT', want: '554 5.7.1 <bob@example.com>: Recipient address rejected: Access denied' },
    { action: 'REJECT you are not welcome', want: '554 5.7.1 <bob@example.com>: Recipient address rejected: you are not welcome' },
    { action: 'DEFER', want: '450 4.7.1 <bob@example.com>: Recipient address rejected: Try again later' },
    { action: 'DEFER come back later', want: '450 4.7.1 <bob@example.com>: Recipient address rejected: come back later' },
    { action: 'DEFER_IF_PERMIT greylisted', want: '450 4.7.1 <bob@example.com>: Recipient address rejected: greylisted' },
    { action: 'DEFER_IF_REJECT unsure', want: 'accept' },
    { action: '451 4.7.1 slow down', want: '451 4.7.1 <bob@example.com>: Recipient address rejected: slow down' },
    { action: '550 5.7.1 spf fail', want: '550 5.7.1 <bob@example.com>: Recipient address rejected: spf fail' },
    { action: 'PREPEND X-Policy: checked', want: 'accept', prepend: ['X-Policy: checked'] },
    { action: 'FROBNICATE', want: 'accept' },
  ];
  test.each(actions)('action=$action', async ({ action, want, prepend }) => {
    server.script = () => `action=${action}`;
    const { s } = services([{ name: 'scripted' }]);
    const v = await s.evaluate('rcpt', facts(), 'bob@example.com');
    if (want === 'accept') {
      expect(v.action).toBe('accept');
      if (v.action === 'accept') expect(v.prepend).toEqual(prepend ?? []);
    } else expect(v.action !== 'accept' && replyText(v.reply)).toBe(want);
  });

  test('the request carries the attributes Postfix sends', async () => {
    server.script = () => 'action=DUNNO';
    const { s } = services([{ name: 'scripted', context: 'mx-in' }]);
    const before = server.requests.length;
    await s.evaluate('rcpt', facts({ saslUsername: 'carol', size: 2048, serverAddress: '127.0.0.1', serverPort: 25 }), 'bob@example.com');
    const req = server.requests[before]!;
    expect(req).toMatchObject({
      request: 'smtpd_access_policy',
      protocol_state: 'RCPT',
      protocol_name: 'ESMTP',
      helo_name: 'client.test',
      queue_id: '',
      sender: 'alice@sender.test',
      recipient: 'bob@example.com',
      recipient_count: '0',
      client_address: '127.0.0.9',
      client_name: 'unknown',
      reverse_client_name: 'unknown',
      instance: 's1.1',
      sasl_username: 'carol',
      size: '2048',
      client_port: '40000',
      policy_context: 'mx-in',
      server_address: '127.0.0.1',
      server_port: '25',
    });
  });

  test('the connection is reused: many requests in turn, one connection', async () => {
    server.script = () => 'action=DUNNO';
    const { s } = services([{ name: 'scripted' }]);
    const conns = server.connections();
    for (let i = 0; i < 20; i++) await s.evaluate('rcpt', facts({ instance: `s1.${i}` }), 'bob@example.com');
    expect(server.connections() - conns).toBe(1);
  });

  test('concurrent requests use at most maxConnections connections', async () => {
    server.script = () => 'action=DUNNO';
    const { s } = services([{ name: 'scripted', maxConnections: 2 }]);
    const conns = server.connections();
    const all = await Promise.all(Array.from({ length: 30 }, (_, i) => s.evaluate('rcpt', facts({ instance: `c.${i}` }), 'bob@example.com')));
    expect(all.every((v) => v.action === 'accept')).toBe(true);
    expect(server.connections() - conns).toBeLessThanOrEqual(2);
  });

  test('a slow server hits the timeout: onError tempfail answers 451 4.3.5, onError dunno goes on; counted', async () => {
    server.script = (req) => (req.recipient === 'slow@example.com' ? { silent: true } : 'action=DUNNO');
    const { s, metrics } = services([{ name: 'slowone', timeout: '200ms', onError: 'tempfail' }]);
    const started = Date.now();
    const v = await s.evaluate('rcpt', facts({ recipient: 'slow@example.com' }), 'slow@example.com');
    expect(Date.now() - started).toBeLessThan(1500);
    expect(v.action !== 'accept' && replyText(v.reply)).toBe('451 4.3.5 Server configuration problem');
    expect(await value(metrics, 'relay_guard_policy_service_errors_total', { service: 'slowone', kind: 'timeout' })).toBe(1);
    // The timed-out connection is not reused: the next request opens a new one and is answered.
    const conns = server.connections();
    expect((await s.evaluate('rcpt', facts(), 'bob@example.com')).action).toBe('accept');
    expect(server.connections() - conns).toBe(1);

    const lenient = services([{ name: 'lenient', timeout: '200ms', onError: 'dunno' }]);
    expect((await lenient.s.evaluate('rcpt', facts({ recipient: 'slow@example.com' }), 'slow@example.com')).action).toBe('accept');
  });

  test('a garbage answer is DUNNO (and counted as unknown)', async () => {
    server.script = () => ({ raw: 'hello there, I am not a policy server\n\n' });
    const { s, metrics } = services([{ name: 'garbage' }]);
    expect((await s.evaluate('rcpt', facts(), 'bob@example.com')).action).toBe('accept');
    expect(await value(metrics, 'relay_guard_policy_service_answers_total', { service: 'garbage', action: 'unknown' })).toBe(1);
  });

  test('an answer over the size limit breaks the connection: onError', async () => {
    server.script = () => ({ raw: `action=${'A'.repeat(10_000)}\n\n` });
    const { s, metrics } = services([{ name: 'huge', onError: 'tempfail' }]);
    const v = await s.evaluate('rcpt', facts(), 'bob@example.com');
    expect(v.action).toBe('defer');
    expect(await value(metrics, 'relay_guard_policy_service_errors_total', { service: 'huge', kind: 'protocol' })).toBe(1);
  });

  test('a server that closes idle connections: the next request reconnects and is answered', async () => {
    server.script = () => 'action=OK';
    const { s } = services([{ name: 'scripted' }]);
    expect((await s.evaluate('rcpt', facts(), 'bob@example.com')).action).toBe('accept');
    const conns = server.connections();
    server.dropConnections();
    expect((await s.evaluate('rcpt', facts(), 'bob@example.com')).action).toBe('accept');
    expect(server.connections() - conns).toBe(1);
  });

  test('a service that is not listening: connect failure, onError', async () => {
    const { s, metrics } = services([{ name: 'down', address: '127.0.0.1:1', onError: 'tempfail' }]);
    expect((await s.evaluate('rcpt', facts(), 'bob@example.com')).action).toBe('defer');
    expect(await value(metrics, 'relay_guard_policy_service_errors_total', { service: 'down', kind: 'connect' })).toBe(1);
  });

  test('a server that closes without answering: onError', async () => {
    server.script = () => ({ close: true });
    const { s } = services([{ name: 'closer', onError: 'tempfail' }]);
    expect((await s.evaluate('rcpt', facts(), 'bob@example.com')).action).toBe('defer');
  });

  test('services in order: the first that decides ends the stage; later ones are not asked', async () => {
    const second = await startPolicyServer(() => 'action=REJECT from the second');
    try {
      server.script = () => 'action=OK';
      const { s } = services([{ name: 'first' }, { name: 'second', address: second.address }]);
      expect((await s.evaluate('rcpt', facts(), 'bob@example.com')).action).toBe('accept');
      expect(second.requests).toHaveLength(0);
      server.script = () => 'action=DEFER_IF_REJECT think again';
      const v = await s.evaluate('rcpt', facts(), 'bob@example.com');
      expect(v.action !== 'accept' && replyText(v.reply)).toBe('450 4.7.1 <bob@example.com>: Recipient address rejected: think again');
      expect(second.requests).toHaveLength(1);
    } finally {
      await second.close();
    }
  });

  test('a client closed mid-request answers at once', async () => {
    server.script = () => ({ silent: true });
    const c = new PolicyServiceClient({ name: 'x', host: '127.0.0.1', port: server.port, timeoutMs: 5000, onError: 'dunno' });
    const p = c.ask(facts());
    c.close();
    expect(await p).toMatchObject({ answered: false });
  });
});

describe('policy services against postgrey (Debian)', () => {
  let grey: Postgrey;
  beforeAll(async () => {
    grey = await startPostgrey({ delaySeconds: 2 });
  }, 30_000);
  afterAll(async () => grey?.stop());

  test('a new triplet is greylisted (DEFER_IF_PERMIT → 450); the retry after the delay passes with X-Greylist', async () => {
    const s = new PolicyServices([{ name: 'postgrey', address: grey.address, stage: 'rcpt', timeout: '5s', onError: 'tempfail', maxConnections: 2, trusted: 'skip' }]);
    try {
      const f = facts({ sender: 'first@grey.test', recipient: 'bob@example.com', instance: 'g.1' });
      const first = await s.evaluate('rcpt', f, 'bob@example.com');
      expect(first.action).toBe('defer');
      expect(first.action !== 'accept' && first.reply.code).toBe(450);
      expect(first.answers[0]).toMatchObject({ answered: true, action: { kind: 'defer_if_permit' } });
      // Too early: still greylisted.
      expect((await s.evaluate('rcpt', { ...f, instance: 'g.2' }, 'bob@example.com')).action).toBe('defer');
      // After the delay (postgrey counts whole seconds: wait for the clock to pass it).
      await new Promise((r) => setTimeout(r, 3100));
      const retry = await s.evaluate('rcpt', { ...f, instance: 'g.3' }, 'bob@example.com');
      expect(retry.action).toBe('accept');
      if (retry.action === 'accept') expect(retry.prepend.join('\n')).toMatch(/^X-Greylist: delayed [0-9]+ seconds by postgrey/);
    } finally {
      s.close();
    }
  }, 20_000);
});
