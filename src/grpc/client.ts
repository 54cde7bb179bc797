// A typed gRPC client over grpc-js for protobuf-es service descriptors, used by tests and
// benchmarks (grpc-js is an implementation independent of berthd's server). The berth CLI uses
// the same `Client` type on node:http2 alone (h2client.ts), which starts faster. Namespace and
// lease travel as containerd's metadata headers.
import {
  create,
  type DescMessage,
  type DescService,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import * as grpc from "@grpc/grpc-js";
import { fromGrpcStatus } from "../base/errdefs.js";
import { grpcDefinition, LEASE_HEADER, NAMESPACE_HEADER } from "./service.js";

export interface CallOptions {
  namespace?: string;
  lease?: string;
  /** Deadline in milliseconds from now. */
  timeoutMs?: number;
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
          methodKind: "bidi_streaming";
          input: infer I extends DescMessage;
          output: infer O extends DescMessage;
        }
      ? (opts?: CallOptions) => BidiCall<MessageShape<I>, MessageShape<O>, In<I>>
      : M extends {
            methodKind: "client_streaming";
            input: infer I extends DescMessage;
            output: infer O extends DescMessage;
          }
        ? (reqs: AsyncIterable<In<I>>, opts?: CallOptions) => Promise<MessageShape<O>>
        : never;

export type Client<S> =
  S extends GenService<infer T extends GenServiceMethods> ? { [K in keyof T]: ClientMethod<T[K]> } : never;

/** A bidirectional call: send() requests, iterate responses, end() to half-close. */
export interface BidiCall<_Req, Res, ReqInit> {
  send(msg: ReqInit): Promise<void>;
  end(): void;
  cancel(): void;
  responses: AsyncIterable<Res>;
}

/** Normalise an address: a bare path means a unix socket, as ctr accepts it. */
export function grpcTarget(address: string): string {
  if (address.startsWith("unix:") || address.includes("://")) return address;
  if (address.startsWith("/") || address.startsWith(".")) return `unix:${address}`;
  return address;
}

export class Connection {
  readonly channel: grpc.Channel;
  private clients = new Map<string, grpc.Client>();

  constructor(address: string, opts: { maxMessageSize?: number } = {}) {
    const max = opts.maxMessageSize ?? 16 << 20;
    this.channel = new grpc.Channel(grpcTarget(address), grpc.credentials.createInsecure(), {
      "grpc.max_receive_message_length": max,
      "grpc.max_send_message_length": max,
      "grpc.default_authority": "localhost",
    });
  }

  close(): void {
    for (const c of this.clients.values()) c.close();
    this.channel.close();
  }

  /** Wait until connected or fail with a clear message naming the address. */
  async ready(timeoutMs: number): Promise<void> {
    const c = this.raw("ready");
    await new Promise<void>((resolve, reject) =>
      c.waitForReady(Date.now() + timeoutMs, (err) => (err ? reject(err) : resolve())),
    );
  }

  private raw(key: string): grpc.Client {
    let c = this.clients.get(key);
    if (!c) {
      c = new grpc.Client("", grpc.credentials.createInsecure(), { channelOverride: this.channel });
      this.clients.set(key, c);
    }
    return c;
  }

  client<S extends DescService>(service: S): Client<S> {
    const raw = this.raw(service.typeName);
    const def = grpcDefinition(service);
    const out: Record<string, unknown> = {};
    for (const m of service.methods) {
      const d = def[m.localName]!;
      const input = m.input;
      const meta = (o?: CallOptions) => {
        const md = new grpc.Metadata();
        if (o?.namespace) md.set(NAMESPACE_HEADER, o.namespace);
        if (o?.lease) md.set(LEASE_HEADER, o.lease);
        return md;
      };
      const callOpts = (o?: CallOptions): grpc.CallOptions =>
        o?.timeoutMs ? { deadline: Date.now() + o.timeoutMs } : {};
      const ser = d.requestSerialize as (v: unknown) => Buffer;
      const de = d.responseDeserialize as (b: Buffer) => unknown;
      const toErr = (e: grpc.ServiceError) => fromGrpcStatus(e.code ?? 2, e.details || e.message);
      switch (m.methodKind) {
        case "unary":
          out[m.localName] = (req: In<DescMessage>, o?: CallOptions) =>
            new Promise((resolve, reject) => {
              const call = raw.makeUnaryRequest(
                d.path,
                ser,
                de,
                create(input, req),
                meta(o),
                callOpts(o),
                (err, res) => (err ? reject(toErr(err)) : resolve(res)),
              );
              o?.signal?.addEventListener("abort", () => call.cancel(), { once: true });
            });
          break;
        case "server_streaming":
          out[m.localName] = (req: In<DescMessage>, o?: CallOptions) => {
            const call = raw.makeServerStreamRequest(
              d.path,
              ser,
              de,
              create(input, req),
              meta(o),
              callOpts(o),
            );
            o?.signal?.addEventListener("abort", () => call.cancel(), { once: true });
            return iterateStream(call, toErr);
          };
          break;
        case "client_streaming":
          out[m.localName] = (reqs: AsyncIterable<In<DescMessage>>, o?: CallOptions) =>
            new Promise((resolve, reject) => {
              const call = raw.makeClientStreamRequest(d.path, ser, de, meta(o), callOpts(o), (err, res) =>
                err ? reject(toErr(err)) : resolve(res),
              );
              (async () => {
                for await (const r of reqs) call.write(create(input, r));
                call.end();
              })().catch(reject);
            });
          break;
        case "bidi_streaming":
          out[m.localName] = (o?: CallOptions) => {
            const call = raw.makeBidiStreamRequest(d.path, ser, de, meta(o), callOpts(o));
            o?.signal?.addEventListener("abort", () => call.cancel(), { once: true });
            return {
              send: (msg: In<DescMessage>) =>
                new Promise<void>((resolve) => {
                  if (call.write(create(input, msg))) resolve();
                  else call.once("drain", () => resolve());
                }),
              end: () => call.end(),
              cancel: () => call.cancel(),
              responses: iterateStream(call, toErr),
            };
          };
          break;
      }
    }
    return out as Client<S>;
  }
}

async function* iterateStream<T>(
  call: NodeJS.ReadableStream,
  toErr: (e: grpc.ServiceError) => Error,
): AsyncIterable<T> {
  try {
    for await (const m of call as AsyncIterable<T>) yield m;
  } catch (err) {
    throw toErr(err as grpc.ServiceError);
  }
}
