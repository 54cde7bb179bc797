// The CRI stream server: the one-time URLs that Exec, Attach and PortForward return point here.
// A request's token is taken out of the cache on arrival (unknown, used or expired → 404), then
// the connection is upgraded to SPDY/3.1 (`Upgrade: SPDY/3.1`, protocol chosen through
// `X-Stream-Protocol-Version`) or to a WebSocket (`Sec-WebSocket-Protocol`), and handed to the
// exec, attach or port-forward code. Plain HTTP unless `enable_tls_streaming`; an upgraded
// connection idle for `stream_idle_timeout` is closed.
import { execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import type { AddressInfo, Socket } from "node:net";
import { networkInterfaces } from "node:os";
import { join } from "node:path";
import type { Duplex } from "node:stream";
import { promisify } from "node:util";
import type { Logger } from "../../base/log.js";
import type { AttachRequestInfo } from "./attach.js";
import type { ExecRequestInfo } from "./exec.js";
import {
  type Dialer,
  SPDY_PORTFORWARD_PROTOCOL,
  serveSpdyPortForward,
  serveWsPortForward,
  WS_PORTFORWARD_PROTOCOLS,
} from "./portforward.js";
import {
  type RemoteCommand,
  SPDY_EXEC_PROTOCOLS,
  type StreamOptions,
  spdyRemoteCommand,
  WS_EXEC_PROTOCOLS,
  wsRemoteCommand,
} from "./remotecommand.js";
import { SpdySession } from "./spdy.js";
import { TokenCache } from "./tokens.js";
import { acceptKey, WsConnection } from "./websocket.js";

const execFileP = promisify(execFile);

export type StreamRequest =
  | { kind: "exec"; req: ExecRequestInfo }
  | { kind: "attach"; req: AttachRequestInfo }
  | { kind: "portforward"; podSandboxId: string; podName: string; dial: Dialer };

export interface StreamHandlers {
  exec(req: ExecRequestInfo, rc: RemoteCommand): Promise<void>;
  attach(req: AttachRequestInfo, rc: RemoteCommand): Promise<void>;
}

export interface StreamServerOptions {
  address: string;
  /** 0: any free port. */
  port: number;
  /** PEM key pair; undefined for plain HTTP. */
  tls?: { cert: Buffer; key: Buffer };
  /** 0: never. */
  idleTimeoutMs: number;
  handlers: StreamHandlers;
  log: Logger;
  tokenTtlMs?: number;
}

/** The protocol the server picks: the client's first that the server speaks. */
export function negotiate(client: string[], server: readonly string[]): string | undefined {
  return client.find((p) => server.includes(p));
}

/** Values of a header that may be repeated or comma-joined. */
export function headerList(v: string | string[] | undefined): string[] {
  const all = Array.isArray(v) ? v : v === undefined ? [] : [v];
  return all
    .flatMap((x) => x.split(","))
    .map((x) => x.trim())
    .filter((x) => x !== "");
}

/** The host part of the URLs: the listen address, or this host's first address for a wildcard. */
function advertisedHost(address: string): string {
  let host = address;
  if (host === "" || host === "0.0.0.0" || host === "::") {
    host = "127.0.0.1";
    for (const list of Object.values(networkInterfaces()))
      for (const a of list ?? [])
        if (!a.internal && a.family === "IPv4") {
          host = a.address;
          break;
        }
  }
  return host.includes(":") ? `[${host}]` : host;
}

export class StreamServer {
  readonly tokens: TokenCache<StreamRequest>;
  private server: http.Server | undefined;
  private readonly sockets = new Set<Duplex>();
  private base = "";

  constructor(readonly opts: StreamServerOptions) {
    this.tokens = new TokenCache(opts.tokenTtlMs);
  }

  async start(): Promise<void> {
    const handler = (req: http.IncomingMessage, res: http.ServerResponse) => this.onRequest(req, res);
    const server = this.opts.tls
      ? https.createServer({ ...this.opts.tls }, handler)
      : http.createServer(handler);
    server.on("upgrade", (req: http.IncomingMessage, socket: Duplex, head: Buffer) =>
      this.onUpgrade(req, socket, head),
    );
    server.on("clientError", (_e, socket: Duplex) => socket.destroy());
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.opts.port, this.opts.address || undefined, () => {
        server.off("error", reject);
        resolve();
      });
    });
    this.server = server;
    const port = (server.address() as AddressInfo).port;
    this.base = `${this.opts.tls ? "https" : "http"}://${advertisedHost(this.opts.address)}:${port}`;
    this.opts.log.info(`CRI stream server listening on ${this.base}`);
  }

  get url(): string {
    return this.base;
  }

  /** Store a request and return its one-time URL. */
  register(r: StreamRequest): string {
    const token = this.tokens.put(r);
    return `${this.base}/${r.kind}/${token}`;
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    const srv = this.server;
    this.server = undefined;
    if (srv) await new Promise<void>((r) => srv.close(() => r()));
  }

  private lookup(url: string | undefined): StreamRequest | undefined {
    const m = /^\/(exec|attach|portforward)\/([A-Za-z0-9_-]+)(?:\?.*)?$/.exec(url ?? "");
    if (!m) return undefined;
    const r = this.tokens.take(m[2]!);
    return r && r.kind === m[1] ? r : undefined;
  }

  private onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const r = this.lookup(req.url);
    if (!r) {
      res.writeHead(404, { "Content-Type": "text/plain" }).end("404 page not found\n");
      return;
    }
    res
      .writeHead(400, { "Content-Type": "text/plain" })
      .end("unable to upgrade: missing upgrade headers in request\n");
  }

  private refuse(socket: Duplex, code: number, text: string, message: string): void {
    socket.end(
      `HTTP/1.1 ${code} ${text}\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(message)}\r\nConnection: close\r\n\r\n${message}`,
    );
  }

  private track(socket: Duplex): void {
    this.sockets.add(socket);
    socket.once("close", () => this.sockets.delete(socket));
    const idle = this.opts.idleTimeoutMs;
    if (idle > 0 && "setTimeout" in socket) (socket as Socket).setTimeout(idle, () => socket.destroy());
  }

  private onUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on("error", () => {});
    const r = this.lookup(req.url);
    if (!r) {
      this.refuse(socket, 404, "Not Found", "404 page not found\n");
      return;
    }
    const upgrade = (req.headers.upgrade ?? "").toLowerCase();
    if (upgrade === "websocket") this.upgradeWebSocket(req, socket, head, r);
    else if (upgrade === "spdy/3.1") this.upgradeSpdy(req, socket, head, r);
    else
      this.refuse(
        socket,
        400,
        "Bad Request",
        `unable to upgrade: unsupported protocol ${JSON.stringify(req.headers.upgrade)}\n`,
      );
  }

  private upgradeSpdy(req: http.IncomingMessage, socket: Duplex, head: Buffer, r: StreamRequest): void {
    const offered = headerList(req.headers["x-stream-protocol-version"]);
    const supported = r.kind === "portforward" ? [SPDY_PORTFORWARD_PROTOCOL] : SPDY_EXEC_PROTOCOLS;
    // a client naming no protocol speaks the first version of the protocol
    const protocol = offered.length === 0 ? supported[supported.length - 1]! : negotiate(offered, supported);
    if (!protocol) {
      this.refuse(
        socket,
        403,
        "Forbidden",
        `unable to upgrade: unable to negotiate protocol: client supports ${JSON.stringify(offered)}, server supports ${JSON.stringify(supported)}\n`,
      );
      return;
    }
    const extra = offered.length ? `X-Stream-Protocol-Version: ${protocol}\r\n` : "";
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n${extra}\r\n`,
    );
    this.track(socket);
    if (head.length) socket.unshift(head);
    const session = new SpdySession(socket as Socket, { server: true });
    if (r.kind === "portforward") {
      serveSpdyPortForward(session, r.dial, r.podName);
      return;
    }
    const o = streamOptions(r);
    spdyRemoteCommand(session, protocol, o).then(
      (rc) => this.run(r, rc),
      (err) => this.opts.log.debug("CRI stream: SPDY streams not created", { error: String(err) }),
    );
  }

  private upgradeWebSocket(req: http.IncomingMessage, socket: Duplex, head: Buffer, r: StreamRequest): void {
    const key = req.headers["sec-websocket-key"];
    if (typeof key !== "string" || req.headers["sec-websocket-version"] !== "13") {
      this.refuse(socket, 400, "Bad Request", "bad WebSocket handshake\n");
      return;
    }
    const offered = headerList(req.headers["sec-websocket-protocol"]);
    const supported: readonly string[] =
      r.kind === "portforward" ? WS_PORTFORWARD_PROTOCOLS : WS_EXEC_PROTOCOLS;
    const protocol = offered.length === 0 ? "channel.k8s.io" : negotiate(offered, supported);
    if (!protocol || (r.kind === "portforward" && offered.length === 0)) {
      this.refuse(
        socket,
        400,
        "Bad Request",
        `unable to upgrade: unable to negotiate protocol: client supports ${JSON.stringify(offered)}, server supports ${JSON.stringify(supported)}\n`,
      );
      return;
    }
    const proto = offered.length ? `Sec-WebSocket-Protocol: ${protocol}\r\n` : "";
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptKey(key)}\r\n${proto}\r\n`,
    );
    this.track(socket);
    if (head.length) socket.unshift(head);
    const ws = new WsConnection(socket, "server");
    if (r.kind === "portforward") {
      const q = new URL(req.url ?? "/", "http://x").searchParams;
      const ports = q
        .getAll("port")
        .flatMap((p) => p.split(","))
        .map(Number);
      if (ports.length === 0 || ports.some((p) => !Number.isInteger(p) || p <= 0 || p > 65535)) {
        ws.close(1008, "invalid or missing port query parameter");
        return;
      }
      serveWsPortForward(ws, protocol, ports, r.dial, r.podName);
      return;
    }
    this.run(r, wsRemoteCommand(ws, protocol, streamOptions(r)));
  }

  private run(r: StreamRequest, rc: RemoteCommand): void {
    const h = this.opts.handlers;
    const p =
      r.kind === "exec" ? h.exec(r.req, rc) : r.kind === "attach" ? h.attach(r.req, rc) : Promise.resolve();
    p.catch((err) => this.opts.log.warn("CRI stream failed", { kind: r.kind, error: String(err) }));
  }
}

function streamOptions(r: StreamRequest): StreamOptions {
  if (r.kind === "portforward") return { stdin: false, stdout: false, stderr: false, tty: false };
  return { stdin: r.req.stdin, stdout: r.req.stdout, stderr: r.req.stderr, tty: r.req.tty };
}

/**
 * The TLS key pair: the configured files, else a self-signed pair generated (with openssl) once
 * under `dir` and reused.
 */
export async function streamingKeyPair(
  certFile: string,
  keyFile: string,
  dir: string,
): Promise<{ cert: Buffer; key: Buffer }> {
  if (certFile || keyFile) {
    if (!certFile || !keyFile)
      throw new Error("both tls_cert_file and tls_key_file must be set for TLS streaming");
    return { cert: readFileSync(certFile), key: readFileSync(keyFile) };
  }
  const cert = join(dir, "stream-cert.pem");
  const key = join(dir, "stream-key.pem");
  if (!existsSync(cert) || !existsSync(key)) {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await execFileP("openssl", [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-days",
      "365",
      "-subj",
      "/O=berth/CN=berth-cri-streaming",
      "-addext",
      "subjectAltName=IP:127.0.0.1,DNS:localhost",
      "-keyout",
      key,
      "-out",
      cert,
    ]);
  }
  return { cert: readFileSync(cert), key: readFileSync(key) };
}
