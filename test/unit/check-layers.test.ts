// The layering checker that `make lint` runs: the tree follows it, and an upward import, a
// sideways CLI import or an import out of src/ make it (and so `make lint`) fail.
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import { checkLayers, layerOf } from "../../scripts/check-layers.js";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const checker = join(repo, "dist/scripts/check-layers.js");
const tmp = mkdtempSync(join(tmpdir(), "berth-layers-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

function tree(name: string, files: Record<string, string>): string {
  const root = join(tmp, name, "src");
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(dirname(join(root, path)), { recursive: true });
    writeFileSync(join(root, path), text);
  }
  return root;
}

test("layers are named by their top folder (cmd by its program)", () => {
  assert.equal(layerOf("core/pull/pull.ts"), "core");
  assert.equal(layerOf("cmd/berth/run.ts"), "cmd/berth");
  assert.equal(layerOf("version.ts"), "base");
});

test("berth's own src/ follows the layering", () => {
  const out = execFileSync(process.execPath, [checker, join(repo, "src")], { encoding: "utf8" });
  assert.match(out, /follows the layering/);
});

test("an upward import fails the check, naming file, line and the rule", () => {
  const root = tree("upward", {
    "services/thing.ts": "export const x = 1;\n",
    "core/a.ts": 'import { x } from "../services/thing.js";\nexport const y = x;\n',
    "sys/b.ts": 'export { y } from "../core/a.js";\n',
  });
  const v = checkLayers(root);
  assert.deepEqual(
    v.map((x) => [x.file, x.line, x.specifier]),
    [
      ["core/a.ts", 1, "../services/thing.js"],
      ["sys/b.ts", 1, "../core/a.js"],
    ],
  );
  assert.match(v[0]!.why, /layer "core" may not import layer "services"/);
  const r = spawnSync(process.execPath, [checker, root], { encoding: "utf8" });
  assert.equal(r.status, 1);
  assert.match(r.stderr, /core\/a\.ts:1: import "\.\.\/services\/thing\.js"/);
  assert.match(r.stderr, /2 import\(s\) against the layering/);
});

test("dynamic imports and imports from outside src/ are checked too", () => {
  const root = tree("dynamic", {
    "plugins/p.ts": "export const p = 1;\n",
    "core/c.ts": 'export const load = () => import("../plugins/p.js");\n',
    "base/b.ts": 'import "../../elsewhere/x.js";\n',
  });
  const why = checkLayers(root)
    .map((x) => `${x.file} ${x.why}`)
    .sort();
  assert.deepEqual(why, [
    "base/b.ts imports from outside src/",
    'core/c.ts layer "core" may not import layer "plugins" (allowed: base, gen, sys, ttrpc)',
  ]);
});

test("a CLI command file may not import another command file or main.ts; shared helpers are fine", () => {
  const root = tree("cli", {
    "cmd/berth/main.ts": 'import { registerA } from "./a.js";\nimport { registerB } from "./b.js";\n',
    "cmd/berth/shared.ts": "export const flag = 1;\n",
    "cmd/berth/a.ts": 'import { flag } from "./shared.js";\nexport function registerA() { return flag; }\n',
    "cmd/berth/b.ts": 'import { registerA } from "./a.js";\nexport function registerB() { registerA(); }\n',
    "cmd/berth/c.ts": 'import { x } from "./main.js";\nexport const c = x;\n',
  });
  const v = checkLayers(root).map((x) => `${x.file}:${x.line}`);
  assert.deepEqual(v.sort(), ["cmd/berth/b.ts:1", "cmd/berth/c.ts:1"]);
});
