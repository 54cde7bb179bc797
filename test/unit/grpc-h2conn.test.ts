// berth's HTTP/2 layer (src/grpc/h2conn.ts, src/grpc/hpack.ts) seen from raw frames: RFC 7541's
// decoding examples, and a client that speaks HTTP/2 by hand the way grpc-go does, including
// the unix socket path as `:authority` that grpc-go clients of the Kubernetes 1.2x era (crictl
// 1.26) send and nghttp2-based servers refuse.
import assert from "node:assert/strict";
import net from "node:net";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Containers } from "../../src/gen/containerd/services/containers/v1/containers_pb.js";
import { Version } from "../../src/gen/containerd/services/version/v1/version_pb.js";
import { H2GrpcServer } from "../../src/grpc/h2server.js";
import { encodeHeaderBlock, HpackDecoder, HpackError, HUFFMAN, huffmanDecode } from "../../src/grpc/hpack.js";
import type { ServiceImpl } from "../../src/grpc/service.js";
import { frame, framesOf, PREFACE, type RawFrame } from "../helpers/h2frames.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

/** An HPACK string, raw (not Huffman), with a 7-bit length prefix (short strings only). */
const str = (s: string) => Buffer.concat([Buffer.from([s.length]), Buffer.from(s, "latin1")]);
/** Literal field without indexing, new name. */
const lit = (name: string, value: string) => Buffer.concat([Buffer.from([0x00]), str(name), str(value)]);

describe("gRPC server and clients that send a socket path as :authority", () => {
  let dir: string;
  let server: H2GrpcServer;
  let sock: string;

  before(async () => {
    dir = await makeTempDir("grpc-authority");
    sock = path.join(dir, "g.sock");
    server = new H2GrpcServer();
    server.addService(Version, { version: () => ({ version: "v-authority", revision: "r1" }) } as ServiceImpl<
      typeof Version
    >);
    await server.listen(sock);
  });
  after(async () => {
    server.forceShutdown();
    await removeTempDir(dir);
  });

  it("decodes RFC 7541's examples C.3 (raw) and C.4 (Huffman) with their dynamic table", () => {
    assert.equal(huffmanDecode(Buffer.from("f1e3c2e5f23a6ba0ab90f4ff", "hex")), "www.example.com");
    for (const blocks of [
      [
        "828684410f7777772e6578616d706c652e636f6d",
        "828684be58086e6f2d6361636865",
        "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
      ],
      [
        "828684418cf1e3c2e5f23a6ba0ab90f4ff",
        "828684be5886a8eb10649cbf",
        "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
      ],
    ]) {
      const d = new HpackDecoder();
      const [r1, r2, r3] = blocks.map((h) => ({ ...d.decode(Buffer.from(h, "hex")) }));
      assert.deepEqual(r1, {
        ":method": "GET",
        ":scheme": "http",
        ":path": "/",
        ":authority": "www.example.com",
      });
      assert.deepEqual(r2, {
        ":method": "GET",
        ":scheme": "http",
        ":path": "/",
        ":authority": "www.example.com",
        "cache-control": "no-cache",
      });
      assert.deepEqual(r3, {
        ":method": "GET",
        ":scheme": "https",
        ":path": "/index.html",
        ":authority": "www.example.com",
        "custom-key": "custom-value",
      });
    }
  });

  it("evicts to the table size, refuses bad indexes and round-trips its own blocks", () => {
    const d = new HpackDecoder(64);
    // two 40-byte entries (name 4 + value 4 + 32) do not fit 64 bytes: the first is evicted
    d.decode(Buffer.concat([Buffer.from([0x40]), str("aaaa"), str("1111")]));
    d.decode(Buffer.concat([Buffer.from([0x40]), str("bbbb"), str("2222")]));
    assert.deepEqual({ ...d.decode(Buffer.from([0x80 | 62])) }, { bbbb: "2222" });
    assert.throws(() => d.decode(Buffer.from([0x80 | 63])), HpackError);
    assert.throws(() => d.decode(Buffer.from([0x80])), HpackError);
    assert.throws(() => d.decode(Buffer.from([0x3f, 0xe1, 0x1f])), HpackError, "size update over the limit");
    assert.throws(() => d.decode(Buffer.from([0x00, 0x05, 0x61])), HpackError, "truncated string");
    const fields: [string, string][] = [
      [":status", "200"],
      [":status", "415"],
      ["content-type", "application/grpc"],
      ["grpc-message", "x".repeat(300)],
    ];
    const back = new HpackDecoder().decode(encodeHeaderBlock(fields));
    assert.deepEqual(back[":status"], ["200", "415"]);
    assert.equal(back["content-type"], "application/grpc");
    assert.equal(back["grpc-message"], "x".repeat(300));
  });

  for (const authority of ["/run/berth/berth.sock", "localhost"]) {
    it(`serves two calls on one connection with :authority ${authority}`, async () => {
      const c = await RawClient.connect(sock);
      c.write(Buffer.concat([PREFACE, frame(4, 0, 0, Buffer.alloc(0))]));
      // like grpc-go: wait for the server's SETTINGS, acknowledge them, then call
      await c.until(() => c.frames().some((f) => f.type === 4), "the server's SETTINGS");
      c.write(frame(4, 1, 0, Buffer.alloc(0)));
      // first call: the authority enters the dynamic table (index 62); second: referenced from it
      // (pseudo-header fields come before the others, as RFC 7540 8.1.2.1 requires)
      const first = Buffer.concat([PSEUDO, Buffer.from([0x41]), str(authority), REGULAR]);
      const second = Buffer.concat([PSEUDO, Buffer.from([0x80 | 62]), REGULAR]);
      c.write(Buffer.concat([frame(1, 4, 1, first), frame(0, 1, 1, EMPTY_MESSAGE)]));
      c.write(Buffer.concat([frame(1, 4, 3, second), frame(0, 1, 3, EMPTY_MESSAGE)]));
      await c.until(() => c.ended(1) && c.ended(3), "both answers");
      c.destroy();
      const fs = c.frames();
      assert.deepEqual(
        fs.filter((f) => f.type === 3 || f.type === 7).map((f) => [f.type, f.stream]),
        [],
        "no RST_STREAM or GOAWAY",
      );
      for (const s of [1, 3])
        assert.ok(c.data(s).includes(Buffer.from("v-authority")), `call on stream ${s}`);
    });
  }

  it("answers to calls that arrive together leave in one write", async () => {
    const c = await RawClient.connect(sock);
    // count the server's socket writes (net.Socket's _write/_writev), not the client's
    const proto = net.Socket.prototype as unknown as Record<
      "_write" | "_writev",
      (...a: unknown[]) => unknown
    >;
    const saved = { write: proto._write, writev: proto._writev };
    let serverWrites = 0;
    proto._write = function (this: unknown, ...a: unknown[]) {
      if (this !== c.socket) serverWrites++;
      return saved.write.apply(this, a);
    };
    proto._writev = function (this: unknown, ...a: unknown[]) {
      if (this !== c.socket) serverWrites++;
      return saved.writev.apply(this, a);
    };
    try {
      c.write(Buffer.concat([PREFACE, frame(4, 0, 0, Buffer.alloc(0))]));
      await c.until(() => c.frames().some((f) => f.type === 4 && (f.flags & 1) === 1), "SETTINGS ACK");
      c.write(frame(4, 1, 0, Buffer.alloc(0)));
      await sleep(50);
      const streams = [1, 3, 5, 7, 9, 11, 13, 15];
      const header = Buffer.concat([PSEUDO, Buffer.from([0x41]), str("localhost"), REGULAR]);
      serverWrites = 0;
      c.write(
        Buffer.concat(streams.flatMap((id) => [frame(1, 4, id, header), frame(0, 1, id, EMPTY_MESSAGE)])),
      );
      await c.until(() => streams.every((id) => c.ended(id)), "the eight answers");
      for (const id of streams) assert.ok(c.data(id).includes(Buffer.from("v-authority")), `answer on ${id}`);
      assert.equal(serverWrites, 1, "eight answers of one turn in one write");
    } finally {
      proto._write = saved.write;
      proto._writev = saved.writev;
      c.destroy();
    }
  });

  it("a stream's messages written in one turn leave in one write", async () => {
    const streaming = new H2GrpcServer();
    const streamSock = path.join(dir, "stream.sock");
    streaming.addService(Containers, {
      async *listStream() {
        for (let i = 0; i < 40; i++) yield { container: { id: `c${i}`, runtime: { name: "r" } } };
      },
    } as unknown as ServiceImpl<typeof Containers>);
    await streaming.listen(streamSock);
    const c = await RawClient.connect(streamSock);
    const counter = countServerWrites(c.socket);
    try {
      c.write(Buffer.concat([PREFACE, frame(4, 0, 0, Buffer.alloc(0))]));
      await c.until(() => c.frames().some((f) => f.type === 4 && (f.flags & 1) === 1), "SETTINGS ACK");
      c.write(frame(4, 1, 0, Buffer.alloc(0)));
      await sleep(50);
      const header = Buffer.concat([
        Buffer.from([0x83, 0x86]),
        lit(":path", "/containerd.services.containers.v1.Containers/ListStream"),
        Buffer.from([0x41]),
        str("localhost"),
        REGULAR,
      ]);
      counter.n = 0;
      c.write(Buffer.concat([frame(1, 4, 1, header), frame(0, 1, 1, EMPTY_MESSAGE)]));
      await c.until(() => c.ended(1), "the stream's end");
      for (const id of ["c0", "c39"]) assert.ok(c.data(1).includes(Buffer.from(id)), id);
      // the headers and 40 messages in one write; the trailers follow the generator's end
      assert.ok(counter.n <= 2, `${counter.n} server writes for 40 messages`);
    } finally {
      counter.restore();
      c.destroy();
      streaming.forceShutdown();
    }
  });

  it("sends no more than the client's stream and connection windows allow, in frames of its size", async () => {
    const big = new H2GrpcServer();
    const bigSock = path.join(dir, "big.sock");
    const version = "v".repeat(70_000);
    big.addService(Version, { version: () => ({ version, revision: "r" }) } as ServiceImpl<typeof Version>);
    await big.listen(bigSock);
    const c = await RawClient.connect(bigSock);
    try {
      const settings = Buffer.alloc(6);
      settings.writeUInt16BE(4, 0); // SETTINGS_INITIAL_WINDOW_SIZE
      settings.writeUInt32BE(1000, 2);
      c.write(Buffer.concat([PREFACE, frame(4, 0, 0, settings)]));
      await c.until(() => c.frames().some((f) => f.type === 4 && (f.flags & 1) === 1), "SETTINGS ACK");
      c.write(frame(4, 1, 0, Buffer.alloc(0)));
      c.write(frame(6, 0, 0, Buffer.from("pingpong")));
      await c.until(
        () =>
          c.frames().some((f) => f.type === 6 && f.flags === 1 && f.payload.equals(Buffer.from("pingpong"))),
        "PING ACK",
      );
      const call = Buffer.concat([PSEUDO, Buffer.from([0x41]), str("localhost"), REGULAR]);
      c.write(Buffer.concat([frame(1, 4, 1, call), frame(0, 1, 1, EMPTY_MESSAGE)]));
      await c.until(() => c.data(1).length === 1000, "the stream window's 1000 bytes");
      await sleep(200);
      assert.equal(c.data(1).length, 1000, "nothing beyond the stream window");
      c.write(frame(8, 0, 1, u32(200_000)));
      await c.until(() => c.data(1).length === 65535, "the connection window's 65535 bytes");
      await sleep(200);
      assert.equal(c.data(1).length, 65535, "nothing beyond the connection window");
      assert.ok(!c.ended(1));
      c.write(frame(8, 0, 0, u32(200_000)));
      await c.until(() => c.ended(1), "the trailers");
      const fs = c.frames().filter((f) => f.stream === 1);
      assert.ok(
        fs.every((f) => f.type !== 0 || f.payload.length <= 16384),
        "DATA frames within the default SETTINGS_MAX_FRAME_SIZE",
      );
      const body = c.data(1);
      assert.equal(body[0], 0);
      assert.equal(body.readUInt32BE(1), body.length - 5);
      assert.ok(body.includes(Buffer.from(version)));
    } finally {
      c.destroy();
      big.forceShutdown();
    }
  });

  it("refuses new streams while a connection holds too many unsent answer bytes", async () => {
    const capped = new H2GrpcServer({ maxQueuedBytes: 200_000 });
    const cappedSock = path.join(dir, "capped.sock");
    const version = "v".repeat(100_000);
    capped.addService(Version, { version: () => ({ version, revision: "r" }) } as ServiceImpl<
      typeof Version
    >);
    await capped.listen(cappedSock);
    const c = await RawClient.connect(cappedSock);
    try {
      c.write(Buffer.concat([PREFACE, frame(4, 0, 0, Buffer.alloc(0))]));
      await c.until(() => c.frames().some((f) => f.type === 4), "SETTINGS");
      c.write(frame(4, 1, 0, Buffer.alloc(0)));
      // six calls, never crediting a window: the first 65,535 bytes leave, the rest wait
      const call = Buffer.concat([PSEUDO, Buffer.from([0x41]), str("localhost"), REGULAR]);
      const calls: Buffer[] = [];
      for (const id of [1, 3, 5, 7, 9, 11]) calls.push(frame(1, 4, id, call), frame(0, 1, id, EMPTY_MESSAGE));
      c.write(Buffer.concat(calls));
      const resets = () => c.frames().filter((f) => f.type === 3);
      await c.until(() => resets().length === 3, "three RST_STREAMs");
      assert.deepEqual(
        resets().map((f) => [f.stream, f.payload.readUInt32BE(0)]),
        [
          [7, 7],
          [9, 7],
          [11, 7],
        ],
        "REFUSED_STREAM once 234,465 bytes wait (over 200,000)",
      );
      // credit everything: the three accepted calls complete, and a new one is served
      c.write(frame(8, 0, 0, u32(1 << 30)));
      for (const id of [1, 3, 5]) c.write(frame(8, 0, id, u32(1 << 30)));
      await c.until(() => [1, 3, 5].every((id) => c.ended(id)), "the accepted calls' trailers");
      c.write(
        Buffer.concat([frame(1, 4, 13, call), frame(0, 1, 13, EMPTY_MESSAGE), frame(8, 0, 13, u32(1 << 30))]),
      );
      await c.until(() => c.ended(13), "a new call after the queue drained");
      assert.ok(c.data(13).includes(Buffer.from(version)));
    } finally {
      c.destroy();
      capped.forceShutdown();
    }
  });

  it("answers a client that is not HTTP/2 with GOAWAY(PROTOCOL_ERROR) and closes", async () => {
    const c = await RawClient.connect(sock);
    c.write(Buffer.from("GET / HTTP/1.1\r\nHost: berth\r\n\r\n", "latin1"));
    await c.closed;
    const away = c.frames().find((f) => f.type === 7);
    assert.ok(away, "a GOAWAY frame");
    assert.equal(away.payload.readUInt32BE(4), 1, "PROTOCOL_ERROR");
  });
});

const PSEUDO = Buffer.concat([
  Buffer.from([0x83, 0x86]), // :method POST, :scheme http
  lit(":path", "/containerd.services.version.v1.Version/Version"),
]);
const REGULAR = Buffer.concat([lit("content-type", "application/grpc"), lit("te", "trailers")]);
/** A gRPC message of 0 bytes (Version takes google.protobuf.Empty). */
const EMPTY_MESSAGE = Buffer.from([0, 0, 0, 0, 0]);

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n, 0);
  return b;
}

/** Counts the socket writes (net.Socket's _write/_writev) of every socket but the client's. */
function countServerWrites(client: net.Socket): { n: number; restore(): void } {
  const proto = net.Socket.prototype as unknown as Record<"_write" | "_writev", (...a: unknown[]) => unknown>;
  const saved = { write: proto._write, writev: proto._writev };
  const counter = {
    n: 0,
    restore() {
      proto._write = saved.write;
      proto._writev = saved.writev;
    },
  };
  proto._write = function (this: unknown, ...a: unknown[]) {
    if (this !== client) counter.n++;
    return saved.write.apply(this, a);
  };
  proto._writev = function (this: unknown, ...a: unknown[]) {
    if (this !== client) counter.n++;
    return saved.writev.apply(this, a);
  };
  return counter;
}

/** A client that writes bytes and reads frames, with nothing of its own in between. */
class RawClient {
  private got: Buffer[] = [];
  readonly closed: Promise<void>;

  private constructor(private readonly c: net.Socket) {
    c.on("data", (d: Buffer) => this.got.push(d));
    this.closed = new Promise((resolve) => c.once("close", () => resolve()));
  }

  static async connect(sock: string): Promise<RawClient> {
    const c = net.connect(sock);
    await new Promise<void>((resolve, reject) => {
      c.once("connect", () => resolve());
      c.once("error", reject);
    });
    return new RawClient(c);
  }

  write(b: Buffer): void {
    this.c.write(b);
  }

  get socket(): net.Socket {
    return this.c;
  }

  destroy(): void {
    this.c.destroy();
  }

  frames(): RawFrame[] {
    return framesOf(Buffer.concat(this.got));
  }

  /** The DATA a stream received so far. */
  data(stream: number): Buffer {
    return Buffer.concat(
      this.frames()
        .filter((f) => f.type === 0 && f.stream === stream)
        .map((f) => f.payload),
    );
  }

  /** The stream got a frame with END_STREAM. */
  ended(stream: number): boolean {
    return this.frames().some(
      (f) => f.stream === stream && (f.type === 0 || f.type === 1) && (f.flags & 1) === 1,
    );
  }

  async until(cond: () => boolean, what: string): Promise<void> {
    const deadline = Date.now() + 5000;
    while (!cond()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await sleep(10);
    }
  }
}

describe("HPACK Huffman decoding", () => {
  it("decodes every symbol, long strings, and refuses EOS and codes outside the table", () => {
    // the RFC 7541 C.4.3 custom value, then a long string of one 5-bit symbol ('0' is 00000)
    assert.equal(huffmanDecode(Buffer.from("25a849e95bb8e8b4bf", "hex")), "custom-value");
    const zeros = Buffer.alloc((5000 * 5) / 8, 0); // 5000 '0's in 25,000 bits
    assert.equal(huffmanDecode(zeros), "0".repeat(5000));
    assert.throws(() => huffmanDecode(Buffer.from([0xff, 0xff, 0xff, 0xff])), /Huffman/); // EOS
  });

  it("decodes all 256 symbols, in every order of states", () => {
    // a test-side encoder from RFC 7541 Appendix B's table: codes laid bit by bit, padded with 1s
    const encode = (bytes: number[]): Buffer => {
      const bits: number[] = [];
      for (const b of bytes) {
        const [code, len] = HUFFMAN[b]!;
        for (let i = len - 1; i >= 0; i--) bits.push((code >>> i) & 1);
      }
      while (bits.length % 8 !== 0) bits.push(1);
      const out = Buffer.alloc(bits.length / 8);
      bits.forEach((bit, i) => {
        out[i >> 3]! |= bit << (7 - (i & 7));
      });
      return out;
    };
    const all = Array.from({ length: 256 }, (_, i) => i);
    for (const order of [all, [...all].reverse(), all.map((i) => (i * 97) % 256)])
      assert.equal(huffmanDecode(encode(order)), Buffer.from(order).toString("latin1"));
  });
});
