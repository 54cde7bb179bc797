// Issue "Snapshotters, diff service and garbage collection", through the real ctr and the
// Diff API: snapshot trees that mount, a diff that applies back, crafted layers contained.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Diff } from "../../src/gen/containerd/services/diff/v1/diff_pb.js";
import { Snapshots } from "../../src/gen/containerd/services/snapshots/v1/snapshots_pb.js";
import { Connection } from "../../src/grpc/client.js";
import { ctr, ok } from "../helpers/ctr.js";
import { type Daemon, GC_OFF_CONFIG, startBerthd } from "../helpers/daemons.js";
import { buildTar, gzip, sha256 } from "../helpers/tarbuild.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const NS = { namespace: "default" };

describe("snapshots and diff (berthd, real ctr)", () => {
  let d: Daemon;
  let tmp: string;
  let conn: Connection;
  before(async () => {
    tmp = await makeTempDir("snap-ctr");
    d = await startBerthd({ config: `version = 2\n${GC_OFF_CONFIG}` });
    conn = new Connection(d.address);
  });
  after(async () => {
    conn?.close();
    await d?.cleanup();
    await removeTempDir(tmp);
  });

  /** Run what `ctr snapshots mounts` prints (a `mount ...` line) and return the target. */
  async function mountWithCtr(key: string, name: string): Promise<string> {
    const target = join(tmp, name);
    mkdirSync(target, { recursive: true });
    const line = ok(await ctr(d.address, ["snapshots", "mounts", target, key])).trim();
    assert.match(line, /^mount -t (bind|overlay) /);
    execFileSync("sh", ["-c", line]);
    return target;
  }
  const umount = (target: string) => execFileSync("umount", [target]);

  it("prepare, write through the mount, commit, layer on top, view: the tree is as expected", async () => {
    ok(await ctr(d.address, ["snapshots", "prepare", "base-a"]));
    let m = await mountWithCtr("base-a", "m1");
    try {
      writeFileSync(join(m, "keep.txt"), "from base\n");
      writeFileSync(join(m, "gone.txt"), "deleted above\n");
      mkdirSync(join(m, "dir"));
      writeFileSync(join(m, "dir", "old"), "old\n");
    } finally {
      umount(m);
    }
    ok(await ctr(d.address, ["snapshots", "commit", "base", "base-a"]));
    ok(await ctr(d.address, ["snapshots", "prepare", "child-a", "base"]));
    m = await mountWithCtr("child-a", "m2");
    try {
      assert.equal(readFileSync(join(m, "keep.txt"), "utf8"), "from base\n");
      unlinkSync(join(m, "gone.txt"));
      writeFileSync(join(m, "new.txt"), "from child\n");
      rmSync(join(m, "dir"), { recursive: true });
      mkdirSync(join(m, "dir"));
      writeFileSync(join(m, "dir", "fresh"), "fresh\n");
    } finally {
      umount(m);
    }
    ok(await ctr(d.address, ["snapshots", "commit", "child", "child-a"]));
    ok(await ctr(d.address, ["snapshots", "view", "child-view", "child"]));
    m = await mountWithCtr("child-view", "m3");
    try {
      assert.deepEqual(readdirSync(m).sort(), ["dir", "keep.txt", "new.txt"]);
      assert.deepEqual(readdirSync(join(m, "dir")), ["fresh"]);
    } finally {
      umount(m);
    }

    const ls = ok(await ctr(d.address, ["snapshots", "ls"]));
    assert.match(ls, /^child\s+base\s+Committed/m);
    assert.match(ls, /^child-view\s+child\s+View/m);
    const tree = ok(await ctr(d.address, ["snapshots", "tree"]));
    assert.match(tree, /base\n\s+\\_ child\n\s+\\_ child-view/);
    const usage = ok(await ctr(d.address, ["snapshots", "usage", "base"]));
    assert.match(usage, /^base\s+[\d.]+ KiB\s+\d+/m);
    const refused = await ctr(d.address, ["snapshots", "rm", "base"]);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /cannot remove snapshot with child: failed precondition/);
  });

  it("diff of a container's changes applies back to an identical tree", async () => {
    const snaps = conn.client(Snapshots);
    const diff = conn.client(Diff);
    const lower = await snaps.view({ snapshotter: "overlayfs", key: "rt-lower", parent: "base" }, NS);
    const upper = await snaps.mounts({ snapshotter: "overlayfs", key: "child-view" }, NS);
    const res = await diff.diff(
      {
        left: lower.mounts,
        right: upper.mounts,
        mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
        ref: "rt",
      },
      NS,
    );
    assert.ok(res.diff?.digest.startsWith("sha256:"));
    const info = ok(await ctr(d.address, ["content", "ls"]));
    assert.match(info, new RegExp(`${res.diff!.digest}.*containerd.io/uncompressed=sha256:`));

    const copy = await snaps.prepare({ snapshotter: "overlayfs", key: "rt-copy", parent: "base" }, NS);
    const applied = await diff.apply({ diff: res.diff, mounts: copy.mounts }, NS);
    assert.match(applied.applied?.digest ?? "", /^sha256:/);
    const m = await mountWithCtr("rt-copy", "m4");
    try {
      assert.deepEqual(readdirSync(m).sort(), ["dir", "keep.txt", "new.txt"]);
      assert.deepEqual(readdirSync(join(m, "dir")), ["fresh"]);
      assert.equal(readFileSync(join(m, "new.txt"), "utf8"), "from child\n");
    } finally {
      umount(m);
    }
  });

  it("a crafted layer cannot write outside the snapshot; a hardlink out is refused", async () => {
    const marker = `berth-escape-${process.pid}`;
    const layer = gzip(
      buildTar([
        { name: `../../../../../../tmp/${marker}-dotdot`, data: "x" },
        { name: "up", type: "symlink", linkname: "/" },
        { name: `up/tmp/${marker}-symlink`, data: "x" },
        { name: "rel", type: "symlink", linkname: "../../../../../../../../tmp" },
        { name: `rel/${marker}-rel`, data: "x" },
      ]),
    );
    const file = join(tmp, "evil.tar.gz");
    writeFileSync(file, layer);
    ok(await ctr(d.address, ["content", "ingest", "evil"], { input: { file } }));
    const snaps = conn.client(Snapshots);
    const diff = conn.client(Diff);
    const target = await snaps.prepare({ snapshotter: "overlayfs", key: "evil-target" }, NS);
    await diff.apply(
      {
        diff: {
          mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
          digest: sha256(layer),
          size: BigInt(layer.length),
        },
        mounts: target.mounts,
      },
      NS,
    );
    for (const suffix of ["dotdot", "symlink", "rel"])
      assert.equal(existsSync(`/tmp/${marker}-${suffix}`), false, suffix);
    const m = await mountWithCtr("evil-target", "m5");
    try {
      assert.ok(existsSync(join(m, "tmp", `${marker}-dotdot`)), "../ is contained in the root");
    } finally {
      umount(m);
    }

    const link = gzip(buildTar([{ name: "passwd", type: "link", linkname: "../../../../../../etc/passwd" }]));
    const lf = join(tmp, "link.tar.gz");
    writeFileSync(lf, link);
    ok(await ctr(d.address, ["content", "ingest", "link"], { input: { file: lf } }));
    const t2 = await snaps.prepare({ snapshotter: "overlayfs", key: "link-target" }, NS);
    await assert.rejects(
      diff.apply(
        {
          diff: {
            mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
            digest: sha256(link),
            size: BigInt(link.length),
          },
          mounts: t2.mounts,
        },
        NS,
      ),
      /passwd/,
    );
  });
});
