/**
 * Errors of the admin API: one table from RG_ERR_* code to HTTP status, one error class for the
 * routes, and the Fastify error and not-found handlers that turn everything into
 * { statusCode, code, message }. Bad input is always a 4xx; a 5xx hides its details (STYLE §7.5.3)
 * and is counted in relay_guard_internal_errors_total{where="admin"}.
 */
import type { FastifyError, FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { Metrics } from '../observability/metrics.js';

/** Every code the admin API answers with, and its HTTP status. */
export const ADMIN_ERRORS = {
  RG_ERR_ADMIN_BAD_REQUEST: 400,
  RG_ERR_ADMIN_BAD_JSON: 400,
  RG_ERR_ADMIN_VALIDATION: 400,
  RG_ERR_ADMIN_NOT_A_LIST: 400,
  RG_ERR_ADMIN_UNAUTHORIZED: 401,
  RG_ERR_ADMIN_FORBIDDEN: 403,
  RG_ERR_ADMIN_CROSS_SITE: 403,
  RG_ERR_ADMIN_NOT_FOUND: 404,
  RG_ERR_ADMIN_UNKNOWN_SECTION: 404,
  RG_ERR_ADMIN_UNKNOWN_SESSION: 404,
  RG_ERR_ADMIN_UNKNOWN_BAN: 404,
  RG_ERR_ADMIN_METHOD_NOT_ALLOWED: 405,
  RG_ERR_ADMIN_CONFLICT: 409,
  RG_ERR_ADMIN_PRECONDITION_FAILED: 412,
  RG_ERR_ADMIN_TOO_LARGE: 413,
  RG_ERR_ADMIN_HOST: 421,
  RG_ERR_ADMIN_UNSUPPORTED_MEDIA_TYPE: 415,
  RG_ERR_ADMIN_NOT_CONFIGURED: 501,
  RG_ERR_ADMIN_INTERNAL: 500,
  // Raised by other modules, answered here (the rules store returns its status with the code).
  RG_ERR_RULES_INVALID: 400,
  RG_ERR_RULES_YAML: 400,
  RG_ERR_RULES_EMPTY_FILE: 400,
  RG_ERR_RULES_FILE_VANISHED: 400,
  RG_ERR_RULES_NOT_A_LIST: 400,
  RG_ERR_RULES_OPEN_RELAY: 400,
  RG_ERR_RULES_UNKNOWN_SECTION: 404,
  RG_ERR_RULES_ITEM_NOT_FOUND: 404,
  RG_ERR_RULES_VERSION_NOT_FOUND: 404,
  RG_ERR_RULES_DUPLICATE_ID: 409,
  RG_ERR_RULES_EMPTY_ACCEPTED_DOMAINS: 409,
  RG_ERR_RULES_PRECONDITION_FAILED: 412,
  RG_ERR_RULES_CONFLICT: 409,
  RG_ERR_RULES_STORE_INVALID: 400,
  RG_ERR_RULES_STORE_TAMPERED: 400,
  // The shared rules store is unreachable: said to the client (rule changes and fleet-wide reads wait for it).
  RG_ERR_RULES_STORE_UNAVAILABLE: 503,
  RG_ERR_BANS_BAD_TARGET: 400,
  RG_ERR_BANS_BAD_INPUT: 400,
  RG_ERR_BANS_TOO_WIDE: 400,
  RG_ERR_BANS_FULL: 409,
  RG_ERR_BANS_BAD_FILE: 500,
} as const satisfies Record<string, number>;

export type AdminErrorCode = keyof typeof ADMIN_ERRORS;

/** Fastify's own client errors, renamed into our codes (the status stays Fastify's). */
const FASTIFY_CODES: Readonly<Record<string, AdminErrorCode>> = {
  FST_ERR_CTP_INVALID_JSON_BODY: 'RG_ERR_ADMIN_BAD_JSON',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'RG_ERR_ADMIN_BAD_JSON',
  FST_ERR_CTP_BODY_TOO_LARGE: 'RG_ERR_ADMIN_TOO_LARGE',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'RG_ERR_ADMIN_UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'RG_ERR_ADMIN_BAD_REQUEST',
};

export class AdminError extends Error {
  override readonly name = 'AdminError';
  readonly statusCode: number;
  constructor(
    readonly code: AdminErrorCode,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
    this.statusCode = ADMIN_ERRORS[code];
  }
}

export interface ErrorBody {
  statusCode: number;
  code: string;
  message: string;
  errors?: unknown;
}

function isKnownCode(code: unknown): code is AdminErrorCode {
  return typeof code === 'string' && Object.hasOwn(ADMIN_ERRORS, code);
}

/** Map any thrown value to the body the client gets, or undefined when it is an internal error. */
export function clientErrorBody(err: unknown): ErrorBody | undefined {
  if (err instanceof AdminError) {
    return { statusCode: err.statusCode, code: err.code, message: err.message, ...(err.details === undefined ? {} : { errors: err.details }) };
  }
  const e = err as Partial<FastifyError> & { code?: unknown; statusCode?: unknown };
  if (e === null || typeof e !== 'object') return undefined;
  if (Array.isArray(e.validation)) {
    return { statusCode: 400, code: 'RG_ERR_ADMIN_VALIDATION', message: String(e.message) };
  }
  if (isKnownCode(e.code)) {
    const status = ADMIN_ERRORS[e.code];
    return status >= 500 && status !== 503 ? undefined : { statusCode: status, code: e.code, message: String(e.message) };
  }
  const status = typeof e.statusCode === 'number' ? e.statusCode : undefined;
  if (status !== undefined && status >= 400 && status < 500) {
    const code = (typeof e.code === 'string' ? FASTIFY_CODES[e.code] : undefined) ?? 'RG_ERR_ADMIN_BAD_REQUEST';
    return { statusCode: status, code, message: String(e.message) };
  }
  return undefined;
}

/**
 * A validation message that names the field: "body/value must match pattern …",
 * "body must have required property 'rcptTo'", "body must NOT have additional properties: 'x'".
 */
export function formatValidationErrors(
  errors: readonly { instancePath?: string; message?: string; keyword?: string; params?: Record<string, unknown> }[],
  dataVar: string,
): Error {
  const parts = errors.slice(0, 5).map((e) => {
    const where = `${dataVar}${e.instancePath ?? ''}`;
    const extra =
      e.keyword === 'additionalProperties' && typeof e.params?.['additionalProperty'] === 'string'
        ? `: '${e.params['additionalProperty']}'`
        : '';
    return `${where} ${e.message ?? 'is invalid'}${extra}`;
  });
  return new Error(parts.join('; '));
}

export function installErrorHandlers(app: FastifyInstance, deps: { log: Logger; metrics: Metrics }): void {
  app.setErrorHandler((err, req, reply) => {
    const body = clientErrorBody(err);
    if (body) {
      req.log.debug({ code: body.code, status: body.statusCode }, 'admin request refused');
      return reply.code(body.statusCode).send(body);
    }
    deps.metrics.internalErrors.inc({ where: 'admin' });
    deps.log.error({ err, method: req.method, url: req.routeOptions.url }, 'admin request failed');
    const internal: ErrorBody = { statusCode: 500, code: 'RG_ERR_ADMIN_INTERNAL', message: 'internal error' };
    return reply.code(500).send(internal);
  });
  app.setNotFoundHandler((req, reply) => {
    const body: ErrorBody = { statusCode: 404, code: 'RG_ERR_ADMIN_NOT_FOUND', message: `no route ${req.method} ${(req.url.split('?')[0] ?? '').slice(0, 200)}` };
    return reply.code(404).send(body);
  });
}
