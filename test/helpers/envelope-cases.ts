/**
 * One table of envelopes for the envelope judge (src/policy/judge.ts). It drives the unit test
 * (test/unit/envelope-judge.test.ts: the judge called directly) and the parity test
 * (test/integration/envelope-parity.test.ts: each row through a live guard in both backend modes
 * and through POST /api/v1/check, same code, enhanced code and rule id). Client addresses are
 * loopback so that the live guard sees them as they are written here.
 */

export const STRANGER = '127.0.0.9';
export const TRUSTED = '127.0.0.2';
/** In a relay network and in a never-relay network: never-relay wins. */
export const NEVER = '127.0.0.3';

/** The rules of every row (written as rule files for the live guard, compiled for the unit test). */
export const ENVELOPE_RULES = {
  acceptedDomains: ['example.com', '*.example.net', 'validated.example', 'bücher.example', '[192.0.2.1]'],
  relayNetworks: ['127.0.0.2/32', '127.0.0.3/32'],
  neverRelayNetworks: ['127.0.0.3'],
  senders: [
    { id: 'block-spammer', match: ['*@spam.test'], action: 'reject' },
    { id: 'slow-down', match: ['bulk@slow.test'], action: 'defer' },
  ],
  policy: { antiSpoofing: true },
  recipientValidation: { domains: { 'validated.example': 'list' } },
};
/** Recipients known to the list (validated.example is validated against it). */
export const ENVELOPE_RECIPIENTS = ['alice@validated.example', 'bob.smith@validated.example'];

/** The guard's envelope settings of every row (config smtp.*). */
export const ENVELOPE_SMTP = { maxRecipients: 3, maxTransactions: 3, maxMessageBytes: '1MB' };
export const ENVELOPE_MAX_BYTES = 1024 * 1024;

export type EnvelopeListener = 'mx' | 'internal' | 'submission';
export const ENVELOPE_LISTENERS: ReadonlyArray<{ name: EnvelopeListener; kind: 'mx' | 'submission'; relay?: 'allow' }> = [
  { name: 'mx', kind: 'mx' },
  { name: 'internal', kind: 'mx', relay: 'allow' },
  { name: 'submission', kind: 'submission' },
];

export interface EnvelopeCase {
  name: string;
  client?: string;
  listener?: EnvelopeListener;
  /** MAIL FROM argument, parameters included (default <sender@outside.test>). */
  from?: string;
  /** RCPT TO argument, parameters included. */
  rcpt: string;
  /** Transactions started before (MAIL, RSET) and recipients forwarded before this RCPT. */
  priorTransactions?: number;
  priorRecipients?: number;
  /** The command that gets the deciding answer, its code, enhanced code (guard replies) and rule id. */
  want: { at: 'mail' | 'rcpt'; code: number; enhanced?: string; rule: string; limit?: string };
}

const accept = (rule: string, limit = 'recipient'): EnvelopeCase['want'] => ({ at: 'rcpt', code: 250, rule, limit });
const rcptNo = (code: number, enhanced: string, rule: string, limit?: string): EnvelopeCase['want'] => ({ at: 'rcpt', code, enhanced, rule, ...(limit ? { limit } : {}) });
const mailNo = (code: number, enhanced: string, rule: string): EnvelopeCase['want'] => ({ at: 'mail', code, enhanced, rule });

const RELAY = rcptNo(550, '5.7.1', 'relay-denied', 'relay-denied');
const TRICK = rcptNo(501, '5.1.3', 'routing-tricks', 'relay-denied');
const SMTPUTF8 = rcptNo(553, '5.6.7', 'smtputf8-required');
const UNSUPPORTED_RCPT = rcptNo(555, '5.5.4', 'unsupported-parameter');

export const ENVELOPE_CASES: EnvelopeCase[] = [
  // relay: refused for strangers, allowed for trusted clients
  { name: 'relay from a stranger', rcpt: '<victim@elsewhere.test>', want: RELAY },
  { name: 'relay, upper case and trailing dot', rcpt: '<VICTIM@ELSEWHERE.TEST.>', want: RELAY },
  { name: 'relay from a relay network', client: TRUSTED, rcpt: '<victim@elsewhere.test>', want: accept('relay-networks') },
  { name: 'relay from a never-relay client inside a relay network', client: NEVER, rcpt: '<victim@elsewhere.test>', want: RELAY },
  { name: 'relay on the internal listener', listener: 'internal', rcpt: '<victim@elsewhere.test>', want: accept('internal-listener') },
  { name: 'relay on the internal listener from a never-relay client', listener: 'internal', client: NEVER, rcpt: '<victim@elsewhere.test>', want: RELAY },
  { name: 'unlisted subdomain of an accepted domain', rcpt: '<bob@sub.example.com>', want: RELAY },
  { name: 'wildcard subdomain', rcpt: '<bob@mail.example.net>', want: accept('accepted-domains') },
  { name: 'the wildcard does not cover its parent', rcpt: '<bob@example.net>', want: RELAY },
  { name: 'accepted address literal', rcpt: '<bob@[192.0.2.1]>', want: accept('accepted-domains') },
  { name: 'foreign address literal', rcpt: '<bob@[192.0.2.99]>', want: RELAY },
  { name: 'look-alike domain', rcpt: '<bob@example.com.evil.test>', want: RELAY },
  { name: 'accepted domain, any case, trailing dot', rcpt: '<Bob@EXAMPLE.COM.>', want: accept('accepted-domains') },
  { name: 'bare address without brackets', rcpt: 'bob@example.com', want: accept('accepted-domains') },
  { name: 'IDN domain in A-label form', rcpt: '<bob@xn--bcher-kva.example>', want: accept('accepted-domains') },
  // routing tricks: never local, whatever the domain says
  { name: 'percent hack', rcpt: '<victim%elsewhere.test@example.com>', want: TRICK },
  { name: 'bang path', rcpt: '<elsewhere.test!victim@example.com>', want: TRICK },
  { name: 'source route', rcpt: '<@example.com:victim@elsewhere.test>', want: TRICK },
  { name: 'quoted @ in the local part', rcpt: '<"victim@elsewhere.test"@example.com>', want: TRICK },
  { name: 'escaped @ in a quoted local part', rcpt: '<"victim\\@elsewhere.test"@example.com>', want: TRICK },
  { name: 'quoted local part with a space', rcpt: '<"a b"@example.com>', want: TRICK },
  { name: 'percent hack to a foreign domain', rcpt: '<victim%other.test@elsewhere.test>', want: TRICK },
  { name: 'Exchange encapsulated address', rcpt: '<IMCEASMTP-victim+40elsewhere+2Etest@example.com>', want: rcptNo(550, '5.7.1', 'encapsulated-address', 'relay-denied') },
  { name: 'percent hack from a trusted client', client: TRUSTED, rcpt: '<victim%elsewhere.test@example.com>', want: accept('accepted-domains') },
  { name: 'percent hack from a never-relay client', client: NEVER, rcpt: '<victim%elsewhere.test@example.com>', want: TRICK },
  // postmaster, RFC 5321 §4.5.1
  { name: '<postmaster>', rcpt: '<postmaster>', want: accept('postmaster') },
  { name: '<PostMaster> any case', rcpt: '<PostMaster>', want: accept('postmaster') },
  { name: '<postmaster> from a never-relay client', client: NEVER, rcpt: '<postmaster>', want: accept('postmaster') },
  { name: 'postmaster@ an unvalidated domain', rcpt: '<postmaster@example.com>', want: accept('accepted-domains') },
  { name: 'postmaster@ a validated domain, not listed', rcpt: '<postmaster@validated.example>', want: accept('postmaster') },
  { name: 'PostMaster@ a validated domain, any case', rcpt: '<PostMaster@Validated.Example>', want: accept('postmaster') },
  { name: 'postmaster@ a foreign domain', rcpt: '<postmaster@elsewhere.test>', want: RELAY },
  { name: 'postmaster with a percent hack', rcpt: '<postmaster%elsewhere.test@validated.example>', want: TRICK },
  { name: 'postmaster-like name is looked up', rcpt: '<postmaster-not@validated.example>', want: rcptNo(550, '5.1.1', 'recipient-unknown', 'unknown-recipient') },
  // recipient validation (list mode for validated.example)
  { name: 'known recipient', rcpt: '<alice@validated.example>', want: accept('recipient-validation') },
  { name: 'known recipient with a dot', rcpt: '<bob.smith@validated.example>', want: accept('recipient-validation') },
  { name: 'unknown recipient', rcpt: '<mallory@validated.example>', want: rcptNo(550, '5.1.1', 'recipient-unknown', 'unknown-recipient') },
  { name: 'unknown recipient from a trusted client', client: TRUSTED, rcpt: '<mallory@validated.example>', want: rcptNo(550, '5.1.1', 'recipient-unknown', 'unknown-recipient') },
  { name: 'unknown user at an unvalidated domain', rcpt: '<mallory@example.com>', want: accept('accepted-domains') },
  { name: 'known recipient on the internal listener', listener: 'internal', rcpt: '<alice@validated.example>', want: accept('recipient-validation') },
  // senders
  { name: 'null sender', from: '<>', rcpt: '<bob@example.com>', want: accept('accepted-domains') },
  { name: 'sender rule rejects', from: '<x@spam.test>', rcpt: '<bob@example.com>', want: mailNo(550, '5.7.1', 'sender-rules:block-spammer') },
  { name: 'sender rule defers', from: '<bulk@slow.test>', rcpt: '<bob@example.com>', want: mailNo(450, '4.7.1', 'sender-rules:slow-down') },
  { name: 'our domain as sender from a stranger', from: '<ceo@example.com>', rcpt: '<bob@example.com>', want: mailNo(550, '5.7.1', 'anti-spoofing') },
  { name: 'our domain as sender from a trusted client', client: TRUSTED, from: '<ceo@example.com>', rcpt: '<victim@elsewhere.test>', want: accept('relay-networks') },
  { name: 'sender syntax error', from: '<a b@c>', rcpt: '<bob@example.com>', want: mailNo(501, '5.1.7', 'sender-syntax') },
  { name: 'sender with two @', from: '<a@b@c.test>', rcpt: '<bob@example.com>', want: mailNo(501, '5.1.7', 'sender-syntax') },
  { name: 'recipient syntax error', rcpt: '<bob@>', want: rcptNo(501, '5.1.3', 'recipient-syntax') },
  { name: 'null recipient', rcpt: '<>', want: rcptNo(501, '5.1.3', 'recipient-syntax') },
  { name: 'submission listener without AUTH', listener: 'submission', rcpt: '<bob@example.com>', want: mailNo(530, '5.7.0', 'auth-required') },
  // SMTPUTF8 (RFC 6531)
  { name: 'non-ASCII sender without SMTPUTF8', from: '<jörg@outside.test>', rcpt: '<bob@example.com>', want: mailNo(553, '5.6.7', 'smtputf8-required') },
  { name: 'non-ASCII sender with SMTPUTF8', from: '<jörg@outside.test> SMTPUTF8', rcpt: '<bob@example.com>', want: accept('accepted-domains') },
  { name: 'non-ASCII recipient without SMTPUTF8', rcpt: '<jörg@example.com>', want: SMTPUTF8 },
  { name: 'non-ASCII recipient with SMTPUTF8', from: '<sender@outside.test> SMTPUTF8', rcpt: '<jörg@example.com>', want: accept('accepted-domains') },
  { name: 'non-ASCII domain without SMTPUTF8 (the codec makes it an A-label)', rcpt: '<bob@bücher.example>', want: accept('accepted-domains') },
  { name: 'non-ASCII domain with SMTPUTF8', from: '<sender@outside.test> SMTPUTF8', rcpt: '<bob@bücher.example>', want: accept('accepted-domains') },
  // Unicode look-alikes of % ! @ in the local part are routing tricks (NFKC + confusables): issue 16 item 6
  ...([
    ['fullwidth @ U+FF20', 'victim\uFF20elsewhere.test'],
    ['small commercial at U+FE6B', 'victim\uFE6Belsewhere.test'],
    ['fullwidth % U+FF05', 'victim\uFF05elsewhere.test'],
    ['small percent U+FE6A', 'victim\uFE6Aelsewhere.test'],
    ['Arabic percent U+066A', 'victim\u066Aelsewhere.test'],
    ['fullwidth ! U+FF01', 'elsewhere.test\uFF01victim'],
    ['small exclamation U+FE57', 'elsewhere.test\uFE57victim'],
    ['retroflex click U+01C3', 'elsewhere.test\u01C3victim'],
    ['double exclamation U+203C', 'elsewhere.test\u203Cvictim'],
  ] as const).map(([what, local]): EnvelopeCase => ({ name: `look-alike routing: ${what}`, from: '<sender@outside.test> SMTPUTF8', rcpt: `<${local}@example.com>`, want: TRICK })),
  { name: 'look-alike routing from a trusted client is allowed, like %', client: TRUSTED, from: '<sender@outside.test> SMTPUTF8', rcpt: '<victim\uFF20elsewhere.test@example.com>', want: accept('accepted-domains') },
  { name: 'non-ASCII foreign recipient with SMTPUTF8 is still relaying', from: '<sender@outside.test> SMTPUTF8', rcpt: '<jörg@elsewhere.test>', want: RELAY },
  // parameters
  { name: 'SIZE within the limit', from: '<sender@outside.test> SIZE=1000', rcpt: '<bob@example.com>', want: accept('accepted-domains') },
  { name: 'SIZE over the limit', from: '<sender@outside.test> SIZE=2000000', rcpt: '<bob@example.com>', want: mailNo(552, '5.3.4', 'message-too-large') },
  { name: 'SIZE not a number', from: '<sender@outside.test> SIZE=big', rcpt: '<bob@example.com>', want: mailNo(501, '5.5.4', 'parameter-syntax') },
  { name: 'BODY=8BITMIME', from: '<sender@outside.test> BODY=8BITMIME', rcpt: '<bob@example.com>', want: accept('accepted-domains') },
  { name: 'BODY=BINARYMIME is not offered', from: '<sender@outside.test> BODY=BINARYMIME', rcpt: '<bob@example.com>', want: mailNo(555, '5.5.4', 'unsupported-parameter') },
  { name: 'unknown MAIL parameter', from: '<sender@outside.test> XFOO=1', rcpt: '<bob@example.com>', want: mailNo(555, '5.5.4', 'unsupported-parameter') },
  { name: 'MAIL AUTH= parameter is not offered', from: '<sender@outside.test> AUTH=<>', rcpt: '<bob@example.com>', want: mailNo(555, '5.5.4', 'unsupported-parameter') },
  { name: 'duplicate MAIL parameter', from: '<sender@outside.test> SIZE=1 SIZE=2', rcpt: '<bob@example.com>', want: mailNo(501, '5.1.7', 'sender-syntax') },
  // DSN (RFC 3461) only for trusted clients by default (smtp.dsn: trusted): a stranger never gets it
  { name: 'RET and ENVID from a trusted client', client: TRUSTED, from: '<sender@outside.test> RET=HDRS ENVID=abc', rcpt: '<bob@example.com>', want: accept('accepted-domains') },
  { name: 'NOTIFY from a trusted client', client: TRUSTED, rcpt: '<bob@example.com> NOTIFY=SUCCESS,FAILURE', want: accept('accepted-domains') },
  { name: 'ORCPT from a trusted client', client: TRUSTED, rcpt: '<bob@example.com> ORCPT=rfc822;bob@example.com', want: accept('accepted-domains') },
  { name: 'NOTIFY on the internal listener', listener: 'internal', rcpt: '<bob@example.com> NOTIFY=NEVER', want: accept('accepted-domains') },
  { name: 'RET and ENVID from a stranger', from: '<sender@outside.test> RET=HDRS ENVID=abc', rcpt: '<bob@example.com>', want: mailNo(555, '5.5.4', 'unsupported-parameter') },
  { name: 'ENVID alone from a stranger', from: '<sender@outside.test> ENVID=abc', rcpt: '<bob@example.com>', want: mailNo(555, '5.5.4', 'unsupported-parameter') },
  { name: 'NOTIFY=SUCCESS from a stranger (backscatter to a forged sender)', from: '<victim@elsewhere.test>', rcpt: '<bob@example.com> NOTIFY=SUCCESS', want: UNSUPPORTED_RCPT },
  { name: 'ORCPT from a stranger', rcpt: '<bob@example.com> ORCPT=rfc822;bob@example.com', want: UNSUPPORTED_RCPT },
  { name: 'NOTIFY from a never-relay address inside a relay network', client: NEVER, rcpt: '<bob@example.com> NOTIFY=NEVER', want: UNSUPPORTED_RCPT },
  { name: 'unknown RCPT parameter', rcpt: '<bob@example.com> XFOO', want: UNSUPPORTED_RCPT },
  { name: 'unknown RCPT parameter is refused before relay', rcpt: '<victim@elsewhere.test> XFOO=1', want: UNSUPPORTED_RCPT },
  { name: 'a stranger\'s NOTIFY to a foreign domain is refused before relay', rcpt: '<victim@elsewhere.test> NOTIFY=NEVER', want: UNSUPPORTED_RCPT },
  // limits: recipients per message, transactions per session
  { name: 'last recipient within smtp.maxRecipients', priorRecipients: 2, rcpt: '<bob@example.com>', want: accept('accepted-domains') },
  { name: 'one recipient over smtp.maxRecipients', priorRecipients: 3, rcpt: '<bob@example.com>', want: rcptNo(452, '4.5.3', 'too-many-recipients') },
  { name: 'postmaster over smtp.maxRecipients', priorRecipients: 3, rcpt: '<postmaster>', want: rcptNo(452, '4.5.3', 'too-many-recipients') },
  { name: 'relay attempt over smtp.maxRecipients', priorRecipients: 3, rcpt: '<victim@elsewhere.test>', want: rcptNo(452, '4.5.3', 'too-many-recipients') },
  { name: 'last transaction within smtp.maxTransactions', priorTransactions: 2, rcpt: '<bob@example.com>', want: accept('accepted-domains') },
  { name: 'one transaction over smtp.maxTransactions', priorTransactions: 3, rcpt: '<bob@example.com>', want: mailNo(421, '4.7.0', 'too-many-transactions') },
];
