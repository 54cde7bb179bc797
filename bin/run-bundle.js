// Runs one of the CommonJS bundles scripts/bundle.ts makes (dist/bundle/berthd.cjs, berth.cjs),
// compiled with the V8 code cache the build wrote next to it. Node 20 compiles an ES module from
// source at every start (Node 22's module.enableCompileCache is what caches that), and a
// CommonJS file given to vm.Script can take V8's cached bytecode instead: berthd starts ~30-40 ms
// sooner and every `berth` command ~20 ms (docs/performance.md, findings 59 and 63).
//
// The cache file is the sha256 of the source it was made from, then V8's data. V8 itself turns
// down data made by another Node version or with other flags, but it tells sources apart only by
// their length: the digest is what keeps a cache from being used with a source it was not made
// from. Without a usable cache the source is compiled as usual.
//
// Code compiled this way has no loader for import() in Node 20 (vm's option for one is
// experimental, and lost when the code comes from the cache): the bundles load what stays outside
// them with require(), and a test keeps import() out of them.
//
// bin/ is CommonJS (bin/package.json): an ES module entry made Node set up its ES module loader
// first, ~10 ms of every start (docs/performance.md, finding 67).
//
// BERTH_WRITE_CODE_CACHE=1 (the build's runs) writes the cache of what V8 compiled when the
// process exits; BERTH_DEBUG_CODE_CACHE=1 prints whether the cache was used.
const { createHash } = require("node:crypto");
const { readFileSync, writeFileSync } = require("node:fs");
const { createRequire, Module } = require("node:module");
const { basename, dirname } = require("node:path");
const { Script } = require("node:vm");

/** Compile and run the bundle `file` as CommonJS's loader would, with its code cache. */
function runBundle(file) {
  const mod = new Module(file);
  mod.filename = file;
  compile(file)(mod.exports, createRequire(file), mod, file, dirname(file));
}

// The source and the cache are locals here: berthd runs for days, and neither is needed once V8
// has compiled the script (V8 keeps its own copy of the source).
function compile(file) {
  const cacheFile = `${file}.cache`;
  const bytes = readFileSync(file);
  const digest = createHash("sha256").update(bytes).digest();
  const writing = process.env.BERTH_WRITE_CODE_CACHE === "1";
  // not for the processes this one starts (shims, runc)
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
  // CommonJS's wrapper, on the source's first line so that line numbers stay the file's; strict,
  // as the ES modules it was bundled from are. The build checks the bundle is ASCII: latin1
  // reads it as it is, without decoding UTF-8.
  const script = new Script(
    `(function (exports, require, module, __filename, __dirname) { "use strict"; ${bytes.toString("latin1")}\n})`,
    { filename: file, cachedData },
  );
  if (cachedData) state = script.cachedDataRejected ? "rejected" : "used";
  if (writing)
    process.once("exit", () => writeFileSync(cacheFile, Buffer.concat([digest, script.createCachedData()])));
  else if (process.env.BERTH_DEBUG_CODE_CACHE === "1")
    process.stderr.write(`${basename(file).replace(/\.cjs$/, "")}: code cache ${state}\n`);
  return script.runInThisContext();
}

module.exports = { runBundle };
