import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fromBinary } from "@bufbuild/protobuf";
import { LocalContentStore } from "../../src/core/content/local.js";
import { MetadataContentStore, type SharingPolicy } from "../../src/core/content/metadata.js";
import type { Envelope } from "../../src/core/events/exchange.js";
import { LeaseStore } from "../../src/core/leases/store.js";
import type { MetadataDB } from "../../src/core/metadata/db.js";
import type { NamespaceStore } from "../../src/core/namespaces/store.js";
import { ContentCreateSchema, ContentDeleteSchema } from "../../src/gen/containerd/events/content_pb.js";
import { kind } from "../helpers/assert.js";
import { openTestMetadata } from "../helpers/metadata.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const sha256 = (b: Uint8Array) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

async function collect(it: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of it) parts.push(c);
  return Buffer.concat(parts);
}

let dir: string;
let n = 0;
const cleanups: (() => void)[] = [];

interface Env {
  db: MetadataDB;
  backend: LocalContentStore;
  namespaces: NamespaceStore;
  leases: LeaseStore;
  store: MetadataContentStore;
  events: Envelope[];
}

async function setup(policy: SharingPolicy = "shared"): Promise<Env> {
  const root = join(dir, `env-${n++}`);
  const md = openTestMetadata(root);
  cleanups.push(md.close);
  const { db, exchange, events, namespaces } = md;
  const backend = await new LocalContentStore(join(root, "content")).init();
  const store = new MetadataContentStore(db, backend, namespaces, exchange, policy);
  return { db, backend, namespaces, leases: new LeaseStore(db, namespaces), store, events };
}

/** Write and commit a blob in a namespace through the metadata layer. */
async function put(store: MetadataContentStore, ns: string, data: Buffer, ref = `ref-${n++}`, labels = {}) {
  const w = await store.writer(ns, ref, { total: data.length, expected: sha256(data) });
  if (w.status().offset === 0) await w.write(data);
  return w.commit(data.length, sha256(data), labels);
}

const tick = () => new Promise((r) => setImmediate(r));

before(async () => {
  dir = await makeTempDir("content-metadata");
});
after(async () => {
  for (const c of cleanups) c();
  await removeTempDir(dir);
});

describe("namespaced content store", () => {
  it("shows a blob only in the namespaces that hold it", async () => {
    const { store, events } = await setup();
    const data = randomBytes(70_000);
    const d = await put(store, "ns1", data, "r1", { a: "1" });
    assert.equal(d, sha256(data));
    const info = store.info("ns1", d);
    assert.equal(info.size, data.length);
    assert.deepEqual(info.labels, { a: "1" });
    assert.throws(() => store.info("ns2", d), kind("not found", `content digest ${d}: not found`));
    await assert.rejects(store.readerAt("ns2", d), kind("not found"));
    const ra = await store.readerAt("ns1", d);
    assert.deepEqual(await collect(ra.stream(10, 100)), data.subarray(10, 110));
    await ra.close();
    assert.deepEqual(
      store.list("ns1").map((i) => i.digest),
      [d],
    );
    assert.deepEqual(store.list("ns2"), []);
    await tick();
    const created = events.filter((e) => e.topic === "/content/create");
    assert.equal(created.length, 1);
    assert.equal(created[0]!.namespace, "ns1");
    const ev = fromBinary(ContentCreateSchema, created[0]!.event!.value);
    assert.equal(ev.digest, d);
    assert.equal(ev.size, BigInt(data.length));
    // the namespace came into being with the first resource, silently (as in containerd)
    assert.ok(!events.some((e) => e.topic === "/namespaces/create"));
  });

  it("answers AlreadyExists for a blob already in the namespace", async () => {
    const { store } = await setup();
    const data = Buffer.from("present");
    await put(store, "ns", data);
    await assert.rejects(
      store.writer("ns", "again", { expected: sha256(data) }),
      kind("already exists", `content ${sha256(data)}: already exists`),
    );
    // without an expected digest the data is written and the commit finds it there
    const w = await store.writer("ns", "again");
    await w.write(data);
    await assert.rejects(w.commit(0, ""), kind("already exists"));
    assert.deepEqual(await store.listStatuses("ns"), []);
  });

  it("shares stored blobs across namespaces without data under the shared policy", async () => {
    const { store } = await setup("shared");
    const data = randomBytes(50_000);
    const d = await put(store, "a", data);
    const w = await store.writer("b", "share", { expected: d });
    const st = w.status();
    assert.equal(st.offset, data.length);
    assert.equal(st.total, data.length);
    assert.equal(st.expected, d);
    assert.equal(w.digest(), d);
    await assert.rejects(
      w.commit(data.length + 1, d),
      kind("failed precondition", /"share" failed size validation/),
    );
    assert.equal(await w.commit(data.length, d), d);
    assert.equal(store.info("b", d).size, data.length);
  });

  it("a shared writer that gets data after all copies the blob first", async () => {
    const { store } = await setup("shared");
    const data = randomBytes(30_000);
    const d = await put(store, "a", data);
    // a client that restarts from zero: truncate, then send everything
    const w = await store.writer("b", "resend", { expected: d });
    await w.truncate(0);
    assert.equal(w.status().offset, 0);
    await w.write(data);
    assert.equal(await w.commit(data.length, d), d);
    // a client that appends to the announced offset: nothing to append, the copy is complete
    const w2 = await store.writer("c", "append", { expected: d });
    await w2.write(Buffer.alloc(0));
    assert.equal(await w2.commit(0, d), d);
    assert.equal(store.info("c", d).size, data.length);
  });

  it("makes a namespace send the data again under the isolated policy", async () => {
    const { store, namespaces } = await setup("isolated");
    const data = randomBytes(40_000);
    const d = await put(store, "a", data);
    const w = await store.writer("b", "iso", { expected: d });
    assert.equal(w.status().offset, 0);
    await w.write(data.subarray(0, 100));
    await assert.rejects(w.commit(0, d), kind("failed precondition", /unexpected commit digest/));
    const w2 = await store.writer("b", "iso", { expected: d });
    assert.equal(w2.status().offset, 100);
    await w2.write(data.subarray(100));
    assert.equal(await w2.commit(data.length, d), d);
    assert.equal(store.info("b", d).size, data.length);

    // a namespace labelled shareable lends its blobs even under the isolated policy
    const other = randomBytes(1000);
    const od = await put(store, "lib", other);
    namespaces.update("lib", { "containerd.io/namespace.shareable": "true" }, ["labels"], "lib");
    const w3 = await store.writer("b", "from-lib", { expected: od });
    assert.equal(w3.status().offset, other.length);
    assert.equal(await w3.commit(0, od), od);
  });

  it("updates labels by field path", async () => {
    const { store } = await setup();
    const d = await put(store, "ns", Buffer.from("labels"), "l", { keep: "k", drop: "d" });
    const before = store.info("ns", d);
    await new Promise((r) => setTimeout(r, 5));
    let info = store.update("ns", { digest: d, labels: { new: "n", drop: "" } }, [
      "labels.new",
      "labels.drop",
    ]);
    assert.deepEqual(info.labels, { keep: "k", new: "n" });
    assert.ok(info.updatedAt > before.updatedAt);
    assert.deepEqual(store.info("ns", d).labels, { keep: "k", new: "n" });
    info = store.update("ns", { digest: d, labels: { only: "o" } }, ["labels"]);
    assert.deepEqual(info.labels, { only: "o" });
    info = store.update("ns", { digest: d, labels: { none: "x" } }, []);
    assert.deepEqual(info.labels, { none: "x" });
    assert.throws(
      () => store.update("ns", { digest: d, labels: {} }, ["size"]),
      kind("invalid argument", `cannot update "size" field on content info "${d}": invalid argument`),
    );
    assert.throws(
      () => store.update("ns", { digest: d, labels: { k: "v".repeat(5000) } }, ["labels.k"]),
      kind("invalid argument", /^info\.Labels: label key and value length \(5001 bytes\)/),
    );
    assert.throws(() => store.update("other", { digest: d, labels: {} }, []), kind("not found"));
  });

  it("filters lists on digest and labels", async () => {
    const { store } = await setup();
    const d1 = await put(store, "ns", Buffer.from("one"), "f1", { "app.kind": "x", tier: "a" });
    const d2 = await put(store, "ns", Buffer.from("two"), "f2", { tier: "b" });
    const digests = (f: string[]) =>
      store
        .list("ns", f)
        .map((i) => i.digest)
        .sort();
    assert.deepEqual(digests([]), [d1, d2].sort());
    assert.deepEqual(digests([`digest==${d1}`]), [d1]);
    assert.deepEqual(digests(["labels.tier==b"]), [d2]);
    assert.deepEqual(digests(['labels."app.kind"']), [d1]);
    assert.deepEqual(digests(["labels.tier==a", "labels.tier==b"]), [d1, d2].sort());
    assert.deepEqual(digests(["size==3"]), []);
  });

  it("deletes from the namespace, leaves the file, and publishes /content/delete", async () => {
    const { store, backend, events } = await setup();
    const data = Buffer.from("delete me");
    const d = await put(store, "a", data);
    await put(store, "b", data);
    store.delete("a", d);
    assert.throws(() => store.info("a", d), kind("not found"));
    assert.equal(store.info("b", d).size, data.length);
    assert.ok(existsSync(backend.blobPath(d)));
    assert.throws(() => store.delete("a", d), kind("not found", `content digest ${d}: not found`));
    await tick();
    const del = events.find((e) => e.topic === "/content/delete");
    assert.ok(del);
    assert.equal(del.namespace, "a");
    assert.equal(fromBinary(ContentDeleteSchema, del.event!.value).digest, d);
  });

  it("keeps ingests per namespace, with status, list and abort", async () => {
    const { store, backend } = await setup();
    const wa = await store.writer("a", "same-ref", { total: 10 });
    await wa.write(Buffer.from("12345"));
    const wb = await store.writer("b", "same-ref");
    await wb.write(Buffer.from("xy"));
    // the same (namespace, ref) is locked while in use
    await assert.rejects(
      store.writer("a", "same-ref"),
      kind("unavailable", /^ref a\/1\/same-ref locked for /),
    );
    await wa.close();
    await wb.close();
    const sa = await store.status("a", "same-ref");
    assert.equal(sa.ref, "same-ref");
    assert.equal(sa.offset, 5);
    assert.equal(sa.total, 10);
    assert.equal((await store.status("b", "same-ref")).offset, 2);
    await assert.rejects(store.status("c", "same-ref"), kind("not found", "reference same-ref: not found"));
    assert.deepEqual(
      (await store.listStatuses("a")).map((s) => [s.ref, s.offset]),
      [["same-ref", 5]],
    );
    assert.deepEqual(await store.listStatuses("a", ["ref==other"]), []);
    assert.equal((await backend.listStatuses()).length, 2);

    await store.abort("a", "same-ref");
    await assert.rejects(store.abort("a", "same-ref"), kind("not found", "reference same-ref: not found"));
    assert.deepEqual(await store.listStatuses("a"), []);
    assert.equal((await backend.listStatuses()).length, 1);
    // resuming in b still works
    const wb2 = await store.writer("b", "same-ref");
    assert.equal(wb2.status().offset, 2);
    await wb2.write(Buffer.from("z"));
    assert.equal(await wb2.commit(3, sha256(Buffer.from("xyz"))), sha256(Buffer.from("xyz")));
    assert.deepEqual(await store.listStatuses("b"), []);
  });

  it("records ingests and blobs in the request's lease", async () => {
    const { store, leases } = await setup();
    leases.create("ns", "L", {});
    const resources = () => leases.listResources("ns", "L").map((r) => `${r.type}:${r.id}`);
    const data = Buffer.from("leased");
    const w = await store.writer("ns", "lr", { lease: "L" });
    assert.deepEqual(resources(), ["ingests:lr"]);
    await w.write(data);
    const d = await w.commit(0, "");
    assert.deepEqual(resources(), [`content:${d}`]);
    // an existing blob asked for again is leased too
    leases.create("ns", "M", {});
    await assert.rejects(store.writer("ns", "again", { expected: d, lease: "M" }), kind("already exists"));
    assert.deepEqual(
      leases.listResources("ns", "M").map((r) => r.id),
      [d],
    );
    store.delete("ns", d, "L");
    assert.deepEqual(resources(), []);
    const w2 = await store.writer("ns", "abort-me", { lease: "L" });
    await w2.close();
    await store.abort("ns", "abort-me", "L");
    assert.deepEqual(resources(), []);
    await assert.rejects(
      store.writer("ns", "x", { lease: "nope" }),
      kind("not found", "lease does not exist: not found"),
    );
    assert.deepEqual(await store.listStatuses("ns"), []);
  });

  it("rejects oversized labels on commit and needs a ref", async () => {
    const { store } = await setup();
    await assert.rejects(
      store.writer("ns", ""),
      kind("invalid argument", "ref must not be empty: invalid argument"),
    );
    const w = await store.writer("ns", "big-label");
    await w.write(Buffer.from("x"));
    await assert.rejects(w.commit(0, "", { k: "v".repeat(4096) }), kind("invalid argument", /info\.Labels/));
    assert.equal((await store.status("ns", "big-label")).offset, 1);
  });

  it("sweeps blobs and ingests no namespace holds, and reports mutations", async () => {
    const { store, backend, db } = await setup();
    const dirty: boolean[] = [];
    db.onMutation((d) => dirty.push(d));
    const gone = Buffer.from("nobody holds me");
    const kept = Buffer.from("b holds me");
    const expected = Buffer.from("a shared ingest expects me");
    const dg = await put(store, "a", gone);
    const dk = await put(store, "b", kept);
    const de = await put(store, "c", expected);
    store.delete("a", dg);
    assert.equal(dirty.at(-1), true);
    // a shared ingest in d expects de; then c lets go of it
    const shared = await store.writer("d", "wants-e", { expected: de });
    store.delete("c", de);
    // an ingest in use, and an orphan backend ingest no namespace knows
    const active = await store.writer("a", "active");
    await active.write(Buffer.from("in progress"));
    const orphan = await backend.writer("x/1/orphan");
    await orphan.close();

    const removed = await store.sweep();
    assert.equal(removed, 2);
    await assert.rejects(backend.info(dg), kind("not found"));
    assert.equal((await backend.info(dk)).size, kept.length);
    assert.equal((await backend.info(de)).size, expected.length);
    assert.deepEqual((await backend.listStatuses()).map((s) => s.ref).sort(), ["a/1/active"]);
    assert.equal(await shared.commit(0, de), de);
    assert.equal(await active.commit(0, ""), sha256(Buffer.from("in progress")));
    assert.ok(dirty.includes(false));
  });

  it("sweeps only the named blobs when told which rows went, and ingests as ever", async () => {
    const { store, backend, db } = await setup();
    const gone = Buffer.from("named, and no row is left");
    const other = Buffer.from("named, but another namespace holds me");
    const expected = Buffer.from("named, and a shared ingest expects me");
    const unnamed = Buffer.from("no row holds me, but I was not named");
    const dg = await put(store, "a", gone);
    const dho = await put(store, "a", other);
    await put(store, "b", other);
    const de = await put(store, "c", expected);
    const du = await put(store, "d", unnamed);
    store.delete("a", dg);
    store.delete("a", dho);
    store.delete("c", de);
    const shared = await store.writer("e", "wants-expected", { expected: de });
    db.sql.prepare("DELETE FROM content WHERE namespace = 'd'").run();
    const orphan = await backend.writer("x/1/orphan");
    await orphan.close();
    // a named digest whose file is already gone is not an error
    const vanished = sha256(Buffer.from("never stored"));

    const removed = await store.sweep(new Set([dg, dho, de, vanished]));
    assert.equal(removed, 2, "the named garbage blob and the orphan ingest");
    await assert.rejects(backend.info(dg), kind("not found"));
    assert.equal((await backend.info(dho)).size, other.length);
    assert.equal((await backend.info(de)).size, expected.length);
    assert.equal((await backend.info(du)).size, unnamed.length, "not looked at");
    assert.deepEqual(await backend.listStatuses(), []);
    assert.equal(await shared.commit(0, de), de);
    // the whole sweep still finds the unnamed one
    assert.equal(await store.sweep(), 1);
    await assert.rejects(backend.info(du), kind("not found"));
  });

  it("names a blob whose row failed to commit for the next sweep", async () => {
    const { store, backend, db } = await setup();
    const data = Buffer.from("stored, but its row never was");
    const w = await store.writer("ns", "row-fails");
    await w.write(data);
    db.takeDirtyBackends();
    db.sql.exec(
      "CREATE TRIGGER no_rows BEFORE INSERT ON content BEGIN SELECT RAISE(ABORT, 'row refused'); END",
    );
    await assert.rejects(w.commit(data.length, sha256(data)), /row refused/);
    db.sql.exec("DROP TRIGGER no_rows");
    const dirty = db.takeDirtyBackends().get("content");
    assert.ok(dirty instanceof Set && dirty.has(sha256(data)), "the blob is named");
    assert.equal((await backend.info(sha256(data))).size, data.length);
    assert.equal(await store.sweep(dirty), 1);
    await assert.rejects(backend.info(sha256(data)), kind("not found"));
  });

  it("keeps what each blob's labels name in content_refs as rows are written, updated and deleted", async () => {
    const { store, db } = await setup();
    const refs = () =>
      db.sql.prepare("SELECT namespace, digest, target FROM content_refs ORDER BY 1, 2, 3").raw().all();
    const x = (c: string) => `sha256:${c.repeat(64)}`;
    const m = await put(store, "ns", Buffer.from("a manifest"), undefined, {
      "containerd.io/gc.ref.content.config": x("1"),
      "containerd.io/gc.ref.content.l.0": x("2"),
      "containerd.io/gc.ref.snapshot.overlayfs": "names a snapshot, not a blob",
      note: x("3"),
    });
    const layer = await put(store, "ns", Buffer.from("a layer"), undefined, {
      "containerd.io/uncompressed": x("4"),
    });
    assert.deepEqual(refs(), [
      ["ns", m, x("1")],
      ["ns", m, x("2")],
    ]);
    // the same blob in another namespace names in that namespace
    await put(store, "other", Buffer.from("a manifest"), undefined, {
      "containerd.io/gc.ref.content": x("5"),
    });
    assert.deepEqual(refs().at(-1), ["other", m, x("5")]);
    store.update("ns", { digest: m, labels: { "containerd.io/gc.ref.content/m": x("6") } }, ["labels"]);
    assert.deepEqual(refs(), [
      ["ns", m, x("6")],
      ["other", m, x("5")],
    ]);
    // a plain blob given a reference, then a naming one made plain
    store.update("ns", { digest: layer, labels: { "containerd.io/gc.ref.content.c": x("7") } }, ["labels"]);
    store.update("ns", { digest: m, labels: {} }, ["labels"]);
    assert.deepEqual(refs(), [
      ["ns", layer, x("7")],
      ["other", m, x("5")],
    ]);
    store.delete("ns", layer);
    store.delete("other", m);
    assert.deepEqual(refs(), []);
  });

  it("keeps a sweep out while a commit is between the backend and the row", async () => {
    const { store, backend } = await setup();
    const data = randomBytes(4 << 20);
    const w = await store.writer("ns", "racing");
    await w.write(data);
    const commit = w.commit(data.length, sha256(data));
    const sweep = store.sweep();
    assert.equal(await commit, sha256(data));
    assert.equal(await sweep, 0);
    assert.equal((await backend.info(sha256(data))).size, data.length);
    assert.equal(store.info("ns", sha256(data)).size, data.length);
  });
});
