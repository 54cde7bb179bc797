// Issue 14 defects 2 and 3: content found "already there" under a lease must be held by that
// lease, whoever finds it (a writer opened for its digest, a Write stream announcing the digest
// late, a pull reading a blob it finds in place of fetching it). The blob here exists but nothing
// references it (as after `images rm`, or after a pull that crashed), a new lease meets it, and a
// collection runs before anything else references it: the blob must still be there.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { LocalContentStore } from "../../src/core/content/local.js";
import { MetadataContentStore } from "../../src/core/content/metadata.js";
import { MetadataCollector } from "../../src/core/gc/collector.js";
import { LeaseStore } from "../../src/core/leases/store.js";
import { Content, WriteAction } from "../../src/gen/containerd/services/content/v1/content_pb.js";
import { Connection } from "../../src/grpc/client.js";
import { H2GrpcServer } from "../../src/grpc/h2server.js";
import { contentService } from "../../src/services/content.js";
import { kind } from "../helpers/assert.js";
import { openTestMetadata } from "../helpers/metadata.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const sha256 = (b: Uint8Array) => `sha256:${createHash("sha256").update(b).digest("hex")}`;
const NS = "hold";

let dir: string;
let n = 0;
const cleanups: (() => void | Promise<void>)[] = [];

async function setup() {
  const root = join(dir, `env-${n++}`);
  const md = openTestMetadata(root);
  cleanups.push(md.close);
  const backend = await new LocalContentStore(join(root, "content")).init();
  const store = new MetadataContentStore(md.db, backend, md.namespaces, md.exchange, "shared");
  const gc = new MetadataCollector(md.db);
  gc.addSweeper(store);
  return { store, backend, leases: new LeaseStore(md.db, md.namespaces), gc };
}

/** A committed blob no image, label or lease references: what `images rm` leaves for GC. */
async function unreferenced(store: MetadataContentStore): Promise<{ data: Buffer; dgst: string }> {
  const data = randomBytes(4096);
  const dgst = sha256(data);
  const w = await store.writer(NS, `first-${n++}`, { total: data.length, expected: dgst });
  await w.write(data);
  await w.commit(data.length, dgst);
  return { data, dgst };
}

/** Whether the blob survived: its row in the namespace and its file in the backend. */
async function present(env: Awaited<ReturnType<typeof setup>>, dgst: string): Promise<boolean> {
  const row = (() => {
    try {
      env.store.info(NS, dgst);
      return true;
    } catch {
      return false;
    }
  })();
  const file = existsSync(env.backend.blobPath(dgst));
  assert.equal(row, file, "row and file disagree");
  return row;
}

before(async () => {
  dir = await makeTempDir("content-lease");
});
after(async () => {
  for (const c of cleanups.reverse()) await c();
  await removeTempDir(dir);
});

describe("content store: already exists under a lease means held by it", () => {
  it("control: an unreferenced blob is collected", async () => {
    const env = await setup();
    const { dgst } = await unreferenced(env.store);
    await env.gc.collect();
    assert.equal(await present(env, dgst), false);
  });

  it("a writer opened for an existing digest under a lease (AlreadyExists) holds the blob", async () => {
    const env = await setup();
    const { data, dgst } = await unreferenced(env.store);
    env.leases.create(NS, "new-lease", {});
    await assert.rejects(
      env.store.writer(NS, "again", { total: data.length, expected: dgst, lease: "new-lease" }),
      kind("already exists"),
    );
    await env.gc.collect();
    assert.equal(await present(env, dgst), true);
    assert.deepEqual(
      env.leases.listResources(NS, "new-lease").map((r) => `${r.type} ${r.id}`),
      [`content ${dgst}`],
    );
    // once the lease goes, nothing holds it any more
    await env.leases.delete(NS, "new-lease", false);
    await env.gc.collect();
    assert.equal(await present(env, dgst), false);
  });

  it("hold() adds found content to the lease and reports missing content", async () => {
    const env = await setup();
    const { dgst } = await unreferenced(env.store);
    env.leases.create(NS, "reader", {});
    assert.equal(env.store.hold(NS, dgst, "reader"), true);
    assert.equal(env.store.hold(NS, sha256(Buffer.from("absent")), "reader"), false);
    await env.gc.collect();
    assert.equal(await present(env, dgst), true);
    // a lease that does not exist is an error, not a silent miss
    assert.throws(() => env.store.hold(NS, dgst, "no-such-lease"), kind("not found"));
  });

  it("a commit that finds the blob committed meanwhile (AlreadyExists) holds it", async () => {
    const env = await setup();
    const data = randomBytes(4096);
    const dgst = sha256(data);
    env.leases.create(NS, "racer", {});
    // opened before the blob exists: the writer needs the data
    const w = await env.store.writer(NS, "racing", { total: data.length, expected: dgst, lease: "racer" });
    await w.write(data);
    await unreferencedCopy(env.store, data);
    await assert.rejects(w.commit(data.length, dgst), kind("already exists"));
    await env.gc.collect();
    assert.equal(await present(env, dgst), true);
  });

  it("a Write stream naming an existing digest only at commit holds it by the request's lease", async () => {
    const env = await setup();
    const { data, dgst } = await unreferenced(env.store);
    env.leases.create(NS, "svc-lease", {});
    const server = new H2GrpcServer({ maxRecvMessageSize: 16 << 20 });
    server.addService(Content, contentService(env.store));
    const sock = join(dir, `c-${n++}.sock`);
    await server.listen(sock);
    const conn = new Connection(sock);
    try {
      const call = conn.client(Content).write({ namespace: NS, lease: "svc-lease" });
      const it = call.responses[Symbol.asyncIterator]();
      // STAT without a digest opens an ingest; the digest comes with the commit
      await call.send({ action: WriteAction.STAT, ref: "late", total: BigInt(data.length) });
      await it.next();
      await call.send({
        action: WriteAction.COMMIT,
        ref: "late",
        offset: 0n,
        total: BigInt(data.length),
        expected: dgst,
      });
      await assert.rejects(it.next(), kind("already exists"));
    } finally {
      conn.close();
      server.forceShutdown();
    }
    await env.gc.collect();
    assert.equal(await present(env, dgst), true);
  });
});

async function unreferencedCopy(store: MetadataContentStore, data: Buffer): Promise<void> {
  const w = await store.writer(NS, `other-${n++}`, { total: data.length, expected: sha256(data) });
  await w.write(data);
  await w.commit(data.length, sha256(data));
}
