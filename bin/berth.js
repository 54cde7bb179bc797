#!/usr/bin/env node
// The berth CLI: dist/bundle/berth.cjs, dist/src/cmd/berth/main.js bundled into one CommonJS file
// (scripts/bundle.ts), compiled here with the V8 code cache the build made next to it. The
// bundle starts a command in ~0.2 s instead of ~0.45 s for the module graph file by file; the
// cache takes another ~25 ms off (docs/performance.md, findings 51 and 59): the pull benchmark
// runs `berth images pull`, and every shell completion runs a command.
//
// The cache file is the sha256 of the source it was made from, then V8's data. V8 itself turns
// down data made by another Node version or with other flags, but it tells sources apart only by
// their length: the digest is what keeps a cache from being used with a source it was not made
// from. Without a usable cache the source is compiled as usual.
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire, Module } from "node:module";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { Script } from "node:vm";

const file = fileURLToPath(new URL("../dist/bundle/berth.cjs", import.meta.url));
const cacheFile = `${file}.cache`;
const source = readFileSync(file, "utf8");
const digest = createHash("sha256").update(source).digest();
// the build's run (scripts/bundle.ts) writes the cache of what it compiled when it exits
const writing = process.env.BERTH_WRITE_CODE_CACHE === "1";
delete process.env.BERTH_WRITE_CODE_CACHE;
let cachedData;
let state = "missing";
if (!writing) {
  try {
    const c = readFileSync(cacheFile);
    if (c.length > digest.length && c.subarray(0, digest.length).equals(digest))
      cachedData = c.subarray(digest.length);
    else state = "stale";
  } catch {
    // no cache: compile from source
  }
}
// CommonJS's own wrapper, on the source's first line so that line numbers stay the file's
const script = new Script(`(function (exports, require, module, __filename, __dirname) { ${source}\n})`, {
  filename: file,
  cachedData,
});
if (cachedData) state = script.cachedDataRejected ? "rejected" : "used";
if (writing)
  process.once("exit", () => writeFileSync(cacheFile, Buffer.concat([digest, script.createCachedData()])));
else if (process.env.BERTH_DEBUG_CODE_CACHE === "1") process.stderr.write(`berth: code cache ${state}\n`);
const mod = new Module(file);
mod.filename = file;
script.runInThisContext()(mod.exports, createRequire(file), mod, file, dirname(file));
