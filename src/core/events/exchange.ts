// The event exchange: publish/forward envelopes to subscribers, each with containerd filters
// over topic, namespace and the event's fields.
import { type DescMessage, type MessageShape, toBinary } from "@bufbuild/protobuf";
import type { Any } from "@bufbuild/protobuf/wkt";
import { errInvalidArgument } from "../../base/errdefs.js";
import { validateIdentifier } from "../../base/identifiers.js";
import { type Filter, parseFilters } from "../filters.js";

export interface Envelope {
  timestamp: Date;
  namespace: string;
  topic: string;
  event?: Any;
}

/** Events carry containerd's type URL: the bare message name, as containerd's typeurl writes it. */
export function packEvent<D extends DescMessage>(schema: D, msg: MessageShape<D>): Any {
  return {
    $typeName: "google.protobuf.Any",
    typeUrl: schema.typeName,
    value: toBinary(schema, msg),
  } as Any;
}

/** A topic is a /-separated path of identifiers, e.g. /namespaces/create. */
export function validateTopic(topic: string): void {
  if (!topic) throw errInvalidArgument("must not be empty");
  if (!topic.startsWith("/")) throw errInvalidArgument(`must start with '/': topic ${JSON.stringify(topic)}`);
  if (topic.length === 1)
    throw errInvalidArgument(`must have at least one component: topic ${JSON.stringify(topic)}`);
  for (const c of topic.slice(1).split("/")) {
    try {
      validateIdentifier(c);
    } catch (err) {
      throw errInvalidArgument(
        `failed validation on component ${JSON.stringify(c)}: ${(err as Error).message}`,
      );
    }
  }
}

class Subscription implements AsyncIterable<Envelope> {
  private queue: Envelope[] = [];
  private wake: (() => void) | undefined;
  private closed = false;
  constructor(
    readonly filter: Filter,
    private readonly onClose: (s: Subscription) => void,
  ) {}

  push(e: Envelope): void {
    if (this.closed) return;
    this.queue.push(e);
    this.wake?.();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.onClose(this);
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Envelope> {
    try {
      while (true) {
        while (this.queue.length > 0) yield this.queue.shift()!;
        if (this.closed) return;
        await new Promise<void>((r) => {
          this.wake = r;
        });
        this.wake = undefined;
      }
    } finally {
      this.close();
    }
  }
}

export class Exchange {
  private subs = new Set<Subscription>();

  /** Publish an event originating here, in a namespace. */
  publish(namespace: string, topic: string, event: Any): void {
    validateTopic(topic);
    this.forward({ timestamp: new Date(), namespace, topic, event });
  }

  /** Forward an envelope from elsewhere (shims, other daemons), keeping its timestamp. */
  forward(env: Envelope): void {
    if (this.subs.size === 0) return;
    for (const s of this.subs) {
      if (s.filter.match((fp) => envelopeField(env, fp))) s.push(env);
    }
  }

  /** Subscribe with containerd filter strings (ORed). Ends when `signal` aborts. */
  subscribe(filters: string[], signal?: AbortSignal): AsyncIterable<Envelope> {
    const sub = new Subscription(parseFilters(filters), (s) => this.subs.delete(s));
    this.subs.add(sub);
    signal?.addEventListener("abort", () => sub.close(), { once: true });
    return sub;
  }

  get subscribers(): number {
    return this.subs.size;
  }
}

function envelopeField(env: Envelope, fp: string[]): string | undefined {
  if (fp.length === 0) return undefined;
  switch (fp[0]) {
    case "namespace":
      return env.namespace;
    case "topic":
      return env.topic;
    case "timestamp":
      return env.timestamp.toISOString();
    default:
      return undefined;
  }
}
