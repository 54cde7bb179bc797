// `gc why` reads the collector's own graph: for every record, "collectable" must mean the
// collector removes it and a chain must mean it stays. Also the ownership rules prune uses for
// mounts under the daemon's directories.
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  contentNode,
  MetadataCollector,
  NAMING_BLOBS,
  RefGraph,
  UNREFERENCED_PLAIN_BLOBS,
} from "../../src/core/gc/collector.js";
import { type GcEnv, inUse, leakedMounts } from "../../src/core/gc/prune.js";
import { explain, formatChain } from "../../src/core/gc/why.js";
import { NativeSnapshotter } from "../../src/core/snapshots/native.js";
import { openTestMetadata, type TestMetadata } from "../helpers/metadata.js";

const d = (c: string) => `sha256:${c.repeat(64)}`;

/** Numbers below n from a fixed seed: the same graph on every run. */
function seededRandom(seed: number): (n: number) => number {
  return (n) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
}
const J = JSON.stringify;

/** SQLite's plan for a query, its steps joined by " | ". */
function queryPlan(md: TestMetadata, query: string): string {
  return (md.db.sql.prepare(`EXPLAIN QUERY PLAN ${query}`).all() as { detail: string }[])
    .map((r) => r.detail)
    .join(" | ");
}

/** Runs `fn` on metadata of its own in a fresh directory, removed afterwards. */
async function withMetadata(prefix: string, fn: (md: TestMetadata) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const md = openTestMetadata(dir);
  try {
    await fn(md);
  } finally {
    md.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Runs a collection and checks that it removed exactly the records `gc why` called collectable:
 * `verdict` is keyed by the columns `leftSql` selects, joined by spaces. More than `margin` must
 * go and more than `margin` stay, or the comparison would prove little.
 */
async function collectsWhatWhySays(
  md: TestMetadata,
  verdict: Map<string, boolean>,
  leftSql: string,
  margin: number,
): Promise<void> {
  const collectable = [...verdict.values()].filter(Boolean).length;
  assert.ok(
    collectable > margin && collectable < verdict.size - margin,
    `${collectable} of ${verdict.size} collectable`,
  );
  await new MetadataCollector(md.db).collect();
  const left = new Set((md.db.sql.prepare(leftSql).raw(true).all() as string[][]).map((r) => r.join(" ")));
  for (const [k, gone] of verdict) assert.equal(!left.has(k), gone, k);
}

describe("gc why agrees with the collector", () => {
  let dir: string;
  let md: TestMetadata;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "gc-why-"));
    md = openTestMetadata(dir);
    const now = Date.now();
    const sql = md.db.sql;
    const content = sql.prepare(
      "INSERT INTO content (namespace, digest, size, created_at, updated_at, labels) VALUES (?, ?, 1, ?, ?, ?)",
    );
    // image → index a → manifest b → layer c, config e; f is labelled gc.root; g is held by a
    // lease; h by an expired lease; i by nothing; j only by snapshot "top"'s label
    content.run("ns", d("a"), now, now, J({ "containerd.io/gc.ref.content.m.0": d("b") }));
    content.run(
      "ns",
      d("b"),
      now,
      now,
      J({ "containerd.io/gc.ref.content.l.0": d("c"), "containerd.io/gc.ref.content.config": d("e") }),
    );
    content.run("ns", d("c"), now, now, "{}");
    content.run("ns", d("e"), now, now, "{}");
    content.run("ns", d("f"), now, now, J({ "containerd.io/gc.root": "true" }));
    content.run("ns", d("g"), now, now, "{}");
    content.run("ns", d("h"), now, now, "{}");
    content.run("ns", d("i"), now, now, "{}");
    content.run("ns", d("j"), now, now, "{}");
    // the same digest in another namespace is another record, held by nothing
    content.run("other", d("c"), now, now, "{}");
    // k (labelled, leased) → l: both stay; m (labelled, held by nothing) → n: both go; o, held
    // by the expired lease, → p: both go; q is held by the expired and the live lease; r in
    // another namespace is held by that namespace's lease
    content.run("ns", d("k"), now, now, J({ "containerd.io/gc.ref.content.l.0": d("l") }));
    content.run("ns", d("l"), now, now, "{}");
    content.run("ns", d("m"), now, now, J({ "containerd.io/gc.ref.content.l.0": d("n") }));
    content.run("ns", d("n"), now, now, "{}");
    content.run("ns", d("o"), now, now, J({ "containerd.io/gc.ref.content.l.0": d("p") }));
    content.run("ns", d("p"), now, now, "{}");
    content.run("ns", d("q"), now, now, "{}");
    content.run("other", d("r"), now, now, "{}");
    // s: only a container's label holds it
    content.run("ns", d("s"), now, now, "{}");
    sql
      .prepare(
        `INSERT INTO images (namespace, name, target_media_type, target_digest, target_size, created_at, updated_at)
         VALUES ('ns', 'reg/img:1', 'application/vnd.oci.image.index.v1+json', ?, 1, ?, ?)`,
      )
      .run(d("a"), now, now);
    sql
      .prepare("INSERT INTO leases (namespace, id, created_at, labels) VALUES (?, ?, ?, ?)")
      .run("ns", "live", now, J({ "containerd.io/gc.expire": "2999-01-01T00:00:00Z" }));
    sql
      .prepare("INSERT INTO leases (namespace, id, created_at, labels) VALUES (?, ?, ?, ?)")
      .run("ns", "old", now, J({ "containerd.io/gc.expire": "2001-01-01T00:00:00Z" }));
    const res = sql.prepare("INSERT INTO lease_resources (namespace, lease, type, id) VALUES (?, ?, ?, ?)");
    res.run("ns", "live", "content", d("g"));
    res.run("ns", "old", "content", d("h"));
    res.run("ns", "live", "snapshots/overlayfs", "leased-snap");
    res.run("ns", "live", "content", d("k"));
    res.run("ns", "old", "content", d("o"));
    res.run("ns", "old", "content", d("q"));
    res.run("ns", "live", "content", d("q"));
    sql
      .prepare("INSERT INTO leases (namespace, id, created_at, labels) VALUES (?, ?, ?, ?)")
      .run("other", "live", now, "{}");
    res.run("other", "live", "content", d("r"));
    // a resource naming a blob that has no record
    res.run("ns", "live", "content", d("z"));
    const snap = sql.prepare(
      `INSERT INTO snapshots (namespace, snapshotter, key, backend_key, parent, kind, labels, created_at, updated_at)
       VALUES ('ns', 'overlayfs', ?, ?, ?, ?, ?, ?, ?)`,
    );
    snap.run("base", "ns/1/base", "", "committed", "{}", now, now);
    snap.run(
      "top",
      "ns/2/top",
      "base",
      "committed",
      J({ "containerd.io/gc.ref.content.x": d("j") }),
      now,
      now,
    );
    snap.run("ctr-rw", "ns/3/ctr-rw", "top", "active", "{}", now, now);
    snap.run("leased-snap", "ns/4/leased-snap", "", "active", "{}", now, now);
    snap.run("loose", "ns/5/loose", "base", "active", "{}", now, now);
    sql
      .prepare(
        `INSERT INTO containers (namespace, id, runtime_name, snapshotter, snapshot_key, created_at, updated_at)
         VALUES ('ns', 'c1', 'io.containerd.runc.v2', 'overlayfs', 'ctr-rw', ?, ?)`,
      )
      .run(now, now);
    sql
      .prepare(
        `INSERT INTO containers (namespace, id, runtime_name, snapshotter, snapshot_key, labels, created_at, updated_at)
         VALUES ('ns', 'c2', 'io.containerd.runc.v2', '', '', ?, ?, ?)`,
      )
      .run(J({ "containerd.io/gc.ref.content.x": d("s") }), now, now);
  });
  after(() => {
    md.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("explains each kind of hold", () => {
    const layer = explain(md.db, { namespace: "ns", object: d("c") });
    assert.equal(layer.collectable, false);
    assert.deepEqual(layer.chains.map(formatChain), [
      `image reg/img:1 → index ${d("a")} → manifest ${d("b")} [containerd.io/gc.ref.content.m.0] → layer ${d("c")} [containerd.io/gc.ref.content.l.0]`,
    ]);
    assert.equal(explain(md.db, { namespace: "ns", object: d("e") }).chains[0]!.links.at(-1)!.role, "config");
    const rooted = explain(md.db, { namespace: "ns", object: d("f") });
    assert.equal(rooted.chains[0]!.rootReason, "containerd.io/gc.root");
    assert.deepEqual(explain(md.db, { namespace: "ns", object: d("g") }).chains.map(formatChain), [
      `lease live → content ${d("g")}`,
    ]);
    assert.equal(
      explain(md.db, { namespace: "ns", object: d("h") }).collectable,
      true,
      "expired lease holds nothing",
    );
    assert.equal(explain(md.db, { namespace: "ns", object: "old" }).collectable, true);
    assert.equal(explain(md.db, { namespace: "ns", object: d("i") }).collectable, true);
    assert.equal(explain(md.db, { namespace: "other", object: d("c") }).collectable, true, "per namespace");
    // a snapshot's chain: container → its snapshot → parent → parent; a label from a snapshot
    const base = explain(md.db, { namespace: "ns", object: "base", snapshotter: "overlayfs" });
    assert.deepEqual(base.chains.map(formatChain), [
      "container c1 → snapshot overlayfs/ctr-rw → parent snapshot overlayfs/top → parent snapshot overlayfs/base",
    ]);
    assert.match(
      formatChain(explain(md.db, { namespace: "ns", object: d("j") }).chains[0]!),
      /snapshot overlayfs\/top → content .* \[containerd\.io\/gc\.ref\.content\.x\]$/,
    );
    assert.throws(() => explain(md.db, { namespace: "ns", object: "nope" }), /not found/);
    assert.throws(() => explain(md.db, { namespace: "ns", object: d("c"), type: "image" }), /not found/);
  });

  it("collectable is exactly what the collector removes", async () => {
    const contentRows = () =>
      md.db.sql.prepare("SELECT namespace, digest AS name FROM content").all() as {
        namespace: string;
        name: string;
      }[];
    const snapshotRows = () =>
      md.db.sql.prepare("SELECT namespace, key AS name FROM snapshots").all() as {
        namespace: string;
        name: string;
      }[];
    const verdict = new Map<string, boolean>();
    for (const r of contentRows())
      verdict.set(
        `c ${r.namespace} ${r.name}`,
        explain(md.db, { namespace: r.namespace, object: r.name, type: "content" }).collectable,
      );
    for (const r of snapshotRows())
      verdict.set(
        `s ${r.namespace} ${r.name}`,
        explain(md.db, { namespace: r.namespace, object: r.name, type: "snapshot" }).collectable,
      );
    assert.ok([...verdict.values()].includes(true) && [...verdict.values()].includes(false));
    const expect = (c: string, ns: string, collectable: boolean) =>
      assert.equal(verdict.get(`c ${ns} ${d(c)}`), collectable, `${ns} ${c}`);
    for (const c of ["a", "b", "c", "e", "f", "g", "j", "k", "l", "q", "s"]) expect(c, "ns", false);
    for (const c of ["h", "i", "m", "n", "o", "p"]) expect(c, "ns", true);
    expect("c", "other", true);
    expect("r", "other", false);
    await new MetadataCollector(md.db).collect();
    const left = new Set([
      ...contentRows().map((r) => `c ${r.namespace} ${r.name}`),
      ...snapshotRows().map((r) => `s ${r.namespace} ${r.name}`),
    ]);
    for (const [k, collectable] of verdict) assert.equal(!left.has(k), collectable, k);
  });
});

describe("prune: mounts under the daemon's directories", () => {
  const env = (tasks: string[]) =>
    ({
      root: "/var/lib/berth",
      state: "/run/berth",
      tasks: { has: (ns: string, id: string) => tasks.includes(`${ns}/${id}`), list: () => [] },
    }) as unknown as GcEnv;
  const m = (mountPoint: string, extra = "") => ({
    mountPoint,
    line: `1 2 0:1 / ${mountPoint} rw - overlay overlay ${extra}`,
  });
  const bundle = (id: string) => `/run/berth/io.containerd.runtime.v2.task/default/${id}/rootfs`;

  it("leaves a live task's rootfs and CRI's own mounts, reports the rest deepest first", () => {
    const mounts = [
      m("/"),
      m(bundle("live")),
      m(bundle("gone")),
      m("/run/berth/io.containerd.grpc.v1.cri/sandboxes/x/shm"),
      m("/var/lib/berth/tmp/left"),
      m("/var/lib/berth/tmp/left/inner"),
      m("/elsewhere/mnt"),
    ];
    assert.deepEqual(
      leakedMounts(env(["default/live"]), mounts).map((o) => o.object),
      [bundle("gone"), "/var/lib/berth/tmp/left/inner", "/var/lib/berth/tmp/left"],
    );
    assert.deepEqual(
      leakedMounts({ ...env([]), tasks: undefined } as GcEnv, mounts),
      [],
      "no runtime: no judgement",
    );
  });

  it("a directory is in use when mounted on or used as an overlay layer", () => {
    const mounts = [
      m("/a/b/merged", "lowerdir=/s/snapshots/7/fs:/s/snapshots/3/fs,upperdir=/s/snapshots/9/fs"),
    ];
    assert.match(inUse("/s/snapshots/3", mounts) ?? "", /used by the mount on \/a\/b\/merged/);
    assert.match(inUse("/a/b", mounts) ?? "", /mounted on/);
    assert.equal(inUse("/s/snapshots/30", mounts), undefined);
    assert.equal(inUse("/s/snapshots/4", mounts), undefined);
  });
});

describe("snapshotter inventory (what prune and check compare)", () => {
  it("native: views of a parent own no directory; stray directories and lost ones are named", async () => {
    const root = mkdtempSync(join(tmpdir(), "gc-why-native-"));
    const sn = new NativeSnapshotter(root);
    try {
      await sn.prepare("a", "", {});
      await sn.commit("b", "a", {});
      await sn.view("v", "b", {});
      await sn.prepare("w", "b", {});
      assert.deepEqual(sn.inventory(), { strayDirs: [], missing: [] });
      const staging = sn.createStagingDir();
      mkdirSync(join(root, "snapshots", "77"));
      const ids = (await sn.list()).length;
      assert.equal(ids, 3);
      // "w" is the newest snapshot with a directory: take it away
      const inv0 = sn.inventory();
      assert.deepEqual(inv0.strayDirs, [join(root, "snapshots", "77")], "in-flight staging is not debris");
      rmSync(join(root, "snapshots", "3"), { recursive: true });
      assert.deepEqual(
        sn.inventory().missing.map((m) => [m.key, m.kind]),
        [["w", "active"]],
      );
      await sn.releaseStagingDir(staging);
    } finally {
      await sn.close();
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe("a collection finds the blobs no lease holds", () => {
  it("keeps exactly the blobs a lease of their own namespace holds, over many namespaces and blobs", () =>
    withMetadata("gc-unheld-", async (md) => {
      const sql = md.db.sql;
      const content = sql.prepare(
        "INSERT INTO content (namespace, digest, size, created_at, updated_at, labels) VALUES (?, ?, 1, 0, 0, ?)",
      );
      const lease = sql.prepare("INSERT INTO leases (namespace, id, created_at) VALUES (?, ?, 0)");
      const res = sql.prepare("INSERT INTO lease_resources (namespace, lease, type, id) VALUES (?, ?, ?, ?)");
      // namespaces whose order as bytes is not their order as words; a seeded shuffle of holds
      const namespaces = ["a", "a-b", "ab", "b", "ü", "A"];
      const rand = seededRandom(7);
      const want = new Set<string>();
      const all: string[] = [];
      sql.transaction(() => {
        for (const ns of namespaces) {
          lease.run(ns, "l1");
          lease.run(ns, "l2");
        }
        for (let i = 0; i < 3000; i++) {
          const ns = namespaces[rand(namespaces.length)]!;
          const digest = `sha256:${(i * 2654435761).toString(16).padStart(64, "0").slice(-64)}`;
          content.run(ns, digest, rand(4) === 0 ? J({ "bench.x": "y" }) : "{}");
          all.push(`${ns} ${digest}`);
          switch (rand(6)) {
            case 0: // held by a lease of its namespace
              res.run(ns, "l1", "content", digest);
              want.add(`${ns} ${digest}`);
              break;
            case 1: // held twice
              res.run(ns, "l1", "content", digest);
              res.run(ns, "l2", "content", digest);
              want.add(`${ns} ${digest}`);
              break;
            case 2: // the same digest held in another namespace only
              res.run(namespaces[(namespaces.indexOf(ns) + 1) % namespaces.length]!, "l1", "content", digest);
              break;
            case 3: // a resource of another type with the same id
              res.run(ns, "l2", "snapshots/overlayfs", digest);
              break;
            default: // held by nothing
          }
        }
        // resources naming blobs that have no record, before and after every digest
        for (const ns of namespaces) {
          res.run(ns, "l1", "content", "sha256:");
          res.run(ns, "l1", "content", `sha256:${"f".repeat(65)}`);
        }
      })();
      // one ordered pass over the blobs, the lease resources and what labels name, merged:
      // nothing sorted
      const plan = queryPlan(md, UNREFERENCED_PLAIN_BLOBS);
      assert.match(plan, /MERGE \(EXCEPT\).*MERGE \(EXCEPT\)/);
      assert.match(plan, /SCAN content USING INDEX content_plain/);
      assert.match(plan, /lease_resources_by_type/);
      assert.match(plan, /content_refs_by_target/);
      assert.doesNotMatch(plan, /TEMP B-TREE/);
      const gc = new MetadataCollector(md.db);
      await gc.collect();
      const kept = new Set(
        (sql.prepare("SELECT namespace, digest FROM content").raw(true).all() as [string, string][]).map(
          ([ns, digest]) => `${ns} ${digest}`,
        ),
      );
      assert.ok(want.size > 500 && want.size < all.length - 500, "some kept, some collected");
      assert.deepEqual([...kept].sort(), [...want].sort());
    }));
});

describe("a collection reads only the snapshots whose fate is open", () => {
  it("removes exactly what gc why calls collectable, over chains of leased, labelled and held snapshots", () =>
    withMetadata("gc-snapshots-", async (md) => {
      const sql = md.db.sql;
      const rand = seededRandom(11);
      const snap = sql.prepare(
        `INSERT INTO snapshots (namespace, snapshotter, key, backend_key, parent, kind, labels, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, 'committed', ?, 0, 0)`,
      );
      const res = sql.prepare(
        "INSERT OR IGNORE INTO lease_resources (namespace, lease, type, id) VALUES (?, ?, ?, ?)",
      );
      const content = sql.prepare(
        "INSERT INTO content (namespace, digest, size, created_at, updated_at, labels) VALUES (?, ?, 1, 0, 0, ?)",
      );
      const rows: { ns: string; sn: string; key: string }[] = [];
      sql.transaction(() => {
        for (const ns of ["ns", "other"]) {
          sql.prepare("INSERT INTO leases (namespace, id, created_at) VALUES (?, 'hold', 0)").run(ns);
          for (const sn of ["overlayfs", "native"]) {
            const keys: string[] = [];
            for (let i = 0; i < 400; i++) {
              const key = `k-${(i * 7919) % 400}`;
              // a parent among the keys before it (chains), or none
              const parent = keys.length > 0 && rand(3) === 0 ? keys[rand(keys.length)]! : "";
              const labels =
                rand(5) === 0
                  ? J(
                      keys.length > 0 && rand(2) === 0
                        ? { [`containerd.io/gc.ref.snapshot.${sn}`]: keys[rand(keys.length)]! }
                        : rand(2) === 0
                          ? { "containerd.io/snapshot.ref": `sha256:${i}` }
                          : // a GC label's name as a value: read in full, names nothing
                            { note: `containerd.io/gc.ref.snapshot.${sn}` },
                    )
                  : "{}";
              snap.run(ns, sn, key, `${ns}/${i}/${key}`, parent, labels);
              rows.push({ ns, sn, key });
              const fate = rand(12);
              // held by this namespace's lease, by the other namespace's, or by a blob's label
              if (fate === 0) res.run(ns, "hold", `snapshots/${sn}`, key);
              if (fate === 1) res.run(ns === "ns" ? "other" : "ns", "hold", `snapshots/${sn}`, key);
              if (fate === 2) res.run(ns, "hold", "snapshots/elsewhere", key);
              if (fate === 3)
                content.run(
                  ns,
                  `sha256:${String(rows.length).padStart(64, "0")}`,
                  J({ [`containerd.io/gc.ref.snapshot.${sn}`]: key, "containerd.io/gc.root": "1" }),
                );
              keys.push(key);
            }
          }
        }
        sql
          .prepare(
            `INSERT INTO containers (namespace, id, runtime_name, snapshotter, snapshot_key, created_at, updated_at)
             VALUES ('ns', 'c1', 'io.containerd.runc.v2', 'native', ?, 0, 0)`,
          )
          .run(rows.find((r) => r.ns === "ns" && r.sn === "native")!.key);
      })();
      const verdict = new Map(
        rows.map((r) => [
          `${r.ns} ${r.sn} ${r.key}`,
          explain(md.db, { namespace: r.ns, object: r.key, type: "snapshot", snapshotter: r.sn }).collectable,
        ]),
      );
      await collectsWhatWhySays(md, verdict, "SELECT namespace, snapshotter, key FROM snapshots", 200);
    }));
});

describe("a collection reads only the blobs whose fate is open or whose labels name others", () => {
  it("removes exactly what gc why calls collectable, over plain, labelled and naming blobs", () =>
    withMetadata("gc-naming-", async (md) => {
      const sql = md.db.sql;
      const rand = seededRandom(13);
      const content = sql.prepare(
        "INSERT INTO content (namespace, digest, size, created_at, updated_at, labels) VALUES (?, ?, 1, 0, 0, ?)",
      );
      const res = sql.prepare(
        "INSERT OR IGNORE INTO lease_resources (namespace, lease, type, id) VALUES (?, ?, ?, ?)",
      );
      const image = sql.prepare(
        `INSERT INTO images (namespace, name, target_media_type, target_digest, target_size, created_at, updated_at)
         VALUES (?, ?, 'application/vnd.oci.image.manifest.v1+json', ?, 1, 0, 0)`,
      );
      const blobs: { ns: string; digest: string }[] = [];
      sql.transaction(() => {
        for (const ns of ["ns", "other"]) {
          sql.prepare("INSERT INTO leases (namespace, id, created_at) VALUES (?, 'hold', 0)").run(ns);
          const digests: string[] = [];
          for (let i = 0; i < 1500; i++) {
            const digest = `sha256:${((i * 2654435761) % 4294967291).toString(16).padStart(64, "0")}`;
            const earlier = () => digests[rand(digests.length)]!;
            let labels: Record<string, string> = {};
            switch (digests.length > 0 ? rand(9) : 0) {
              case 1: // a pulled layer's labels: plain
                labels = {
                  "containerd.io/uncompressed": `sha256:${i}`,
                  "containerd.io/distribution.source.r": "x",
                };
                break;
              case 2: // a manifest's: names earlier blobs
                labels = {
                  "containerd.io/gc.ref.content.l.0": earlier(),
                  "containerd.io/gc.ref.content.config": earlier(),
                };
                break;
              case 3: // a root that names one
                labels = { "containerd.io/gc.root": "1", "containerd.io/gc.ref.content.m.0": earlier() };
                break;
              case 4: // a GC label's name as a value: read in full, names nothing, no root
                labels = { note: "containerd.io/gc.root", other: "containerd.io/gc.ref.content" };
                break;
              case 5: // a key in another case: not containerd's label
                labels = { "containerd.io/GC.root": "1" };
                break;
              case 6: // the bare key names a blob too
                labels = { "containerd.io/gc.ref.content": earlier() };
                break;
              case 7: // a key with "/" after the prefix names one; with no separator, or in another case, none
                labels = {
                  "containerd.io/gc.ref.content/x": earlier(),
                  "containerd.io/gc.ref.contentx": earlier(),
                  "containerd.io/GC.ref.content.l.0": earlier(),
                };
                break;
            }
            content.run(ns, digest, J(labels));
            blobs.push({ ns, digest });
            digests.push(digest);
            const fate = rand(10);
            if (fate === 0) res.run(ns, "hold", "content", digest);
            if (fate === 1) res.run(ns === "ns" ? "other" : "ns", "hold", "content", digest);
            if (fate === 2) image.run(ns, `img-${i}`, digest);
          }
          // snapshots and a container naming blobs: a leased snapshot's and the container's
          // references hold, an unheld snapshot's go with it
          const snapshot = sql.prepare(
            `INSERT INTO snapshots (namespace, snapshotter, key, backend_key, parent, kind, labels, created_at, updated_at)
             VALUES (?, 'native', ?, ?, '', 'committed', ?, 0, 0)`,
          );
          for (let k = 0; k < 40; k++) {
            snapshot.run(
              ns,
              `sn-${k}`,
              `${ns}-${k}`,
              J({ "containerd.io/gc.ref.content.x": digests[rand(1500)]! }),
            );
            if (k % 2 === 0) res.run(ns, "hold", "snapshots/native", `sn-${k}`);
          }
          sql
            .prepare(
              `INSERT INTO containers (namespace, id, runtime_name, labels, created_at, updated_at)
               VALUES (?, 'c1', 'io.containerd.runc.v2', ?, 0, 0)`,
            )
            .run(ns, J({ "containerd.io/gc.ref.content.y": digests[rand(1500)]!, other: "x" }));
        }
      })();
      for (const [query, index] of [
        [UNREFERENCED_PLAIN_BLOBS, /content_plain.*content_refs_by_target/],
        [NAMING_BLOBS, /content_naming/],
      ] as const) {
        assert.match(queryPlan(md, query), index, "the collector's expression is the partial index's");
      }
      // a collection's graph has no edges to plain blobs (they are leaves: what holds them is the
      // query's question), only to blobs that may name others
      const graph = md.db.tx(() => new RefGraph(md.db, Date.now(), false));
      const namingNodes = new Set(
        (
          sql
            .prepare("SELECT namespace, digest FROM content WHERE instr(labels, 'containerd.io/gc.') > 0")
            .all() as { namespace: string; digest: string }[]
        ).map((r) => contentNode(r.namespace, r.digest)),
      );
      let toNaming = 0;
      for (const node of graph.content)
        for (const e of graph.edges(node))
          if (e.to.startsWith("c\0")) {
            assert.ok(namingNodes.has(e.to), `${node} -> ${e.to} (${e.via}): an edge to a plain blob`);
            toNaming++;
          }
      assert.ok(toNaming > 100, `${toNaming} edges between naming blobs`);
      const verdict = new Map(
        blobs.map((b) => [
          `${b.ns} ${b.digest}`,
          explain(md.db, { namespace: b.ns, object: b.digest, type: "content" }).collectable,
        ]),
      );
      await collectsWhatWhySays(md, verdict, "SELECT namespace, digest FROM content", 300);
    }));
});
