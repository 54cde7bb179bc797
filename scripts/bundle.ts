// Bundles berthd and the berth CLI each into one CommonJS file under dist/bundle/, the files
// bin/berthd.js and bin/berth.js run, and the layer-staging worker berthd starts into a third
// next to them. Why: Node 20 loads an ES module graph file by file (resolve, stat, read, compile
// each of ~270 modules plus their dependencies'), which took about 0.3 s of berthd's ~0.5 s
// start-up, and the per-module records cost ~10 MiB of resident memory. One file per entry loads
// in a fraction of that (docs/performance.md); the CLI, a process per command, starts in ~0.2 s
// instead of ~0.45 s. tsc's output under dist/src stays as it is: the tests and the tools run
// from it.
//
// CommonJS, because bin/run-bundle.js compiles a bundle through vm.Script with a V8 code cache,
// which an ES module cannot use in Node 20. The caches are made here: the CLI's by a run of
// `berth --version`, the daemon's by a start of berthd on throw-away directories, so that it holds
// what V8 compiled on the way to serving (findings 59 and 63).
//
// A CommonJS bundle has no chunks: what berthd imports dynamically (the CRI plugin's code,
// plugins/cri-init.ts) is in the one file, and esbuild defers running it until the import runs.
//
// Native addons (koffi, better-sqlite3) stay external: they are loaded from node_modules at run
// time. So do the modules berthd loads only on demand (prom-client with [metrics], undici on the
// first registry request), which keeps a daemon that never needs them from parsing them.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { build } from "esbuild";

const external = ["koffi", "better-sqlite3", "prom-client", "undici"];

rmSync("dist/bundle", { recursive: true, force: true });

/** The modules that find files or built-ins from their own location get the bundle's. */
const commonJs = {
  bundle: true,
  platform: "node",
  format: "cjs",
  target: "node20",
  external,
  define: { "import.meta.url": "__berthModuleUrl" },
  // strict, as the ES modules bundled were (esbuild's own "use strict" comes after the banner)
  banner: { js: '"use strict";\nvar __berthModuleUrl = require("node:url").pathToFileURL(__filename).href;' },
  sourcemap: "linked",
  logLevel: "warning",
} as const;

await build({ ...commonJs, entryPoints: ["dist/src/cmd/berthd/main.js"], outfile: "dist/bundle/berthd.cjs" });
await build({ ...commonJs, entryPoints: ["dist/src/cmd/berth/main.js"], outfile: "dist/bundle/berth.cjs" });
// stage-thread.js starts it as new URL("./stage-worker.js", import.meta.url): next to berthd.cjs.
// CommonJS too, which the package.json below makes of a .js file here: Node 20 reads an ES
// module's files through libuv's thread pool, which a pull keeps busy with its content writes; a
// thread took 266 ms to start from an ES module with that pool busy, 121 ms from CommonJS
// (finding 64).
await build({
  ...commonJs,
  entryPoints: ["dist/src/core/unpack/stage-worker.js"],
  outfile: "dist/bundle/stage-worker.js",
});
writeFileSync("dist/bundle/package.json", '{ "type": "commonjs" }\n');

// ASCII only: V8 keeps a script's source as one byte per character only when every character
// fits (else two bytes each: 1.4 MB more of berthd's heap), and run-bundle.js reads the bundles as
// latin1. esbuild escapes non-ASCII in strings but leaves it in comments and regular expressions;
// a \uXXXX escape means the same there (UTF-16 units: a pair for a character above U+FFFF).
for (const f of ["dist/bundle/berthd.cjs", "dist/bundle/berth.cjs", "dist/bundle/stage-worker.js"]) {
  const text = readFileSync(f, "utf8");
  const ascii = text.replace(
    /[\u0080-\uffff]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
  if (ascii !== text) writeFileSync(f, ascii);
}

const writing: NodeJS.ProcessEnv = { ...process.env, BERTH_WRITE_CODE_CACHE: "1" };
delete writing.NOTIFY_SOCKET; // the build's berthd is nobody's service

const cli = spawnSync(process.execPath, ["bin/berth.js", "--version"], { env: writing, encoding: "utf8" });
if (cli.status !== 0)
  throw new Error(`bundle: making the CLI's code cache failed: ${cli.stderr || cli.error}`);

// The daemon's cache from a start: one made by `berthd --version` holds only the top level and
// took nothing off a start. Where berthd cannot start (not root), it is made by --version.
if (!(await cacheFromStart())) {
  process.stderr.write("bundle: berthd did not start here; its code cache is made by --version\n");
  const d = spawnSync("bin/berthd.js", ["--version"], { env: writing, encoding: "utf8" });
  if (d.status !== 0) throw new Error(`bundle: making berthd's code cache failed: ${d.stderr || d.error}`);
}

/** Start berthd on throw-away directories until it serves, then stop it: it writes its cache. */
async function cacheFromStart(): Promise<boolean> {
  const dir = mkdtempSync(join(tmpdir(), "berth-bundle-"));
  try {
    const config = join(dir, "config.toml");
    writeFileSync(config, ""); // the defaults, not the machine's /etc/containerd/config.toml
    const address = join(dir, "berthd.sock");
    // bin/berthd.js as a program: its first line's V8 flags are part of what the cache is for
    const args = ["--config", config, "--root", join(dir, "root"), "--state", join(dir, "state")];
    const child = spawn("bin/berthd.js", [...args, "--address", address, "--log-level", "error"], {
      env: writing,
      stdio: "ignore",
    });
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    let gone = false;
    void exited.then(() => {
      gone = true;
    });
    const deadline = Date.now() + 30_000;
    let served = false;
    while (!gone && !served && Date.now() < deadline) {
      served = await accepts(address);
      if (!served) await new Promise((r) => setTimeout(r, 20));
    }
    if (gone) return false;
    child.kill("SIGTERM");
    const code = await exited;
    return served && code === 0 && existsSync("dist/bundle/berthd.cjs.cache");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function accepts(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}
