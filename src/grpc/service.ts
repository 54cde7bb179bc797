// Adapts protobuf-es service descriptors to @grpc/grpc-js: one codec (protobuf-es) and
// strictly typed handlers. Services stay thin: they translate messages and throw BerthErrors.

import type { Readable } from "node:stream";
import {
  create,
  type DescMessage,
  type DescService,
  fromBinary,
  type MessageInitShape,
  type MessageShape,
  toBinary,
} from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import * as grpc from "@grpc/grpc-js";
import { errFailedPrecondition, toGrpcStatus } from "../core/errdefs.js";
import { validateIdentifier } from "../core/identifiers.js";

export const NAMESPACE_HEADER = "containerd-namespace";
export const LEASE_HEADER = "containerd-lease";

/** Per-call context handed to every handler. */
export class CallContext {
  constructor(
    readonly metadata: grpc.Metadata,
    readonly signal: AbortSignal,
  ) {}

  private header(key: string): string | undefined {
    const v = this.metadata.get(key);
    return v.length > 0 ? String(v[0]) : undefined;
  }

  /** The namespace of the call, validated; containerd's NamespaceRequired. */
  namespace(): string {
    const ns = this.header(NAMESPACE_HEADER);
    if (!ns) throw errFailedPrecondition("namespace is required");
    try {
      validateIdentifier(ns);
    } catch (err) {
      (err as Error).message = `namespace validation: ${(err as Error).message}`;
      throw err;
    }
    return ns;
  }

  /** The namespace header if present (not validated); for calls where it is optional. */
  optionalNamespace(): string | undefined {
    return this.header(NAMESPACE_HEADER);
  }

  lease(): string | undefined {
    return this.header(LEASE_HEADER);
  }
}

type Out<O extends DescMessage> = MessageInitShape<O>;

type HandlerFor<M> = M extends {
  methodKind: "unary";
  input: infer I extends DescMessage;
  output: infer O extends DescMessage;
}
  ? (req: MessageShape<I>, ctx: CallContext) => Promise<Out<O>> | Out<O>
  : M extends {
        methodKind: "server_streaming";
        input: infer I extends DescMessage;
        output: infer O extends DescMessage;
      }
    ? (req: MessageShape<I>, ctx: CallContext) => AsyncIterable<Out<O>>
    : M extends {
          methodKind: "client_streaming";
          input: infer I extends DescMessage;
          output: infer O extends DescMessage;
        }
      ? (reqs: AsyncIterable<MessageShape<I>>, ctx: CallContext) => Promise<Out<O>>
      : M extends {
            methodKind: "bidi_streaming";
            input: infer I extends DescMessage;
            output: infer O extends DescMessage;
          }
        ? (reqs: AsyncIterable<MessageShape<I>>, ctx: CallContext) => AsyncIterable<Out<O>>
        : never;

export type ServiceImpl<S> =
  S extends GenService<infer T extends GenServiceMethods> ? { [K in keyof T]: HandlerFor<T[K]> } : never;

/** Build the grpc-js service definition (paths + codecs) for a protobuf-es service. */
export function grpcDefinition(service: DescService): grpc.ServiceDefinition {
  const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const m of service.methods) {
    const input = m.input;
    const output = m.output;
    def[m.localName] = {
      path: `/${service.typeName}/${m.name}`,
      requestStream: m.methodKind === "client_streaming" || m.methodKind === "bidi_streaming",
      responseStream: m.methodKind === "server_streaming" || m.methodKind === "bidi_streaming",
      requestSerialize: (msg: unknown) => asBuffer(toBinary(input, msg as MessageShape<DescMessage>)),
      requestDeserialize: (buf: Buffer) => fromBinary(input, buf),
      responseSerialize: (msg: unknown) => asBuffer(toBinary(output, msg as MessageShape<DescMessage>)),
      responseDeserialize: (buf: Buffer) => fromBinary(output, buf),
      originalName: m.localName,
    };
  }
  return def as grpc.ServiceDefinition;
}

/** Sees every finished call: method path, its kind, the status code sent, and the error if any. */
export type CallObserver = (
  path: string,
  kind: string,
  code: number,
  err?: { message: string; cause: unknown },
) => void;

function toServiceError(err: unknown): grpc.ServiceError {
  const { code, message } = toGrpcStatus(err);
  const e = new Error(message) as grpc.ServiceError;
  e.code = code;
  e.details = message;
  e.metadata = new grpc.Metadata();
  return e;
}

function signalFor(call: { on(ev: "cancelled", fn: () => void): unknown }): AbortSignal {
  const ac = new AbortController();
  call.on("cancelled", () => ac.abort(CANCELLED));
  return ac.signal;
}

/**
 * Async iterable over a readable call's messages; ends on client half-close. The stream must
 * survive the loop ending early (a handler that stops reading still answers on it).
 */
function readMessages<T>(call: Readable): AsyncIterable<T> {
  return { [Symbol.asyncIterator]: () => call.iterator({ destroyOnReturn: false }) as AsyncIterator<T> };
}

/** Serialise without copying: wrap the encoded bytes in a Buffer view. */
function asBuffer(u: Uint8Array): Buffer {
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

// One shared reason: building a DOMException per cancelled call is measurable (ctr cancels
// every Read stream it has consumed).
const CANCELLED = new Error("call cancelled by client");

/** Wait for the stream to drain, or the call to be cancelled; leaves no listener behind. */
function drained(call: NodeJS.EventEmitter, signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = () => {
      call.off("drain", done);
      signal.removeEventListener("abort", done);
      resolve();
    };
    call.once("drain", done);
    signal.addEventListener("abort", done, { once: true });
  });
}

/** Wrap typed handlers into grpc-js handlers. */
export function grpcHandlers<S extends DescService>(
  service: S,
  impl: ServiceImpl<S>,
  observe?: CallObserver,
): grpc.UntypedServiceImplementation {
  const handlers: grpc.UntypedServiceImplementation = {};
  const implRec = impl as unknown as Record<string, (...a: unknown[]) => unknown>;
  for (const m of service.methods) {
    const fn = implRec[m.localName];
    const path = `/${service.typeName}/${m.name}`;
    const output = m.output;
    const ok = () => observe?.(path, m.methodKind, 0);
    const fail = (err: unknown) => {
      const se = toServiceError(err);
      observe?.(path, m.methodKind, se.code, { message: se.message, cause: err });
      return se;
    };
    if (!fn) {
      continue; // grpc-js answers Unimplemented for methods without a handler
    }
    const bound = fn.bind(impl);
    switch (m.methodKind) {
      case "unary":
        handlers[m.localName] = ((
          call: grpc.ServerUnaryCall<unknown, unknown>,
          cb: grpc.sendUnaryData<unknown>,
        ) => {
          const ctx = new CallContext(call.metadata, signalFor(call));
          let p: unknown;
          try {
            p = bound(call.request, ctx);
          } catch (err) {
            cb(fail(err), null);
            return;
          }
          Promise.resolve(p).then(
            (res) => {
              ok();
              cb(null, create(output, res as MessageInitShape<DescMessage>));
            },
            (err) => cb(fail(err), null),
          );
        }) as grpc.handleUnaryCall<unknown, unknown>;
        break;
      case "server_streaming":
        handlers[m.localName] = (async (call: grpc.ServerWritableStream<unknown, unknown>) => {
          const ctx = new CallContext(call.metadata, signalFor(call));
          try {
            for await (const res of bound(call.request, ctx) as AsyncIterable<
              MessageInitShape<DescMessage>
            >) {
              if (call.cancelled) break;
              if (!call.write(create(output, res))) await drained(call, ctx.signal);
            }
            ok();
            if (!call.cancelled) call.end();
          } catch (err) {
            if (!call.cancelled) call.emit("error", fail(err));
          }
        }) as grpc.handleServerStreamingCall<unknown, unknown>;
        break;
      case "client_streaming":
        handlers[m.localName] = ((
          call: grpc.ServerReadableStream<unknown, unknown>,
          cb: grpc.sendUnaryData<unknown>,
        ) => {
          const ctx = new CallContext(call.metadata, signalFor(call));
          Promise.resolve()
            .then(() => bound(readMessages(call as unknown as Readable), ctx))
            .then(
              (res) => {
                ok();
                cb(null, create(output, res as MessageInitShape<DescMessage>));
              },
              (err) => cb(fail(err), null),
            );
        }) as grpc.handleClientStreamingCall<unknown, unknown>;
        break;
      case "bidi_streaming":
        handlers[m.localName] = (async (call: grpc.ServerDuplexStream<unknown, unknown>) => {
          const ctx = new CallContext(call.metadata, signalFor(call));
          try {
            for await (const res of bound(readMessages(call as unknown as Readable), ctx) as AsyncIterable<
              MessageInitShape<DescMessage>
            >) {
              if (call.cancelled) break;
              if (!call.write(create(output, res))) await drained(call, ctx.signal);
            }
            ok();
            if (!call.cancelled) call.end();
          } catch (err) {
            if (!call.cancelled) call.emit("error", fail(err));
          }
        }) as grpc.handleBidiStreamingCall<unknown, unknown>;
        break;
    }
  }
  return handlers;
}
