// Summarises a V8 .cpuprofile (node --cpu-prof; bench runs write them when BERTHD_CPU_PROF_DIR is
// set): self time per function and per source file, and the share of idle, GC and program time,
// so a profile can be read and compared without a browser. Used for docs/performance.md.
//
//   node dist/scripts/profile-summary.js <file.cpuprofile> [--top N] [--by function|file|both]
//            [--inclusive <substring>]   (total time under frames whose name or file matches)
//            [--callers <function name>] (self time of that function by its nearest program caller)
//            [--under <function name>]   (self time by function among the samples under that frame;
//                                         "name file:line" as printed picks one of several namesakes)
//            [--last <seconds>] [--skip-end <seconds>]
//                                        (only the samples of the last seconds of the profile, ending
//                                         that many seconds before its end: an idle span after a
//                                         benchmark's calls, without the daemon's shutdown)
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    top: { type: "string", default: "25" },
    by: { type: "string", default: "both" },
    inclusive: { type: "string", multiple: true },
    callers: { type: "string", multiple: true },
    under: { type: "string", multiple: true },
    last: { type: "string" },
    "skip-end": { type: "string", default: "0" },
  },
});
if (positionals.length !== 1) {
  console.error(
    "usage: profile-summary <file.cpuprofile> [--top N] [--by function|file|both] [--inclusive S]",
  );
  process.exit(2);
}
const prof = JSON.parse(readFileSync(positionals[0]!, "utf8")) as Profile;
const top = Number(values.top);

const byId = new Map<number, ProfileNode>();
const parent = new Map<number, number>();
for (const n of prof.nodes) {
  byId.set(n.id, n);
  for (const c of n.children ?? []) parent.set(c, n.id);
}

// The window of sample times (µs, the profile's clock) that counts; the whole profile by default.
const windowEnd = prof.endTime - Number(values["skip-end"]) * 1e6;
const windowStart = values.last === undefined ? prof.startTime : windowEnd - Number(values.last) * 1e6;
if (!(windowStart < windowEnd)) {
  console.error("profile-summary: --last and --skip-end leave no time to summarise");
  process.exit(2);
}

// Self time per node id, from the sample stream (each delta belongs to the sample it precedes).
const self = new Map<number, number>();
let total = 0;
let at = prof.startTime;
for (let i = 0; i < prof.samples.length; i++) {
  const dt = prof.timeDeltas[i] ?? 0;
  at += dt;
  if (at < windowStart || at > windowEnd) continue;
  total += dt;
  self.set(prof.samples[i]!, (self.get(prof.samples[i]!) ?? 0) + dt);
}

const shortUrl = (url: string) =>
  url
    .replace(/^file:\/\/.*?\/dist\//, "")
    .replace(/^file:\/\/.*?\/node_modules\//, "node_modules/")
    .replace(/^node:/, "node:");
const frameName = (f: CallFrame) =>
  `${f.functionName || "(anonymous)"} ${f.url ? `${shortUrl(f.url)}:${f.lineNumber + 1}` : ""}`.trim();

const fnTotals = new Map<string, number>();
const fileTotals = new Map<string, number>();
for (const [id, us] of self) {
  const f = byId.get(id)!.callFrame;
  fnTotals.set(frameName(f), (fnTotals.get(frameName(f)) ?? 0) + us);
  const file = f.url ? shortUrl(f.url) : f.functionName;
  fileTotals.set(file, (fileTotals.get(file) ?? 0) + us);
}

const ms = (us: number) => (us / 1000).toFixed(1);
const pct = (us: number) => `${((100 * us) / total).toFixed(1)}%`;
const idle = fnTotals.get("(idle)") ?? 0;
const busy = total - idle;
const span =
  values.last === undefined ? "" : ` in the ${values.last} s ending ${values["skip-end"]} s before the end`;
console.log(
  `profile: ${ms(total)} ms sampled${span}, ${ms(busy)} ms busy (${pct(busy)}), GC ${ms(fnTotals.get("(garbage collector)") ?? 0)} ms`,
);

function table(title: string, m: Map<string, number>) {
  console.log(`\n${title} (self time, % of busy)`);
  const rows = [...m].filter(([k]) => k !== "(idle)").sort((a, b) => b[1] - a[1]);
  for (const [k, us] of rows.slice(0, top))
    console.log(`${ms(us).padStart(9)} ms ${((100 * us) / busy).toFixed(1).padStart(5)}%  ${k}`);
}
if (values.by !== "file") table("functions", fnTotals);
if (values.by !== "function") table("files", fileTotals);

// Inclusive time under matching frames (each sample counted once even when frames recurse).
for (const needle of values.inclusive ?? []) {
  let under = 0;
  for (const [id, us] of self) {
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const f = byId.get(cur)!.callFrame;
      if (f.functionName.includes(needle) || f.url.includes(needle)) {
        under += us;
        break;
      }
    }
  }
  console.log(
    `\ninclusive under "${needle}": ${ms(under)} ms (${((100 * under) / busy).toFixed(1)}% of busy)`,
  );
}

// Where a hot native or library function is called from: its self time grouped by the nearest
// caller frame inside the program (dist/src, or the bundle berthd runs from), three frames deep.
for (const name of values.callers ?? []) {
  const sites = new Map<string, number>();
  for (const [id, us] of self) {
    if (byId.get(id)!.callFrame.functionName !== name) continue;
    const chain: string[] = [];
    for (let cur = parent.get(id); cur !== undefined && chain.length < 3; cur = parent.get(cur)) {
      const f = byId.get(cur)!.callFrame;
      if (f.url.includes("/dist/src/") || f.url.includes("/dist/bundle/")) chain.push(frameName(f));
    }
    const key = chain.join(" < ") || "(outside the program)";
    sites.set(key, (sites.get(key) ?? 0) + us);
  }
  console.log(`\ncallers of ${name}:`);
  for (const [k, us] of [...sites].sort((a, b) => b[1] - a[1]).slice(0, top))
    console.log(`${ms(us).padStart(9)} ms  ${k}`);
}

// What the time under a frame is spent on: self time by function, among the samples that have a
// frame of that name on their stack.
for (const name of values.under ?? []) {
  const fns = new Map<string, number>();
  let sum = 0;
  for (const [id, us] of self) {
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const fr = byId.get(cur)!.callFrame;
      if (fr.functionName !== name && frameName(fr) !== name) continue;
      const f = frameName(byId.get(id)!.callFrame);
      fns.set(f, (fns.get(f) ?? 0) + us);
      sum += us;
      break;
    }
  }
  console.log(`\nunder ${name} (${ms(sum)} ms), self time by function:`);
  for (const [k, us] of [...fns].sort((a, b) => b[1] - a[1]).slice(0, top))
    console.log(`${ms(us).padStart(9)} ms  ${k}`);
}
