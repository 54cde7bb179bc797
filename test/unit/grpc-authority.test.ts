// grpc-go clients of the Kubernetes 1.2x era (crictl 1.26) send a unix socket's path as
// `:authority`, which nghttp2 refuses with RST_STREAM(PROTOCOL_ERROR). These tests speak raw
// HTTP/2 to berthd's gRPC server the way such a client does and check that the calls are served,
// including a second call that names the authority through the HPACK dynamic table.
import assert from "node:assert/strict";
import net from "node:net";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { Version } from "../../src/gen/containerd/services/version/v1/version_pb.js";
import { huffmanDecode, rewriteAuthority, sniffConnection } from "../../src/grpc/authority.js";
import { H2GrpcServer } from "../../src/grpc/h2server.js";
import type { ServiceImpl } from "../../src/grpc/service.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

function frame(type: number, flags: number, stream: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(stream, 5);
  return Buffer.concat([h, payload]);
}

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

  it("decodes RFC 7541's Huffman example and rewrites only the authority", () => {
    // RFC 7541 C.4.1: "www.example.com"
    assert.equal(huffmanDecode(Buffer.from("f1e3c2e5f23a6ba0ab90f4ff", "hex")), "www.example.com");
    // indexed :method POST (0x83), then :authority with incremental indexing (0x41) and a path
    const block = Buffer.concat([Buffer.from([0x83, 0x41]), str("/run/x.sock"), lit("te", "trailers")]);
    const out = Buffer.from(
      rewriteAuthority(block, (v) => (v.includes("/") ? "x".repeat(v.length) : undefined)),
    );
    assert.deepEqual(
      out,
      Buffer.concat([Buffer.from([0x83, 0x41]), str("xxxxxxxxxxx"), lit("te", "trailers")]),
    );
    const kept = Buffer.concat([Buffer.from([0x41]), str("localhost")]);
    assert.equal(
      rewriteAuthority(kept, () => undefined),
      kept,
    );
  });

  it("waits for the first request and the client's SETTINGS ACK, and cuts that ACK out", () => {
    const settings = frame(4, 0, 0, Buffer.alloc(0));
    const ack = frame(4, 1, 0, Buffer.alloc(0));
    const headers = frame(1, 4, 1, Buffer.concat([Buffer.from([0x83, 0x41]), str("/a/b.sock")]));
    assert.deepEqual(sniffConnection(Buffer.concat([PREFACE, settings, headers])), { state: "more" });
    const r = sniffConnection(Buffer.concat([PREFACE, settings, headers, ack]));
    assert.equal(r.state, "done");
    if (r.state !== "done") return;
    assert.equal(r.authority, "/a/b.sock");
    assert.deepEqual(r.bytes, Buffer.concat([PREFACE, settings, headers]));
    assert.deepEqual(sniffConnection(Buffer.from("GET / HTTP/1.1\r\n")), { state: "foreign" });
  });

  for (const authority of ["/run/berth/berth.sock", "localhost"]) {
    it(`serves two calls on one connection with :authority ${authority}`, async () => {
      const c = net.connect(sock);
      const got: Buffer[] = [];
      c.on("data", (d: Buffer) => got.push(d));
      await new Promise<void>((resolve, reject) => {
        c.once("connect", () => resolve());
        c.once("error", reject);
      });
      c.write(Buffer.concat([PREFACE, frame(4, 0, 0, Buffer.alloc(0))]));
      // like grpc-go: wait for the server's SETTINGS, acknowledge them, then call
      await new Promise((r) => setTimeout(r, 100));
      assert.ok(Buffer.concat(got).length >= 9, "the server sent its SETTINGS before any request");
      c.write(frame(4, 1, 0, Buffer.alloc(0)));
      const pseudo = Buffer.concat([
        Buffer.from([0x83, 0x86]), // :method POST, :scheme http
        lit(":path", "/containerd.services.version.v1.Version/Version"),
      ]);
      const regular = Buffer.concat([lit("content-type", "application/grpc"), lit("te", "trailers")]);
      // first call: the authority enters the dynamic table (index 62); second: referenced from it
      // (pseudo-header fields come before the others, as RFC 7540 8.1.2.1 requires)
      const first = Buffer.concat([pseudo, Buffer.from([0x41]), str(authority), regular]);
      const second = Buffer.concat([pseudo, Buffer.from([0x80 | 62]), regular]);
      const empty = Buffer.from([0, 0, 0, 0, 0]);
      c.write(Buffer.concat([frame(1, 4, 1, first), frame(0, 1, 1, empty)]));
      c.write(Buffer.concat([frame(1, 4, 3, second), frame(0, 1, 3, empty)]));
      const frames = () => {
        const b = Buffer.concat(got);
        const out: { type: number; stream: number; payload: Buffer }[] = [];
        for (let at = 0; at + 9 <= b.length; ) {
          const len = b.readUIntBE(at, 3);
          if (at + 9 + len > b.length) break;
          out.push({
            type: b[at + 3]!,
            stream: b.readUInt32BE(at + 5),
            payload: b.subarray(at + 9, at + 9 + len),
          });
          at += 9 + len;
        }
        return out;
      };
      const deadline = Date.now() + 5000;
      const answered = (s: number) => frames().some((f) => f.type === 0 && f.stream === s);
      while (!(answered(1) && answered(3)) && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 20));
      c.destroy();
      const fs = frames();
      assert.deepEqual(
        fs.filter((f) => f.type === 3 || f.type === 7).map((f) => [f.type, f.stream]),
        [],
        "no RST_STREAM or GOAWAY",
      );
      for (const s of [1, 3]) {
        const data = Buffer.concat(fs.filter((f) => f.type === 0 && f.stream === s).map((f) => f.payload));
        assert.ok(data.includes(Buffer.from("v-authority")), `call on stream ${s} answered`);
      }
    });
  }
});
