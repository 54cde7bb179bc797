// HTTP to registries over undici: one connection pool per distinct TLS setting, redirects followed
// by hand (Authorization is dropped when the redirect leaves the registry's origin), 401 answered
// once through the Authorizer, transient failures (5xx, 429, connection reset) retried with
// backoff up to a bound, and errors rewritten into messages naming the method, URL and host.
import { readFileSync } from "node:fs";
import type { IncomingHttpHeaders } from "node:http";
import type { Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import type { Agent, Dispatcher } from "undici";
import { onDemand, tls as tlsModule } from "../../base/builtin.js";
import { BerthError, type ErrorKind } from "../../base/errdefs.js";
import { type Logger, nopLogger } from "../../base/log.js";
import { AuthError, Authorizer, type CredentialsFn } from "./auth.js";
import type { RegistryHost } from "./hosts.js";

// undici is loaded on the first registry request: it is the largest module berthd has, and a
// daemon that only runs containers never needs it. Only its connection pool (Agent) and its
// request API are loaded, not the package's entry: that entry also loads fetch, WebSocket, the
// cache, mocking and proxy code, 113 files taking 100-140 ms on the first pull's critical path
// against ~40 ms for these 31 (docs/performance.md, finding 55).
interface UndiciParts {
  Agent: typeof Agent;
  request: (this: Dispatcher, opts: Dispatcher.RequestOptions) => Promise<Dispatcher.ResponseData>;
}
let undiciLib: UndiciParts | undefined;
const undici = (): UndiciParts =>
  (undiciLib ??= {
    Agent: onDemand("undici/lib/dispatcher/agent.js") as UndiciParts["Agent"],
    request: onDemand("undici/lib/api/api-request.js") as UndiciParts["request"],
  });

export interface TransportOptions {
  logger?: Logger;
  credentials?: CredentialsFn;
  /** TCP + TLS connect timeout (ms). Default 30 s. */
  connectTimeoutMs?: number;
  /** Waiting for response headers (ms). Default 60 s. */
  headersTimeoutMs?: number;
  /** Longest silence while reading a body (ms). Default 60 s. */
  bodyTimeoutMs?: number;
  /** Retries of a transient failure per request (after the first try). Default 3. */
  retries?: number;
  /** First backoff (ms), doubled each retry. Default 200. */
  backoffMs?: number;
  userAgent?: string;
}

/** A registry error with a kind, and the HTTP status when there was one. */
export class RegistryError extends BerthError {
  constructor(
    kind: ErrorKind,
    context: string,
    readonly status?: number,
    cause?: unknown,
  ) {
    super(kind, context, cause === undefined ? undefined : { cause });
    this.name = "RegistryError";
  }
}

export type Body = Buffer | (() => Readable);

export interface HttpRequest {
  method: "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE";
  /** Path below the host's API root (`/<repo>/manifests/<ref>`) or an absolute URL. */
  path: string;
  host: RegistryHost;
  headers?: Record<string, string>;
  body?: Body;
  /** Token scopes for a Bearer challenge. */
  scopes: string[];
  /** Retries on 5xx/resets for this request (default: the transport's). */
  retries?: number;
}

export interface HttpResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: Readable & { text(): Promise<string>; dump(): Promise<void> };
  /** Final URL after redirects. */
  url: string;
}

const TLS_CODES = new Set([
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "CERT_HAS_EXPIRED",
  "ERR_TLS_CERT_ALTNAME_INVALID",
  "CERT_UNTRUSTED",
]);
const TRANSIENT_CODES = new Set([
  "ECONNRESET",
  "EPIPE",
  "UND_ERR_SOCKET",
  "UND_ERR_CLOSED",
  "ETIMEDOUT",
  "EAI_AGAIN",
]);

export const hostUrl = (h: RegistryHost) => `${h.scheme}://${h.host}${h.path}`;

export function header(h: IncomingHttpHeaders, name: string): string | undefined {
  const v = h[name];
  return Array.isArray(v) ? v[0] : v;
}

/** Describe a network error for a message, with the code when there is one. */
function netErrorCode(err: unknown): string | undefined {
  let e = err as (Error & { code?: string; cause?: unknown }) | undefined;
  for (let i = 0; e && i < 4; i++) {
    if (e.code) return e.code;
    e = e.cause as typeof e;
  }
  return undefined;
}

/**
 * BERTH_REGISTRY_TIMEOUT_MS, when set in the daemon's environment, replaces the 60 s default for
 * how long a registry may stay silent (before the response headers, or within a body): a slow
 * link can raise it, and the reliability suite lowers it to test stalls in seconds.
 */
function envTimeoutMs(): number | undefined {
  const v = Number(process.env.BERTH_REGISTRY_TIMEOUT_MS);
  return Number.isFinite(v) && v > 0 ? v : undefined;
}

/** The longest Retry-After waited for; a registry asking for more fails the request at once. */
const MAX_RETRY_AFTER_MS = 30_000;

/** A Retry-After header (seconds or an HTTP date) as milliseconds from now. */
function retryAfterMs(v: string | undefined): number | undefined {
  if (!v) return undefined;
  const t = v.trim();
  if (/^\d+$/.test(t)) return Number(t) * 1000;
  const at = Date.parse(t);
  return Number.isFinite(at) ? Math.max(0, at - Date.now()) : undefined;
}

export class Transport {
  readonly authorizer: Authorizer;
  private readonly agents = new Map<string, Agent>();
  private readonly log: Logger;
  private readonly o: Required<Omit<TransportOptions, "logger" | "credentials">>;

  constructor(opts: TransportOptions = {}) {
    this.log = opts.logger ?? nopLogger;
    const silence = envTimeoutMs();
    this.o = {
      connectTimeoutMs: opts.connectTimeoutMs ?? 30_000,
      headersTimeoutMs: opts.headersTimeoutMs ?? silence ?? 60_000,
      bodyTimeoutMs: opts.bodyTimeoutMs ?? silence ?? 60_000,
      retries: opts.retries ?? 3,
      backoffMs: opts.backoffMs ?? 200,
      userAgent: opts.userAgent ?? "berth/0.1",
    };
    this.authorizer = new Authorizer(opts.credentials, (url, init) => this.tokenRequest(url, init));
  }

  get bodyTimeoutMs(): number {
    return this.o.bodyTimeoutMs;
  }

  /** The pool for a host's TLS settings (hosts with the same settings share one). */
  async agentFor(h: RegistryHost | undefined): Promise<Agent> {
    const tls = h?.scheme === "https" ? h.tls : undefined;
    const key = JSON.stringify(tls ?? {});
    let a = this.agents.get(key);
    if (a) return a;
    const connect: Record<string, unknown> = { timeout: this.o.connectTimeoutMs };
    if (tls) {
      if (tls.skipVerify) connect.rejectUnauthorized = false;
      if (tls.caFiles.length > 0) {
        const extra = tls.caFiles.map((f) => {
          try {
            return readFileSync(f, "utf8");
          } catch (err) {
            throw new RegistryError(
              "invalid argument",
              `cannot read CA file ${f}: ${(err as Error).message}`,
            );
          }
        });
        connect.ca = [...tlsModule().rootCertificates, ...extra];
      }
      if (tls.clientPairs.length > 0) {
        const [cert, key] = tls.clientPairs[0]!;
        try {
          const c = readFileSync(cert, "utf8");
          connect.cert = c;
          connect.key = key ? readFileSync(key, "utf8") : c;
        } catch (err) {
          throw new RegistryError(
            "invalid argument",
            `cannot read client certificate ${cert}: ${(err as Error).message}`,
          );
        }
      }
    }
    const { Agent } = undici();
    a = new Agent({
      connect,
      headersTimeout: this.o.headersTimeoutMs,
      bodyTimeout: this.o.bodyTimeoutMs,
      keepAliveTimeout: 30_000,
    });
    this.agents.set(key, a);
    return a;
  }

  async close(): Promise<void> {
    await Promise.all([...this.agents.values()].map((a) => a.close()));
    this.agents.clear();
  }

  private async tokenRequest(
    url: string,
    init: { method: "GET" | "POST"; headers: Record<string, string>; body?: string },
  ): Promise<{ status: number; body: string }> {
    const u = new URL(url);
    // Token services share the TLS settings of the registry when on the same host.
    const res = await this.raw(
      u,
      init.method,
      { ...init.headers, "user-agent": this.o.userAgent },
      init.body,
      await this.agentFor(undefined),
    );
    return { status: res.statusCode, body: await res.body.text() };
  }

  private async raw(
    u: URL,
    method: string,
    headers: Record<string, string>,
    body: string | Buffer | Readable | undefined,
    dispatcher: Dispatcher,
  ) {
    try {
      const { request } = undici();
      // what undici's request(url, opts) does with a URL before calling the dispatcher's
      return await request.call(dispatcher, {
        origin: u.origin,
        path: u.search ? `${u.pathname}${u.search}` : u.pathname,
        method: method as Dispatcher.HttpMethod,
        headers,
        body: body ?? null,
        headersTimeout: this.o.headersTimeoutMs,
        bodyTimeout: this.o.bodyTimeoutMs,
      });
    } catch (err) {
      throw this.describe(err, method, u);
    }
  }

  /** Turn an undici/socket error into a RegistryError whose message says what happened where. */
  describe(err: unknown, method: string, u: URL): RegistryError {
    if (err instanceof RegistryError) return err;
    const code = netErrorCode(err);
    const what = `${method} ${u.origin}${u.pathname}`;
    const msg = (err as Error)?.message ?? String(err);
    if (code === "UND_ERR_HEADERS_TIMEOUT")
      return new RegistryError(
        "deadline exceeded",
        `${what}: ${u.host} sent no response within ${this.o.headersTimeoutMs / 1000}s (timeout)`,
        undefined,
        err,
      );
    if (code === "UND_ERR_BODY_TIMEOUT")
      return new RegistryError(
        "deadline exceeded",
        `${what}: ${u.host} sent no data for ${this.o.bodyTimeoutMs / 1000}s (timeout)`,
        undefined,
        err,
      );
    if (code === "UND_ERR_CONNECT_TIMEOUT")
      return new RegistryError(
        "deadline exceeded",
        `${what}: connecting to ${u.host} timed out after ${this.o.connectTimeoutMs / 1000}s`,
        undefined,
        err,
      );
    if (code === "ECONNREFUSED")
      return new RegistryError("unavailable", `${what}: connection refused by ${u.host}`, undefined, err);
    if (code && TLS_CODES.has(code))
      return new RegistryError(
        "unavailable",
        `${what}: TLS certificate of ${u.host} is not trusted (${code}: ${msg}); add its CA with "ca" in hosts.toml or set skip_verify`,
        undefined,
        err,
      );
    if (code === "EPROTO" || /wrong version number|packet length too long/.test(msg))
      return new RegistryError(
        "unavailable",
        `${what}: TLS handshake with ${u.host} failed (is it plain HTTP?): ${msg}`,
        undefined,
        err,
      );
    return new RegistryError("unavailable", `${what}: ${code ? `${code}: ` : ""}${msg}`, undefined, err);
  }

  private isTransient(err: unknown, method: string): boolean {
    const code = netErrorCode(err);
    // A registry that stalled before answering a GET or HEAD is asked again (containerd's Go
    // client would still be waiting); a request with a body is not resent for a timeout.
    if (code === "UND_ERR_HEADERS_TIMEOUT") return method === "GET" || method === "HEAD";
    return code !== undefined && TRANSIENT_CODES.has(code);
  }

  /**
   * Send a request to one host: auth, redirects, retries. The caller reads or dumps the body of
   * what comes back (any status other than 401 after auth, and 5xx after the retries).
   */
  async send(req: HttpRequest): Promise<HttpResponse> {
    const base = new URL(hostUrl(req.host));
    const start = /^https?:\/\//.test(req.path) ? new URL(req.path) : new URL(base.href + req.path);
    const retries = req.retries ?? this.o.retries;
    let authRetried = false;
    for (let attempt = 0; ; attempt++) {
      const backoff = () => sleep(this.o.backoffMs * 2 ** attempt);
      let u = start;
      const headers: Record<string, string> = { "user-agent": this.o.userAgent };
      for (const [k, v] of Object.entries(req.host.headers)) headers[k.toLowerCase()] = v.join(", ");
      for (const [k, v] of Object.entries(req.headers ?? {})) headers[k.toLowerCase()] = v;
      try {
        const auth = await this.authorizer.header(req.host.host, req.scopes);
        if (auth) headers.authorization = auth;
      } catch (err) {
        if (err instanceof AuthError)
          throw new RegistryError(
            "unauthenticated",
            `${req.method} ${u.origin}${u.pathname}: ${err.message}`,
          );
        throw this.describe(err, "GET", u);
      }
      let method = req.method;
      let res: Dispatcher.ResponseData;
      let dispatcher: Dispatcher = await this.agentFor(req.host);
      try {
        for (let hop = 0; ; hop++) {
          const body = method === "GET" || method === "HEAD" ? undefined : req.body;
          res = await this.raw(u, method, headers, typeof body === "function" ? body() : body, dispatcher);
          this.log.debug("registry request", {
            method,
            url: `${u.origin}${u.pathname}`,
            status: res.statusCode,
          });
          const loc = header(res.headers, "location");
          if (
            ![301, 302, 303, 307, 308].includes(res.statusCode) ||
            !loc ||
            (req.method !== "GET" && req.method !== "HEAD")
          )
            break;
          await res.body.dump();
          if (hop >= 10)
            throw new RegistryError("unavailable", `${req.method} ${start.href}: too many redirects`);
          const next = new URL(loc, u);
          if (next.origin !== start.origin) {
            // Credentials for the registry are not for the blob store it redirects to.
            delete headers.authorization;
            dispatcher = await this.agentFor(undefined);
          }
          if (res.statusCode === 303) method = "GET";
          u = next;
        }
      } catch (err) {
        const e = this.describe(err, req.method, u);
        if (attempt < retries && this.isTransient(err, method)) {
          this.log.debug("registry request failed, retrying", { url: u.href, error: e.message, attempt });
          await backoff();
          continue;
        }
        throw e;
      }
      const status = res.statusCode;
      if (status === 401 && u.origin === start.origin) {
        const challenge = res.headers["www-authenticate"];
        await res.body.dump();
        if (!authRetried && this.authorizer.addChallenge(req.host.host, challenge)) {
          authRetried = true;
          attempt--;
          continue;
        }
        throw new RegistryError(
          "unauthenticated",
          `${req.method} ${u.origin}${u.pathname}: registry ${req.host.host} refused access (HTTP 401): ${
            headers.authorization
              ? "the credentials given were not accepted"
              : "credentials are required and none were given"
          }`,
          401,
        );
      }
      // A registry that says when to come back (429, 503) is not asked again sooner; one that
      // says "much later" fails the request now, with that in the message.
      const after =
        status >= 500 || status === 429 ? retryAfterMs(header(res.headers, "retry-after")) : undefined;
      if ((status >= 500 || status === 429) && attempt < retries && (after ?? 0) <= MAX_RETRY_AFTER_MS) {
        await res.body.dump();
        this.log.debug("registry answered a transient error, retrying", { url: u.href, status, attempt });
        if (after !== undefined) await sleep(Math.max(after, this.o.backoffMs * 2 ** attempt));
        else await backoff();
        continue;
      }
      if (status >= 500 || status === 429) {
        const text = (await res.body.text()).slice(0, 300);
        const later =
          after !== undefined && after > MAX_RETRY_AFTER_MS
            ? ` (it asked to retry after ${Math.round(after / 1000)}s)`
            : "";
        throw new RegistryError(
          "unavailable",
          `${req.method} ${u.origin}${u.pathname}: ${req.host.host} answered HTTP ${status} after ${attempt + 1} attempts${later}${text.trim() ? `: ${text.trim()}` : ""}`,
          status,
        );
      }
      return { status, headers: res.headers, body: res.body, url: u.href };
    }
  }
}

/** Read an error body from the distribution API (`{"errors":[{code,message}]}`) for a message. */
export async function errorDetail(res: HttpResponse): Promise<string> {
  const text = await res.body.text().catch(() => "");
  try {
    const j = JSON.parse(text) as { errors?: { code?: string; message?: string }[] };
    if (j.errors?.length) return j.errors.map((e) => `${e.code ?? ""} ${e.message ?? ""}`.trim()).join("; ");
  } catch {
    // not JSON
  }
  return text.slice(0, 200).trim();
}
