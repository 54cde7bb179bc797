// `make reliability`: runs every group of the reliability suite (test/reliability/*.test.ts) at
// full size, one file after another, then prints one table: group, cases tried, failures, what
// was checked. Exits 1 when any group failed or a file's tests failed.
//
//   node dist/scripts/reliability.js [--seed N] [group-file-substring …]
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { seed: { type: "string" } },
});
const here = path.dirname(new URL(import.meta.url).pathname);
const dir = path.resolve(here, "../test/reliability");
const files = readdirSync(dir)
  .filter((f) => f.endsWith(".test.js"))
  .filter((f) => positionals.length === 0 || positionals.some((p) => f.includes(p)))
  .sort();
const tmp = mkdtempSync(path.join(tmpdir(), "berth-reliability-"));
const reportFile = path.join(tmp, "report.jsonl");
let failedFiles = 0;
const started = Date.now();
for (const f of files) {
  process.stderr.write(`[reliability] ${f}\n`);
  const r = spawnSync(process.execPath, ["--test", "--test-concurrency=1", path.join(dir, f)], {
    stdio: ["ignore", "inherit", "inherit"],
    env: {
      ...process.env,
      BERTH_RELIABILITY: "full",
      BERTH_RELIABILITY_REPORT: reportFile,
      ...(values.seed ? { BERTH_RELIABILITY_SEED: values.seed } : {}),
    },
  });
  if (r.status !== 0) failedFiles++;
}
let lines: {
  group: string;
  cases: number;
  failures: number;
  checked: string;
  seed: number;
  notes?: string[];
}[] = [];
try {
  lines = readFileSync(reportFile, "utf8")
    .trim()
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l));
} catch {
  // no group reported
}
rmSync(tmp, { recursive: true, force: true });
const rows = [["group", "cases", "failures", "seed", "checked"]];
for (const l of lines) rows.push([l.group, String(l.cases), String(l.failures), String(l.seed), l.checked]);
const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
const fmt = (r: string[]) =>
  r.map((x, c) => (c === 1 || c === 2 ? x.padStart(widths[c]!) : x.padEnd(widths[c]!))).join("  ");
console.log(
  `\nreliability suite: ${files.length} group files, ${((Date.now() - started) / 1000).toFixed(0)} s\n`,
);
console.log(fmt(rows[0]!));
console.log(widths.map((w) => "-".repeat(w)).join("  "));
for (const r of rows.slice(1)) console.log(fmt(r));
for (const l of lines) for (const n of l.notes ?? []) console.log(`  ${l.group}: ${n}`);
const failures = lines.reduce((a, l) => a + l.failures, 0);
if (failedFiles > 0 || failures > 0) {
  console.log(`\n${failedFiles} group file(s) with failing tests, ${failures} failing case(s)`);
  process.exitCode = 1;
}
