// A ttrpc client over a unix socket, wire-compatible with containerd/ttrpc: one connection,
// many concurrent calls, each on its own odd, increasing stream id. Unary calls send a Request
// and wait for its Response; streaming calls (ttrpc 1.2) use the request flags and data messages.
// Errors come back as BerthErrors mapped from the response's google.rpc.Status.
import { EventEmitter } from "node:events";
import { connect, type Socket } from "node:net";
import {
  create,
  type DescMessage,
  type DescMethod,
  type DescService,
  fromBinary,
  type MessageInitShape,
  type MessageShape,
  toBinary,
} from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import { BerthError, fromGrpcStatus } from "../base/errdefs.js";
import { RequestSchema, ResponseSchema } from "../gen/ttrpc/request_pb.js";
import {
  encodeFrame,
  Flag,
  type Frame,
  FrameReader,
  MessageType,
  NAMESPACE_KEY,
  oversizedError,
} from "./wire.js";

export interface CallOptions {
  /** Sent as `containerd-namespace-ttrpc` metadata. */
  namespace?: string;
  /** Fails the call locally after this long and tells the server (timeout_nano). */
  timeoutMs?: number;
  /** More metadata (a key may repeat). */
  metadata?: Record<string, string | string[]>;
  signal?: AbortSignal;
}

type In<I extends DescMessage> = MessageInitShape<I>;

type ClientMethod<M> = M extends {
  methodKind: "unary";
  input: infer I extends DescMessage;
  output: infer O extends DescMessage;
}
  ? (req: In<I>, opts?: CallOptions) => Promise<MessageShape<O>>
  : M extends {
        methodKind: "server_streaming";
        input: infer I extends DescMessage;
        output: infer O extends DescMessage;
      }
    ? (req: In<I>, opts?: CallOptions) => AsyncIterable<MessageShape<O>>
    : M extends {
          methodKind: "client_streaming" | "bidi_streaming";
          input: infer I extends DescMessage;
          output: infer O extends DescMessage;
        }
      ? (opts?: CallOptions) => ClientStream<I, O>
      : never;

export type TtrpcServiceClient<S> =
  S extends GenService<infer T extends GenServiceMethods> ? { [K in keyof T]: ClientMethod<T[K]> } : never;

/** A client- or bidi-streaming call. */
export interface ClientStream<I extends DescMessage, O extends DescMessage> {
  send(msg: In<I>): void;
  /** No more messages from this side (a data message with remote-closed). */
  closeSend(): void;
  /** What the server sends back: data messages, or the one response of a client-streaming call. */
  responses: AsyncIterable<MessageShape<O>>;
}

interface StreamState {
  onFrame(f: Frame): void;
  fail(err: Error): void;
}

const closedError = () => {
  const err = new BerthError("unavailable");
  err.message = "ttrpc: closed";
  return err;
};

const deadlineError = () => new BerthError("deadline exceeded", "context deadline exceeded");

/** A queue that an async iterator drains; ends or fails once. */
class Inbox<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private done = false;
  private error: Error | undefined;
  private wake: (() => void) | undefined;
  push(v: T): void {
    if (this.done) return;
    this.items.push(v);
    this.wake?.();
  }
  end(err?: Error): void {
    if (this.done) return;
    this.done = true;
    this.error = err;
    this.wake?.();
  }
  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      if (this.items.length > 0) {
        yield this.items.shift()!;
        continue;
      }
      if (this.done) {
        if (this.error) throw this.error;
        return;
      }
      await new Promise<void>((r) => {
        this.wake = r;
      });
      this.wake = undefined;
    }
  }
}

export class TtrpcClient extends EventEmitter {
  private nextId = 1;
  private readonly streams = new Map<number, StreamState>();
  private readonly reader = new FrameReader();
  private closedErr: Error | undefined;

  private constructor(private readonly socket: Socket) {
    super();
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    socket.on("error", (err) => this.shutdown(err));
    socket.on("close", () => this.shutdown());
  }

  /** Connect to a ttrpc server's unix socket (a path, or a `unix://` address). */
  static connect(address: string): Promise<TtrpcClient> {
    const path = address.startsWith("unix://") ? address.slice("unix://".length) : address;
    return new Promise((resolve, reject) => {
      const sock = connect(path);
      const onError = (err: Error) => reject(err);
      sock.once("error", onError);
      sock.once("connect", () => {
        sock.off("error", onError);
        resolve(new TtrpcClient(sock));
      });
    });
  }

  /** True once the connection is gone (closed by either side). */
  get closed(): boolean {
    return this.closedErr !== undefined;
  }

  close(): void {
    this.socket.destroy();
    this.shutdown();
  }

  private shutdown(cause?: Error): void {
    if (this.closedErr) return;
    const err = closedError();
    if (cause) (err as { cause?: unknown }).cause = cause;
    this.closedErr = err;
    for (const s of this.streams.values()) s.fail(err);
    this.streams.clear();
    this.emit("closed", cause);
  }

  private onData(chunk: Buffer): void {
    for (const ev of this.reader.push(chunk)) {
      if ("oversized" in ev) {
        const s = this.streams.get(ev.oversized.streamId);
        if (s) {
          this.streams.delete(ev.oversized.streamId);
          s.fail(oversizedError(ev.oversized.length));
        }
        continue;
      }
      this.streams.get(ev.frame.streamId)?.onFrame(ev.frame);
    }
  }

  private write(streamId: number, type: number, flags: number, data: Uint8Array): void {
    if (this.closedErr) throw this.closedErr;
    this.socket.write(encodeFrame(streamId, type, flags, data));
  }

  private requestBytes(method: DescMethod, payload: Uint8Array | undefined, opts: CallOptions): Uint8Array {
    const metadata: { key: string; value: string }[] = [];
    if (opts.namespace !== undefined) metadata.push({ key: NAMESPACE_KEY, value: opts.namespace });
    for (const [k, v] of Object.entries(opts.metadata ?? {}))
      for (const one of Array.isArray(v) ? v : [v]) metadata.push({ key: k, value: one });
    return toBinary(
      RequestSchema,
      create(RequestSchema, {
        service: method.parent.typeName,
        method: method.name,
        payload,
        timeoutNano: opts.timeoutMs ? BigInt(Math.round(opts.timeoutMs * 1e6)) : 0n,
        metadata,
      }),
    );
  }

  /**
   * Open a stream: allocates the id, arms the timeout and abort signal, sends the request.
   * `state` gets frames until it calls `finish`.
   */
  private open(
    method: DescMethod,
    flags: number,
    payload: Uint8Array | undefined,
    opts: CallOptions,
    make: (finish: () => void) => StreamState,
  ): number {
    if (this.closedErr) throw this.closedErr;
    const id = this.nextId;
    this.nextId += 2;
    let timer: NodeJS.Timeout | undefined;
    const onAbort = () => {
      const s = this.streams.get(id);
      finish();
      s?.fail(new BerthError("canceled", "context canceled"));
    };
    const finish = () => {
      this.streams.delete(id);
      if (timer) clearTimeout(timer);
      opts.signal?.removeEventListener("abort", onAbort);
    };
    const state = make(finish);
    const bytes = this.requestBytes(method, payload, opts);
    this.streams.set(id, {
      onFrame: (f) => state.onFrame(f),
      fail: (e) => {
        finish();
        state.fail(e);
      },
    });
    if (opts.timeoutMs) {
      timer = setTimeout(() => {
        finish();
        state.fail(deadlineError());
      }, opts.timeoutMs);
    }
    if (opts.signal) {
      if (opts.signal.aborted) {
        onAbort();
        return id;
      }
      opts.signal.addEventListener("abort", onAbort, { once: true });
    }
    try {
      this.write(id, MessageType.Request, flags, bytes);
    } catch (err) {
      finish();
      state.fail(err as Error);
    }
    return id;
  }

  /** Decode a Response frame: the payload on OK, the mapped error otherwise. */
  private static response(f: Frame): { payload: Uint8Array } | { error: BerthError } {
    const r = fromBinary(ResponseSchema, f.data);
    if (r.status && r.status.code !== 0) return { error: fromGrpcStatus(r.status.code, r.status.message) };
    return { payload: r.payload };
  }

  /** A unary call. */
  call<I extends DescMessage, O extends DescMessage>(
    method: DescMethod & { input: I; output: O },
    req: In<I>,
    opts: CallOptions = {},
  ): Promise<MessageShape<O>> {
    return new Promise((resolve, reject) => {
      let payload: Uint8Array;
      try {
        payload = toBinary(method.input, create(method.input, req));
      } catch (err) {
        reject(err);
        return;
      }
      try {
        this.open(method, 0, payload, opts, (finish) => ({
          onFrame: (f) => {
            if (f.type !== MessageType.Response) return;
            finish();
            try {
              const r = TtrpcClient.response(f);
              if ("error" in r) reject(r.error);
              else resolve(fromBinary(method.output, r.payload) as MessageShape<O>);
            } catch (err) {
              reject(err);
            }
          },
          fail: reject,
        }));
      } catch (err) {
        reject(err);
      }
    });
  }

  /** Start a streaming call; the inbox gets the server's messages. */
  private startStream<O extends DescMessage>(
    method: DescMethod,
    output: O,
    flags: number,
    payload: Uint8Array | undefined,
    opts: CallOptions,
  ): { id: number; inbox: Inbox<MessageShape<O>> } {
    const inbox = new Inbox<MessageShape<O>>();
    const id = this.open(method, flags, payload, opts, (finish) => ({
      onFrame: (f) => {
        try {
          if (f.type === MessageType.Response) {
            finish();
            const r = TtrpcClient.response(f);
            if ("error" in r) inbox.end(r.error);
            else {
              if (r.payload.length > 0 || method.methodKind === "client_streaming")
                inbox.push(fromBinary(output, r.payload) as MessageShape<O>);
              inbox.end();
            }
            return;
          }
          if (f.type !== MessageType.Data) return;
          if (!(f.flags & Flag.NoData)) inbox.push(fromBinary(output, f.data) as MessageShape<O>);
          if (f.flags & Flag.RemoteClosed) {
            finish();
            inbox.end();
          }
        } catch (err) {
          finish();
          inbox.end(err as Error);
        }
      },
      fail: (e) => inbox.end(e),
    }));
    return { id, inbox };
  }

  /** A server-streaming call: the request goes with remote-closed, data messages come back. */
  serverStream<I extends DescMessage, O extends DescMessage>(
    method: DescMethod & { input: I; output: O },
    req: In<I>,
    opts: CallOptions = {},
  ): AsyncIterable<MessageShape<O>> {
    const payload = toBinary(method.input, create(method.input, req));
    return this.startStream(method, method.output, Flag.RemoteClosed, payload, opts).inbox;
  }

  /** A client- or bidi-streaming call: the request goes with remote-open, then data messages. */
  stream<I extends DescMessage, O extends DescMessage>(
    method: DescMethod & { input: I; output: O },
    opts: CallOptions = {},
  ): ClientStream<I, O> {
    const { id, inbox } = this.startStream(method, method.output, Flag.RemoteOpen, undefined, opts);
    let sendClosed = false;
    return {
      send: (msg) => {
        if (sendClosed) throw new BerthError("failed precondition", "ttrpc: stream closed");
        this.write(id, MessageType.Data, 0, toBinary(method.input, create(method.input, msg)));
      },
      closeSend: () => {
        if (sendClosed) return;
        sendClosed = true;
        this.write(id, MessageType.Data, Flag.RemoteClosed | Flag.NoData, new Uint8Array());
      },
      responses: inbox,
    };
  }

  /** A typed client for a service: one function per method, by its local name. */
  service<S extends DescService>(desc: S): TtrpcServiceClient<S> {
    const out: Record<string, unknown> = {};
    for (const m of desc.methods) {
      const method = m as DescMethod & { input: DescMessage; output: DescMessage };
      switch (m.methodKind) {
        case "unary":
          out[m.localName] = (req: In<DescMessage>, opts?: CallOptions) => this.call(method, req, opts);
          break;
        case "server_streaming":
          out[m.localName] = (req: In<DescMessage>, opts?: CallOptions) =>
            this.serverStream(method, req, opts);
          break;
        default:
          out[m.localName] = (opts?: CallOptions) => this.stream(method, opts);
      }
    }
    return out as TtrpcServiceClient<S>;
  }
}
