/**
 * The guard's own replies, named by situation (DESIGN.md "Reply codes").
 * Every policy rule may override code and text; these are the defaults.
 */
import { reply, type Reply } from './reply.js';

export const RELAY_DENIED = reply(550, '5.7.1', 'Relaying denied');
export const USER_UNKNOWN = reply(550, '5.1.1', 'User unknown');
export const BAD_RECIPIENT_SYNTAX = reply(501, '5.1.3', 'Bad recipient address syntax');
export const BAD_SENDER_SYNTAX = reply(501, '5.1.7', 'Bad sender address syntax');
export const SENDER_NOT_AUTHORISED = reply(550, '5.7.1', 'Sender not authorised');
export const TOO_MANY_RECIPIENTS = reply(452, '4.5.3', 'Too many recipients');
export const RATE_LIMITED = reply(450, '4.7.1', 'Rate limit exceeded, try again later');
export const RATE_LIMITED_CLOSE: Reply = { ...reply(421, '4.7.0', 'Too many connections or commands, try again later'), close: true };
export const BANNED: Reply = { ...reply(554, '5.7.1', 'Access denied'), close: true };
export const NO_VALID_RECIPIENTS = reply(554, '5.5.1', 'No valid recipients');
export const LINE_TOO_LONG = reply(500, '5.5.2', 'Line too long');
export const BAD_BYTES = reply(500, '5.5.2', 'Bad characters in command');
export const SMUGGLING = reply(554, '5.6.0', 'Bare CR or LF in message data not allowed (SMTP smuggling)');
export const MESSAGE_TOO_LARGE = reply(552, '5.3.4', 'Message size exceeds fixed limit');
export const BACKEND_UNAVAILABLE: Reply = { ...reply(421, '4.3.0', 'Service temporarily unavailable, try again later'), close: true };
export const BACKEND_FAILED_IN_TRANSACTION = reply(451, '4.3.0', 'Temporary failure, try again later');
export const VERB_NOT_ALLOWED = reply(502, '5.5.1', 'Command not implemented');
export const VRFY_CANNOT = reply(252, '2.5.0', 'Cannot VRFY user, but will accept message and attempt delivery');
export const UNKNOWN_VERB = reply(500, '5.5.1', 'Command unrecognized');
export const SHUTTING_DOWN: Reply = { ...reply(421, '4.3.2', 'Service shutting down, try again later'), close: true };
export const BAD_SEQUENCE = reply(503, '5.5.1', 'Bad sequence of commands');
export const SYNTAX_ERROR = reply(501, '5.5.4', 'Syntax error in parameters');
export const EARLY_TALKER: Reply = { ...reply(554, '5.5.0', 'Protocol error: talking before the greeting'), close: true };
export const HTTP_ON_SMTP: Reply = { ...reply(421, '4.5.0', 'This is an SMTP server, not HTTP'), close: true };
export const TOO_MANY_ERRORS: Reply = { ...reply(421, '4.7.0', 'Too many errors, closing connection'), close: true };
export const TIMEOUT: Reply = { ...reply(421, '4.4.2', 'Timeout exceeded, closing connection'), close: true };
export const AUTH_REQUIRED = reply(530, '5.7.0', 'Authentication required');
export const MUST_ISSUE_STARTTLS = reply(530, '5.7.0', 'Must issue a STARTTLS command first');
/**
 * An AUTH the backend accepted but the guard could not prove (auth canary tripped, LDAP verification
 * refused or unreachable): temporary, so a real user's mail waits in its queue instead of bouncing
 * while the admin fixes the backend or the directory.
 */
export const AUTH_UNPROVEN = reply(451, '4.7.0', 'Authentication not proven, relaying refused for now');
export const DIRECTORY_UNAVAILABLE = reply(451, '4.4.3', 'Directory temporarily unavailable, try again later');
export const POLICY_FAILURE = reply(451, '4.3.0', 'Temporary policy failure, try again later');
export const TOO_MANY_TRANSACTIONS: Reply = { ...reply(421, '4.7.0', 'Too many transactions in one session'), close: true };
export const CAPACITY: Reply = { ...reply(421, '4.7.0', 'Too many connections, try again later'), close: true };
/** One client address or prefix already holds its share of backend slots (backend.maxPerAddress / maxPerPrefix). */
export const CAPACITY_PER_CLIENT: Reply = { ...reply(421, '4.7.0', 'Too many connections from your network, try again later'), close: true };
/** Under stress (every backend slot taken) an idle session gives its slot up (Postfix's stress mode). */
export const SHED_UNDER_STRESS: Reply = { ...reply(421, '4.4.2', 'Idle too long while the server is busy, closing connection'), close: true };
export const HELO_FIRST = reply(503, '5.5.1', 'Send HELO/EHLO first');
export const NESTED_MAIL = reply(503, '5.5.1', 'Nested MAIL command');
export const NEED_MAIL = reply(503, '5.5.1', 'Need MAIL before RCPT');
export const UNSUPPORTED_PARAMETER = reply(555, '5.5.4', 'Unsupported parameter');
export const NON_ASCII_ADDRESS = reply(553, '5.6.7', 'Non-ASCII address requires SMTPUTF8');
