/**
 * A Postfix policy delegation request (SMTPD_POLICY_README "Policy protocol description"):
 * name=value lines, then an empty line. The guard sends the attributes Postfix's SMTP server sends,
 * in the same order, empty when it has no value (as Postfix does). Pure: no I/O.
 */

export type ProtocolState = 'CONNECT' | 'EHLO' | 'HELO' | 'MAIL' | 'RCPT' | 'DATA' | 'END-OF-MESSAGE' | 'VRFY' | 'ETRN';

/** What the session knows when it asks. */
export interface PolicyRequestFacts {
  protocolState: ProtocolState;
  /** ESMTP after EHLO, SMTP after HELO. */
  protocolName: 'SMTP' | 'ESMTP';
  heloName?: string | undefined;
  queueId?: string | undefined;
  /** Envelope sender without <> ('' for the null sender). */
  sender?: string | undefined;
  /** The recipient (RCPT stage; at DATA only when exactly one was accepted, as Postfix does). */
  recipient?: string | undefined;
  /** Recipients accepted so far; Postfix sends 0 before the DATA stage. */
  recipientCount: number;
  clientAddress: string;
  clientPort?: number | undefined;
  /** The client's verified host name; "unknown" when there is none (the guard does no reverse DNS). */
  clientName?: string | undefined;
  reverseClientName?: string | undefined;
  serverAddress?: string | undefined;
  serverPort?: number | undefined;
  /** Stable for one message (one MAIL transaction), different for the next (postgrey, policyd-spf rely on it). */
  instance: string;
  saslMethod?: string | undefined;
  saslUsername?: string | undefined;
  /** The SIZE parameter of MAIL FROM (0 when none). */
  size?: number | undefined;
  encryptionProtocol?: string | undefined;
  encryptionCipher?: string | undefined;
  encryptionKeysize?: number | undefined;
  policyContext?: string | undefined;
}

/** Longest value sent (Postfix's line_length_limit is 2048; a name=value line stays below it). */
export const MAX_VALUE_BYTES = 1024;

/** Values never hold CR, LF or NUL (the protocol has no escaping) and are capped. */
export function cleanValue(v: string | number | undefined): string {
  if (v === undefined) return '';
  const s = String(v).replace(/[\r\n\0]/g, ' ');
  return s.length > MAX_VALUE_BYTES ? s.slice(0, MAX_VALUE_BYTES) : s;
}

/** The attributes in Postfix's order (SMTPD_POLICY_README lists them by Postfix version). */
export function policyAttributes(f: PolicyRequestFacts): Array<[string, string]> {
  const a: Array<[string, string | number | undefined]> = [
    ['request', 'smtpd_access_policy'],
    ['protocol_state', f.protocolState],
    ['protocol_name', f.protocolName],
    ['helo_name', f.heloName],
    ['queue_id', f.queueId],
    ['sender', f.sender],
    ['recipient', f.recipient],
    ['recipient_count', f.recipientCount],
    ['client_address', f.clientAddress],
    ['client_name', f.clientName ?? 'unknown'],
    ['reverse_client_name', f.reverseClientName ?? 'unknown'],
    ['instance', f.instance],
    ['sasl_method', f.saslMethod],
    ['sasl_username', f.saslUsername],
    ['sasl_sender', ''],
    ['size', f.size ?? 0],
    ['ccert_subject', ''],
    ['ccert_issuer', ''],
    ['ccert_fingerprint', ''],
    ['ccert_pubkey_fingerprint', ''],
    ['encryption_protocol', f.encryptionProtocol],
    ['encryption_cipher', f.encryptionCipher],
    ['encryption_keysize', f.encryptionKeysize ?? 0],
    ['etrn_domain', ''],
    ['stress', ''],
    ['client_port', f.clientPort ?? 0],
    ['policy_context', f.policyContext],
    ['server_address', f.serverAddress],
    ['server_port', f.serverPort ?? 0],
  ];
  return a.map(([k, v]) => [k, cleanValue(v)]);
}

/** The request on the wire: one name=value line per attribute, then an empty line. */
export function formatPolicyRequest(f: PolicyRequestFacts): Buffer {
  let out = '';
  for (const [k, v] of policyAttributes(f)) out += `${k}=${v}\n`;
  return Buffer.from(`${out}\n`, 'utf8');
}
