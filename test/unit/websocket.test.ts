// WebSocket framing checked against RFC 6455's own examples (section 5.7 frames, section 1.3
// handshake), and the connection's control-frame handling over a real socket pair.
import assert from "node:assert/strict";
import net from "node:net";
import { describe, it } from "node:test";
import {
  acceptKey,
  encodeFrame,
  Opcode,
  parseFrames,
  WsConnection,
} from "../../src/cri/streaming/websocket.js";

const bytes = (...b: number[]) => Buffer.from(b);
const MASK = bytes(0x37, 0xfa, 0x21, 0x3d);

describe("WebSocket framing (RFC 6455 examples)", () => {
  it("computes the handshake's accept key", () => {
    assert.equal(acceptKey("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  });

  it("encodes and parses the single-frame text messages", () => {
    const unmasked = bytes(0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f);
    const masked = bytes(0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58);
    assert.deepEqual(
      encodeFrame({ fin: true, opcode: Opcode.TEXT, payload: Buffer.from("Hello") }),
      unmasked,
    );
    assert.deepEqual(
      encodeFrame({ fin: true, opcode: Opcode.TEXT, payload: Buffer.from("Hello"), mask: MASK }),
      masked,
    );
    for (const b of [unmasked, masked]) {
      const { frames, rest } = parseFrames(b);
      assert.equal(rest.length, 0);
      assert.equal(frames.length, 1);
      assert.equal(frames[0]!.payload.toString(), "Hello");
      assert.equal(frames[0]!.opcode, Opcode.TEXT);
      assert.ok(frames[0]!.fin);
    }
  });

  it("parses a fragmented message and the ping/pong examples", () => {
    const { frames } = parseFrames(
      Buffer.concat([
        bytes(0x01, 0x03, 0x48, 0x65, 0x6c),
        bytes(0x80, 0x02, 0x6c, 0x6f),
        bytes(0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f),
        bytes(0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58),
      ]),
    );
    assert.deepEqual(
      frames.map((f) => [f.fin, f.opcode, f.payload.toString()]),
      [
        [false, Opcode.TEXT, "Hel"],
        [true, Opcode.CONTINUATION, "lo"],
        [true, Opcode.PING, "Hello"],
        [true, Opcode.PONG, "Hello"],
      ],
    );
  });

  it("uses the 16-bit and 64-bit lengths", () => {
    const f256 = encodeFrame({ fin: true, opcode: Opcode.BINARY, payload: Buffer.alloc(256) });
    assert.deepEqual(f256.subarray(0, 4), bytes(0x82, 0x7e, 0x01, 0x00));
    assert.equal(f256.length, 4 + 256);
    const f64k = encodeFrame({ fin: true, opcode: Opcode.BINARY, payload: Buffer.alloc(65536) });
    assert.deepEqual(f64k.subarray(0, 10), bytes(0x82, 0x7f, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00));
    const back = parseFrames(f64k);
    assert.equal(back.frames[0]!.payload.length, 65536);
    // an incomplete frame waits for more bytes
    assert.equal(parseFrames(f64k.subarray(0, 1000)).frames.length, 0);
  });
});

async function serverPair() {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  const accepted = new Promise<net.Socket>((r) => srv.once("connection", r));
  const peer = net.connect((srv.address() as net.AddressInfo).port, "127.0.0.1");
  const ws = new WsConnection(await accepted, "server");
  let got = Buffer.alloc(0);
  peer.on("data", (b: Buffer) => {
    got = Buffer.concat([got, b]);
  });
  const read = async () => {
    await new Promise((r) => setTimeout(r, 100));
    const out = got;
    got = Buffer.alloc(0);
    return out;
  };
  return {
    ws,
    peer,
    read,
    done: () => {
      peer.destroy();
      srv.close();
    },
  };
}

describe("WebSocket connection (server side)", () => {
  it("answers a masked ping with an unmasked pong and delivers reassembled messages", async () => {
    const p = await serverPair();
    try {
      const msgs: string[] = [];
      p.ws.on("message", (d: Buffer) => msgs.push(d.toString()));
      p.peer.write(encodeFrame({ fin: false, opcode: Opcode.TEXT, payload: Buffer.from("Hel"), mask: MASK }));
      p.peer.write(
        encodeFrame({ fin: true, opcode: Opcode.PING, payload: Buffer.from("Hello"), mask: MASK }),
      );
      p.peer.write(
        encodeFrame({ fin: true, opcode: Opcode.CONTINUATION, payload: Buffer.from("lo"), mask: MASK }),
      );
      assert.deepEqual(await p.read(), bytes(0x8a, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f));
      assert.deepEqual(msgs, ["Hello"]);
      // the server's own messages are unmasked
      await p.ws.send(Buffer.from([1, 0x61]));
      assert.deepEqual(await p.read(), bytes(0x82, 0x02, 0x01, 0x61));
    } finally {
      p.done();
    }
  });

  it("closes with 1002 when a client frame is not masked", async () => {
    const p = await serverPair();
    try {
      const closed = new Promise<void>((r) => p.ws.once("close", () => r()));
      p.peer.write(bytes(0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f));
      const out = await p.read();
      assert.deepEqual(out.subarray(0, 4), bytes(0x88, 0x0d, 0x03, 0xea));
      await closed;
    } finally {
      p.done();
    }
  });
});
