// Applying layer tars: entry types and metadata (checked against GNU tar extracting the same
// archive), whiteouts and opaque directories in both modes (checked against a real overlay
// mount), replacement rules, and compressed streams.
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  utimesSync,
} from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { applyTar } from "../../src/core/diff/apply.js";
import { decompress } from "../../src/core/diff/compression.js";
import { writeDiff } from "../../src/core/diff/diff.js";
import { lgetxattr } from "../../src/sys/xattr.js";
import { buildTar, chunks, gzip, sha256, type TarEntry, zstd } from "../helpers/tarbuild.js";
import { makeTempDir, removeTempDir, unmountAll } from "../helpers/tmp.js";
import { describeTree } from "../helpers/tree.js";

let base: string;
let n = 0;
const fresh = (name = "d") => {
  const d = join(base, `${name}-${n++}`);
  mkdirSync(d);
  return d;
};

before(async () => {
  base = await makeTempDir("diff-apply");
});
after(async () => {
  unmountAll(base);
  await removeTempDir(base);
});

async function apply(
  root: string,
  tar: Buffer,
  mode: "plain" | "overlay" = "plain",
  parents?: string[],
  chunk = 4096,
) {
  return applyTar(root, chunks(tar, chunk), { mode, parents });
}

const cap = Buffer.from("0100000200200000000000000000000000000000", "hex");

const layerA: TarEntry[] = [
  { name: "etc/", type: "dir", mode: 0o755, mtime: 1500000000 },
  { name: "etc/passwd", data: "root:x:0:0::/root:/bin/sh\n", mtime: 1500000001 },
  { name: "etc/shadow", data: "secret", mode: 0o640, uid: 0, gid: 42 },
  { name: "usr/", type: "dir", mode: 0o750, uid: 5, gid: 6, mtime: 1500000002 },
  { name: "usr/bin/", type: "dir" },
  {
    name: "usr/bin/sudo",
    data: "#!/bin/true\n",
    mode: 0o4755,
    uid: 0,
    gid: 0,
    xattrs: { "security.capability": cap },
  },
  { name: "usr/bin/ping", data: "ping", mode: 0o2755, uid: 1000, gid: 1001, xattrs: { "user.note": "hi" } },
  { name: "usr/bin/pong", type: "link", linkname: "usr/bin/ping", mode: 0o2755, uid: 1000, gid: 1001 },
  { name: "usr/lib/", type: "dir" },
  { name: "usr/lib/libx.so.1", data: "elf" },
  { name: "usr/lib/libx.so", type: "symlink", linkname: "libx.so.1", uid: 7, gid: 8 },
  { name: "tmp/", type: "dir", mode: 0o1777 },
  { name: "dev/", type: "dir" },
  { name: "dev/null", type: "char", devmajor: 1, devminor: 3, mode: 0o666 },
  { name: "dev/sda", type: "block", devmajor: 8, devminor: 0, mode: 0o660, gid: 6 },
  { name: "dev/initctl", type: "fifo", mode: 0o600 },
  { name: "lib", type: "symlink", linkname: "usr/lib" },
  { name: "var/", type: "dir" },
  { name: "var/cache/", type: "dir" },
  { name: "var/cache/a/", type: "dir" },
  { name: "var/cache/a/1", data: "1" },
  { name: "var/cache/b", data: "b" },
  { name: "var/log/", type: "dir" },
  { name: "var/log/messages", data: "log" },
  { name: `deep/${"x".repeat(120)}/${"y".repeat(120)}`, data: "deep", gnu: true },
  { name: "opt/pax-time", data: "t", mtime: 1500000003.5 },
  { name: "opt/pax-ns", data: "t", pax: { mtime: "1500000003.123456789", atime: "1500000009.000000001" } },
  { name: "opt/pax-dir/", type: "dir", pax: { mtime: "1500000004.987654321" } },
];

describe("apply", () => {
  it("creates every entry type with owners, modes, times and xattrs like GNU tar does", async () => {
    const tar = buildTar(layerA);
    const ours = fresh("ours");
    const r = await apply(ours, tar, "plain", undefined, 777);
    assert.equal(r.digest, sha256(tar));
    assert.equal(r.size, tar.length);
    // nanosecond PAX times (checked before anything reads the files and moves their atime)
    const ns = lstatSync(join(ours, "opt/pax-ns"), { bigint: true });
    assert.equal(ns.mtimeNs, 1500000003123456789n);
    assert.equal(ns.atimeNs, 1500000009000000001n);
    assert.equal(lstatSync(join(ours, "opt/pax-dir"), { bigint: true }).mtimeNs, 1500000004987654321n);
    const gnu = fresh("gnu");
    const x = spawnSync(
      "tar",
      ["--xattrs", "--xattrs-include=*", "--same-owner", "--numeric-owner", "-xpf", "-", "-C", gnu],
      {
        input: tar,
      },
    );
    assert.equal(x.status, 0, x.stderr.toString());
    // the parents the tar leaves implicit (opt/, deep/, deep/xxx…/) get the time of their
    // creation in both trees, which may fall on either side of a second: set alike to compare
    for (const t of [ours, gnu])
      for (const implicit of ["opt", "deep", `deep/${"x".repeat(120)}`]) utimesSync(join(t, implicit), 1, 1);
    assert.deepEqual(describeTree(ours), describeTree(gnu));
    // spot checks
    assert.equal(lstatSync(join(ours, "usr/bin/sudo")).mode & 0o7777, 0o4755);
    assert.equal(lstatSync(join(ours, "usr/bin/ping")).mode & 0o7777, 0o2755);
    assert.equal(lstatSync(join(ours, "usr/bin/ping")).uid, 1000);
    assert.equal(lstatSync(join(ours, "usr/bin/ping")).ino, lstatSync(join(ours, "usr/bin/pong")).ino);
    assert.deepEqual(lgetxattr(join(ours, "usr/bin/sudo"), "security.capability"), cap);
    assert.equal(lgetxattr(join(ours, "usr/bin/ping"), "user.note")?.toString(), "hi");
    assert.equal(lstatSync(join(ours, "tmp")).mode & 0o7777, 0o1777);
    assert.ok(lstatSync(join(ours, "dev/null")).isCharacterDevice());
    assert.ok(lstatSync(join(ours, "dev/sda")).isBlockDevice());
    assert.ok(lstatSync(join(ours, "dev/initctl")).isFIFO());
    assert.equal(lstatSync(join(ours, "usr/lib/libx.so")).uid, 7);
    assert.equal(
      lstatSync(join(ours, "usr")).mtimeMs,
      1500000002000,
      "directory times are set after their children",
    );
    assert.equal(lstatSync(join(ours, "opt/pax-time")).mtimeMs, 1500000003500);
  });

  it("keeps names that are not UTF-8 byte for byte, in apply and in diff", async () => {
    const raw = Buffer.from([0x66, 0xff, 0xfe, 0x2e, 0x74, 0x78, 0x74]); // "f\xff\xfe.txt"
    const tar = Buffer.from(
      buildTar([
        { name: "dir/", type: "dir" },
        { name: "dir/PLACEHOLDER", data: "bytes" },
      ]),
    );
    // patch the name field of the second header in place (same length), then fix its checksum
    const h = tar.subarray(512, 1024);
    const at = h.indexOf("PLACEHOLDER");
    h.fill(0, at, at + 11);
    raw.copy(h, at);
    h.fill(0x20, 148, 156);
    let sum = 0;
    for (const c of h) sum += c;
    h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "latin1");
    const d = fresh();
    await apply(d, tar);
    const names = readdirSync(Buffer.from(join(d, "dir")), { encoding: "buffer" });
    assert.deepEqual(names, [raw]);
    const layer: Buffer[] = [];
    for await (const c of writeDiff(fresh("empty"), d)) layer.push(c);
    const back = fresh();
    await applyTar(back, chunks(Buffer.concat(layer)), {});
    assert.deepEqual(readdirSync(Buffer.from(join(back, "dir")), { encoding: "buffer" }), [raw]);
  });

  it("ignores trusted.* xattrs from the archive", async () => {
    const d = fresh();
    await apply(
      d,
      buildTar([{ name: "dir/", type: "dir", xattrs: { "trusted.overlay.opaque": "y", "user.ok": "1" } }]),
    );
    assert.equal(lgetxattr(join(d, "dir"), "trusted.overlay.opaque"), undefined);
    assert.equal(lgetxattr(join(d, "dir"), "user.ok")?.toString(), "1");
  });

  it("replaces what is there: non-directories replace anything, directories merge", async () => {
    const d = fresh();
    await apply(d, buildTar(layerA));
    await apply(
      d,
      buildTar([
        { name: "var/cache", data: "now a file" }, // file replaces a directory tree
        { name: "etc/passwd/", type: "dir", mode: 0o700 }, // directory replaces a file
        { name: "usr/", type: "dir", mode: 0o755, uid: 0, gid: 0 }, // directory over directory merges
        { name: "lib", data: "not through the link" }, // file replaces a symlink, not its target
        { name: "var/log/messages", type: "symlink", linkname: "/dev/null" },
        { name: "usr/lib/libx.so.1", data: "elf2" }, // rewrite a file
      ]),
    );
    assert.equal(readFileSync(join(d, "var/cache"), "utf8"), "now a file");
    assert.ok(lstatSync(join(d, "etc/passwd")).isDirectory());
    assert.equal(lstatSync(join(d, "etc/passwd")).mode & 0o777, 0o700);
    assert.equal(lstatSync(join(d, "usr")).mode & 0o777, 0o755);
    assert.equal(lstatSync(join(d, "usr")).uid, 0);
    assert.ok(existsSync(join(d, "usr/bin/sudo")), "merged directory keeps its content");
    assert.ok(lstatSync(join(d, "lib")).isFile());
    assert.ok(lstatSync(join(d, "usr/lib")).isDirectory());
    assert.equal(readlinkSync(join(d, "var/log/messages")), "/dev/null");
    assert.equal(readFileSync(join(d, "usr/lib/libx.so.1"), "utf8"), "elf2");
  });

  it("follows symlinks in parent directories inside the root (plain mode)", async () => {
    const d = fresh();
    await apply(d, buildTar(layerA));
    // lib -> usr/lib: a later layer writing lib/new lands in usr/lib
    await apply(d, buildTar([{ name: "lib/new.so", data: "n" }]));
    assert.equal(readFileSync(join(d, "usr/lib/new.so"), "utf8"), "n");
    assert.ok(lstatSync(join(d, "lib")).isSymbolicLink());
  });

  it("applies whiteouts and opaque directories in plain mode", async () => {
    const d = fresh();
    await apply(d, buildTar(layerA));
    await apply(
      d,
      buildTar([
        { name: "etc/.wh.shadow", data: "" },
        { name: ".wh.tmp", data: "" },
        { name: "var/", type: "dir" },
        // opaque marker before the new content: old content goes, new stays
        { name: "var/cache/", type: "dir" },
        { name: "var/cache/.wh..wh..opq", data: "" },
        { name: "var/cache/new", data: "new" },
        // opaque marker after new content (out of order): only what came from below goes
        { name: "var/log/", type: "dir" },
        { name: "var/log/fresh", data: "f" },
        { name: "var/log/.wh..wh..opq", data: "" },
        // whiteout of something absent is fine
        { name: "nothere/.wh.nothing", data: "" },
      ]),
    );
    assert.ok(!existsSync(join(d, "etc/shadow")));
    assert.ok(existsSync(join(d, "etc/passwd")));
    assert.ok(!existsSync(join(d, "tmp")));
    assert.deepEqual(describeTree(join(d, "var/cache"), { noTimes: true }), {
      new: describeTree(join(d, "var/cache"), { noTimes: true }).new,
    });
    assert.ok(!existsSync(join(d, "var/cache/a")));
    assert.ok(!existsSync(join(d, "var/log/messages")));
    assert.equal(readFileSync(join(d, "var/log/fresh"), "utf8"), "f");
    assert.ok(!existsSync(join(d, "nothere/.wh.nothing")));
  });

  it("overlay mode writes overlay whiteouts; the mounted result equals plain mode", async () => {
    const layerB: TarEntry[] = [
      { name: "etc/.wh.shadow", data: "" },
      { name: ".wh.tmp", data: "" },
      { name: "var/cache/", type: "dir" },
      { name: "var/cache/.wh..wh..opq", data: "" },
      { name: "var/cache/new", data: "new" },
      // no entries for usr/ and usr/bin/: the upper directories must copy the lower's attributes
      { name: "usr/bin/extra", data: "x", mode: 0o755 },
      { name: "etc/passwd", data: "changed\n" },
    ];
    const lower = fresh("lower");
    await apply(lower, buildTar(layerA), "overlay");
    const upper = fresh("upper");
    await apply(upper, buildTar(layerB), "overlay", [lower]);
    const wh = lstatSync(join(upper, "etc/shadow"));
    assert.ok(wh.isCharacterDevice() && wh.rdev === 0, "whiteout is a 0/0 char device");
    assert.equal(lgetxattr(join(upper, "var/cache"), "trusted.overlay.opaque")?.toString(), "y");
    assert.equal(lstatSync(join(upper, "usr")).mode & 0o7777, 0o750, "parent copied from lower");
    assert.equal(lstatSync(join(upper, "usr")).uid, 5);
    assert.equal(lstatSync(join(upper, "usr")).mtimeMs, 1500000002000);

    const plain = fresh("plain");
    await apply(plain, buildTar(layerA));
    await apply(plain, buildTar(layerB));

    const work = fresh("work");
    const merged = fresh("merged");
    execFileSync("mount", [
      "-t",
      "overlay",
      "overlay",
      "-o",
      `lowerdir=${lower},upperdir=${upper},workdir=${work}`,
      merged,
    ]);
    try {
      assert.deepEqual(
        describeTree(merged, { noDirTimes: true, skipXattrs: ["trusted."] }),
        describeTree(plain, { noDirTimes: true }),
      );
    } finally {
      execFileSync("umount", [merged]);
    }
  });

  it("applies gzip, zstd and mislabelled plain layers through decompress", async () => {
    const tar = buildTar(layerA);
    for (const [compressed, label] of [
      [gzip(tar), "gzip"],
      [zstd(tar), "zstd"],
      [tar, "unknown"],
      [tar, ""],
    ] as const) {
      const d = fresh();
      const r = await applyTar(d, decompress(chunks(compressed, 1000), label), {});
      assert.equal(r.digest, sha256(tar), label);
      assert.equal(readFileSync(join(d, "etc/passwd"), "utf8"), "root:x:0:0::/root:/bin/sh\n");
    }
    await assert.rejects(applyTar(fresh(), decompress(chunks(gzip(tar).subarray(0, 500)), "gzip"), {}));
    await assert.rejects(
      applyTar(fresh(), decompress(chunks(zstd(tar).subarray(0, 500)), "zstd"), {}),
      /zstd/,
    );
  });
});
