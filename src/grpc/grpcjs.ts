// The typed handlers (handlers.ts) served through @grpc/grpc-js: service definitions with the
// protobuf-es codec, and handler wrappers. berthd serves with h2server.ts; this stays for the
// client (grpcDefinition) and for tests that host services in a grpc-js server.

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
import * as grpc from "@grpc/grpc-js";
import { toGrpcStatus } from "../core/errdefs.js";
import {
  CallContext,
  type CallHeaders,
  type CallObserver,
  EncodedMessage,
  methodEntries,
  type ServiceImpl,
} from "./handlers.js";
import { encodeBinaryHeader } from "./wire.js";

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
      responseSerialize: (msg: unknown) =>
        msg instanceof EncodedMessage
          ? msg.body
          : asBuffer(toBinary(output, msg as MessageShape<DescMessage>)),
      responseDeserialize: (buf: Buffer) => fromBinary(output, buf),
      originalName: m.localName,
    };
  }
  return def as grpc.ServiceDefinition;
}

function toServiceError(err: unknown): grpc.ServiceError {
  const { code, message } = toGrpcStatus(err);
  const e = new Error(message) as grpc.ServiceError;
  e.code = code;
  e.details = message;
  e.metadata = new grpc.Metadata();
  return e;
}

/** grpc-js metadata as header values (binary values back in their base64 form). */
function headersOf(md: grpc.Metadata): CallHeaders {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(md.getMap()))
    out[k] = typeof v === "string" ? v : encodeBinaryHeader(v);
  return out;
}

function contextFor(call: {
  metadata: grpc.Metadata;
  on(ev: "cancelled", fn: () => void): unknown;
}): CallContext {
  const ctx = new CallContext(headersOf(call.metadata));
  call.on("cancelled", () => ctx.abort(CANCELLED));
  return ctx;
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

type Response = MessageInitShape<DescMessage> | EncodedMessage;

/** Wrap typed handlers into grpc-js handlers. */
export function grpcHandlers<S extends DescService>(
  service: S,
  impl: ServiceImpl<S>,
  observe?: CallObserver,
): grpc.UntypedServiceImplementation {
  const handlers: grpc.UntypedServiceImplementation = {};
  // grpc-js answers Unimplemented for methods without a handler
  for (const m of methodEntries(service, impl)) {
    const { path, fn: bound, output } = m;
    const ok = () => observe?.(path, m.kind, 0);
    const fail = (err: unknown) => {
      const se = toServiceError(err);
      observe?.(path, m.kind, se.code, { message: se.message, cause: err });
      return se;
    };
    switch (m.kind) {
      case "unary":
        handlers[m.localName] = ((
          call: grpc.ServerUnaryCall<unknown, unknown>,
          cb: grpc.sendUnaryData<unknown>,
        ) => {
          const ctx = contextFor(call);
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
          const ctx = contextFor(call);
          try {
            for await (const res of bound(call.request, ctx) as AsyncIterable<Response>) {
              if (call.cancelled) break;
              if (!call.write(res instanceof EncodedMessage ? res : create(output, res)))
                await drained(call, ctx.signal);
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
          const ctx = contextFor(call);
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
          const ctx = contextFor(call);
          try {
            for await (const res of bound(
              readMessages(call as unknown as Readable),
              ctx,
            ) as AsyncIterable<Response>) {
              if (call.cancelled) break;
              if (!call.write(res instanceof EncodedMessage ? res : create(output, res)))
                await drained(call, ctx.signal);
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
