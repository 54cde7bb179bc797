// The gRPC server (src/grpc/h2server.ts on src/grpc/h2conn.ts), driven by our grpc-js client: every call
// shape, backpressure, cancel and deadline, status mapping, metadata, limits and shutdown; plus
// a raw HTTP/2 client for the protocol details grpc-js does not let a test produce.
import assert from "node:assert/strict";
import http2 from "node:http2";
import net from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { GrpcCode } from "../../src/base/errdefs.js";
import {
  InfoRequestSchema,
  InfoResponseSchema,
  ReadContentResponseSchema,
} from "../../src/gen/containerd/services/content/v1/content_pb.js";
import { Namespaces } from "../../src/gen/containerd/services/namespaces/v1/namespace_pb.js";
import { type Client, Connection } from "../../src/grpc/client.js";
import { H2GrpcServer } from "../../src/grpc/h2server.js";
import { type CallContext, EncodedMessage, type ServiceImpl } from "../../src/grpc/service.js";
import {
  decodeGrpcMessage,
  encodeGrpcMessage,
  formatTimeout,
  frameMessage,
  MessageDecoder,
  parseTimeout,
  statusError,
} from "../../src/grpc/wire.js";
import { kind } from "../helpers/assert.js";
import { TEST_SERVICE, Test } from "../helpers/grpc-test-service.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

// --- the test service (test/helpers/grpc-test-service.ts) --------------------------------------

/** What the handlers saw, for assertions. */
const seen = {
  produced: 0,
  aborted: [] as unknown[],
  started: 0,
  stopReadingGot: 0,
};

function waitAbort(ctx: CallContext, tag: string): Promise<void> {
  return new Promise((resolve) => {
    seen.started++;
    ctx.signal.addEventListener(
      "abort",
      () => {
        seen.aborted.push({ tag, reason: ctx.signal.reason });
        resolve();
      },
      { once: true },
    );
  });
}

const MiB = 1 << 20;

/** An encoded message in three parts (the first with the prefix's room), cut at odd places. */
function inParts(body: Uint8Array): EncodedMessage {
  const framed = Buffer.alloc(5 + 10);
  framed.set(body.subarray(0, 10), 5);
  return new EncodedMessage(framed, [
    Buffer.from(body.subarray(10, 100_007)),
    Buffer.from(body.subarray(100_007)),
  ]);
}

const impl: Omit<ServiceImpl<typeof Test>, "missing"> = {
  async unary(req, ctx) {
    switch (req.digest) {
      case "hang":
        await waitAbort(ctx, "unary");
        throw statusError("canceled", "handler saw the abort");
      case "slow":
        await sleep(200);
        return { info: { digest: "slow done" } };
      case "fail":
        throw statusError("not found", "blob «ü» is 100% gone %41 — ünïcödé");
      case "throw-plain":
        throw new Error("plain error");
      case "big-reply":
        return { info: { digest: "x".repeat(4096) } };
      case "ns":
        return { info: { digest: ctx.namespace(), labels: { lease: ctx.lease() ?? "" } } };
      case "bin":
        return { info: { digest: ctx.binaryHeader("x-test-bin")?.toString("hex") ?? "none" } };
      case "parts":
        return inParts(
          toBinary(InfoResponseSchema, create(InfoResponseSchema, { info: { digest: "p".repeat(300_000) } })),
        );
      default:
        return { info: { digest: req.digest, size: 42n } };
    }
  },

  async *serverStream(req, ctx) {
    if (req.digest === "hang") {
      await waitAbort(ctx, "serverStream");
      return;
    }
    if (req.digest === "fail-after-one") {
      yield { offset: 0n, data: Buffer.from("one") };
      throw statusError("data loss", "gone after the first");
    }
    if (req.digest === "encoded-parts") {
      for (const data of [Buffer.alloc(200_000, 1), Buffer.alloc(100_000, 2)])
        yield inParts(toBinary(ReadContentResponseSchema, create(ReadContentResponseSchema, { data })));
      return;
    }
    if (req.digest === "encoded") {
      const body = toBinary(
        ReadContentResponseSchema,
        create(ReadContentResponseSchema, { offset: 7n, data: Buffer.from("pre") }),
      );
      const framed = Buffer.alloc(5 + body.length);
      framed.set(body, 5);
      yield new EncodedMessage(framed);
      return;
    }
    // req.size messages of req.offset bytes each; message i is filled with byte i
    seen.produced = 0;
    for (let i = 0; i < Number(req.size); i++) {
      seen.produced++;
      yield { offset: BigInt(i), data: Buffer.alloc(Number(req.offset), i & 0xff) };
    }
  },

  async clientStream(reqs, ctx) {
    let total = 0;
    let n = 0;
    for await (const r of reqs) {
      n++;
      total += r.data.length;
      if (r.ref === "stop") break;
    }
    return { offset: BigInt(total), total: BigInt(n), digest: ctx.optionalNamespace() ?? "" };
  },

  async *bidi(reqs) {
    const got: string[] = [];
    for await (const r of reqs) {
      got.push(r.ref);
      if (r.ref === "stop") {
        seen.stopReadingGot = got.length;
        break; // stop reading; the client may still be sending
      }
    }
    for (let i = 0; i < got.length; i++) yield { offset: BigInt(i), digest: got[i]! };
  },
};

async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

// --- a raw HTTP/2 client for protocol checks ---------------------------------------------------

interface RawResult {
  headers: http2.IncomingHttpHeaders;
  trailers: http2.IncomingHttpHeaders | undefined;
  body: Buffer;
}

function rawCall(
  sock: string,
  path: string,
  headers: http2.OutgoingHttpHeaders,
  body: Buffer,
): Promise<RawResult> {
  return new Promise((resolve, reject) => {
    const session = http2.connect("http://localhost", { createConnection: () => net.connect(sock) });
    session.on("error", reject);
    const req = session.request({
      ":method": "POST",
      ":path": path,
      "content-type": "application/grpc",
      te: "trailers",
      ...headers,
    });
    let head: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders | undefined;
    const chunks: Buffer[] = [];
    req.on("response", (h) => {
      head = h;
    });
    req.on("trailers", (t) => {
      trailers = t;
    });
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("error", reject);
    req.on("close", () => {
      session.close();
      resolve({ headers: head, trailers, body: Buffer.concat(chunks) });
    });
    req.end(body);
  });
}

const infoReq = (digest: string) =>
  frameMessage(toBinary(InfoRequestSchema, create(InfoRequestSchema, { digest })));

// --- the tests -----------------------------------------------------------------------------------

let dir: string;
let sock: string;
let server: H2GrpcServer;
let conn: Connection;
let client: Client<typeof Test>;
const observed: { path: string; code: number }[] = [];

before(async () => {
  dir = await makeTempDir("h2server");
  sock = join(dir, "g.sock");
  server = new H2GrpcServer({ maxRecvMessageSize: 1 * MiB + 1024, maxSendMessageSize: 2 * MiB });
  server.addService(Test, impl as ServiceImpl<typeof Test>, (path, _kind, code) =>
    observed.push({ path, code }),
  );
  await server.listen(sock);
  conn = new Connection(sock);
  client = conn.client(Test);
});

after(async () => {
  conn?.close();
  await server?.shutdown(1000);
  await removeTempDir(dir);
});

describe("h2server: calls", () => {
  it("answers a unary call", async () => {
    const res = await client.unary({ digest: "hello" });
    assert.equal(res.info?.digest, "hello");
    assert.equal(res.info?.size, 42n);
    assert.deepEqual(observed.at(-1), { path: `/${TEST_SERVICE}/Unary`, code: 0 });
  });

  it("passes the namespace and lease headers to the handler", async () => {
    const res = await client.unary({ digest: "ns" }, { namespace: "ns-1", lease: "lease-7" });
    assert.equal(res.info?.digest, "ns-1");
    assert.deepEqual(res.info?.labels, { lease: "lease-7" });
    await assert.rejects(
      client.unary({ digest: "ns" }),
      kind("failed precondition", "namespace is required: failed precondition"),
    );
  });

  it("decodes binary (-bin) metadata", async () => {
    const r = await rawCall(
      sock,
      `/${TEST_SERVICE}/Unary`,
      { "x-test-bin": Buffer.from([1, 2, 0xff]).toString("base64") },
      infoReq("bin"),
    );
    assert.equal(r.trailers?.["grpc-status"], "0");
    const res = fromBinary(InfoResponseSchema, r.body.subarray(5));
    assert.equal(res.info?.digest, "0102ff");
  });

  it("streams 64 MiB with backpressure: the handler waits for the client", async () => {
    const it = client.serverStream({ offset: BigInt(MiB), size: 64n })[Symbol.asyncIterator]();
    const first = await it.next();
    assert.equal(first.done, false);
    // the client holds off: the handler must stall, not run through the whole stream (grpc-js
    // itself buffers up to 16 messages, HTTP/2 windows a few more). How soon it stalls depends
    // on when grpc-js's window updates arrive (later on a cold start), so wait until the count
    // has stood still for 200 ms, for up to 5 s
    let stalledAt = seen.produced;
    for (const start = Date.now(); Date.now() - start < 5000; ) {
      await sleep(200);
      if (seen.produced === stalledAt) break;
      stalledAt = seen.produced;
    }
    assert.ok(stalledAt < 40, `handler produced ${stalledAt} MiB ahead of a stalled client`);
    await sleep(300);
    assert.equal(seen.produced, stalledAt, "the handler went on while the client read nothing");
    let n = 1;
    let bytes = first.value!.data.length;
    for (;;) {
      const r = await it.next();
      if (r.done) break;
      assert.equal(r.value.offset, BigInt(n));
      assert.equal(r.value.data.length, MiB);
      assert.equal(r.value.data[MiB - 1], n & 0xff);
      bytes += r.value.data.length;
      n++;
    }
    assert.equal(n, 64);
    assert.equal(bytes, 64 * MiB);
  });

  it("sends pre-encoded messages as they are", async () => {
    const got = [];
    for await (const m of client.serverStream({ digest: "encoded" })) got.push(m);
    assert.equal(got.length, 1);
    assert.equal(got[0]!.offset, 7n);
    assert.equal(Buffer.from(got[0]!.data).toString(), "pre");
  });

  it("sends a message given in parts as one, past the flow-control window", async () => {
    const res = await client.unary({ digest: "parts" });
    assert.equal(res.info?.digest, "p".repeat(300_000));
    const got = [];
    for await (const m of client.serverStream({ digest: "encoded-parts" })) got.push(m);
    assert.deepEqual(
      got.map((m) => [m.data.length, m.data[0], m.data.at(-1)]),
      [
        [200_000, 1, 1],
        [100_000, 2, 2],
      ],
    );
  });

  it("collects a client stream until the client half-closes", async () => {
    async function* reqs() {
      for (let i = 0; i < 50; i++) yield { ref: `r${i}`, data: Buffer.alloc(1000) };
    }
    const res = await client.clientStream(reqs(), { namespace: "cs" });
    assert.equal(res.offset, 50_000n);
    assert.equal(res.total, 50n);
    assert.equal(res.digest, "cs");
  });

  it("answers a client stream whose handler stops reading early", async () => {
    async function* reqs() {
      yield { ref: "a", data: Buffer.alloc(10) };
      yield { ref: "stop", data: Buffer.alloc(10) };
      for (let i = 0; i < 20; i++) yield { ref: "more", data: Buffer.alloc(64 << 10) };
    }
    const res = await client.clientStream(reqs());
    assert.equal(res.total, 2n);
  });

  it("bidi: the handler answers after the client's early half-close", async () => {
    const call = client.bidi();
    await call.send({ ref: "a" });
    await call.send({ ref: "b" });
    await call.send({ ref: "c" });
    call.end();
    const got = [];
    for await (const r of call.responses) got.push(r.digest);
    assert.deepEqual(got, ["a", "b", "c"]);
  });

  it("bidi: the handler stops reading and still answers while the client sends on", async () => {
    const call = client.bidi();
    await call.send({ ref: "x" });
    await call.send({ ref: "stop" });
    for (let i = 0; i < 16; i++) await call.send({ ref: "late", data: Buffer.alloc(64 << 10) });
    call.end();
    const got = [];
    for await (const r of call.responses) got.push(r.digest);
    assert.deepEqual(got, ["x", "stop"]);
    assert.equal(seen.stopReadingGot, 2);
  });
});

describe("h2server: cancel and deadline", () => {
  it("aborts the handler's signal when the client cancels a stream", async () => {
    const ac = new AbortController();
    const before = seen.aborted.length;
    const started = seen.started;
    const consumed = (async () => {
      for await (const _ of client.serverStream({ digest: "hang" }, { signal: ac.signal })) {
        // nothing arrives
      }
    })();
    await until(() => seen.started > started, "the handler to start");
    ac.abort();
    await assert.rejects(consumed, kind("canceled"));
    await until(() => seen.aborted.length > before, "the handler's abort");
    await until(() => observed.at(-1)?.code === GrpcCode.Canceled, "the observer to see Canceled");
  });

  it("aborts a unary handler when the client cancels", async () => {
    const ac = new AbortController();
    const before = seen.aborted.length;
    const started = seen.started;
    const p = client.unary({ digest: "hang" }, { signal: ac.signal });
    await until(() => seen.started > started, "the handler to start");
    ac.abort();
    await assert.rejects(p, kind("canceled"));
    await until(() => seen.aborted.length > before, "the handler's abort");
  });

  it("fails a call past its deadline (grpc-timeout) and aborts the handler", async () => {
    const before = seen.aborted.length;
    const t0 = Date.now();
    await assert.rejects(client.unary({ digest: "hang" }, { timeoutMs: 300 }), kind("deadline exceeded"));
    assert.ok(Date.now() - t0 >= 250, "deadline honoured too early");
    await until(() => seen.aborted.length > before, "the handler's abort");
  });

  it("enforces grpc-timeout on the server side", async () => {
    const before = seen.aborted.length;
    const r = await rawCall(sock, `/${TEST_SERVICE}/Unary`, { "grpc-timeout": "150m" }, infoReq("hang"));
    assert.equal(r.headers[":status"], 200);
    assert.equal(r.headers["grpc-status"], String(GrpcCode.DeadlineExceeded));
    assert.equal(r.headers["grpc-message"], "context deadline exceeded");
    await until(() => seen.aborted.length > before, "the handler's abort");
    const last = seen.aborted.at(-1) as { reason: Error };
    assert.equal(last.reason.message, "context deadline exceeded");
  });
});

describe("h2server: statuses", () => {
  it("answers Unimplemented for a method without a handler and for an unknown service", async () => {
    await assert.rejects(
      client.missing({}),
      kind("not implemented", `unknown method Missing for service ${TEST_SERVICE}`),
    );
    await assert.rejects(
      conn.client(Namespaces).list({}),
      kind("not implemented", "unknown service containerd.services.namespaces.v1.Namespaces"),
    );
  });

  it("maps errors to codes and keeps messages with non-ASCII and % intact", async () => {
    await assert.rejects(
      client.unary({ digest: "fail" }),
      kind("not found", "blob «ü» is 100% gone %41 — ünïcödé"),
    );
    await assert.rejects(client.unary({ digest: "throw-plain" }), kind("unknown", "plain error"));
    const r = await rawCall(sock, `/${TEST_SERVICE}/Unary`, {}, infoReq("fail"));
    assert.equal(r.headers["grpc-status"], String(GrpcCode.NotFound));
    // trailers-only: everything in the one HEADERS frame
    assert.equal(r.trailers, undefined);
    assert.equal(r.body.length, 0);
    assert.match(String(r.headers["grpc-message"]), /^[\x20-\x7e]+$/);
    assert.equal(decodeGrpcMessage(String(r.headers["grpc-message"])), "blob «ü» is 100% gone %41 — ünïcödé");
  });

  it("sends an error after a message as trailers", async () => {
    const got: string[] = [];
    await assert.rejects(
      (async () => {
        for await (const m of client.serverStream({ digest: "fail-after-one" }))
          got.push(Buffer.from(m.data).toString());
      })(),
      kind("data loss", "gone after the first"),
    );
    assert.deepEqual(got, ["one"]);
  });

  it("refuses messages over the receive limit and replies over the send limit", async () => {
    await assert.rejects(
      client.unary({ digest: "y".repeat(2 * MiB) }),
      kind("resource exhausted", /grpc: received message larger than max \(\d+ vs\. 1049600\)/),
    );
    await assert.rejects(
      client
        .serverStream({ offset: BigInt(3 * MiB), size: 1n })
        [Symbol.asyncIterator]()
        .next(),
      kind("resource exhausted", /grpc: trying to send message larger than max/),
    );
    // the connection still serves
    assert.equal((await client.unary({ digest: "after" })).info?.digest, "after");
  });

  it("answers 415 to a non-gRPC content type", async () => {
    const r = await rawCall(
      sock,
      `/${TEST_SERVICE}/Unary`,
      { "content-type": "application/json" },
      infoReq("x"),
    );
    assert.equal(r.headers[":status"], 415);
  });

  it("fails a compressed message without grpc-encoding as Internal", async () => {
    const body = infoReq("x");
    body[0] = 1;
    const r = await rawCall(sock, `/${TEST_SERVICE}/Unary`, {}, body);
    assert.equal(r.headers["grpc-status"], String(GrpcCode.Internal));
  });

  it("decompresses gzip messages when grpc-encoding says so", async () => {
    const { gzipSync } = await import("node:zlib");
    const msg = toBinary(InfoRequestSchema, create(InfoRequestSchema, { digest: "zipped" }));
    const z = gzipSync(msg);
    const body = Buffer.concat([Buffer.from([1, 0, 0, 0, 0]), z]);
    body.writeUInt32BE(z.length, 1);
    const r = await rawCall(sock, `/${TEST_SERVICE}/Unary`, { "grpc-encoding": "gzip" }, body);
    assert.equal(r.trailers?.["grpc-status"], "0");
    assert.equal(fromBinary(InfoResponseSchema, r.body.subarray(5)).info?.digest, "zipped");
  });

  it("answers a unary call without its request message like grpc-go", async () => {
    const r = await rawCall(sock, `/${TEST_SERVICE}/Unary`, {}, Buffer.alloc(0));
    assert.equal(r.headers["grpc-status"], String(GrpcCode.Unknown));
  });
});

describe("h2server: shutdown", () => {
  it("lets calls in progress finish, then forces what is left", async () => {
    const d = await makeTempDir("h2server-stop");
    const s = new H2GrpcServer();
    s.addService(Test, impl as ServiceImpl<typeof Test>);
    const path = join(d, "s.sock");
    await s.listen(path);
    const c = new Connection(path);
    try {
      const cl = c.client(Test);
      const slow = cl.unary({ digest: "slow" });
      await sleep(50);
      await s.tryShutdown();
      assert.equal((await slow).info?.digest, "slow done");

      const s2 = new H2GrpcServer();
      s2.addService(Test, impl as ServiceImpl<typeof Test>);
      const path2 = join(d, "s2.sock");
      await s2.listen(path2);
      const c2 = new Connection(path2);
      const before = seen.aborted.length;
      const started = seen.started;
      const hang = c2.client(Test).unary({ digest: "hang" });
      hang.catch(() => {});
      await until(() => seen.started > started, "the handler to start");
      const t0 = Date.now();
      await s2.shutdown(200);
      assert.ok(Date.now() - t0 < 2000);
      await assert.rejects(hang);
      await until(() => seen.aborted.length > before, "the handler's abort");
      c2.close();
    } finally {
      c.close();
      await removeTempDir(d);
    }
  });
});

describe("wire helpers", () => {
  it("parses grpc-timeout values", () => {
    assert.equal(parseTimeout("10S"), 10_000);
    assert.equal(parseTimeout("500m"), 500);
    assert.equal(parseTimeout("2H"), 7_200_000);
    assert.equal(parseTimeout("3M"), 180_000);
    assert.equal(parseTimeout("1500u"), 1.5);
    assert.equal(parseTimeout("99999999n"), 99.999999);
    assert.equal(parseTimeout("123456789S"), undefined);
    assert.equal(parseTimeout("1x"), undefined);
    assert.equal(parseTimeout("S"), undefined);
    assert.equal(parseTimeout("-1S"), undefined);
    assert.equal(parseTimeout(formatTimeout(12_345)), 12_345);
    assert.equal(parseTimeout(formatTimeout(1e9)), 1e9);
  });

  it("percent-encodes grpc-message", () => {
    assert.equal(encodeGrpcMessage("plain text: ok"), "plain text: ok");
    assert.equal(encodeGrpcMessage("100%"), "100%25");
    assert.equal(encodeGrpcMessage("é\n"), "%C3%A9%0A");
    for (const m of ["", "a%b", "%%41", "ü€😀 %zz", "tab\there"])
      assert.equal(decodeGrpcMessage(encodeGrpcMessage(m)), m);
    assert.equal(decodeGrpcMessage("50%"), "50%");
    assert.equal(decodeGrpcMessage("%zz%4"), "%zz%4");
  });

  it("splits messages across and within chunks", () => {
    const msgs = [Buffer.from("a"), Buffer.alloc(0), Buffer.alloc(70_000, 7), Buffer.from("last")];
    const stream = Buffer.concat(msgs.map((m) => frameMessage(m)));
    for (const step of [1, 3, 5, 4096, stream.length]) {
      const got: Buffer[] = [];
      const d = new MessageDecoder(1 << 20, null, (m) => got.push(Buffer.from(m)));
      for (let i = 0; i < stream.length; i += step) d.push(stream.subarray(i, i + step));
      assert.equal(d.partial, false);
      assert.deepEqual(got, msgs, `chunks of ${step}`);
    }
    const small = new MessageDecoder(10, null, () => {});
    assert.throws(() => small.push(frameMessage(Buffer.alloc(11))), kind("resource exhausted"));
  });
});
