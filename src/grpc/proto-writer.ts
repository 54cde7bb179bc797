// A minimal protobuf writer for the answers berth encodes by hand from its records (containers,
// images, snapshot infos) or puts together from already encoded items (the CRI's cached list
// entries): sizes are computed first, then every field is written once into a buffer of the
// exact size. Encoding rules from the protobuf wire format: a tag is (field << 3) | wire type;
// proto3 leaves out empty strings and bytes and zero numbers, writes a set message field even
// when empty, and writes a map entry as a message of key (1) and value (2).
import type { DescMessage } from "@bufbuild/protobuf";
import { EncodedMessage } from "./handlers.js";
import { FRAME_HEADER } from "./wire.js";

const LEN = 2; // wire type: length-delimited
const VARINT = 0;

/** Bytes a varint of a 32-bit unsigned value takes. */
export function varintLength(n: number): number {
  let len = 1;
  while (n >= 0x80) {
    n >>>= 7;
    len++;
  }
  return len;
}

/** varintLength for any non-negative safe integer (int64 values), not only 32-bit ones. */
export function varintLength64(n: number): number {
  let len = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    len++;
  }
  return len;
}

export const utf8 = (s: string) => Buffer.byteLength(s, "utf8");
/** Size of a length-delimited field (tag of a field below 16: one byte) holding `len` bytes. */
export const fieldSize = (len: number) => 1 + varintLength(len) + len;
export const stringFieldSize = (byteLen: number) => (byteLen === 0 ? 0 : fieldSize(byteLen));
/** Size of a varint field (below 16), left out when zero. */
export const varintFieldSize = (n: number) => (n === 0 ? 0 : 1 + varintLength64(n));

export class Writer {
  at = 0;
  constructor(readonly buf: Buffer) {}

  varint(n: number): void {
    const b = this.buf;
    while (n >= 0x80) {
      b[this.at++] = (n % 128) | 0x80;
      n = Math.floor(n / 128);
    }
    b[this.at++] = n;
  }

  tag(field: number, wire: number): void {
    this.buf[this.at++] = (field << 3) | wire;
  }

  /** A length-delimited field's tag and length; `len` bytes of content must follow. */
  open(field: number, len: number): void {
    this.tag(field, LEN);
    this.varint(len);
  }

  /** A string field of `byteLen` UTF-8 bytes; none when empty. */
  string(field: number, s: string, byteLen: number): void {
    if (byteLen === 0) return;
    this.open(field, byteLen);
    this.at += this.buf.write(s, this.at, "utf8");
  }

  /** A string that is always written (a map entry's key or value). */
  stringAlways(field: number, s: string, byteLen: number): void {
    this.open(field, byteLen);
    this.at += this.buf.write(s, this.at, "utf8");
  }

  bytes(field: number, b: Uint8Array): void {
    if (b.length === 0) return;
    this.open(field, b.length);
    this.buf.set(b, this.at);
    this.at += b.length;
  }

  /** A varint field; none when zero. */
  uint(field: number, n: number): void {
    if (n === 0) return;
    this.tag(field, VARINT);
    this.varint(n);
  }
}

/** A map<string, string>: each entry's byte lengths and size, in insertion order. */
export function stringMapPlan(m: Record<string, string>) {
  return Object.entries(m).map(([k, v]) => {
    const kl = utf8(k);
    const vl = utf8(v);
    return { k, v, kl, vl, size: fieldSize(kl) + fieldSize(vl) };
  });
}

export const stringMapSize = (plan: ReturnType<typeof stringMapPlan>) => {
  let size = 0;
  for (const e of plan) size += fieldSize(e.size);
  return size;
};

export function writeStringMap(w: Writer, field: number, plan: ReturnType<typeof stringMapPlan>): void {
  for (const e of plan) {
    w.open(field, e.size);
    w.stringAlways(1, e.k, e.kl);
    w.stringAlways(2, e.v, e.vl);
  }
}

/** google.protobuf.Timestamp of a Date: [seconds, nanos]. */
export function timestampParts(d: Date): [seconds: number, nanos: number] {
  const ms = d.getTime();
  const seconds = Math.floor(ms / 1000);
  return [seconds, (ms - seconds * 1000) * 1_000_000];
}

export const timestampSize = ([seconds, nanos]: [number, number]) =>
  varintFieldSize(seconds) + varintFieldSize(nanos);

/** A Timestamp message field (seconds 1, nanos 2), written even when zero. */
export function writeTimestamp(w: Writer, field: number, t: [number, number], size: number): void {
  w.open(field, size);
  w.uint(1, t[0]);
  w.uint(2, t[1]);
}

/** A record's created and updated times, as two Timestamp fields: their parts and sizes. */
export function timesPlan(created: Date, updated: Date) {
  const c = timestampParts(created);
  const u = timestampParts(updated);
  const cs = timestampSize(c);
  const us = timestampSize(u);
  return { c, u, cs, us, size: fieldSize(cs) + fieldSize(us) };
}

/** The two Timestamp fields of a timesPlan: created at `field`, updated at `field + 1`. */
export function writeTimes(w: Writer, field: number, t: ReturnType<typeof timesPlan>): void {
  writeTimestamp(w, field, t.c, t.cs);
  writeTimestamp(w, field + 1, t.u, t.us);
}

/**
 * A response whose field 1 holds one message per item (a repeated field, or a singular one with
 * one item), framed for the gRPC wire: `plans` give each item's size, `write` writes one.
 */
export function fieldOneResponse<P extends { size: number }, O extends DescMessage>(
  plans: readonly P[],
  write: (w: Writer, p: P) => void,
): EncodedMessage<O> {
  // sized first, so the answer is one part of exactly its size
  let size = FRAME_HEADER;
  for (const p of plans) size += fieldSize(p.size);
  const parts = new FieldOneParts<P>(write, size);
  for (const p of plans) parts.add(p);
  return parts.finish<O>();
}

/** An item that is already encoded: its bytes are copied as they are. */
export interface Encoded {
  b: Uint8Array;
  size: number;
}

export function writeEncoded(w: Writer, p: Encoded): void {
  w.buf.set(p.b, w.at);
  w.at += p.size;
}

/** A response whose field 1 holds `parts`, messages already encoded, in order. */
export function encodedFieldOne<O extends DescMessage>(parts: readonly Uint8Array[]): EncodedMessage<O> {
  return fieldOneResponse<Encoded, O>(
    parts.map((b) => ({ b, size: b.length })),
    writeEncoded,
  );
}

/**
 * A message as field 1 of another (its tag, its length, then the message): what a store keeps
 * for a record whose answers all carry it as their field 1 (Get and List of containers and
 * images), so that the answer's body is the kept items one after the other. `write` writes the
 * message planned as `p`.
 */
export function fieldOneItem<P extends { size: number }>(p: P, write: (w: Writer, p: P) => void): Buffer {
  const w = new Writer(Buffer.allocUnsafe(fieldSize(p.size)));
  w.open(1, p.size);
  write(w, p);
  if (w.at !== w.buf.length)
    throw new Error(`hand-encoded message: wrote ${w.at} bytes, sized ${w.buf.length}`);
  return w.buf;
}

/** Past this size a kept answer is sent as it is, after a part of its own for the prefix. */
const COPY_KEPT_BELOW = 64 << 10;

/**
 * An answer whose body is `parts` joined: field-1 items (fieldOneItem) one after the other, as a
 * store reads them. A small answer is copied after the prefix's room, a large one is not copied.
 */
export function keptAnswer<O extends DescMessage>(parts: readonly Buffer[]): EncodedMessage<O> {
  let n = 0;
  for (const p of parts) n += p.length;
  if (n >= COPY_KEPT_BELOW) return new EncodedMessage<O>(Buffer.allocUnsafe(FRAME_HEADER), parts);
  const framed = Buffer.allocUnsafe(FRAME_HEADER + n);
  let at = FRAME_HEADER;
  for (const p of parts) at += p.copy(framed, at);
  return new EncodedMessage<O>(framed);
}

/** Bytes per part of a FieldOneParts answer. */
export const PART_BYTES = 256 << 10;

/**
 * A response whose field 1 repeats items added one at a time, in parts of about `partBytes`:
 * for lists read row by row (Containers/List), each row's record is encoded as soon as it is
 * read and can be dropped at once. Holding 5,000 records until the answer's total size is
 * known kept them alive through several scavenges, and copying the answer into one buffer
 * cost another pass over ~20 MB (docs/performance.md, finding 44). An item never spans two
 * parts; one larger than `partBytes` gets a part of its own size.
 */
export class FieldOneParts<P extends { size: number }> {
  private readonly done: Buffer[] = [];
  private w: Writer;

  constructor(
    private readonly write: (w: Writer, p: P) => void,
    private readonly partBytes = PART_BYTES,
  ) {
    this.w = new Writer(Buffer.allocUnsafe(Math.max(partBytes, FRAME_HEADER)));
    this.w.at = FRAME_HEADER;
  }

  add(p: P): void {
    const need = fieldSize(p.size);
    if (this.w.at + need > this.w.buf.length) {
      this.done.push(this.w.buf.subarray(0, this.w.at));
      this.w = new Writer(Buffer.allocUnsafe(Math.max(this.partBytes, need)));
    }
    const w = this.w;
    w.open(1, p.size);
    const start = w.at;
    this.write(w, p);
    if (w.at - start !== p.size)
      throw new Error(`hand-encoded message: wrote ${w.at - start} bytes, sized ${p.size}`);
  }

  /** The answer: the first part keeps the room for the transport's length prefix. */
  finish<O extends DescMessage>(): EncodedMessage<O> {
    // a part, once started, holds at least one item: none is empty
    const [first, ...rest] = [...this.done, this.w.buf.subarray(0, this.w.at)];
    return new EncodedMessage<O>(first!, rest);
  }
}
