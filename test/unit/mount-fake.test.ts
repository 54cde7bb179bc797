// Mount policy (src/core/mount) and bundle removal on the recording Syscalls fake: which raw calls
// a containerd mount turns into, in which order, and what happens on failure. Runs without root.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync } from "node:fs";
import { constants, tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fsContextMount, mountAll, mountOne, unmountAll, withTempMount } from "../../src/core/mount/mount.js";
import { parseMountOptions, splitLowerdir } from "../../src/core/mount/options.js";
import { deleteBundle, newBundle } from "../../src/core/runtime/bundle.js";
import { errnoName, SyscallError } from "../../src/sys/errors.js";
import { FakeSyscalls } from "../../src/sys/fake.js";
import { MNT_DETACH, MOUNT_ATTR, MOUNT_DATA_MAX, MS } from "../../src/sys/mount.js";

let base: string;
let n = 0;
const fresh = (name = "t") => {
  const d = join(base, `${name}-${n++}`);
  mkdirSync(d);
  return d;
};

before(() => {
  base = mkdtempSync(join(tmpdir(), "berth-mount-fake-"));
});
after(() => rmSync(base, { recursive: true, force: true }));

/** The recorded calls without the fields tests do not care about. */
const mountCalls = (sys: FakeSyscalls) =>
  sys.calls
    .filter((c) => c.op === "mount" || c.op === "unmount")
    .map((c) =>
      c.op === "mount"
        ? { op: c.op, source: c.source, target: c.target, fstype: c.fstype, flags: c.flags, data: c.data }
        : { op: c.op, target: c.target, flags: c.flags },
    );

describe("errno names", () => {
  it("come from Node's table, for every errno the kernel has", () => {
    assert.equal(errnoName(constants.errno.EEXIST), "EEXIST");
    assert.equal(errnoName(constants.errno.EIO), "EIO"); // not in the old hand-written table
    assert.equal(errnoName(4095), "E4095");
    const e = new SyscallError("mknod", constants.errno.ENODATA, "/x");
    assert.equal(e.code, "ENODATA");
    assert.equal(e.message, "mknod /x: ENODATA");
    assert.equal(new SyscallError("x", 4095, "y").message, "x y: errno 4095");
  });
});

describe("mount policy on the fake", () => {
  it("parses containerd's option language", () => {
    const p = parseMountOptions(["ro", "rbind", "nosuid", "rprivate", "size=64m", "rw", "ro"]);
    assert.equal(p.flags, MS.RDONLY | MS.BIND | MS.REC | MS.NOSUID);
    assert.equal(p.propagation, MS.PRIVATE | MS.REC);
    assert.deepEqual(p.data, ["size=64m"]);
    assert.deepEqual(splitLowerdir("a:b\\:c::d:e"), { lower: ["a", "b:c"], data: ["d", "e"] });
  });

  it("a read-only bind is a bind, then a read-only remount, then the propagation change", () => {
    const sys = new FakeSyscalls();
    const target = fresh();
    mountOne({ type: "bind", source: "/src", options: ["ro", "rbind", "rslave"] }, target, sys);
    assert.deepEqual(mountCalls(sys), [
      { op: "mount", source: "/src", target, fstype: "none", flags: MS.BIND | MS.REC, data: "" },
      {
        op: "mount",
        source: "",
        target,
        fstype: "",
        flags: MS.RDONLY | MS.BIND | MS.REC | MS.REMOUNT,
        data: "",
      },
      { op: "mount", source: "", target, fstype: "", flags: MS.SLAVE | MS.REC, data: "" },
    ]);
    assert.equal(sys.mounts.length, 1);
  });

  it("a short overlay is one mount(2) with its options as data, lowerdir order kept", () => {
    const sys = new FakeSyscalls();
    const target = fresh();
    mountOne(
      {
        type: "overlay",
        source: "overlay",
        options: ["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l3:/l2:/l1", "nodev"],
      },
      target,
      sys,
    );
    assert.deepEqual(mountCalls(sys), [
      {
        op: "mount",
        source: "overlay",
        target,
        fstype: "overlay",
        flags: MS.NODEV,
        data: "index=off,workdir=/w,upperdir=/u,lowerdir=/l3:/l2:/l1",
      },
    ]);
    assert.equal(sys.callsOf("fsopen").length, 0);
  });

  it("an overlay longer than a page goes through fsopen: one lowerdir+ per layer, in order", () => {
    const sys = new FakeSyscalls();
    const target = fresh();
    // real directories: the context's path options must exist (as for the kernel)
    const lowers: string[] = [];
    for (let i = 0; i < 40; i++) lowers.push(fresh(`lower-${"x".repeat(120)}`));
    const upper = fresh("upper");
    const work = fresh("work");
    const lowerdir = lowers.join(":");
    assert.ok(Buffer.byteLength(lowerdir) > MOUNT_DATA_MAX);
    mountOne(
      {
        type: "overlay",
        source: "overlay",
        options: [
          "ro",
          "nosuid",
          "index=off",
          `workdir=${work}`,
          `upperdir=${upper}`,
          `lowerdir=${lowerdir}`,
        ],
      },
      target,
      sys,
    );
    assert.equal(sys.callsOf("mount").length, 0, "mount(2) would cut the data short");
    const cfg = sys.callsOf("fsconfig").map((c) => [c.key, c.value ?? null]);
    assert.deepEqual(cfg, [
      ["source", "overlay"],
      ["ro", null],
      ["index", "off"],
      ["workdir", work],
      ["upperdir", upper],
      ...lowers.map((l) => ["lowerdir+", l]),
    ]);
    const ops = sys.calls.map((c) => c.op);
    assert.deepEqual(ops.slice(-3), ["fscreate", "fsmount", "fsclose"]);
    assert.equal(sys.callsOf("fsmount")[0]!.attrs, MOUNT_ATTR.RDONLY | MOUNT_ATTR.NOSUID);
    assert.equal(sys.mounts.length, 1);
    assert.equal(sys.mounts[0]!.target, target);
  });

  it("data-only layers after '::' become datadir+", () => {
    const sys = new FakeSyscalls();
    const [a, b, c] = [fresh("a"), fresh("b"), fresh("c")];
    fsContextMount("overlay", "overlay", fresh(), 0, [`lowerdir=${a}:${b}::${c}`], sys);
    assert.deepEqual(
      sys.callsOf("fsconfig").map((x) => [x.key, x.value]),
      [
        ["source", "overlay"],
        ["lowerdir+", a],
        ["lowerdir+", b],
        ["datadir+", c],
      ],
    );
  });

  it("mountAll rolls back what it mounted when a later mount fails", () => {
    const sys = new FakeSyscalls();
    const target = fresh();
    sys.failWith("mount", constants.errno.EPERM, (c) => c.fstype === "tmpfs");
    assert.throws(
      () =>
        mountAll(
          [
            { type: "bind", source: "/a", options: ["rbind"] },
            { type: "tmpfs", source: "tmpfs", options: ["size=1m"] },
          ],
          target,
          sys,
        ),
      (err: unknown) => err instanceof SyscallError && err.code === "EPERM",
    );
    assert.deepEqual(
      sys.callsOf("unmount").map((c) => [c.target, c.flags]),
      [[target, MNT_DETACH]],
    );
    assert.equal(sys.mounts.length, 0);
  });

  it("unmountAll unmounts every stacked mount and stops at EINVAL", () => {
    const sys = new FakeSyscalls();
    const target = fresh();
    mountAll(
      [
        { type: "tmpfs", source: "tmpfs", options: [] },
        { type: "bind", source: "/x", options: ["rbind"] },
      ],
      target,
      sys,
    );
    assert.equal(sys.mounts.length, 2);
    unmountAll(target, 0, sys);
    assert.equal(sys.callsOf("unmount").length, 3, "two unmounts, then the EINVAL that ends it");
    assert.equal(sys.mounts.length, 0);
  });

  it("withTempMount mounts on a fresh dir, runs, unmounts and removes the dir", async () => {
    const sys = new FakeSyscalls();
    const parent = fresh();
    let seen = "";
    const r = await withTempMount(
      [{ type: "bind", source: "/snap", options: ["ro", "rbind"] }],
      async (root) => {
        seen = root;
        assert.equal(sys.mounts.at(-1)?.target, root);
        return 42;
      },
      parent,
      sys,
    );
    assert.equal(r, 42);
    assert.ok(seen.startsWith(join(parent, "berth-mount-")));
    assert.equal(existsSync(seen), false);
    assert.equal(sys.mounts.length, 0);
    assert.deepEqual(
      sys.calls.map((c) => c.op),
      ["mount", "mount", "unmount", "unmount"],
    );
  });
});

describe("bundles on the fake", () => {
  it("creation makes the layout and mounts nothing; removal unmounts the rootfs first", async () => {
    const sys = new FakeSyscalls();
    const state = fresh("state");
    const root = fresh("root");
    const spec = Buffer.from('{"ociVersion":"1.1.0"}');
    const b = await newBundle(state, root, "ns1", "c1", spec, sys);
    assert.equal(b.path, join(state, "ns1", "c1"));
    assert.equal(readFileSync(join(b.path, "config.json"), "utf8"), spec.toString());
    assert.equal(readlinkSync(join(b.path, "work")), join(root, "ns1", "c1"));
    assert.ok(existsSync(join(b.path, "rootfs")));
    assert.deepEqual(sys.calls, [], "the shim mounts the rootfs, not the bundle");

    // what the shim leaves if it dies: two mounts stacked on rootfs
    const rootfs = join(b.path, "rootfs");
    sys.mount("overlay", rootfs, "overlay", 0, "lowerdir=/l");
    sys.mount("/x", rootfs, "none", MS.BIND, "");
    sys.clearCalls();
    await deleteBundle(b, sys);
    assert.deepEqual(mountCalls(sys), [
      { op: "unmount", target: rootfs, flags: 0 },
      { op: "unmount", target: rootfs, flags: 0 },
      { op: "unmount", target: rootfs, flags: 0 },
    ]);
    assert.equal(sys.mounts.length, 0);
    assert.equal(existsSync(b.path), false);
    assert.equal(existsSync(b.workDir), false);
  });

  it("removal fails, keeping the bundle, when the rootfs cannot be unmounted", async () => {
    const sys = new FakeSyscalls();
    const b = await newBundle(fresh("state"), fresh("root"), "ns1", "c2", undefined, sys);
    const rootfs = join(b.path, "rootfs");
    sys.mount("tmpfs", rootfs, "tmpfs", 0, "");
    sys.failWith("unmount", constants.errno.EBUSY);
    await assert.rejects(deleteBundle(b, sys), (err: unknown) => (err as SyscallError).code === "EBUSY");
    assert.ok(existsSync(rootfs), "a busy rootfs is not removed from under its mount");
  });
});
