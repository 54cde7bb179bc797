// A gRPC client on node:http2 alone, for the berth CLI: the same typed `Client<S>` as client.ts,
// without grpc-js. grpc-js's channels, resolvers and load balancers, and the built-ins they load
// (tls, dns, zlib), made it the largest part of a command's start, and a CLI run makes one
// connection to one daemon and needs none of them: `berth version` against berthd went from
// ~350 to ~260–320 ms (docs/performance.md, finding 54). Tests and benchmarks
// keep grpc-js (client.ts), an implementation independent of berthd's server; this client is
// judged by the CLI's tests against the real containerd.
//
// The protocol as grpc-go speaks it: one HTTP/2 stream per call, POST /<service>/<method>, each
// message behind a 5-byte prefix (a compressed flag, never set here, and the length), the status
// in `grpc-status`/`grpc-message` trailers, or in the headers of a "trailers-only" answer.
import * as http2 from "node:http2";
import * as net from "node:net";
import {
  create,
  type DescMessage,
  type DescService,
  fromBinary,
  type MessageInitShape,
  toBinary,
} from "@bufbuild/protobuf";
import { fromGrpcStatus, GrpcCode } from "../base/errdefs.js";
import type { BidiCall, CallOptions, Client } from "./client.js";
import { LEASE_HEADER, NAMESPACE_HEADER } from "./handlers.js";
import {
  decodeGrpcMessage,
  decompressorFor,
  formatTimeout,
  frameMessage,
  MessageDecoder,
  statusError,
} from "./wire.js";

const { NGHTTP2_CANCEL } = http2.constants;

/** Flow-control windows: a blob read or a pull's progress is not throttled to 64 KiB round trips. */
const STREAM_WINDOW = 4 << 20;
const SESSION_WINDOW = 16 << 20;
/** Messages queued from a server stream before the stream is paused for its reader. */
const QUEUE_PAUSE = 64;

type In<I extends DescMessage> = MessageInitShape<I>;

/** Where to connect: `unix:/path` (or a bare path) or `host:port`. */
function connector(address: string): () => net.Socket {
  if (address.startsWith("unix://")) return () => net.connect({ path: address.slice("unix://".length) });
  if (address.startsWith("unix:")) return () => net.connect({ path: address.slice("unix:".length) });
  if (address.startsWith("/") || address.startsWith(".")) return () => net.connect({ path: address });
  const target = address.replace(/^[a-z]+:\/\//, "");
  const colon = target.lastIndexOf(":");
  const host = colon > 0 ? target.slice(0, colon).replace(/^\[|\]$/g, "") : target;
  const port = colon > 0 ? Number(target.slice(colon + 1)) : 80;
  return () => net.connect({ host, port });
}

/**
 * One call's stream: headers sent, messages decoded as they arrive, the status from the trailers.
 * `onMessage` gets each response; `done` settles with the call's outcome.
 */
class Call {
  readonly done: Promise<void>;
  private settle!: (err?: Error) => void;
  private settled = false;
  private timer: NodeJS.Timeout | undefined;
  private decoder: MessageDecoder;

  constructor(
    readonly stream: http2.ClientHttp2Stream,
    onMessage: (b: Buffer) => void,
    opts: CallOptions | undefined,
    maxReceive: number,
  ) {
    this.decoder = new MessageDecoder(maxReceive, null, (m) => onMessage(m as Buffer));
    this.done = new Promise<void>((resolve, reject) => {
      this.settle = (err) => {
        if (this.settled) return;
        this.settled = true;
        clearTimeout(this.timer);
        if (err) reject(err);
        else resolve();
      };
    });
    this.done.catch(() => {});
    if (opts?.timeoutMs)
      this.timer = setTimeout(
        () => this.abort(statusError("deadline exceeded", "context deadline exceeded")),
        opts.timeoutMs,
      );
    const signal = opts?.signal;
    if (signal) {
      const onAbort = () => this.abort(statusError("canceled", "context canceled"));
      if (signal.aborted) queueMicrotask(onAbort);
      else signal.addEventListener("abort", onAbort, { once: true });
      this.done.then(
        () => signal.removeEventListener("abort", onAbort),
        () => signal.removeEventListener("abort", onAbort),
      );
    }
    let status: { code: number; message: string } | undefined;
    const fromHeaders = (h: http2.IncomingHttpHeaders) => {
      const s = h["grpc-status"];
      if (s === undefined) return;
      const m = h["grpc-message"];
      status = { code: Number(s), message: decodeGrpcMessage(Array.isArray(m) ? m.join(",") : (m ?? "")) };
    };
    stream.on("response", (h) => {
      const st = Number(h[":status"]);
      if (st !== 200 && h["grpc-status"] === undefined) {
        this.abort(fromGrpcStatus(httpToCode(st), `unexpected HTTP status code received from server: ${st}`));
        return;
      }
      const encoding = h["grpc-encoding"];
      const decompress = decompressorFor(Array.isArray(encoding) ? encoding[0] : encoding);
      if (decompress === undefined) {
        this.abort(statusError("internal", `grpc: unknown response encoding ${JSON.stringify(encoding)}`));
        return;
      }
      if (decompress)
        this.decoder = new MessageDecoder(maxReceive, decompress, (m) => onMessage(m as Buffer));
      fromHeaders(h); // a trailers-only answer (an error before any message)
    });
    stream.on("trailers", fromHeaders);
    stream.on("data", (chunk: Buffer) => {
      if (this.settled) return;
      try {
        this.decoder.push(chunk);
      } catch (err) {
        this.abort(err as Error);
      }
    });
    stream.on("error", () => {}); // reported by "close", with the reason
    // The server's side ended: with a status, the call is over even if ours is still open (a
    // bidirectional stream that its client ends only once the answers stopped); "close" would
    // wait for both sides. Only a side still open is reset: once the request has ended, both
    // END_STREAMs close the stream, and an RST_STREAM after every unary call was one more frame
    // for the server to read.
    stream.on("end", () => {
      if (this.settled || !status) return;
      finish();
      if (!stream.closed && !stream.writableEnded) stream.close();
    });
    stream.on("close", () => {
      if (this.settled) return;
      finish();
    });
    const finish = () => {
      if (status) {
        if (status.code === 0) {
          if (this.decoder.partial) this.settle(statusError("internal", "stream ended inside a message"));
          else this.settle();
        } else this.settle(fromGrpcStatus(status.code, status.message));
        return;
      }
      const rst = stream.rstCode;
      const session = stream.session;
      // the connection went (or never came): what grpc-js calls a dropped connection
      if (!session || session.destroyed)
        this.settle(statusError("unavailable", "connection to the server closed before the call's status"));
      else if (rst === NGHTTP2_CANCEL) this.settle(statusError("canceled", "stream canceled by the server"));
      else if (rst === http2.constants.NGHTTP2_REFUSED_STREAM)
        this.settle(statusError("unavailable", "stream refused by the server"));
      else if (rst) this.settle(statusError("internal", `stream reset by the server (HTTP/2 code ${rst})`));
      else this.settle(statusError("unavailable", "connection closed before the call's status"));
    };
  }

  /** End the call from this side with `err`: the stream is reset (CANCEL). */
  abort(err: Error): void {
    if (this.settled) return;
    this.settle(err);
    if (!this.stream.destroyed) this.stream.close(NGHTTP2_CANCEL);
  }

  get finished(): boolean {
    return this.settled;
  }
}

function httpToCode(status: number): number {
  switch (status) {
    case 400:
      return GrpcCode.Internal;
    case 401:
      return GrpcCode.Unauthenticated;
    case 403:
      return GrpcCode.PermissionDenied;
    case 404:
      return GrpcCode.Unimplemented;
    case 429:
    case 502:
    case 503:
    case 504:
      return GrpcCode.Unavailable;
    default:
      return GrpcCode.Unknown;
  }
}

/** A connection to one daemon; calls share its HTTP/2 session. */
export class H2Connection {
  private session: http2.ClientHttp2Session | undefined;
  private readonly connect: () => net.Socket;
  private readonly maxReceive: number;

  constructor(
    readonly address: string,
    opts: { maxMessageSize?: number } = {},
  ) {
    this.connect = connector(address);
    this.maxReceive = opts.maxMessageSize ?? 16 << 20;
  }

  private open(): http2.ClientHttp2Session {
    if (this.session && !this.session.destroyed && !this.session.closed) return this.session;
    const s = http2.connect("http://localhost", {
      createConnection: () => this.connect(),
      settings: { initialWindowSize: STREAM_WINDOW, enablePush: false },
    });
    s.on("error", () => {}); // each call reports its own failure
    s.once("connect", () => {
      try {
        s.setLocalWindowSize(SESSION_WINDOW);
      } catch {
        // an older peer or a closing session: the default window still works
      }
    });
    // a CLI run must not be kept alive by an idle connection
    s.unref();
    this.session = s;
    return s;
  }

  /** Wait until the HTTP/2 connection is up, or fail naming the address. */
  ready(timeoutMs: number): Promise<void> {
    const s = this.open();
    if (s.connecting === false && !s.destroyed) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`no connection to ${this.address} within ${timeoutMs}ms`));
      }, timeoutMs);
      const onConnect = () => {
        cleanup();
        resolve();
      };
      const onError = (err: Error) => {
        cleanup();
        reject(new Error(`cannot connect to ${this.address}: ${err.message}`));
      };
      const onClose = () => onError(new Error("connection closed"));
      const cleanup = () => {
        clearTimeout(timer);
        s.off("connect", onConnect);
        s.off("error", onError);
        s.off("close", onClose);
      };
      s.once("connect", onConnect);
      s.once("error", onError);
      s.once("close", onClose);
    });
  }

  /** Ends the connection and every call still on it (a progress stream the server keeps open). */
  close(): void {
    this.session?.destroy();
    this.session = undefined;
  }

  private start(path: string, opts: CallOptions | undefined, onMessage: (b: Buffer) => void): Call {
    const headers: http2.OutgoingHttpHeaders = {
      ":method": "POST",
      ":path": path,
      ":authority": "localhost",
      "content-type": "application/grpc",
      te: "trailers",
      "user-agent": "berth-cli",
    };
    if (opts?.namespace) headers[NAMESPACE_HEADER] = opts.namespace;
    if (opts?.lease) headers[LEASE_HEADER] = opts.lease;
    if (opts?.timeoutMs) headers["grpc-timeout"] = formatTimeout(opts.timeoutMs);
    const session = this.open();
    // a call in flight keeps the process alive; an idle connection does not (as grpc-js)
    if (this.inFlight++ === 0) session.ref();
    const stream = session.request(headers, { endStream: false });
    const call = new Call(stream, onMessage, opts, this.maxReceive);
    const release = () => {
      if (--this.inFlight === 0 && !session.destroyed) session.unref();
    };
    call.done.then(release, release);
    return call;
  }

  private inFlight = 0;

  client<S extends DescService>(service: S): Client<S> {
    const out: Record<string, unknown> = {};
    for (const m of service.methods) {
      const input = m.input;
      const output = m.output;
      const path = `/${service.typeName}/${m.name}`;
      const encode = (msg: In<DescMessage>) => frameMessage(toBinary(input, create(input, msg)));
      const decode = (b: Buffer) => fromBinary(output, b);
      switch (m.methodKind) {
        case "unary":
          out[m.localName] = (req: In<DescMessage>, o?: CallOptions) => {
            let res: unknown;
            let count = 0;
            const call = this.start(path, o, (b) => {
              count++;
              res = decode(b);
            });
            call.stream.end(encode(req));
            return call.done.then(() => {
              if (count !== 1) throw statusError("internal", `expected one response message, got ${count}`);
              return res;
            });
          };
          break;
        case "server_streaming":
          out[m.localName] = (req: In<DescMessage>, o?: CallOptions) => {
            const q = new Queue(decode);
            const call = this.start(path, o, (b) => q.push(b));
            q.attach(call);
            call.stream.end(encode(req));
            return q.iterate();
          };
          break;
        case "client_streaming":
          out[m.localName] = async (reqs: AsyncIterable<In<DescMessage>>, o?: CallOptions) => {
            let res: unknown;
            let count = 0;
            const call = this.start(path, o, (b) => {
              count++;
              res = decode(b);
            });
            try {
              for await (const r of reqs) {
                if (call.finished) break;
                await write(call.stream, encode(r));
              }
              call.stream.end();
            } catch (err) {
              call.abort(err instanceof Error ? err : new Error(String(err)));
            }
            await call.done;
            if (count !== 1) throw statusError("internal", `expected one response message, got ${count}`);
            return res;
          };
          break;
        case "bidi_streaming":
          out[m.localName] = (o?: CallOptions): BidiCall<unknown, unknown, In<DescMessage>> => {
            const q = new Queue(decode);
            const call = this.start(path, o, (b) => q.push(b));
            q.attach(call);
            return {
              send: async (msg) => {
                if (call.finished) return;
                await write(call.stream, encode(msg));
              },
              end: () => {
                if (!call.stream.destroyed) call.stream.end();
              },
              cancel: () => call.abort(statusError("canceled", "context canceled")),
              responses: q.iterate(),
            };
          };
          break;
      }
    }
    return out as Client<S>;
  }
}

/** Write one message, waiting for the stream's buffer to drain (or the stream to end). */
function write(stream: http2.ClientHttp2Stream, data: Buffer): Promise<void> {
  if (stream.destroyed || stream.writableEnded) return Promise.resolve();
  if (stream.write(data)) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      stream.off("drain", done);
      stream.off("close", done);
      resolve();
    };
    stream.once("drain", done);
    stream.once("close", done);
  });
}

/** A server stream's messages for an async iterator: paused while its reader falls behind. */
class Queue<T> {
  private items: Buffer[] = [];
  private wake: (() => void) | undefined;
  private call!: Call;
  private ended = false;
  private error: Error | undefined;

  constructor(private readonly decode: (b: Buffer) => T) {}

  attach(call: Call): void {
    this.call = call;
    call.done.then(
      () => this.finish(),
      (err: Error) => this.finish(err),
    );
  }

  push(b: Buffer): void {
    this.items.push(b);
    if (this.items.length >= QUEUE_PAUSE) this.call.stream.pause();
    this.kick();
  }

  private finish(err?: Error): void {
    this.ended = true;
    this.error = err;
    this.kick();
  }

  private kick(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  async *iterate(): AsyncGenerator<T> {
    let complete = false;
    try {
      for (;;) {
        const b = this.items.shift();
        if (b) {
          if (this.items.length < QUEUE_PAUSE / 2 && this.call.stream.isPaused()) this.call.stream.resume();
          yield this.decode(b);
          continue;
        }
        if (this.ended) {
          if (this.error) throw this.error;
          complete = true;
          return;
        }
        await new Promise<void>((r) => {
          this.wake = r;
        });
      }
    } finally {
      // the reader stopped early: the call is cancelled, as grpc-js does when its stream is dropped
      if (!complete && !this.ended) this.call.abort(statusError("canceled", "context canceled"));
    }
  }
}
