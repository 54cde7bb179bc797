// The layer applier's filesystem side on the recording Syscalls fake, without root: whiteouts in
// overlay mode become 0/0 character devices (mknod) and opaque directories the xattr
// trusted.overlay.opaque=y; in plain mode they delete. Device nodes, owners, modes, times and
// xattrs from the archive reach the syscall layer as the header says (as root would apply them).
import assert from "node:assert/strict";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { applyTar } from "../../src/core/diff/apply.js";
import { FakeSyscalls } from "../../src/sys/fake.js";
import { makedev, S_IFBLK, S_IFCHR, S_IFIFO } from "../../src/sys/mknod.js";
import { buildTar, chunks, type TarEntry } from "../helpers/tarbuild.js";

let base: string;
let n = 0;
const fresh = (name = "d") => {
  const d = join(base, `${name}-${n++}`);
  mkdirSync(d);
  return d;
};

before(() => {
  base = mkdtempSync(join(tmpdir(), "berth-apply-fake-"));
});
after(() => rmSync(base, { recursive: true, force: true }));

/** Apply as root would (chown, device nodes), with the fake standing in for the kernel. */
async function apply(
  root: string,
  entries: TarEntry[],
  mode: "plain" | "overlay",
  opts: { parents?: string[]; rootless?: boolean; sys?: FakeSyscalls } = {},
) {
  const sys = opts.sys ?? new FakeSyscalls();
  await applyTar(root, chunks(buildTar(entries), 512), {
    mode,
    parents: opts.parents,
    rootless: opts.rootless ?? false,
    sys,
  });
  return sys;
}

const relTo = (root: string) => (c: { path?: string }) => String(c.path).slice(root.length + 1);

describe("applier on the fake: whiteouts", () => {
  it("overlay mode: .wh.<name> is a 0/0 char device, .wh..wh..opq the opaque xattr", async () => {
    const upper = fresh("upper");
    const sys = await apply(
      upper,
      [
        { name: "etc/", type: "dir" },
        { name: "etc/.wh.motd", uid: 3, gid: 4 },
        { name: "var/", type: "dir" },
        { name: "var/cache/", type: "dir" },
        { name: "var/cache/.wh..wh..opq" },
        { name: "var/cache/new", data: "n" },
      ],
      "overlay",
    );
    const rel = relTo(upper);
    assert.deepEqual(
      sys.callsOf("mknod").map((c) => [rel(c), c.mode, c.dev]),
      [["etc/motd", S_IFCHR, 0n]],
    );
    assert.deepEqual(
      sys.callsOf("lsetxattr").map((c) => [rel(c), c.name, String(c.value), c.flags]),
      [["var/cache", "trusted.overlay.opaque", "y", 0]],
    );
    // the whiteout takes the owner of its header, as containerd's does
    assert.deepEqual(
      sys
        .callsOf("lchown")
        .filter((c) => rel(c) === "etc/motd")
        .map((c) => [c.uid, c.gid]),
      [[3, 4]],
    );
    // the opaque marker keeps what the layer itself put in the directory
    assert.equal(readFileSync(join(upper, "var/cache/new"), "utf8"), "n");
    assert.equal(existsSync(join(upper, "var/cache/.wh..wh..opq")), false);
    assert.equal(existsSync(join(upper, "etc/.wh.motd")), false);
  });

  it("overlay mode: a whiteout over an existing entry replaces it (EEXIST, remove, mknod again)", async () => {
    const upper = fresh("upper");
    mkdirSync(join(upper, "etc"));
    writeFileSync(join(upper, "etc/motd"), "old");
    mkdirSync(join(upper, "etc/dir/sub"), { recursive: true });
    const sys = await apply(upper, [{ name: "etc/.wh.motd" }, { name: "etc/.wh.dir" }], "overlay");
    const rel = relTo(upper);
    assert.deepEqual(
      sys.callsOf("mknod").map((c) => [rel(c), c.mode, c.dev]),
      [
        ["etc/motd", S_IFCHR, 0n],
        ["etc/motd", S_IFCHR, 0n],
        ["etc/dir", S_IFCHR, 0n],
        ["etc/dir", S_IFCHR, 0n],
      ],
    );
    assert.deepEqual(
      [...sys.nodes.keys()].map((p) => p.slice(upper.length + 1)),
      ["etc/motd", "etc/dir"],
    );
    assert.equal(readFileSync(join(upper, "etc/motd"), "utf8"), "", "the old content is gone");
  });

  it("plain mode: whiteouts delete and opaque markers clear the lower content; no mknod, no xattr", async () => {
    const root = fresh("rootfs");
    mkdirSync(join(root, "etc"));
    writeFileSync(join(root, "etc/motd"), "old");
    mkdirSync(join(root, "var/cache"), { recursive: true });
    writeFileSync(join(root, "var/cache/stale"), "s");
    const sys = await apply(
      root,
      [
        { name: "etc/.wh.motd" },
        { name: "var/cache/", type: "dir" },
        { name: "var/cache/.wh..wh..opq" },
        { name: "var/cache/fresh", data: "f" },
      ],
      "plain",
    );
    assert.equal(existsSync(join(root, "etc/motd")), false);
    assert.deepEqual(readdirSync(join(root, "var/cache")), ["fresh"]);
    assert.equal(sys.callsOf("mknod").length, 0);
    assert.equal(sys.callsOf("lsetxattr").length, 0);
  });

  it("overlay mode with parents: an implicit parent dir takes its first lower's owner, mode and xattrs", async () => {
    const sys = new FakeSyscalls();
    const lower1 = fresh("lower1");
    const lower2 = fresh("lower2");
    mkdirSync(join(lower1, "opt"), { mode: 0o750 });
    mkdirSync(join(lower2, "opt"));
    sys.lsetxattr(join(lower1, "opt"), "user.a", Buffer.from("1"));
    sys.lsetxattr(join(lower1, "opt"), "trusted.overlay.origin", Buffer.from("x"));
    sys.clearCalls();
    const upper = fresh("upper");
    await apply(upper, [{ name: "opt/.wh.gone" }], "overlay", { parents: [lower1, lower2], sys });
    const rel = relTo(upper);
    const mine = sys.calls.filter((c) => String(c.path).startsWith(`${upper}/`));
    assert.deepEqual(
      mine.filter((c) => rel(c) === "opt").map((c) => [c.op, c.mode ?? c.name ?? null]),
      [
        ["lchown", null],
        ["chmod", 0o750],
        ["lsetxattr", "user.a"], // trusted.* stays with the lower
        ["lutimes", null],
      ],
    );
    assert.equal(sys.callsOf("llistxattr")[0]!.path, join(lower1, "opt"), "the first lower that has it");
  });
});

describe("applier on the fake: metadata", () => {
  it("devices, owners, modes, xattrs and nanosecond times go through the syscall layer", async () => {
    const root = fresh("rootfs");
    const sys = await apply(
      root,
      [
        { name: "dev/", type: "dir", mode: 0o755 },
        { name: "dev/null", type: "char", devmajor: 1, devminor: 3, mode: 0o666 },
        { name: "dev/sda", type: "block", devmajor: 8, devminor: 0, mode: 0o660, gid: 6 },
        { name: "dev/fifo", type: "fifo", mode: 0o600 },
        {
          name: "bin/su",
          data: "x",
          mode: 0o4755,
          uid: 1,
          gid: 2,
          xattrs: { "user.note": "hi", "trusted.evil": "1" },
          pax: { mtime: "1500000003.123456789", atime: "1500000009.000000001" },
        },
        { name: "bin/sh", type: "symlink", linkname: "su", uid: 7, gid: 8, mtime: 1500000000 },
      ],
      "plain",
    );
    const rel = relTo(root);
    assert.deepEqual(
      sys.callsOf("mknod").map((c) => [rel(c), c.mode, c.dev]),
      [
        ["dev/null", S_IFCHR | 0o666, makedev(1, 3)],
        ["dev/sda", S_IFBLK | 0o660, makedev(8, 0)],
        ["dev/fifo", S_IFIFO | 0o600, 0n],
      ],
    );
    assert.deepEqual(sys.owners.get(join(root, "dev/sda")), { uid: 0, gid: 6 });
    // the regular file: chown, xattrs, mode (set-id bits after chown), times, all on its fd
    const su = sys.calls.filter((c) => rel(c) === "bin/su");
    assert.deepEqual(
      su.map((c) => c.op),
      ["fchown", "fsetxattr", "fchmod", "futimes"],
    );
    assert.deepEqual([su[0]!.uid, su[0]!.gid], [1, 2]);
    assert.equal(su[1]!.name, "user.note", "trusted.* from an archive is refused");
    assert.equal(su[2]!.mode, 0o4755);
    assert.deepEqual([su[3]!.atime, su[3]!.mtime], [1500000009000000001n, 1500000003123456789n]);
    // the symlink: lchown, then times on the link itself (whole seconds: numbers)
    const sh = sys.calls.filter((c) => rel(c) === "bin/sh");
    assert.deepEqual(
      sh.map((c) => [c.op, c.op === "lchown" ? [c.uid, c.gid] : [c.atime, c.mtime]]),
      [
        ["lchown", [7, 8]],
        ["lutimes", [1500000000, 1500000000]],
      ],
    );
  });

  it("rootless: no device nodes and no chown reach the syscall layer", async () => {
    const root = fresh("rootfs");
    const sys = await apply(
      root,
      [
        { name: "dev/null", type: "char", devmajor: 1, devminor: 3 },
        { name: "f", data: "x", uid: 0, gid: 0 },
        { name: "d/", type: "dir", uid: 5, gid: 5 },
      ],
      "plain",
      { rootless: true },
    );
    assert.equal(sys.callsOf("mknod").length, 0);
    assert.equal(sys.calls.filter((c) => c.op === "lchown" || c.op === "fchown").length, 0);
    assert.equal(existsSync(join(root, "dev/null")), false);
    assert.equal(readFileSync(join(root, "f"), "utf8"), "x");
  });
});
