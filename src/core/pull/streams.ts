// Streams registered by id (containerd's streaming manager): a client opens a stream on the
// Streaming service, names it, and passes the name in another call (a transfer's progress
// stream, a resolver's auth stream). Messages are protobuf Anys in both directions.
import type { Any } from "@bufbuild/protobuf/wkt";
import { errAlreadyExists, errNotFound } from "../../base/errdefs.js";

export interface AnyStream {
  send(msg: Any): void;
  /** The next message from the client; undefined once it half-closed. */
  recv(): Promise<Any | undefined>;
  close(): void;
}

/** A queue that an async generator drains. */
export class AsyncQueue<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private waiting: ((r: IteratorResult<T>) => void) | undefined;
  private ended = false;

  push(v: T): void {
    if (this.ended) return;
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = undefined;
      w({ value: v, done: false });
    } else this.items.push(v);
  }

  end(): void {
    this.ended = true;
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = undefined;
      w({ value: undefined, done: true });
    }
  }

  next(): Promise<IteratorResult<T>> {
    const v = this.items.shift();
    if (v !== undefined) return Promise.resolve({ value: v, done: false });
    if (this.ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((r) => {
      this.waiting = r;
    });
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return { next: () => this.next() };
  }
}

export class StreamManager {
  private readonly streams = new Map<string, AnyStream>();

  private key(ns: string, id: string): string {
    return `${ns}\0${id}`;
  }

  register(ns: string, id: string, s: AnyStream): () => void {
    const k = this.key(ns, id);
    if (this.streams.has(k)) throw errAlreadyExists(`stream ${JSON.stringify(id)}`);
    this.streams.set(k, s);
    return () => {
      if (this.streams.get(k) === s) this.streams.delete(k);
    };
  }

  get(ns: string, id: string): AnyStream {
    const s = this.streams.get(this.key(ns, id));
    if (!s) throw errNotFound(`stream ${JSON.stringify(id)}`);
    return s;
  }
}
