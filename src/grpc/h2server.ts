// berthd's gRPC server: the gRPC-over-HTTP/2 protocol on berth's own HTTP/2 connection layer
// (h2conn.ts), dispatching to the typed handlers of handlers.ts. Per call it costs one stream
// object, one call object and the handler itself; there are no interceptor chains, metadata
// objects, listeners or stream wrappers between the socket and the service.
//
// A call: the client POSTs to /<package.Service>/<Method> with content-type application/grpc,
// custom metadata as lowercase headers and an optional grpc-timeout; the body is a sequence of
// length-prefixed messages ended by the client's half-close. The answer is :status 200 headers,
// the length-prefixed responses, then trailers carrying grpc-status and grpc-message; a call
// that fails before sending a response message answers with one HEADERS frame ("trailers-only").

import net from "node:net";
import {
  create,
  type DescMessage,
  type DescService,
  fromBinary,
  type MessageInitShape,
  toBinary,
} from "@bufbuild/protobuf";
import { errCanceled, GrpcCode, toGrpcStatus } from "../base/errdefs.js";
import { H2Connection, type H2Stream, type StreamHandler } from "./h2conn.js";
import {
  CallContext,
  type CallObserver,
  EncodedMessage,
  type MethodCounters,
  type MethodEntry,
  type MethodKind,
  methodEntries,
  type ServiceImpl,
} from "./handlers.js";
import { encodeHeaderBlock } from "./hpack.js";
import {
  decompressorFor,
  encodeGrpcMessage,
  frameMessage,
  MessageDecoder,
  parseTimeout,
  statusError,
} from "./wire.js";

export interface H2ServerOptions {
  /** Largest request message accepted (containerd's default: 16 MiB). */
  maxRecvMessageSize?: number;
  /** Largest response message sent (containerd's default: 16 MiB). */
  maxSendMessageSize?: number;
  /** HTTP/2 per-stream receive window (SETTINGS_INITIAL_WINDOW_SIZE). */
  initialWindowSize?: number;
  /** HTTP/2 connection-level receive window. */
  connectionWindowSize?: number;
  /** Largest DATA frame the peer may send us (SETTINGS_MAX_FRAME_SIZE). */
  maxFrameSize?: number;
  /** Concurrent calls per connection. */
  maxConcurrentStreams?: number;
  /** Unsent answer bytes per connection before new calls are refused (REFUSED_STREAM). */
  maxQueuedBytes?: number;
  /** Told about connection-level errors (a client that speaks garbage, a reset socket). */
  onError?: (err: Error) => void;
  /** The counters of each method added (called once per method, at addService). */
  counters?: (path: string, kind: MethodKind) => MethodCounters;
}

const DEFAULT_MAX_MESSAGE = 16 << 20;

const CONTENT_TYPE = "application/grpc";
/** Header blocks every answer uses, encoded once. */
const RESPONSE_HEADERS = encodeHeaderBlock([
  [":status", "200"],
  ["content-type", CONTENT_TYPE],
]);
const OK_TRAILERS = encodeHeaderBlock([["grpc-status", "0"]]);

// Shared abort reasons: one object instead of a DOMException per ended call.
const CANCELLED = errCanceled("context canceled");
const DEADLINE = statusError("deadline exceeded", "context deadline exceeded");

/** application/grpc, optionally with a +subtype (application/grpc+proto) or parameters. */
function isGrpcContentType(ct: string | undefined): boolean {
  if (!ct?.startsWith(CONTENT_TYPE)) return false;
  const next = ct[CONTENT_TYPE.length];
  return next === undefined || next === "+" || next === ";";
}

function trailersOnly(code: number, message: string, httpStatus = 200): Buffer {
  const h: [string, string][] = [
    [":status", String(httpStatus)],
    ["content-type", CONTENT_TYPE],
    ["grpc-status", String(code)],
  ];
  if (message) h.push(["grpc-message", encodeGrpcMessage(message)]);
  return encodeHeaderBlock(h);
}

function statusTrailers(code: number, message: string): Buffer {
  if (code === 0) return OK_TRAILERS;
  const h: [string, string][] = [["grpc-status", String(code)]];
  if (message) h.push(["grpc-message", encodeGrpcMessage(message)]);
  return encodeHeaderBlock(h);
}

const first = (v: string | string[] | undefined): string | undefined => (typeof v === "string" ? v : v?.[0]);

/** Requests waiting unread before the stream stops crediting the client's window (which stops it). */
const QUEUE_MAX_ITEMS = 16;
const QUEUE_MAX_BYTES = 4 << 20;

/**
 * Requests of a client- or bidi-streaming call as an async iterator. Pauses the stream (no more
 * window for the client) while too many wait unread; a handler that stops early (return()) lets
 * the rest of the client's messages be discarded so the client is never blocked.
 */
class RequestQueue implements AsyncIterator<unknown> {
  private items: unknown[] = [];
  private sizes: number[] = [];
  private bytes = 0;
  private waiter: { resolve: (r: IteratorResult<unknown>) => void; reject: (e: unknown) => void } | undefined;
  private ended = false;
  private error: unknown;
  private returned = false;
  private paused = false;

  constructor(private readonly stream: H2Stream) {}

  push(msg: unknown, size: number): void {
    if (this.returned || this.ended) return;
    const w = this.waiter;
    if (w) {
      this.waiter = undefined;
      w.resolve({ value: msg, done: false });
      return;
    }
    this.items.push(msg);
    this.sizes.push(size);
    this.bytes += size;
    if ((this.items.length >= QUEUE_MAX_ITEMS || this.bytes >= QUEUE_MAX_BYTES) && !this.paused) {
      this.paused = true;
      this.stream.pause();
    }
  }

  /** The client half-closed (err undefined), or the call ended with an error. */
  end(err?: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.error = err;
    const w = this.waiter;
    if (!w) return;
    this.waiter = undefined;
    if (err !== undefined && this.items.length === 0) w.reject(err);
    else w.resolve({ value: undefined, done: true });
  }

  next(): Promise<IteratorResult<unknown>> {
    if (this.items.length > 0) {
      const value = this.items.shift();
      this.bytes -= this.sizes.shift()!;
      if (this.paused && this.items.length <= QUEUE_MAX_ITEMS / 4 && this.bytes <= QUEUE_MAX_BYTES / 4) {
        this.paused = false;
        this.stream.resume();
      }
      return Promise.resolve({ value, done: false });
    }
    if (this.ended) {
      if (this.error !== undefined) return Promise.reject(this.error);
      return Promise.resolve({ value: undefined, done: true });
    }
    if (this.returned) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  return(): Promise<IteratorResult<unknown>> {
    this.returned = true;
    this.items = [];
    this.sizes = [];
    this.bytes = 0;
    if (this.paused) {
      this.paused = false;
      this.stream.resume();
    }
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterator<unknown> {
    return this;
  }
}

/** One call in progress. */
class ServerCall implements StreamHandler {
  readonly ctx: CallContext;
  /** The answer is complete (or can no longer be sent); later results are dropped. */
  private finished = false;
  private headersSent = false;
  private timer: NodeJS.Timeout | undefined;
  private decoder: MessageDecoder | undefined;
  /** Unary and server-streaming: the one request, once it arrived. */
  private gotRequest = false;
  private queue: RequestQueue | undefined;
  private drainWaiter: (() => void) | undefined;
  /** performance.now() at the start, while the method's call durations are wanted. */
  private t0 = 0;

  constructor(
    private readonly server: H2GrpcServer,
    private readonly stream: H2Stream,
    private readonly m: MethodEntry,
  ) {
    const headers = stream.headers;
    this.ctx = new CallContext(headers);
    stream.handler = this;
    const c = m.counters;
    if (c) {
      c.started++;
      if (c.seconds) this.t0 = performance.now();
    }
    const timeout = first(headers["grpc-timeout"]);
    if (timeout !== undefined) {
      const ms = parseTimeout(timeout);
      if (ms === undefined) {
        this.fail(statusError("internal", `transport: malformed grpc-timeout: ${timeout}`));
        return;
      }
      this.timer = setTimeout(() => this.onDeadline(), Math.min(ms, 0x7fffffff));
    }
    const encoding = first(headers["grpc-encoding"]);
    const decompress = decompressorFor(encoding);
    if (decompress === undefined) {
      this.fail(
        statusError("not implemented", `grpc: Decompressor is not installed for grpc-encoding "${encoding}"`),
      );
      return;
    }
    const streaming = m.kind === "client_streaming" || m.kind === "bidi_streaming";
    this.decoder = new MessageDecoder(server.maxRecv, decompress, (b) =>
      streaming ? this.onStreamedRequest(b) : this.onSingleRequest(b),
    );
    if (streaming) {
      const q = new RequestQueue(stream);
      this.queue = q;
      this.start(q);
    }
  }

  onData(chunk: Buffer): void {
    if (this.finished) return; // the answer is out; the rest of the body is of no use
    try {
      this.decoder!.push(chunk);
    } catch (err) {
      this.fail(err);
    }
  }

  onEnd(): void {
    if (this.finished) return;
    if (this.decoder!.partial) {
      this.fail(statusError("internal", "grpc: request stream ended in the middle of a message"));
      return;
    }
    if (this.queue) this.queue.end();
    // grpc-go's answer to a call without its request message
    else if (!this.gotRequest) this.fail(statusError("unknown", "EOF"));
  }

  private decode(b: Uint8Array): unknown {
    try {
      return fromBinary(this.m.input, b);
    } catch (err) {
      throw statusError("internal", `grpc: error unmarshalling request: ${(err as Error).message}`);
    }
  }

  private onSingleRequest(b: Uint8Array): void {
    if (this.gotRequest)
      throw statusError("internal", "grpc: more than one request message for a non-client-streaming call");
    this.gotRequest = true;
    if (this.m.counters) this.m.counters.msgReceived++;
    this.start(this.decode(b));
  }

  private onStreamedRequest(b: Uint8Array): void {
    if (this.m.counters) this.m.counters.msgReceived++;
    this.queue!.push(this.decode(b), b.byteLength);
  }

  /** Run the handler on its request (or request iterable). */
  private start(req: unknown): void {
    const m = this.m;
    let res: unknown;
    try {
      res = m.fn(req, this.ctx);
    } catch (err) {
      this.fail(err);
      return;
    }
    if (m.kind === "unary" || m.kind === "client_streaming") {
      if (res instanceof Promise)
        res.then(
          (r) => this.reply(r),
          (err) => this.fail(err),
        );
      else this.reply(res);
    } else {
      this.pump(res as AsyncIterable<unknown>).catch((err) => this.fail(err));
    }
  }

  private encode(res: unknown): Buffer | readonly Buffer[] {
    if (res instanceof EncodedMessage) {
      const f = res.framed;
      const n = res.length;
      this.checkSize(n);
      f[0] = 0;
      f.writeUInt32BE(n, 1);
      return res.rest.length === 0 ? f : [f, ...res.rest];
    }
    const out = this.m.output;
    const bin = toBinary(out, create(out, res as MessageInitShape<DescMessage>));
    this.checkSize(bin.byteLength);
    return frameMessage(bin);
  }

  private checkSize(n: number): void {
    if (n > this.server.maxSend)
      throw statusError(
        "resource exhausted",
        `grpc: trying to send message larger than max (${n} vs. ${this.server.maxSend})`,
      );
  }

  /** A unary answer: headers, the message and trailers in one go. */
  private reply(res: unknown): void {
    if (this.finished) return;
    let frame: Buffer | readonly Buffer[];
    try {
      frame = this.encode(res);
    } catch (err) {
      this.fail(err);
      return;
    }
    this.finished = true;
    this.settle();
    this.count(0, 1);
    this.m.observe?.(this.m.path, this.m.kind, 0);
    this.headersSent = true;
    this.stream.reply(RESPONSE_HEADERS, frame, OK_TRAILERS);
  }

  /** Stream responses, waiting for the client to take them in when HTTP/2 flow control says so. */
  private async pump(it: AsyncIterable<unknown>): Promise<void> {
    const stream = this.stream;
    for await (const res of it) {
      if (this.finished) return; // cancelled or past the deadline: leaving the loop ends the handler
      const frame = this.encode(res);
      if (this.m.counters) this.m.counters.msgSent++;
      stream.holdForTurn();
      if (!this.headersSent) {
        this.headersSent = true;
        stream.sendHeaders(RESPONSE_HEADERS);
      }
      if (!stream.write(frame)) {
        await new Promise<void>((resolve) => {
          this.drainWaiter = resolve;
        });
        if (this.finished) return;
      }
    }
    this.finish(0, "");
  }

  onDrain(): void {
    const w = this.drainWaiter;
    this.drainWaiter = undefined;
    w?.();
  }

  private fail(err: unknown): void {
    if (this.finished) return;
    const { code, message } = toGrpcStatus(err);
    this.finish(code, message, err);
  }

  /** Send the status: as trailers after the responses, or alone when none was sent. */
  private finish(code: number, message: string, cause?: unknown): void {
    if (this.finished) return;
    this.finished = true;
    this.settle();
    this.count(code, 0);
    this.m.observe?.(this.m.path, this.m.kind, code, cause === undefined ? undefined : { message, cause });
    if (!this.headersSent) {
      this.headersSent = true;
      this.stream.sendTrailersOnly(trailersOnly(code, message));
    } else this.stream.end(statusTrailers(code, message));
  }

  /** Count the finished call (and the message a unary answer carries) in the method's counters. */
  private count(code: number, sent: number): void {
    const c = this.m.counters;
    if (!c) return;
    c.msgSent += sent;
    if (code < c.handled.length) c.handled[code]!++;
    if (this.t0 > 0) c.seconds?.observe((performance.now() - this.t0) / 1000);
  }

  /**
   * The call is over for the handler's side: stop timers, unblock waiters, and end the call's
   * context as Go ends a handler's context with its RPC (a no-op when nothing listens).
   */
  private settle(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.ctx.abort(CANCELLED);
    if (this.queue) this.queue.end(CANCELLED);
    this.onDrain();
    // a client still sending after the answer: keep crediting (and dropping) its data so it is
    // never stuck on flow control, and the stream can close
    this.stream.resume();
  }

  private onDeadline(): void {
    this.timer = undefined;
    if (this.finished) return;
    this.ctx.abort(DEADLINE);
    this.finish(GrpcCode.DeadlineExceeded, DEADLINE.message, DEADLINE);
  }

  onClose(): void {
    this.server.callEnded();
    if (this.finished) return;
    // reset by the client (or the connection went away) before the answer was complete
    this.finished = true;
    this.settle();
    this.count(GrpcCode.Canceled, 0);
    this.m.observe?.(this.m.path, this.m.kind, GrpcCode.Canceled, {
      message: CANCELLED.message,
      cause: CANCELLED,
    });
  }
}

/** A gRPC server on berth's HTTP/2 layer (cleartext, prior knowledge, as over unix sockets). */
export class H2GrpcServer {
  readonly maxRecv: number;
  readonly maxSend: number;
  private readonly routes = new Map<string, MethodEntry>();
  private readonly serviceNames = new Set<string>();
  private listener: net.Server | undefined;
  private readonly connections = new Set<H2Connection>();
  private active = 0;
  private idleWaiters: (() => void)[] = [];
  private listening = false;
  private readonly settings;

  constructor(private readonly opts: H2ServerOptions = {}) {
    this.maxRecv = opts.maxRecvMessageSize ?? DEFAULT_MAX_MESSAGE;
    this.maxSend = opts.maxSendMessageSize ?? DEFAULT_MAX_MESSAGE;
    this.settings = {
      initialWindowSize: opts.initialWindowSize ?? 4 << 20,
      connectionWindowSize: opts.connectionWindowSize ?? 16 << 20,
      maxFrameSize: opts.maxFrameSize ?? 1 << 20,
      // unlimited unless asked, as grpc-go serves by default
      maxConcurrentStreams: opts.maxConcurrentStreams,
      maxHeaderListSize: 1 << 20,
      // node:http2, before, allowed a session 256 MB (maxSessionMemory)
      maxQueuedBytes: opts.maxQueuedBytes ?? 256 << 20,
    };
  }

  /** Serve a service's implemented methods; the others answer Unimplemented. */
  addService<S extends DescService>(
    service: S,
    impl: ServiceImpl<S>,
    observe?: CallObserver,
    counters?: (path: string, kind: MethodKind) => MethodCounters,
  ): void {
    this.serviceNames.add(service.typeName);
    for (const m of methodEntries(service, impl, observe, counters ?? this.opts.counters)) {
      if (this.routes.has(m.path)) throw new Error(`gRPC method ${m.path} is registered twice`);
      this.routes.set(m.path, m);
    }
  }

  /** Listen on a unix socket path (or a TCP port). */
  listen(path: string | number, host?: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const listener = net.createServer((socket) => this.accept(socket));
      this.listener = listener;
      const onError = (err: Error) => reject(err);
      listener.once("error", onError);
      const done = () => {
        listener.off("error", onError);
        listener.on("error", (err: Error) => this.opts.onError?.(err));
        this.listening = true;
        resolve();
      };
      if (typeof path === "number") listener.listen(path, host ?? "127.0.0.1", done);
      else listener.listen(path, done);
    });
  }

  private accept(socket: net.Socket): void {
    if (!this.listening) {
      socket.destroy();
      return;
    }
    if (socket.remoteAddress !== undefined) socket.setNoDelay(true);
    const conn = new H2Connection(
      socket,
      this.settings,
      (stream) => this.onStream(stream),
      (err) => this.opts.onError?.(err),
      (c) => this.connections.delete(c),
    );
    this.connections.add(conn);
  }

  /** The address listened on (for a TCP port of 0: the port picked). */
  address(): ReturnType<net.Server["address"]> {
    return this.listener?.address() ?? null;
  }

  /** @internal */
  callEnded(): void {
    this.active--;
    if (this.active === 0 && this.idleWaiters.length > 0) {
      const ws = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of ws) w();
    }
  }

  private onStream(stream: H2Stream): void {
    const headers = stream.headers;
    if (headers[":method"] !== "POST") {
      stream.sendTrailersOnly(trailersOnly(GrpcCode.Unimplemented, "grpc: only POST is served", 405));
      return;
    }
    const ct = first(headers["content-type"]);
    if (!isGrpcContentType(ct)) {
      stream.sendTrailersOnly(
        trailersOnly(
          GrpcCode.InvalidArgument,
          `invalid gRPC request content-type ${JSON.stringify(ct ?? "")}`,
          415,
        ),
      );
      return;
    }
    const path = first(headers[":path"]) ?? "";
    const m = this.routes.get(path);
    if (!m) {
      stream.sendTrailersOnly(trailersOnly(GrpcCode.Unimplemented, this.unknownMessage(path)));
      return;
    }
    this.active++;
    new ServerCall(this, stream, m);
  }

  private unknownMessage(path: string): string {
    const slash = path.lastIndexOf("/");
    const service = path.slice(1, slash > 0 ? slash : undefined);
    const method = slash > 0 ? path.slice(slash + 1) : "";
    if (!path.startsWith("/") || slash <= 0) return `malformed method name: ${JSON.stringify(path)}`;
    if (!this.serviceNames.has(service)) return `unknown service ${service}`;
    return `unknown method ${method} for service ${service}`;
  }

  /**
   * Stop taking connections and calls; calls in progress run to their end. Resolves when they
   * have. Connections get a GOAWAY, so clients reconnect elsewhere (or fail) for new calls.
   */
  tryShutdown(): Promise<void> {
    const closed = new Promise<void>((resolve) => {
      if (!this.listening) return resolve();
      this.listening = false;
      this.listener?.close(() => resolve());
    });
    for (const c of this.connections) c.close();
    const idle = this.active === 0 ? Promise.resolve() : new Promise<void>((r) => this.idleWaiters.push(r));
    return Promise.all([closed, idle]).then(() => undefined);
  }

  /** Cut every connection now; calls in progress see a cancel. */
  forceShutdown(): void {
    if (this.listening) {
      this.listening = false;
      this.listener?.close();
    }
    for (const c of this.connections) c.destroy();
    this.connections.clear();
  }

  /** Shut down gracefully, forcing after `graceMs`. */
  async shutdown(graceMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const forced = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        this.forceShutdown();
        resolve();
      }, graceMs);
    });
    await Promise.race([this.tryShutdown(), forced]);
    clearTimeout(timer);
  }
}
