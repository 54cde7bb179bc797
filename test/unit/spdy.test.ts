// SPDY/3.1 framing checked against byte layouts computed by hand from the SPDY protocol draft 3.1
// (control frame header: C bit, version 3, type, flags, 24-bit length; data frame header: stream
// id, flags, length; name/value blocks with 32-bit counts and lengths, zlib-compressed with the
// draft's dictionary), plus a session's replies and flow control over a real socket pair.
import assert from "node:assert/strict";
import net from "node:net";
import { describe, it } from "node:test";
import zlib from "node:zlib";
import {
  decodeHeaderBlock,
  encodeControl,
  encodeData,
  encodeHeaderBlock,
  encodeRstStream,
  FrameType,
  parseFrames,
  SpdySession,
  type SpdyStream,
} from "../../src/cri/streaming/spdy.js";
import { SPDY3_DICTIONARY } from "../../src/cri/streaming/spdy-dictionary.js";

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ""), "hex");

describe("SPDY/3 framing", () => {
  it("lays out control and data frames as the draft does", () => {
    // PING id 1: 0x8003 (control, version 3), type 6, flags 0, length 4, id
    assert.deepEqual(encodeControl(FrameType.PING, 0, hex("00000001")), hex("8003 0006 00000004 00000001"));
    // RST_STREAM stream 1, status CANCEL (5)
    assert.deepEqual(encodeRstStream(1, 5), hex("8003 0003 00000008 00000001 00000005"));
    // DATA on stream 3 with FLAG_FIN, payload "hi"
    assert.deepEqual(encodeData(3, 1, Buffer.from("hi")), hex("00000003 01000002 6869"));
    // flags sit in the high byte of the length word
    assert.deepEqual(encodeControl(FrameType.SYN_REPLY, 1, Buffer.alloc(0)), hex("8003 0002 01000000"));
  });

  it("parses frames split anywhere in the byte stream", () => {
    const bytes = Buffer.concat([
      hex("8003 0006 00000004 0000002a"),
      hex("00000005 01000003 616263"),
      hex("8003 0009 00000008 00000005 00010000"),
    ]);
    for (let cut = 0; cut <= bytes.length; cut++) {
      const a = parseFrames(bytes.subarray(0, cut));
      const b = parseFrames(Buffer.concat([a.rest, bytes.subarray(cut)]));
      const frames = [...a.frames, ...b.frames];
      assert.equal(frames.length, 3);
      assert.equal(b.rest.length, 0);
      const [ping, data, wu] = frames;
      assert.ok(ping?.control && ping.type === 6 && ping.version === 3 && ping.data.readUInt32BE(0) === 42);
      assert.ok(
        data && !data.control && data.streamId === 5 && data.flags === 1 && data.data.toString() === "abc",
      );
      assert.ok(wu?.control && wu.type === 9 && wu.data.readUInt32BE(4) === 0x10000);
    }
  });

  it("encodes name/value blocks with 32-bit counts and lengths, names lowercased", () => {
    const b = encodeHeaderBlock({ streamType: "error" });
    assert.deepEqual(
      b,
      Buffer.concat([
        hex("00000001 0000000a"),
        Buffer.from("streamtype"),
        hex("00000005"),
        Buffer.from("error"),
      ]),
    );
    assert.deepEqual(decodeHeaderBlock(b), { streamtype: "error" });
    assert.throws(() => decodeHeaderBlock(hex("00000001 000000ff")));
  });

  it("has the draft's 1423-byte dictionary", () => {
    assert.equal(SPDY3_DICTIONARY.length, 1423);
    assert.deepEqual(
      SPDY3_DICTIONARY.subarray(0, 11),
      Buffer.concat([hex("00000007"), Buffer.from("options")]),
    );
    assert.equal(SPDY3_DICTIONARY.subarray(-7).toString(), ",enq=0.");
    // a zlib stream with a preset dictionary names it by its Adler-32 (RFC 1950 FDICT)
    const z = zlib.deflateSync(Buffer.from("x"), { dictionary: SPDY3_DICTIONARY });
    assert.equal(z[1]! & 0x20, 0x20);
    assert.equal(z.subarray(2, 6).toString("hex"), "e3c6a7c2");
  });
});

/** A server session on one end of a loopback connection; the test speaks raw bytes on the other. */
async function pair(): Promise<{
  session: SpdySession;
  peer: net.Socket;
  frames: () => Promise<Buffer>;
  done: () => void;
}> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  const port = (srv.address() as net.AddressInfo).port;
  const accepted = new Promise<net.Socket>((r) => srv.once("connection", r));
  const peer = net.connect(port, "127.0.0.1");
  const sock = await accepted;
  const session = new SpdySession(sock, { server: true });
  let got = Buffer.alloc(0);
  peer.on("data", (b: Buffer) => {
    got = Buffer.concat([got, b]);
  });
  return {
    session,
    peer,
    frames: async () => {
      await new Promise((r) => setTimeout(r, 100));
      const out = got;
      got = Buffer.alloc(0);
      return out;
    },
    done: () => {
      peer.destroy();
      session.destroy();
      srv.close();
    },
  };
}

/** A client SYN_STREAM for `id` with `headers`, compressed by a fresh client-side zlib stream. */
async function synStream(
  id: number,
  headers: Record<string, string>,
  deflate = zlib.createDeflate({ dictionary: SPDY3_DICTIONARY }),
) {
  const block = await new Promise<Buffer>((resolve) => {
    const parts: Buffer[] = [];
    const onData = (b: Buffer) => parts.push(b);
    deflate.on("data", onData);
    deflate.write(encodeHeaderBlock(headers));
    deflate.flush(zlib.constants.Z_SYNC_FLUSH, () => {
      deflate.off("data", onData);
      resolve(Buffer.concat(parts));
    });
  });
  const head = Buffer.alloc(10);
  head.writeUInt32BE(id, 0);
  return encodeControl(FrameType.SYN_STREAM, 0, Buffer.concat([head, block]));
}

describe("SPDY session", () => {
  it("answers a SYN_STREAM with a SYN_REPLY, a PING with the same PING", async () => {
    const p = await pair();
    try {
      const deflate = zlib.createDeflate({ dictionary: SPDY3_DICTIONARY });
      const block = await new Promise<Buffer>((resolve) => {
        const parts: Buffer[] = [];
        deflate.on("data", (b: Buffer) => parts.push(b));
        deflate.write(encodeHeaderBlock({ streamtype: "stdout" }));
        deflate.flush(zlib.constants.Z_SYNC_FLUSH, () => resolve(Buffer.concat(parts)));
      });
      const streams: SpdyStream[] = [];
      p.session.on("stream", (s: SpdyStream) => streams.push(s));
      // SYN_STREAM: stream 1, associated 0, priority/slot 0, then the compressed block
      p.peer.write(
        encodeControl(FrameType.SYN_STREAM, 0, Buffer.concat([hex("00000001 00000000 0000"), block])),
      );
      p.peer.write(encodeControl(FrameType.PING, 0, hex("00000007")));
      const out = await p.frames();
      assert.equal(streams.length, 1);
      assert.deepEqual(streams[0]!.headers, { streamtype: "stdout" });
      const { frames } = parseFrames(out);
      const reply = frames.find((f) => f.control && f.type === FrameType.SYN_REPLY);
      assert.ok(reply?.control);
      assert.equal(reply.data.readUInt32BE(0), 1);
      const inflated = zlib.inflateSync(reply.data.subarray(4), {
        dictionary: SPDY3_DICTIONARY,
        finishFlush: zlib.constants.Z_SYNC_FLUSH,
      });
      assert.deepEqual(inflated, hex("00000000"));
      const ping = frames.find((f) => f.control && f.type === FrameType.PING);
      assert.ok(ping?.control);
      assert.deepEqual(ping.data, hex("00000007"));

      // data from the server goes out as DATA frames; end() sends an empty DATA with FIN
      await new Promise<void>((r) => streams[0]!.end(Buffer.from("out"), () => r()));
      const { frames: df } = parseFrames(await p.frames());
      assert.deepEqual(
        df.map((f) => (f.control ? "control" : `${f.streamId}:${f.flags}:${f.data.toString()}`)),
        ["1:0:out", "1:1:"],
      );
    } finally {
      p.done();
    }
  });

  it("obeys the send windows once the peer does flow control", async () => {
    const p = await pair();
    try {
      const deflate = zlib.createDeflate({ dictionary: SPDY3_DICTIONARY });
      const block = await new Promise<Buffer>((resolve) => {
        const parts: Buffer[] = [];
        deflate.on("data", (b: Buffer) => parts.push(b));
        deflate.write(encodeHeaderBlock({ streamtype: "data" }));
        deflate.flush(zlib.constants.Z_SYNC_FLUSH, () => resolve(Buffer.concat(parts)));
      });
      const got = new Promise<SpdyStream>((r) => p.session.once("stream", r));
      p.peer.write(
        encodeControl(FrameType.SYN_STREAM, 0, Buffer.concat([hex("00000001 00000000 0000"), block])),
      );
      const s = await got;
      // a WINDOW_UPDATE shows the peer does flow control: 64 KiB + 1 for the stream
      p.peer.write(encodeControl(FrameType.WINDOW_UPDATE, 0, hex("00000001 00000001")));
      await new Promise((r) => setTimeout(r, 50));
      s.write(Buffer.alloc(100_000, 0x61));
      const dataBytes = (b: Buffer) =>
        parseFrames(b).frames.reduce((n, f) => n + (f.control ? 0 : f.data.length), 0);
      // the session window (64 KiB) is the smaller one
      assert.equal(dataBytes(await p.frames()), 65536);
      p.peer.write(encodeControl(FrameType.WINDOW_UPDATE, 0, hex("00000000 00010000")));
      assert.equal(dataBytes(await p.frames()), 1);
      p.peer.write(encodeControl(FrameType.WINDOW_UPDATE, 0, hex("00000001 00010000")));
      assert.equal(dataBytes(await p.frames()), 100_000 - 65537);
    } finally {
      p.done();
    }
  });

  it("gives credit back as the reader consumes, and honours RST_STREAM and GOAWAY", async () => {
    const p = await pair();
    try {
      const deflate = zlib.createDeflate({ dictionary: SPDY3_DICTIONARY });
      const got = new Promise<SpdyStream>((r) => p.session.once("stream", r));
      p.peer.write(await synStream(1, { streamtype: "stdin" }, deflate));
      const s = await got;
      let n = 0;
      s.on("data", (b: Buffer) => {
        n += b.length;
      });
      p.peer.write(encodeData(1, 0, Buffer.alloc(40_000, 1)));
      const updates = parseFrames(await p.frames())
        .frames.filter((f) => f.control && f.type === FrameType.WINDOW_UPDATE)
        .map((f) => [f.data.readUInt32BE(0), f.data.readUInt32BE(4)]);
      assert.equal(n, 40_000);
      // the stream's window and (past half of it) the session's come back
      assert.deepEqual(
        updates.sort((a, b) => a[0]! - b[0]!),
        [
          [0, 40_000],
          [1, 40_000],
        ],
      );
      // RST_STREAM from the peer ends the stream with an error
      const errored = new Promise<Error>((r) => s.once("error", r));
      p.peer.write(encodeRstStream(1, 5));
      assert.match((await errored).message, /reset by peer \(status 5\)/);
      // GOAWAY with nothing open: the session is done
      const closed = new Promise<void>((r) => p.session.once("close", () => r()));
      p.peer.write(encodeControl(FrameType.GOAWAY, 0, hex("00000001 00000000")));
      await closed;
      assert.ok(p.session.closed);
    } finally {
      p.done();
    }
  });
});
