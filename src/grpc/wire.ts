// gRPC-over-HTTP/2 wire details that do not depend on the transport: message framing (a 1-byte
// compressed flag and a 4-byte big-endian length before each message), grpc-timeout values, the
// percent-encoding of grpc-message, and binary ("-bin") metadata values.
import { zlib } from "../base/builtin.js";
import { errorf } from "../base/errdefs.js";

/** Bytes before each message: the compressed flag and the length. */
export const FRAME_HEADER = 5;

/** An error that travels as the given status; its message is sent as is (errdefs' errorf). */
export const statusError = errorf;

/** One message with its 5-byte prefix, in a single buffer (one write per message). */
export function frameMessage(msg: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(FRAME_HEADER + msg.byteLength);
  out[0] = 0;
  out.writeUInt32BE(msg.byteLength, 1);
  out.set(msg, FRAME_HEADER);
  return out;
}

/** Inflates a message, never past `max` bytes (a decompression bomb stops at the limit). */
export type Decompressor = (b: Uint8Array, max: number) => Uint8Array;

/** Message decompression for a call's grpc-encoding; undefined when the encoding is unknown. */
export function decompressorFor(encoding: string | undefined): Decompressor | null | undefined {
  if (encoding === undefined || encoding === "identity") return null;
  if (encoding === "gzip") return gunzipBounded;
  return undefined;
}

/**
 * gunzip with its output capped one byte past `max`: a 1 MiB message of compressed zeros would
 * otherwise be inflated whole (a GiB, synchronously, stalling every call) before the size check.
 */
function gunzipBounded(b: Uint8Array, max: number): Uint8Array {
  try {
    return zlib().gunzipSync(b, { maxOutputLength: max + 1 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ERR_BUFFER_TOO_LARGE") throw err;
    throw statusError(
      "resource exhausted",
      `grpc: received message after decompression larger than max (>${max} vs. ${max})`,
    );
  }
}

/**
 * Splits the request body into messages. Chunks are the DATA frames as they arrive; a message
 * may span several and a chunk may hold several. Messages are handed over as views into the
 * chunk when they lie in one (the common case), copied together otherwise.
 */
export class MessageDecoder {
  private parts: Buffer[] = [];
  private buffered = 0;
  /** Length of the message being assembled, once its header is complete; -1 before. */
  private need = -1;
  private compressed = false;

  constructor(
    private readonly maxSize: number,
    private readonly decompress: Decompressor | null,
    private readonly onMessage: (msg: Uint8Array) => void,
  ) {}

  /** Feed one chunk; throws a BerthError on a protocol violation (the call must then fail). */
  push(chunk: Buffer): void {
    // fast path: nothing pending and the chunk holds whole messages
    let pos = 0;
    if (this.buffered === 0 && this.need < 0) {
      while (chunk.length - pos >= FRAME_HEADER) {
        const len = chunk.readUInt32BE(pos + 1);
        const flag = chunk[pos]!;
        this.check(flag, len);
        if (chunk.length - pos - FRAME_HEADER < len) break;
        const start = pos + FRAME_HEADER;
        pos = start + len;
        this.deliver(flag !== 0, chunk.subarray(start, pos));
      }
      if (pos === chunk.length) return;
      chunk = pos === 0 ? chunk : chunk.subarray(pos);
    }
    this.parts.push(chunk);
    this.buffered += chunk.length;
    this.drainParts();
  }

  /** True when a partial message is pending (the stream ended mid-message). */
  get partial(): boolean {
    return this.buffered > 0 || this.need >= 0;
  }

  private check(flag: number, len: number): void {
    if (flag !== 0 && flag !== 1) throw statusError("internal", `grpc: invalid compressed flag ${flag}`);
    if (flag === 1 && !this.decompress)
      throw statusError("internal", "grpc: compressed flag set with identity or empty encoding");
    if (len > this.maxSize)
      throw statusError(
        "resource exhausted",
        `grpc: received message larger than max (${len} vs. ${this.maxSize})`,
      );
  }

  private take(n: number): Buffer {
    const first = this.parts[0]!;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.parts.shift();
      else this.parts[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let got = 0;
      while (got < n) {
        const p = this.parts[0]!;
        const k = Math.min(p.length, n - got);
        p.copy(out, got, 0, k);
        got += k;
        if (k === p.length) this.parts.shift();
        else this.parts[0] = p.subarray(k);
      }
    }
    this.buffered -= n;
    return out;
  }

  private drainParts(): void {
    for (;;) {
      if (this.need < 0) {
        if (this.buffered < FRAME_HEADER) return;
        const h = this.take(FRAME_HEADER);
        const len = h.readUInt32BE(1);
        this.check(h[0]!, len);
        this.compressed = h[0] === 1;
        this.need = len;
      }
      if (this.buffered < this.need) return;
      const body = this.need === 0 ? Buffer.alloc(0) : this.take(this.need);
      this.need = -1;
      this.deliver(this.compressed, body);
    }
  }

  private deliver(compressed: boolean, body: Uint8Array): void {
    if (compressed) {
      body = this.decompress!(body, this.maxSize);
      if (body.byteLength > this.maxSize)
        throw statusError(
          "resource exhausted",
          `grpc: received message after decompression larger than max (${body.byteLength} vs. ${this.maxSize})`,
        );
    }
    this.onMessage(body);
  }
}

const TIMEOUT_UNIT_MS: Record<string, number> = {
  H: 3_600_000,
  M: 60_000,
  S: 1000,
  m: 1,
  u: 1e-3,
  n: 1e-6,
};

/**
 * grpc-timeout: at most 8 ASCII digits and a unit (H, M, S, m, u, n). Returns milliseconds, or
 * undefined when the value is malformed.
 */
export function parseTimeout(v: string): number | undefined {
  if (v.length < 2 || v.length > 9) return undefined;
  const unit = TIMEOUT_UNIT_MS[v[v.length - 1]!];
  if (unit === undefined) return undefined;
  let n = 0;
  for (let i = 0; i < v.length - 1; i++) {
    const c = v.charCodeAt(i) - 48;
    if (c < 0 || c > 9) return undefined;
    n = n * 10 + c;
  }
  return n * unit;
}

/** Formats a timeout in milliseconds as a grpc-timeout value (8 digits at most). */
export function formatTimeout(ms: number): string {
  const t = Math.max(0, Math.ceil(ms));
  if (t < 1e8) return `${t}m`;
  const s = Math.ceil(t / 1000);
  if (s < 1e8) return `${s}S`;
  return `${Math.min(99_999_999, Math.ceil(s / 3600))}H`;
}

const HEX = "0123456789ABCDEF";

/**
 * grpc-message: UTF-8 bytes outside printable ASCII, and '%' itself, become %XX. Plain ASCII
 * messages (the usual case) come back unchanged without encoding work.
 */
export function encodeGrpcMessage(msg: string): string {
  let plain = true;
  for (let i = 0; i < msg.length; i++) {
    const c = msg.charCodeAt(i);
    if (c < 0x20 || c > 0x7e || c === 0x25) {
      plain = false;
      break;
    }
  }
  if (plain) return msg;
  let out = "";
  for (const b of Buffer.from(msg, "utf8")) {
    if (b < 0x20 || b > 0x7e || b === 0x25) out += `%${HEX[b >> 4]}${HEX[b & 15]}`;
    else out += String.fromCharCode(b);
  }
  return out;
}

const hexVal = (c: number): number =>
  c >= 48 && c <= 57 ? c - 48 : c >= 65 && c <= 70 ? c - 55 : c >= 97 && c <= 102 ? c - 87 : -1;

/** Reverses encodeGrpcMessage; a '%' not followed by two hex digits stays as it is. */
export function decodeGrpcMessage(v: string): string {
  if (!v.includes("%")) return v;
  const bytes: number[] = [];
  for (let i = 0; i < v.length; i++) {
    const c = v.charCodeAt(i);
    if (c === 0x25 && i + 2 < v.length) {
      const hi = hexVal(v.charCodeAt(i + 1));
      const lo = hexVal(v.charCodeAt(i + 2));
      if (hi >= 0 && lo >= 0) {
        bytes.push((hi << 4) | lo);
        i += 2;
        continue;
      }
    }
    // header values are ASCII; anything else is passed through as UTF-8
    for (const b of Buffer.from(v[i]!, "utf8")) bytes.push(b);
  }
  return Buffer.from(bytes).toString("utf8");
}

/** Binary metadata ("-bin" keys) is base64, padded or not. */
export function decodeBinaryHeader(v: string): Buffer {
  return Buffer.from(v, "base64");
}

export function encodeBinaryHeader(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("base64").replace(/=+$/, "");
}
