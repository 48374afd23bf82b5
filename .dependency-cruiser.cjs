/**
 * Import boundaries of relay-guard: one rule per line of ../shared/DESIGN.md's module table
 * (README "Architecture"). Run by `npm run lint:deps` (chained in `npm run test:full`) and by
 * test/unit/boundaries.test.ts (so `npm test` runs it too, and shows that a planted violation fails).
 */
/** Node's modules that do I/O, and the packages that do (sockets, files, Redis, LDAP, HTTP, logs, metrics). */
const IO_CORE = '^(node:)?(net|tls|fs|fs/promises|dgram|dns|dns/promises|http|https|http2|child_process|cluster|worker_threads|readline|repl|inspector)$';
const IO_PACKAGES = 'node_modules/(ioredis|fastify|@fastify|ldapts|pino|prom-client|selfsigned|smtp-server|nodemailer)/';
/** Parts that do I/O (or hold state that does). */
const IO_PARTS = '^src/(session|net|limits|directory|admin|rules|observability|cli|demo|dnsbl|policy-service|guard\\.ts)';

module.exports = {
  forbidden: [
    {
      name: 'codec-no-io',
      comment: 'The SMTP codec is pure functions over Buffers and strings (DESIGN.md): no sockets, files, stores or loggers.',
      severity: 'error',
      from: { path: '^src/smtp/' },
      to: { path: [IO_CORE, IO_PACKAGES, IO_PARTS, '^src/policy/'] },
    },
    {
      name: 'policy-no-io',
      comment: 'Policy (the envelope judge included) is pure: directory lookups come in through an injected port (DESIGN.md).',
      severity: 'error',
      from: { path: '^src/policy/' },
      to: { path: [IO_CORE, IO_PACKAGES] },
    },
    {
      name: 'policy-not-limits-metrics-directory',
      comment: 'Policy never imports the limiter, metrics or the directory (nor any other part with state or I/O).',
      severity: 'error',
      from: { path: '^src/policy/' },
      to: { path: IO_PARTS },
    },
    {
      name: 'shared-helpers-pure',
      comment: 'src/util/ (IP addresses, durations) is imported by codec and policy alike: it imports no I/O and no part.',
      severity: 'error',
      from: { path: '^src/util/' },
      to: { path: [IO_CORE, IO_PACKAGES, '^src/(?!util/)'] },
    },
    {
      name: 'session-only-from-root-and-listeners',
      comment: 'Nothing but the composition root (guard.ts) and the listeners (src/net/) imports the session.',
      severity: 'error',
      from: { path: '^src/', pathNot: '^src/(guard\\.ts|net/|session/)' },
      to: { path: '^src/session/session\\.ts$' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'require', 'node', 'default'], extensions: ['.ts', '.js'] },
  },
};
