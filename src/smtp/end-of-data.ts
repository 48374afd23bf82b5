/** EndOfDataScanner: DATA bytes → forwardable slices, end, or smuggling (stub; implementation follows). */
export type SmuggleKind = 'bare_lf' | 'bare_cr' | 'nul';

export type ScanStep =
  | { forward: Buffer[]; size: number; status: 'more' }
  | { forward: Buffer[]; size: number; status: 'end'; rest: Buffer }
  | { forward: Buffer[]; size: number; status: 'smuggling'; smuggle: SmuggleKind }
  | { forward: Buffer[]; size: number; status: 'too_large' };

export interface EndOfDataScannerOptions {
  mode: 'reject' | 'normalize';
  maxBytes: number;
}

export class EndOfDataScanner {
  constructor(_opts: EndOfDataScannerOptions) {}
  push(_chunk: Buffer): ScanStep {
    return { forward: [], size: 0, status: 'more' };
  }
  discardUntilEnd(_chunk: Buffer): { done: boolean; rest: Buffer } {
    return { done: false, rest: Buffer.alloc(0) };
  }
  get bytesSeen(): number {
    return 0;
  }
}
