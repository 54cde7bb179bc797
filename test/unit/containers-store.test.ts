import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fromBinary } from "@bufbuild/protobuf";
import { BerthError } from "../../src/base/errdefs.js";
import { type AnyValue, ContainerStore } from "../../src/core/containers/store.js";
import { MetadataCollector } from "../../src/core/gc/collector.js";
import {
  ContainerCreateSchema,
  ContainerDeleteSchema,
  ContainerUpdateSchema,
} from "../../src/gen/containerd/events/container_pb.js";
import { containerItem } from "../../src/services/container-wire.js";
import { kind } from "../helpers/assert.js";
import { openTestMetadata } from "../helpers/metadata.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const spec = (json: object): AnyValue => ({
  typeUrl: SPEC_URL,
  value: new Uint8Array(Buffer.from(JSON.stringify(json))),
});
const runtime = { name: "io.containerd.runc.v2" };

let dir: string;
let n = 0;
const cleanups: (() => void)[] = [];

function setup() {
  const md = openTestMetadata(join(dir, `env-${n++}`));
  cleanups.push(md.close);
  const { db, exchange, events, namespaces } = md;
  const store = new ContainerStore(db, namespaces, exchange);
  return { db, namespaces, store, events };
}

describe("container store", () => {
  before(async () => {
    dir = await makeTempDir("containers-store");
  });
  after(async () => {
    for (const c of cleanups) c();
    await removeTempDir(dir);
  });

  it("creates, gets, lists, updates and deletes, publishing containerd's payloads", async () => {
    const { store, events, namespaces } = setup();
    const opts: AnyValue = {
      typeUrl: "containerd.runc.v1.Options",
      value: new Uint8Array([0x0a, 0x01, 0x78]),
    };
    const c = store.create("ns1", {
      id: "c1",
      labels: { a: "1", gone: "" },
      image: "docker.io/library/busybox:latest",
      runtime: { name: "io.containerd.runc.v2", options: opts },
      spec: spec({ ociVersion: "1.0.2" }),
      snapshotter: "overlayfs",
      snapshotKey: "c1",
      extensions: { ext: { typeUrl: "x", value: new Uint8Array([1]) } },
    });
    assert.deepEqual(c.labels, { a: "1" });
    assert.equal(c.createdAt.getTime(), c.updatedAt.getTime());
    assert.ok(
      namespaces.list().some((ns) => ns.name === "ns1"),
      "the namespace is created on the way",
    );
    const got = store.get("ns1", "c1");
    assert.deepEqual(got, c);
    assert.deepEqual(Buffer.from(got.spec!.value).toString(), '{"ociVersion":"1.0.2"}');
    assert.throws(
      () => store.create("ns1", { id: "c1", runtime, spec: spec({}) }),
      kind("already exists", 'container "c1": already exists'),
    );
    store.create("ns2", { id: "c1", runtime, spec: spec({}) });
    store.create("ns1", { id: "a0", runtime: { name: "other" }, spec: spec({}) });
    assert.deepEqual(
      store.list("ns1").map((x) => x.id),
      ["a0", "c1"],
    );
    const up = store.update("ns1", { id: "c1", labels: { b: "2" } }, ["labels.b", "labels.a"]);
    assert.deepEqual(up.labels, { b: "2" });
    assert.equal(up.createdAt.getTime(), c.createdAt.getTime());
    store.delete("ns1", "c1");
    assert.throws(
      () => store.get("ns1", "c1"),
      kind("not found", 'container "c1" in namespace "ns1": not found'),
    );
    await new Promise((r) => setImmediate(r));
    const mine = events.filter((e) => e.topic.startsWith("/containers/"));
    assert.deepEqual(
      mine.map((e) => `${e.namespace} ${e.topic} ${e.event?.typeUrl}`),
      [
        "ns1 /containers/create containerd.events.ContainerCreate",
        "ns2 /containers/create containerd.events.ContainerCreate",
        "ns1 /containers/create containerd.events.ContainerCreate",
        "ns1 /containers/update containerd.events.ContainerUpdate",
        "ns1 /containers/delete containerd.events.ContainerDelete",
      ],
    );
    const ce = fromBinary(ContainerCreateSchema, mine[0]!.event!.value);
    assert.equal(ce.id, "c1");
    assert.equal(ce.image, "docker.io/library/busybox:latest");
    assert.equal(ce.runtime?.name, "io.containerd.runc.v2");
    assert.equal(ce.runtime?.options?.typeUrl, "containerd.runc.v1.Options");
    const ue = fromBinary(ContainerUpdateSchema, mine[3]!.event!.value);
    assert.deepEqual(
      { id: ue.id, image: ue.image, labels: ue.labels, snapshotKey: ue.snapshotKey },
      { id: "c1", image: "docker.io/library/busybox:latest", labels: { b: "2" }, snapshotKey: "c1" },
    );
    assert.equal(fromBinary(ContainerDeleteSchema, mine[4]!.event!.value).id, "c1");
  });

  it("validates like containerd, with its messages", () => {
    const { store } = setup();
    const v = "create container failed validation";
    assert.throws(
      () => store.create("ns", { id: "", runtime, spec: spec({}) }),
      kind("invalid argument", `${v}: container.ID: identifier must not be empty: invalid argument`),
    );
    assert.throws(
      () => store.create("ns", { id: "a/b", runtime, spec: spec({}) }),
      kind(
        "invalid argument",
        `${v}: container.ID: identifier "a/b" must match ^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$: invalid argument`,
      ),
    );
    assert.throws(
      () => store.create("ns", { id: "x", spec: spec({}) }),
      kind("invalid argument", `${v}: container.Runtime.Name must be set: invalid argument`),
    );
    assert.throws(
      () => store.create("ns", { id: "x", runtime }),
      kind("invalid argument", `${v}: container.Spec must be set: invalid argument`),
    );
    assert.throws(
      () => store.create("ns", { id: "x", runtime, spec: spec({}), snapshotKey: "k" }),
      kind(
        "invalid argument",
        `${v}: container.Snapshotter must be set if container.SnapshotKey is set: invalid argument`,
      ),
    );
    assert.throws(
      () =>
        store.create("ns", {
          id: "x",
          runtime,
          spec: spec({}),
          extensions: { "": { typeUrl: "", value: new Uint8Array() } },
        }),
      kind("invalid argument", `${v}: container.Extension keys must not be zero-length: invalid argument`),
    );
    assert.throws(
      () =>
        store.create("ns", {
          id: "x",
          runtime,
          spec: spec({}),
          labels: { "long-label-key": "v".repeat(4090) },
        }),
      kind(
        "invalid argument",
        `${v}: containers.Labels: label key and value greater than maximum size (4096 bytes), key: long-label: invalid argument`,
      ),
    );
    // an empty spec Any is still a spec
    store.create("ns", { id: "x", runtime, spec: { typeUrl: "", value: new Uint8Array() } });
  });

  it("updates with containerd's field paths and immutability rules", () => {
    const { store } = setup();
    store.create("ns", {
      id: "c",
      runtime,
      spec: spec({ a: 1 }),
      snapshotter: "overlayfs",
      snapshotKey: "k1",
      image: "img1",
      labels: { keep: "1" },
      extensions: { e1: { typeUrl: "t1", value: new Uint8Array([1]) } },
    });
    // no paths: labels, spec, extensions, image, snapshotkey; snapshotter and runtime must match
    assert.throws(
      () => store.update("ns", { id: "c", runtime, spec: spec({}) }),
      kind("invalid argument", "container.Snapshotter field is immutable: invalid argument"),
    );
    assert.throws(
      () => store.update("ns", { id: "c", snapshotter: "overlayfs", runtime: { name: "x" }, spec: spec({}) }),
      kind("invalid argument", "container.Runtime.Name field is immutable: invalid argument"),
    );
    assert.throws(
      () => store.update("ns", { id: "c", snapshotter: "overlayfs", runtime }),
      kind("invalid argument", "update failed validation: container.Spec must be set: invalid argument"),
    );
    const all = store.update("ns", {
      id: "c",
      snapshotter: "overlayfs",
      runtime,
      spec: spec({ b: 2 }),
      image: "img2",
      snapshotKey: "k2",
      labels: { x: "y" },
      extensions: { e2: { typeUrl: "t2", value: new Uint8Array([2]) } },
    });
    assert.equal(all.image, "img2");
    assert.equal(all.snapshotKey, "k2");
    assert.deepEqual(all.labels, { x: "y" });
    assert.deepEqual(Object.keys(all.extensions), ["e2"], "the reply shows the computed extensions");
    // ...but extensions are only ever added to in the store, as in containerd
    assert.deepEqual(Object.keys(store.get("ns", "c").extensions).sort(), ["e1", "e2"]);
    for (const p of ["runtime", "snapshotter", "id", "createdat"])
      assert.throws(
        () => store.update("ns", { id: "c" }, [p]),
        kind("invalid argument", `cannot update ${JSON.stringify(p)} field on "c": invalid argument`),
      );
    // explicit paths: other fields (even a different snapshotter) are ignored
    const img = store.update("ns", { id: "c", image: "img3", snapshotter: "native" }, ["image"]);
    assert.equal(img.image, "img3");
    assert.equal(img.snapshotter, "overlayfs");
    // extensions.<name> absent from the request stores an empty Any
    const ext = store.update("ns", { id: "c" }, ["extensions.e3"]);
    assert.deepEqual(ext.extensions.e3, { typeUrl: "", value: new Uint8Array() });
    // labels.<key> absent removes it
    assert.deepEqual(store.update("ns", { id: "c" }, ["labels.x"]).labels, {});
    assert.throws(
      () => store.update("ns", { id: "c", snapshotKey: "" }, ["snapshotkey", "spec"]),
      kind("invalid argument", "update failed validation: container.Spec must be set: invalid argument"),
    );
    assert.equal(store.get("ns", "c").snapshotKey, "k2", "a failed update changes nothing");
  });

  it("not-found messages depend on whether the namespace ever had a container", () => {
    const { store, namespaces } = setup();
    assert.throws(
      () => store.update("fresh", { id: "x" }, ["image"]),
      kind("not found", 'cannot update container "x" in namespace "fresh": not found'),
    );
    assert.throws(
      () => store.delete("fresh", "x"),
      kind("not found", 'cannot delete container "x" in namespace "fresh": not found'),
    );
    store.create("used", { id: "c", runtime, spec: spec({}) });
    store.delete("used", "c");
    assert.throws(
      () => store.update("used", { id: "x" }, ["image"]),
      kind("not found", 'container "x": not found'),
    );
    assert.throws(() => store.delete("used", "x"), kind("not found", "container x: not found"));
    // the namespace going takes its containers bucket with it
    namespaces.delete("used", "used");
    assert.throws(
      () => store.delete("used", "x"),
      kind("not found", 'cannot delete container "x" in namespace "used": not found'),
    );
  });

  it("filters on id, image, runtime.name and labels", () => {
    const { store } = setup();
    store.create("ns", { id: "a", runtime, spec: spec({}), image: "i1", labels: { role: "web" } });
    store.create("ns", { id: "b", runtime: { name: "rt" }, spec: spec({}), labels: { role: "db" } });
    store.create("ns", { id: "c", runtime, spec: spec({}), image: "i2" });
    // list() and each() (what Containers/List encodes from) choose the same, in the same order
    const ids = (f: string[]) => {
      const listed = store.list("ns", f).map((c) => c.id);
      const each: string[] = [];
      store.each("ns", f, (c) => each.push(c.id));
      assert.deepEqual(each, listed, `each() with ${JSON.stringify(f)}`);
      return listed;
    };
    assert.deepEqual(ids(["id==b"]), ["b"]);
    assert.deepEqual(ids(["image==i1"]), ["a"]);
    assert.deepEqual(ids(["image"]), ["a", "c"]);
    assert.deepEqual(ids(["runtime.name==rt"]), ["b"]);
    assert.deepEqual(ids(["labels.role"]), ["a", "b"]);
    assert.deepEqual(ids(["labels.role==web", "id==c"]), ["a", "c"]);
    assert.deepEqual(ids(["labels.role~=^d"]), ["b"]);
    assert.deepEqual(ids(["snapshotter==overlayfs"]), [], "not a container field path in containerd");
    assert.throws(() => store.list("ns", ["id=="]), kind("invalid argument"));
    assert.throws(
      () => store.each("ns", ["id=="], () => assert.fail("no container for a bad filter")),
      kind("invalid argument"),
    );
  });

  it("keeps each record encoded as a read of its row decodes it, and encodes older rows when it opens", () => {
    const md = openTestMetadata(join(dir, `env-${n++}`));
    cleanups.push(md.close);
    const { db, exchange, namespaces } = md;
    // a store without the encoder, as berthd before the `wire` column (or a test) wrote rows
    const plain = new ContainerStore(db, namespaces, exchange);
    plain.create("ns", { id: "old", labels: { a: "1" }, runtime, spec: spec({ old: true }) });
    assert.equal(plain.getEncoded("ns", "old"), null);
    assert.equal(
      plain.eachEncoded("ns", () => {}),
      false,
    );

    const store = new ContainerStore(db, namespaces, exchange, containerItem);
    const same = (ns: string, id: string) =>
      assert.ok(
        Buffer.from(store.getEncoded(ns, id) ?? []).equals(containerItem(store.get(ns, id))),
        `${id}: the kept encoding is the record's`,
      );
    same("ns", "old"); // encoded when the store opened
    store.create("ns", {
      id: "new",
      // dropped (empty), an own "__proto__" key as a decoded request carries one, non-ASCII
      labels: { ...JSON.parse('{"__proto__": "p"}'), gone: "", ünï: "✓" },
      image: "img",
      runtime: { name: "io.containerd.runc.v2", options: { typeUrl: "o", value: new Uint8Array() } },
      spec: spec({ ociVersion: "1.0.2" }),
      snapshotter: "overlayfs",
      snapshotKey: "new",
      extensions: { e1: { typeUrl: "x", value: new Uint8Array([1]) } },
    });
    same("ns", "new");
    // an update's answer has only what it set; the row keeps every extension ever stored
    store.update(
      "ns",
      { id: "new", labels: { b: "2" }, extensions: { e2: { typeUrl: "y", value: new Uint8Array([2]) } } },
      ["labels.b", "extensions.e2"],
    );
    same("ns", "new");
    assert.deepEqual(Object.keys(store.get("ns", "new").extensions).sort(), ["e1", "e2"]);
    store.update("ns", { id: "old", runtime, spec: spec({ now: 1 }) }, ["spec"]);
    same("ns", "old");

    const kept: Buffer[] = [];
    assert.equal(
      store.eachEncoded("ns", (w) => kept.push(Buffer.from(w))),
      true,
    );
    assert.deepEqual(
      kept.map((w) => w.toString("latin1")),
      store.list("ns").map((c) => Buffer.from(containerItem(c)).toString("latin1")),
      "in id order, each the record's encoding",
    );
    assert.ok(
      Buffer.concat(store.listEncoded("ns") ?? []).equals(Buffer.concat(kept)),
      "List's body: the items joined in id order",
    );
    assert.throws(
      () => store.getEncoded("ns", "missing"),
      kind("not found", 'container "missing" in namespace "ns": not found'),
    );
    assert.equal(
      store.eachEncoded("other", () => assert.fail("no containers there")),
      true,
    );
    assert.deepEqual(store.listEncoded("other"), []);

    // a row written without an encoding after the store opened: the list says so
    plain.create("ns", { id: "zz", runtime, spec: spec({}) });
    assert.equal(
      store.eachEncoded("ns", () => {}),
      false,
    );
    assert.equal(store.listEncoded("ns"), null);
    assert.equal(store.getEncoded("ns", "zz"), null);
  });

  it("holds its namespace and its snapshot; delete marks the DB dirty; the delete hook can refuse", async () => {
    const { store, db, namespaces } = setup();
    const dirty: boolean[] = [];
    db.onMutation((d) => dirty.push(d));
    store.create("ns", { id: "c", runtime, spec: spec({}), snapshotter: "overlayfs", snapshotKey: "snap" });
    assert.deepEqual(db.namespaceHolds("ns"), ["containers"]);
    const now = Date.now();
    const ins = db.sql.prepare(
      `INSERT INTO snapshots (namespace, snapshotter, key, backend_key, parent, kind, labels, created_at, updated_at)
       VALUES ('ns', 'overlayfs', ?, ?, ?, ?, '{}', ?, ?)`,
    );
    ins.run("parent", "ns/1/parent", "", "committed", now, now);
    ins.run("snap", "ns/2/snap", "parent", "active", now, now);
    ins.run("other", "ns/3/other", "", "active", now, now);
    const gc = new MetadataCollector(db);
    await gc.collect();
    const keys = () =>
      (db.sql.prepare("SELECT key FROM snapshots ORDER BY key").all() as { key: string }[]).map((r) => r.key);
    assert.deepEqual(keys(), ["parent", "snap"], "the container's snapshot and its parent are roots");
    store.beforeDelete = (_ns, id) => {
      throw new BerthError("failed precondition", `cannot delete running task ${id}`);
    };
    assert.throws(() => store.delete("ns", "c"), kind("failed precondition"));
    store.beforeDelete = undefined;
    store.delete("ns", "c");
    assert.deepEqual(dirty, [false, true]);
    await gc.collect();
    assert.deepEqual(keys(), []);
    assert.deepEqual(db.namespaceHolds("ns"), []);
    namespaces.delete("ns", "ns");
  });
});
