// Hostile layers: nothing may be created or changed outside the root. Each escape is either
// contained (taken as rooted, the way containerd's fs.RootPath does) or refused with an error
// naming the entry. Both whiteout modes are exercised.
import assert from "node:assert/strict";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  statSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { after, before, beforeEach, describe, it } from "node:test";
import { ApplyError, applyTar } from "../../src/core/diff/apply.js";
import { buildTar, chunks, type TarEntry } from "../helpers/tarbuild.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";
import { describeTree } from "../helpers/tree.js";

let sandbox: string;
let outside: string;
let seq = 0;
let before_: ReturnType<typeof describeTree>;
let outsideMtime: number;

before(async () => {
  sandbox = await makeTempDir("diff-safety");
  outside = join(sandbox, "outside");
  mkdirSync(outside);
  writeFileSync(join(outside, "victim"), "precious");
  mkdirSync(join(outside, "sub"));
  writeFileSync(join(outside, "sub", "keep"), "keep");
  utimesSync(outside, 1000000000, 1000000000);
  outsideMtime = statSync(outside).mtimeMs;
  before_ = describeTree(outside);
});
after(async () => {
  await removeTempDir(sandbox);
});

let root: string;
beforeEach(() => {
  root = join(sandbox, `root-${seq++}`);
  mkdirSync(root);
});

/** The outside tree and the sandbox itself are untouched. */
function assertOutsideIntact(): void {
  assert.deepEqual(describeTree(outside), before_);
  assert.equal(statSync(outside).mtimeMs, outsideMtime);
  const top = readdirSync(sandbox).filter((n) => !n.startsWith("root-"));
  assert.deepEqual(top, ["outside"]);
  assert.equal(readFileSync("/etc/passwd", "utf8").length > 0, true);
  assert.equal(lstatSync("/etc/passwd").nlink, 1, "/etc/passwd got no new hard link");
}

async function applyBoth(entries: TarEntry[]): Promise<{ plain?: unknown; overlay?: unknown }> {
  const tar = buildTar(entries);
  const out: { plain?: unknown; overlay?: unknown } = {};
  for (const mode of ["plain", "overlay"] as const) {
    const r = join(root, mode);
    mkdirSync(r);
    try {
      await applyTar(r, chunks(tar, 1024), { mode });
    } catch (err) {
      out[mode] = err;
    }
    assertOutsideIntact();
  }
  return out;
}

/** A relative path from <root>/<mode> up to the sandbox's outside dir (3 levels: mode, root-N, sandbox). */
const up = "../../outside";

describe("apply safety", () => {
  it("contains ../ names inside the root", async () => {
    const r = await applyBoth([
      { name: `${up}/evil`, data: "x" },
      { name: "../../../../../../../../tmp/evil-dotdot", data: "x" },
      { name: "a/../../../outside/victim", data: "x" },
    ]);
    assert.equal(r.plain, undefined);
    assert.ok(existsSync(join(root, "plain", "outside/evil")), "clamped to the root");
    assert.ok(existsSync(join(root, "plain", "tmp/evil-dotdot")));
    assert.ok(!existsSync("/tmp/evil-dotdot"));
  });

  it("contains absolute names inside the root", async () => {
    const r = await applyBoth([
      { name: `${outside}/victim`, data: "pwned" },
      { name: "/etc/cron.d/evil", data: "x" },
    ]);
    assert.equal(r.plain, undefined);
    assert.equal(readFileSync(join(root, "plain", outside, "victim"), "utf8"), "pwned");
    assert.ok(!existsSync("/etc/cron.d/evil"));
  });

  it("writes through a symlink to / only inside the root", async () => {
    const r = await applyBoth([
      { name: "escape", type: "symlink", linkname: "/" },
      { name: `escape${outside}/victim`, data: "pwned" },
      { name: `escape${outside}/new`, data: "pwned" },
      { name: "rel", type: "symlink", linkname: "../../../../../../.." },
      { name: `rel${outside}/rel-new`, data: "pwned" },
      { name: "dirlink", type: "symlink", linkname: outside },
      { name: "dirlink/sub/", type: "dir", mode: 0o777 },
      { name: "dirlink/viadir", data: "pwned" },
    ]);
    assert.equal(r.plain, undefined, String(r.plain));
    assert.equal(r.overlay, undefined, String(r.overlay));
    for (const mode of ["plain", "overlay"]) {
      assert.equal(readFileSync(join(root, mode, outside, "new"), "utf8"), "pwned");
      assert.ok(lstatSync(join(root, mode, "escape")).isSymbolicLink());
    }
  });

  it("contains symlink chains", async () => {
    const r = await applyBoth([
      { name: "a", type: "symlink", linkname: "b" },
      { name: "b", type: "symlink", linkname: "c/../../.." },
      { name: "c/", type: "dir" },
      { name: "d", type: "symlink", linkname: "a/../a/../a" },
      { name: `a${outside}/chain1`, data: "x" },
      { name: `d${outside}/chain2`, data: "x" },
      { name: "loop1", type: "symlink", linkname: "loop2" },
      { name: "loop2", type: "symlink", linkname: "loop1" },
    ]);
    assert.equal(r.plain, undefined, String(r.plain));
    assert.ok(existsSync(join(root, "plain", outside, "chain1")));
    assert.ok(existsSync(join(root, "plain", outside, "chain2")));
    root = join(sandbox, `root-${seq++}`);
    mkdirSync(root);
    const loop = await applyBoth([
      { name: "loop1", type: "symlink", linkname: "loop2" },
      { name: "loop2", type: "symlink", linkname: "loop1" },
      { name: "loop1/x", data: "x" },
    ]);
    assert.ok(loop.plain instanceof ApplyError);
    assert.match((loop.plain as Error).message, /"loop1\/x".*too many links/);
  });

  it("does not write through a symlink at the entry's own path", async () => {
    const r = await applyBoth([
      { name: "link", type: "symlink", linkname: `${outside}/victim` },
      { name: "link", data: "pwned" },
      { name: "dlink", type: "symlink", linkname: outside },
      { name: "dlink/", type: "dir", mode: 0o777 },
      { name: "dev", type: "symlink", linkname: `${outside}/victim` },
      { name: "dev", type: "fifo" },
    ]);
    assert.equal(r.plain, undefined, String(r.plain));
    assert.ok(lstatSync(join(root, "plain", "link")).isFile());
    assert.ok(lstatSync(join(root, "plain", "dlink")).isDirectory());
  });

  it("refuses hard links to files outside the root", async () => {
    for (const linkname of ["/etc/passwd", "../../../../../../etc/passwd", `${up}/victim`]) {
      root = join(sandbox, `root-${seq++}`);
      mkdirSync(root);
      const r = await applyBoth([{ name: "hl", type: "link", linkname }]);
      assert.ok(r.plain instanceof ApplyError, `${linkname}: ${String(r.plain)}`);
      assert.match((r.plain as Error).message, /"hl"/);
      assert.ok(r.overlay instanceof ApplyError);
    }
    // through a symlink: resolved inside the root, so it links the root's own file
    root = join(sandbox, `root-${seq++}`);
    mkdirSync(root);
    const r = await applyBoth([
      { name: "etc/", type: "dir" },
      { name: "etc/passwd", data: "inside" },
      { name: "hostetc", type: "symlink", linkname: "/etc" },
      { name: "hl", type: "link", linkname: "hostetc/passwd" },
      { name: "up", type: "symlink", linkname: "../../../.." },
      { name: "hl2", type: "link", linkname: "up/etc/passwd" },
    ]);
    assert.equal(r.plain, undefined, String(r.plain));
    assert.equal(lstatSync(join(root, "plain", "hl")).ino, lstatSync(join(root, "plain", "etc/passwd")).ino);
    assert.equal(lstatSync(join(root, "plain", "hl2")).ino, lstatSync(join(root, "plain", "etc/passwd")).ino);
  });

  it("keeps whiteouts inside the root and refuses whiteouts of . and ..", async () => {
    const r = await applyBoth([
      { name: `${up}/.wh.victim`, data: "" },
      { name: "s", type: "symlink", linkname: "/" },
      { name: `s${outside}/.wh.victim`, data: "" },
      { name: `s${outside}/sub/.wh..wh..opq`, data: "" },
      { name: `s${outside}/.wh.sub`, data: "" },
      { name: "t", type: "symlink", linkname: outside },
      { name: "t/.wh..wh..opq", data: "" },
      { name: "t/.wh.sub", data: "" },
    ]);
    assert.equal(r.plain, undefined, String(r.plain));
    assert.equal(r.overlay, undefined, String(r.overlay));
    for (const bad of [".wh..", ".wh...", "x/.wh.", "x/.wh.."]) {
      root = join(sandbox, `root-${seq++}`);
      mkdirSync(root);
      const b = await applyBoth([{ name: bad, data: "" }]);
      assert.ok(b.plain instanceof ApplyError, `${bad}: ${String(b.plain)}`);
      assert.match((b.plain as Error).message, /invalid whiteout name/);
      assert.ok(b.overlay instanceof ApplyError);
    }
  });

  it("sets directory times at the end only inside the root, even after the path was replaced", async () => {
    const r = await applyBoth([
      { name: "d/", type: "dir", mtime: 1234567890 },
      { name: "p/", type: "dir" },
      { name: "p/c/", type: "dir", mtime: 1234567890 },
      { name: "d", type: "symlink", linkname: outside },
      { name: "p", type: "symlink", linkname: "/" },
    ]);
    assert.equal(r.plain, undefined, String(r.plain));
  });

  it("devices and owners only as root", async () => {
    const d = join(root, "rootless");
    mkdirSync(d);
    await applyTar(
      d,
      chunks(
        buildTar([
          { name: "f", data: "x", uid: 1234, gid: 1234 },
          { name: "null", type: "char", devmajor: 1, devminor: 3 },
          { name: "fifo", type: "fifo" },
        ]),
      ),
      { rootless: true },
    );
    assert.equal(lstatSync(join(d, "f")).uid, process.getuid!());
    assert.ok(!existsSync(join(d, "null")));
    assert.ok(lstatSync(join(d, "fifo")).isFIFO());
  });
});
