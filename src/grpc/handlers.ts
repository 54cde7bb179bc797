// What every server transport shares: the typed handler shapes for protobuf-es service
// descriptors, the per-call context, the observer of finished calls, and the table of a
// service's implemented methods. Services stay thin: they translate messages and throw
// BerthErrors; the transport (h2server.ts) maps those to gRPC statuses.
import type { DescMessage, DescService, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import { errFailedPrecondition } from "../base/errdefs.js";
import { validateIdentifier } from "../base/identifiers.js";
import { decodeBinaryHeader, FRAME_HEADER } from "./wire.js";

export const NAMESPACE_HEADER = "containerd-namespace";
export const LEASE_HEADER = "containerd-lease";

/** Request metadata as lowercase header names; a repeated header may arrive as an array. */
export type CallHeaders = Readonly<Record<string, string | string[] | undefined>>;

/**
 * Per-call context handed to every handler. `signal` aborts when the client cancels the call or
 * its deadline passes; it is made on first use, since most calls finish without looking at it.
 */
export class CallContext {
  private ac: AbortController | undefined;
  private reason: unknown;
  private done = false;

  constructor(readonly headers: CallHeaders) {}

  get signal(): AbortSignal {
    if (!this.ac) {
      this.ac = new AbortController();
      if (this.done) this.ac.abort(this.reason);
    }
    return this.ac.signal;
  }

  /** True once the call is cancelled or past its deadline (cheaper than `signal.aborted`). */
  get cancelled(): boolean {
    return this.done;
  }

  /** @internal the transport ends the call early: cancel by the client, or deadline. */
  abort(reason: unknown): void {
    if (this.done) return;
    this.done = true;
    this.reason = reason;
    this.ac?.abort(reason);
  }

  /** The first value of a metadata key (lowercase), if present. */
  header(key: string): string | undefined {
    const v = this.headers[key];
    return typeof v === "string" ? v : v?.[0];
  }

  /** A binary metadata value (keys ending in "-bin" carry base64). */
  binaryHeader(key: string): Buffer | undefined {
    const v = this.header(key);
    return v === undefined ? undefined : decodeBinaryHeader(v);
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

/**
 * A response already in wire form, for hot paths that can lay out their bytes without the
 * generic encoder's copies (Content/Read). `framed` holds 5 bytes of room for the transport's
 * length prefix, then the encoded message. Unary handlers may return one; streaming handlers
 * may yield these.
 */
export class EncodedMessage<_O extends DescMessage = DescMessage> {
  /**
   * A large message may come in parts: `framed` then `rest`, sent one after the other as if they
   * were one buffer (a list encoded as its rows are read, never copied into one buffer).
   */
  constructor(
    readonly framed: Buffer,
    readonly rest: readonly Buffer[] = [],
  ) {}

  /** The message's length without the room for the prefix. */
  get length(): number {
    let n = this.framed.length - FRAME_HEADER;
    for (const b of this.rest) n += b.length;
    return n;
  }

  /** The encoded message without the room for the prefix (parts joined: a copy when in parts). */
  get body(): Buffer {
    const head = this.framed.subarray(FRAME_HEADER);
    return this.rest.length === 0 ? head : Buffer.concat([head, ...this.rest]);
  }
}

type HandlerFor<M> = M extends {
  methodKind: "unary";
  input: infer I extends DescMessage;
  output: infer O extends DescMessage;
}
  ? (
      req: MessageShape<I>,
      ctx: CallContext,
    ) => Promise<Out<O> | EncodedMessage<O>> | Out<O> | EncodedMessage<O>
  : M extends {
        methodKind: "server_streaming";
        input: infer I extends DescMessage;
        output: infer O extends DescMessage;
      }
    ? (req: MessageShape<I>, ctx: CallContext) => AsyncIterable<Out<O> | EncodedMessage<O>>
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
        ? (
            reqs: AsyncIterable<MessageShape<I>>,
            ctx: CallContext,
          ) => AsyncIterable<Out<O> | EncodedMessage<O>>
        : never;

export type ServiceImpl<S> =
  S extends GenService<infer T extends GenServiceMethods> ? { [K in keyof T]: HandlerFor<T[K]> } : never;

/** Sees every finished call: method path, its kind, the status code sent, and the error if any. */
export type CallObserver = (
  path: string,
  kind: string,
  code: number,
  err?: { message: string; cause: unknown },
) => void;

/**
 * One method's call counts (grpc-go's prometheus families), bumped by the transport per call and
 * read when metrics are scraped: plain numbers, so counting costs no lookup or allocation.
 * `handled` is indexed by status code; `seconds`, while set, gets each call's duration.
 */
export interface MethodCounters {
  started: number;
  msgReceived: number;
  msgSent: number;
  readonly handled: number[];
  seconds: { observe(seconds: number): void } | undefined;
}

export type MethodKind = "unary" | "server_streaming" | "client_streaming" | "bidi_streaming";

/** One implemented method of a service, ready for a transport to dispatch to. */
export interface MethodEntry {
  /** `/<package.Service>/<Method>` */
  readonly path: string;
  readonly localName: string;
  readonly kind: MethodKind;
  readonly input: DescMessage;
  readonly output: DescMessage;
  /** The handler, bound to its service object; its shape follows `kind`. */
  readonly fn: (reqOrReqs: unknown, ctx: CallContext) => unknown;
  readonly observe: CallObserver | undefined;
  readonly counters: MethodCounters | undefined;
}

/** The methods a service object implements (methods it leaves out answer Unimplemented). */
export function methodEntries<S extends DescService>(
  service: S,
  impl: ServiceImpl<S>,
  observe?: CallObserver,
  counters?: (path: string, kind: MethodKind) => MethodCounters,
): MethodEntry[] {
  const implRec = impl as unknown as Record<string, ((...a: unknown[]) => unknown) | undefined>;
  const out: MethodEntry[] = [];
  for (const m of service.methods) {
    const fn = implRec[m.localName];
    if (!fn) continue;
    const path = `/${service.typeName}/${m.name}`;
    out.push({
      path,
      localName: m.localName,
      kind: m.methodKind,
      input: m.input,
      output: m.output,
      fn: fn.bind(impl) as MethodEntry["fn"],
      observe,
      counters: counters?.(path, m.methodKind),
    });
  }
  return out;
}
