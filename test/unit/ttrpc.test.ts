import assert from "node:assert/strict";
import { connect, createServer, type Socket } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { errNotFound } from "../../src/base/errdefs.js";
import { Task } from "../../src/gen/containerd/runtime/v2/task/shim_pb.js";
import { Content } from "../../src/gen/containerd/services/content/v1/content_pb.js";
import { RequestSchema, ResponseSchema } from "../../src/gen/ttrpc/request_pb.js";
import { TtrpcClient } from "../../src/ttrpc/client.js";
import { TtrpcServer } from "../../src/ttrpc/server.js";
import {
  encodeFrame,
  Flag,
  type Frame,
  FrameReader,
  MAX_MESSAGE_LENGTH,
  MessageType,
  NAMESPACE_KEY,
} from "../../src/ttrpc/wire.js";
import { kind } from "../helpers/assert.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A raw peer: sends bytes, collects the frames that come back. */
async function rawPeer(path: string) {
  const sock: Socket = connect(path);
  await new Promise<void>((r) => sock.once("connect", () => r()));
  const reader = new FrameReader();
  const frames: Frame[] = [];
  sock.on("data", (c: Buffer) => {
    for (const ev of reader.push(c)) if ("frame" in ev) frames.push(ev.frame);
  });
  const waitFrames = async (n: number) => {
    for (let i = 0; i < 200 && frames.length < n; i++) await sleep(10);
    assert.ok(frames.length >= n, `got ${frames.length} frames, wanted ${n}`);
  };
  return { sock, frames, waitFrames };
}

describe("ttrpc wire", () => {
  it("frames with a 10-byte big-endian header", () => {
    const f = encodeFrame(0x01020305, MessageType.Data, Flag.RemoteClosed, new Uint8Array([9, 8]));
    assert.deepEqual([...f], [0, 0, 0, 2, 1, 2, 3, 5, 3, 1, 9, 8]);
    assert.throws(
      () => encodeFrame(1, 1, 0, new Uint8Array(MAX_MESSAGE_LENGTH + 1)),
      kind("resource exhausted"),
    );
  });

  it("reassembles frames split anywhere and skips oversized ones without buffering them", () => {
    const a = encodeFrame(1, MessageType.Request, 0, new Uint8Array([1, 2, 3]));
    const b = encodeFrame(3, MessageType.Request, 0, new Uint8Array());
    const all = Buffer.concat([a, b]);
    for (let cut = 0; cut <= all.length; cut++) {
      const r = new FrameReader();
      const evs = [...r.push(all.subarray(0, cut)), ...r.push(all.subarray(cut))];
      assert.deepEqual(
        evs.map((e) => ("frame" in e ? [e.frame.streamId, [...e.frame.data]] : e)),
        [
          [1, [1, 2, 3]],
          [3, []],
        ],
      );
    }
    const r = new FrameReader();
    const head = Buffer.alloc(10);
    head.writeUInt32BE(MAX_MESSAGE_LENGTH + 5, 0);
    head.writeUInt32BE(7, 4);
    head[8] = 1;
    const evs = [
      ...r.push(head),
      ...r.push(Buffer.alloc(MAX_MESSAGE_LENGTH)),
      ...r.push(Buffer.concat([Buffer.alloc(5), a])),
    ];
    assert.equal(evs.length, 2);
    assert.deepEqual(evs[0], { oversized: { streamId: 7, type: 1, length: MAX_MESSAGE_LENGTH + 5 } });
    assert.ok("frame" in evs[1]! && evs[1].frame.streamId === 1);
  });
});

describe("ttrpc client and server", () => {
  let dir: string;
  let server: TtrpcServer;
  let path: string;
  const seen: { ns?: string; md: Record<string, string[]>; deadline?: number }[] = [];
  let aborted = 0;

  before(async () => {
    dir = await makeTempDir("ttrpc");
    path = join(dir, "t.sock");
    server = new TtrpcServer();
    server.register(Content, {
      async info(req, ctx) {
        seen.push({
          ns: ctx.metadata.has(NAMESPACE_KEY) ? ctx.namespace() : undefined,
          md: Object.fromEntries([...ctx.metadata].map(([k, v]) => [k, [...v]])),
          deadline: ctx.deadline,
        });
        if (req.digest === "missing") throw errNotFound(`content digest ${req.digest}`);
        if (req.digest === "boom") throw new Error("plain failure");
        if (req.digest.startsWith("slow-")) await sleep(Number(req.digest.slice(5)));
        if (req.digest === "hang") {
          await new Promise<void>((r) => ctx.signal.addEventListener("abort", () => r(), { once: true }));
          aborted++;
        }
        if (req.digest === "huge") return { info: { digest: "x".repeat(MAX_MESSAGE_LENGTH + 1) } };
        return { info: { digest: req.digest, size: BigInt(req.digest.length) } };
      },
      async *read(req) {
        if (req.digest === "bad") throw errNotFound("blob");
        for (let i = 0n; i < req.size; i++) yield { offset: i, data: new Uint8Array(Number(i)) };
      },
      async *write(reqs) {
        let total = 0n;
        for await (const r of reqs) {
          total += BigInt(r.data.length);
          yield { offset: total, digest: r.ref };
        }
        yield { total };
      },
    });
    server.register(Task, {
      connect(req) {
        return { shimPid: 42, taskPid: 43, version: `v-${req.id}` };
      },
    });
    await server.listen(path);
  });

  after(async () => {
    await server.close();
    await removeTempDir(dir);
  });

  it("round-trips unary calls with metadata, namespace and timeout", async () => {
    const c = await TtrpcClient.connect(`unix://${path}`);
    try {
      const task = c.service(Task);
      const r = await task.connect({ id: "abc" });
      assert.deepEqual([r.shimPid, r.taskPid, r.version], [42, 43, "v-abc"]);
      const content = c.service(Content);
      const before = Date.now();
      const info = await content.info(
        { digest: "sha256:x" },
        { namespace: "ns1", timeoutMs: 5000, metadata: { a: ["1", "2"], b: "3" } },
      );
      assert.equal(info.info?.digest, "sha256:x");
      assert.equal(info.info?.size, 8n);
      const s = seen.at(-1)!;
      assert.equal(s.ns, "ns1");
      assert.deepEqual(s.md, { [NAMESPACE_KEY]: ["ns1"], a: ["1", "2"], b: ["3"] });
      assert.ok(s.deadline! >= before + 4900 && s.deadline! <= Date.now() + 5000);
    } finally {
      c.close();
    }
  });

  it("maps errors through errdefs, and answers unknown services and methods Unimplemented", async () => {
    const c = await TtrpcClient.connect(path);
    try {
      const content = c.service(Content);
      await assert.rejects(
        content.info({ digest: "missing" }),
        kind("not found", "content digest missing: not found"),
      );
      await assert.rejects(content.info({ digest: "boom" }), kind("unknown", "plain failure"));
      await assert.rejects(content.delete({ digest: "x" }), kind("not implemented", "method Delete"));
      const { Namespaces } = await import("../../src/gen/containerd/services/namespaces/v1/namespace_pb.js");
      await assert.rejects(
        c.service(Namespaces).get({ name: "x" }),
        kind("not implemented", "service containerd.services.namespaces.v1.Namespaces"),
      );
      // still usable after errors
      assert.equal((await content.info({ digest: "ok" })).info?.digest, "ok");
    } finally {
      c.close();
    }
  });

  it("runs many calls in flight on one connection, answers out of order to the right caller", async () => {
    const c = await TtrpcClient.connect(path);
    try {
      const content = c.service(Content);
      const n = 300;
      const calls = Array.from({ length: n }, (_, i) =>
        content.info({ digest: `slow-${(i * 7919) % 40}` }).then((r) => r.info?.digest),
      );
      const got = await Promise.all(calls);
      assert.deepEqual(
        got,
        Array.from({ length: n }, (_, i) => `slow-${(i * 7919) % 40}`),
      );
    } finally {
      c.close();
    }
  });

  it("sends odd, increasing stream ids and the request fields containerd's ttrpc reads", async () => {
    const frames: Frame[] = [];
    const rawPath = join(dir, "raw.sock");
    const raw = createServer((s) => {
      const r = new FrameReader();
      s.on("data", (chunk: Buffer) => {
        for (const ev of r.push(chunk)) {
          if (!("frame" in ev)) continue;
          frames.push(ev.frame);
          const reply = toBinary(
            ResponseSchema,
            create(ResponseSchema, {
              status: { code: 0 },
              payload: toBinary(
                Task.method.connect.output,
                create(Task.method.connect.output, { shimPid: 1 }),
              ),
            }),
          );
          s.write(encodeFrame(ev.frame.streamId, MessageType.Response, 0, reply));
        }
      });
    });
    await new Promise<void>((r) => raw.listen(rawPath, () => r()));
    const c = await TtrpcClient.connect(rawPath);
    try {
      const task = c.service(Task);
      await task.connect({ id: "a" }, { namespace: "default", timeoutMs: 1500 });
      await Promise.all([task.connect({ id: "b" }), task.connect({ id: "c" })]);
      assert.deepEqual(
        frames.map((f) => [f.streamId, f.type, f.flags]),
        [
          [1, 1, 0],
          [3, 1, 0],
          [5, 1, 0],
        ],
      );
      const req = fromBinary(RequestSchema, frames[0]!.data);
      assert.equal(req.service, "containerd.task.v2.Task");
      assert.equal(req.method, "Connect");
      assert.equal(req.timeoutNano, 1_500_000_000n);
      assert.deepEqual(
        req.metadata.map((kv) => [kv.key, kv.value]),
        [["containerd-namespace-ttrpc", "default"]],
      );
      assert.equal(fromBinary(Task.method.connect.input, req.payload).id, "a");
    } finally {
      c.close();
      await new Promise<void>((r) => raw.close(() => r()));
    }
  });

  it("times out locally and aborts the handler through its deadline", async () => {
    const c = await TtrpcClient.connect(path);
    try {
      const content = c.service(Content);
      const before = aborted;
      const t0 = Date.now();
      await assert.rejects(content.info({ digest: "hang" }, { timeoutMs: 100 }), kind("deadline exceeded"));
      assert.ok(Date.now() - t0 < 1000);
      for (let i = 0; i < 100 && aborted === before; i++) await sleep(10);
      assert.equal(aborted, before + 1, "the server side saw its deadline pass");
      // a cancelled call via signal
      const ac = new AbortController();
      const p = content.info({ digest: "slow-200" }, { signal: ac.signal });
      ac.abort();
      await assert.rejects(p, kind("canceled"));
      assert.equal((await content.info({ digest: "after" })).info?.digest, "after");
    } finally {
      c.close();
    }
  });

  it("rejects messages over 4 MiB both ways and keeps the connection", async () => {
    const c = await TtrpcClient.connect(path);
    try {
      const content = c.service(Content);
      await assert.rejects(
        content.info({ digest: "y".repeat(MAX_MESSAGE_LENGTH + 10) }),
        kind("resource exhausted"),
        "the client refuses to send it",
      );
      await assert.rejects(
        content.info({ digest: "huge" }),
        (err: unknown) =>
          kind("resource exhausted")(err) &&
          /exceed maximum message size of 4194304/.test((err as Error).message),
        "the server refuses to send it and says so",
      );
      assert.equal((await content.info({ digest: "still" })).info?.digest, "still");
    } finally {
      c.close();
    }
    // a raw oversized frame: the server discards it and answers that stream with the status
    const peer = await rawPeer(path);
    try {
      const head = Buffer.alloc(10);
      head.writeUInt32BE(MAX_MESSAGE_LENGTH + 1, 0);
      head.writeUInt32BE(1, 4);
      head[8] = MessageType.Request;
      peer.sock.write(head);
      peer.sock.write(Buffer.alloc(MAX_MESSAGE_LENGTH + 1));
      // then an even id, which the protocol refuses
      peer.sock.write(
        encodeFrame(
          2,
          MessageType.Request,
          0,
          toBinary(RequestSchema, create(RequestSchema, { service: "x", method: "y" })),
        ),
      );
      await peer.waitFrames(2);
      const st = peer.frames.map((f) => [f.streamId, fromBinary(ResponseSchema, f.data).status]);
      assert.equal(st[0]![0], 1);
      assert.deepEqual(
        { code: (st[0]![1] as { code: number }).code, message: (st[0]![1] as { message: string }).message },
        {
          code: 8,
          message: `message length ${MAX_MESSAGE_LENGTH + 1} exceed maximum message size of 4194304`,
        },
      );
      assert.equal(st[1]![0], 2);
      assert.equal(
        (st[1]![1] as { message: string }).message,
        "StreamID must be odd for client initiated streams",
      );
    } finally {
      peer.sock.destroy();
    }
  });

  it("streams: server-streaming ends with a remote-closed no-data message; bidi both ways", async () => {
    const c = await TtrpcClient.connect(path);
    try {
      const content = c.service(Content);
      const got: bigint[] = [];
      for await (const m of content.read({ digest: "d", size: 5n })) got.push(m.offset);
      assert.deepEqual(got, [0n, 1n, 2n, 3n, 4n]);
      const empty: unknown[] = [];
      for await (const m of content.read({ digest: "d", size: 0n })) empty.push(m);
      assert.deepEqual(empty, []);
      await assert.rejects(
        (async () => {
          for await (const _ of content.read({ digest: "bad", size: 1n })) {
            // nothing
          }
        })(),
        kind("not found", "blob: not found"),
      );
      const w = content.write();
      const out: string[] = [];
      const reading = (async () => {
        for await (const m of w.responses) out.push(`${m.offset}/${m.total}/${m.digest}`);
      })();
      w.send({ ref: "a", data: new Uint8Array(3) });
      w.send({ ref: "b", data: new Uint8Array(4) });
      w.closeSend();
      await reading;
      assert.deepEqual(out, ["3/0/a", "7/0/b", "0/7/"]);
    } finally {
      c.close();
    }
    // what a streaming peer sees on the wire
    const peer = await rawPeer(path);
    try {
      const req = toBinary(
        RequestSchema,
        create(RequestSchema, {
          service: "containerd.services.content.v1.Content",
          method: "Read",
          payload: toBinary(Content.method.read.input, create(Content.method.read.input, { size: 2n })),
        }),
      );
      peer.sock.write(encodeFrame(1, MessageType.Request, Flag.RemoteClosed, req));
      await peer.waitFrames(3);
      assert.deepEqual(
        peer.frames.map((f) => [f.streamId, f.type, f.flags, f.data.length > 0]),
        [
          [1, MessageType.Data, 0, false], // offset 0, empty data: an empty message is still data
          [1, MessageType.Data, 0, true],
          [1, MessageType.Data, Flag.RemoteClosed | Flag.NoData, false],
        ],
      );
    } finally {
      peer.sock.destroy();
    }
  });

  it("tells the client when the connection closes and fails what is in flight", async () => {
    const local = new TtrpcServer();
    local.register(Content, {
      info: () => new Promise(() => {}),
    });
    const p = join(dir, "closing.sock");
    await local.listen(p);
    const c = await TtrpcClient.connect(p);
    const closed = new Promise<void>((r) => c.once("closed", () => r()));
    const pending = c.service(Content).info({ digest: "x" });
    await sleep(50);
    await local.close();
    await closed;
    assert.equal(c.closed, true);
    await assert.rejects(pending, kind("unavailable", "ttrpc: closed"));
    await assert.rejects(c.service(Content).info({ digest: "y" }), kind("unavailable"));
  });
});
