// Compares two V8 heap snapshots (berthd's /debug/heapsnapshot): live object count and self size
// per constructor name, largest growth first. For finding what accumulates under churn.
//
//   node dist/scripts/heap-diff.js <before.heapsnapshot> <after.heapsnapshot> [--top N]
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

interface Snapshot {
  snapshot: { meta: { node_fields: string[]; node_types: (string[] | string)[] } };
  nodes: number[];
  strings: string[];
}

function summarize(file: string): Map<string, { count: number; size: number }> {
  const s = JSON.parse(readFileSync(file, "utf8")) as Snapshot;
  const f = s.snapshot.meta.node_fields;
  const width = f.length;
  const iType = f.indexOf("type");
  const iName = f.indexOf("name");
  const iSize = f.indexOf("self_size");
  const types = s.snapshot.meta.node_types[0] as string[];
  const out = new Map<string, { count: number; size: number }>();
  for (let i = 0; i < s.nodes.length; i += width) {
    const type = types[s.nodes[i + iType]!]!;
    const name = type === "object" || type === "closure" ? s.strings[s.nodes[i + iName]!]! : `(${type})`;
    const key = type === "closure" ? `closure ${name}` : name;
    const e = out.get(key) ?? { count: 0, size: 0 };
    e.count++;
    e.size += s.nodes[i + iSize]!;
    out.set(key, e);
  }
  return out;
}

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { top: { type: "string", default: "30" } },
});
if (positionals.length !== 2) {
  console.error("usage: heap-diff <before.heapsnapshot> <after.heapsnapshot> [--top N]");
  process.exit(2);
}
const a = summarize(positionals[0]!);
const b = summarize(positionals[1]!);
const rows = [...b].map(([k, v]) => {
  const o = a.get(k) ?? { count: 0, size: 0 };
  return { k, dCount: v.count - o.count, dSize: v.size - o.size, count: v.count };
});
rows.sort((x, y) => y.dSize - x.dSize);
console.log("Δsize(B)   Δcount    count  constructor");
for (const r of rows.slice(0, Number(values.top)))
  console.log(
    `${String(r.dSize).padStart(9)} ${String(r.dCount).padStart(8)} ${String(r.count).padStart(8)}  ${r.k}`,
  );
