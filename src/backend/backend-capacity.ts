/**
 * Cap on concurrent backend connections (Exchange accepts 20 per source address by default and
 * sees every client as the guard). A client over the cap gets 421 4.7.0 before the backend is touched.
 */
export class BackendCapacity {
  private used = 0;
  constructor(private readonly max: number) {}

  tryAcquire(): (() => void) | undefined {
    if (this.used >= this.max) return undefined;
    this.used++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.used--;
    };
  }

  get inUse(): number {
    return this.used;
  }
}
