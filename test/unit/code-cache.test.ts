// berthd and the CLI start from V8 code caches the build makes (scripts/bundle.ts,
// bin/run-bundle.js): a cache V8 rejects would go unnoticed, the program only slower. This checks
// the built ones are used, and that without a usable one (none, another source's, other V8 flags)
// each still runs.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { copyFileSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { berthdFirstLine } from "../helpers/daemons.js";

const repoRoot = fileURLToPath(new URL("../../..", import.meta.url));

const programs = [
  // the daemon runs as a program: its first line gives Node the flags its cache was made under
  {
    name: "berthd",
    run: (nodeArgs: string[]) =>
      nodeArgs.length
        ? [
            process.execPath,
            ...berthdFirstLine(join(repoRoot, "bin/berthd.js")).nodeArgs,
            ...nodeArgs,
            "bin/berthd.js",
          ]
        : ["bin/berthd.js"],
    bundle: "berthd.cjs",
    version: /^berthd v\d+\.\d+\.\d+/,
  },
  {
    name: "berth",
    run: (nodeArgs: string[]) => [process.execPath, ...nodeArgs, "bin/berth.js"],
    bundle: "berth.cjs",
    version: /^berth v\d+\.\d+\.\d+/,
  },
];

for (const p of programs) {
  const cache = join(repoRoot, "dist/bundle", `${p.bundle}.cache`);
  const version = (nodeArgs: string[] = []): { out: string; cache: string } => {
    const [cmd, ...args] = p.run(nodeArgs);
    const r = spawnSync(cmd!, [...args, "--version"], {
      cwd: repoRoot,
      env: { ...process.env, BERTH_DEBUG_CODE_CACHE: "1" },
      encoding: "utf8",
    });
    assert.equal(r.status, 0, r.stderr);
    return {
      out: r.stdout,
      cache: new RegExp(`^${p.name}: code cache (\\w+)`, "m").exec(r.stderr)?.[1] ?? "",
    };
  };

  test(`${p.name} runs from the build's code cache, and without a usable one`, () => {
    const built = version();
    assert.equal(built.cache, "used");
    assert.match(built.out, p.version);
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
}

test("the daemon's cache was made by a start of berthd, not only by --version", () => {
  // A cache made by --version holds the top level only and took nothing off a start; one made
  // after berthd served holds the plugins' and the server's code as well (finding 63).
  const daemon = readFileSync(join(repoRoot, "dist/bundle/berthd.cjs.cache")).length;
  const cli = readFileSync(join(repoRoot, "dist/bundle/berth.cjs.cache")).length;
  assert.ok(daemon > 2 * cli, `berthd's cache is ${daemon} bytes, the CLI's ${cli}`);
});

test("the bundles call no import(): code from a V8 code cache has no loader for it in Node 20", () => {
  // esbuild turns an import() of a module inside the bundle into a call of its deferred code;
  // one of a module left outside (undici, prom-client) would stay, and fail at run time
  for (const f of ["berthd.cjs", "berth.cjs"]) {
    const text = readFileSync(join(repoRoot, "dist/bundle", f), "latin1");
    const call = /\bimport\(\s*["'`]/.exec(text);
    assert.equal(call, null, `${f}: ${call ? text.slice(call.index - 60, call.index + 60) : ""}`);
  }
});

test("the bundles are ASCII, so V8 keeps their source one byte per character", () => {
  for (const f of ["berthd.cjs", "berth.cjs", "stage-worker.js"]) {
    const at = readFileSync(join(repoRoot, "dist/bundle", f)).findIndex((b) => b > 0x7f);
    assert.equal(at, -1, `${f}: a non-ASCII byte at ${at}`);
  }
});
