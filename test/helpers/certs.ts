/** Throw-away certificates for TLS tests (selfsigned package; EC P-256 keys are quick to make). */
import { generate } from 'selfsigned';

export interface TestCertificate {
  cert: string;
  key: string;
}

export async function makeCertificate(opts: { commonName?: string; days?: number } = {}): Promise<TestCertificate> {
  const commonName = opts.commonName ?? 'localhost';
  const days = opts.days ?? 30;
  // A negative `days` makes an already expired certificate (valid from 2·|days| ago until |days| ago).
  const now = Date.now();
  const dayMs = 24 * 3600 * 1000;
  const notBeforeDate = new Date(days >= 0 ? now - 60_000 : now + 2 * days * dayMs);
  const notAfterDate = new Date(days >= 0 ? now + days * dayMs : now + days * dayMs);
  const pems = await generate([{ name: 'commonName', value: commonName }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    notBeforeDate,
    notAfterDate,
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true },
      { name: 'extKeyUsage', serverAuth: true },
      { name: 'subjectAltName', altNames: [{ type: 2, value: commonName }] },
    ],
  });
  return { cert: pems.cert, key: pems.private };
}
