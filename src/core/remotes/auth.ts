// Registry authentication: parse `WWW-Authenticate` challenges, fetch Bearer tokens from the
// realm (anonymously, with Basic credentials, or with an identity/refresh token) and cache them per
// realm+service+scope until they expire; Basic auth for registries that ask for it.
// Credentials and tokens are never put in log fields or error messages.
import type { Credentials } from "./hosts.js";

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Parse `Bearer realm="…",service="…",scope="…", Basic realm="…"` into challenges. */
export function parseChallenges(header: string | string[] | undefined): Challenge[] {
  const values = header === undefined ? [] : Array.isArray(header) ? header : [header];
  const out: Challenge[] = [];
  for (const v of values) {
    let i = 0;
    let cur: Challenge | undefined;
    while (i < v.length) {
      while (i < v.length && (v[i] === " " || v[i] === ",")) i++;
      const m = /^([A-Za-z0-9!#$%&'*+.^_`|~-]+)/.exec(v.slice(i));
      if (!m) break;
      const token = m[1]!;
      i += token.length;
      let j = i;
      while (j < v.length && v[j] === " ") j++;
      if (v[j] === "=") {
        // a parameter of the current challenge
        j++;
        while (j < v.length && v[j] === " ") j++;
        let value = "";
        if (v[j] === '"') {
          j++;
          while (j < v.length && v[j] !== '"') {
            if (v[j] === "\\" && j + 1 < v.length) j++;
            value += v[j];
            j++;
          }
          j++;
        } else {
          while (j < v.length && v[j] !== ",") value += v[j++];
          value = value.trim();
        }
        if (cur) cur.params[token.toLowerCase()] = value;
        i = j;
      } else {
        cur = { scheme: token.toLowerCase(), params: {} };
        out.push(cur);
      }
    }
  }
  return out;
}

export type CredentialsFn = (host: string) => Promise<Credentials | undefined> | Credentials | undefined;

interface CachedToken {
  token: string;
  expires: number;
}

/** Minimal HTTP used to reach token endpoints (so TLS and timeouts are the transport's). */
export type TokenHttp = (
  url: string,
  init: { method: "GET" | "POST"; headers: Record<string, string>; body?: string },
) => Promise<{ status: number; body: string }>;

export class AuthError extends Error {}

/**
 * Per-client authorisation state: which scheme each registry host asked for last, and tokens
 * by realm/service/scope.
 */
export class Authorizer {
  private readonly challenges = new Map<string, Challenge>();
  private readonly tokens = new Map<string, CachedToken>();
  private readonly inflight = new Map<string, Promise<string>>();

  constructor(
    private readonly credentials: CredentialsFn | undefined,
    private readonly http: TokenHttp,
    private readonly now: () => number = Date.now,
  ) {}

  /** Remember a 401's challenge for a host; false when there is nothing we can answer it with. */
  addChallenge(host: string, header: string | string[] | undefined): boolean {
    const cs = parseChallenges(header);
    const c = cs.find((x) => x.scheme === "bearer") ?? cs.find((x) => x.scheme === "basic");
    if (!c) return false;
    const prev = this.challenges.get(host);
    this.challenges.set(host, c);
    // A second 401 for the same challenge means the cached token was refused.
    if (prev && prev.scheme === c.scheme && JSON.stringify(prev.params) === JSON.stringify(c.params)) {
      for (const k of this.tokens.keys()) if (k.startsWith(`${host}|`)) this.tokens.delete(k);
    }
    return true;
  }

  hasChallenge(host: string): boolean {
    return this.challenges.has(host);
  }

  /** The Authorization header for a request to `host` needing `scopes`, if the host asked for one. */
  async header(host: string, scopes: string[]): Promise<string | undefined> {
    const c = this.challenges.get(host);
    if (!c) return undefined;
    const creds = await this.credentials?.(host);
    if (c.scheme === "basic") {
      if (!creds?.username)
        throw new AuthError(`${host} requires credentials (Basic auth) and none were given`);
      return `Basic ${Buffer.from(`${creds.username}:${creds.password ?? ""}`).toString("base64")}`;
    }
    const realm = c.params.realm;
    if (!realm) throw new AuthError(`${host} sent a Bearer challenge without a realm`);
    const service = c.params.service ?? "";
    // The challenge's own scope (if any) is merged with ours, as clients commonly do.
    const all = [...new Set([...scopes, ...(c.params.scope ? c.params.scope.split(" ") : [])])].sort();
    const key = `${host}|${realm}|${service}|${all.join(" ")}`;
    const hit = this.tokens.get(key);
    if (hit && hit.expires > this.now()) return `Bearer ${hit.token}`;
    let p = this.inflight.get(key);
    if (!p) {
      p = this.fetchToken(host, realm, service, all, creds).finally(() => this.inflight.delete(key));
      this.inflight.set(key, p);
    }
    return `Bearer ${await p}`;
  }

  private async fetchToken(
    host: string,
    realm: string,
    service: string,
    scopes: string[],
    creds: Credentials | undefined,
  ): Promise<string> {
    let res: { status: number; body: string };
    if (creds?.identityToken) {
      const form = new URLSearchParams({ grant_type: "refresh_token", refresh_token: creds.identityToken });
      if (service) form.set("service", service);
      if (scopes.length) form.set("scope", scopes.join(" "));
      form.set("client_id", "berth");
      res = await this.http(realm, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: form.toString(),
      });
    } else {
      const u = new URL(realm);
      if (service) u.searchParams.set("service", service);
      for (const s of scopes) u.searchParams.append("scope", s);
      const headers: Record<string, string> = {};
      if (creds?.username)
        headers.authorization = `Basic ${Buffer.from(`${creds.username}:${creds.password ?? ""}`).toString("base64")}`;
      res = await this.http(u.toString(), { method: "GET", headers });
    }
    const realmHost = new URL(realm).host;
    if (res.status === 401 || res.status === 403)
      throw new AuthError(
        `token service ${realmHost} for ${host} refused ${creds ? "the given credentials" : "anonymous access"} (HTTP ${res.status})`,
      );
    if (res.status !== 200)
      throw new AuthError(`token service ${realmHost} for ${host} answered HTTP ${res.status}`);
    let body: { token?: string; access_token?: string; expires_in?: number; issued_at?: string };
    try {
      body = JSON.parse(res.body);
    } catch {
      throw new AuthError(`token service ${realmHost} for ${host} did not answer JSON`);
    }
    const token = body.token ?? body.access_token;
    if (!token) throw new AuthError(`token service ${realmHost} for ${host} answered without a token`);
    // Docker's spec: 60 s when unset; keep a margin so a token does not expire in flight.
    const ttl = Math.max(body.expires_in ?? 60, 1) * 1000;
    const issued = body.issued_at ? Date.parse(body.issued_at) : Number.NaN;
    const start = Number.isFinite(issued) ? Math.min(issued, this.now()) : this.now();
    const key = `${host}|${realm}|${service}|${scopes.join(" ")}`;
    this.tokens.set(key, { token, expires: start + ttl - Math.min(10_000, ttl / 10) });
    return token;
  }
}

/** `repository:<path>:pull` or `:pull,push`. */
export const repositoryScope = (repo: string, push = false) =>
  `repository:${repo}:${push ? "pull,push" : "pull"}`;
