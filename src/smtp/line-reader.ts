/** CommandLineReader: Buffer chunks → command lines (stub; implementation follows). */
export type LineEvent =
  | { kind: 'line'; line: Buffer; bareLf: boolean }
  | { kind: 'error'; error: 'line_too_long' };

export interface CommandLineReaderOptions {
  maxLineBytes: number;
  maxBufferedBytes?: number;
}

export class CommandLineReader {
  constructor(_opts: CommandLineReaderOptions) {}
  push(_chunk: Buffer): void {}
  next(): LineEvent | undefined {
    return undefined;
  }
  takeBuffered(): Buffer {
    return Buffer.alloc(0);
  }
  get bufferedBytes(): number {
    return 0;
  }
  get overflowed(): boolean {
    return false;
  }
}
