// The server side of one HTTP/2 connection (RFC 7540), as much of it as a gRPC server needs:
// framing, SETTINGS, PING, GOAWAY, RST_STREAM, both directions of flow control, HPACK-decoded
// request headers and streams with a direct callback interface. Why not node:http2: its stream
// objects, header objects and listeners were most of berthd's CPU per small call, and it sends
// every answer's trailers in a second write one event-loop turn after the data
// (docs/performance.md, findings 9, 16 and 17). Here a unary answer (HEADERS, DATA, trailers)
// leaves in one write.
//
// What a gRPC server never needs is not here: server push, priorities (parsed and ignored),
// HTTP/1.1 upgrade. Cleartext with prior knowledge only, as over unix sockets.

import type net from "node:net";
import { type HeaderRecord, HpackDecoder, HpackError } from "./hpack.js";

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

const DATA = 0x0;
const HEADERS = 0x1;
const PRIORITY = 0x2;
const RST_STREAM = 0x3;
const SETTINGS = 0x4;
const PUSH_PROMISE = 0x5;
const PING = 0x6;
const GOAWAY = 0x7;
const WINDOW_UPDATE = 0x8;
const CONTINUATION = 0x9;

const FLAG_END_STREAM = 0x1;
const FLAG_ACK = 0x1;
const FLAG_END_HEADERS = 0x4;
const FLAG_PADDED = 0x8;
const FLAG_PRIORITY = 0x20;

const NO_ERROR = 0x0;
const PROTOCOL_ERROR = 0x1;
const INTERNAL_ERROR = 0x2;
const FLOW_CONTROL_ERROR = 0x3;
const FRAME_SIZE_ERROR = 0x6;
const REFUSED_STREAM = 0x7;
const COMPRESSION_ERROR = 0x9;

const SETTINGS_MAX_CONCURRENT_STREAMS = 0x3;
const SETTINGS_INITIAL_WINDOW_SIZE = 0x4;
const SETTINGS_MAX_FRAME_SIZE = 0x5;
const SETTINGS_MAX_HEADER_LIST_SIZE = 0x6;

/** RFC 7540 6.5.2 and 6.9.2 defaults. */
const DEFAULT_WINDOW = 65535;
const DEFAULT_FRAME_SIZE = 16384;
const MAX_WINDOW = 0x7fffffff;

/** Queued outbound bytes above which streams are told to wait (their write() returns false). */
const SOCKET_HIGH_WATER = 1 << 20;

export interface H2Settings {
  /** SETTINGS_INITIAL_WINDOW_SIZE: what a client may send on one stream before we credit it. */
  initialWindowSize: number;
  /** The connection-level receive window. */
  connectionWindowSize: number;
  /** SETTINGS_MAX_FRAME_SIZE: the largest frame payload a client may send. */
  maxFrameSize: number;
  /** SETTINGS_MAX_CONCURRENT_STREAMS, when limited. */
  maxConcurrentStreams?: number;
  /** SETTINGS_MAX_HEADER_LIST_SIZE, and the largest header block accepted. */
  maxHeaderListSize: number;
  /**
   * Answer bytes a connection may hold unsent (waiting for the client's window, or in the
   * socket's queue) before new streams are refused: a client that stops reading or crediting
   * cannot make the daemon keep encoded answers without bound.
   */
  maxQueuedBytes: number;
}

/** What a stream tells its owner (the gRPC call). */
export interface StreamHandler {
  /** Request body bytes (DATA payload without padding). */
  onData(chunk: Buffer): void;
  /** The client half-closed its side. */
  onEnd(): void;
  /** The stream is over: answered and half-closed, reset, or the connection went away. */
  onClose(): void;
  /** Data written earlier has left (or may leave): write() may be called again. */
  onDrain(): void;
}

function frameHead(out: Buffer, at: number, len: number, type: number, flags: number, id: number): void {
  out[at] = len >>> 16;
  out[at + 1] = (len >>> 8) & 0xff;
  out[at + 2] = len & 0xff;
  out[at + 3] = type;
  out[at + 4] = flags;
  out.writeUInt32BE(id, at + 5);
}

function frame(type: number, flags: number, id: number, payload: Buffer): Buffer {
  const out = Buffer.allocUnsafe(9 + payload.length);
  frameHead(out, 0, payload.length, type, flags, id);
  payload.copy(out, 9);
  return out;
}

function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n, 0);
  return b;
}

export class H2Stream {
  handler: StreamHandler | undefined;
  /** The client sent END_STREAM. */
  remoteEnded = false;
  /** END_STREAM left (or is queued after the data): nothing more may be written. */
  localEnded = false;
  closed = false;
  /** What this side may still send before the client credits the stream. */
  sendWindow: number;
  private paused = false;
  /** Bytes received and not yet credited back to the client. */
  private uncredited = 0;
  /** DATA payloads waiting for flow-control window. */
  pending: Buffer[] = [];
  pendingBytes = 0;
  /** The trailers' header block, sent once `pending` is out. */
  trailers: Buffer | undefined;
  /** The owner's write() returned false; onDrain is due. */
  wantsDrain = false;

  constructor(
    private readonly conn: H2Connection,
    readonly id: number,
    readonly headers: HeaderRecord,
  ) {
    this.sendWindow = conn.peerInitialWindow;
  }

  /** Stop crediting the client's window: it stops sending once the window is used up. */
  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.credit(0);
  }

  /** @internal DATA arrived for this stream. */
  received(payload: Buffer, frameLength: number, end: boolean): void {
    if (payload.length > 0) this.handler?.onData(payload);
    if (end) {
      this.remoteEnded = true;
      this.handler?.onEnd();
      this.conn.maybeClose(this);
    } else if (frameLength > 0) this.credit(frameLength);
  }

  private credit(n: number): void {
    this.uncredited += n;
    if (this.paused || this.remoteEnded || this.closed) return;
    if (this.uncredited >= this.conn.settings.initialWindowSize >>> 2) {
      this.conn.windowUpdate(this.id, this.uncredited);
      this.uncredited = 0;
    }
  }

  /** The response headers (a header block), before any data. */
  sendHeaders(block: Buffer): void {
    if (this.closed || this.localEnded) return;
    this.conn.writeHeaders(this.id, block, false);
  }

  /** A header block with END_STREAM and nothing before it (gRPC's trailers-only answer). */
  sendTrailersOnly(block: Buffer): void {
    if (this.closed || this.localEnded) return;
    this.localEnded = true;
    this.conn.writeHeaders(this.id, block, true);
    this.conn.maybeClose(this);
  }

  /**
   * One DATA payload, or one in parts (split into frames as the client allows). False when it
   * could not leave yet (flow control, or the socket's queue is long): wait for onDrain before
   * writing more.
   */
  write(payload: Buffer | readonly Buffer[]): boolean {
    if (this.closed || this.localEnded) return true;
    if (Buffer.isBuffer(payload)) this.enqueue(payload);
    else for (const b of payload) this.enqueue(b);
    this.conn.flush(this);
    if (this.pendingBytes === 0 && !this.conn.congested()) return true;
    this.wantsDrain = true;
    return false;
  }

  private enqueue(b: Buffer): void {
    this.pending.push(b);
    this.pendingBytes += b.length;
    this.conn.queued(b.length);
  }

  /**
   * What this stream writes until the end of the loop's turn leaves in one write with the rest
   * of the connection's (a list streamed from memory: its messages, not a write each).
   */
  holdForTurn(): void {
    if (!this.closed) this.conn.holdForTurn();
  }

  /** Ends the answer with trailers, after whatever data is still queued. */
  end(trailers: Buffer): void {
    if (this.closed || this.localEnded) return;
    this.localEnded = true;
    this.trailers = trailers;
    this.conn.flush(this);
  }

  /** A whole unary answer: headers, one message, trailers; in one write when the windows allow. */
  reply(headers: Buffer, payload: Buffer | readonly Buffer[], trailers: Buffer): void {
    if (this.closed || this.localEnded) return;
    // a message in parts is large: it goes frame by frame, as the windows allow
    if (!Buffer.isBuffer(payload) || !this.conn.replyAtOnce(this, headers, payload, trailers)) {
      // what can leave now (the headers, the data the windows allow) leaves in one write
      this.conn.batch(() => {
        this.conn.writeHeaders(this.id, headers, false);
        this.write(payload);
        this.end(trailers);
      });
    }
  }
}

/**
 * One client connection. `onStream` gets each new request stream with its headers; it sets the
 * stream's handler (or answers it at once).
 */
export class H2Connection {
  private readonly decoder: HpackDecoder;
  private readonly streams = new Map<number, H2Stream>();
  /** Streams with DATA (or trailers) waiting for window, in the order they started waiting. */
  private readonly blocked = new Set<H2Stream>();
  private prefaceSeen = false;
  /** Received bytes not yet parsed. */
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** Bytes needed before the next parse step can run. */
  private need = PREFACE.length;
  /** A header block spread over HEADERS and CONTINUATION frames. */
  private continuing: { id: number; flags: number; parts: Buffer[]; size: number } | undefined;
  private lastStreamId = 0;
  /** Connection-level send window (the client's credit). */
  private sendWindow = DEFAULT_WINDOW;
  /** Received DATA bytes not yet credited back on the connection. */
  private uncredited = 0;
  peerInitialWindow = DEFAULT_WINDOW;
  private peerMaxFrame = DEFAULT_FRAME_SIZE;
  /** DATA bytes queued in streams, waiting for window. */
  private pendingTotal = 0;
  /** GOAWAY sent: no new streams; the socket ends once the last stream closes. */
  private goingAway = false;
  private ended = false;
  /** The socket is corked until the loop's check phase (see holdForTurn). */
  private heldForTurn = false;

  constructor(
    private readonly socket: net.Socket,
    readonly settings: H2Settings,
    private readonly onStream: (stream: H2Stream) => void,
    private readonly onError: (err: Error) => void,
    private readonly onGone: (conn: H2Connection) => void,
  ) {
    this.decoder = new HpackDecoder();
    socket.on("data", (d: Buffer) => this.onData(d));
    socket.on("drain", () => this.onSocketDrain());
    socket.on("error", (err: Error) => {
      // a client that went away mid-write is ordinary; anything else is worth a line
      if (
        (err as NodeJS.ErrnoException).code !== "EPIPE" &&
        (err as NodeJS.ErrnoException).code !== "ECONNRESET"
      )
        this.onError(err);
    });
    socket.on("close", () => this.onSocketClose());
    // grpc-go clients wait for the server's SETTINGS before their first request
    const s: Buffer[] = [
      setting(SETTINGS_INITIAL_WINDOW_SIZE, settings.initialWindowSize),
      setting(SETTINGS_MAX_FRAME_SIZE, settings.maxFrameSize),
      setting(SETTINGS_MAX_HEADER_LIST_SIZE, settings.maxHeaderListSize),
    ];
    if (settings.maxConcurrentStreams !== undefined)
      s.push(setting(SETTINGS_MAX_CONCURRENT_STREAMS, settings.maxConcurrentStreams));
    const out = [frame(SETTINGS, 0, 0, Buffer.concat(s))];
    if (settings.connectionWindowSize > DEFAULT_WINDOW)
      out.push(frame(WINDOW_UPDATE, 0, 0, u32(settings.connectionWindowSize - DEFAULT_WINDOW)));
    socket.write(Buffer.concat(out));
  }

  /** Streams in progress. */
  get size(): number {
    return this.streams.size;
  }

  // --- reading ---------------------------------------------------------------------------

  private onData(d: Buffer): void {
    this.chunks.push(d);
    this.buffered += d.length;
    if (this.buffered < this.need) return;
    let buf = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.buffered);
    this.chunks = [];
    this.buffered = 0;
    let at = 0;
    try {
      if (!this.prefaceSeen) {
        if (!buf.subarray(0, PREFACE.length).equals(PREFACE)) {
          this.fail(PROTOCOL_ERROR, "not an HTTP/2 client (connection preface expected)");
          return;
        }
        this.prefaceSeen = true;
        at = PREFACE.length;
      }
      while (!this.ended) {
        if (buf.length - at < 9) {
          this.need = 9;
          break;
        }
        const len = (buf[at]! << 16) | (buf[at + 1]! << 8) | buf[at + 2]!;
        if (len > this.settings.maxFrameSize) {
          this.fail(FRAME_SIZE_ERROR, `frame of ${len} bytes over SETTINGS_MAX_FRAME_SIZE`);
          return;
        }
        if (buf.length - at < 9 + len) {
          this.need = 9 + len;
          break;
        }
        const type = buf[at + 3]!;
        const flags = buf[at + 4]!;
        const id = buf.readUInt32BE(at + 5) & 0x7fffffff;
        const payload = buf.subarray(at + 9, at + 9 + len);
        at += 9 + len;
        this.onFrame(type, flags, id, payload);
      }
    } catch (err) {
      if (err instanceof HpackError) this.fail(COMPRESSION_ERROR, err.message);
      else if (err instanceof ProtocolError) this.fail(err.code, err.message);
      else {
        this.onError(err as Error);
        this.fail(INTERNAL_ERROR, "internal error");
      }
      return;
    }
    if (at < buf.length) {
      buf = buf.subarray(at);
      this.chunks.push(buf);
      this.buffered = buf.length;
    }
  }

  private onFrame(type: number, flags: number, id: number, payload: Buffer): void {
    if (this.continuing && type !== CONTINUATION)
      throw new ProtocolError(PROTOCOL_ERROR, "a header block was interrupted by another frame");
    switch (type) {
      case DATA:
        this.onDataFrame(flags, id, payload);
        return;
      case HEADERS:
        this.onHeaders(flags, id, payload);
        return;
      case CONTINUATION:
        this.onContinuation(flags, id, payload);
        return;
      case SETTINGS:
        this.onSettings(flags, id, payload);
        return;
      case WINDOW_UPDATE:
        this.onWindowUpdate(id, payload);
        return;
      case PING:
        if (id !== 0 || payload.length !== 8) throw new ProtocolError(PROTOCOL_ERROR, "malformed PING");
        if (!(flags & FLAG_ACK)) this.write(frame(PING, FLAG_ACK, 0, payload));
        return;
      case RST_STREAM: {
        const s = this.streams.get(id);
        if (s) this.closeStream(s);
        return;
      }
      case GOAWAY:
        return; // the client closes the connection when its calls are done
      case PUSH_PROMISE:
        throw new ProtocolError(PROTOCOL_ERROR, "PUSH_PROMISE from a client");
      case PRIORITY:
        return;
      default:
        return; // unknown frame types are ignored (RFC 7540 4.1)
    }
  }

  private onDataFrame(flags: number, id: number, payload: Buffer): void {
    if (id === 0) throw new ProtocolError(PROTOCOL_ERROR, "DATA on stream 0");
    const frameLength = payload.length;
    let data = payload;
    if (flags & FLAG_PADDED) {
      const pad = payload[0] ?? 0;
      if (pad >= payload.length) throw new ProtocolError(PROTOCOL_ERROR, "DATA padding exceeds its payload");
      data = payload.subarray(1, payload.length - pad);
    }
    // the connection window is credited as data arrives: each stream's own window (and its
    // pause()) is what holds a client back
    if (frameLength > 0) {
      this.uncredited += frameLength;
      if (this.uncredited >= this.settings.connectionWindowSize >>> 2) {
        this.windowUpdate(0, this.uncredited);
        this.uncredited = 0;
      }
    }
    const s = this.streams.get(id);
    if (!s) {
      if (id > this.lastStreamId) throw new ProtocolError(PROTOCOL_ERROR, `DATA on idle stream ${id}`);
      return; // a stream already closed or reset: its late data is dropped
    }
    if (s.remoteEnded) {
      this.resetStream(s, 0x5); // STREAM_CLOSED
      return;
    }
    s.received(data, frameLength, (flags & FLAG_END_STREAM) !== 0);
  }

  private onHeaders(flags: number, id: number, payload: Buffer): void {
    if (id === 0 || id % 2 === 0) throw new ProtocolError(PROTOCOL_ERROR, `HEADERS on stream ${id}`);
    let start = 0;
    let end = payload.length;
    if (flags & FLAG_PADDED) {
      end -= payload[0] ?? 0;
      start = 1;
    }
    if (flags & FLAG_PRIORITY) start += 5;
    if (start > end) throw new ProtocolError(PROTOCOL_ERROR, "HEADERS padding exceeds its payload");
    const fragment = payload.subarray(start, end);
    if (flags & FLAG_END_HEADERS) this.onHeaderBlock(id, flags, fragment);
    else this.continuing = { id, flags, parts: [Buffer.from(fragment)], size: fragment.length };
  }

  private onContinuation(flags: number, id: number, payload: Buffer): void {
    const c = this.continuing;
    if (!c || c.id !== id) throw new ProtocolError(PROTOCOL_ERROR, "CONTINUATION without its HEADERS");
    c.size += payload.length;
    if (c.size > this.settings.maxHeaderListSize)
      throw new ProtocolError(PROTOCOL_ERROR, "header block over SETTINGS_MAX_HEADER_LIST_SIZE");
    c.parts.push(Buffer.from(payload));
    if (!(flags & FLAG_END_HEADERS)) return;
    this.continuing = undefined;
    this.onHeaderBlock(id, c.flags, Buffer.concat(c.parts));
  }

  private onHeaderBlock(id: number, flags: number, block: Buffer): void {
    const headers = this.decoder.decode(block); // always: the dynamic table must stay in step
    const endStream = (flags & FLAG_END_STREAM) !== 0;
    const existing = this.streams.get(id);
    if (existing) {
      // trailers from the client: gRPC clients send none, but they end the stream like DATA would
      if (!endStream) throw new ProtocolError(PROTOCOL_ERROR, "second HEADERS without END_STREAM");
      existing.received(EMPTY, 0, true);
      return;
    }
    if (id <= this.lastStreamId) return; // a closed stream's trailers
    this.lastStreamId = id;
    const stream = new H2Stream(this, id, headers);
    if (this.goingAway) {
      this.write(frame(RST_STREAM, 0, id, u32(REFUSED_STREAM)));
      return;
    }
    const max = this.settings.maxConcurrentStreams;
    const full = this.pendingTotal + this.socket.writableLength > this.settings.maxQueuedBytes;
    if (full || (max !== undefined && this.streams.size >= max)) {
      this.write(frame(RST_STREAM, 0, id, u32(REFUSED_STREAM)));
      return;
    }
    this.streams.set(id, stream);
    this.onStream(stream);
    if (endStream && !stream.closed) stream.received(EMPTY, 0, true);
  }

  private onSettings(flags: number, id: number, payload: Buffer): void {
    if (id !== 0) throw new ProtocolError(PROTOCOL_ERROR, "SETTINGS on a stream");
    if (flags & FLAG_ACK) return;
    if (payload.length % 6 !== 0) throw new ProtocolError(FRAME_SIZE_ERROR, "malformed SETTINGS");
    for (let at = 0; at < payload.length; at += 6) {
      const key = payload.readUInt16BE(at);
      const value = payload.readUInt32BE(at + 2);
      if (key === SETTINGS_INITIAL_WINDOW_SIZE) {
        if (value > MAX_WINDOW)
          throw new ProtocolError(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE too large");
        const delta = value - this.peerInitialWindow;
        this.peerInitialWindow = value;
        for (const s of this.streams.values()) s.sendWindow += delta;
      } else if (key === SETTINGS_MAX_FRAME_SIZE) {
        if (value < DEFAULT_FRAME_SIZE || value > 0xffffff)
          throw new ProtocolError(PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range");
        this.peerMaxFrame = value;
      }
      // SETTINGS_HEADER_TABLE_SIZE bounds the client's decoder: this side never indexes, so any
      // size (0 too) suits it; push, concurrency and header list limits do not concern a server
      // that only answers
    }
    this.write(frame(SETTINGS, FLAG_ACK, 0, EMPTY));
    this.flushAll();
  }

  private onWindowUpdate(id: number, payload: Buffer): void {
    if (payload.length !== 4) throw new ProtocolError(FRAME_SIZE_ERROR, "malformed WINDOW_UPDATE");
    const inc = payload.readUInt32BE(0) & 0x7fffffff;
    if (id === 0) {
      if (inc === 0) throw new ProtocolError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0");
      this.sendWindow += inc;
      if (this.sendWindow > MAX_WINDOW)
        throw new ProtocolError(FLOW_CONTROL_ERROR, "connection window overflow");
      this.flushAll();
      return;
    }
    const s = this.streams.get(id);
    if (!s) return;
    if (inc === 0) {
      this.resetStream(s, PROTOCOL_ERROR);
      return;
    }
    s.sendWindow += inc;
    if (s.sendWindow > MAX_WINDOW) {
      this.resetStream(s, FLOW_CONTROL_ERROR);
      return;
    }
    if (this.blocked.has(s)) {
      this.flush(s);
      this.notifyDrained();
    }
  }

  // --- writing ---------------------------------------------------------------------------

  /** @internal */
  write(b: Buffer): void {
    if (this.ended) return;
    this.socket.write(b);
  }

  /** @internal DATA bytes entered (or, negative, left) a stream's queue. */
  queued(n: number): void {
    this.pendingTotal += n;
  }

  /** @internal The socket's queue is long enough that writers should wait. */
  congested(): boolean {
    return this.socket.writableLength > SOCKET_HIGH_WATER;
  }

  /** @internal */
  windowUpdate(id: number, n: number): void {
    this.write(frame(WINDOW_UPDATE, 0, id, u32(n)));
  }

  /** @internal A header block as HEADERS (+ CONTINUATION) frames. */
  writeHeaders(id: number, block: Buffer, endStream: boolean): void {
    this.write(this.headerFrames(id, block, endStream));
  }

  private headerFrames(id: number, block: Buffer, endStream: boolean): Buffer {
    const max = this.peerMaxFrame;
    const es = endStream ? FLAG_END_STREAM : 0;
    if (block.length <= max) {
      const out = Buffer.allocUnsafe(9 + block.length);
      frameHead(out, 0, block.length, HEADERS, es | FLAG_END_HEADERS, id);
      block.copy(out, 9);
      return out;
    }
    const parts: Buffer[] = [];
    for (let at = 0; at < block.length; at += max) {
      const piece = block.subarray(at, Math.min(at + max, block.length));
      const last = at + max >= block.length;
      const type = at === 0 ? HEADERS : CONTINUATION;
      parts.push(frame(type, (at === 0 ? es : 0) | (last ? FLAG_END_HEADERS : 0), id, piece));
    }
    return Buffer.concat(parts);
  }

  /**
   * @internal A unary answer in one write, when its DATA fits both windows at once; false
   * (nothing written) otherwise.
   */
  replyAtOnce(s: H2Stream, headers: Buffer, payload: Buffer, trailers: Buffer): boolean {
    const n = payload.length;
    if (n > s.sendWindow || n > this.sendWindow || s.pendingBytes > 0) return false;
    const max = this.peerMaxFrame;
    if (headers.length > max || trailers.length > max) return false;
    const frames = n === 0 ? 1 : Math.ceil(n / max);
    const out = Buffer.allocUnsafe(9 + headers.length + frames * 9 + n + 9 + trailers.length);
    let at = 0;
    frameHead(out, at, headers.length, HEADERS, FLAG_END_HEADERS, s.id);
    headers.copy(out, at + 9);
    at += 9 + headers.length;
    for (let from = 0, i = 0; i < frames; i++, from += max) {
      const len = Math.min(max, n - from);
      frameHead(out, at, len, DATA, 0, s.id);
      payload.copy(out, at + 9, from, from + len);
      at += 9 + len;
    }
    frameHead(out, at, trailers.length, HEADERS, FLAG_END_STREAM | FLAG_END_HEADERS, s.id);
    trailers.copy(out, at + 9);
    s.sendWindow -= n;
    this.sendWindow -= n;
    s.localEnded = true;
    this.holdForTurn();
    this.write(out);
    this.maybeClose(s);
    return true;
  }

  /**
   * Answers written in one turn of the event loop leave together at its end (the check phase,
   * right after the I/O callbacks), in one write, as grpc-go's writer flushes what is queued once
   * it runs out of work: with calls in flight, the client reads several answers per read; a
   * streamed list's messages leave together too.
   * @internal
   */
  holdForTurn(): void {
    if (this.heldForTurn || this.ended) return;
    this.heldForTurn = true;
    this.socket.cork();
    setImmediate(() => {
      this.heldForTurn = false;
      this.socket.uncork();
    });
  }

  /** @internal Sends what the windows allow of a stream's queued data, then its trailers. */
  flush(s: H2Stream): void {
    if (s.closed) {
      this.blocked.delete(s);
      return;
    }
    const max = this.peerMaxFrame;
    const out: Buffer[] = [];
    while (s.pending.length > 0) {
      const room = Math.min(s.sendWindow, this.sendWindow, max);
      if (room <= 0) break;
      const head = s.pending[0]!;
      const len = Math.min(room, head.length);
      const h = Buffer.allocUnsafe(9);
      frameHead(h, 0, len, DATA, 0, s.id);
      out.push(h, len === head.length ? head : head.subarray(0, len));
      if (len === head.length) s.pending.shift();
      else s.pending[0] = head.subarray(len);
      s.pendingBytes -= len;
      this.pendingTotal -= len;
      s.sendWindow -= len;
      this.sendWindow -= len;
    }
    const done = s.pending.length === 0;
    if (done && s.trailers) {
      out.push(this.headerFrames(s.id, s.trailers, true));
      s.trailers = undefined;
    }
    if (out.length > 0 && !this.ended) {
      if (out.length === 1) this.socket.write(out[0]!);
      else
        this.batch(() => {
          for (const b of out) this.socket.write(b);
        });
    }
    if (done) {
      this.blocked.delete(s);
      if (s.localEnded) this.maybeClose(s);
    } else this.blocked.add(s);
  }

  private flushAll(): void {
    // a window update can let several streams go on: their frames leave in one write
    this.batch(() => {
      for (const s of [...this.blocked]) {
        if (this.sendWindow <= 0) break;
        this.flush(s);
      }
    });
    this.notifyDrained();
  }

  /** @internal Runs `fn` with the socket corked: what it writes leaves in one system call. */
  batch(fn: () => void): void {
    if (this.ended) {
      fn();
      return;
    }
    this.socket.cork();
    try {
      fn();
    } finally {
      this.socket.uncork();
    }
  }

  /** Tells writers that waited that they may go on, unless the socket is still backed up. */
  private notifyDrained(): void {
    if (this.congested()) return;
    for (const s of this.streams.values()) {
      if (!s.wantsDrain || s.pendingBytes > 0) continue;
      s.wantsDrain = false;
      s.handler?.onDrain();
    }
  }

  private onSocketDrain(): void {
    this.flushAll();
  }

  /** @internal */
  resetStream(s: H2Stream, code: number): void {
    this.write(frame(RST_STREAM, 0, s.id, u32(code)));
    this.closeStream(s);
  }

  /** @internal Closes a stream whose both sides have ended. */
  maybeClose(s: H2Stream): void {
    if (!s.closed && s.remoteEnded && s.localEnded && s.pendingBytes === 0 && !s.trailers)
      this.closeStream(s);
  }

  private closeStream(s: H2Stream): void {
    if (s.closed) return;
    s.closed = true;
    this.streams.delete(s.id);
    this.blocked.delete(s);
    this.pendingTotal -= s.pendingBytes;
    s.pending = [];
    s.pendingBytes = 0;
    s.handler?.onClose();
    if (this.goingAway && this.streams.size === 0) this.endSocket();
  }

  // --- the connection's end ---------------------------------------------------------------

  /** Graceful: GOAWAY now, the socket ends when the streams in progress are done. */
  close(): void {
    if (this.goingAway || this.ended) return;
    this.goingAway = true;
    this.write(goaway(this.lastStreamId, NO_ERROR, ""));
    if (this.streams.size === 0) this.endSocket();
  }

  /** Cut the connection: every stream in progress is closed (its call sees a cancel). */
  destroy(): void {
    this.socket.destroy();
  }

  private endSocket(): void {
    if (this.ended) return;
    this.ended = true;
    this.socket.end();
  }

  /** A connection error: GOAWAY with the code and why, then the socket ends. */
  private fail(code: number, why: string): void {
    if (this.ended) return;
    this.goingAway = true;
    this.socket.write(goaway(this.lastStreamId, code, why));
    this.ended = true;
    this.socket.end();
    // a client that never closes its side must not hold the socket
    setTimeout(() => this.socket.destroy(), 1000).unref();
    this.onError(new Error(`HTTP/2 connection error: ${why}`));
  }

  private onSocketClose(): void {
    this.ended = true;
    for (const s of [...this.streams.values()]) this.closeStream(s);
    this.onGone(this);
  }
}

class ProtocolError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

const EMPTY = Buffer.alloc(0);

function setting(key: number, value: number): Buffer {
  const b = Buffer.allocUnsafe(6);
  b.writeUInt16BE(key, 0);
  b.writeUInt32BE(value, 2);
  return b;
}

function goaway(lastStreamId: number, code: number, why: string): Buffer {
  const debug = Buffer.from(why, "utf8");
  const p = Buffer.allocUnsafe(8 + debug.length);
  p.writeUInt32BE(lastStreamId, 0);
  p.writeUInt32BE(code, 4);
  debug.copy(p, 8);
  return frame(GOAWAY, 0, 0, p);
}
