// Port forwarding into a pod's network namespace, over SPDY (`portforward.k8s.io`) and WebSocket
// (`v4.channel.k8s.io` port-forward framing).
//
// SPDY: the client opens an `error` and a `data` stream per connection, both carrying `port` and
// `requestID` headers; once both exist the server connects to 127.0.0.1:<port> in the pod and
// copies both ways. A failure is written to that request's error stream; the session lives on.
// WebSocket: the ports come in the query (`?port=80&port=8080`); port i uses channel 2i for data
// and 2i+1 for errors, and the server's first message on each channel is the port as 16-bit
// little-endian, then one connection per port for the session's life.
//
// berthd never enters the pod's netns itself (setns applies to a thread, and Node's threads are
// shared): each connection runs `nsenter --net=<netns> busybox nc 127.0.0.1 <port>` and relays
// through its stdio. That costs a process start per connection (a few milliseconds) and keeps the
// daemon's own sockets out of pod namespaces. Host-network pods (no netns) are dialled directly.
import net from "node:net";
import { Duplex, type Readable, type Writable } from "node:stream";
import { finished } from "node:stream/promises";
import { type FastChild, fastSpawn, lookPath } from "../../sys/spawn.js";
import { wsDecode, wsSend } from "./remotecommand.js";
import type { SpdySession, SpdyStream } from "./spdy.js";
import type { WsConnection } from "./websocket.js";

export const SPDY_PORTFORWARD_PROTOCOL = "portforward.k8s.io";
export const WS_PORTFORWARD_PROTOCOLS = ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"] as const;

export const NC_BINARY = "/bin/busybox";

/** A connection to the pod's port: a byte duplex plus how it failed (when it did). */
export interface PodConnection {
  stream: Duplex;
  /** Resolves with an error message when connecting or copying failed, "" when it ended well. */
  result: Promise<string>;
}

/** Connect to 127.0.0.1:port inside `netnsPath` ("" = the host's namespace). */
export function dialPod(netnsPath: string, port: number): PodConnection {
  if (!netnsPath) {
    const sock = net.connect(port, "127.0.0.1");
    const result = new Promise<string>((resolve) => {
      sock.once("error", (e) => resolve(e.message));
      sock.once("close", () => resolve(""));
    });
    return { stream: sock, result };
  }
  // posix_spawn, not child_process: a fork would leave every page of the daemon copy-on-write,
  // and the daemon's next writes to them would each fault (docs/performance.md, finding 49)
  let child: FastChild;
  try {
    child = fastSpawn(
      lookPath("nsenter"),
      [`--net=${netnsPath}`, "--", NC_BINARY, "nc", "127.0.0.1", String(port)],
      { env: process.env, stdio: ["pipe", "pipe", "pipe"] },
    );
  } catch (err) {
    const stream = new Duplex({
      read() {
        this.push(null);
      },
      write(_chunk, _enc, cb) {
        cb();
      },
    });
    return { stream, result: Promise.resolve((err as Error).message) };
  }
  let stderr = "";
  child.stderr!.on("data", (b: Buffer) => {
    stderr += b.toString();
  });
  const stderrClosed = new Promise<void>((resolve) => {
    child.stderr!.once("close", resolve);
    child.stderr!.once("error", () => resolve());
  });
  let exited = false;
  const result = child.exited.then(async ({ code, signal }) => {
    exited = true;
    await stderrClosed;
    return code === 0 ? "" : stderr.trim() || `relay exited with ${signal ?? code}`;
  });
  const stream = new RelayStream(child.stdout!, child.stdin!);
  stream.on("error", () => {});
  stream.once("close", () => {
    if (!exited) child.kill("SIGTERM");
  });
  return { stream, result };
}

/**
 * The relay's stdout and stdin as one duplex. Not Duplex.from: when the relay exits, its stdin
 * closes, and Duplex.from destroys the whole duplex on that (premature close), dropping whatever
 * the relay had written to stdout that was not read yet: the tail of a large transfer. Here the
 * two directions live apart: writes after the relay is gone are dropped, reads go on to the end.
 */
class RelayStream extends Duplex {
  constructor(
    private readonly out: Readable,
    private readonly input: Writable,
  ) {
    super({ allowHalfOpen: true });
    out.on("data", (b: Buffer) => {
      if (!this.push(b)) out.pause();
    });
    out.once("end", () => this.push(null));
    out.on("error", (err) => this.destroy(err));
    input.on("error", () => {}); // EPIPE once the relay exited: its exit status says why
  }

  override _read(): void {
    this.out.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.input.destroyed || this.input.writableEnded) {
      cb();
      return;
    }
    this.input.write(chunk, () => cb());
  }

  override _final(cb: (err?: Error | null) => void): void {
    if (!this.input.destroyed && !this.input.writableEnded) this.input.end();
    cb();
  }

  override _destroy(err: Error | null, cb: (err: Error | null) => void): void {
    this.out.destroy();
    this.input.destroy();
    cb(err);
  }
}

export type Dialer = (port: number) => PodConnection;

/** Serve the SPDY port-forward protocol on a session until the client closes it. */
export function serveSpdyPortForward(session: SpdySession, dial: Dialer, podName: string): void {
  const pending = new Map<string, { data?: SpdyStream; error?: SpdyStream }>();
  session.on("stream", (s: SpdyStream) => {
    const type = s.headers.streamtype ?? "";
    const port = Number(s.headers.port);
    const reqId = s.headers.requestid ?? "";
    if ((type !== "data" && type !== "error") || !Number.isInteger(port) || port <= 0 || port > 65535) {
      s.reset();
      return;
    }
    const p = pending.get(reqId) ?? {};
    if (p[type]) {
      s.reset();
      return;
    }
    p[type] = s;
    pending.set(reqId, p);
    if (!p.data || !p.error) return;
    pending.delete(reqId);
    forward(p.data, p.error, port);
  });

  const forward = (data: SpdyStream, error: SpdyStream, port: number) => {
    error.resume();
    const conn = dial(port);
    data.pipe(conn.stream);
    conn.stream.pipe(data);
    conn.stream.on("error", () => {});
    // a reset stream or a closed session drops the pod connection (and its relay) with it
    data.once("close", () => conn.stream.destroy());
    // The relay can be gone while the pod's last bytes still wait in conn.stream for the client's
    // flow control: the pipe ends `data` once they are written. Ending it here before that lost
    // the tail of a large transfer.
    const drained = finished(conn.stream, { writable: false }).catch(() => {});
    void conn.result.then(async (msg) => {
      if (msg) error.write(`error forwarding port ${port} to pod ${podName}: ${msg}`);
      error.end();
      await drained;
      if (!data.writableEnded) data.end();
    });
  };
}

/** Serve WebSocket port forwarding for `ports` until the client closes the connection. */
export function serveWsPortForward(
  ws: WsConnection,
  protocol: string,
  ports: number[],
  dial: Dialer,
  podName: string,
): void {
  const base64 = protocol.includes("base64");
  const conns: Duplex[] = [];
  let open = ports.length;
  ports.forEach((port, i) => {
    const portBytes = Buffer.alloc(2);
    portBytes.writeUInt16LE(port);
    void wsSend(ws, 2 * i, portBytes, base64);
    void wsSend(ws, 2 * i + 1, portBytes, base64);
    const conn = dial(port);
    conns[i] = conn.stream;
    let sending: Promise<unknown> = Promise.resolve();
    conn.stream.on("data", (b: Buffer) => {
      conn.stream.pause();
      sending = wsSend(ws, 2 * i, b, base64).then(() => conn.stream.resume());
    });
    // as for SPDY: every byte the pod sent goes out before the connection is closed
    const drained = finished(conn.stream, { writable: false }).catch(() => {});
    void conn.result.then(async (msg) => {
      await drained;
      await sending.catch(() => {});
      if (msg)
        await wsSend(
          ws,
          2 * i + 1,
          Buffer.from(`error forwarding port ${port} to pod ${podName}: ${msg}`),
          base64,
        );
      if (--open === 0) ws.close(1000);
    });
  });
  ws.on("message", (data: Buffer, binary: boolean) => {
    const m = wsDecode(data, binary, base64);
    if (!m || m.channel % 2 !== 0) return;
    conns[m.channel / 2]?.write(m.data);
  });
  ws.once("close", () => {
    for (const c of conns) c.destroy();
  });
}
