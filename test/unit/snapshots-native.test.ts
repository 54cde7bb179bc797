// The native snapshotter: copies of the parent tree that keep owners, modes, xattrs, hard links,
// symlinks, devices, fifos and times; bind mounts; restart. Needs root.
import assert from "node:assert/strict";
import {
  chmodSync,
  chownSync,
  linkSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { BerthError } from "../../src/base/errdefs.js";
import type { Mount } from "../../src/base/mount.js";
import { mountAll, unmountAll } from "../../src/core/mount/mount.js";
import { diskUsage } from "../../src/core/snapshots/fsutil.js";
import { NativeSnapshotter } from "../../src/core/snapshots/native.js";
import { lutimensNs, makedev, mknod, S_IFCHR, S_IFIFO } from "../../src/sys/mknod.js";
import { lgetxattr, lsetxattr } from "../../src/sys/xattr.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

let dir: string;
let n = 0;

async function withMounted<T>(mounts: Mount[], fn: (root: string) => T | Promise<T>): Promise<T> {
  const target = join(dir, `mnt-${n++}`);
  mkdirSync(target);
  mountAll(mounts, target);
  try {
    return await fn(target);
  } finally {
    unmountAll(target);
    rmSync(target, { recursive: true, force: true });
  }
}

function kind(k: string, message?: string | RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof BerthError, `expected BerthError, got ${String(err)}`);
    assert.equal(err.kind, k);
    if (typeof message === "string") assert.equal(err.message, message);
    else if (message) assert.match(err.message, message);
    return true;
  };
}

describe("native snapshotter", () => {
  before(async () => {
    dir = await makeTempDir("snap-native");
  });
  after(async () => {
    await removeTempDir(dir);
  });

  it("returns containerd's mount shapes", async () => {
    const sn = new NativeSnapshotter(join(dir, "shapes"));
    try {
      const d = (id: number) => join(dir, "shapes", "snapshots", String(id));
      assert.deepEqual(await sn.prepare("a", "", {}), [
        { type: "bind", source: d(1), options: ["rbind", "rw"] },
      ]);
      await sn.commit("A", "a", {});
      assert.deepEqual(await sn.prepare("b", "A", {}), [
        { type: "bind", source: d(2), options: ["rbind", "rw"] },
      ]);
      // a view of a parent binds the parent itself, read-only, and makes no directory
      assert.deepEqual(await sn.view("v", "A", {}), [
        { type: "bind", source: d(1), options: ["rbind", "ro"] },
      ]);
      assert.deepEqual(await sn.view("v0", "", {}), [
        { type: "bind", source: d(4), options: ["rbind", "ro"] },
      ]);
      assert.deepEqual(readdirSync(join(dir, "shapes", "snapshots")).sort(), ["1", "2", "4"]);
      await assert.rejects(sn.remove("A"), kind("failed precondition", /cannot remove snapshot with child/));
      await sn.remove("v");
      await sn.remove("b");
      await sn.remove("A");
      assert.deepEqual(readdirSync(join(dir, "shapes", "snapshots")).sort(), ["4"]);
    } finally {
      await sn.close();
    }
  });

  it("copies the parent faithfully", async () => {
    const sn = new NativeSnapshotter(join(dir, "copy"));
    try {
      const [base] = await sn.prepare("base", "", {});
      const src = base!.source;
      // populate the base directly (what an applier would do through the bind mount)
      mkdirSync(join(src, "dir"), { mode: 0o750 });
      writeFileSync(join(src, "dir", "file"), "content");
      chownSync(join(src, "dir", "file"), 1001, 1002);
      chmodSync(join(src, "dir", "file"), 0o4755);
      chownSync(join(src, "dir"), 7, 8);
      chmodSync(join(src, "dir"), 0o750);
      linkSync(join(src, "dir", "file"), join(src, "hardlink"));
      symlinkSync("dir/file", join(src, "symlink"));
      mknod(join(src, "null"), S_IFCHR | 0o666, makedev(1, 3));
      mknod(join(src, "fifo"), S_IFIFO | 0o600, 0);
      lsetxattr(join(src, "dir", "file"), "user.note", Buffer.from("hello"));
      lsetxattr(join(src, "dir"), "trusted.overlay.opaque", Buffer.from("y"));
      lutimensNs(join(src, "dir", "file"), 1_600_000_000_123_456_789n, 1_500_000_000_987_654_321n);
      lutimensNs(join(src, "symlink"), 1_400_000_000_000_000_001n, 1_400_000_000_000_000_002n);
      lutimensNs(join(src, "dir"), 1_300_000_000_000_000_000n, 1_300_000_000_000_000_005n);
      await sn.commit("BASE", "base", {});
      const usage = await sn.usage("BASE");
      assert.equal(usage.inodes, 6); // root, dir, file(+hardlink), symlink, null, fifo

      const [child] = await sn.prepare("child", "BASE", {});
      const dst = child!.source;
      const s = (p: string) => lstatSync(join(src, p), { bigint: true });
      const d = (p: string) => lstatSync(join(dst, p), { bigint: true });
      for (const p of ["", "dir", "dir/file", "symlink", "null", "fifo"]) {
        assert.equal(d(p).mode, s(p).mode, `mode of ${p}`);
        assert.equal(d(p).uid, s(p).uid, `uid of ${p}`);
        assert.equal(d(p).gid, s(p).gid, `gid of ${p}`);
        assert.equal(d(p).mtimeNs, s(p).mtimeNs, `mtime of ${p}`);
      }
      assert.equal(d("dir/file").atimeNs, 1_600_000_000_123_456_789n);
      assert.equal(d("dir/file").mode & 0o7777n, 0o4755n);
      assert.equal(d("dir").mtimeNs, 1_300_000_000_000_000_005n);
      assert.equal(d("symlink").mtimeNs, 1_400_000_000_000_000_002n);
      assert.equal(readFileSync(join(dst, "dir", "file"), "utf8"), "content");
      assert.equal(d("hardlink").ino, d("dir/file").ino);
      assert.notEqual(d("dir/file").ino, s("dir/file").ino);
      assert.equal(readlinkSync(join(dst, "symlink")), "dir/file");
      assert.ok(d("null").isCharacterDevice());
      assert.equal(d("null").rdev, s("null").rdev);
      assert.ok(d("fifo").isFIFO());
      assert.deepEqual(lgetxattr(join(dst, "dir", "file"), "user.note"), Buffer.from("hello"));
      assert.deepEqual(lgetxattr(join(dst, "dir"), "trusted.overlay.opaque"), Buffer.from("y"));

      // the mount shows the same tree and writes stay in the child
      await withMounted([child!], (root) => {
        assert.deepEqual(readdirSync(root).sort(), ["dir", "fifo", "hardlink", "null", "symlink"]);
        writeFileSync(join(root, "dir", "file"), "changed");
      });
      assert.equal(readFileSync(join(src, "dir", "file"), "utf8"), "content");
      await withMounted(await sn.view("ro", "BASE", {}), (root) => {
        assert.equal(readFileSync(join(root, "dir", "file"), "utf8"), "content");
        assert.throws(() => writeFileSync(join(root, "x"), "x"), /EROFS/);
      });
    } finally {
      await sn.close();
    }
  });

  it("keeps the tree across close and reopen", async () => {
    let sn = new NativeSnapshotter(join(dir, "restart"));
    await sn.prepare("a", "", {});
    await sn.commit("A", "a", {});
    await sn.prepare("b", "A", { "containerd.io/snapshot/x": "1" });
    const before = await sn.list();
    await sn.close();
    sn = new NativeSnapshotter(join(dir, "restart"));
    try {
      assert.deepEqual(await sn.list(), before);
      assert.deepEqual(
        before.map((i) => [i.name, i.parent, i.kind]),
        [
          ["A", "", "committed"],
          ["b", "A", "active"],
        ],
      );
      await assert.rejects(sn.remove("A"), kind("failed precondition"));
    } finally {
      await sn.close();
    }
  });

  it("kinds() answers every write made since it was last read (it keeps its map in between)", async () => {
    const sn = new NativeSnapshotter(join(dir, "kinds"));
    const seen = () => [...sn.kinds()].map(([k, v]) => [k, v.kind, { ...v.labels }]);
    try {
      assert.deepEqual(seen(), []);
      await sn.prepare("a", "", { "containerd.io/snapshot/x": "1" });
      assert.deepEqual(seen(), [["a", "active", { "containerd.io/snapshot/x": "1" }]]);
      assert.equal(sn.kinds(), sn.kinds(), "no write in between: the same map");
      await sn.commit("A", "a", {});
      assert.deepEqual(seen(), [["A", "committed", {}]]);
      await sn.view("v", "A", {});
      assert.deepEqual(seen(), [
        ["A", "committed", {}],
        ["v", "view", {}],
      ]);
      await sn.update({ name: "A", labels: { l: "2" } }, ["labels.l"]);
      assert.deepEqual(seen()[0], ["A", "committed", { l: "2" }]);
      await sn.remove("v");
      assert.deepEqual(seen(), [["A", "committed", { l: "2" }]]);
      // a write that fails changes nothing, and the map still says so
      await assert.rejects(sn.prepare("A", "", {}), kind("already exists"));
      assert.deepEqual(seen(), [["A", "committed", { l: "2" }]]);
      assert.deepEqual(
        seen(),
        (await sn.list()).map((i) => [i.name, i.kind, i.labels]),
        "kinds() agrees with list()",
      );
    } finally {
      await sn.close();
    }
  });

  it("measures usage like containerd: allocated blocks of distinct inodes", async () => {
    const root = join(dir, "du");
    mkdirSync(root);
    writeFileSync(join(root, "a"), Buffer.alloc(10000, 1));
    linkSync(join(root, "a"), join(root, "b"));
    const u = await diskUsage(root);
    assert.equal(u.inodes, 2);
    const blocks = Number(lstatSync(root).blocks + lstatSync(join(root, "a")).blocks);
    assert.equal(u.size, blocks * 512);
  });
});
