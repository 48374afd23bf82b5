/**
 * What the backend's EHLO offered the last time a session read it (SMTPUTF8, DSN, as smtp.ehloAllow
 * passes them on), shared with the dry-run check so that POST /api/v1/check answers as a live session
 * would: against a 7-bit backend a non-ASCII address is 553 in both. Unknown until a session has read
 * an EHLO reply; the check then assumes both are offered and says so.
 */
export interface BackendExtensions {
  readonly smtputf8: boolean;
  readonly dsn: boolean;
}

export class BackendCapabilities {
  private seen: BackendExtensions | undefined;

  note(seen: BackendExtensions): void {
    this.seen = seen;
  }

  last(): BackendExtensions | undefined {
    return this.seen;
  }
}
