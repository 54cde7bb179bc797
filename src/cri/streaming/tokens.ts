// One-time tokens for the stream server's URLs. Exec, Attach and PortForward each store their
// request under a fresh random token; the stream server takes it out on first use. A token is
// good for one connection and for a short time (containerd keeps them a minute), so a URL that
// leaked into a log is useless soon after.
import { randomBytes } from "node:crypto";

export const TOKEN_TTL_MS = 60_000;

interface Entry<T> {
  value: T;
  expires: number;
}

export class TokenCache<T> {
  private readonly entries = new Map<string, Entry<T>>();

  constructor(
    private readonly ttlMs = TOKEN_TTL_MS,
    private readonly now: () => number = Date.now,
  ) {}

  /** Store `value` under a new token (URL-safe base64 of 24 random bytes). */
  put(value: T): string {
    this.sweep();
    for (;;) {
      const token = randomBytes(24).toString("base64url");
      if (this.entries.has(token)) continue;
      this.entries.set(token, { value, expires: this.now() + this.ttlMs });
      return token;
    }
  }

  /** The value of a token and forget it; undefined when unknown, used or expired. */
  take(token: string): T | undefined {
    const e = this.entries.get(token);
    if (!e) return undefined;
    this.entries.delete(token);
    if (e.expires <= this.now()) return undefined;
    return e.value;
  }

  get size(): number {
    this.sweep();
    return this.entries.size;
  }

  private sweep(): void {
    const t = this.now();
    for (const [k, e] of this.entries) if (e.expires <= t) this.entries.delete(k);
  }
}
