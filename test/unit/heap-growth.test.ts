/** The guard's V8 heap growing percent (src/cli/heap-growth.ts): set by default, the operator's own choice wins. */
import { describe, expect, test } from 'vitest';
import { HEAP_GROWING_PERCENT, heapGrowthChosen } from '../../src/cli/heap-growth.js';

describe('heap growing percent', () => {
  test('the default is a factor of 3', () => {
    expect(HEAP_GROWING_PERCENT).toBe(200);
  });

  test('not chosen: no node flag, no NODE_OPTIONS, or other flags only', () => {
    expect(heapGrowthChosen([], undefined)).toBe(false);
    expect(heapGrowthChosen(['--import', 'tsx', '--max-old-space-size=512'], '--enable-source-maps')).toBe(false);
    expect(heapGrowthChosen(['--heap-growing'], '--heap-growing-percentage=5')).toBe(false);
  });

  test('chosen on node\'s command line, in either spelling V8 accepts, with = or as the next argument', () => {
    expect(heapGrowthChosen(['--heap-growing-percent=50'], undefined)).toBe(true);
    expect(heapGrowthChosen(['--heap_growing_percent=50'], undefined)).toBe(true);
    expect(heapGrowthChosen(['--heap-growing-percent', '50'], undefined)).toBe(true);
  });

  test('chosen in NODE_OPTIONS, among other options', () => {
    expect(heapGrowthChosen([], '--max-old-space-size=512  --heap-growing-percent=100')).toBe(true);
    expect(heapGrowthChosen([], '--heap_growing_percent=0')).toBe(true);
  });
});
