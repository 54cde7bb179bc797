// Responses put together from already encoded messages: a response whose only field is field 1
// (`repeated Item items = 1`, or a singular `Item item = 1`) is each item's bytes behind its tag
// and length. Services that encode their records themselves (cached per record in the CRI, or
// straight from SQLite rows for containers) hand the parts here and skip the generic encoder.
import type { DescMessage } from "@bufbuild/protobuf";
import { EncodedMessage } from "./handlers.js";
import { FRAME_HEADER } from "./wire.js";

export function varintLength(n: number): number {
  let len = 1;
  while (n >= 0x80) {
    n >>>= 7;
    len++;
  }
  return len;
}

function writeVarint(buf: Uint8Array, at: number, n: number): number {
  while (n >= 0x80) {
    buf[at++] = (n & 0x7f) | 0x80;
    n >>>= 7;
  }
  buf[at++] = n;
  return at;
}

/** A response (framed for the gRPC wire) whose field 1 holds `parts`, in order. */
export function encodedFieldOne<O extends DescMessage>(parts: readonly Uint8Array[]): EncodedMessage<O> {
  let size = 0;
  for (const b of parts) size += 1 + varintLength(b.length) + b.length;
  const framed = Buffer.allocUnsafe(FRAME_HEADER + size);
  let at = FRAME_HEADER;
  for (const b of parts) {
    framed[at++] = 0x0a; // field 1, length-delimited
    at = writeVarint(framed, at, b.length);
    framed.set(b, at);
    at += b.length;
  }
  return new EncodedMessage<O>(framed);
}
