import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import {
  formatProxyV1,
  formatProxyV2,
  parseProxyHeader,
  PROXY_V1_MAX_BYTES,
  PROXY_V2_MAX_BYTES,
  type ProxyAddresses,
} from '../../src/net/proxy-protocol.js';

const V1_PREFIX = Buffer.from('PROXY ');
const V2_SIG = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');

/** Independent oracle for canonical IPv6 text: WHATWG URL serialisation equals RFC 5952 except for IPv4-mapped. */
function canonicalV6(text: string): string {
  const host = new URL(`http://[${text}]/`).hostname.slice(1, -1);
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(host);
  if (!mapped) return host;
  const hi = parseInt(mapped[1] ?? '0', 16);
  const lo = parseInt(mapped[2] ?? '0', 16);
  return `::ffff:${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`;
}

const port = fc.integer({ min: 0, max: 65535 });
const tcp4: fc.Arbitrary<ProxyAddresses> = fc.record({
  family: fc.constant('tcp4' as const),
  sourceAddress: fc.ipV4(),
  sourcePort: port,
  destAddress: fc.ipV4(),
  destPort: port,
});
/** IPv6 in every text form fast-check knows (compressed, full, embedded dotted quad), plus zero-heavy byte patterns. */
const v6Text = fc.oneof(
  fc.ipV6(),
  fc
    .array(fc.constantFrom(0, 0, 0, 1, 0xffff, 0xdb8), { minLength: 8, maxLength: 8 })
    .map((ws) => ws.map((w) => w.toString(16)).join(':')),
);
const tcp6: fc.Arbitrary<ProxyAddresses> = fc.record({
  family: fc.constant('tcp6' as const),
  sourceAddress: v6Text,
  sourcePort: port,
  destAddress: v6Text,
  destPort: port,
});
const addresses = fc.oneof(tcp4, tcp6);
const format = fc.constantFrom(
  { version: 1 as const, fn: formatProxyV1 },
  { version: 2 as const, fn: formatProxyV2 },
);

function canonical(info: ProxyAddresses): ProxyAddresses {
  const c = info.family === 'tcp4' ? (s: string) => s : canonicalV6;
  return { ...info, sourceAddress: c(info.sourceAddress), destAddress: c(info.destAddress) };
}

/** Random bytes, and random bytes behind each of the two prefixes, so the deep paths get exercised. */
const hostileInput = fc.oneof(
  fc.uint8Array({ maxLength: 600 }),
  fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.concat([V1_PREFIX, b])),
  fc
    .tuple(fc.constantFrom('TCP4 ', 'TCP6 ', 'UNKNOWN'), fc.string({ maxLength: 120 }), fc.boolean())
    .map(([p, s, crlf]) => Buffer.from(`PROXY ${p}${s}${crlf ? '\r\n' : ''}`, 'latin1')),
  fc
    .tuple(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 0xffff }), fc.uint8Array({ maxLength: 400 }))
    .map(([vc, fam, len, rest]) => {
      const h = Buffer.alloc(4);
      h[0] = vc;
      h[1] = fam;
      h.writeUInt16BE(len, 2);
      return Buffer.concat([V2_SIG, h, rest]);
    }),
);

describe('parseProxyHeader properties', () => {
  test('arbitrary bytes never throw and never consume more than the bounds', () => {
    fc.assert(
      fc.property(hostileInput, (bytes) => {
        const buf = Buffer.from(bytes);
        const r = parseProxyHeader(buf);
        expect(['need-more', 'ok', 'invalid', 'absent']).toContain(r.status);
        if (r.status === 'ok') {
          expect(r.consumed).toBeLessThanOrEqual(buf.length);
          expect(r.consumed).toBeLessThanOrEqual(r.version === 1 ? PROXY_V1_MAX_BYTES : PROXY_V2_MAX_BYTES);
        }
        // Never undecided past the largest header.
        if (buf.length >= PROXY_V2_MAX_BYTES) expect(r.status).not.toBe('need-more');
      }),
      { numRuns: 3000 },
    );
  });

  // Bounded time: the parser looks at no more than the largest header, so 1 MiB of input answers
  // exactly as its first 4 KiB do (a scan of the whole buffer would also show up as a slow test).
  test('work is bounded by the header maximum, not by the input size', () => {
    fc.assert(
      fc.property(hostileInput, fc.integer({ min: 0, max: 255 }), (bytes, fill) => {
        const huge = Buffer.alloc(1024 * 1024, fill);
        Buffer.from(bytes).copy(huge);
        expect(parseProxyHeader(huge)).toEqual(parseProxyHeader(huge.subarray(0, PROXY_V2_MAX_BYTES)));
      }),
      { numRuns: 30 },
    );
  });

  test('a decision does not change when more bytes arrive', () => {
    fc.assert(
      fc.property(hostileInput, fc.uint8Array({ minLength: 1, maxLength: 64 }), (bytes, more) => {
        const first = parseProxyHeader(Buffer.from(bytes));
        if (first.status === 'need-more') return;
        const later = parseProxyHeader(Buffer.concat([Buffer.from(bytes), more]));
        if (first.status === 'invalid') expect(later.status).toBe('invalid');
        else expect(later).toEqual(first);
      }),
      { numRuns: 2000 },
    );
  });

  test('format → parse round-trips addresses and ports (v1 and v2), canonicalised', () => {
    fc.assert(
      fc.property(addresses, format, fc.uint8Array({ maxLength: 32 }), (info, { version, fn }, trailer) => {
        const header = fn(info);
        const r = parseProxyHeader(Buffer.concat([header, trailer]));
        expect(r).toEqual({ status: 'ok', version, consumed: header.length, header: { command: 'proxy', ...canonical(info) } });
      }),
      { numRuns: 1000 },
    );
  });

  test('every strict prefix of a valid header needs more', () => {
    fc.assert(
      fc.property(addresses, format, (info, { fn }) => {
        const header = fn(info);
        for (let n = 0; n < header.length; n++) {
          expect(parseProxyHeader(header.subarray(0, n))).toEqual({ status: 'need-more' });
        }
      }),
      { numRuns: 300 },
    );
  });
});
