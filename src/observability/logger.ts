/**
 * pino options: JSON lines, object first and a short constant message, secrets redacted.
 * AUTH payloads and message bodies are never handed to the logger in the first place; the redact
 * paths are a second belt.
 */
import pino, { type DestinationStream, type Logger } from 'pino';

export const REDACT_PATHS = ['password', '*.password', 'token', '*.token', 'authorization', '*.authorization', 'headers.authorization', 'req.headers.authorization', 'bindPassword', '*.bindPassword'];

export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'relay-guard' },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      formatters: { level: (label) => ({ level: label }) },
    },
    destination ?? pino.destination({ dest: 1, sync: false }),
  );
}
