/**
 * The guard's memory settings (src/cli/memory-tuning.ts): the V8 heap growing percent it sets unless
 * the operator chose one, and the malloc trim threshold it reports, which `npm start`, the systemd
 * unit and the container image set through GLIBC_TUNABLES (one value, kept in one place).
 */
import { readFileSync } from 'node:fs';
import { describe, expect, test } from 'vitest';
import { HEAP_GROWING_PERCENT, MALLOC_TUNABLES, heapGrowthChosen, mallocTrimThreshold } from '../../src/cli/memory-tuning.js';

describe('heap growing percent', () => {
  test('the default is a factor of 3', () => {
    expect(HEAP_GROWING_PERCENT).toBe(200);
  });

  test('not chosen: no node flag, or other flags only', () => {
    expect(heapGrowthChosen([])).toBe(false);
    expect(heapGrowthChosen(['--import', 'tsx', '--max-old-space-size=512'])).toBe(false);
    expect(heapGrowthChosen(['--heap-growing', '--heap-growing-percentage=5'])).toBe(false);
  });

  test("chosen on node's command line, in either spelling V8 accepts, with = or as the next argument", () => {
    expect(heapGrowthChosen(['--heap-growing-percent=50'])).toBe(true);
    expect(heapGrowthChosen(['--heap_growing_percent=50'])).toBe(true);
    expect(heapGrowthChosen(['--enable-source-maps', '--heap-growing-percent', '50'])).toBe(true);
  });
});

describe('malloc trim threshold', () => {
  test('read from GLIBC_TUNABLES among other tunables, else MALLOC_TRIM_THRESHOLD_, else the glibc default', () => {
    expect(mallocTrimThreshold({})).toBe('glibc default');
    expect(mallocTrimThreshold({ GLIBC_TUNABLES: MALLOC_TUNABLES })).toBe('67108864');
    expect(mallocTrimThreshold({ GLIBC_TUNABLES: 'glibc.malloc.arena_max=2:glibc.malloc.trim_threshold=1048576' })).toBe('1048576');
    expect(mallocTrimThreshold({ GLIBC_TUNABLES: 'glibc.malloc.trim_threshold_x=5:glibc.malloc.top_pad=1' })).toBe('glibc default');
    expect(mallocTrimThreshold({ MALLOC_TRIM_THRESHOLD_: '4096' })).toBe('4096');
    expect(mallocTrimThreshold({ GLIBC_TUNABLES: 'glibc.malloc.trim_threshold=8192', MALLOC_TRIM_THRESHOLD_: '4096' })).toBe('8192');
  });

  test('an environment that is empty, malformed or huge: a clear answer, never its text in the log', () => {
    expect(mallocTrimThreshold({ GLIBC_TUNABLES: '' })).toBe('glibc default');
    expect(mallocTrimThreshold({ GLIBC_TUNABLES: ':::', MALLOC_TRIM_THRESHOLD_: '  ' })).toBe('glibc default');
    expect(mallocTrimThreshold({ GLIBC_TUNABLES: 'glibc.malloc.trim_threshold' })).toBe('glibc default');
    expect(mallocTrimThreshold({ GLIBC_TUNABLES: '=5:glibc.malloc.trim_threshold=' })).toBe('not a number');
    expect(mallocTrimThreshold({ GLIBC_TUNABLES: 'glibc.malloc.trim_threshold=64M' })).toBe('not a number');
    expect(mallocTrimThreshold({ MALLOC_TRIM_THRESHOLD_: '"},"admin":true' })).toBe('not a number');
    expect(mallocTrimThreshold({ GLIBC_TUNABLES: `glibc.malloc.trim_threshold=${'9'.repeat(100_000)}` })).toBe('not a number');
    expect(mallocTrimThreshold({ GLIBC_TUNABLES: 'a=b:'.repeat(50_000) })).toBe('glibc default');
  });

  test('npm start, the systemd unit, the container image and the Kubernetes deployment set exactly MALLOC_TUNABLES', () => {
    const start = (JSON.parse(readFileSync('package.json', 'utf8')) as { scripts: Record<string, string> }).scripts.start!;
    expect(start).toContain(`GLIBC_TUNABLES=\${GLIBC_TUNABLES:-${MALLOC_TUNABLES}} node dist/cli/main.js`);
    expect(readFileSync('deploy/systemd/relay-guard.service', 'utf8')).toMatch(new RegExp(`^Environment=GLIBC_TUNABLES=${MALLOC_TUNABLES.replace(/\./g, '\\.')}$`, 'm'));
    expect(readFileSync('deploy/container/Dockerfile', 'utf8')).toMatch(new RegExp(`^ENV GLIBC_TUNABLES=${MALLOC_TUNABLES.replace(/\./g, '\\.')}$`, 'm'));
    expect(readFileSync('deploy/kubernetes/deployment.yaml', 'utf8')).toMatch(new RegExp(`- name: GLIBC_TUNABLES\n\\s+value: ${MALLOC_TUNABLES.replace(/\./g, '\\.')}\n`));
  });
});
