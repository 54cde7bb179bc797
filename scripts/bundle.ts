// Bundles berthd (and the layer-staging worker it starts) and the berth CLI into one ES module
// each under dist/bundle/, the files bin/berthd.js and bin/berth.js run. Why: Node 20 loads an ES
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
import { rmSync } from "node:fs";
import { build } from "esbuild";

const external = ["koffi", "better-sqlite3", "prom-client", "undici"];

// chunk names change with their contents: a previous build's would pile up
rmSync("dist/bundle", { recursive: true, force: true });

await build({
  entryPoints: {
    berthd: "dist/src/cmd/berthd/main.js",
    berth: "dist/src/cmd/berth/main.js",
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
