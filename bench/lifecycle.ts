// Container lifecycle benchmark (bucketbench style): N containers, each created, started, stopped
// (SIGKILL + wait for the exit) and deleted, by 1, 4 and 8 workers, driven by the real ctr against
// berthd and against the real containerd (same shim, containerd-shim-runc-v2, and the same runc)
// in the same run. Phases per container:
//
//   create  `ctr c create IMAGE ID busybox sleep 300`
//   start   `ctr t start --null-io -d ID`
//   stop    `ctr t kill -s SIGKILL ID`, then Tasks/Wait (a gRPC call, issued before the kill)
//   delete  `ctr t delete ID` + `ctr c rm ID`
//
// Shown: per phase median and p95 (ms), containers/s per worker count, berthd/containerd ratios,
// each daemon's peak RSS (VmHWM) and CPU seconds (utime+stime) over its whole lifecycle run. The
// "raw" column is the floor: `runc create/start/kill/delete` alone on a prepared bundle. RSS is
// also split: the anonymous part (the daemon's own heap and stacks, peak sampled every 100 ms
// during the timed runs) and the file-backed part at the end (pages of the executable and its
// libraries that the process has mapped: for berthd mostly the node binary, docs/performance.md
// finding 45).
//
//   node dist/bench/lifecycle.js [--quick] [--n N] [--workers 1,4,8] [--only containerd|berthd]
//                                [--skip-raw] [--group] [--json FILE]
//
// --group measures shim grouping: every container carries the OCI annotation
// `io.containerd.runc.v2.group`, and a keeper container of that group runs through the whole run,
// so each container joins the keeper's running shim (containerd-shim-runc-v2 groups tasks this
// way, under both daemons) instead of starting one and stopping it again.
import { execFileSync, spawn } from "node:child_process";
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";
import { Tasks } from "../src/gen/containerd/services/tasks/v1/tasks_pb.js";
import { Connection } from "../src/grpc/client.js";
import { reap, setChildSubreaper } from "../src/sys/reaper.js";
import { ctr, ok, run } from "../test/helpers/ctr.js";
import {
  CRI_PLUGIN,
  type Daemon,
  killShimsOf,
  startBerthd,
  startContainerd,
} from "../test/helpers/daemons.js";
import { buildBusyboxImage, pushImage } from "../test/helpers/images.js";
import { startRegistry } from "../test/helpers/registry.js";
import { makeTempDir, removeTempDir } from "../test/helpers/tmp.js";
import {
  cpuSeconds,
  DAEMONS,
  type DaemonName,
  fmt,
  fmtBytes,
  fmtRatio,
  median,
  nowMs,
  p95,
  procStatus,
  renderTable,
} from "./lib.js";

const { values: opt } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    n: { type: "string" },
    workers: { type: "string", default: "1,4,8" },
    only: { type: "string" },
    "skip-raw": { type: "boolean", default: false },
    group: { type: "boolean", default: false },
    json: { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  },
});

if (opt.help) {
  console.log(
    "usage: node dist/bench/lifecycle.js [--quick] [--n N] [--workers 1,4,8] [--only containerd|berthd]\n" +
      "                                    [--skip-raw] [--group] [--json FILE]\n" +
      "  --quick   20 containers per worker count (default 100)\n" +
      "  --group   every container joins one running shim (annotation io.containerd.runc.v2.group)",
  );
  process.exit(0);
}

const N = opt.n ? Number(opt.n) : opt.quick ? 20 : 100;
if (!Number.isInteger(N) || N <= 0) throw new Error(`--n wants a positive integer, got ${opt.n}`);
const WORKERS = opt.workers.split(",").map((w) => {
  const n = Number(w);
  if (!Number.isInteger(n) || n <= 0)
    throw new Error(`--workers wants positive integers, got ${opt.workers}`);
  return n;
});
if (opt.only !== undefined && !DAEMONS.includes(opt.only as DaemonName)) {
  throw new Error(`--only wants containerd or berthd, got ${opt.only}`);
}
const WANTED: DaemonName[] = opt.only ? [opt.only as DaemonName] : [...DAEMONS];
const NS = "bench-lifecycle";
const GROUP_ANNOTATION = "io.containerd.runc.v2.group";
const GROUP_ARGS = opt.group ? ["--annotation", `${GROUP_ANNOTATION}=bench`] : [];
const PHASES = ["create", "start", "stop", "delete"] as const;
type Phase = (typeof PHASES)[number];
type Column = DaemonName | "raw";

const log = (msg: string) => process.stderr.write(`[bench] ${msg}\n`);

interface RunStats {
  phases: Record<Phase, number[]>;
  wallMs: number;
  failures: string[];
  /** The daemon's CPU seconds over the run (not for raw runc). */
  cpuS?: number;
}

const emptyStats = (): RunStats => ({
  phases: { create: [], start: [], stop: [], delete: [] },
  wallMs: 0,
  failures: [],
});

/** Runs `job(i)` for i < total with `workers` in parallel; returns the wall time. */
async function pool(total: number, workers: number, job: (i: number) => Promise<void>): Promise<number> {
  let next = 0;
  const start = nowMs();
  await Promise.all(
    Array.from({ length: Math.min(workers, total) }, async () => {
      for (;;) {
        const i = next++;
        if (i >= total) return;
        await job(i);
      }
    }),
  );
  return nowMs() - start;
}

// ------------------------------------------------------------------------------------------------
// Through a daemon, with the real ctr

async function lifecycleDaemon(d: Daemon, ref: string, workers: number, prefix: string): Promise<RunStats> {
  const s = emptyStats();
  const conn = new Connection(d.address);
  const tasks = conn.client(Tasks);
  const c = (args: string[]) => ctr(d.address, args, { namespace: NS, timeoutMs: 120_000 });
  const phase = async (p: Phase, fn: () => Promise<void>) => {
    const t = nowMs();
    await fn();
    s.phases[p].push(nowMs() - t);
  };
  // with --group: the keeper holds the group's shim for the whole run
  const keeper = `${prefix}-keeper`;
  if (opt.group) {
    ok(await c(["c", "create", ...GROUP_ARGS, ref, keeper, "busybox", "sleep", "3000"]), "keeper");
    ok(await c(["t", "start", "--null-io", "-d", keeper]), "keeper start");
  }
  try {
    s.wallMs = await pool(N, workers, async (i) => {
      const id = `${prefix}-${i}`;
      try {
        await phase("create", async () => {
          ok(await c(["c", "create", ...GROUP_ARGS, ref, id, "busybox", "sleep", "300"]), `c create ${id}`);
        });
        await phase("start", async () => {
          ok(await c(["t", "start", "--null-io", "-d", id]), `t start ${id}`);
        });
        await phase("stop", async () => {
          const waiting = tasks.wait({ containerId: id }, { namespace: NS });
          waiting.catch(() => {});
          ok(await c(["t", "kill", "-s", "SIGKILL", id]), `t kill ${id}`);
          await waiting;
        });
        await phase("delete", async () => {
          ok(await c(["t", "delete", id]), `t delete ${id}`);
          ok(await c(["c", "rm", id]), `c rm ${id}`);
        });
      } catch (err) {
        s.failures.push((err as Error).message.split("\n")[0]!);
        await c(["t", "delete", "-f", id]).catch(() => {});
        await c(["c", "rm", id]).catch(() => {});
      }
    });
  } finally {
    if (opt.group) {
      await c(["t", "kill", "-s", "SIGKILL", keeper]).catch(() => {});
      await tasks.wait({ containerId: keeper }, { namespace: NS }).catch(() => {});
      await c(["t", "delete", "-f", keeper]).catch(() => {});
      await c(["c", "rm", keeper]).catch(() => {});
    }
    conn.close();
  }
  return s;
}

// ------------------------------------------------------------------------------------------------
// runc alone on prepared bundles (the floor)

async function prepareBundle(dir: string): Promise<string> {
  const bundle = path.join(dir, "bundle");
  mkdirSync(path.join(bundle, "rootfs/bin"), { recursive: true });
  for (const sub of ["proc", "dev", "sys", "tmp", "etc"])
    mkdirSync(path.join(bundle, "rootfs", sub), { recursive: true });
  copyFileSync("/bin/busybox", path.join(bundle, "rootfs/bin/busybox"));
  execFileSync("chmod", ["755", path.join(bundle, "rootfs/bin/busybox")]);
  execFileSync("runc", ["spec", "--bundle", bundle]);
  const spec = JSON.parse(readFileSync(path.join(bundle, "config.json"), "utf8"));
  spec.process.terminal = false;
  spec.process.args = ["/bin/busybox", "sleep", "300"];
  spec.root = { path: path.join(bundle, "rootfs"), readonly: true };
  writeFileSync(path.join(bundle, "config.json"), JSON.stringify(spec));
  return bundle;
}

async function lifecycleRaw(
  bundle: string,
  root: string,
  workers: number,
  prefix: string,
): Promise<RunStats> {
  const s = emptyStats();
  const runc = (args: string[]) => run("runc", ["--root", root, ...args], { timeoutMs: 60_000 });
  const phase = async (p: Phase, fn: () => Promise<void>) => {
    const t = nowMs();
    await fn();
    s.phases[p].push(nowMs() - t);
  };
  s.wallMs = await pool(N, workers, async (i) => {
    const id = `${prefix}-${i}`;
    try {
      let pid = 0;
      await phase("create", async () => {
        // the container inherits runc's stdio: give it none, so nothing waits on its pipes
        await new Promise<void>((resolve, reject) => {
          const child = spawn("runc", ["--root", root, "create", "--bundle", bundle, id], {
            stdio: "ignore",
          });
          child.once("error", reject);
          child.once("close", (code) =>
            code === 0 ? resolve() : reject(new Error(`runc create ${id}: exit ${code}`)),
          );
        });
      });
      pid = JSON.parse(ok(await runc(["state", id]))).pid;
      await phase("start", async () => {
        ok(await runc(["start", id]), `runc start ${id}`);
      });
      await phase("stop", async () => {
        ok(await runc(["kill", id, "KILL"]), `runc kill ${id}`);
        // the init process is our child (we are a subreaper): wait for it to exit
        for (;;) {
          const r = reap(pid);
          if (r !== "running") break;
          await sleep(1);
        }
      });
      await phase("delete", async () => {
        ok(await runc(["delete", id]), `runc delete ${id}`);
      });
    } catch (err) {
      s.failures.push((err as Error).message.split("\n")[0]!);
      await runc(["delete", "--force", id]).catch(() => {});
    }
  });
  return s;
}

// ------------------------------------------------------------------------------------------------

/** A daemon's resources over its timed runs (bytes, CPU seconds). */
interface Usage {
  peakRss: number;
  endRss: number;
  peakAnon: number;
  endFile: number;
  cpu: number;
}

async function main(): Promise<void> {
  setChildSubreaper(true);
  const results = new Map<string, RunStats>(); // `${column}/${workers}`
  const usage: Partial<Record<DaemonName, Usage>> = {};
  const reg = await startRegistry();
  const tmp = await makeTempDir("bench-lifecycle");
  const daemons: Daemon[] = [];
  try {
    await pushImage(reg.url, "bench/busybox", "1", buildBusyboxImage());
    const ref = `${reg.host}/bench/busybox:1`;
    for (const name of WANTED) {
      log(`starting ${name}`);
      // Both daemons run their built-in GC settings, as a node would: containerd used to run here
      // with its collector off while berthd's ran after every deletion (docs/performance.md, 41).
      const d =
        name === "berthd"
          ? await startBerthd({ config: "version = 2\n", disabledPlugins: [CRI_PLUGIN] })
          : await startContainerd({ disabledPlugins: [CRI_PLUGIN] });
      daemons.push(d);
      ok(await ctr(d.address, ["images", "pull", "--plain-http", ref], { namespace: NS }), `${name}: pull`);
      // warm-up: one container through the whole cycle
      await lifecycleDaemon(d, ref, 1, "warm").then((s) => {
        if (s.failures.length > 0) log(`${name} warm-up: ${s.failures[0]}`);
      });
    }
    // same run: per worker count, each daemon in turn (alternating which goes first)
    for (const [wi, w] of WORKERS.entries()) {
      const order = wi % 2 === 0 ? [...WANTED] : [...WANTED].reverse();
      for (const name of order) {
        const d = daemons[WANTED.indexOf(name)]!;
        const cpu0 = cpuSeconds(d.pid);
        log(`${name}: ${N} containers, ${w} workers`);
        const u = usage[name] ?? { peakRss: 0, endRss: 0, peakAnon: 0, endFile: 0, cpu: 0 };
        const sampler = setInterval(() => {
          u.peakAnon = Math.max(u.peakAnon, procStatus(d.pid, "RssAnon"));
        }, 100);
        const s = await lifecycleDaemon(d, ref, w, `lc${w}`).finally(() => clearInterval(sampler));
        s.cpuS = cpuSeconds(d.pid) - cpu0;
        u.cpu += s.cpuS;
        u.peakRss = procStatus(d.pid, "VmHWM");
        u.endRss = procStatus(d.pid, "VmRSS");
        u.peakAnon = Math.max(u.peakAnon, procStatus(d.pid, "RssAnon"));
        u.endFile = procStatus(d.pid, "RssFile");
        usage[name] = u;
        results.set(`${name}/${w}`, s);
        if (s.failures.length > 0)
          log(`${name}/${w}: ${s.failures.length} failures, first: ${s.failures[0]}`);
      }
    }
    if (!opt["skip-raw"]) {
      const bundle = await prepareBundle(tmp);
      const root = path.join(tmp, "runc-root");
      mkdirSync(root);
      for (const w of WORKERS) {
        log(`raw runc: ${N} containers, ${w} workers`);
        const s = await lifecycleRaw(bundle, root, w, `raw${w}`);
        results.set(`raw/${w}`, s);
        if (s.failures.length > 0) log(`raw/${w}: ${s.failures.length} failures, first: ${s.failures[0]}`);
      }
    }
  } finally {
    for (const d of daemons) {
      killShimsOf(d.address);
      await d.cleanup();
    }
    await removeTempDir(tmp);
    await reg.cleanup();
  }

  // ---- report
  const columns: Column[] = [...WANTED, ...(opt["skip-raw"] ? [] : (["raw"] as const))];
  const header = ["metric", "workers", ...columns, ...(WANTED.length === 2 ? ["berthd/containerd"] : [])];
  const rows: string[][] = [];
  const get = (col: Column, w: number) => results.get(`${col}/${w}`);
  for (const w of WORKERS) {
    for (const p of PHASES) {
      for (const [label, f] of [
        ["median", median],
        ["p95", p95],
      ] as const) {
        const vals = columns.map((col) => f(get(col, w)?.phases[p] ?? []));
        const row = [`${p} ${label} (ms)`, String(w), ...vals.map(fmt)];
        if (WANTED.length === 2)
          row.push(fmtRatio(vals[columns.indexOf("berthd")]!, vals[columns.indexOf("containerd")]!));
        rows.push(row);
      }
    }
    const rate = columns.map((col) => {
      const s = get(col, w);
      return s ? (N - s.failures.length) / (s.wallMs / 1000) : Number.NaN;
    });
    const row = ["containers/s", String(w), ...rate.map(fmt)];
    if (WANTED.length === 2)
      row.push(fmtRatio(rate[columns.indexOf("berthd")]!, rate[columns.indexOf("containerd")]!));
    rows.push(row);
    // Per run, so the first (V8 still compiling berthd's code, docs/performance.md finding 57)
    // and the later ones can be told apart; the "daemon CPU" row below is their sum.
    const perContainer = columns.map((col) => {
      const s = get(col, w);
      return s?.cpuS === undefined ? Number.NaN : (s.cpuS * 1000) / Math.max(1, N - s.failures.length);
    });
    const cpuRow = [
      "daemon CPU per container (ms)",
      String(w),
      ...perContainer.map((v) => (Number.isNaN(v) ? "—" : fmt(v))),
    ];
    if (WANTED.length === 2)
      cpuRow.push(
        fmtRatio(perContainer[columns.indexOf("berthd")]!, perContainer[columns.indexOf("containerd")]!),
      );
    rows.push(cpuRow);
  }
  // one row per resource: each daemon's value, then the ratio
  const resources: [label: string, pick: (u: Usage) => number, show: (n: number) => string][] = [
    ["daemon peak RSS (VmHWM)", (u) => u.peakRss, fmtBytes],
    ["daemon RSS at end", (u) => u.endRss, fmtBytes],
    ["  anonymous, peak (RssAnon)", (u) => u.peakAnon, fmtBytes],
    ["  file-backed at end (RssFile)", (u) => u.endFile, fmtBytes],
    ["daemon CPU (s)", (u) => u.cpu, fmt],
  ];
  for (const [label, pick, show] of resources) {
    const row = [
      label,
      "all",
      ...columns.map((col) => (col === "raw" || !usage[col] ? "—" : show(pick(usage[col]!)))),
    ];
    if (WANTED.length === 2 && usage.berthd && usage.containerd)
      row.push(fmtRatio(pick(usage.berthd), pick(usage.containerd)));
    rows.push(row);
  }
  console.log(
    `\nlifecycle${opt.group ? " (grouped: one shim for all containers)" : ""}: ${N} containers per worker count, ctr ${ok(await run("ctr", ["--version"])).trim()}`,
  );
  console.log(renderTable(header, rows));
  const fails = [...results.entries()].filter(([, s]) => s.failures.length > 0);
  for (const [k, s] of fails) console.log(`failures ${k}: ${s.failures.length} (first: ${s.failures[0]})`);
  if (opt.json) {
    await writeFile(
      opt.json,
      JSON.stringify({ n: N, workers: WORKERS, results: Object.fromEntries(results), usage }, null, 2),
    );
  }
}

await main();
