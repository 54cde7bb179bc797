// Issue "Snapshotters, diff service and garbage collection": GC removes exactly what nothing
// references, driven through the real ctr, with containerd's default scheduler settings.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Leases } from "../../src/gen/containerd/services/leases/v1/leases_pb.js";
import { Connection } from "../../src/grpc/client.js";
import { berth, ctr, ok } from "../helpers/ctr.js";
import { type Daemon, startBerthd } from "../helpers/daemons.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const GC_TEST_CONFIG = `version = 2
[plugins."io.containerd.gc.v1.scheduler"]
  startup_delay = "0s"
  mutation_threshold = 0
`;

const sha = (s: string) => `sha256:${createHash("sha256").update(s).digest("hex")}`;

describe("garbage collection (berthd, real ctr)", () => {
  let d: Daemon;
  let tmp: string;
  let conn: Connection;
  before(async () => {
    tmp = await makeTempDir("gc-ctr");
    // No startup collection and no mutation-count trigger: objects the test is still wiring
    // up must not be collected before their references exist. Deletions still trigger GC.
    d = await startBerthd({ config: GC_TEST_CONFIG });
    conn = new Connection(d.address);
  });
  after(async () => {
    conn?.close();
    await d?.cleanup();
    await removeTempDir(tmp);
  });

  async function ingest(name: string, text: string): Promise<string> {
    const f = join(tmp, name);
    writeFileSync(f, text);
    ok(await ctr(d.address, ["content", "ingest", `ref-${name}`], { input: { file: f } }), `ingest ${name}`);
    return sha(text);
  }
  const blobPath = (digest: string) =>
    join(d.root, "io.containerd.content.v1.content", "blobs", "sha256", digest.slice(7));

  it("keeps roots, references, leased and parent objects; collects the rest", async () => {
    const leases = conn.client(Leases);
    const child = await ingest("child", "child blob\n");
    const root = await ingest("root", "root blob\n");
    const leased = await ingest("leased", "leased blob\n");
    const loose = await ingest("loose", "loose blob\n");
    const expiredBlob = await ingest("expired", "expired lease blob\n");

    // snapshots: a committed base, an orphan child of it, and an unreferenced active one
    ok(await ctr(d.address, ["snapshots", "prepare", "base-active"]));
    ok(await ctr(d.address, ["snapshots", "commit", "base", "base-active"]));
    ok(await ctr(d.address, ["snapshots", "prepare", "orphan", "base"]));
    ok(await ctr(d.address, ["snapshots", "prepare", "loose-snap"]));
    // ctr labels what it prepares as a GC root; take that away so only references keep them
    for (const key of ["base", "orphan", "loose-snap"])
      ok(await ctr(d.address, ["snapshots", "label", key, "containerd.io/gc.root="]));

    // root -> child (content ref) and root -> base (snapshot ref)
    ok(
      await ctr(d.address, [
        "content",
        "label",
        root,
        "containerd.io/gc.root=true",
        `containerd.io/gc.ref.content.l0=${child}`,
        "containerd.io/gc.ref.snapshot.overlayfs=base",
      ]),
    );
    await leases.create({ id: "keep", labels: {} }, { namespace: "default" });
    await leases.addResource(
      { id: "keep", resource: { id: leased, type: "content" } },
      { namespace: "default" },
    );
    await leases.addResource(
      { id: "keep", resource: { id: "loose-snap", type: "snapshots/overlayfs" } },
      { namespace: "default" },
    );
    await leases.create(
      { id: "old", labels: { "containerd.io/gc.expire": "2001-01-01T00:00:00Z" } },
      { namespace: "default" },
    );
    await leases.addResource(
      { id: "old", resource: { id: expiredBlob, type: "content" } },
      { namespace: "default" },
    );

    // a sync delete runs a collection before it answers, as containerd's does
    ok(await ctr(d.address, ["leases", "create", "--id", "trigger"]));
    ok(await ctr(d.address, ["leases", "rm", "--sync", "trigger"]));

    const content = ok(await ctr(d.address, ["content", "ls", "-q"]));
    for (const keep of [root, child, leased]) assert.match(content, new RegExp(keep), `kept ${keep}`);
    for (const gone of [loose, expiredBlob]) {
      assert.doesNotMatch(content, new RegExp(gone), `collected ${gone}`);
      assert.equal(existsSync(blobPath(gone)), false, `blob file removed for ${gone}`);
    }
    assert.equal(existsSync(blobPath(root)), true);

    const snaps = ok(await ctr(d.address, ["snapshots", "ls"]));
    assert.match(snaps, /^base\s/m, "referenced parent kept");
    assert.match(snaps, /^loose-snap\s/m, "leased snapshot kept");
    assert.doesNotMatch(snaps, /^orphan\s/m, "unreferenced child collected");

    const leaseList = ok(await ctr(d.address, ["leases", "ls", "-q"]));
    assert.match(leaseList, /^keep$/m);
    assert.doesNotMatch(leaseList, /^old$/m, "expired lease removed");
  });

  it("a content rm is followed by a collection of what it released", async () => {
    const child = await ingest("c2", "second child\n");
    const parent = await ingest("p2", "second parent\n");
    ok(
      await ctr(d.address, [
        "content",
        "label",
        parent,
        "containerd.io/gc.root=1",
        `containerd.io/gc.ref.content.x=${child}`,
      ]),
    );
    ok(
      await ctr(d.address, ["leases", "rm", "--sync", ok(await ctr(d.address, ["leases", "create"])).trim()]),
    );
    assert.match(ok(await ctr(d.address, ["content", "ls", "-q"])), new RegExp(child));
    ok(await ctr(d.address, ["content", "rm", parent]));
    // the deletion schedules a collection (deletion_threshold 0, schedule_delay 0s)
    let listed = "";
    for (let i = 0; i < 50; i++) {
      listed = ok(await ctr(d.address, ["content", "ls", "-q"]));
      if (!listed.includes(child)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.doesNotMatch(listed, new RegExp(child));
    assert.equal(existsSync(blobPath(child)), false);
  });

  it("berth content prune references drops layer refs and collects what they held", async () => {
    const layer = await ingest("layer", "a layer\n");
    const manifest = await ingest("manifest", "a manifest\n");
    ok(
      await berth(d.address, [
        "content",
        "label",
        manifest,
        "containerd.io/gc.root=1",
        `containerd.io/gc.ref.content.l.0=${layer}`,
      ]),
    );
    ok(await berth(d.address, ["gc"]));
    assert.match(ok(await ctr(d.address, ["content", "ls", "-q"])), new RegExp(layer));
    ok(await berth(d.address, ["content", "prune", "references"]));
    const listed = ok(await ctr(d.address, ["content", "ls"]));
    assert.doesNotMatch(listed, new RegExp(layer), "layer collected once unreferenced");
    assert.match(listed, new RegExp(`${manifest}.*containerd.io/gc.root=1`));
    assert.doesNotMatch(listed, /gc\.ref\.content\.l\.0/);
  });

  it("survives a restart with the snapshot tree intact", async () => {
    await d.stop();
    d = await startBerthd({ root: d.root, state: d.state, config: GC_TEST_CONFIG });
    conn.close();
    conn = new Connection(d.address);
    const snaps = ok(await ctr(d.address, ["snapshots", "ls"]));
    assert.match(snaps, /^base\s/m);
    assert.match(snaps, /^loose-snap\s+\S*\s+Active/m);
    const rm = await ctr(d.address, ["snapshots", "rm", "base"]);
    assert.equal(rm.code, 0, "base has no children left after the orphan was collected");
  });
});
