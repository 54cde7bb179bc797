// The CLI starts from a V8 code cache the build makes (scripts/bundle.ts, bin/berth.js): a cache
// V8 rejects would go unnoticed, the CLI only slower. This checks the built one is used, and that
// without a usable one (none, another source's, other V8 flags) the CLI still runs.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { copyFileSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const repoRoot = fileURLToPath(new URL("../../..", import.meta.url));
const bin = join(repoRoot, "bin/berth.js");
const cache = join(repoRoot, "dist/bundle/berth.cjs.cache");

function version(nodeArgs: string[] = []): { out: string; cache: string } {
  const r = spawnSync(process.execPath, [...nodeArgs, bin, "--version"], {
    env: { ...process.env, BERTH_DEBUG_CODE_CACHE: "1" },
    encoding: "utf8",
  });
  assert.equal(r.status, 0, r.stderr);
  return { out: r.stdout, cache: /code cache (\w+)/.exec(r.stderr)?.[1] ?? "" };
}

test("the CLI runs from the build's code cache, and without a usable one", () => {
  const built = version();
  assert.equal(built.cache, "used");
  assert.match(built.out, /^berth v\d+\.\d+\.\d+/);
  // made with other V8 flags than these: V8 turns it down
  assert.deepEqual(version(["--no-opt"]), { out: built.out, cache: "rejected" });
  const saved = `${cache}.saved-by-test`;
  renameSync(cache, saved);
  try {
    assert.deepEqual(version(), { out: built.out, cache: "missing" });
    // made from another source (a digest that is not this bundle's): not given to V8, which
    // would take it for this source's if only their lengths matched
    const other = readFileSync(saved);
    other[0] = other[0]! ^ 0xff;
    writeFileSync(cache, other);
    assert.deepEqual(version(), { out: built.out, cache: "stale" });
  } finally {
    copyFileSync(saved, cache);
    rmSync(saved);
  }
  assert.equal(version().cache, "used");
});
