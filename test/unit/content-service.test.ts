import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { BerthError } from "../../src/base/errdefs.js";
import { LocalContentStore } from "../../src/core/content/local.js";
import { MetadataContentStore } from "../../src/core/content/metadata.js";
import { Exchange } from "../../src/core/events/exchange.js";
import { LeaseStore } from "../../src/core/leases/store.js";
import { MetadataDB } from "../../src/core/metadata/db.js";
import { NamespaceStore } from "../../src/core/namespaces/store.js";
import { Content, WriteAction } from "../../src/gen/containerd/services/content/v1/content_pb.js";
import { type Client, Connection } from "../../src/grpc/client.js";
import { H2GrpcServer } from "../../src/grpc/h2server.js";
import { contentService } from "../../src/services/content.js";
import { kind } from "../helpers/assert.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const sha256 = (b: Uint8Array) => `sha256:${createHash("sha256").update(b).digest("hex")}`;
const NS = { namespace: "svc" };

let dir: string;
let db: MetadataDB;
let server: H2GrpcServer;
let conn: Connection;
let client: Client<typeof Content>;
let leases: LeaseStore;

before(async () => {
  dir = await makeTempDir("content-svc");
  db = new MetadataDB(join(dir, "meta.db"));
  const events = new Exchange();
  const namespaces = new NamespaceStore(db, events);
  leases = new LeaseStore(db, namespaces);
  const backend = await new LocalContentStore(join(dir, "content")).init();
  const store = new MetadataContentStore(db, backend, namespaces, events, "shared");
  server = new H2GrpcServer({ maxRecvMessageSize: 16 << 20 });
  server.addService(Content, contentService(store));
  const sock = join(dir, "c.sock");
  await server.listen(sock);
  conn = new Connection(sock);
  client = conn.client(Content);
});

after(async () => {
  conn?.close();
  server.forceShutdown();
  db?.close();
  await removeTempDir(dir);
});

/** One request-response step on a Write stream, like containerd's remote writer. */
function writer(opts: { namespace: string; lease?: string } = NS) {
  const call = client.write(opts);
  const it = call.responses[Symbol.asyncIterator]();
  return {
    async send(req: Parameters<typeof call.send>[0]) {
      await call.send(req);
      const r = await it.next();
      if (r.done) throw new Error("stream ended");
      return r.value;
    },
    /** Half-close; the server must then finish the stream with OK. */
    async end() {
      call.end();
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error("server did not finish the Write stream after the client half-closed")),
          5000,
        );
      });
      try {
        const r = await Promise.race([it.next(), timeout]);
        return r.done;
      } finally {
        clearTimeout(timer);
      }
    },
    call,
  };
}

async function ingest(data: Buffer, ref: string, labels: Record<string, string> = {}) {
  const w = writer();
  const st = await w.send({
    action: WriteAction.STAT,
    ref,
    total: BigInt(data.length),
    expected: sha256(data),
  });
  let off = Number(st.offset);
  const step = 1 << 20;
  while (off < data.length) {
    const r = await w.send({
      action: WriteAction.WRITE,
      offset: BigInt(off),
      data: data.subarray(off, off + step),
    });
    off = Number(r.offset);
  }
  const c = await w.send({
    action: WriteAction.COMMIT,
    offset: BigInt(off),
    total: BigInt(data.length),
    expected: sha256(data),
    labels,
  });
  assert.equal(await w.end(), true);
  return c;
}

describe("Content service", () => {
  it("runs the ingest protocol: STAT, WRITE, COMMIT", async () => {
    const data = randomBytes((3 << 20) + 5);
    const w = writer();
    const st = await w.send({ action: WriteAction.STAT, ref: "proto", total: BigInt(data.length) });
    assert.equal(st.action, WriteAction.STAT);
    assert.equal(st.offset, 0n);
    assert.equal(st.total, BigInt(data.length));
    assert.equal(st.digest, sha256(Buffer.alloc(0)));
    assert.ok(st.startedAt);
    const r1 = await w.send({ action: WriteAction.WRITE, offset: 0n, data: data.subarray(0, 1 << 20) });
    assert.equal(r1.action, WriteAction.WRITE);
    assert.equal(r1.offset, BigInt(1 << 20));
    assert.equal(r1.digest, sha256(data.subarray(0, 1 << 20)));
    // STAT mid-way answers the current offset without writing
    const st2 = await w.send({ action: WriteAction.STAT });
    assert.equal(st2.offset, BigInt(1 << 20));
    const r2 = await w.send({
      action: WriteAction.WRITE,
      offset: BigInt(1 << 20),
      data: data.subarray(1 << 20),
    });
    assert.equal(r2.offset, BigInt(data.length));
    const c = await w.send({
      action: WriteAction.COMMIT,
      offset: BigInt(data.length),
      expected: sha256(data),
      labels: { x: "y" },
    });
    assert.equal(c.action, WriteAction.COMMIT);
    assert.equal(c.digest, sha256(data));
    assert.equal(c.offset, BigInt(data.length));
    assert.equal(await w.end(), true);

    const info = await client.info({ digest: sha256(data) }, NS);
    assert.equal(info.info?.size, BigInt(data.length));
    assert.deepEqual(info.info?.labels, { x: "y" });
  });

  it("reads ranges with offsets counted from the start of the read", async () => {
    const data = randomBytes((2 << 20) + 100);
    const d = (await ingest(data, "read")).digest;
    const read = async (offset: number, size: number) => {
      const parts: Buffer[] = [];
      const offs: bigint[] = [];
      for await (const r of client.read({ digest: d, offset: BigInt(offset), size: BigInt(size) }, NS)) {
        offs.push(r.offset);
        parts.push(Buffer.from(r.data));
      }
      return { data: Buffer.concat(parts), offs };
    };
    const all = await read(0, 0);
    assert.deepEqual(all.data, data);
    assert.deepEqual(all.offs, [0n, BigInt(1 << 20), BigInt(2 << 20)]);
    assert.deepEqual((await read(7, 1000)).data, data.subarray(7, 1007));
    assert.deepEqual((await read(data.length - 5, 1 << 30)).data, data.subarray(data.length - 5));
    assert.deepEqual((await read(data.length, 0)).data.length, 0);
    await assert.rejects(
      read(data.length + 1, 0),
      kind("out of range", `read past object length ${data.length} bytes`),
    );
    await assert.rejects(
      read
        .call(null, 0, 0)
        .then(() => client.read({ digest: "sha256:zz" }, NS)[Symbol.asyncIterator]().next()),
      kind("invalid argument"),
    );
    await assert.rejects(
      (async () => {
        for await (const _ of client.read({ digest: d }, { namespace: "elsewhere" })) {
        }
      })(),
      kind("not found", `content digest ${d}: not found`),
    );
  });

  it("ends the stream with the right codes", async () => {
    const noRef = writer();
    await assert.rejects(
      noRef.send({ action: WriteAction.STAT }),
      kind("invalid argument", "first message must have a reference"),
    );

    const w = writer();
    await w.send({ action: WriteAction.WRITE, ref: "codes", data: Buffer.from("abc") });
    await assert.rejects(
      w.send({ action: WriteAction.WRITE, offset: 10n, data: Buffer.from("x") }),
      kind("out of range", "write @10 must occur at current offset 3"),
    );

    // the ref was released when the stream failed; a commit with a wrong size fails precondition
    const w2 = writer();
    const st = await w2.send({ action: WriteAction.STAT, ref: "codes" });
    assert.equal(st.offset, 3n);
    await assert.rejects(
      w2.send({ action: WriteAction.COMMIT, offset: 3n, total: 4n }),
      kind("failed precondition", /failed size validation: 3 != 4/),
    );

    // a second stream on a ref in use is Unavailable
    const holder = writer();
    await holder.send({ action: WriteAction.STAT, ref: "busy" });
    const other = writer();
    await assert.rejects(
      other.send({ action: WriteAction.STAT, ref: "busy" }),
      kind("unavailable", /locked for/),
    );
    assert.equal(await holder.end(), true);

    await assert.rejects(
      client.info({ digest: "bad" }, NS),
      kind("invalid argument", '"bad" failed validation'),
    );
    await assert.rejects(
      client.info({ digest: sha256(Buffer.from("none")) }, {}),
      kind("failed precondition"),
    );
  });

  it("restarts from zero when a write comes at offset 0", async () => {
    const w = writer();
    await w.send({ action: WriteAction.WRITE, ref: "restart", data: Buffer.from("garbage") });
    const r = await w.send({ action: WriteAction.WRITE, offset: 0n, data: Buffer.from("good") });
    assert.equal(r.offset, 4n);
    const c = await w.send({ action: WriteAction.COMMIT, offset: 4n });
    assert.equal(c.digest, sha256(Buffer.from("good")));
    await w.end();
  });

  it("answers AlreadyExists for known blobs and shares across namespaces", async () => {
    const data = Buffer.from("known blob");
    await ingest(data, "known");
    const w = writer();
    await assert.rejects(
      w.send({ action: WriteAction.STAT, ref: "known2", expected: sha256(data) }),
      kind("already exists", `content ${sha256(data)}: already exists`),
    );
    // another namespace gets the stored blob without sending data (shared policy)
    const w2 = writer({ namespace: "svc-other" });
    const st = await w2.send({
      action: WriteAction.STAT,
      ref: "share",
      total: BigInt(data.length),
      expected: sha256(data),
    });
    assert.equal(st.offset, BigInt(data.length));
    const c = await w2.send({
      action: WriteAction.COMMIT,
      offset: st.offset,
      total: st.total,
      expected: sha256(data),
    });
    assert.equal(c.digest, sha256(data));
    await w2.end();
    const info = await client.info({ digest: sha256(data) }, { namespace: "svc-other" });
    assert.equal(info.info?.size, BigInt(data.length));
  });

  it("lists in batches, updates, deletes, and handles statuses and abort", async () => {
    const digests: string[] = [];
    for (let i = 0; i < 130; i++) {
      const c = await ingest(Buffer.from(`blob ${i}`), `many-${i}`, { batch: "yes" });
      digests.push(c.digest);
    }
    const sizes: number[] = [];
    const seen: string[] = [];
    for await (const r of client.list({ filters: ["labels.batch==yes"] }, NS)) {
      sizes.push(r.info.length);
      for (const i of r.info) seen.push(i.digest);
    }
    assert.deepEqual(sizes, [100, 30]);
    assert.deepEqual(seen.sort(), [...digests].sort());

    const d = digests[0]!;
    const up = await client.update(
      {
        info: { digest: d, labels: { batch: "", extra: "1" } },
        updateMask: { paths: ["labels.batch", "labels.extra"] },
      },
      NS,
    );
    assert.deepEqual(up.info?.labels, { extra: "1" });
    await assert.rejects(
      client.update({ info: { digest: d }, updateMask: { paths: ["digest"] } }, NS),
      kind("invalid argument", /cannot update "digest" field/),
    );
    await client.delete({ digest: d }, NS);
    await assert.rejects(client.delete({ digest: d }, NS), kind("not found"));

    const w = writer();
    await w.send({ action: WriteAction.WRITE, ref: "pending", total: 100n, data: Buffer.from("12345") });
    await w.end();
    const st = await client.status({ ref: "pending" }, NS);
    assert.equal(st.status?.ref, "pending");
    assert.equal(st.status?.offset, 5n);
    assert.equal(st.status?.total, 100n);
    const ls = await client.listStatuses({ filters: ["ref==pending"] }, NS);
    assert.deepEqual(
      ls.statuses.map((s) => s.ref),
      ["pending"],
    );
    await client.abort({ ref: "pending" }, NS);
    await assert.rejects(
      client.status({ ref: "pending" }, NS),
      kind("not found", 'could not get status for ref "pending": reference pending: not found'),
    );
    await assert.rejects(client.abort({ ref: "pending" }, NS), kind("not found"));
  });

  it("releases the ref when the client cancels mid-stream", async () => {
    const w = writer();
    await w.send({ action: WriteAction.WRITE, ref: "cancel", data: Buffer.from("part") });
    w.call.cancel();
    // the server notices the cancel and closes the writer: the ref becomes free
    let ok = false;
    for (let i = 0; i < 50 && !ok; i++) {
      const w2 = writer();
      try {
        const st = await w2.send({ action: WriteAction.STAT, ref: "cancel" });
        assert.equal(st.offset, 4n);
        ok = true;
        await w2.end();
      } catch (err) {
        if (!(err instanceof BerthError && err.kind === "unavailable")) throw err;
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    assert.ok(ok, "ref still locked after cancel");
  });

  it("puts leased ingests and blobs into the lease", async () => {
    leases.create("svc", "lease-1", {});
    const w = writer({ namespace: "svc", lease: "lease-1" });
    await w.send({ action: WriteAction.WRITE, ref: "leased", data: Buffer.from("leased data") });
    assert.deepEqual(
      leases.listResources("svc", "lease-1").map((r) => r.type),
      ["ingests"],
    );
    const c = await w.send({ action: WriteAction.COMMIT, offset: 11n });
    await w.end();
    assert.deepEqual(
      leases.listResources("svc", "lease-1").map((r) => `${r.type}:${r.id}`),
      [`content:${c.digest}`],
    );
  });
});
