// A SPDY/3.1 client of Kubernetes' streaming protocols, as client-go's SPDY executor and port
// forwarder behave: the HTTP upgrade with X-Stream-Protocol-Version, then one stream per
// channel (exec/attach: error first, then stdin/stdout/stderr/resize) or an error and a data
// stream per forwarded connection. The session framing is berth's (src/cri/streaming/spdy.ts);
// test/unit/spdy.test.ts checks that framing byte for byte against the SPDY/3 draft.
import net from "node:net";
import type { Duplex } from "node:stream";
import tls from "node:tls";
import { SpdySession, type SpdyStream } from "../../src/cri/streaming/spdy.js";

export interface UpgradeResult {
  status: number;
  headers: Record<string, string>;
  body: string;
  socket: Duplex;
}

/** Send an HTTP/1.1 GET with `headers` and read the response head (and, when not 101, its body). */
export function rawRequest(url: string, headers: Record<string, string>): Promise<UpgradeResult> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const port = Number(u.port);
    const host = u.hostname.replace(/^\[|\]$/g, "");
    const socket: net.Socket =
      u.protocol === "https:"
        ? tls.connect({ host, port, rejectUnauthorized: false })
        : net.connect(port, host);
    const lines = [`GET ${u.pathname}${u.search} HTTP/1.1`, `Host: ${u.host}`];
    for (const [k, v] of Object.entries(headers)) lines.push(`${k}: ${v}`);
    socket.once(u.protocol === "https:" ? "secureConnect" : "connect", () =>
      socket.write(`${lines.join("\r\n")}\r\n\r\n`),
    );
    let buf = Buffer.alloc(0);
    const onData = (b: Buffer) => {
      buf = Buffer.concat([buf, b]);
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) return;
      const head = buf.subarray(0, end).toString("latin1").split("\r\n");
      const status = Number(head[0]!.split(" ")[1]);
      const hs: Record<string, string> = {};
      for (const l of head.slice(1)) {
        const i = l.indexOf(":");
        hs[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
      }
      const rest = buf.subarray(end + 4);
      if (status === 101) {
        socket.off("data", onData);
        socket.pause();
        if (rest.length) socket.unshift(rest);
        resolve({ status, headers: hs, body: "", socket });
        return;
      }
      socket.off("data", onData);
      let body = rest.toString();
      socket.on("data", (x: Buffer) => {
        body += x.toString();
      });
      socket.once("close", () => resolve({ status, headers: hs, body, socket }));
      socket.end();
    };
    socket.on("data", onData);
    socket.once("error", reject);
  });
}

export interface SpdyConnection {
  session: SpdySession;
  protocol: string;
}

/** Upgrade to SPDY/3.1 offering `protocols`; throws with the status and body when refused. */
export async function spdyConnect(url: string, protocols: string[]): Promise<SpdyConnection> {
  const r = await rawRequest(url, {
    Connection: "Upgrade",
    Upgrade: "SPDY/3.1",
    ...(protocols.length ? { "X-Stream-Protocol-Version": protocols.join(", ") } : {}),
  });
  if (r.status !== 101) throw new Error(`upgrade refused: ${r.status} ${r.body.trim()}`);
  const session = new SpdySession(r.socket as net.Socket, { server: false });
  r.socket.resume();
  return { session, protocol: r.headers["x-stream-protocol-version"] ?? "" };
}

const collect = (s: SpdyStream | undefined): Promise<string> =>
  new Promise((resolve) => {
    if (!s) return resolve("");
    let out = "";
    s.on("data", (b: Buffer) => {
      out += b.toString("utf8");
    });
    s.once("end", () => resolve(out));
    s.once("close", () => resolve(out));
  });

export interface ExecOptions {
  protocols?: string[];
  stdin?: string | Buffer;
  /** Keep stdin open this long after writing (ms) before half-closing it. */
  stdinHoldMs?: number;
  stdout?: boolean;
  stderr?: boolean;
  tty?: boolean;
  /** Sizes sent on the resize stream, before anything else. */
  resize?: { Width: number; Height: number }[];
  /** Called with stdout data as it arrives. */
  onStdout?: (chunk: string, stdin: SpdyStream | undefined) => void;
}

export interface ExecResult {
  protocol: string;
  stdout: string;
  stderr: string;
  /** What the error stream carried. */
  error: string;
}

/** Run an exec/attach URL to the end. */
export async function spdyExec(url: string, o: ExecOptions = {}): Promise<ExecResult> {
  const { session, protocol } = await spdyConnect(url, o.protocols ?? ["v4.channel.k8s.io"]);
  const open = (type: string) => session.open({ streamType: type });
  const error = open("error");
  error.end();
  const stdin = o.stdin !== undefined ? open("stdin") : undefined;
  const stdout = o.stdout !== false ? open("stdout") : undefined;
  if (stdout) stdout.end();
  const stderr = o.stderr && !o.tty ? open("stderr") : undefined;
  if (stderr) stderr.end();
  const resize = o.tty && /^v[34]\./.test(protocol) ? open("resize") : undefined;
  for (const sz of o.resize ?? []) resize?.write(JSON.stringify(sz));
  if (stdout && o.onStdout) stdout.on("data", (b: Buffer) => o.onStdout?.(b.toString(), stdin));
  const outs = Promise.all([collect(stdout), collect(stderr), collect(error)]);
  if (stdin) {
    stdin.write(o.stdin!);
    if (o.stdinHoldMs !== undefined) setTimeout(() => stdin.end(), o.stdinHoldMs);
    else if (!o.onStdout) stdin.end();
  }
  const [out, err, errStream] = await outs;
  resize?.destroy();
  session.destroy();
  return { protocol, stdout: out, stderr: err, error: errStream };
}

export interface ForwardedConnection {
  data: SpdyStream;
  /** The error stream's content once it closed. */
  error: Promise<string>;
}

/** A SPDY port-forward session: `connect(port)` opens one forwarded connection. */
export async function spdyPortForward(url: string) {
  const { session, protocol } = await spdyConnect(url, ["portforward.k8s.io"]);
  let next = 0;
  return {
    session,
    protocol,
    connect(port: number): ForwardedConnection {
      const requestID = String(next++);
      const error = session.open({ streamType: "error", port: String(port), requestID });
      error.end();
      const data = session.open({ streamType: "data", port: String(port), requestID });
      return { data, error: collect(error) };
    },
    close() {
      session.destroy();
    },
  };
}
