// The berth CLI's gRPC client on node:http2 (src/grpc/h2client.ts), judged by grpc-js's server:
// every call shape, metadata, statuses with their messages, flow control on large streams,
// a reader that stops early, deadlines, cancellation, the receive limit, and connection failures.
import assert from "node:assert/strict";
import net from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import {
  type InfoRequest,
  type InfoResponse,
  InfoResponseSchema,
  type ReadContentRequest,
  type ReadContentResponse,
  ReadContentResponseSchema,
  type WriteContentRequest,
  type WriteContentResponse,
  WriteContentResponseSchema,
} from "../../src/gen/containerd/services/content/v1/content_pb.js";
import { H2Connection } from "../../src/grpc/h2client.js";
import { grpcDefinition } from "../../src/grpc/service.js";
import { kind } from "../helpers/assert.js";
import { Test } from "../helpers/grpc-test-service.js";
import { until } from "../helpers/procs.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

/** What the server saw, for assertions. */
const seen = { cancelled: 0 };

const handlers: grpc.UntypedServiceImplementation = {
  unary(call: grpc.ServerUnaryCall<InfoRequest, InfoResponse>, cb: grpc.sendUnaryData<unknown>) {
    const { digest } = call.request;
    if (digest === "hang") return; // never answers
    if (digest === "fail")
      return cb({ code: grpc.status.NOT_FOUND, details: "blob “ünïcode” not found" } as grpc.ServiceError);
    const md = call.metadata;
    cb(
      null,
      create(InfoResponseSchema, {
        info: {
          digest,
          size: 1n,
          labels: {
            namespace: String(md.get("containerd-namespace")[0] ?? ""),
            lease: String(md.get("containerd-lease")[0] ?? ""),
            deadline: call.getDeadline() === Number.POSITIVE_INFINITY ? "none" : "set",
          },
        },
      }),
    );
  },
  serverStream(call: grpc.ServerWritableStream<ReadContentRequest, ReadContentResponse>) {
    const { digest, size } = call.request;
    const n = Number(size);
    call.on("cancelled", () => seen.cancelled++);
    // `size` messages of `offset` bytes each ("big": 1 MiB each, with a pattern to check)
    let i = 0;
    const next = () => {
      while (i < n && !call.cancelled) {
        const len = digest === "big" ? 1 << 20 : Number(call.request.offset);
        const data = Buffer.alloc(len, i & 0xff);
        const more = call.write(create(ReadContentResponseSchema, { offset: BigInt(i), data }));
        i++;
        if (!more) return void call.once("drain", next);
      }
      if (!call.cancelled && digest !== "open") call.end();
    };
    next();
  },
  clientStream(
    call: grpc.ServerReadableStream<WriteContentRequest, WriteContentResponse>,
    cb: grpc.sendUnaryData<unknown>,
  ) {
    let bytes = 0;
    let count = 0;
    call.on("data", (m: WriteContentRequest) => {
      count++;
      bytes += m.data.length;
    });
    call.on("end", () =>
      cb(null, create(WriteContentResponseSchema, { offset: BigInt(bytes), total: BigInt(count) })),
    );
  },
  bidi(call: grpc.ServerDuplexStream<WriteContentRequest, WriteContentResponse>) {
    call.on("data", (m: WriteContentRequest) =>
      call.write(create(WriteContentResponseSchema, { offset: m.offset * 2n, digest: m.ref })),
    );
    call.on("end", () => call.end());
  },
};

describe("gRPC client on node:http2, against grpc-js's server", () => {
  let dir: string;
  let server: grpc.Server;
  let address: string;
  let conn: H2Connection;

  before(async () => {
    dir = await makeTempDir("h2client");
    address = `unix:${join(dir, "grpc.sock")}`;
    server = new grpc.Server();
    server.addService(grpcDefinition(Test), handlers);
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err) =>
        err ? reject(err) : resolve(),
      ),
    );
    conn = new H2Connection(address);
    await conn.ready(5000);
  });

  after(async () => {
    conn.close();
    server.forceShutdown();
    await removeTempDir(dir);
  });

  it("makes unary calls with the namespace, lease and deadline headers", async () => {
    const c = conn.client(Test);
    const r = await c.unary({ digest: "sha256:x" }, { namespace: "ns1", lease: "l1", timeoutMs: 5000 });
    assert.equal(r.info?.digest, "sha256:x");
    assert.deepEqual(r.info?.labels, { namespace: "ns1", lease: "l1", deadline: "set" });
    const bare = await c.unary({ digest: "d" });
    assert.deepEqual(bare.info?.labels, { namespace: "", lease: "", deadline: "none" });
  });

  it("turns a status into containerd's error kind with the server's message, decoded", async () => {
    await assert.rejects(conn.client(Test).unary({ digest: "fail" }), (err: Error & { kind?: string }) => {
      assert.equal(err.kind, "not found");
      assert.equal(err.message, "blob “ünïcode” not found");
      return true;
    });
  });

  it("streams a server's messages, 64 MiB of them through flow control, intact and in order", async () => {
    let i = 0;
    for await (const m of conn.client(Test).serverStream({ digest: "big", size: 64n })) {
      assert.equal(m.offset, BigInt(i));
      assert.equal(m.data.length, 1 << 20);
      assert.ok(m.data[0] === (i & 0xff) && m.data[m.data.length - 1] === (i & 0xff));
      i++;
    }
    assert.equal(i, 64);
  });

  it("cancels a server stream whose reader stops early", async () => {
    const before = seen.cancelled;
    let got = 0;
    for await (const _ of conn.client(Test).serverStream({ digest: "open", size: 1000n, offset: 10n })) {
      if (++got === 3) break;
    }
    for (let t = 0; t < 50 && seen.cancelled === before; t++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(seen.cancelled, before + 1, "the server saw the call cancelled");
  });

  it("sends a client stream and gets its one answer", async () => {
    async function* reqs() {
      for (let i = 0; i < 100; i++) yield { data: Buffer.alloc(1000 + i) };
    }
    const r = await conn.client(Test).clientStream(reqs());
    assert.equal(r.total, 100n);
    assert.equal(r.offset, BigInt(100 * 1000 + (99 * 100) / 2));
  });

  it("runs a bidirectional call: send, read the answers, half-close", async () => {
    const call = conn.client(Test).bidi();
    const got: string[] = [];
    const reading = (async () => {
      for await (const m of call.responses) got.push(`${m.digest}:${m.offset}`);
    })();
    for (let i = 1; i <= 5; i++) await call.send({ ref: `r${i}`, offset: BigInt(i) });
    call.end();
    await reading;
    assert.deepEqual(got, ["r1:2", "r2:4", "r3:6", "r4:8", "r5:10"]);
  });

  it("fails a call past its deadline, and one whose signal aborts", async () => {
    const t0 = Date.now();
    await assert.rejects(
      conn.client(Test).unary({ digest: "hang" }, { timeoutMs: 200 }),
      kind("deadline exceeded"),
    );
    assert.ok(Date.now() - t0 < 3000);
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    await assert.rejects(
      conn.client(Test).unary({ digest: "hang" }, { signal: ac.signal }),
      kind("canceled"),
    );
  });

  it("refuses a message above the receive limit", async () => {
    const small = new H2Connection(address, { maxMessageSize: 4096 });
    try {
      const s = small.client(Test).serverStream({ digest: "x", size: 1n, offset: 10_000n });
      await assert.rejects(
        (async () => {
          for await (const _ of s) {
          }
        })(),
        (err: Error & { kind?: string }) => {
          assert.equal(err.kind, "resource exhausted");
          assert.match(err.message, /received message larger than max \(\d+ vs\. 4096\)/);
          return true;
        },
      );
    } finally {
      small.close();
    }
  });

  it("ends a finished call with the two END_STREAMs alone, and resets only a call it gives up", async () => {
    // a proxy that reads the client's HTTP/2 frame headers on their way to the server
    const frames: number[] = [];
    const proxyPath = join(dir, "proxy.sock");
    const proxy = net.createServer((client) => {
      const upstream = net.connect({ path: address.slice("unix:".length) });
      let pending = Buffer.alloc(0);
      let prefaceLeft = 24;
      client.on("data", (chunk: Buffer) => {
        upstream.write(chunk);
        pending = Buffer.concat([pending, chunk]);
        const skip = Math.min(prefaceLeft, pending.length);
        prefaceLeft -= skip;
        pending = pending.subarray(skip);
        while (prefaceLeft === 0 && pending.length >= 9) {
          const len = pending.readUIntBE(0, 3);
          if (pending.length < 9 + len) break;
          frames.push(pending[3]!);
          pending = pending.subarray(9 + len);
        }
      });
      upstream.pipe(client);
      client.on("error", () => upstream.destroy());
      upstream.on("error", () => client.destroy());
      client.on("close", () => upstream.destroy());
    });
    await new Promise<void>((resolve) => proxy.listen(proxyPath, resolve));
    const c = new H2Connection(`unix:${proxyPath}`);
    const RST_STREAM = 0x3;
    try {
      const t = c.client(Test);
      for (let i = 0; i < 5; i++) assert.equal((await t.unary({ digest: `d${i}` })).info?.digest, `d${i}`);
      await assert.rejects(t.unary({ digest: "fail" }), kind("not found"));
      let n = 0;
      for await (const _ of t.serverStream({ digest: "small", size: 3n, offset: 8n })) n++;
      assert.equal(n, 3);
      assert.equal(frames.filter((f) => f === RST_STREAM).length, 0, `frames sent: ${frames.join(",")}`);
      // a reader that stops early still cancels the stream
      for await (const _ of t.serverStream({ digest: "open", size: 2n, offset: 8n })) break;
      await until("the early stop's RST_STREAM", () => frames.includes(RST_STREAM), 5000);
    } finally {
      c.close();
      proxy.close();
    }
  });

  it("names the address when nothing listens, and fails calls as unavailable", async () => {
    const nowhere = `unix:${join(dir, "nobody.sock")}`;
    const c = new H2Connection(nowhere);
    try {
      await assert.rejects(c.ready(2000), new RegExp(`cannot connect to ${nowhere}`));
      await assert.rejects(c.client(Test).unary({ digest: "d" }), kind("unavailable"));
    } finally {
      c.close();
    }
  });
});
