/**
 * DNS lists and Postfix policy services through a real guard, in both backend modes (per-client and
 * pooled): a listed client is refused at connect without its backend being touched; postgrey
 * greylists (450) and accepts the retry after its delay, which reaches the backend with its
 * X-Greylist header on top; a scripted policy server's PREPEND arrives at the backend; a policy OK
 * never lets a stranger relay; `instance` is stable within a message; /api/v1/check shows both.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Registry } from 'prom-client';
import { startRecordingBackend, type RecordingBackend } from '../helpers/recording-backend.js';
import { guardHousekeeping, MODES, since, withMode } from '../helpers/modes.js';
import { startGuard, type StartedGuard } from '../helpers/start-guard.js';
import { Dialog } from '../helpers/dialog.js';
import { TlsDialog } from '../helpers/tls-dialog.js';
import { dropProxy, startRbldnsd, type Rbldnsd } from '../helpers/rbldnsd.js';
import { startPolicyServer, type ScriptedPolicyServer } from '../helpers/policy-server.js';
import { startPostgrey, type Postgrey } from '../helpers/postgrey.js';
import { dryRunCheck } from '../../src/admin/dry-run-check.js';
import { DnsblScorer } from '../../src/dnsbl/dnsbl-scorer.js';
import { PolicyServices } from '../../src/policy-service/policy-services.js';
import { createMetrics } from '../../src/observability/metrics.js';
import { compileRules } from '../../src/policy/compile.js';
import { DEFAULT_CONFIG } from '../../src/config/schema.js';

const LISTED = '127.0.0.9';
const CLEAN = '127.0.0.10';
const TRUSTED = '127.0.0.2';

let dns: Rbldnsd;
let grey: Postgrey;
let policy: ScriptedPolicyServer;

beforeAll(async () => {
  dns = await startRbldnsd([
    { zone: 'bl.test', entries: [LISTED, TRUSTED] },
    { zone: 'wl.test', entries: ['127.0.0.11'] },
    { zone: 'slow.test', entries: [LISTED] },
  ]);
  grey = await startPostgrey({ delaySeconds: 2 });
  policy = await startPolicyServer();
}, 30_000);
afterAll(async () => {
  await policy?.close();
  await grey?.stop();
  await dns?.stop();
});

async function metricValue(g: StartedGuard, name: string, labels: Record<string, string>): Promise<number> {
  const got = await g.guard.metrics.register.getSingleMetric(name)!.get();
  return got.values.find((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x))?.value ?? 0;
}

async function greet(port: number, localAddress: string): Promise<Dialog> {
  const d = await Dialog.connect(port, { localAddress });
  const hello = await d.reply();
  expect(hello.code).toBe(220);
  expect((await d.cmd('EHLO client.test')).code).toBe(250);
  return d;
}

describe.each(MODES)('DNS lists and policy services through the guard ($mode)', ({ config: modeConfig }) => {
  let backend: RecordingBackend;
  let g: StartedGuard;

  beforeAll(async () => {
    backend = await startRecordingBackend();
    g = await startGuard({
      backendPort: backend.port,
      rules: { relayNetworks: [`${TRUSTED}/32`] },
      config: withMode(modeConfig, {
        dns: { servers: [dns.server], timeout: '2s' },
        dnsbl: { threshold: 1, lists: [{ zone: 'bl.test', weight: 1 }, { zone: 'wl.test', weight: -5 }] },
        policyServices: [
          { name: 'scripted', address: policy.address, stage: 'rcpt', timeout: '2s', onError: 'tempfail' },
          { name: 'postgrey', address: grey.address, stage: 'rcpt', timeout: '5s', onError: 'tempfail' },
          { name: 'content', address: policy.address, stage: 'data', timeout: '2s', onError: 'dunno' },
        ],
      }),
    });
  }, 30_000);
  afterAll(async () => {
    await g?.stop();
    await backend?.close();
  });

  test('a listed client is refused at connect with 554 5.7.1, and the backend never sees it', async () => {
    const conns = backend.connections.length;
    const seen = since(backend);
    const d = await Dialog.connect(g.port, { localAddress: LISTED });
    const r = await d.reply();
    expect(r.code).toBe(554);
    expect(r.text).toBe('554 5.7.1 Service unavailable; client [127.0.0.9] blocked using bl.test');
    await d.waitClosed();
    // Per-client: no backend connection was opened; pooled: no pooled session carried anything of it.
    if (!('pool' in ((modeConfig.backend as object | undefined) ?? {}))) expect(backend.connections.length).toBe(conns);
    expect(seen().filter((l) => !guardHousekeeping(l))).toEqual([]);
    const line = g.logs.find((l) => l.msg === 'client refused' && l.clientIp === LISTED);
    expect(line).toMatchObject({ ruleId: 'dnsbl', score: 1, threshold: 1, lists: ['bl.test(+1)'] });
    expect(await metricValue(g, 'relay_guard_connections_total', { listener: 'mx', outcome: 'dnsbl' })).toBeGreaterThanOrEqual(1);
    expect(await metricValue(g, 'relay_guard_dnsbl_answers_total', { list: 'bl.test', result: 'listed' })).toBeGreaterThanOrEqual(1);
  });

  test('a trusted network is not scored: listed, yet greeted', async () => {
    const d = await Dialog.connect(g.port, { localAddress: TRUSTED });
    expect((await d.reply()).code).toBe(220);
    d.socket.destroy();
  });

  test('an allow list outweighs a block list: greeted', async () => {
    const d = await Dialog.connect(g.port, { localAddress: '127.0.0.11' });
    expect((await d.reply()).code).toBe(220);
    d.socket.destroy();
  });

  test('postgrey: the first attempt gets 450, the retry after the delay is accepted and reaches the backend with X-Greylist on top', async () => {
    policy.script = () => 'action=DUNNO';
    const sender = `grey-${Math.random().toString(36).slice(2)}@sender.test`;
    const d = await greet(g.port, CLEAN);
    expect((await d.cmd(`MAIL FROM:<${sender}>`)).code).toBe(250);
    const first = await d.cmd('RCPT TO:<alice@example.com>');
    expect(first.code).toBe(450);
    expect(first.text).toMatch(/^450 4\.[0-9]\.[0-9] <alice@example\.com>: Recipient address rejected: Greylisted/);
    expect(g.logs.find((l) => l.msg === 'rcpt refused' && l.ruleId === 'policy-service:postgrey')).toBeDefined();
    expect((await d.cmd('RSET')).code).toBe(250);
    // The sender retries after postgrey's delay (whole seconds: wait until it has surely passed).
    await new Promise((r) => setTimeout(r, 3100));
    const before = backend.messages.length;
    const subject = `greylisted ${sender}`;
    await d.sendMessage('alice@example.com', subject, sender);
    await backend.waitForMessages(before + 1);
    const body = backend.messages.find((m) => m.body.toString().includes(subject))!.body.toString('latin1');
    expect(body.startsWith('X-Greylist: delayed ')).toBe(true);
    expect(body.indexOf('X-Greylist:')).toBeLessThan(body.indexOf(`Subject: ${subject}`));
    await d.cmd('QUIT');
  }, 20_000);

  test('PREPEND from a scripted policy server arrives at the top of the message; instance is stable within it', async () => {
    const tag = Math.random().toString(36).slice(2);
    policy.script = (req) => (req.protocol_state === 'RCPT' ? `action=PREPEND X-Policy-Tag: ${tag}` : 'action=DUNNO');
    const sender = `tag-${tag}@sender.test`;
    const d = await greet(g.port, CLEAN);
    const reqs = policy.requests.length;
    expect((await d.cmd(`MAIL FROM:<${sender}>`)).code).toBe(250);
    expect((await d.cmd('RCPT TO:<alice@example.com>')).code).toBe(450); // postgrey: new triplet
    expect((await d.cmd('RCPT TO:<bob@example.com>')).code).toBe(450);
    const asked = policy.requests.slice(reqs);
    expect(asked.map((r) => r.recipient)).toEqual(['alice@example.com', 'bob@example.com']);
    expect(new Set(asked.map((r) => r.instance)).size).toBe(1);
    expect(asked[0]).toMatchObject({ request: 'smtpd_access_policy', protocol_state: 'RCPT', protocol_name: 'ESMTP', helo_name: 'client.test', sender, client_address: CLEAN, recipient_count: '0' });
    await d.cmd('RSET');
    // The next message is another instance.
    expect((await d.cmd(`MAIL FROM:<${sender}>`)).code).toBe(250);
    await d.cmd('RCPT TO:<alice@example.com>');
    expect(policy.requests.at(-1)!.instance).not.toBe(asked[0]!.instance);
    await d.cmd('QUIT');
  });

  test('PREPEND reaches the backend once per message, before the client\'s first byte; DATA stage is asked with recipient_count', async () => {
    const tag = Math.random().toString(36).slice(2);
    policy.script = (req) => (req.protocol_state === 'RCPT' ? `action=PREPEND X-Policy-Tag: ${tag}` : 'action=PREPEND X-Data-Stage: seen');
    // A stranger: postgrey greylists the new triplets first, and passes them after its delay.
    const sender = `pass-${tag}@sender.test`;
    const d = await greet(g.port, CLEAN);
    await d.cmd(`MAIL FROM:<${sender}>`);
    expect((await d.cmd('RCPT TO:<alice@example.com>')).code).toBe(450);
    expect((await d.cmd('RCPT TO:<bob@example.com>')).code).toBe(450);
    await d.cmd('RSET');
    await new Promise((r) => setTimeout(r, 3100));
    const before = backend.messages.length;
    const reqs = policy.requests.length;
    expect((await d.cmd(`MAIL FROM:<${sender}>`)).code).toBe(250);
    expect((await d.cmd('RCPT TO:<alice@example.com>')).code).toBe(250);
    expect((await d.cmd('RCPT TO:<bob@example.com>')).code).toBe(250);
    expect((await d.cmd('DATA')).code).toBe(354);
    expect((await d.cmd(`Subject: prepend ${tag}\r\n\r\nbody\r\n.`)).code).toBe(250);
    await backend.waitForMessages(before + 1);
    const body = backend.messages.find((m) => m.body.toString().includes(`prepend ${tag}`))!.body.toString('latin1');
    const headerBlock = body.slice(0, body.indexOf(`Subject: prepend ${tag}`));
    expect(headerBlock.match(/^X-Policy-Tag: /gm)).toHaveLength(1);
    expect(headerBlock).toContain('X-Data-Stage: seen\r\n');
    expect(headerBlock).toMatch(/^X-Greylist: /m);
    const dataReq = policy.requests.slice(reqs).find((r) => r.protocol_state === 'DATA')!;
    expect(dataReq).toMatchObject({ recipient_count: '2', recipient: '', sender });
    await d.cmd('QUIT');
  }, 20_000);

  test('a DATA-stage REJECT answers DATA; the backend gets no message', async () => {
    const tag = Math.random().toString(36).slice(2);
    policy.script = (req) => (req.protocol_state === 'DATA' ? 'action=REJECT content policy says no' : 'action=OK');
    const d = await greet(g.port, CLEAN);
    const before = backend.messages.length;
    await d.cmd(`MAIL FROM:<ok-${tag}@sender.test>`);
    // OK from the first RCPT-stage service ends the list: postgrey is not asked.
    expect((await d.cmd('RCPT TO:<alice@example.com>')).code).toBe(250);
    const r = await d.cmd('DATA');
    expect(r.text).toBe('554 5.7.1 <DATA>: Data command rejected: content policy says no');
    expect(g.logs.find((l) => l.msg === 'data refused' && l.ruleId === 'policy-service:content')).toBeDefined();
    expect((await d.cmd('RSET')).code).toBe(250);
    expect(backend.messages.length).toBe(before);
    await d.cmd('QUIT');
  });

  test('after STARTTLS the request carries encryption_protocol, encryption_cipher and encryption_keysize', async () => {
    policy.script = () => 'action=OK';
    const d = await greet(g.port, CLEAN);
    expect((await d.cmd('STARTTLS')).code).toBe(220);
    const t = await TlsDialog.upgrade(d.socket);
    expect((await t.cmd('EHLO tls.client.test')).code).toBe(250);
    const reqs = policy.requests.length;
    expect((await t.cmd('MAIL FROM:<tls@sender.test> SIZE=1234')).code).toBe(250);
    expect((await t.cmd('RCPT TO:<alice@example.com>')).code).toBe(250);
    const req = policy.requests.slice(reqs)[0]!;
    expect(req).toMatchObject({ helo_name: 'tls.client.test', protocol_name: 'ESMTP', size: '1234', client_address: CLEAN });
    expect(req.encryption_protocol).toMatch(/^TLSv1\.[23]$/);
    expect(req.encryption_cipher).not.toBe('');
    expect(['128', '256']).toContain(req.encryption_keysize);
    await t.cmd('QUIT');
  });

  test('a policy OK never lets a stranger relay: 550 5.7.1 and the services are not even asked', async () => {
    policy.script = () => 'action=OK';
    const d = await greet(g.port, CLEAN);
    const reqs = policy.requests.length;
    await d.cmd('MAIL FROM:<a@sender.test>');
    const r = await d.cmd('RCPT TO:<victim@elsewhere.test>');
    expect(r.code).toBe(550);
    expect(r.text).toContain('5.7.1');
    expect(policy.requests.length).toBe(reqs);
    await d.cmd('QUIT');
  });

  test('trusted clients are not asked (trusted: skip) and relay as before', async () => {
    policy.script = () => 'action=REJECT should not be asked';
    const d = await greet(g.port, TRUSTED);
    const reqs = policy.requests.length;
    await d.sendMessage('far@elsewhere.test', 'trusted relay', 'me@example.com');
    expect(policy.requests.length).toBe(reqs);
    await d.cmd('QUIT');
  });

  test('a slow policy service: onError tempfail answers 451 4.3.5 within the timeout', async () => {
    policy.script = (req) => (req.protocol_state === 'RCPT' ? { silent: true } : 'action=DUNNO');
    const d = await greet(g.port, CLEAN);
    await d.cmd('MAIL FROM:<slow@sender.test>');
    const r = await d.cmd('RCPT TO:<alice@example.com>', 5000);
    expect(r.text).toBe('451 4.3.5 Server configuration problem');
    expect(await metricValue(g, 'relay_guard_policy_service_errors_total', { service: 'scripted', kind: 'timeout' })).toBeGreaterThanOrEqual(1);
    await d.cmd('QUIT');
  }, 10_000);
});

describe('DNS lists through the guard: a list that times out, and the cache', () => {
  test('a list that does not answer lets the client in (fail open) and is counted; answers are cached across connections', async () => {
    const proxy = await dropProxy(dns.server, ['slow.test']);
    const backend = await startRecordingBackend();
    const g = await startGuard({
      backendPort: backend.port,
      config: { dns: { servers: [proxy.server], timeout: '300ms' }, dnsbl: { threshold: 1, lists: [{ zone: 'slow.test', weight: 5 }, { zone: 'bl.test', weight: 1 }] } },
    });
    try {
      // 127.0.0.12 is on no list; slow.test never answers: greeted after the timeout.
      const d = await Dialog.connect(g.port, { localAddress: '127.0.0.12' });
      expect((await d.reply(3000)).code).toBe(220);
      await d.cmd('QUIT');
      expect(proxy.dropped()).toContain('12.0.0.127.slow.test');
      expect(await metricValue(g, 'relay_guard_dnsbl_answers_total', { list: 'slow.test', result: 'timeout' })).toBe(1);
      expect(g.logs.some((l) => l.msg === 'dns list did not answer: scores nothing' && l.list === 'slow.test')).toBe(true);
      // A second connection from the same client: bl.test's "not listed" comes from the cache (one query
      // in rbldnsd's log), slow.test is asked again (failures are not cached).
      const d2 = await Dialog.connect(g.port, { localAddress: '127.0.0.12' });
      expect((await d2.reply(3000)).code).toBe(220);
      await d2.cmd('QUIT');
      expect(dns.queries().filter((q) => q.startsWith('12.0.0.127.bl.test'))).toHaveLength(1);
      expect(await metricValue(g, 'relay_guard_dnsbl_cache_hits_total', { list: 'bl.test' })).toBe(1);
      expect(await metricValue(g, 'relay_guard_dnsbl_answers_total', { list: 'slow.test', result: 'timeout' })).toBe(2);
    } finally {
      await g.stop();
      await backend.close();
      await proxy.stop();
    }
  });
});

describe('/api/v1/check shows the DNS lists and the policy services', () => {
  test('a listed client: reject by dnsbl at connect, with the lists in the trace', async () => {
    const metrics = createMetrics(new Registry(), { defaultMetrics: false });
    const dnsbl = new DnsblScorer({ config: { threshold: 1, cacheSize: 100, lists: [{ zone: 'bl.test', weight: 1 }] }, dns: { servers: [dns.server], timeout: '2s' }, metrics });
    const policyServices = new PolicyServices([{ name: 'scripted', address: policy.address, stage: 'rcpt', timeout: '2s', onError: 'tempfail', maxConnections: 1, trusted: 'skip' }]);
    try {
      const compiled = compileRules({ acceptedDomains: ['example.com'] } as never);
      if (!compiled.ok) throw new Error('rules');
      const deps = {
        config: { listeners: [{ name: 'mx', kind: 'mx', relay: 'deny' }], smtp: DEFAULT_CONFIG.smtp } as never,
        rules: { current: () => compiled.snapshot },
        dnsbl,
        policyServices,
      };
      const listed = await dryRunCheck({ clientIp: LISTED, mailFrom: 'a@sender.test', rcptTo: 'alice@example.com' }, deps);
      expect(listed).toMatchObject({ verdict: 'reject', ruleId: 'dnsbl', reply: '554 5.7.1 Service unavailable; client [127.0.0.9] blocked using bl.test', dnsbl: { score: 1, refused: true } });
      expect(listed.trace.map((s) => s.ruleId)).toEqual(['dnsbl', 'dnsbl']);

      // A clean client: policy services named but not asked, unless asked for.
      const reqs = policy.requests.length;
      const clean = await dryRunCheck({ clientIp: CLEAN, mailFrom: 'a@sender.test', rcptTo: 'alice@example.com' }, deps);
      expect(clean).toMatchObject({ verdict: 'accept', dnsbl: { score: 0, refused: false }, policyServices: { asked: false, services: ['scripted'] } });
      expect(policy.requests.length).toBe(reqs);
      policy.script = () => 'action=DEFER_IF_PERMIT try later';
      const asked = await dryRunCheck({ clientIp: CLEAN, mailFrom: 'a@sender.test', rcptTo: 'alice@example.com', askPolicyServices: true }, deps);
      expect(asked).toMatchObject({ verdict: 'defer', ruleId: 'policy-service:scripted', reply: '450 4.7.1 <alice@example.com>: Recipient address rejected: try later', policyServices: { asked: true } });
      expect(asked.trace.some((s) => s.ruleId === 'policy-service:scripted' && s.result === 'defer')).toBe(true);
    } finally {
      dnsbl.close();
      policyServices.close();
    }
  });
});
