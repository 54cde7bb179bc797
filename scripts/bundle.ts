// Bundles berthd (and the layer-staging worker it starts) into ES modules and the berth CLI into
// one CommonJS file under dist/bundle/, the files bin/berthd.js and bin/berth.js run. Why: Node 20 loads an ES
// module graph file by file (resolve, stat, read, compile each of ~270 modules plus their
// dependencies'), which took about 0.3 s of berthd's ~0.5 s start-up, and the per-module records
// cost ~10 MiB of resident memory.
// One file per entry loads in a fraction of that (docs/performance.md); the CLI, a process per
// command, starts in ~0.27 s instead of ~0.45 s. tsc's output under dist/src stays as it is: the
// tests and the tools run from it.
//
// Modules berthd imports dynamically (the CRI plugin's code, plugins/cri-init.ts) go into chunks
// of their own next to the entries, loaded only when the import runs; code both entries use goes
// into shared chunks.
//
// Native addons (koffi, better-sqlite3) stay external: they are loaded from node_modules at run
// time. So do the modules berthd loads only on demand (prom-client with [metrics], undici on the
// first registry request), which keeps a daemon that never needs them from parsing them.
import { spawnSync } from "node:child_process";
import { rmSync } from "node:fs";
import { build } from "esbuild";

const external = ["koffi", "better-sqlite3", "prom-client", "undici"];

// chunk names change with their contents: a previous build's would pile up
rmSync("dist/bundle", { recursive: true, force: true });

await build({
  entryPoints: {
    berthd: "dist/src/cmd/berthd/main.js",
    // stage-thread.js starts it as new URL("./stage-worker.js", import.meta.url): next to berthd.js
    "stage-worker": "dist/src/core/unpack/stage-worker.js",
  },
  outdir: "dist/bundle",
  bundle: true,
  platform: "node",
  format: "esm",
  splitting: true,
  chunkNames: "[name]-[hash]",
  target: "node20",
  external,
  // CommonJS dependencies inside an ES module bundle call require(): give them Node's
  banner: {
    js: 'import { createRequire as __berthRequire } from "node:module";\nconst require = __berthRequire(import.meta.url);',
  },
  sourcemap: "linked",
  logLevel: "warning",
});

// The CLI, a process per command, as one CommonJS file: bin/berth.js compiles it through
// vm.Script with a V8 code cache, which an ES module cannot use in Node 20 (Node 22's
// module.enableCompileCache does that). The cache is made here, by a run of `berth --version`
// that writes what V8 compiled in it; V8 checks it against the source and Node's version and
// flags, and compiles afresh when it does not match (docs/performance.md, finding 59).
await build({
  entryPoints: ["dist/src/cmd/berth/main.js"],
  outfile: "dist/bundle/berth.cjs",
  bundle: true,
  platform: "node",
  format: "cjs",
  target: "node20",
  external,
  // the modules that find files or built-ins from their own location
  define: { "import.meta.url": "__berthModuleUrl" },
  banner: { js: 'var __berthModuleUrl = require("node:url").pathToFileURL(__filename).href;' },
  sourcemap: "linked",
  logLevel: "warning",
});
const cached = spawnSync(process.execPath, ["bin/berth.js", "--version"], {
  env: { ...process.env, BERTH_WRITE_CODE_CACHE: "1" },
  encoding: "utf8",
});
if (cached.status !== 0)
  throw new Error(`bundle: making the CLI's code cache failed: ${cached.stderr || cached.error}`);
