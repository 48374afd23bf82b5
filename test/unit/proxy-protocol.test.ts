import { once } from 'node:events';
import net from 'node:net';
import { afterEach, describe, expect, test } from 'vitest';
import { startHaproxy } from '../helpers/haproxy.js';
import {
  formatProxyV1,
  formatProxyV2,
  parseProxyHeader,
  PROXY_V1_MAX_BYTES,
  PROXY_V2_MAX_BYTES,
  type ProxyInfo,
} from '../../src/net/proxy-protocol.js';

const SIG = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');

/** Build a v2 header: signature, ver/cmd, fam/proto, length, then `body` (addresses + TLVs). */
function v2(verCmd: number, famProto: number, body: Buffer, lengthOverride?: number): Buffer {
  const len = Buffer.alloc(2);
  len.writeUInt16BE(lengthOverride ?? body.length);
  return Buffer.concat([SIG, Buffer.from([verCmd, famProto]), len, body]);
}

function tlv(type: number, value: Buffer): Buffer {
  const h = Buffer.from([type, 0, 0]);
  h.writeUInt16BE(value.length, 1);
  return Buffer.concat([h, value]);
}

const ipv4Block = Buffer.from([192, 0, 2, 1, 198, 51, 100, 7, 0xc3, 0x50, 0x00, 0x19]); // :50000 → :25
const ipv6Block = Buffer.concat([
  Buffer.from('20010db8000000000000000000000001', 'hex'),
  Buffer.from('20010db8000100000000000000000000', 'hex'),
  Buffer.from([0x04, 0xd2, 0x02, 0x4b]), // 1234 → 587
]);

type OkCase = { name: string; input: Buffer; header: ProxyInfo; version: 1 | 2; consumed?: number };

const okCases: OkCase[] = [
  // v1 (proxy-protocol.txt §2.1)
  {
    name: 'v1 TCP4',
    input: Buffer.from('PROXY TCP4 192.0.2.1 198.51.100.7 50000 25\r\n'),
    version: 1,
    header: { command: 'proxy', family: 'tcp4', sourceAddress: '192.0.2.1', sourcePort: 50000, destAddress: '198.51.100.7', destPort: 25 },
  },
  {
    name: 'v1 TCP4 extreme values',
    input: Buffer.from('PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n'),
    version: 1,
    header: { command: 'proxy', family: 'tcp4', sourceAddress: '255.255.255.255', sourcePort: 65535, destAddress: '0.0.0.0', destPort: 0 },
  },
  {
    name: 'v1 TCP6 canonicalised (upper case, uncompressed → RFC 5952)',
    input: Buffer.from('PROXY TCP6 2001:DB8:0:0:0:0:0:1 2001:db8:1::0 1234 587\r\n'),
    version: 1,
    header: { command: 'proxy', family: 'tcp6', sourceAddress: '2001:db8::1', sourcePort: 1234, destAddress: '2001:db8:1::', destPort: 587 },
  },
  {
    name: 'v1 TCP6 IPv4-mapped and embedded dotted quad',
    input: Buffer.from('PROXY TCP6 ::FFFF:192.0.2.1 ::1 1 2\r\n'),
    version: 1,
    header: { command: 'proxy', family: 'tcp6', sourceAddress: '::ffff:192.0.2.1', sourcePort: 1, destAddress: '::1', destPort: 2 },
  },
  {
    name: 'v1 longest possible line (TCP6, 104 bytes + CRLF)',
    input: Buffer.from(
      'PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n',
    ),
    version: 1,
    header: {
      command: 'proxy', family: 'tcp6',
      sourceAddress: 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', sourcePort: 65535,
      destAddress: 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', destPort: 65535,
    },
  },
  {
    name: 'v1 UNKNOWN of exactly 107 bytes',
    input: Buffer.from(`PROXY UNKNOWN ${'x'.repeat(PROXY_V1_MAX_BYTES - 16)}\r\n`),
    version: 1,
    header: { command: 'unknown' },
  },
  { name: 'v1 UNKNOWN bare', input: Buffer.from('PROXY UNKNOWN\r\n'), version: 1, header: { command: 'unknown' } },
  {
    name: 'v1 UNKNOWN with ignored rest',
    input: Buffer.from('PROXY UNKNOWN ffff:: ffff:: 1 2\r\n'),
    version: 1,
    header: { command: 'unknown' },
  },
  {
    name: 'v1 followed by SMTP bytes: consumed stops at CRLF',
    input: Buffer.from('PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\nEHLO x\r\n'),
    version: 1,
    consumed: 'PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n'.length,
    header: { command: 'proxy', family: 'tcp4', sourceAddress: '10.0.0.1', sourcePort: 1, destAddress: '10.0.0.2', destPort: 2 },
  },
  // v2 (§2.2)
  {
    name: 'v2 PROXY TCP4',
    input: v2(0x21, 0x11, ipv4Block),
    version: 2,
    header: { command: 'proxy', family: 'tcp4', sourceAddress: '192.0.2.1', sourcePort: 50000, destAddress: '198.51.100.7', destPort: 25 },
  },
  {
    name: 'v2 PROXY TCP6',
    input: v2(0x21, 0x21, ipv6Block),
    version: 2,
    header: { command: 'proxy', family: 'tcp6', sourceAddress: '2001:db8::1', sourcePort: 1234, destAddress: '2001:db8:1::', destPort: 587 },
  },
  {
    name: 'v2 PROXY TCP4 with TLVs (ALPN, authority, NOOP padding, CRC32C)',
    input: v2(0x21, 0x11, Buffer.concat([
      ipv4Block,
      tlv(0x01, Buffer.from('smtp')),
      tlv(0x02, Buffer.from('mx.example.test')),
      tlv(0x04, Buffer.alloc(5)),
      tlv(0x03, Buffer.alloc(4)),
    ])),
    version: 2,
    header: { command: 'proxy', family: 'tcp4', sourceAddress: '192.0.2.1', sourcePort: 50000, destAddress: '198.51.100.7', destPort: 25 },
  },
  {
    name: 'v2 PROXY TCP4 with an empty TLV',
    input: v2(0x21, 0x11, Buffer.concat([ipv4Block, tlv(0xe0, Buffer.alloc(0))])),
    version: 2,
    header: { command: 'proxy', family: 'tcp4', sourceAddress: '192.0.2.1', sourcePort: 50000, destAddress: '198.51.100.7', destPort: 25 },
  },
  { name: 'v2 LOCAL (health check), empty block', input: v2(0x20, 0x00, Buffer.alloc(0)), version: 2, header: { command: 'local' } },
  { name: 'v2 LOCAL ignores an address block', input: v2(0x20, 0x11, ipv4Block), version: 2, header: { command: 'local' } },
  { name: 'v2 PROXY UNSPEC', input: v2(0x21, 0x00, Buffer.alloc(0)), version: 2, header: { command: 'unknown' } },
  { name: 'v2 PROXY UNSPEC skips any block', input: v2(0x21, 0x00, Buffer.from([1, 2])), version: 2, header: { command: 'unknown' } },
  { name: 'v2 PROXY unix stream', input: v2(0x21, 0x31, Buffer.alloc(216)), version: 2, header: { command: 'unknown' } },
  {
    name: 'v2 followed by SMTP bytes',
    input: Buffer.concat([v2(0x21, 0x11, ipv4Block), Buffer.from('EHLO x\r\n')]),
    version: 2,
    consumed: 28,
    header: { command: 'proxy', family: 'tcp4', sourceAddress: '192.0.2.1', sourcePort: 50000, destAddress: '198.51.100.7', destPort: 25 },
  },
];

describe('parseProxyHeader: valid headers', () => {
  test.each(okCases)('$name', ({ input, header, version, consumed }) => {
    expect(parseProxyHeader(input)).toEqual({ status: 'ok', version, header, consumed: consumed ?? input.length });
  });
});

type BadCase = { name: string; input: Buffer; want: 'invalid' | 'absent' };

const longV2 = v2(0x21, 0x11, Buffer.alloc(PROXY_V2_MAX_BYTES - 16 + 1));

const badCases: BadCase[] = [
  // v1 ports
  { name: 'v1 port above 65535', input: Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 65536 25\r\n'), want: 'invalid' },
  { name: 'v1 port with leading zero', input: Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 025 25\r\n'), want: 'invalid' },
  { name: 'v1 negative port', input: Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 -1 25\r\n'), want: 'invalid' },
  { name: 'v1 hex port', input: Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 0x19 25\r\n'), want: 'invalid' },
  { name: 'v1 empty port', input: Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8  25\r\n'), want: 'invalid' },
  // v1 separators
  { name: 'v1 double space', input: Buffer.from('PROXY TCP4  1.2.3.4 5.6.7.8 1 25\r\n'), want: 'invalid' },
  { name: 'v1 trailing space', input: Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1 25 \r\n'), want: 'invalid' },
  { name: 'v1 tab separator', input: Buffer.from('PROXY TCP4\t1.2.3.4 5.6.7.8 1 25\r\n'), want: 'invalid' },
  { name: 'v1 missing field', input: Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n'), want: 'invalid' },
  { name: 'v1 extra field', input: Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n'), want: 'invalid' },
  { name: 'v1 bare LF', input: Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1 25\n'), want: 'invalid' },
  { name: 'v1 bare CR', input: Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1 25\rX'), want: 'invalid' },
  { name: 'v1 NUL byte', input: Buffer.from('PROXY TCP4 1.2.3.4\x00'), want: 'invalid' },
  { name: 'v1 no CRLF within 107 bytes', input: Buffer.from(`PROXY UNKNOWN ${'x'.repeat(200)}`), want: 'invalid' },
  { name: 'v1 CRLF at bytes 107-108 (108 in all)', input: Buffer.from(`PROXY UNKNOWN ${'x'.repeat(PROXY_V1_MAX_BYTES - 15)}\r\n`), want: 'invalid' },
  // v1 protocol and addresses
  { name: 'v1 unknown protocol', input: Buffer.from('PROXY UDP4 1.2.3.4 5.6.7.8 1 25\r\n'), want: 'invalid' },
  { name: 'v1 lower-case protocol', input: Buffer.from('PROXY tcp4 1.2.3.4 5.6.7.8 1 25\r\n'), want: 'invalid' },
  { name: 'v1 octet above 255', input: Buffer.from('PROXY TCP4 1.2.3.256 5.6.7.8 1 25\r\n'), want: 'invalid' },
  { name: 'v1 octet with leading zero', input: Buffer.from('PROXY TCP4 1.2.3.04 5.6.7.8 1 25\r\n'), want: 'invalid' },
  { name: 'v1 three-part IPv4', input: Buffer.from('PROXY TCP4 1.2.3 5.6.7.8 1 25\r\n'), want: 'invalid' },
  { name: 'v1 IPv6 under TCP4', input: Buffer.from('PROXY TCP4 ::1 5.6.7.8 1 25\r\n'), want: 'invalid' },
  { name: 'v1 IPv4 under TCP6', input: Buffer.from('PROXY TCP6 1.2.3.4 ::1 1 25\r\n'), want: 'invalid' },
  { name: 'v1 two "::" in IPv6', input: Buffer.from('PROXY TCP6 1::2::3 ::1 1 25\r\n'), want: 'invalid' },
  { name: 'v1 nine IPv6 groups', input: Buffer.from('PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 25\r\n'), want: 'invalid' },
  { name: 'v1 IPv6 zone id', input: Buffer.from('PROXY TCP6 fe80::1%eth0 ::1 1 25\r\n'), want: 'invalid' },
  { name: 'v1 bracketed IPv6', input: Buffer.from('PROXY TCP6 [::1] ::1 1 25\r\n'), want: 'invalid' },
  { name: 'v1 hostname', input: Buffer.from('PROXY TCP4 lb.example.test 5.6.7.8 1 25\r\n'), want: 'invalid' },
  { name: 'v1 empty line after PROXY', input: Buffer.from('PROXY \r\n'), want: 'invalid' },
  // not a PROXY header at all
  { name: 'lower-case "proxy" is not a header', input: Buffer.from('proxy TCP4 1.2.3.4 5.6.7.8 1 25\r\n'), want: 'absent' },
  { name: '"PROXY" without the space', input: Buffer.from('PROXYTCP4 1.2.3.4\r\n'), want: 'absent' },
  { name: 'EHLO', input: Buffer.from('EHLO x\r\n'), want: 'absent' },
  { name: 'TLS ClientHello', input: Buffer.from([0x16, 0x03, 0x01, 0x00, 0xa5]), want: 'absent' },
  { name: 'HTTP request', input: Buffer.from('GET / HTTP/1.1\r\n'), want: 'absent' },
  { name: 'v2 signature broken at byte 6', input: Buffer.concat([SIG.subarray(0, 6), Buffer.from('xQUIT\n')]), want: 'absent' },
  { name: 'v2 signature broken at last byte', input: Buffer.concat([SIG.subarray(0, 11), Buffer.from([0x0b, 0x21, 0x11])]), want: 'absent' },
  // v2 errors
  { name: 'v2 version 1 in binary', input: v2(0x11, 0x11, ipv4Block), want: 'invalid' },
  { name: 'v2 version 3', input: v2(0x31, 0x11, ipv4Block), want: 'invalid' },
  { name: 'v2 command 2', input: v2(0x22, 0x11, ipv4Block), want: 'invalid' },
  { name: 'v2 undefined family byte', input: v2(0x21, 0x41, ipv4Block), want: 'invalid' },
  { name: 'v2 UDP4 cannot carry SMTP', input: v2(0x21, 0x12, ipv4Block), want: 'invalid' },
  { name: 'v2 TCP4 block too short', input: v2(0x21, 0x11, ipv4Block.subarray(0, 11)), want: 'invalid' },
  { name: 'v2 TCP6 block too short', input: v2(0x21, 0x21, ipv4Block), want: 'invalid' },
  { name: 'v2 TLV overruns the header', input: v2(0x21, 0x11, Buffer.concat([ipv4Block, Buffer.from([0x01, 0x00, 0x09, 0x61])])), want: 'invalid' },
  { name: 'v2 trailing partial TLV header', input: v2(0x21, 0x11, Buffer.concat([ipv4Block, Buffer.from([0x01, 0x00])])), want: 'invalid' },
  { name: 'v2 declared length over the bound', input: longV2.subarray(0, 16), want: 'invalid' },
  { name: 'v2 declared length 65535', input: v2(0x21, 0x11, Buffer.alloc(0), 0xffff), want: 'invalid' },
];

describe('parseProxyHeader: refused input', () => {
  test.each(badCases)('$name', ({ input, want }) => {
    const got = parseProxyHeader(input);
    expect(got.status).toBe(want);
    if (got.status === 'invalid') expect(got.reason).toMatch(/^v[12]: /);
  });
});

describe('parseProxyHeader: incomplete input', () => {
  test('empty buffer needs more', () => {
    expect(parseProxyHeader(Buffer.alloc(0))).toEqual({ status: 'need-more' });
  });

  // Every strict prefix of a valid header is undecided; the full header is ok.
  test.each(okCases.filter((c) => !c.consumed))('every truncation of $name needs more', ({ input }) => {
    for (let n = 0; n < input.length; n++) {
      expect(parseProxyHeader(input.subarray(0, n)), `length ${n}`).toEqual({ status: 'need-more' });
    }
    expect(parseProxyHeader(input).status).toBe('ok');
  });

  test('v1 decides by 107 bytes even without CRLF', () => {
    const junk = Buffer.from(`PROXY UNKNOWN ${'a'.repeat(PROXY_V1_MAX_BYTES)}`);
    expect(parseProxyHeader(junk.subarray(0, PROXY_V1_MAX_BYTES - 1))).toEqual({ status: 'need-more' });
    expect(parseProxyHeader(junk.subarray(0, PROXY_V1_MAX_BYTES)).status).toBe('invalid');
  });

  test('v2 decides on the length field before the body arrives', () => {
    expect(parseProxyHeader(longV2.subarray(0, 15))).toEqual({ status: 'need-more' });
    expect(parseProxyHeader(longV2.subarray(0, 16)).status).toBe('invalid');
  });
});

describe('formatProxyV1 / formatProxyV2', () => {
  const tcp4 = { family: 'tcp4', sourceAddress: '192.0.2.1', sourcePort: 50000, destAddress: '198.51.100.7', destPort: 25 } as const;

  test('v1 TCP4 is the exact spec line', () => {
    expect(formatProxyV1(tcp4).toString('latin1')).toBe('PROXY TCP4 192.0.2.1 198.51.100.7 50000 25\r\n');
  });

  test('v1 TCP6 writes canonical addresses', () => {
    const line = formatProxyV1({ family: 'tcp6', sourceAddress: '2001:DB8:0::1', sourcePort: 1, destAddress: '::1', destPort: 2 });
    expect(line.toString('latin1')).toBe('PROXY TCP6 2001:db8::1 ::1 1 2\r\n');
  });

  test('v2 TCP4 is byte-exact', () => {
    expect(formatProxyV2(tcp4)).toEqual(v2(0x21, 0x11, ipv4Block));
  });

  test('v2 TCP6 is byte-exact', () => {
    const got = formatProxyV2({ family: 'tcp6', sourceAddress: '2001:db8::1', sourcePort: 1234, destAddress: '2001:db8:1::', destPort: 587 });
    expect(got).toEqual(v2(0x21, 0x21, ipv6Block));
  });

  test.each([
    { name: 'IPv6 address under tcp4', info: { ...tcp4, sourceAddress: '::1' } },
    { name: 'IPv4 address under tcp6', info: { ...tcp4, family: 'tcp6' as const } },
    { name: 'port out of range', info: { ...tcp4, destPort: 70000 } },
    { name: 'fractional port', info: { ...tcp4, sourcePort: 1.5 } },
  ])('refuses $name', ({ info }) => {
    expect(() => formatProxyV1(info)).toThrow();
    expect(() => formatProxyV2(info)).toThrow();
  });
});

// Interop: a real HAProxy (Debian) writes the header, our parser reads it. This also proves the
// test/helpers/haproxy.ts helper end to end.
describe('parseProxyHeader against a real HAProxy', () => {
  const cleanups: Array<() => unknown> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const t = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    });
    return Promise.race([p, t]).finally(() => clearTimeout(timer));
  }

  /** A plain TCP backend that hands back the bytes of its first connection once `done(bytes)` says so. */
  async function recordingBackend(done: (bytes: Buffer) => boolean): Promise<{ port: number; firstBytes: Promise<Buffer> }> {
    let deliver!: (b: Buffer) => void;
    const firstBytes = new Promise<Buffer>((r) => (deliver = r));
    const sockets = new Set<net.Socket>();
    const server = net.createServer((sock) => {
      sockets.add(sock);
      sock.on('error', () => {});
      let seen = Buffer.alloc(0);
      sock.on('data', (d: Buffer) => {
        seen = Buffer.concat([seen, d]).subarray(0, 8192);
        if (done(seen)) deliver(seen);
      });
    });
    server.listen(0, '127.0.0.1');
    await withTimeout(once(server, 'listening'), 5000, 'backend listen');
    cleanups.push(async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    });
    return { port: (server.address() as net.AddressInfo).port, firstBytes };
  }

  const payload = 'EHLO client.test\r\n';
  const gotPayload = (b: Buffer): boolean => b.includes(payload);

  test.each([
    { sendProxy: 'v2' as const, version: 2 },
    { sendProxy: 'v1' as const, version: 1 },
  ])('HAProxy send-proxy $sendProxy carries the client address and port', async ({ sendProxy, version }) => {
    const backend = await recordingBackend(gotPayload);
    const haproxy = await startHaproxy({ backendPort: backend.port, sendProxy });
    cleanups.push(() => haproxy.stop());

    // A non-default loopback source, so the socket's own peer (HAProxy at 127.0.0.1) cannot pass for it.
    const client = net.connect({ host: '127.0.0.1', port: haproxy.port, localAddress: '127.0.0.9' });
    cleanups.push(() => client.destroy());
    await withTimeout(once(client, 'connect'), 5000, 'connect to haproxy');
    client.write(payload);

    const bytes = await withTimeout(backend.firstBytes, 5000, 'bytes at the backend');
    const r = parseProxyHeader(bytes);
    expect(r).toEqual({
      status: 'ok',
      version,
      consumed: bytes.length - payload.length,
      header: {
        command: 'proxy',
        family: 'tcp4',
        sourceAddress: '127.0.0.9',
        sourcePort: client.localPort,
        destAddress: '127.0.0.1',
        destPort: haproxy.port,
      },
    });
    if (r.status === 'ok') expect(bytes.subarray(r.consumed).toString('latin1')).toBe(payload);
  });

  test('default client address 127.0.0.1 over send-proxy-v2', async () => {
    const backend = await recordingBackend(gotPayload);
    const haproxy = await startHaproxy({ backendPort: backend.port, sendProxy: 'v2' });
    cleanups.push(() => haproxy.stop());
    const client = net.connect({ host: '127.0.0.1', port: haproxy.port });
    cleanups.push(() => client.destroy());
    await withTimeout(once(client, 'connect'), 5000, 'connect to haproxy');
    client.write(payload);
    const r = parseProxyHeader(await withTimeout(backend.firstBytes, 5000, 'bytes at the backend'));
    expect(r.status === 'ok' && r.header.sourceAddress).toBe('127.0.0.1');
  });

  test('without send-proxy the backend sees no header (absent)', async () => {
    const backend = await recordingBackend(gotPayload);
    const haproxy = await startHaproxy({ backendPort: backend.port, sendProxy: 'none' });
    cleanups.push(() => haproxy.stop());
    const client = net.connect({ host: '127.0.0.1', port: haproxy.port });
    cleanups.push(() => client.destroy());
    await withTimeout(once(client, 'connect'), 5000, 'connect to haproxy');
    client.write(payload);
    const bytes = await withTimeout(backend.firstBytes, 5000, 'bytes at the backend');
    expect(bytes.toString('latin1')).toBe(payload);
    expect(parseProxyHeader(bytes)).toEqual({ status: 'absent' });
  });

  test('stop() ends HAProxy: its port refuses afterwards', async () => {
    const backend = await recordingBackend(gotPayload);
    const haproxy = await startHaproxy({ backendPort: backend.port, sendProxy: 'v2' });
    await haproxy.stop();
    const client = net.connect({ host: '127.0.0.1', port: haproxy.port });
    const [err] = (await withTimeout(once(client, 'error').catch((e: unknown) => [e]), 5000, 'refusal')) as [NodeJS.ErrnoException];
    expect(err.code).toBe('ECONNREFUSED');
  });
});
