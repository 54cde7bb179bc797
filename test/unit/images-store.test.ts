import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fromBinary } from "@bufbuild/protobuf";
import Database from "better-sqlite3";
import { LocalContentStore } from "../../src/core/content/local.js";
import { MetadataContentStore } from "../../src/core/content/metadata.js";
import { Exchange } from "../../src/core/events/exchange.js";
import { MetadataCollector } from "../../src/core/gc/collector.js";
import { ImageStore } from "../../src/core/images/store.js";
import { MetadataDB } from "../../src/core/metadata/db.js";
import { NamespaceStore } from "../../src/core/namespaces/store.js";
import { ImageCreateSchema, ImageUpdateSchema } from "../../src/gen/containerd/events/image_pb.js";
import { imageItem } from "../../src/services/image-wire.js";
import { kind } from "../helpers/assert.js";
import { openTestMetadata } from "../helpers/metadata.js";
import { sha256 } from "../helpers/tarbuild.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const MANIFEST = "application/vnd.oci.image.manifest.v1+json";

/** A list's kept parts, joined (they must be there). */
function joined(parts: Buffer[] | null): Buffer {
  assert.ok(parts, "every record is kept encoded");
  return Buffer.concat(parts);
}

let dir: string;
let n = 0;
const cleanups: (() => void)[] = [];

async function setup() {
  const root = join(dir, `env-${n++}`);
  const md = openTestMetadata(root);
  cleanups.push(md.close);
  const { db, exchange, events, namespaces } = md;
  const backend = await new LocalContentStore(join(root, "content")).init();
  const content = new MetadataContentStore(db, backend, namespaces, exchange);
  const images = new ImageStore(db, namespaces, exchange);
  return { root, db, namespaces, content, images, events };
}

async function put(content: MetadataContentStore, ns: string, text: string, labels = {}) {
  const data = Buffer.from(text);
  const w = await content.writer(ns, `ref-${n++}`, { total: data.length, expected: sha256(data) });
  await w.write(data);
  return w.commit(data.length, sha256(data), labels);
}

describe("image store", () => {
  before(async () => {
    dir = await makeTempDir("images-store");
  });
  after(async () => {
    for (const c of cleanups) c();
    await removeTempDir(dir);
  });

  it("creates, gets, updates and deletes, publishing in the caller's namespace", async () => {
    const { images, events } = await setup();
    const target = { mediaType: MANIFEST, digest: sha256(Buffer.from("m")), size: 10 };
    const created = images.create("ns1", { name: "img", labels: { a: "1", gone: "" }, target });
    assert.deepEqual(created.labels, { a: "1" });
    assert.equal(created.createdAt.getTime(), created.updatedAt.getTime());
    assert.throws(
      () => images.create("ns1", { name: "img", target }),
      kind("already exists", 'image "img": already exists'),
    );
    // the same name in another namespace is another image
    images.create("ns2", { name: "img", target });
    const up = images.update("ns1", { name: "img", labels: { b: "2" } }, ["labels.b", "labels.a"]);
    assert.deepEqual(up.labels, { b: "2" });
    assert.deepEqual(images.get("ns1", "img").labels, { b: "2" });
    assert.equal(images.get("ns1", "img").createdAt.getTime(), created.createdAt.getTime());
    assert.throws(
      () => images.update("ns1", { name: "nope" }, ["labels"]),
      kind("not found", 'image "nope": not found'),
    );
    assert.throws(
      () => images.update("ns1", { name: "img" }, ["name"]),
      kind("invalid argument", 'cannot update "name" field on image "img": invalid argument'),
    );
    await images.delete("ns1", "img");
    assert.throws(() => images.get("ns1", "img"), kind("not found"));
    assert.equal(images.list("ns2").length, 1);
    await new Promise((r) => setImmediate(r));
    const mine = events.filter((e) => e.topic.startsWith("/images/"));
    assert.deepEqual(
      mine.map((e) => `${e.namespace} ${e.topic}`),
      ["ns1 /images/create", "ns2 /images/create", "ns1 /images/update", "ns1 /images/delete"],
    );
    assert.deepEqual(fromBinary(ImageCreateSchema, mine[0]!.event!.value).labels, { a: "1" });
    assert.deepEqual(fromBinary(ImageUpdateSchema, mine[2]!.event!.value).labels, { b: "2" });
  });

  it("keeps each record encoded as a read of its row decodes it, and encodes older rows when it opens", async () => {
    const { db, namespaces } = await setup();
    const exchange = new Exchange();
    const target = (t: string) => ({ mediaType: MANIFEST, digest: sha256(Buffer.from(t)), size: 7 });
    // a store without the encoder, as berthd before the `wire` column (or a test) wrote rows
    const plain = new ImageStore(db, namespaces, exchange);
    plain.create("ns", { name: "old", labels: { a: "1" }, target: target("old") });
    assert.equal(plain.getEncoded("ns", "old"), null);
    assert.equal(plain.listEncoded("ns"), null);

    const store = new ImageStore(db, namespaces, exchange, imageItem);
    const same = (ns: string, name: string) =>
      assert.ok(
        Buffer.from(store.getEncoded(ns, name) ?? []).equals(imageItem(store.get(ns, name))),
        `${name}: the kept encoding is the record's`,
      );
    same("ns", "old"); // encoded when the store opened
    const created = store.create("ns", {
      name: "new",
      // dropped (empty), an own "__proto__" key as a decoded request carries one, non-ASCII
      labels: { ...JSON.parse('{"__proto__": "p"}'), gone: "", ünï: "✓" },
      target: { ...target("new"), annotations: { "org.opencontainers.image.ref.name": "1", e: "" } },
    });
    same("ns", "new");
    assert.ok(Buffer.from(store.getEncoded("ns", "new")!).equals(imageItem(created)), "create's answer too");
    // a path update keeps the creation time and the other fields; the answer is what is kept
    const up = store.update("ns", { name: "new", labels: { b: "2" } }, ["labels.b"]);
    same("ns", "new");
    assert.ok(Buffer.from(store.getEncoded("ns", "new")!).equals(imageItem(up)), "update's answer too");
    store.update("ns", { name: "old", target: target("moved") }, ["target"]);
    same("ns", "old");
    assert.equal(store.get("ns", "old").target.digest, target("moved").digest);

    assert.deepEqual(
      joined(store.listEncoded("ns")).toString("latin1"),
      Buffer.concat(store.list("ns").map(imageItem)).toString("latin1"),
      "in name order, each the record's encoding",
    );
    assert.throws(() => store.getEncoded("ns", "missing"), kind("not found", 'image "missing": not found'));
    assert.deepEqual(store.listEncoded("other"), []);

    // a row written without an encoding after the store opened: the list says so
    plain.create("ns", { name: "zz", target: target("zz") });
    assert.equal(store.listEncoded("ns"), null);
    assert.equal(store.getEncoded("ns", "zz"), null);
  });

  it("joins a namespace's kept records in name order, whatever order they were written in", async () => {
    const { db, namespaces } = await setup();
    const store = new ImageStore(db, namespaces, new Exchange(), imageItem);
    const target = { mediaType: MANIFEST, digest: sha256(Buffer.from("t")), size: 3 };
    // names in an order unlike the sorted one, over two namespaces, some rewritten later; sizes
    // that vary, and enough of them for the list to be read in several parts
    const names = Array.from({ length: 1000 }, (_, i) => `img-${(i * 7919) % 1000}:${i % 3 ? "a" : "ü"}`);
    for (const [i, name] of names.entries())
      store.create(i % 2 ? "one" : "two", { name, target, labels: { pad: "x".repeat(i % 5 ? 2000 : 10) } });
    for (const name of names.slice(0, 40))
      for (const ns of ["one", "two"])
        if (store.list(ns, [`name==${JSON.stringify(name)}`]).length > 0)
          store.update(ns, { name, labels: { again: name } }, ["labels.again"]);
    for (const ns of ["one", "two"]) {
      const listed = store.list(ns);
      assert.equal(listed.length, 500);
      assert.ok((store.listEncoded(ns)?.length ?? 0) > 2, "read in parts");
      assert.deepEqual(
        listed.map((i) => i.name),
        listed.map((i) => i.name).sort(),
      );
      assert.ok(
        joined(store.listEncoded(ns)).equals(Buffer.concat(listed.map(imageItem))),
        `${ns}: in name order`,
      );
    }
  });

  it("a sync delete waits for the collect hook; a target digest guards the delete", async () => {
    const { images } = await setup();
    const target = { mediaType: MANIFEST, digest: sha256(Buffer.from("t")), size: 1 };
    images.create("ns", { name: "x", target });
    let collected = 0;
    images.collect = async () => {
      collected++;
    };
    const other = sha256(Buffer.from("o"));
    await assert.rejects(
      images.delete("ns", "x", { sync: true, target: { digest: other } }),
      kind("not found", `image "x" has target ${target.digest}, not ${other}: not found`),
    );
    assert.equal(collected, 0);
    await images.delete("ns", "x", { sync: true, target: { digest: target.digest } });
    assert.equal(collected, 1);
    await images.delete("ns", "x", { sync: true }).catch(() => {});
    assert.equal(collected, 1, "no collection after a failed delete");
  });

  it("keeps its target and what it references from the collector until deleted", async () => {
    const { db, content, images } = await setup();
    const layer = await put(content, "ns", "layer");
    const manifest = await put(content, "ns", "manifest", { "containerd.io/gc.ref.content.l.0": layer });
    const loose = await put(content, "ns", "loose");
    images.create("ns", { name: "img", target: { mediaType: MANIFEST, digest: manifest, size: 8 } });
    const gc = new MetadataCollector(db);
    gc.addSweeper({ sweep: () => content.sweep() });
    await gc.collect();
    assert.deepEqual(
      content
        .list("ns")
        .map((i) => i.digest)
        .sort(),
      [layer, manifest].sort(),
    );
    assert.equal(loose.length > 0, true);
    await images.delete("ns", "img");
    await gc.collect();
    assert.deepEqual(content.list("ns"), []);
  });

  it("a namespace with images cannot be removed; images come first in the message", async () => {
    const { namespaces, content, images } = await setup();
    await put(content, "busy", "blob");
    images.create("busy", {
      name: "img",
      target: { mediaType: MANIFEST, digest: sha256(Buffer.from("x")), size: 1 },
    });
    assert.throws(
      () => namespaces.delete("busy", "busy"),
      kind(
        "failed precondition",
        'namespace "busy" must be empty, but it still has images, blobs: failed precondition',
      ),
    );
  });

  it("migrates a version-2 database, keeping its rows", async () => {
    const root = join(dir, "migrate");
    const path = join(root, "meta.db");
    const first = new MetadataDB(path);
    first.sql
      .prepare("INSERT INTO namespaces (name, labels, created_at, updated_at) VALUES ('old', '{}', 1, 1)")
      .run();
    // back to version 2: drop what migrations 3 (images), 4 (containers), 5 (an index), 6 (a
    // containers column and an index), 7 (an images column and an index), 8 (two indexes in
    // place of 5's), 9 (two indexes in place of one of 8's) and 10 (a table and its triggers)
    // made
    first.sql.exec(
      "DROP TABLE images; DROP TRIGGER container_buckets_gone; DROP TABLE container_buckets; DROP TABLE containers; DROP INDEX lease_resources_by_type; DROP INDEX content_plain; DROP INDEX content_naming; DROP TRIGGER content_refs_insert; DROP TRIGGER content_refs_update; DROP TRIGGER content_refs_delete; DROP TABLE content_refs",
    );
    // a version-2 blob whose labels name others: migration 10 finds what they name
    const d = (c: string) => `sha256:${c.repeat(64)}`;
    first.sql
      .prepare(
        "INSERT INTO content (namespace, digest, size, created_at, updated_at, labels) VALUES ('old', ?, 1, 1, 1, ?)",
      )
      .run(
        d("a"),
        JSON.stringify({
          "containerd.io/gc.ref.content": d("b"),
          "containerd.io/gc.ref.content.l.0": d("c"),
          "containerd.io/gc.ref.content/x": d("d"),
          "containerd.io/gc.ref.contentx": d("e"),
          "containerd.io/gc.ref.snapshot.overlayfs": "sn",
          other: d("f"),
        }),
      );
    first.sql.pragma("user_version = 2");
    first.close();
    const raw = new Database(path);
    assert.equal(raw.pragma("user_version", { simple: true }), 2);
    raw.close();
    const db = new MetadataDB(path);
    cleanups.push(() => db.close());
    assert.equal(db.sql.pragma("user_version", { simple: true }), 10);
    assert.ok(db.sql.prepare("SELECT 1 FROM namespaces WHERE name = 'old'").get());
    assert.deepEqual(
      db.sql.prepare("SELECT namespace, digest, target FROM content_refs ORDER BY target").raw().all(),
      ["b", "c", "d"].map((c) => ["old", d("a"), d(c)]),
    );
    const images = new ImageStore(db, new NamespaceStore(db, new Exchange()), new Exchange());
    images.create("old", {
      name: "i",
      target: { mediaType: MANIFEST, digest: sha256(Buffer.from("i")), size: 1 },
    });
    assert.equal(images.list("old").length, 1);
  });
});
