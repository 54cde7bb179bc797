// The namespaced snapshots layer over real backends (overlayfs and native): isolation between
// namespaces, containerd's rules and messages, events, leases, namespace deletion, filters,
// label inheritance, GC hooks, restart, concurrent calls. Needs root (overlay, chown).
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fromBinary } from "@bufbuild/protobuf";
import { type Envelope, Exchange } from "../../src/core/events/exchange.js";
import { LeaseStore } from "../../src/core/leases/store.js";
import { MetadataDB } from "../../src/core/metadata/db.js";
import { NamespaceStore } from "../../src/core/namespaces/store.js";
import { SnapshotService } from "../../src/core/snapshots/metadata.js";
import { NativeSnapshotter } from "../../src/core/snapshots/native.js";
import { OverlaySnapshotter, UPPERDIR_LABEL } from "../../src/core/snapshots/overlay.js";
import {
  SnapshotCommitSchema,
  SnapshotPrepareSchema,
  SnapshotRemoveSchema,
} from "../../src/gen/containerd/events/snapshot_pb.js";
import { kind } from "../helpers/assert.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

let dir: string;
let n = 0;

interface Env {
  root: string;
  db: MetadataDB;
  namespaces: NamespaceStore;
  leases: LeaseStore;
  overlay: OverlaySnapshotter;
  native: NativeSnapshotter;
  svc: SnapshotService;
  events: Envelope[];
  close(): Promise<void>;
}

function open(root: string, upperdirLabel = false): Env {
  const db = new MetadataDB(join(root, "meta.db"));
  const exchange = new Exchange();
  const events: Envelope[] = [];
  const ac = new AbortController();
  (async () => {
    for await (const e of exchange.subscribe([], ac.signal)) events.push(e);
  })();
  const namespaces = new NamespaceStore(db, exchange);
  const leases = new LeaseStore(db, namespaces);
  const overlay = new OverlaySnapshotter(join(root, "overlayfs"), { asyncRemove: true, upperdirLabel });
  const native = new NativeSnapshotter(join(root, "native"));
  const svc = new SnapshotService({
    db,
    namespaces,
    events: exchange,
    snapshotters: new Map<string, OverlaySnapshotter | NativeSnapshotter>([
      ["overlayfs", overlay],
      ["native", native],
    ]),
  });
  return {
    root,
    db,
    namespaces,
    leases,
    overlay,
    native,
    svc,
    events,
    async close() {
      await svc.settled();
      ac.abort();
      await overlay.close();
      await native.close();
      db.close();
    },
  };
}

const envs: Env[] = [];
function setup(upperdirLabel = false): Env {
  const e = open(join(dir, `env-${n++}`), upperdirLabel);
  envs.push(e);
  return e;
}

const tick = () => new Promise((r) => setImmediate(r));

describe("namespaced snapshots", () => {
  before(async () => {
    dir = await makeTempDir("snap-meta");
  });
  after(async () => {
    for (const e of envs) await e.close().catch(() => {});
    await removeTempDir(dir);
  });

  it("keeps namespaces apart", async () => {
    const e = setup();
    const sn = e.svc.get("overlayfs");
    await sn.prepare("ns1", "k", "", { a: "1" });
    await sn.prepare("ns2", "k", "", { a: "2" });
    await sn.commit("ns1", "K", "k");
    assert.deepEqual(
      (await sn.list("ns1")).map((i) => [i.name, i.kind]),
      [["K", "committed"]],
    );
    assert.deepEqual(
      (await sn.list("ns2")).map((i) => [i.name, i.kind, i.labels]),
      [["k", "active", { a: "2" }]],
    );
    await assert.rejects(sn.stat("ns2", "K"), kind("not found", "snapshot K does not exist: not found"));
    await assert.rejects(
      sn.prepare("ns2", "c", "K"),
      kind("not found", "parent snapshot K does not exist: not found"),
    );
    // backends only see namespaced keys
    assert.deepEqual((await e.overlay.list()).map((i) => i.name).sort(), ["ns1/2/K", "ns2/1/k"]);
    assert.equal(sn.record("ns1", "K")!.backendKey, "ns1/2/K");
    // the same names may be used in another snapshotter too
    await e.svc.get("native").prepare("ns1", "K", "");
    assert.deepEqual(
      (await e.svc.get("native").list("ns1")).map((i) => i.name),
      ["K"],
    );
    assert.deepEqual(
      e.namespaces.list().map((ns) => ns.name),
      ["ns1", "ns2"],
    );
  });

  it("follows containerd's rules and messages", async () => {
    const e = setup();
    const sn = e.svc.get("overlayfs");
    assert.throws(
      () => e.svc.get("foo"),
      kind("invalid argument", "snapshotter not loaded: foo: invalid argument"),
    );
    assert.throws(
      () => e.svc.get(""),
      kind("invalid argument", "snapshotter argument missing: invalid argument"),
    );
    await assert.rejects(
      sn.commit("ns", "x", "y"),
      kind("not found", 'can not find snapshotter "overlayfs": not found'),
    );
    await sn.prepare("ns", "base", "");
    await sn.commit("ns", "base-c", "base");
    await sn.prepare("ns", "act", "base-c");
    await sn.view("ns", "v1", "base-c");
    await assert.rejects(
      sn.prepare("ns", "act", ""),
      kind("already exists", 'snapshot "act": already exists'),
    );
    await assert.rejects(
      sn.commit("ns", "base-c", "act"),
      kind("already exists", 'snapshot "base-c": already exists'),
    );
    await assert.rejects(
      sn.commit("ns", "n2", "base-c"),
      kind(
        "failed precondition",
        'failed to commit snapshot: snapshot "ns/2/base-c" is not active: failed precondition',
      ),
    );
    await assert.rejects(
      sn.commit("ns", "n2", "v1"),
      kind(
        "failed precondition",
        'failed to commit snapshot: snapshot "ns/4/v1" is not active: failed precondition',
      ),
    );
    await assert.rejects(
      sn.prepare("ns", "p3", "act"),
      kind(
        "invalid argument",
        'failed to create snapshot: parent "ns/3/act" is not committed snapshot: invalid argument',
      ),
    );
    await assert.rejects(
      sn.commit("ns", "n3", "nope"),
      kind("not found", "snapshot nope does not exist: not found"),
    );
    await assert.rejects(
      sn.remove("ns", "base-c"),
      kind("failed precondition", "cannot remove snapshot with child: failed precondition"),
    );
    await assert.rejects(
      sn.mounts("ns", "base-c"),
      kind(
        "failed precondition",
        "failed to get active mount: requested snapshot ns/2/base-c not active or view: failed precondition",
      ),
    );
    await assert.rejects(
      sn.remove("ns", "nope"),
      kind("not found", "snapshot nope does not exist: not found"),
    );
    await assert.rejects(
      sn.prepare("ns", "big", "", { k: "v".repeat(4096) }),
      kind(
        "invalid argument",
        /^info\.Labels: label key and value greater than maximum size \(4096 bytes\), key: k/,
      ),
    );
    await assert.rejects(sn.update("ns", { name: "" }, []), kind("invalid argument", "invalid argument"));
    await assert.rejects(
      sn.update("ns", { name: "act" }, ["kind"]),
      kind("invalid argument", /cannot update "kind" field/),
    );
    // a failed commit leaves the active snapshot as it was
    assert.equal((await sn.stat("ns", "act")).kind, "active");
    // usage: committed from the record, active measured
    assert.deepEqual(await sn.usage("ns", "v1"), { size: 0, inodes: 0 });
    assert.equal((await sn.usage("ns", "act")).inodes, 1);
    assert.equal((await sn.usage("ns", "base-c")).inodes, 1);
    await sn.remove("ns", "act");
    await sn.remove("ns", "v1");
    await sn.remove("ns", "base-c");
    assert.deepEqual(await sn.list("ns"), []);
    await e.svc.settled();
    assert.deepEqual(await e.overlay.list(), []);
    assert.deepEqual(readdirSync(join(e.root, "overlayfs", "snapshots")), []);
  });

  it("publishes prepare, commit and remove events (not view)", async () => {
    const e = setup();
    const sn = e.svc.get("native");
    await sn.prepare("evns", "a", "");
    await sn.commit("evns", "A", "a");
    await sn.view("evns", "v", "A");
    await sn.remove("evns", "v");
    await tick();
    const ev = e.events.filter((x) => x.topic.startsWith("/snapshot/"));
    assert.deepEqual(
      ev.map((x) => [x.namespace, x.topic, x.event?.typeUrl]),
      [
        ["evns", "/snapshot/prepare", "containerd.events.SnapshotPrepare"],
        ["evns", "/snapshot/commit", "containerd.events.SnapshotCommit"],
        ["evns", "/snapshot/remove", "containerd.events.SnapshotRemove"],
      ],
    );
    const p = fromBinary(SnapshotPrepareSchema, ev[0]!.event!.value);
    assert.deepEqual([p.key, p.parent, p.snapshotter], ["a", "", "native"]);
    const c = fromBinary(SnapshotCommitSchema, ev[1]!.event!.value);
    assert.deepEqual([c.key, c.name, c.snapshotter], ["a", "A", "native"]);
    const r = fromBinary(SnapshotRemoveSchema, ev[2]!.event!.value);
    assert.deepEqual([r.key, r.snapshotter], ["v", "native"]);
  });

  it("adds snapshots to the request's lease", async () => {
    const e = setup();
    const sn = e.svc.get("overlayfs");
    e.leases.create("lns", "L", {});
    await assert.rejects(
      sn.prepare("lns", "x", "", {}, { lease: "nope" }),
      kind("not found", "lease does not exist: not found"),
    );
    assert.deepEqual(await sn.list("lns"), []);
    await sn.prepare("lns", "a", "", {}, { lease: "L" });
    assert.deepEqual(e.leases.listResources("lns", "L"), [{ id: "a", type: "snapshots/overlayfs" }]);
    await sn.commit("lns", "A", "a", {}, { lease: "L" });
    assert.deepEqual(e.leases.listResources("lns", "L"), [{ id: "A", type: "snapshots/overlayfs" }]);
    // asking again for an existing snapshot still leases it (containerd 1.7)
    e.leases.create("lns", "L2", {});
    await assert.rejects(sn.commit("lns", "A", "zz", {}, { lease: "L2" }), kind("already exists"));
    assert.deepEqual(e.leases.listResources("lns", "L2"), [{ id: "A", type: "snapshots/overlayfs" }]);
    await sn.view("lns", "v", "A", {}, { lease: "L" });
    await sn.remove("lns", "v", { lease: "L" });
    assert.deepEqual(e.leases.listResources("lns", "L"), [{ id: "A", type: "snapshots/overlayfs" }]);
  });

  it("keeps a namespace with snapshots from being deleted", async () => {
    const e = setup();
    await e.svc.get("overlayfs").prepare("busy", "a", "");
    await e.svc.get("native").prepare("busy", "a", "");
    assert.throws(
      () => e.namespaces.delete("busy", "busy"),
      kind(
        "failed precondition",
        'namespace "busy" must be empty, but it still has snapshots on "native" snapshotter, snapshots on "overlayfs" snapshotter: failed precondition',
      ),
    );
    await e.svc.get("overlayfs").remove("busy", "a");
    await e.svc.get("native").remove("busy", "a");
    e.namespaces.delete("busy", "busy");
  });

  it("lists with filters and passes only inherited labels to the backend", async () => {
    const e = setup(true);
    const sn = e.svc.get("overlayfs");
    const inherited = "containerd.io/snapshot/foo";
    await sn.prepare("f", "a", "", { [inherited]: "x", mine: "1", empty: "" });
    await sn.commit("f", "A", "a", { "containerd.io/gc.root": "now", [inherited]: "y" });
    await sn.prepare("f", "b", "A", { tag: "blue" });
    await sn.view("f", "c", "A");
    const backendA = await e.overlay.stat(sn.record("f", "A")!.backendKey);
    assert.deepEqual(Object.keys(backendA.labels).sort(), [inherited, UPPERDIR_LABEL].sort());
    const a = await sn.stat("f", "A");
    assert.deepEqual(
      Object.keys(a.labels).sort(),
      ["containerd.io/gc.root", inherited, UPPERDIR_LABEL].sort(),
    );
    assert.equal(a.labels[inherited], "y");
    const names = async (...filters: string[]) => (await sn.list("f", filters)).map((i) => i.name);
    assert.deepEqual(await names(), ["A", "b", "c"]);
    assert.deepEqual(await names("kind==committed"), ["A"]);
    assert.deepEqual(await names("kind==view", "kind==active"), ["b", "c"]);
    assert.deepEqual(await names("parent==A"), ["b", "c"]);
    assert.deepEqual(await names("labels.tag==blue"), ["b"]);
    assert.deepEqual(await names('labels."containerd.io/gc.root"'), ["A"]);
    assert.deepEqual(await names("name~=^[ab]"), ["b"]);
    await assert.rejects(sn.list("f", ["kind=="]), kind("invalid argument"));
    // update: field paths; inherited labels reach the backend
    let i = await sn.update("f", { name: "b", labels: { [inherited]: "z", tag: "" } }, [
      "labels.tag",
      `labels.${inherited}`,
    ]);
    assert.equal(i.labels.tag, undefined);
    assert.equal(i.labels[inherited], "z");
    assert.ok(i.labels[UPPERDIR_LABEL]);
    assert.ok(i.updated.getTime() >= i.created.getTime());
    assert.equal((await e.overlay.stat(sn.record("f", "b")!.backendKey)).labels[inherited], "z");
    i = await sn.update("f", { name: "b", labels: { only: "this" } }, []);
    assert.deepEqual(Object.keys(i.labels).sort(), ["only", UPPERDIR_LABEL].sort());
    assert.deepEqual((await sn.stat("f", "b")).labels.only, "this");
    // a snapshot.ref target that exists already answers AlreadyExists
    await assert.rejects(
      sn.prepare("f", "t", "", { "containerd.io/snapshot.ref": "A" }),
      kind("already exists", 'target snapshot "A": already exists'),
    );
  });

  it("removes without checks for GC and collects what no namespace refers to", async () => {
    const e = setup();
    const sn = e.svc.get("native");
    await sn.prepare("gc", "a", "");
    await sn.commit("gc", "A", "a");
    await sn.prepare("gc", "b", "A");
    // orphans in the backend (as left by a crash): one alone, one with a child
    await e.native.prepare("orphan", "", {});
    await e.native.prepare("o1", "", {});
    await e.native.commit("O1", "o1", {});
    await e.native.prepare("o2", "O1", {});
    assert.equal(await sn.removeUnchecked("gc", "A"), true); // has a child: the record goes, the backend keeps it
    assert.equal(await sn.removeUnchecked("gc", "A"), false);
    assert.deepEqual(
      (await sn.list("gc")).map((i) => i.name),
      ["b"],
    );
    const removed = await sn.collect();
    assert.equal(removed, 3);
    assert.deepEqual(
      (await e.native.list()).map((i) => i.name),
      ["gc/2/A", "gc/3/b"],
    );
    assert.equal(await sn.removeUnchecked("gc", "b"), true);
    assert.equal(await sn.collect(), 1);
    assert.deepEqual(await e.native.list(), []);
  });

  it("serialises concurrent calls on one name", async () => {
    const e = setup();
    const sn = e.svc.get("overlayfs");
    const results = await Promise.allSettled([
      sn.prepare("c", "k", ""),
      sn.prepare("c", "k", ""),
      sn.prepare("c", "k", ""),
    ]);
    assert.equal(results.filter((r) => r.status === "fulfilled").length, 1);
    for (const r of results) if (r.status === "rejected") kind("already exists")(r.reason);
    await sn.prepare("c", "k2", "");
    const commits = await Promise.allSettled([sn.commit("c", "N", "k"), sn.commit("c", "N", "k2")]);
    assert.equal(commits.filter((r) => r.status === "fulfilled").length, 1);
    assert.deepEqual(
      (await sn.list("c")).map((i) => [i.name, i.kind]).sort(),
      [
        ["N", "committed"],
        [commits[0]!.status === "fulfilled" ? "k2" : "k", "active"],
      ].sort(),
    );
    // many children of one parent at once
    await Promise.all(Array.from({ length: 20 }, (_, i) => sn.prepare("c", `child-${i}`, "N")));
    assert.equal((await sn.list("c", ["parent==N"])).length, 20);
    assert.equal((await e.overlay.list()).length, 22);
  });

  it("keeps everything across a restart", async () => {
    const first = open(join(dir, "restart"));
    const sn = first.svc.get("overlayfs");
    await sn.prepare("r", "a", "", { l: "1" });
    await sn.commit("r", "A", "a", { l: "2" });
    await sn.prepare("r", "b", "A");
    await first.svc.get("native").prepare("r2", "x", "");
    const before = await sn.list("r");
    const mounts = await sn.mounts("r", "b");
    await first.close();
    const second = open(join(dir, "restart"));
    envs.push(second);
    const sn2 = second.svc.get("overlayfs");
    assert.deepEqual(await sn2.list("r"), before);
    assert.deepEqual(await sn2.mounts("r", "b"), mounts);
    assert.deepEqual(
      (await second.svc.get("native").list("r2")).map((i) => i.name),
      ["x"],
    );
    // sequences go on where they were
    await sn2.prepare("r", "c", "A");
    assert.equal(sn2.record("r", "c")!.backendKey, "r/4/c");
  });
});
