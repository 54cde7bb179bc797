// ttrpc framing, wire-compatible with containerd/ttrpc: every message is a 10-byte header
// (4-byte big-endian data length, 4-byte big-endian stream id, 1-byte type, 1-byte flags)
// followed by the data. Requests and responses carry the protobuf ttrpc.Request/Response; data
// messages (streaming, ttrpc 1.2) carry one encoded message of the call's own type.
import { BerthError } from "../base/errdefs.js";

export const HEADER_LENGTH = 10;
/** The largest data length either side accepts (4 MiB). */
export const MAX_MESSAGE_LENGTH = 4 << 20;

export const MessageType = {
  Request: 1,
  Response: 2,
  Data: 3,
} as const;

export const Flag = {
  /** Request: non-unary, the sender sends no data. Data: the sender's last message. */
  RemoteClosed: 0x1,
  /** Request: non-unary, data follows from the sender. */
  RemoteOpen: 0x2,
  /** Data: this message carries no data (only the flags matter). */
  NoData: 0x4,
} as const;

/** The metadata key that carries the namespace on ttrpc, as containerd sets and reads it. */
export const NAMESPACE_KEY = "containerd-namespace-ttrpc";
/** gRPC's key, which containerd's namespace lookup also accepts. */
export const GRPC_NAMESPACE_KEY = "containerd-namespace";

export interface Frame {
  streamId: number;
  type: number;
  flags: number;
  data: Uint8Array;
}

/** ttrpc's message for a frame over the limit (a ResourceExhausted status). */
export function oversizedError(length: number): BerthError {
  const err = new BerthError("resource exhausted");
  err.message = `message length ${length} exceed maximum message size of ${MAX_MESSAGE_LENGTH}`;
  return err;
}

/** Encode one frame; throws ResourceExhausted for data over the limit (nothing is sent then). */
export function encodeFrame(streamId: number, type: number, flags: number, data: Uint8Array): Buffer {
  if (data.length > MAX_MESSAGE_LENGTH) throw oversizedError(data.length);
  const buf = Buffer.allocUnsafe(HEADER_LENGTH + data.length);
  buf.writeUInt32BE(data.length, 0);
  buf.writeUInt32BE(streamId >>> 0, 4);
  buf.writeUInt8(type, 8);
  buf.writeUInt8(flags, 9);
  buf.set(data, HEADER_LENGTH);
  return buf;
}

/** What the reader hands on: a frame, or an oversized one whose data it skipped. */
export type ReadEvent = { frame: Frame } | { oversized: { streamId: number; type: number; length: number } };

/**
 * Incremental frame parser: push socket chunks in, get whole frames out. An oversized frame's
 * data is discarded as it arrives (never buffered) and reported once, as Go's channel does.
 */
export class FrameReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private skipping = 0;

  push(chunk: Buffer): ReadEvent[] {
    const out: ReadEvent[] = [];
    if (this.skipping > 0) {
      const n = Math.min(this.skipping, chunk.length);
      this.skipping -= n;
      chunk = chunk.subarray(n);
    }
    if (chunk.length > 0) {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
    }
    for (;;) {
      if (this.skipping > 0 || this.buffered < HEADER_LENGTH) break;
      const head = this.peek(HEADER_LENGTH);
      const length = head.readUInt32BE(0);
      const streamId = head.readUInt32BE(4);
      const type = head.readUInt8(8);
      const flags = head.readUInt8(9);
      if (length > MAX_MESSAGE_LENGTH) {
        this.take(HEADER_LENGTH);
        const now = Math.min(length, this.buffered);
        this.take(now);
        this.skipping = length - now;
        out.push({ oversized: { streamId, type, length } });
        continue;
      }
      if (this.buffered < HEADER_LENGTH + length) break;
      this.take(HEADER_LENGTH);
      const data = length === 0 ? new Uint8Array() : this.take(length);
      out.push({ frame: { streamId, type, flags, data } });
    }
    return out;
  }

  private peek(n: number): Buffer {
    if (this.chunks[0]!.length >= n) return this.chunks[0]!.subarray(0, n);
    return Buffer.concat(this.chunks).subarray(0, n);
  }

  private take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      const all = Buffer.concat(this.chunks);
      out = all.subarray(0, n);
      this.chunks = all.length > n ? [all.subarray(n)] : [];
    }
    this.buffered -= n;
    return out;
  }
}
