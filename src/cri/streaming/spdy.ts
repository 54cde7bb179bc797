// SPDY/3.1 (the framing the kubelet's and client-go's streaming clients speak after an
// `Upgrade: SPDY/3.1` handshake), written from the SPDY protocol draft 3.1:
//
//   control frame: |1|version(15)=3|type(16)|flags(8)|length(24)|data
//   data frame:    |0|stream-id(31)|flags(8)|length(24)|data
//
// Header blocks (SYN_STREAM, SYN_REPLY, HEADERS) are name/value lists with 32-bit counts and
// lengths, compressed by one zlib stream per direction for the whole session, seeded with the
// SPDY/3 dictionary and sync-flushed after every block. Node's zlib streams are asynchronous, so
// inbound frames are handled one after another through a promise chain, and outbound header
// blocks are compressed in order before their frame is written.
//
// Flow control (3.1): every stream and the session start with a 64 KiB send window; DATA spends
// it and WINDOW_UPDATE refills it. As a receiver this side sends WINDOW_UPDATEs as the reader
// consumes. As a sender it obeys the peer's windows once the peer has shown that it does flow
// control (sent a WINDOW_UPDATE): SPDY/3 peers without flow control never refill a window.
import { EventEmitter } from "node:events";
import type { Socket } from "node:net";
import { Duplex } from "node:stream";
import zlib from "node:zlib";
import { SPDY3_DICTIONARY } from "./spdy-dictionary.js";

export const SPDY_VERSION = 3;

export const FrameType = {
  SYN_STREAM: 1,
  SYN_REPLY: 2,
  RST_STREAM: 3,
  SETTINGS: 4,
  PING: 6,
  GOAWAY: 7,
  HEADERS: 8,
  WINDOW_UPDATE: 9,
} as const;

export const FLAG_FIN = 0x01;
export const FLAG_UNIDIRECTIONAL = 0x02;

export const RstStatus = {
  PROTOCOL_ERROR: 1,
  INVALID_STREAM: 2,
  REFUSED_STREAM: 3,
  UNSUPPORTED_VERSION: 4,
  CANCEL: 5,
  INTERNAL_ERROR: 6,
  FLOW_CONTROL_ERROR: 7,
  STREAM_IN_USE: 8,
  STREAM_ALREADY_CLOSED: 9,
  FRAME_TOO_LARGE: 11,
} as const;

export const SETTINGS_INITIAL_WINDOW_SIZE = 7;
export const DEFAULT_WINDOW = 64 * 1024;
/** The largest DATA payload this side sends in one frame. */
export const MAX_DATA_FRAME = 32 * 1024;
/** Frames above this are refused (the draft lets receivers bound control frames). */
const MAX_FRAME = 16 * 1024 * 1024 - 1;

export type SpdyHeaders = Record<string, string>;

/** A parsed frame (control or data). */
export type SpdyFrame =
  | { control: false; streamId: number; flags: number; data: Buffer }
  | { control: true; version: number; type: number; flags: number; data: Buffer };

export function encodeControl(type: number, flags: number, data: Buffer): Buffer {
  if (data.length > MAX_FRAME) throw new Error("SPDY frame too large");
  const h = Buffer.alloc(8);
  h.writeUInt16BE(0x8000 | SPDY_VERSION, 0);
  h.writeUInt16BE(type, 2);
  h.writeUInt32BE(((flags & 0xff) << 24) | data.length, 4);
  return Buffer.concat([h, data]);
}

export function encodeData(streamId: number, flags: number, data: Buffer): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt32BE(streamId & 0x7fffffff, 0);
  h.writeUInt32BE(((flags & 0xff) << 24) | data.length, 4);
  return Buffer.concat([h, data]);
}

/** Splits a byte stream into frames; returns the frames and what is left over. */
export function parseFrames(buf: Buffer): { frames: SpdyFrame[]; rest: Buffer } {
  const frames: SpdyFrame[] = [];
  let off = 0;
  while (buf.length - off >= 8) {
    const w0 = buf.readUInt32BE(off);
    const w1 = buf.readUInt32BE(off + 4);
    const len = w1 & 0xffffff;
    const flags = w1 >>> 24;
    if (buf.length - off < 8 + len) break;
    const data = buf.subarray(off + 8, off + 8 + len);
    if (w0 & 0x80000000)
      frames.push({ control: true, version: (w0 >>> 16) & 0x7fff, type: w0 & 0xffff, flags, data });
    else frames.push({ control: false, streamId: w0 & 0x7fffffff, flags, data });
    off += 8 + len;
  }
  return { frames, rest: buf.subarray(off) };
}

/** The uncompressed name/value block: count, then length-prefixed names and values. */
export function encodeHeaderBlock(headers: SpdyHeaders): Buffer {
  const entries = Object.entries(headers);
  const parts: Buffer[] = [];
  const n = Buffer.alloc(4);
  n.writeUInt32BE(entries.length);
  parts.push(n);
  for (const [k, v] of entries) {
    for (const s of [k.toLowerCase(), v]) {
      const b = Buffer.from(s, "utf8");
      const l = Buffer.alloc(4);
      l.writeUInt32BE(b.length);
      parts.push(l, b);
    }
  }
  return Buffer.concat(parts);
}

/** Parse an uncompressed name/value block; several values of a name are joined by NUL. */
export function decodeHeaderBlock(b: Buffer): SpdyHeaders {
  const out: SpdyHeaders = {};
  if (b.length < 4) throw new Error("short SPDY header block");
  const n = b.readUInt32BE(0);
  let off = 4;
  const str = () => {
    if (off + 4 > b.length) throw new Error("short SPDY header block");
    const l = b.readUInt32BE(off);
    off += 4;
    if (off + l > b.length) throw new Error("short SPDY header block");
    const s = b.subarray(off, off + l).toString("utf8");
    off += l;
    return s;
  };
  for (let i = 0; i < n; i++) {
    const k = str();
    out[k.toLowerCase()] = str();
  }
  return out;
}

/** One direction's zlib stream; every call is one sync-flushed block. Calls queue in order. */
class ZlibBlocks {
  private chain: Promise<unknown> = Promise.resolve();
  private out: Buffer[] = [];

  constructor(private readonly z: zlib.Deflate | zlib.Inflate) {
    z.on("data", (b: Buffer) => this.out.push(b));
    z.on("error", () => {});
  }

  run(input: Buffer): Promise<Buffer> {
    const p = this.chain.then(
      () =>
        new Promise<Buffer>((resolve, reject) => {
          const onErr = (e: Error) => reject(e);
          this.z.once("error", onErr);
          this.z.write(input);
          this.z.flush(zlib.constants.Z_SYNC_FLUSH, () => {
            this.z.off("error", onErr);
            const b = Buffer.concat(this.out);
            this.out = [];
            resolve(b);
          });
        }),
    );
    this.chain = p.catch(() => {});
    return p;
  }

  close(): void {
    this.z.close();
  }
}

export class HeaderCompressor {
  private readonly z = new ZlibBlocks(zlib.createDeflate({ dictionary: SPDY3_DICTIONARY }));
  compress(h: SpdyHeaders): Promise<Buffer> {
    return this.z.run(encodeHeaderBlock(h));
  }
  close(): void {
    this.z.close();
  }
}

export class HeaderDecompressor {
  private readonly z = new ZlibBlocks(zlib.createInflate({ dictionary: SPDY3_DICTIONARY }));
  async decompress(b: Buffer): Promise<SpdyHeaders> {
    return decodeHeaderBlock(await this.z.run(b));
  }
  close(): void {
    this.z.close();
  }
}

/** One SPDY stream as a Node duplex: writes become DATA frames, end() sends FIN. */
export class SpdyStream extends Duplex {
  /** Headers of the SYN_STREAM (or, for a stream this side opened, of the SYN_REPLY). */
  headers: SpdyHeaders;
  sendWindow: number;
  /** Bytes handed to the reader not yet announced back with WINDOW_UPDATE. */
  private unacked = 0;
  remoteClosed = false;
  localClosed = false;
  /** Resolves when this side may send DATA (after its SYN_REPLY or SYN_STREAM went out). */
  ready: Promise<void> = Promise.resolve();
  private readonly replied: Promise<SpdyHeaders>;
  private onReply!: (h: SpdyHeaders) => void;

  constructor(
    readonly session: SpdySession,
    readonly id: number,
    headers: SpdyHeaders,
  ) {
    super({ allowHalfOpen: true });
    this.headers = headers;
    this.sendWindow = session.initialSendWindow;
    this.replied = new Promise((r) => {
      this.onReply = r;
    });
    this.on("error", () => {});
  }

  /** For a stream this side opened: the peer's SYN_REPLY headers. */
  reply(): Promise<SpdyHeaders> {
    return this.replied;
  }

  /** @internal */
  gotReply(h: SpdyHeaders): void {
    this.headers = h;
    this.onReply(h);
  }

  /** @internal */
  gotData(b: Buffer): void {
    if (b.length === 0) return;
    this.unacked += b.length;
    this.push(b);
  }

  /** @internal */
  gotFin(): void {
    if (this.remoteClosed) return;
    this.remoteClosed = true;
    this.push(null);
    this.maybeDone();
  }

  override _read(): void {
    if (this.unacked > 0) {
      this.session.sendWindowUpdate(this.id, this.unacked);
      this.unacked = 0;
    }
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.session.sendData(this, chunk).then(() => cb(), cb);
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.session.sendData(this, Buffer.alloc(0), true).then(() => {
      this.localClosed = true;
      this.maybeDone();
      cb();
    }, cb);
  }

  override _destroy(err: Error | null, cb: (err: Error | null) => void): void {
    if (!(this.localClosed && this.remoteClosed)) this.session.reset(this.id, RstStatus.CANCEL, false);
    this.session.forget(this.id);
    cb(err);
  }

  /** Abort the stream: RST_STREAM to the peer. */
  reset(status: number = RstStatus.CANCEL): void {
    this.session.reset(this.id, status, true);
  }

  private maybeDone(): void {
    if (this.localClosed && this.remoteClosed) this.session.forget(this.id);
  }
}

export interface SpdySessionOptions {
  /** true for the side that answered the HTTP upgrade (it opens even stream ids). */
  server: boolean;
}

/**
 * A SPDY/3.1 session over a socket. Emits `stream` (SpdyStream) for every SYN_STREAM from the peer
 * (answered at once with an empty SYN_REPLY, as the Kubernetes streaming servers do) and `close`
 * once the socket is gone.
 */
export class SpdySession extends EventEmitter {
  private buf: Buffer = Buffer.alloc(0);
  private inChain: Promise<void> = Promise.resolve();
  private readonly streams = new Map<number, SpdyStream>();
  private readonly compressor = new HeaderCompressor();
  private readonly decompressor = new HeaderDecompressor();
  private nextId: number;
  private nextPing: number;
  private lastPeerStream = 0;
  private goingAway = false;
  closed = false;
  initialSendWindow = DEFAULT_WINDOW;
  sessionSendWindow = DEFAULT_WINDOW;
  private sessionUnacked = 0;
  /** The peer sent a WINDOW_UPDATE: it does flow control, so its windows are obeyed. */
  private peerFlowControl = false;
  private windowWaiters: (() => void)[] = [];
  private readonly pings = new Map<number, () => void>();

  constructor(
    readonly socket: Socket,
    readonly opts: SpdySessionOptions,
  ) {
    super();
    this.nextId = opts.server ? 2 : 1;
    this.nextPing = opts.server ? 2 : 1;
    socket.setNoDelay(true);
    socket.on("data", (b: Buffer) => this.onBytes(b));
    socket.on("error", () => {});
    // frames already read are handled (header blocks decompress asynchronously) before the end
    socket.once("close", () => {
      void this.inChain.finally(() => this.teardown());
    });
    socket.once("end", () => socket.end());
  }

  private onBytes(b: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, b]) : b;
    let parsed: ReturnType<typeof parseFrames>;
    try {
      parsed = parseFrames(this.buf);
    } catch {
      this.destroy();
      return;
    }
    this.buf = parsed.rest;
    for (const f of parsed.frames) {
      // a frame that cannot be handled (a corrupt header block) ends the session: the shared
      // zlib state is lost with it
      this.inChain = this.inChain.then(() => this.handle(f)).catch(() => this.destroy());
    }
  }

  private async handle(f: SpdyFrame): Promise<void> {
    if (this.closed) return;
    if (!f.control) {
      const s = this.streams.get(f.streamId);
      this.sessionUnacked += f.data.length;
      // session-level credit comes back at once: per-stream windows bound what is buffered
      if (this.sessionUnacked >= DEFAULT_WINDOW / 2) {
        this.sendWindowUpdate(0, this.sessionUnacked);
        this.sessionUnacked = 0;
      }
      if (!s) {
        this.writeFrame(rstFrame(f.streamId, RstStatus.INVALID_STREAM));
        return;
      }
      s.gotData(f.data);
      if (f.flags & FLAG_FIN) s.gotFin();
      return;
    }
    if (f.version !== SPDY_VERSION) {
      this.writeFrame(rstFrame(0, RstStatus.UNSUPPORTED_VERSION));
      return;
    }
    const d = f.data;
    switch (f.type) {
      case FrameType.SYN_STREAM: {
        const id = d.readUInt32BE(0) & 0x7fffffff;
        const headers = await this.decompressor.decompress(d.subarray(10));
        if (this.goingAway || this.streams.has(id)) {
          this.writeFrame(rstFrame(id, this.goingAway ? RstStatus.REFUSED_STREAM : RstStatus.STREAM_IN_USE));
          return;
        }
        this.lastPeerStream = Math.max(this.lastPeerStream, id);
        const s = new SpdyStream(this, id, headers);
        this.streams.set(id, s);
        s.ready = this.sendHeaders(FrameType.SYN_REPLY, id, 0, {});
        if (f.flags & FLAG_FIN) s.gotFin();
        if (f.flags & FLAG_UNIDIRECTIONAL) {
          s.localClosed = true;
        }
        this.emit("stream", s);
        return;
      }
      case FrameType.SYN_REPLY: {
        const id = d.readUInt32BE(0) & 0x7fffffff;
        const headers = await this.decompressor.decompress(d.subarray(4));
        const s = this.streams.get(id);
        if (!s) return;
        s.gotReply(headers);
        if (f.flags & FLAG_FIN) s.gotFin();
        return;
      }
      case FrameType.HEADERS: {
        const id = d.readUInt32BE(0) & 0x7fffffff;
        await this.decompressor.decompress(d.subarray(4));
        const s = this.streams.get(id);
        if (s && f.flags & FLAG_FIN) s.gotFin();
        return;
      }
      case FrameType.RST_STREAM: {
        const id = d.readUInt32BE(0) & 0x7fffffff;
        const s = this.streams.get(id);
        if (s) {
          this.streams.delete(id);
          s.localClosed = s.remoteClosed = true;
          s.destroy(new Error(`stream reset by peer (status ${d.readUInt32BE(4)})`));
        }
        return;
      }
      case FrameType.SETTINGS: {
        const n = d.readUInt32BE(0);
        for (let i = 0; i < n; i++) {
          const id = d.readUInt32BE(4 + i * 8) & 0xffffff;
          const value = d.readUInt32BE(8 + i * 8);
          if (id === SETTINGS_INITIAL_WINDOW_SIZE) {
            const delta = value - this.initialSendWindow;
            this.initialSendWindow = value;
            for (const s of this.streams.values()) s.sendWindow += delta;
            this.wake();
          }
        }
        return;
      }
      case FrameType.PING: {
        const id = d.readUInt32BE(0);
        const mine = this.pings.get(id);
        if (mine) {
          this.pings.delete(id);
          mine();
        } else this.writeFrame(encodeControl(FrameType.PING, 0, d.subarray(0, 4)));
        return;
      }
      case FrameType.GOAWAY:
        this.goingAway = true;
        if (this.streams.size === 0) this.destroy();
        return;
      case FrameType.WINDOW_UPDATE: {
        const id = d.readUInt32BE(0) & 0x7fffffff;
        const delta = d.readUInt32BE(4) & 0x7fffffff;
        this.peerFlowControl = true;
        if (id === 0) this.sessionSendWindow += delta;
        else {
          const s = this.streams.get(id);
          if (s) s.sendWindow += delta;
        }
        this.wake();
        return;
      }
      default:
        return; // unknown control frames are ignored, as the draft asks
    }
  }

  private wake(): void {
    const w = this.windowWaiters;
    this.windowWaiters = [];
    for (const f of w) f();
  }

  private waitWindow(): Promise<void> {
    return new Promise((r) => this.windowWaiters.push(r));
  }

  /** Open a stream (client side of the Kubernetes protocols). */
  open(headers: SpdyHeaders, opts: { fin?: boolean } = {}): SpdyStream {
    if (this.closed) throw new Error("SPDY session closed");
    const id = this.nextId;
    this.nextId += 2;
    const s = new SpdyStream(this, id, headers);
    this.streams.set(id, s);
    s.ready = this.compressor.compress(headers).then((block) => {
      const head = Buffer.alloc(10);
      head.writeUInt32BE(id, 0);
      this.writeFrame(
        encodeControl(FrameType.SYN_STREAM, opts.fin ? FLAG_FIN : 0, Buffer.concat([head, block])),
      );
    });
    if (opts.fin) s.localClosed = true;
    return s;
  }

  private sendHeaders(type: number, id: number, flags: number, h: SpdyHeaders): Promise<void> {
    return this.compressor.compress(h).then((block) => {
      const head = Buffer.alloc(4);
      head.writeUInt32BE(id, 0);
      this.writeFrame(encodeControl(type, flags, Buffer.concat([head, block])));
    });
  }

  /** @internal DATA frames for a stream, waiting for send window when the peer does flow control. */
  async sendData(s: SpdyStream, chunk: Buffer, fin = false): Promise<void> {
    await s.ready;
    let off = 0;
    do {
      if (this.closed || s.destroyed) throw new Error("SPDY stream closed");
      let n = Math.min(chunk.length - off, MAX_DATA_FRAME);
      if (this.peerFlowControl && n > 0) {
        const avail = Math.min(s.sendWindow, this.sessionSendWindow);
        if (avail <= 0) {
          await this.waitWindow();
          continue;
        }
        n = Math.min(n, avail);
      }
      s.sendWindow -= n;
      this.sessionSendWindow -= n;
      const last = off + n >= chunk.length;
      const ok = this.writeFrame(encodeData(s.id, fin && last ? FLAG_FIN : 0, chunk.subarray(off, off + n)));
      off += n;
      if (!ok) await new Promise<void>((r) => this.socket.once("drain", r));
    } while (off < chunk.length);
  }

  /** @internal */
  sendWindowUpdate(id: number, delta: number): void {
    const b = Buffer.alloc(8);
    b.writeUInt32BE(id, 0);
    b.writeUInt32BE(delta & 0x7fffffff, 4);
    this.writeFrame(encodeControl(FrameType.WINDOW_UPDATE, 0, b));
  }

  /** @internal */
  reset(id: number, status: number, destroyLocal: boolean): void {
    this.writeFrame(rstFrame(id, status));
    const s = this.streams.get(id);
    this.streams.delete(id);
    if (s && destroyLocal) {
      s.localClosed = s.remoteClosed = true;
      s.destroy();
    }
  }

  /** @internal */
  forget(id: number): void {
    this.streams.delete(id);
    if (this.goingAway && this.streams.size === 0) this.destroy();
  }

  /** Round trip to the peer. */
  ping(): Promise<void> {
    const id = this.nextPing;
    this.nextPing += 2;
    const b = Buffer.alloc(4);
    b.writeUInt32BE(id);
    return new Promise((resolve) => {
      this.pings.set(id, resolve);
      this.writeFrame(encodeControl(FrameType.PING, 0, b));
    });
  }

  /** Say GOAWAY (no new streams) and close once the open streams are done. */
  goAway(): void {
    if (this.closed) return;
    const b = Buffer.alloc(8);
    b.writeUInt32BE(this.lastPeerStream, 0);
    this.writeFrame(encodeControl(FrameType.GOAWAY, 0, b));
    this.goingAway = true;
    if (this.streams.size === 0) this.destroy();
  }

  private writeFrame(b: Buffer): boolean {
    if (this.closed || this.socket.destroyed) return true;
    return this.socket.write(b);
  }

  /** Close the connection (after what was written is flushed). */
  destroy(): void {
    if (this.closed) return;
    this.socket.end();
    const t = setTimeout(() => this.socket.destroy(), 2000);
    t.unref();
    this.teardown();
  }

  private teardown(): void {
    if (this.closed) return;
    this.closed = true;
    for (const s of this.streams.values()) {
      s.localClosed = s.remoteClosed = true;
      s.destroy();
    }
    this.streams.clear();
    this.wake();
    this.compressor.close();
    this.decompressor.close();
    this.emit("close");
  }
}

function rstFrame(id: number, status: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32BE(id & 0x7fffffff, 0);
  b.writeUInt32BE(status, 4);
  return encodeControl(FrameType.RST_STREAM, 0, b);
}

export { rstFrame as encodeRstStream };
