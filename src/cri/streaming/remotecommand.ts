// Kubernetes' remote command protocols (exec and attach) over SPDY and WebSocket, as the
// kubelet's and client-go's clients speak them:
//
// - SPDY (`X-Stream-Protocol-Version` channel.k8s.io, v2, v3, v4): the client opens one stream
//   per channel, named by its `streamType` header: error, stdin, stdout, stderr and (v3+, TTY)
//   resize. The server waits until every stream the request asked for exists.
// - WebSocket (`Sec-WebSocket-Protocol` channel.k8s.io, v4, v5 and the base64.* forms): one
//   connection, every message prefixed by its channel: 0 stdin, 1 stdout, 2 stderr, 3 error,
//   4 resize; v5 adds 255 (the client closed a channel: [255, n]). The base64 forms send text
//   messages whose first character is the channel digit and the rest base64.
//
// The error channel ends the session: v4+ carry a v1.Status JSON (reason NonZeroExitCode with an
// ExitCode cause for a nonzero exit), older versions the error text, or nothing on success.
import { EventEmitter } from "node:events";
import { PassThrough, type Readable, Writable } from "node:stream";
import type { SpdySession, SpdyStream } from "./spdy.js";
import type { WsConnection } from "./websocket.js";

export const SPDY_EXEC_PROTOCOLS = [
  "v4.channel.k8s.io",
  "v3.channel.k8s.io",
  "v2.channel.k8s.io",
  "channel.k8s.io",
] as const;
export const WS_EXEC_PROTOCOLS = [
  "v5.channel.k8s.io",
  "v4.channel.k8s.io",
  "v4.base64.channel.k8s.io",
  "base64.channel.k8s.io",
  "channel.k8s.io",
] as const;

export const Channel = { stdin: 0, stdout: 1, stderr: 2, error: 3, resize: 4, close: 255 } as const;

/** How long the server waits for the client to open the streams it asked for (kubelet: 30s). */
export const STREAM_CREATION_TIMEOUT_MS = 30_000;

export interface StreamOptions {
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
  tty: boolean;
}

export interface TerminalSize {
  width: number;
  height: number;
}

/** How the command ended, for the error channel. */
export interface CommandResult {
  exitCode?: number;
  /** A failure other than the exit code (the command could not run, the container is gone). */
  error?: string;
}

/** The client's side of a remote command, as the exec/attach code uses it. */
export interface RemoteCommand {
  readonly protocol: string;
  stdin?: Readable;
  stdout?: Writable;
  stderr?: Writable;
  /** `resize` events with a TerminalSize. */
  readonly resize: EventEmitter;
  /** Write the result to the error channel and close the connection. */
  finish(result: CommandResult): Promise<void>;
  /** Resolves when the connection is gone (client went away or finish completed). */
  readonly closed: Promise<void>;
}

/** The error channel's content for a result under `protocol` (undefined: nothing to write). */
export function statusMessage(protocol: string, result: CommandResult, what = "command"): string | undefined {
  const v4 = /^(v4|v5)\./.test(protocol);
  const code = result.exitCode ?? 0;
  if (!result.error && code === 0)
    return v4 ? JSON.stringify({ metadata: {}, status: "Success" }) : undefined;
  if (result.error) {
    if (!v4) return result.error;
    return JSON.stringify({
      metadata: {},
      status: "Failure",
      message: result.error,
      reason: "InternalError",
      details: { causes: [{ message: result.error }] },
      code: 500,
    });
  }
  const text = `${what} terminated with non-zero exit code: exit status ${code}`;
  if (!v4) return text;
  return JSON.stringify({
    metadata: {},
    status: "Failure",
    message: text,
    reason: "NonZeroExitCode",
    details: { causes: [{ reason: "ExitCode", message: String(code) }] },
  });
}

/** Parses a stream of concatenated JSON objects (the resize channel) into terminal sizes. */
export class ResizeDecoder {
  private pending = "";
  constructor(private readonly onSize: (s: TerminalSize) => void) {}

  push(text: string): void {
    this.pending += text;
    for (;;) {
      const start = this.pending.indexOf("{");
      if (start < 0) {
        this.pending = "";
        return;
      }
      let depth = 0;
      let end = -1;
      for (let i = start; i < this.pending.length; i++) {
        const c = this.pending[i];
        if (c === "{") depth++;
        else if (c === "}" && --depth === 0) {
          end = i;
          break;
        }
      }
      if (end < 0) {
        this.pending = this.pending.slice(start);
        return;
      }
      const obj = this.pending.slice(start, end + 1);
      this.pending = this.pending.slice(end + 1);
      try {
        const v = JSON.parse(obj) as { Width?: number; Height?: number };
        if (typeof v.Width === "number" && typeof v.Height === "number")
          this.onSize({ width: v.Width, height: v.Height });
      } catch {
        // a malformed size is dropped, as the kubelet does
      }
    }
  }
}

/** Which SPDY streams a request needs before the command starts. */
export function expectedSpdyStreams(protocol: string, o: StreamOptions): string[] {
  const out = ["error"];
  if (o.stdin) out.push("stdin");
  if (o.stdout) out.push("stdout");
  if (o.stderr && !o.tty) out.push("stderr");
  if (o.tty && (protocol === "v3.channel.k8s.io" || protocol === "v4.channel.k8s.io")) out.push("resize");
  return out;
}

/** Waits for the client's streams on a SPDY session, then presents them as a RemoteCommand. */
export function spdyRemoteCommand(
  session: SpdySession,
  protocol: string,
  o: StreamOptions,
  timeoutMs = STREAM_CREATION_TIMEOUT_MS,
): Promise<RemoteCommand> {
  const want = expectedSpdyStreams(protocol, o);
  const got = new Map<string, SpdyStream>();
  const closed = new Promise<void>((r) => session.once("close", () => r()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      session.off("stream", onStream);
      session.destroy();
      reject(new Error(`timed out waiting for client to create streams (${want.join(", ")})`));
    }, timeoutMs);
    const onClose = () => {
      clearTimeout(timer);
      reject(new Error("connection closed before the streams were created"));
    };
    session.once("close", onClose);
    const onStream = (s: SpdyStream) => {
      const type = s.headers.streamtype ?? "";
      if (!want.includes(type) || got.has(type)) {
        s.reset();
        return;
      }
      got.set(type, s);
      if (got.size < want.length) return;
      clearTimeout(timer);
      session.off("stream", onStream);
      session.off("close", onClose);
      const resize = new EventEmitter();
      const rs = got.get("resize");
      if (rs) {
        const dec = new ResizeDecoder((sz) => resize.emit("resize", sz));
        rs.on("data", (b: Buffer) => dec.push(b.toString("utf8")));
      }
      // streams the client only writes to are drained so their windows keep moving
      for (const t of ["error", "stdout", "stderr"]) got.get(t)?.resume();
      const err = got.get("error")!;
      resolve({
        protocol,
        stdin: got.get("stdin"),
        stdout: got.get("stdout"),
        stderr: got.get("stderr"),
        resize,
        closed,
        async finish(result) {
          const msg = statusMessage(protocol, result);
          await Promise.all(
            ["stdout", "stderr"].map((t) => {
              const s = got.get(t);
              return s && !s.writableEnded ? new Promise<void>((r) => s.end(r)) : undefined;
            }),
          );
          if (msg !== undefined) await new Promise<void>((r) => err.write(msg, () => r()));
          await new Promise<void>((r) => err.end(r));
          session.destroy();
        },
      });
    };
    session.on("stream", onStream);
  });
}

/** Writable end of one output channel of a WebSocket session. */
export function wsChannelWriter(ws: WsConnection, channel: number, base64: boolean): Writable {
  return new Writable({
    write(chunk: Buffer, _enc, cb) {
      wsSend(ws, channel, chunk, base64).then(() => cb(), cb);
    },
  });
}

export function wsSend(ws: WsConnection, channel: number, data: Buffer, base64: boolean): Promise<void> {
  if (ws.closed) return Promise.resolve();
  if (base64) return ws.send(String(channel) + data.toString("base64"), false);
  return ws.send(Buffer.concat([Buffer.from([channel]), data]), true);
}

/** Splits a client message into channel and payload (undefined for an empty message). */
export function wsDecode(
  data: Buffer,
  binary: boolean,
  base64: boolean,
): { channel: number; data: Buffer } | undefined {
  if (data.length === 0) return undefined;
  if (base64 && !binary) {
    const ch = data[0]! - 0x30;
    return { channel: ch, data: Buffer.from(data.subarray(1).toString("ascii"), "base64") };
  }
  return { channel: data[0]!, data: data.subarray(1) };
}

/** A remote command over a WebSocket connection in one of the channel protocols. */
export function wsRemoteCommand(ws: WsConnection, protocol: string, o: StreamOptions): RemoteCommand {
  const base64 = protocol.includes("base64");
  const v5 = protocol.startsWith("v5.");
  const resize = new EventEmitter();
  const dec = new ResizeDecoder((sz) => resize.emit("resize", sz));
  const stdin = o.stdin ? new PassThrough() : undefined;
  const closed = new Promise<void>((r) => ws.once("close", () => r()));
  ws.on("message", (data: Buffer, binary: boolean) => {
    const m = wsDecode(data, binary, base64);
    if (!m) return;
    if (m.channel === Channel.stdin) stdin?.write(m.data);
    else if (m.channel === Channel.resize) dec.push(m.data.toString("utf8"));
    else if (v5 && m.channel === Channel.close && m.data[0] === Channel.stdin) stdin?.end();
  });
  ws.once("close", () => stdin?.end());
  const stdout = o.stdout ? wsChannelWriter(ws, Channel.stdout, base64) : undefined;
  const stderr = o.stderr && !o.tty ? wsChannelWriter(ws, Channel.stderr, base64) : undefined;
  // an empty message on each channel the server writes tells the client it is open
  for (const [on, ch] of [
    [o.stdout, Channel.stdout],
    [o.stderr && !o.tty, Channel.stderr],
    [true, Channel.error],
  ] as const)
    if (on) void wsSend(ws, ch, Buffer.alloc(0), base64);
  return {
    protocol,
    stdin,
    stdout,
    stderr,
    resize,
    closed,
    async finish(result) {
      for (const w of [stdout, stderr]) if (w && !w.writableEnded) await new Promise<void>((r) => w.end(r));
      const msg = statusMessage(protocol, result);
      if (msg !== undefined) await wsSend(ws, Channel.error, Buffer.from(msg), base64);
      ws.close(1000);
    },
  };
}
