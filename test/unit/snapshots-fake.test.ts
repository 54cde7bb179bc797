// The overlay and native snapshotters on the recording Syscalls fake, without root: the mounts
// they hand out, mounted through src/core/mount, turn into the expected calls (options, lowerdir
// order: the newest parent first), the support probe mounts what it should, and the native copy
// carries devices, owners, modes, times and xattrs through the syscall layer.
import assert from "node:assert/strict";
import { lstatSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { Mount } from "../../src/base/mount.js";
import { mountAll, unmountAll } from "../../src/core/mount/mount.js";
import { NativeSnapshotter } from "../../src/core/snapshots/native.js";
import { checkOverlaySupport, OverlaySnapshotter, UPPERDIR_LABEL } from "../../src/core/snapshots/overlay.js";
import { FakeSyscalls } from "../../src/sys/fake.js";
import { S_IFIFO } from "../../src/sys/mknod.js";
import { MS } from "../../src/sys/mount.js";
import { realSyscalls } from "../../src/sys/syscalls.js";

let base: string;
let n = 0;
const fresh = (name = "t") => {
  const d = join(base, `${name}-${n++}`);
  mkdirSync(d);
  return d;
};

before(() => {
  base = mkdtempSync(join(tmpdir(), "berth-snapshots-fake-"));
});
after(() => rmSync(base, { recursive: true, force: true }));

/** Mount `mounts` on a fresh target with the fake; the mount(2) calls that made them. */
function mountWith(sys: FakeSyscalls, mounts: Mount[]) {
  const target = fresh("mnt");
  sys.clearCalls();
  mountAll(mounts, target, sys);
  const calls = sys
    .callsOf("mount")
    .map((c) => ({ source: c.source, fstype: c.fstype, flags: c.flags, data: c.data }));
  unmountAll(target, 0, sys);
  return { target, calls };
}

const optionOf = (data: unknown, key: string) =>
  String(data)
    .split(",")
    .find((o) => o.startsWith(`${key}=`))
    ?.slice(key.length + 1);

describe("overlay snapshotter on the fake", () => {
  it("actives and views mount with their parents' upper dirs newest first", async () => {
    const sys = new FakeSyscalls();
    const sn = new OverlaySnapshotter(fresh("overlay"), {
      sys,
      mountOptions: ["volatile"],
      upperdirLabel: true,
    });
    try {
      // a chain of three committed layers
      await sn.prepare("a-active", "", {});
      await sn.commit("a", "a-active", {});
      await sn.prepare("b-active", "a", {});
      await sn.commit("b", "b-active", {});
      await sn.prepare("c-active", "b", {});
      await sn.commit("c", "c-active", {});
      const [a, b, c] = (await sn.list()).map((i) => i.name);
      assert.deepEqual([a, b, c], ["a", "b", "c"]);
      const upperOf = async (key: string) => (await sn.stat(key)).labels[UPPERDIR_LABEL]!;
      const upper = [await upperOf("a"), await upperOf("b"), await upperOf("c")];

      // active on c: overlay over c, b, a with its own upper and work dirs
      const active = await sn.prepare("work", "c", {});
      const activeUpper = await upperOf("work");
      const m1 = mountWith(sys, active);
      assert.equal(m1.calls.length, 1);
      assert.equal(m1.calls[0]!.fstype, "overlay");
      assert.equal(m1.calls[0]!.source, "overlay");
      assert.equal(m1.calls[0]!.flags, 0);
      assert.equal(optionOf(m1.calls[0]!.data, "lowerdir"), [upper[2], upper[1], upper[0]].join(":"));
      assert.equal(optionOf(m1.calls[0]!.data, "upperdir"), activeUpper);
      assert.equal(optionOf(m1.calls[0]!.data, "workdir"), activeUpper.replace(/\/fs$/, "/work"));
      const opts = String(m1.calls[0]!.data).split(",");
      assert.equal(opts[0], "volatile", "configured options come first");

      // view on c: read-only overlay over c, b, a — no upper, no work dir
      const view = await sn.view("v", "c", {});
      const m2 = mountWith(sys, view);
      assert.equal(m2.calls.length, 1);
      assert.equal(optionOf(m2.calls[0]!.data, "lowerdir"), [upper[2], upper[1], upper[0]].join(":"));
      assert.equal(optionOf(m2.calls[0]!.data, "upperdir"), undefined);
      assert.equal(optionOf(m2.calls[0]!.data, "workdir"), undefined);

      // view on a single layer: a read-only bind of it (bind, then the ro remount)
      const single = await sn.view("v1", "a", {});
      const m3 = mountWith(sys, single);
      assert.deepEqual(m3.calls, [
        { source: upper[0], fstype: "none", flags: MS.BIND | MS.REC, data: "" },
        { source: "", fstype: "", flags: MS.BIND | MS.REC | MS.REMOUNT | MS.RDONLY, data: "" },
      ]);

      // active without parent: a writable bind of its own fs
      const root = await sn.prepare("root", "", {});
      const m4 = mountWith(sys, root);
      assert.deepEqual(
        m4.calls.map((c) => [c.fstype, c.flags]),
        [["none", MS.BIND | MS.REC]],
      );
    } finally {
      await sn.close();
    }
  });

  it("a new upper dir takes its owner from the parent's, through lchown", async () => {
    const sys = new FakeSyscalls();
    const sn = new OverlaySnapshotter(fresh("overlay"), { sys });
    try {
      await sn.prepare("p-active", "", {});
      await sn.commit("p", "p-active", {});
      sys.clearCalls();
      await sn.prepare("child", "p", {});
      const chowns = sys.callsOf("lchown");
      assert.equal(chowns.length, 1);
      const me = lstatSync(base);
      assert.deepEqual([chowns[0]!.uid, chowns[0]!.gid], [me.uid, me.gid]);
      assert.match(String(chowns[0]!.path), /\/snapshots\/stage-[^/]+\/fs$/);
    } finally {
      await sn.close();
    }
  });

  it("the support check probes d_type and mounts a two-layer overlay, then unmounts it", async () => {
    const sys = new FakeSyscalls();
    const root = fresh("check");
    await checkOverlaySupport(root, sys);
    const ops = sys.calls.map((c) => c.op);
    assert.deepEqual(ops, ["supportsDType", "mount", "unmount", "unmount"]);
    const m = sys.callsOf("mount")[0]!;
    assert.equal(m.fstype, "overlay");
    const lower = optionOf(m.data, "lowerdir")!.split(":");
    assert.deepEqual(
      lower.map((l) => l.split("/").at(-1)),
      ["lower2", "lower1"],
    );
    assert.ok(optionOf(m.data, "upperdir")?.endsWith("/upper"));
    assert.ok(optionOf(m.data, "workdir")?.endsWith("/work"));
    assert.equal(sys.mounts.length, 0);

    const noDType = new FakeSyscalls();
    noDType.dtype = false;
    await assert.rejects(checkOverlaySupport(root, noDType), /does not support d_type/);
    assert.equal(noDType.callsOf("mount").length, 0);

    const refused = new FakeSyscalls();
    refused.failWith("mount", 19 /* ENODEV */);
    await assert.rejects(checkOverlaySupport(root, refused), /failed to mount overlay: mount .*ENODEV/);
  });
});

describe("native snapshotter on the fake", () => {
  it("copies the parent through the syscall layer: nodes, owners, modes, xattrs, times", async () => {
    const sys = new FakeSyscalls();
    const sn = new NativeSnapshotter(fresh("native"), { sys });
    try {
      const mounts = await sn.prepare("p-active", "", {});
      const dir = mounts[0]!.source;
      writeFileSync(join(dir, "file"), "data", { mode: 0o640 });
      mkdirSync(join(dir, "sub"), { mode: 0o750 });
      realSyscalls.mknod(join(dir, "sub", "fifo"), S_IFIFO | 0o600); // fifos need no privilege
      sys.lsetxattr(join(dir, "file"), "user.k", Buffer.from("v"));
      await sn.commit("p", "p-active", {});

      sys.clearCalls();
      // before the copy reads it (which moves its atime)
      const src = lstatSync(join(dir, "file"), { bigint: true });
      await sn.prepare("c", "p", {});
      const stage = (p: string) => p.replace(/\/snapshots\/stage-[^/]+/, "/snapshots/X");
      const rel = (c: { path?: string }) => stage(String(c.path)).replace(/.*\/snapshots\/X/, "");

      const nodes = sys.callsOf("mknod");
      assert.deepEqual(
        nodes.map((c) => [rel(c), c.mode, c.dev]),
        [["/sub/fifo", S_IFIFO | 0o600, 0n]],
      );
      const fileChown = sys.callsOf("lchown").find((c) => rel(c) === "/file")!;
      assert.deepEqual([fileChown.uid, fileChown.gid], [Number(src.uid), Number(src.gid)]);
      const fileMode = sys.callsOf("chmod").find((c) => rel(c) === "/file")!;
      assert.equal(fileMode.mode, 0o640);
      const fileTimes = sys.callsOf("lutimes").find((c) => rel(c) === "/file")!;
      assert.deepEqual([fileTimes.atime, fileTimes.mtime], [src.atimeNs, src.mtimeNs]);
      const xattr = sys.callsOf("lsetxattr").find((c) => rel(c) === "/file")!;
      assert.equal(xattr.name, "user.k");
      assert.equal(String(xattr.value), "v");
      // times come last for each entry, after owner and mode (chown clears set-id bits)
      const forFile = sys.calls.filter((c) => rel(c) === "/file").map((c) => c.op);
      assert.deepEqual(
        forFile.filter((op) => op !== "llistxattr" && op !== "lgetxattr"),
        ["lchown", "chmod", "lsetxattr", "lutimes"],
      );

      // a view of the committed parent is a read-only bind of its directory
      const view = await sn.view("v", "p", {});
      const m = mountWith(sys, view);
      assert.deepEqual(m.calls, [
        { source: dir, fstype: "none", flags: MS.BIND | MS.REC, data: "" },
        { source: "", fstype: "", flags: MS.BIND | MS.REC | MS.REMOUNT | MS.RDONLY, data: "" },
      ]);
    } finally {
      await sn.close();
    }
  });
});
