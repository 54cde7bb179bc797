// The overlayfs snapshotter against the real kernel: mount shapes, chains, whiteouts, long
// lowerdir lists (new mount API), removal rules, restart, cleanup. Needs root.
import assert from "node:assert/strict";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { BerthError } from "../../src/base/errdefs.js";
import type { Mount } from "../../src/base/mount.js";
import { mountAll, unmountAll } from "../../src/core/mount/mount.js";
import { splitLowerdir } from "../../src/core/mount/options.js";
import { diskUsage } from "../../src/core/snapshots/fsutil.js";
import { checkOverlaySupport, OverlaySnapshotter, UPPERDIR_LABEL } from "../../src/core/snapshots/overlay.js";
import { MOUNT_DATA_MAX } from "../../src/sys/mount.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const indexOff = existsSync("/sys/module/overlay/parameters/index") ? ["index=off"] : [];

function kind(k: string, message?: string | RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof BerthError, `expected BerthError, got ${String(err)}`);
    assert.equal(err.kind, k);
    if (typeof message === "string") assert.equal(err.message, message);
    else if (message) assert.match(err.message, message);
    return true;
  };
}

let dir: string;
let n = 0;

/** Mount `mounts` on a fresh dir, run fn, always unmount. */
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

function newSnapshotter(name: string, opts: ConstructorParameters<typeof OverlaySnapshotter>[1] = {}) {
  return new OverlaySnapshotter(join(dir, name), opts);
}

describe("overlayfs snapshotter", () => {
  before(async () => {
    dir = await makeTempDir("snap-overlay");
  });
  after(async () => {
    await removeTempDir(dir);
  });

  it("passes the support check (d_type, multi-lower mount)", async () => {
    await checkOverlaySupport(join(dir, "check"));
    assert.deepEqual(readdirSync(join(dir, "check")), []);
  });

  it("returns containerd's mount shapes", async () => {
    const sn = newSnapshotter("shapes");
    try {
      const root = join(dir, "shapes", "snapshots");
      const fs = (id: number) => join(root, String(id), "fs");
      const work = (id: number) => join(root, String(id), "work");
      assert.deepEqual(await sn.prepare("a", "", {}), [
        { type: "bind", source: fs(1), options: ["rw", "rbind"] },
      ]);
      await sn.commit("A", "a", {});
      assert.deepEqual(await sn.prepare("b", "A", {}), [
        {
          type: "overlay",
          source: "overlay",
          options: [...indexOff, `workdir=${work(2)}`, `upperdir=${fs(2)}`, `lowerdir=${fs(1)}`],
        },
      ]);
      await sn.commit("B", "b", {});
      assert.deepEqual(await sn.view("v1", "A", {}), [
        { type: "bind", source: fs(1), options: ["ro", "rbind"] },
      ]);
      assert.deepEqual(await sn.view("v2", "B", {}), [
        { type: "overlay", source: "overlay", options: [...indexOff, `lowerdir=${fs(2)}:${fs(1)}`] },
      ]);
      assert.deepEqual(await sn.view("v0", "", {}), [
        { type: "bind", source: fs(5), options: ["ro", "rbind"] },
      ]);
      assert.deepEqual(await sn.mounts("v2"), await sn.mounts("v2"));
      // a view has no work dir; an active one has
      assert.equal(existsSync(work(4)), false);
      assert.equal(existsSync(work(2)), true);
      await assert.rejects(
        sn.mounts("A"),
        kind(
          "failed precondition",
          "failed to get active mount: requested snapshot A not active or view: failed precondition",
        ),
      );
      await assert.rejects(sn.mounts("nope"), kind("not found"));
    } finally {
      await sn.close();
    }
  });

  it("adds mount_options (before index=off) and the upperdir label when configured", async () => {
    const sn = newSnapshotter("opts", { mountOptions: ["metacopy=off"], upperdirLabel: true });
    try {
      await sn.prepare("a", "", {});
      await sn.commit("A", "a", { "containerd.io/snapshot/x": "1" });
      const [m] = await sn.prepare("b", "A", {});
      assert.deepEqual(m!.options.slice(0, 1 + indexOff.length), ["metacopy=off", ...indexOff]);
      const info = await sn.stat("A");
      assert.equal(info.labels[UPPERDIR_LABEL], join(dir, "opts", "snapshots", "1", "fs"));
      assert.equal(info.labels["containerd.io/snapshot/x"], "1");
      const listed = await sn.list();
      assert.equal(
        listed.find((i) => i.name === "b")!.labels[UPPERDIR_LABEL],
        join(dir, "opts", "snapshots", "2", "fs"),
      );
      // the mount works with the extra option
      await withMounted([m!], (root) => assert.deepEqual(readdirSync(root), []));
    } finally {
      await sn.close();
    }
  });

  it("stacks layers: lower files show, deletions through the overlay become whiteouts", async () => {
    const sn = newSnapshotter("chain");
    try {
      await withMounted(await sn.prepare("l1", "", {}), (root) => {
        writeFileSync(join(root, "base.txt"), "base");
        writeFileSync(join(root, "gone.txt"), "to be deleted");
        mkdirSync(join(root, "etc"));
        writeFileSync(join(root, "etc", "conf"), "v1");
      });
      await sn.commit("L1", "l1", {});
      const u1 = await sn.usage("L1");
      assert.ok(u1.inodes >= 5, `inodes ${u1.inodes}`);
      assert.ok(u1.size > 0);

      await withMounted(await sn.prepare("l2", "L1", {}), (root) => {
        assert.equal(readFileSync(join(root, "base.txt"), "utf8"), "base");
        unlinkSync(join(root, "gone.txt"));
        writeFileSync(join(root, "etc", "conf"), "v2");
        writeFileSync(join(root, "new.txt"), "new");
      });
      // the deletion is a whiteout (0/0 character device) in l2's upper dir
      const upper2 = join(dir, "chain", "snapshots", "2", "fs");
      const wh = lstatSync(join(upper2, "gone.txt"));
      assert.ok(wh.isCharacterDevice());
      assert.equal(wh.rdev, 0);
      const activeUsage = await sn.usage("l2");
      await sn.commit("L2", "l2", {});
      assert.deepEqual(await sn.usage("L2"), activeUsage);

      const view = await sn.view("v", "L2", {});
      assert.equal(view[0]!.type, "overlay");
      await withMounted(view, (root) => {
        assert.deepEqual(readdirSync(root).sort(), ["base.txt", "etc", "new.txt"]);
        assert.equal(readFileSync(join(root, "etc", "conf"), "utf8"), "v2");
        assert.throws(() => writeFileSync(join(root, "x"), "x"), /EROFS/);
      });
      // the bottom layer alone still has the file
      await withMounted(await sn.view("v1", "L1", {}), (root) => {
        assert.equal(readFileSync(join(root, "gone.txt"), "utf8"), "to be deleted");
      });

      // the new upper dir takes its owner from the parent's
      const { chownSync } = await import("node:fs");
      chownSync(join(dir, "chain", "snapshots", "1", "fs"), 1234, 5678);
      await sn.prepare("owned", "L1", {});
      const st = statSync(join(dir, "chain", "snapshots", "5", "fs"));
      assert.deepEqual([st.uid, st.gid], [1234, 5678]);
    } finally {
      await sn.close();
    }
  });

  it("measures a committed snapshot's usage on the first ask, once, and keeps it across a restart", async () => {
    let sn = newSnapshotter("lazy-usage");
    try {
      await withMounted(await sn.prepare("a", "", {}), (root) => {
        writeFileSync(join(root, "one"), Buffer.alloc(20_000, 1));
        mkdirSync(join(root, "d"));
        writeFileSync(join(root, "d", "two"), "two");
      });
      await sn.commit("A", "a", {}); // no measurement given: none taken now
      const upper = join(dir, "lazy-usage", "snapshots", "1", "fs");
      const walked = await diskUsage(upper);
      assert.equal(walked.inodes, 4); // root, one, d, d/two
      assert.deepEqual(await sn.usage("A"), walked);
      // recorded: a file slipped into the committed tree behind the snapshotter's back (which
      // nothing may do) is not seen, as a committed record in containerd would not see it
      writeFileSync(join(upper, "stray"), Buffer.alloc(8192, 2));
      assert.deepEqual(await sn.usage("A"), walked);
      await sn.close();
      sn = newSnapshotter("lazy-usage");
      assert.deepEqual(await sn.usage("A"), walked);
      // a measurement the caller made (a staged layer's) is kept as given
      await sn.prepare("b", "A", {});
      await sn.commit("B", "b", {}, { size: 12_288, inodes: 3 });
      assert.deepEqual(await sn.usage("B"), { size: 12_288, inodes: 3 });
      // the commit itself walks nothing: what the tree holds at the first ask is what counts
      await sn.prepare("d", "B", {});
      await sn.commit("D", "d", {});
      const upperD = join(dir, "lazy-usage", "snapshots", "3", "fs");
      assert.equal((await diskUsage(upperD)).inodes, 1);
      writeFileSync(join(upperD, "late"), "x");
      assert.equal((await sn.usage("D")).inodes, 2);
      // removed before its first measurement: not found, as for any snapshot that is gone
      await sn.prepare("c", "B", {});
      await sn.commit("C", "c", {});
      await sn.remove("C");
      await assert.rejects(sn.usage("C"), kind("not found"));
    } finally {
      await sn.close();
    }
  });

  it("enforces containerd's rules with its errors", async () => {
    const sn = newSnapshotter("rules");
    try {
      await sn.prepare("a", "", {});
      await assert.rejects(
        sn.prepare("a", "", {}),
        kind("already exists", "failed to create snapshot: snapshot a: already exists"),
      );
      await assert.rejects(
        sn.prepare("b", "a", {}),
        kind(
          "invalid argument",
          'failed to create snapshot: parent "a" is not committed snapshot: invalid argument',
        ),
      );
      await assert.rejects(
        sn.prepare("b", "nope", {}),
        kind("not found", 'failed to create snapshot: missing parent "nope" bucket: not found'),
      );
      await sn.commit("A", "a", {});
      await assert.rejects(sn.commit("A2", "A", {}), kind("failed precondition", /is not active/));
      await assert.rejects(sn.commit("x", "missing", {}), kind("not found"));
      await sn.prepare("c", "A", {});
      await sn.view("v", "A", {});
      await assert.rejects(
        sn.commit("V", "v", {}),
        kind(
          "failed precondition",
          'failed to commit snapshot: snapshot "v" is not active: failed precondition',
        ),
      );
      await assert.rejects(
        sn.remove("A"),
        kind(
          "failed precondition",
          "failed to remove: cannot remove snapshot with child: failed precondition",
        ),
      );
      await sn.prepare("d", "", {});
      await assert.rejects(sn.commit("A", "d", {}), kind("already exists", /committed snapshot A/));
      await sn.remove("c");
      await sn.remove("v");
      await sn.remove("A");
      await assert.rejects(sn.stat("A"), kind("not found"));
      await assert.rejects(sn.remove("A"), kind("not found"));
      assert.deepEqual(
        (await sn.list()).map((i) => i.name),
        ["d"],
      );
    } finally {
      await sn.close();
    }
  });

  it("keeps removed directories for cleanup (async remove) or deletes them (sync remove)", async () => {
    const asyncSn = newSnapshotter("async", { asyncRemove: true });
    const syncSn = newSnapshotter("sync", { asyncRemove: false });
    try {
      for (const sn of [asyncSn, syncSn]) {
        await sn.prepare("a", "", {});
        await sn.remove("a");
      }
      assert.deepEqual(readdirSync(join(dir, "async", "snapshots")), ["rm-1"]);
      assert.deepEqual(readdirSync(join(dir, "sync", "snapshots")), []);
      // debris of a crash is cleaned up too; a new snapshot's id is never an old directory's
      mkdirSync(join(dir, "async", "snapshots", "new-leftover"));
      await asyncSn.cleanup();
      assert.deepEqual(readdirSync(join(dir, "async", "snapshots")), []);
      await asyncSn.prepare("b", "", {});
      assert.deepEqual(readdirSync(join(dir, "async", "snapshots")), ["2"]);
    } finally {
      await asyncSn.close();
      await syncSn.close();
    }
  });

  it("keeps the tree across close and reopen", async () => {
    let sn = newSnapshotter("restart");
    await sn.prepare("a", "", { "containerd.io/snapshot/l": "x" });
    await sn.commit("A", "a", { "containerd.io/snapshot/l": "y" });
    await sn.prepare("b", "A", {});
    await sn.commit("B", "b", {});
    await sn.view("v", "B", {});
    const before = await sn.list();
    const mountsBefore = await sn.mounts("v");
    await sn.close();
    // a directory left by a crash must not be taken for the next snapshot's
    mkdirSync(join(dir, "restart", "snapshots", "9"));
    sn = newSnapshotter("restart");
    try {
      assert.deepEqual(await sn.list(), before);
      assert.deepEqual(
        before.map((i) => [i.name, i.parent, i.kind]),
        [
          ["A", "", "committed"],
          ["B", "A", "committed"],
          ["v", "B", "view"],
        ],
      );
      assert.deepEqual((await sn.stat("A")).labels, { "containerd.io/snapshot/l": "y" });
      assert.deepEqual(await sn.mounts("v"), mountsBefore);
      await sn.prepare("c", "B", {});
      const ids = readdirSync(join(dir, "restart", "snapshots")).sort();
      assert.ok(ids.includes("10"), `ids ${ids}`);
    } finally {
      await sn.close();
    }
  });

  it("updates labels with field paths", async () => {
    const sn = newSnapshotter("labels");
    try {
      await sn.prepare("a", "", { x: "1", y: "2" });
      let i = await sn.update({ name: "a", labels: { x: "9", z: "3" } }, ["labels.x"]);
      assert.deepEqual(i.labels, { x: "9", y: "2" });
      i = await sn.update({ name: "a", labels: {} }, ["labels.y"]);
      assert.deepEqual(i.labels, { x: "9" });
      i = await sn.update({ name: "a", labels: { q: "1" } }, []);
      assert.deepEqual(i.labels, { q: "1" });
      await assert.rejects(sn.update({ name: "a", labels: {} }, ["parent"]), kind("invalid argument"));
      assert.deepEqual((await sn.stat("a")).labels, { q: "1" });
    } finally {
      await sn.close();
    }
  });

  it("mounts a 150-layer chain whose lowerdir option is far beyond one page", async () => {
    // Long root path: every lowerdir entry is ~290 bytes (more than fsconfig takes as a string, so
    // layers go by file descriptor), the whole option ~45 kB.
    const longRoot = join(dir, "l".repeat(120), "m".repeat(110));
    const sn = new OverlaySnapshotter(longRoot);
    try {
      let parent = "";
      for (let i = 0; i < 150; i++) {
        const key = `layer-${i}`;
        const mounts = await sn.prepare(key, parent, {});
        // write straight into the upper dir (mounting 150 times would only slow the test)
        const upper =
          i === 0 ? mounts[0]!.source : mounts[0]!.options.find((o) => o.startsWith("upperdir="))!.slice(9);
        writeFileSync(join(upper, `f${i}`), String(i));
        if (i === 75) writeFileSync(join(upper, "shared"), "middle");
        if (i === 149) writeFileSync(join(upper, "shared"), "top");
        await sn.commit(`L${i}`, key, {});
        parent = `L${i}`;
      }
      const active = await sn.prepare("top", parent, {});
      const lower = active[0]!.options.find((o) => o.startsWith("lowerdir="))!;
      assert.equal(lower.split(":").length, 150);
      assert.ok(Buffer.byteLength(active[0]!.options.join(",")) > MOUNT_DATA_MAX * 10);
      assert.ok(Buffer.byteLength(lower.split(":")[0]!) > 255);
      await withMounted(active, (root) => {
        const names = readdirSync(root);
        assert.equal(names.length, 151);
        assert.equal(readFileSync(join(root, "f0"), "utf8"), "0");
        assert.equal(readFileSync(join(root, "f149"), "utf8"), "149");
        assert.equal(readFileSync(join(root, "shared"), "utf8"), "top");
        writeFileSync(join(root, "written"), "through the overlay");
        unlinkSync(join(root, "f0"));
      });
      const upper = active[0]!.options.find((o) => o.startsWith("upperdir="))!.slice(9);
      assert.equal(readFileSync(join(upper, "written"), "utf8"), "through the overlay");
      assert.ok(lstatSync(join(upper, "f0")).isCharacterDevice());
      // and read-only (a view of all 150)
      await withMounted(await sn.view("all", parent, {}), (root) => {
        assert.equal(readdirSync(root).length, 151);
      });
      // mount flags still apply on the new-API path: ro with an upper dir, nosuid
      const flagged = [{ ...active[0]!, options: [...active[0]!.options, "ro", "nosuid"] }];
      await withMounted(flagged, (root) => {
        assert.throws(() => writeFileSync(join(root, "x"), "x"), /EROFS/);
        const line = readFileSync("/proc/self/mountinfo", "utf8")
          .split("\n")
          .find((l) => l.split(" ")[4] === root)!;
        assert.match(line.split(" ")[5]!, /^ro,nosuid/);
      });
    } finally {
      await sn.close();
    }
  });

  it("splits lowerdir values like overlay does", () => {
    assert.deepEqual(splitLowerdir("/a:/b:/c"), { lower: ["/a", "/b", "/c"], data: [] });
    assert.deepEqual(splitLowerdir("/a\\:x:/b::/d1::/d2"), { lower: ["/a:x", "/b"], data: ["/d1", "/d2"] });
  });
});
