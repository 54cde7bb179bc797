// A fault-injecting HTTP proxy in front of a real registry (test/helpers/registry.ts), for the
// "lying registries" reliability group: requests matching a rule get a fault (a wrong body, a
// truncated or over-long one, an error status, a reset or stalled connection, a redirect loop, a
// 401), every other request is passed through unchanged. It can also play a Bearer token server
// (anonymous tokens from /token), so clients go through the token flow and can be told a token
// that was valid a moment ago no longer is.
import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, request, type Server, type ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";

export type Fault =
  /** Answer with this status (and headers/body) instead of asking the registry. */
  | { kind: "status"; status: number; headers?: Record<string, string>; body?: string }
  /** Answer with this object (a synthetic manifest, say) instead of asking the registry. */
  | { kind: "serve"; contentType: string; body: Buffer; digest?: string }
  /** The registry's body with the byte at `at` (modulo the length) changed: same size, wrong digest. */
  | { kind: "corrupt"; at: number }
  /** Another object's bytes (and its Content-Length) in place of the one asked for. */
  | { kind: "replace"; body: Buffer }
  /** The full Content-Length is announced, `at` bytes are sent, then the connection ends (FIN). */
  | { kind: "truncate"; at: number }
  /** `at` bytes are sent, then the connection is reset (RST). */
  | { kind: "reset"; at: number }
  /** `at` bytes are sent, then nothing for `ms` (headers first unless `before`), then a reset. */
  | { kind: "stall"; at: number; ms: number; before?: boolean }
  /**
   * `extra` bytes more than the object: `mode` "chunked" sends them in a chunked body (no length
   * declared), "declared" declares and sends the longer length, "after" declares the true length
   * and writes the extra bytes behind the body on the same connection.
   */
  | { kind: "longer"; extra: number; mode: "chunked" | "declared" | "after" }
  /** 307 to the same URL (a loop while the rule lasts). */
  | { kind: "redirect" }
  /** 401 with the token challenge, whatever token came with the request. */
  | { kind: "unauthorized" }
  /** Forget every token issued, then answer 401 (a token that was valid expired or was revoked). */
  | { kind: "revoke" }
  /** The registry's own answer, unchanged, but only after `ms` (a slow registry or a long way). */
  | { kind: "delay"; ms: number };

export interface Rule {
  /** HTTP method to match; any when unset. */
  method?: string;
  /** Matched against the request's path (without the query). */
  path: string | RegExp;
  /** Matching requests let through before the fault starts. Default 0. */
  skip?: number;
  /** Matching requests that get the fault (then it is spent). Default: every one. */
  times?: number;
  fault: Fault;
}

export interface Hit {
  method: string;
  path: string;
  /** The fault applied, if any. */
  fault?: Fault["kind"];
  at: number;
}

export interface FaultProxy {
  /** `127.0.0.1:<port>`. */
  readonly host: string;
  readonly url: string;
  /** Replace the rules (each with fresh counters). */
  set(rules: Rule[]): void;
  /** No rules: a plain pass-through. */
  clear(): void;
  /** Requests seen since the last `set`/`clear`. */
  readonly hits: Hit[];
  /** Require Bearer tokens from this proxy's /token endpoint on /v2/ requests. */
  tokenAuth: boolean;
  /** Tokens issued so far. */
  readonly tokensIssued: number;
  close(): Promise<void>;
}

interface LiveRule extends Rule {
  seen: number;
  applied: number;
}

const SERVICE = "fault-proxy";

function matches(r: LiveRule, method: string, path: string): boolean {
  if (r.method && r.method !== method) return false;
  return typeof r.path === "string" ? r.path === path : r.path.test(path);
}

/** Ask the upstream registry, buffering the whole answer. */
function upstream(
  base: URL,
  req: IncomingMessage,
): Promise<{ status: number; headers: Record<string, string | string[]>; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(req.headers))
      if (v !== undefined && k !== "host" && k !== "authorization" && k !== "connection") headers[k] = v;
    const out = request(
      { host: base.hostname, port: base.port, method: req.method, path: req.url, headers },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.once("end", () => {
          const h: Record<string, string | string[]> = {};
          for (const [k, v] of Object.entries(res.headers))
            if (v !== undefined && k !== "connection" && k !== "keep-alive" && k !== "transfer-encoding")
              h[k] = v;
          resolve({ status: res.statusCode ?? 502, headers: h, body: Buffer.concat(chunks) });
        });
        res.once("error", reject);
      },
    );
    out.once("error", reject);
    req.pipe(out);
  });
}

/** Write `data`, waiting until the socket took it (so a destroy after it does not drop it). */
const writeAll = (res: ServerResponse, data: Buffer) =>
  new Promise<void>((resolve) => {
    if (data.length === 0) return resolve();
    res.write(data, () => resolve());
  });

/** Start a proxy on 127.0.0.1 forwarding to `upstreamUrl` (`http://127.0.0.1:<port>`). */
export async function startFaultProxy(upstreamUrl: string): Promise<FaultProxy> {
  const base = new URL(upstreamUrl);
  let rules: LiveRule[] = [];
  const hits: Hit[] = [];
  const tokens = new Set<string>();
  let issued = 0;
  const sockets = new Set<Socket>();
  const t0 = Date.now();
  let host = "";

  const challenge = (scope: string) =>
    `Bearer realm="http://${host}/token",service="${SERVICE}"${scope ? `,scope="${scope}"` : ""}`;
  const scopeOf = (path: string) => {
    const m = /^\/v2\/(.+)\/(manifests|blobs)\//.exec(path);
    return m ? `repository:${m[1]}:pull` : "";
  };
  const unauthorized = (res: ServerResponse, path: string) => {
    const body = JSON.stringify({ errors: [{ code: "UNAUTHORIZED", message: "authentication required" }] });
    res.writeHead(401, {
      "www-authenticate": challenge(scopeOf(path)),
      "content-type": "application/json",
      "content-length": Buffer.byteLength(body),
    });
    res.end(body);
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const method = req.method ?? "GET";
    const path = new URL(req.url ?? "/", "http://x").pathname;
    if (path === "/token") {
      const token = randomBytes(16).toString("hex");
      tokens.add(token);
      issued++;
      const body = JSON.stringify({ token, expires_in: 300, issued_at: new Date().toISOString() });
      res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
      res.end(body);
      hits.push({ method, path, at: Date.now() - t0 });
      return;
    }
    // a request without a valid token is challenged before any rule counts it
    if (proxy.tokenAuth && path.startsWith("/v2/")) {
      const auth = req.headers.authorization ?? "";
      if (!(auth.startsWith("Bearer ") && tokens.has(auth.slice(7)))) {
        hits.push({ method, path, at: Date.now() - t0 });
        return unauthorized(res, path);
      }
    }
    let rule: LiveRule | undefined;
    for (const r of rules) {
      if (!matches(r, method, path)) continue;
      r.seen++;
      if (r.seen <= (r.skip ?? 0) || r.applied >= (r.times ?? Number.POSITIVE_INFINITY)) continue;
      r.applied++;
      rule = r;
      break;
    }
    const fault = rule?.fault;
    hits.push({ method, path, fault: fault?.kind, at: Date.now() - t0 });
    if (!fault) {
      // pass through, streamed
      const headers: Record<string, string | string[]> = {};
      for (const [k, v] of Object.entries(req.headers))
        if (v !== undefined && k !== "host" && k !== "authorization" && k !== "connection") headers[k] = v;
      const out = request({ host: base.hostname, port: base.port, method, path: req.url, headers }, (up) => {
        const h: Record<string, string | string[]> = {};
        for (const [k, v] of Object.entries(up.headers))
          if (v !== undefined && k !== "connection" && k !== "keep-alive") h[k] = v;
        res.writeHead(up.statusCode ?? 502, h);
        up.pipe(res);
      });
      out.once("error", () => res.destroy());
      req.pipe(out);
      return;
    }
    switch (fault.kind) {
      case "status": {
        const body = fault.body ?? JSON.stringify({ errors: [{ code: "UNKNOWN", message: "injected" }] });
        res.writeHead(fault.status, { "content-length": Buffer.byteLength(body), ...(fault.headers ?? {}) });
        res.end(method === "HEAD" ? undefined : body);
        return;
      }
      case "serve": {
        res.writeHead(200, {
          "content-type": fault.contentType,
          "content-length": fault.body.length,
          ...(fault.digest ? { "docker-content-digest": fault.digest } : {}),
        });
        if (method === "HEAD") return void res.end();
        for (let i = 0; i < fault.body.length; i += 1 << 20)
          await writeAll(res, fault.body.subarray(i, i + (1 << 20)));
        res.end();
        return;
      }
      case "redirect":
        res.writeHead(307, { location: req.url ?? path, "content-length": 0 });
        res.end();
        return;
      case "unauthorized":
        return unauthorized(res, path);
      case "delay":
        await sleep(fault.ms);
        break;
      case "revoke":
        tokens.clear();
        return unauthorized(res, path);
      case "reset":
        // at 0: not even a status line
        if (fault.at === 0) {
          res.socket?.resetAndDestroy();
          return;
        }
        break;
      case "stall":
        if (fault.before) {
          // no status line at all for `ms`
          await sleep(fault.ms);
          res.socket?.resetAndDestroy();
          return;
        }
        break;
      default:
        break;
    }
    // The remaining faults bend the registry's own answer.
    let up: Awaited<ReturnType<typeof upstream>>;
    try {
      up = await upstream(base, req);
    } catch {
      res.destroy();
      return;
    }
    const body = up.body;
    const send = async (status: number, headers: Record<string, string | string[]>, data: Buffer) => {
      res.writeHead(status, headers);
      if (method !== "HEAD") await writeAll(res, data);
    };
    // whole bodies and the partial ones of resumes (206) alike
    if (
      (up.status !== 200 && up.status !== 206) ||
      method === "HEAD" ||
      body.length === 0 ||
      fault.kind === "delay"
    ) {
      res.writeHead(up.status, up.headers);
      res.end(method === "HEAD" ? undefined : body);
      return;
    }
    const at = (n: number) => Math.min(Math.max(0, n), Math.max(0, body.length - 1));
    switch (fault.kind) {
      case "corrupt": {
        const b = Buffer.from(body);
        const i = fault.at % b.length;
        b[i] = b[i]! ^ 0x5a;
        await send(up.status, up.headers, b);
        res.end();
        return;
      }
      case "replace":
        await send(200, { ...up.headers, "content-length": String(fault.body.length) }, fault.body);
        res.end();
        return;
      case "truncate":
        await send(up.status, up.headers, body.subarray(0, at(fault.at)));
        res.socket?.destroySoon();
        return;
      case "reset":
        await send(up.status, up.headers, body.subarray(0, at(fault.at)));
        res.socket?.resetAndDestroy();
        return;
      case "stall":
        await send(up.status, up.headers, body.subarray(0, at(fault.at)));
        await sleep(fault.ms);
        res.socket?.resetAndDestroy();
        return;
      case "longer": {
        const extra = randomBytes(fault.extra);
        if (fault.mode === "chunked") {
          const h = { ...up.headers };
          delete h["content-length"];
          res.writeHead(200, h);
          await writeAll(res, body);
          await writeAll(res, extra);
          res.end();
          return;
        }
        if (fault.mode === "declared") {
          await send(
            200,
            { ...up.headers, "content-length": String(body.length + extra.length) },
            Buffer.concat([body, extra]),
          );
          res.end();
          return;
        }
        // "after": the declared body, then junk on the connection where the next response goes
        await send(200, up.headers, body);
        res.end();
        res.socket?.write(extra);
        return;
      }
    }
  };

  const server: Server = createServer((req, res) => {
    handle(req, res).catch(() => res.destroy());
  });
  server.on("connection", (s: Socket) => {
    sockets.add(s);
    s.once("close", () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const addr = server.address();
  if (addr === null || typeof addr === "string") throw new Error("fault proxy: no TCP address");
  host = `127.0.0.1:${addr.port}`;

  const proxy: FaultProxy = {
    host,
    url: `http://${host}`,
    hits,
    tokenAuth: false,
    get tokensIssued() {
      return issued;
    },
    set(next) {
      rules = next.map((r) => ({ ...r, seen: 0, applied: 0 }));
      hits.length = 0;
    },
    clear() {
      rules = [];
      hits.length = 0;
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  return proxy;
}
