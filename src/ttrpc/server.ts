// A ttrpc server on a unix socket, wire-compatible with containerd/ttrpc. Handlers are registered
// per service from protobuf-es descriptors (the same shapes as berth's gRPC handlers); each
// request runs concurrently with the others on its connection. Errors thrown by handlers go
// back as google.rpc.Status through the one errdefs mapping.
import { rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
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
import { BerthError, errInvalidArgument, GrpcCode, toGrpcStatus } from "../base/errdefs.js";
import { validateIdentifier } from "../base/identifiers.js";
import { type Request, RequestSchema, ResponseSchema } from "../gen/ttrpc/request_pb.js";
import { encodeFrame, Flag, FrameReader, GRPC_NAMESPACE_KEY, MessageType, NAMESPACE_KEY } from "./wire.js";

/** What a handler knows about its call. */
export class TtrpcCallContext {
  constructor(
    /** `/<service>/<method>` */
    readonly path: string,
    /** Request metadata: key → values, in the order sent. */
    readonly metadata: ReadonlyMap<string, readonly string[]>,
    /** Aborted when the deadline passes or the connection goes. */
    readonly signal: AbortSignal,
    /** The client's deadline (ms since the epoch), if it sent a timeout. */
    readonly deadline: number | undefined,
  ) {}

  /** The caller's namespace (`containerd-namespace-ttrpc`, else gRPC's key), validated. */
  namespace(): string {
    const ns = this.metadata.get(NAMESPACE_KEY)?.[0] ?? this.metadata.get(GRPC_NAMESPACE_KEY)?.[0];
    if (!ns) throw errInvalidArgument("namespace is required");
    validateIdentifier(ns);
    return ns;
  }
}

type Out<O extends DescMessage> = MessageInitShape<O>;

type HandlerFor<M> = M extends {
  methodKind: "unary";
  input: infer I extends DescMessage;
  output: infer O extends DescMessage;
}
  ? (req: MessageShape<I>, ctx: TtrpcCallContext) => Promise<Out<O>> | Out<O>
  : M extends {
        methodKind: "server_streaming";
        input: infer I extends DescMessage;
        output: infer O extends DescMessage;
      }
    ? (req: MessageShape<I>, ctx: TtrpcCallContext) => AsyncIterable<Out<O>>
    : M extends {
          methodKind: "client_streaming";
          input: infer I extends DescMessage;
          output: infer O extends DescMessage;
        }
      ? (reqs: AsyncIterable<MessageShape<I>>, ctx: TtrpcCallContext) => Promise<Out<O>>
      : M extends {
            methodKind: "bidi_streaming";
            input: infer I extends DescMessage;
            output: infer O extends DescMessage;
          }
        ? (reqs: AsyncIterable<MessageShape<I>>, ctx: TtrpcCallContext) => AsyncIterable<Out<O>>
        : never;

/** A service's handlers by method local name; methods left out answer Unimplemented. */
export type TtrpcServiceImpl<S> =
  S extends GenService<infer T extends GenServiceMethods> ? { [K in keyof T]?: HandlerFor<T[K]> } : never;

interface Entry {
  method: DescMethod;
  fn: (reqOrReqs: unknown, ctx: TtrpcCallContext) => unknown;
}

const statusError = (code: number, message: string) => ({ code, message });

/** Inbound messages of a client-/bidi-streaming call. */
class Inbound implements AsyncIterable<unknown> {
  private items: unknown[] = [];
  private done = false;
  private wake: (() => void) | undefined;
  push(v: unknown): void {
    if (this.done) return;
    this.items.push(v);
    this.wake?.();
  }
  end(): void {
    this.done = true;
    this.wake?.();
  }
  get ended(): boolean {
    return this.done;
  }
  async *[Symbol.asyncIterator](): AsyncIterator<unknown> {
    for (;;) {
      if (this.items.length > 0) {
        yield this.items.shift();
        continue;
      }
      if (this.done) return;
      await new Promise<void>((r) => {
        this.wake = r;
      });
      this.wake = undefined;
    }
  }
}

export interface TtrpcServerOptions {
  /** Called with errors that have no caller to go to (a broken connection, a bad frame). */
  onError?: (err: unknown) => void;
}

export class TtrpcServer {
  private readonly services = new Map<string, Map<string, Entry>>();
  private server: Server | undefined;
  private path: string | undefined;
  private readonly conns = new Set<Socket>();

  constructor(private readonly opts: TtrpcServerOptions = {}) {}

  register<S extends DescService>(desc: S, impl: TtrpcServiceImpl<S>): void {
    const rec = impl as unknown as Record<string, ((...a: unknown[]) => unknown) | undefined>;
    const methods = this.services.get(desc.typeName) ?? new Map<string, Entry>();
    for (const m of desc.methods) {
      const fn = rec[m.localName];
      if (fn) methods.set(m.name, { method: m, fn: fn.bind(impl) as Entry["fn"] });
    }
    this.services.set(desc.typeName, methods);
  }

  /** Listen on a unix socket path (a stale socket file there is replaced). */
  listen(path: string): Promise<void> {
    rmSync(path, { force: true });
    const server = createServer((sock) => this.serve(sock));
    this.server = server;
    this.path = path;
    return new Promise((resolve, reject) => {
      server.once("error", reject);
      server.listen(path, () => {
        server.off("error", reject);
        resolve();
      });
    });
  }

  /** Stop listening, drop every connection (their calls see their signal abort), remove the socket. */
  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const c of this.conns) c.destroy();
    if (server) await new Promise<void>((r) => server.close(() => r()));
    if (this.path) rmSync(this.path, { force: true });
  }

  /** Serve one connection (also usable with a socket accepted elsewhere). */
  serve(sock: Socket): void {
    this.conns.add(sock);
    const reader = new FrameReader();
    const connAbort = new AbortController();
    const inbound = new Map<number, Inbound>();
    let lastId = 0;

    const send = (id: number, type: number, flags: number, data: Uint8Array) => {
      if (sock.destroyed) return;
      try {
        sock.write(encodeFrame(id, type, flags, data));
      } catch (err) {
        // an oversized reply: the caller gets the status instead
        const st = toGrpcStatus(err);
        sock.write(encodeFrame(id, MessageType.Response, 0, responseBytes(st)));
      }
    };
    const responseBytes = (st: { code: number; message: string }, payload?: Uint8Array) =>
      toBinary(ResponseSchema, create(ResponseSchema, { status: st, payload }));
    const sendStatus = (id: number, st: { code: number; message: string }) =>
      send(id, MessageType.Response, 0, responseBytes(st));

    sock.on("data", (chunk: Buffer) => {
      for (const ev of reader.push(chunk)) {
        if ("oversized" in ev) {
          const { streamId, length } = ev.oversized;
          sendStatus(
            streamId,
            statusError(
              GrpcCode.ResourceExhausted,
              `message length ${length} exceed maximum message size of ${4 << 20}`,
            ),
          );
          continue;
        }
        const f = ev.frame;
        if (f.streamId % 2 !== 1) {
          sendStatus(
            f.streamId,
            statusError(GrpcCode.InvalidArgument, "StreamID must be odd for client initiated streams"),
          );
          continue;
        }
        if (f.type === MessageType.Data) {
          const box = inbound.get(f.streamId);
          if (!box || box.ended) {
            sendStatus(f.streamId, statusError(GrpcCode.InvalidArgument, "StreamID is no longer active"));
            continue;
          }
          if (!(f.flags & Flag.NoData)) box.push(f.data);
          if (f.flags & Flag.RemoteClosed) {
            box.end();
            inbound.delete(f.streamId);
          }
          continue;
        }
        if (f.type !== MessageType.Request) continue;
        if (f.streamId <= lastId) {
          sendStatus(
            f.streamId,
            statusError(GrpcCode.InvalidArgument, "StreamID cannot be re-used and must increment"),
          );
          continue;
        }
        lastId = f.streamId;
        let req: Request;
        try {
          req = fromBinary(RequestSchema, f.data);
        } catch (err) {
          sendStatus(
            f.streamId,
            statusError(GrpcCode.InvalidArgument, `unmarshal request error: ${(err as Error).message}`),
          );
          continue;
        }
        void this.dispatch(f.streamId, f.flags, req, {
          send,
          sendStatus,
          responseBytes,
          inbound,
          connSignal: connAbort.signal,
        });
      }
    });
    const done = () => {
      this.conns.delete(sock);
      connAbort.abort();
      for (const b of inbound.values()) b.end();
      inbound.clear();
    };
    sock.on("error", (err) => this.opts.onError?.(err));
    sock.on("close", done);
  }

  private async dispatch(
    id: number,
    flags: number,
    req: Request,
    io: {
      send: (id: number, type: number, flags: number, data: Uint8Array) => void;
      sendStatus: (id: number, st: { code: number; message: string }) => void;
      responseBytes: (st: { code: number; message: string }, payload?: Uint8Array) => Uint8Array;
      inbound: Map<number, Inbound>;
      connSignal: AbortSignal;
    },
  ): Promise<void> {
    const svc = this.services.get(req.service);
    if (!svc) return io.sendStatus(id, statusError(GrpcCode.Unimplemented, `service ${req.service}`));
    const entry = svc.get(req.method);
    if (!entry) return io.sendStatus(id, statusError(GrpcCode.Unimplemented, `method ${req.method}`));
    const { method, fn } = entry;

    const md = new Map<string, string[]>();
    for (const kv of req.metadata) md.set(kv.key, [...(md.get(kv.key) ?? []), kv.value]);
    const ac = new AbortController();
    const onConn = () => ac.abort(io.connSignal.reason);
    io.connSignal.addEventListener("abort", onConn, { once: true });
    let timer: NodeJS.Timeout | undefined;
    let deadline: number | undefined;
    if (req.timeoutNano > 0n) {
      const ms = Number(req.timeoutNano / 1_000_000n);
      deadline = Date.now() + ms;
      timer = setTimeout(
        () => ac.abort(new BerthError("deadline exceeded", "context deadline exceeded")),
        ms,
      );
    }
    const ctx = new TtrpcCallContext(`/${req.service}/${req.method}`, md, ac.signal, deadline);
    const decode = (b: Uint8Array) => fromBinary(method.input, b);
    const encode = (o: unknown) =>
      toBinary(method.output, create(method.output, o as MessageInitShape<DescMessage>));
    const ok = { code: 0, message: "" };
    const streamingClient =
      method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming";
    let box: Inbound | undefined;
    try {
      if (streamingClient) {
        box = new Inbound();
        // a first message may ride on the request; remote-closed (or no flags) means no data follows
        if (req.payload.length > 0) box.push(req.payload);
        if (flags & Flag.RemoteOpen) io.inbound.set(id, box);
        else box.end();
      }
      const inputs = box
        ? (async function* () {
            for await (const b of box) yield decode(b as Uint8Array);
          })()
        : undefined;
      switch (method.methodKind) {
        case "unary": {
          const out = await fn(decode(req.payload), ctx);
          io.send(id, MessageType.Response, 0, io.responseBytes(ok, encode(out)));
          break;
        }
        case "client_streaming": {
          const out = await fn(inputs, ctx);
          io.send(id, MessageType.Response, 0, io.responseBytes(ok, encode(out)));
          break;
        }
        case "server_streaming":
        case "bidi_streaming": {
          const arg = method.methodKind === "server_streaming" ? decode(req.payload) : inputs;
          for await (const out of fn(arg, ctx) as AsyncIterable<unknown>) {
            if (ac.signal.aborted && io.connSignal.aborted) return;
            io.send(id, MessageType.Data, 0, encode(out));
          }
          io.send(id, MessageType.Data, Flag.RemoteClosed | Flag.NoData, new Uint8Array());
          break;
        }
      }
    } catch (err) {
      io.sendStatus(id, toGrpcStatus(err));
    } finally {
      if (timer) clearTimeout(timer);
      io.connSignal.removeEventListener("abort", onConn);
      if (box) {
        box.end();
        io.inbound.delete(id);
      }
    }
  }
}
