// WebSocket (RFC 6455): the opening handshake's accept key, frame encoding and parsing, and a
// connection object for either end (a client masks what it sends, a server must not).
//
//   |FIN|RSV1-3|opcode(4)|MASK|len(7)|[len 16 or 64]|[masking key 32]|payload
//
// Messages may be fragmented (continuation frames); control frames (close, ping, pong) may
// arrive between fragments and are answered at once: ping with pong, close with close.
import { createHash, randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import type { Duplex } from "node:stream";

export const WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

export const Opcode = {
  CONTINUATION: 0x0,
  TEXT: 0x1,
  BINARY: 0x2,
  CLOSE: 0x8,
  PING: 0x9,
  PONG: 0xa,
} as const;

/** The Sec-WebSocket-Accept value for a client's Sec-WebSocket-Key (RFC 6455 section 4.2.2). */
export function acceptKey(key: string): string {
  return createHash("sha1")
    .update(key + WS_GUID)
    .digest("base64");
}

export interface WsFrame {
  fin: boolean;
  opcode: number;
  payload: Buffer;
  /** The masking key the frame carried (the payload here is already unmasked). */
  mask?: Buffer;
}

/** XOR with the 4-byte key (RFC 6455 section 5.3); masking and unmasking are the same. */
export function applyMask(data: Buffer, mask: Buffer): Buffer {
  const out = Buffer.allocUnsafe(data.length);
  for (let i = 0; i < data.length; i++) out[i] = data[i]! ^ mask[i & 3]!;
  return out;
}

export function encodeFrame(f: WsFrame): Buffer {
  const len = f.payload.length;
  const extra = len < 126 ? 0 : len < 0x10000 ? 2 : 8;
  const head = Buffer.alloc(2 + extra + (f.mask ? 4 : 0));
  head[0] = (f.fin ? 0x80 : 0) | (f.opcode & 0x0f);
  const maskBit = f.mask ? 0x80 : 0;
  if (extra === 0) head[1] = maskBit | len;
  else if (extra === 2) {
    head[1] = maskBit | 126;
    head.writeUInt16BE(len, 2);
  } else {
    head[1] = maskBit | 127;
    head.writeBigUInt64BE(BigInt(len), 2);
  }
  if (f.mask) {
    f.mask.copy(head, 2 + extra);
    return Buffer.concat([head, applyMask(f.payload, f.mask)]);
  }
  return Buffer.concat([head, f.payload]);
}

/** Splits bytes into frames (payloads unmasked); throws on a malformed header. */
export function parseFrames(buf: Buffer, maxPayload = 64 * 1024 * 1024): { frames: WsFrame[]; rest: Buffer } {
  const frames: WsFrame[] = [];
  let off = 0;
  for (;;) {
    if (buf.length - off < 2) break;
    const b0 = buf[off]!;
    const b1 = buf[off + 1]!;
    if (b0 & 0x70) throw new Error("WebSocket frame with reserved bits set");
    let len = b1 & 0x7f;
    let p = off + 2;
    if (len === 126) {
      if (buf.length - p < 2) break;
      len = buf.readUInt16BE(p);
      p += 2;
    } else if (len === 127) {
      if (buf.length - p < 8) break;
      const big = buf.readBigUInt64BE(p);
      if (big > BigInt(maxPayload)) throw new Error("WebSocket frame too large");
      len = Number(big);
      p += 8;
    }
    if (len > maxPayload) throw new Error("WebSocket frame too large");
    let mask: Buffer | undefined;
    if (b1 & 0x80) {
      if (buf.length - p < 4) break;
      mask = buf.subarray(p, p + 4);
      p += 4;
    }
    if (buf.length - p < len) break;
    const raw = buf.subarray(p, p + len);
    frames.push({
      fin: (b0 & 0x80) !== 0,
      opcode: b0 & 0x0f,
      payload: mask ? applyMask(raw, mask) : raw,
      mask,
    });
    off = p + len;
  }
  return { frames, rest: buf.subarray(off) };
}

/**
 * A WebSocket connection over an upgraded socket. Emits `message` (data, isBinary) for every
 * complete data message and `close` (code, reason) once, when the socket is gone.
 */
export class WsConnection extends EventEmitter {
  private buf: Buffer = Buffer.alloc(0);
  private fragments: Buffer[] = [];
  private fragmentOpcode = 0;
  private closeSent = false;
  private closeCode = 1006;
  private closeReason = "";
  closed = false;

  constructor(
    readonly socket: Duplex,
    readonly role: "server" | "client",
  ) {
    super();
    socket.on("data", (b: Buffer) => this.onBytes(b));
    socket.on("error", () => {});
    socket.once("close", () => this.finish());
    socket.once("end", () => socket.end());
  }

  private onBytes(b: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, b]) : b;
    let parsed: ReturnType<typeof parseFrames>;
    try {
      parsed = parseFrames(this.buf);
    } catch {
      this.close(1002, "protocol error");
      return;
    }
    this.buf = parsed.rest;
    for (const f of parsed.frames) this.onFrame(f);
  }

  private onFrame(f: WsFrame): void {
    // a server must get masked frames and a client unmasked ones (RFC 6455 section 5.1)
    if ((this.role === "server") !== (f.mask !== undefined)) {
      this.close(1002, "bad masking");
      return;
    }
    switch (f.opcode) {
      case Opcode.PING:
        this.sendFrame(Opcode.PONG, f.payload);
        return;
      case Opcode.PONG:
        this.emit("pong", f.payload);
        return;
      case Opcode.CLOSE:
        this.closeCode = f.payload.length >= 2 ? f.payload.readUInt16BE(0) : 1005;
        this.closeReason = f.payload.subarray(2).toString("utf8");
        if (!this.closeSent) this.close(f.payload.length >= 2 ? this.closeCode : 1000);
        else if (this.role === "client") this.socket.end();
        return;
      case Opcode.CONTINUATION:
        if (this.fragmentOpcode === 0) {
          this.close(1002, "unexpected continuation");
          return;
        }
        this.fragments.push(f.payload);
        break;
      case Opcode.TEXT:
      case Opcode.BINARY:
        if (this.fragmentOpcode !== 0) {
          this.close(1002, "expected continuation");
          return;
        }
        this.fragmentOpcode = f.opcode;
        this.fragments = [f.payload];
        break;
      default:
        this.close(1002, "unknown opcode");
        return;
    }
    if (!f.fin) return;
    const data = this.fragments.length === 1 ? this.fragments[0]! : Buffer.concat(this.fragments);
    const binary = this.fragmentOpcode === Opcode.BINARY;
    this.fragments = [];
    this.fragmentOpcode = 0;
    this.emit("message", data, binary);
  }

  private sendFrame(opcode: number, payload: Buffer): boolean {
    if (this.socket.destroyed || this.closeSent) return true;
    const mask = this.role === "client" ? randomBytes(4) : undefined;
    return this.socket.write(encodeFrame({ fin: true, opcode, payload, mask }));
  }

  /** Send one message; resolves when the socket took it (waits for drain under backpressure). */
  async send(data: Buffer | string, binary = typeof data !== "string"): Promise<void> {
    const ok = this.sendFrame(binary ? Opcode.BINARY : Opcode.TEXT, Buffer.from(data));
    if (!ok && !this.socket.destroyed) await new Promise<void>((r) => this.socket.once("drain", r));
  }

  ping(data = Buffer.alloc(0)): void {
    this.sendFrame(Opcode.PING, data);
  }

  /** Start the closing handshake; the socket ends when the peer answers (or after 2s). */
  close(code = 1000, reason = ""): void {
    if (this.closeSent || this.socket.destroyed) return;
    const r = Buffer.from(reason, "utf8");
    const p = Buffer.alloc(2 + r.length);
    p.writeUInt16BE(code, 0);
    r.copy(p, 2);
    this.sendFrame(Opcode.CLOSE, p);
    this.closeSent = true;
    // the server closes the TCP connection first (RFC 6455 section 7.1.1)
    if (this.role === "server") this.socket.end();
    const t = setTimeout(() => this.socket.destroy(), 2000);
    t.unref();
  }

  private finish(): void {
    if (this.closed) return;
    this.closed = true;
    this.emit("close", this.closeCode, this.closeReason);
  }
}
