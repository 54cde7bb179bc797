// removeTree (src/sys/remove-tree.ts): `rm -rf` that removes a small tree with synchronous calls
// on the spot and leaves a tree larger than its budget to fs.promises.rm, never following a
// symbolic link out of the tree.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { removeTree } from "../../src/sys/remove-tree.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

/** `dirs` directories of `files` files each under `root`, plus one nested directory. */
function tree(root: string, dirs: number, files: number): void {
  mkdirSync(join(root, "a", "b", "c"), { recursive: true });
  writeFileSync(join(root, "a", "b", "c", "deep"), "x");
  for (let d = 0; d < dirs; d++) {
    mkdirSync(join(root, `d${d}`));
    for (let f = 0; f < files; f++) writeFileSync(join(root, `d${d}`, `f${f}`), "y");
  }
}

describe("removeTree", () => {
  let dir: string;
  before(async () => {
    dir = await makeTempDir("remove-tree");
  });
  after(async () => {
    await removeTempDir(dir);
  });

  it("removes a small tree before it first yields", async () => {
    const root = join(dir, "small");
    tree(root, 2, 5);
    const done = removeTree(root);
    // the synchronous part ran inside the call: nothing is left for the thread pool
    assert.equal(existsSync(root), false);
    await done;
  });

  it("finishes a tree larger than the budget in the thread pool", async () => {
    const root = join(dir, "large");
    tree(root, 6, 20);
    const done = removeTree(root, 30);
    assert.equal(existsSync(root), true, "the budget ran out: the rest is asynchronous");
    await done;
    assert.equal(existsSync(root), false);
  });

  it("removes links without following them, at the top and inside", async () => {
    const outside = join(dir, "outside");
    mkdirSync(outside);
    writeFileSync(join(outside, "keep"), "k");
    // each link in a tree of its own, so every one is reached by the synchronous walk
    const roots = ["to-dir", "to-file", "dangling"].map((name) => {
      const root = join(dir, `links-${name}`);
      mkdirSync(root);
      writeFileSync(join(root, "plain"), "p");
      return { root, link: join(root, name) };
    });
    symlinkSync(outside, roots[0]!.link);
    symlinkSync(join(outside, "keep"), roots[1]!.link);
    symlinkSync("/nonexistent", roots[2]!.link);
    const top = join(dir, "top-link");
    symlinkSync(outside, top);
    await removeTree(top);
    for (const { root } of roots) {
      const done = removeTree(root);
      assert.equal(existsSync(root), false, `${root}: removed on the spot`);
      await done;
    }
    assert.equal(existsSync(top), false);
    assert.deepEqual(readdirSync(outside), ["keep"]);
  });

  it("removes a lone file, and a missing path is not an error", async () => {
    const f = join(dir, "file");
    writeFileSync(f, "z");
    await removeTree(f);
    assert.equal(existsSync(f), false);
    await removeTree(join(dir, "never-there"));
    await removeTree(join(dir, "never-there", "below"));
  });
});
