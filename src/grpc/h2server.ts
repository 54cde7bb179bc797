// berthd's gRPC server: the gRPC-over-HTTP/2 protocol served straight from node:http2's core
// stream API, dispatching to the typed handlers of handlers.ts. Per call it costs one stream
// object, a handful of listeners and the handler itself; there are no interceptor chains,
// metadata objects or stream wrappers between the socket and the service.
//
// A call: the client POSTs to /<package.Service>/<Method> with content-type application/grpc,
// custom metadata as lowercase headers and an optional grpc-timeout; the body is a sequence of
// length-prefixed messages ended by the client's half-close. The answer is :status 200 headers,
// the length-prefixed responses, then trailers carrying grpc-status and grpc-message; a call
// that fails before sending a response message answers with one HEADERS frame ("trailers-only").

import http2 from "node:http2";
import net from "node:net";
import { Duplex } from "node:stream";
import {
  create,
  type DescMessage,
  type DescService,
  fromBinary,
  type MessageInitShape,
  toBinary,
} from "@bufbuild/protobuf";
import { errCanceled, GrpcCode, toGrpcStatus } from "../base/errdefs.js";
import { AuthorityRewriter, authorityStandIn, EMPTY_SETTINGS, sniffConnection } from "./authority.js";
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
import {
  decompressorFor,
  encodeGrpcMessage,
  FRAME_HEADER,
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
  /** Told about connection-level errors (a client that speaks garbage, a reset socket). */
  onError?: (err: Error) => void;
  /** The counters of each method added (called once per method, at addService). */
  counters?: (path: string, kind: MethodKind) => MethodCounters;
}

const DEFAULT_MAX_MESSAGE = 16 << 20;

const CONTENT_TYPE = "application/grpc";
/** Respond options: we send trailers after the last message. */
const WITH_TRAILERS = { waitForTrailers: true, sendDate: false } as http2.ServerStreamResponseOptions;
const END_NOW = { endStream: true, sendDate: false } as http2.ServerStreamResponseOptions;
const RESPONSE_HEADERS = { ":status": 200, "content-type": CONTENT_TYPE };
const OK_TRAILERS = { "grpc-status": "0" };

// Shared abort reasons: one object instead of a DOMException per ended call.
const CANCELLED = errCanceled("context canceled");
const DEADLINE = statusError("deadline exceeded", "context deadline exceeded");

/** application/grpc, optionally with a +subtype (application/grpc+proto) or parameters. */
function isGrpcContentType(ct: string | undefined): boolean {
  if (!ct?.startsWith(CONTENT_TYPE)) return false;
  const next = ct[CONTENT_TYPE.length];
  return next === undefined || next === "+" || next === ";";
}

function trailersOnly(code: number, message: string, httpStatus = 200): http2.OutgoingHttpHeaders {
  const h: http2.OutgoingHttpHeaders = {
    ":status": httpStatus,
    "content-type": CONTENT_TYPE,
    "grpc-status": String(code),
  };
  if (message) h["grpc-message"] = encodeGrpcMessage(message);
  return h;
}

function statusTrailers(code: number, message: string): http2.OutgoingHttpHeaders {
  if (code === 0) return OK_TRAILERS;
  const h: http2.OutgoingHttpHeaders = { "grpc-status": String(code) };
  if (message) h["grpc-message"] = encodeGrpcMessage(message);
  return h;
}

const noop = () => {};
const first = (v: string | string[] | undefined): string | undefined => (typeof v === "string" ? v : v?.[0]);

/** Requests waiting unread before the stream stops reading (and HTTP/2 stops the client). */
const QUEUE_MAX_ITEMS = 16;
const QUEUE_MAX_BYTES = 4 << 20;

/**
 * Requests of a client- or bidi-streaming call as an async iterator. Stops reading from the
 * stream while too many wait unread; a handler that stops early (return()) lets the rest of
 * the client's messages be discarded so the client is never blocked.
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

  constructor(private readonly stream: http2.ServerHttp2Stream) {}

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
class ServerCall {
  readonly ctx: CallContext;
  /** The answer is complete (or can no longer be sent); later results are dropped. */
  private finished = false;
  private headersSent = false;
  private timer: NodeJS.Timeout | undefined;
  private trailers: http2.OutgoingHttpHeaders = OK_TRAILERS;
  private decoder: MessageDecoder | undefined;
  /** Unary and server-streaming: the one request, once it arrived. */
  private gotRequest = false;
  private queue: RequestQueue | undefined;
  private drainWaiter: (() => void) | undefined;
  /** performance.now() at the start, while the method's call durations are wanted. */
  private t0 = 0;

  constructor(
    private readonly server: H2GrpcServer,
    private readonly stream: http2.ServerHttp2Stream,
    headers: http2.IncomingHttpHeaders,
    private readonly m: MethodEntry,
  ) {
    this.ctx = new CallContext(headers);
    const c = m.counters;
    if (c) {
      c.started++;
      if (c.seconds) this.t0 = performance.now();
    }
    stream.on("error", noop); // a reset shows up as 'close'
    stream.on("close", () => this.onClose());
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
    stream.on("data", (chunk: Buffer) => this.onData(chunk));
    stream.on("end", () => this.onEnd());
    if (streaming) {
      const q = new RequestQueue(stream);
      this.queue = q;
      this.start(q);
    }
  }

  private onData(chunk: Buffer): void {
    if (this.finished) return; // the answer is out; the rest of the body is of no use
    try {
      this.decoder!.push(chunk);
    } catch (err) {
      this.fail(err);
    }
  }

  private onEnd(): void {
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

  private encode(res: unknown): Buffer {
    if (res instanceof EncodedMessage) {
      const f = res.framed;
      this.checkSize(f.length - FRAME_HEADER);
      f[0] = 0;
      f.writeUInt32BE(f.length - FRAME_HEADER, 1);
      return f;
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

  private respond(): void {
    this.headersSent = true;
    this.stream.respond(RESPONSE_HEADERS, WITH_TRAILERS);
    this.stream.once("wantTrailers", this.onWantTrailers);
  }

  private readonly onWantTrailers = (): void => {
    try {
      this.stream.sendTrailers(this.trailers);
    } catch {
      // reset by the client just now
    }
  };

  /** A unary answer: headers, the message and trailers in one go. */
  private reply(res: unknown): void {
    if (this.finished) return;
    let frame: Buffer;
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
    if (this.stream.destroyed) return;
    try {
      this.respond();
      this.stream.end(frame);
    } catch {
      // the connection went away meanwhile: nobody is left to answer
    }
  }

  /** Stream responses, waiting for the client to take them in when HTTP/2 flow control says so. */
  private async pump(it: AsyncIterable<unknown>): Promise<void> {
    const stream = this.stream;
    for await (const res of it) {
      if (this.finished) return; // cancelled or past the deadline: leaving the loop ends the handler
      const frame = this.encode(res);
      if (this.m.counters) this.m.counters.msgSent++;
      if (!this.headersSent) this.respond();
      if (!stream.write(frame)) {
        await new Promise<void>((resolve) => {
          this.drainWaiter = resolve;
          stream.once("drain", this.onDrain);
        });
        if (this.finished) return;
      }
    }
    this.finish(0, "");
  }

  private readonly onDrain = (): void => {
    const w = this.drainWaiter;
    this.drainWaiter = undefined;
    w?.();
  };

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
    const stream = this.stream;
    if (stream.destroyed) return;
    try {
      if (!this.headersSent) {
        this.headersSent = true;
        stream.respond(trailersOnly(code, message), END_NOW);
      } else {
        this.trailers = statusTrailers(code, message);
        stream.end();
      }
    } catch {
      // the connection went away meanwhile: nobody is left to answer
    }
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
    if (this.drainWaiter) {
      this.stream.off("drain", this.onDrain);
      this.onDrain();
    }
    // a client still sending after the answer: keep reading (and dropping) so it is never stuck
    // on flow control, and the stream can close
    if (!this.stream.readableFlowing) this.stream.resume();
  }

  private onDeadline(): void {
    this.timer = undefined;
    if (this.finished) return;
    this.ctx.abort(DEADLINE);
    this.finish(GrpcCode.DeadlineExceeded, DEADLINE.message, DEADLINE);
  }

  private onClose(): void {
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

/** A gRPC server on node:http2 (cleartext, HTTP/2 with prior knowledge, as over unix sockets). */
export class H2GrpcServer {
  readonly maxRecv: number;
  readonly maxSend: number;
  private readonly routes = new Map<string, MethodEntry>();
  private readonly serviceNames = new Set<string>();
  private readonly server: http2.Http2Server;
  /** Accepts connections and hands them to `server` (see accept()). */
  private listener: net.Server | undefined;
  private readonly sessions = new Set<http2.ServerHttp2Session>();
  private active = 0;
  private idleWaiters: (() => void)[] = [];
  private listening = false;

  constructor(private readonly opts: H2ServerOptions = {}) {
    this.maxRecv = opts.maxRecvMessageSize ?? DEFAULT_MAX_MESSAGE;
    this.maxSend = opts.maxSendMessageSize ?? DEFAULT_MAX_MESSAGE;
    this.server = http2.createServer({
      settings: {
        initialWindowSize: opts.initialWindowSize ?? 4 << 20,
        maxFrameSize: opts.maxFrameSize ?? 1 << 20,
        // unlimited unless asked, as grpc-go serves by default
        ...(opts.maxConcurrentStreams !== undefined
          ? { maxConcurrentStreams: opts.maxConcurrentStreams }
          : {}),
        maxHeaderListSize: 1 << 20,
      },
      // outbound bytes queued per session before new streams are refused (MB)
      maxSessionMemory: 256,
    });
    const connWindow = opts.connectionWindowSize ?? 16 << 20;
    this.server.on("session", (session: http2.ServerHttp2Session) => {
      this.sessions.add(session);
      session.on("close", () => this.sessions.delete(session));
      session.on("error", (err: Error) => this.opts.onError?.(err));
      try {
        session.setLocalWindowSize(connWindow);
      } catch {
        // the session went away first
      }
    });
    this.server.on("stream", (stream, headers) => this.onStream(stream, headers));
    this.server.on("sessionError", (err: Error) => this.opts.onError?.(err));
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

  /**
   * A new connection: nghttp2 refuses requests whose `:authority` is a unix socket's path, which
   * grpc-go clients of the Kubernetes 1.2x era send (crictl 1.26, kubelets), so the first request
   * is read here first (after this side's SETTINGS, which grpc-go waits for). A connection whose
   * authority nghttp2 accepts is handed over as the socket it is (native speed); the others go
   * through AuthorityRewriter (see authority.ts).
   */
  private accept(socket: net.Socket): void {
    let buf: Buffer = Buffer.alloc(0);
    const gone = () => socket.destroy();
    const onData = (d: Buffer) => {
      buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
      let r: ReturnType<typeof sniffConnection>;
      try {
        r = sniffConnection(buf);
      } catch {
        r = { state: "foreign" }; // malformed frames: nghttp2 answers them
      }
      if (r.state === "more" && buf.length < SNIFF_LIMIT) return;
      socket.off("data", onData);
      socket.off("error", gone);
      socket.pause();
      if (r.state === "done" && r.authority !== undefined && authorityStandIn(r.authority) !== undefined) {
        this.server.emit("connection", rewrittenConnection(socket, r.bytes));
        return;
      }
      socket.unshift(r.state === "done" ? r.bytes : buf);
      this.server.emit("connection", socket);
    };
    socket.on("error", gone);
    socket.on("data", onData);
    socket.write(EMPTY_SETTINGS);
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

  private onStream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    if (headers[":method"] !== "POST") {
      stream.on("error", noop);
      stream.respond(trailersOnly(GrpcCode.Unimplemented, "grpc: only POST is served", 405), END_NOW);
      return;
    }
    const ct = headers["content-type"];
    if (!isGrpcContentType(ct)) {
      stream.on("error", noop);
      stream.respond(
        trailersOnly(
          GrpcCode.InvalidArgument,
          `invalid gRPC request content-type ${JSON.stringify(ct ?? "")}`,
          415,
        ),
        END_NOW,
      );
      return;
    }
    const path = headers[":path"] ?? "";
    const m = this.routes.get(path);
    if (!m) {
      stream.on("error", noop);
      stream.respond(trailersOnly(GrpcCode.Unimplemented, this.unknownMessage(path)), END_NOW);
      stream.resume(); // discard any request body
      return;
    }
    this.active++;
    new ServerCall(this, stream, headers, m);
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
    for (const s of this.sessions) s.close();
    const idle = this.active === 0 ? Promise.resolve() : new Promise<void>((r) => this.idleWaiters.push(r));
    return Promise.all([closed, idle]).then(() => undefined);
  }

  /** Cut every connection now; calls in progress see a cancel. */
  forceShutdown(): void {
    if (this.listening) {
      this.listening = false;
      this.listener?.close();
    }
    for (const s of this.sessions) s.destroy();
    this.sessions.clear();
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

/** Bytes read before a connection is handed over without its first request being complete. */
const SNIFF_LIMIT = 1 << 20;

/** The socket as a stream whose incoming header blocks have their authority replaced. */
function rewrittenConnection(socket: net.Socket, initial: Buffer): Duplex {
  const rewriter = new AuthorityRewriter();
  const conn = new Duplex({
    read() {
      socket.resume();
    },
    write(chunk: Buffer, _enc, cb) {
      socket.write(chunk, cb);
    },
    final(cb) {
      socket.end();
      cb();
    },
    destroy(err, cb) {
      socket.destroy();
      cb(err);
    },
  });
  const feed = (chunk: Buffer) => {
    let out: Buffer;
    try {
      out = rewriter.push(chunk);
    } catch (err) {
      conn.destroy(err as Error);
      return;
    }
    if (out.length > 0 && !conn.push(out)) socket.pause();
  };
  socket.on("data", feed);
  socket.on("end", () => conn.push(null));
  socket.on("error", (err) => conn.destroy(err));
  socket.on("close", () => conn.destroy());
  feed(initial);
  return conn;
}
