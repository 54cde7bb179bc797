// Raw HTTP/2 for tests that speak to berthd's gRPC socket byte by byte (RFC 7540: the client
// connection preface and the 9-byte frame header).

export const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

/** One frame: length (24 bits), type, flags, stream id (31 bits), payload. */
export function frame(type: number, flags: number, stream: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(stream & 0x7fffffff, 5);
  return Buffer.concat([h, payload]);
}

export interface RawFrame {
  type: number;
  flags: number;
  stream: number;
  payload: Buffer;
}

/** The complete frames at the start of `b` (a partial last frame is left out). */
export function framesOf(b: Buffer): RawFrame[] {
  const out: RawFrame[] = [];
  for (let at = 0; at + 9 <= b.length; ) {
    const len = b.readUIntBE(at, 3);
    if (at + 9 + len > b.length) break;
    out.push({
      type: b[at + 3]!,
      flags: b[at + 4]!,
      stream: b.readUInt32BE(at + 5) & 0x7fffffff,
      payload: b.subarray(at + 9, at + 9 + len),
    });
    at += 9 + len;
  }
  return out;
}
