// The berth CLI's start is on the path of every command (and of every pull the benchmark times):
// what its modules import at load time is what each run pays for. It talks to the daemon over
// gRPC only, so nothing in its static import graph may load the daemon's native addons (SQLite,
// the FFI), the registry client, or grpc-js (the CLI has its own client on node:http2).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

/** Packages imported at load time from `entry` on, each with the chain of modules that leads to it. */
function staticPackages(entry: string): Map<string, string[]> {
  const parent = new Map<string, string | undefined>([[entry, undefined]]);
  const queue = [entry];
  const found = new Map<string, string[]>();
  const root = path.dirname(path.dirname(path.dirname(entry)));
  while (queue.length > 0) {
    const file = queue.shift()!;
    const text = readFileSync(file, "utf8");
    // `import type` is erased by tsc; dynamic import() is loaded on demand, not at start
    for (const m of text.matchAll(
      /^(?:import|export)\s+(?!type\s)[^;]*?\sfrom\s+"([^"]+)"|^import\s+"([^"]+)"/gm,
    )) {
      const spec = m[1] ?? m[2]!;
      if (spec.startsWith(".")) {
        const dep = path.resolve(path.dirname(file), spec);
        if (!parent.has(dep)) {
          parent.set(dep, file);
          queue.push(dep);
        }
      } else if (!spec.startsWith("node:") && !found.has(spec)) {
        const chain: string[] = [];
        for (let f: string | undefined = file; f; f = parent.get(f)) chain.unshift(path.relative(root, f));
        found.set(spec, chain);
      }
    }
  }
  return found;
}

test("the berth CLI loads no native addon, no registry client and no grpc-js when it starts", () => {
  const entry = fileURLToPath(new URL("../../src/cmd/berth/main.js", import.meta.url));
  const pkgs = staticPackages(entry);
  assert.ok(pkgs.has("commander"), "the walk follows the CLI's imports");
  for (const heavy of ["better-sqlite3", "koffi", "undici", "prom-client", "@grpc/grpc-js"]) {
    const chain = pkgs.get(heavy);
    assert.equal(chain, undefined, `${heavy} is imported at start through ${chain?.join(" -> ")}`);
  }
});
