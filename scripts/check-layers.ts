// The layering checker run by `make lint`: every relative import under src/ must point to the
// same layer or to a layer below it, as the table in docs/architecture.md says. Biome's
// restricted-import rules match import strings, not where a relative path lands, so a small
// checker that resolves each specifier is simpler and exact.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, normalize, relative, sep } from "node:path";
import { pathToFileURL } from "node:url";

/** Which layers each layer may import (its own is always allowed). */
export const LAYER_RULES: Record<string, readonly string[]> = {
  base: [],
  gen: [],
  sys: ["base"],
  ttrpc: ["base", "gen"],
  grpc: ["base", "gen"],
  config: ["base"],
  // runtime v2 speaks ttrpc to its shims, so ttrpc is a transport below core, like sys
  core: ["base", "gen", "sys", "ttrpc"],
  services: ["base", "gen", "core", "grpc"],
  cri: ["base", "gen", "core", "sys", "grpc"],
  plugins: ["base", "gen", "sys", "ttrpc", "grpc", "config", "core", "services", "cri"],
  "cmd/berthd": ["base", "gen", "sys", "ttrpc", "grpc", "config", "core", "services", "cri", "plugins"],
  // the CLI is a client: it never loads the daemon's services, plugins or CRI server
  "cmd/berth": ["base", "gen", "sys", "grpc", "core"],
  "cmd/publish": ["base", "gen", "ttrpc"],
};

export interface Violation {
  file: string;
  line: number;
  specifier: string;
  why: string;
}

/** The layer of a path relative to the src root, e.g. `core/pull/pull.ts` → `core`. */
export function layerOf(rel: string): string {
  const parts = rel.split(sep).join("/").split("/");
  if (parts.length === 1) return "base"; // src/version.ts and other top-level leaves
  if (parts[0] === "cmd") return `cmd/${parts[1]}`;
  return parts[0]!;
}

const IMPORT_RE = /(?:\bfrom\s*|\bimport\s*\(\s*|^\s*import\s+)"([^"]+)"/gm;

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...sourceFiles(p));
    else if (name.endsWith(".ts") && !name.endsWith(".d.ts")) out.push(p);
  }
  return out;
}

/** A CLI command file registers a command group; only main.ts may import one. */
const isCommandFile = (text: string) => /export function register[A-Z]/.test(text);

export function checkLayers(srcRoot: string): Violation[] {
  const files = sourceFiles(srcRoot);
  const texts = new Map(files.map((f) => [normalize(f), readFileSync(f, "utf8")]));
  const violations: Violation[] = [];
  for (const [file, text] of texts) {
    const rel = relative(srcRoot, file);
    const from = layerOf(rel);
    if (from === "gen") continue;
    const allowed = LAYER_RULES[from];
    const lines = text.split("\n");
    lines.forEach((lineText, i) => {
      for (const m of lineText.matchAll(IMPORT_RE)) {
        const spec = m[1]!;
        if (!spec.startsWith(".")) continue;
        const target = normalize(join(dirname(file), spec.replace(/\.js$/, ".ts")));
        const targetRel = relative(srcRoot, target);
        if (targetRel.startsWith("..")) {
          violations.push({ file: rel, line: i + 1, specifier: spec, why: "imports from outside src/" });
          continue;
        }
        const to = layerOf(targetRel);
        if (allowed === undefined) {
          violations.push({ file: rel, line: i + 1, specifier: spec, why: `unknown layer "${from}"` });
        } else if (to !== from && !allowed.includes(to)) {
          violations.push({
            file: rel,
            line: i + 1,
            specifier: spec,
            why: `layer "${from}" may not import layer "${to}" (allowed: ${allowed.join(", ") || "none"})`,
          });
        } else if (from === "cmd/berth" && to === "cmd/berth" && !rel.endsWith(`${sep}main.ts`)) {
          const targetText = texts.get(target);
          if (targetRel.endsWith(`${sep}main.ts`))
            violations.push({
              file: rel,
              line: i + 1,
              specifier: spec,
              why: "only the entry point is main.ts",
            });
          else if (targetText !== undefined && isCommandFile(text) && isCommandFile(targetText))
            violations.push({
              file: rel,
              line: i + 1,
              specifier: spec,
              why: "a command file imports another command file (share a helper module instead)",
            });
        }
      }
    });
  }
  return violations;
}

function main(argv: string[]): number {
  const root = argv[0] ?? "src";
  const violations = checkLayers(root);
  for (const v of violations)
    process.stderr.write(`${join(root, v.file)}:${v.line}: import "${v.specifier}": ${v.why}\n`);
  if (violations.length > 0) {
    process.stderr.write(`check-layers: ${violations.length} import(s) against the layering\n`);
    return 1;
  }
  process.stdout.write(`check-layers: ${root} follows the layering\n`);
  return 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href)
  process.exitCode = main(process.argv.slice(2));
