// Shared pieces of the side-by-side benchmarks: timing, statistics, result collection and the
// results table (medians per daemon and the berthd/containerd ratio), a process's CPU time.

import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";

export type DaemonName = "containerd" | "berthd";
export const DAEMONS: readonly DaemonName[] = ["containerd", "berthd"];

/** Milliseconds from a monotonic clock. */
export function nowMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

/** Runs `fn` and returns its wall time in milliseconds along with its value. */
export async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const start = nowMs();
  const value = await fn();
  return { ms: nowMs() - start, value };
}

function sorted(xs: readonly number[]): number[] {
  return [...xs].sort((a, b) => a - b);
}

/** Median (mean of the middle two for even counts); NaN for no samples. */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = sorted(xs);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Percentile p in [0, 100] by linear interpolation between closest ranks; NaN for no samples. */
export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return Number.NaN;
  const s = sorted(xs);
  const rank = (Math.min(100, Math.max(0, p)) / 100) * (s.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return s[lo]! + (s[hi]! - s[lo]!) * (rank - lo);
}

export const p95 = (xs: readonly number[]) => percentile(xs, 95);

export function mean(xs: readonly number[]): number {
  return xs.length === 0 ? Number.NaN : xs.reduce((a, b) => a + b, 0) / xs.length;
}

/** Formats a number with about three significant digits (no exponent for ordinary magnitudes). */
export function fmt(x: number): string {
  if (!Number.isFinite(x)) return "—";
  const a = Math.abs(x);
  if (a >= 1000) return Math.round(x).toString();
  if (a >= 100) return x.toFixed(1);
  if (a >= 10) return x.toFixed(2);
  if (a >= 1) return x.toFixed(3);
  return x.toPrecision(3);
}

/** berthd / containerd, formatted; "—" when either side is missing. */
export function fmtRatio(berthd: number, containerd: number): string {
  if (!Number.isFinite(berthd) || !Number.isFinite(containerd) || containerd === 0) return "—";
  return (berthd / containerd).toFixed(2);
}

export function fmtBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB"];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${Number.isInteger(v) ? v : v.toFixed(1)} ${units[i]}`;
}

/** Decimal megabytes per second for `bytes` moved in `ms`. */
export function mbPerSec(bytes: number, ms: number): number {
  return bytes / 1e6 / (ms / 1000);
}

/** Renders rows as a text table; columns after the first are right-aligned. */
export function renderTable(header: string[], rows: string[][]): string {
  const all = [header, ...rows];
  const widths = header.map((_, c) => Math.max(...all.map((r) => (r[c] ?? "").length)));
  const line = (r: string[]) =>
    r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join("  ");
  return [line(header), widths.map((w) => "-".repeat(w)).join("  "), ...rows.map(line)].join("\n");
}

/**
 * How a metric's per-repeat samples become the number shown: the median of the repeats, or a
 * value derived from that median (e.g. MB/s from seconds).
 */
export interface MetricSpec {
  name: string;
  unit: string;
  /** Turns the median of the samples into the shown number (default: as is). */
  derive?: (medianSample: number) => number;
  /** Higher is better (throughputs); only informs the legend. */
  higherIsBetter?: boolean;
}

/** Samples per metric (by spec object) and daemon, kept in the order metrics were first seen. */
export class Results {
  private readonly specs: MetricSpec[] = [];
  private readonly samples = new Map<MetricSpec, Record<DaemonName, number[]>>();
  private readonly failures = new Map<DaemonName, string[]>();

  metric(spec: MetricSpec): MetricSpec {
    if (!this.samples.has(spec)) {
      this.specs.push(spec);
      this.samples.set(spec, { containerd: [], berthd: [] });
    }
    return spec;
  }

  add(spec: MetricSpec, daemon: DaemonName, value: number): void {
    this.metric(spec);
    this.samples.get(spec)![daemon].push(value);
  }

  fail(daemon: DaemonName, what: string): void {
    const list = this.failures.get(daemon) ?? [];
    list.push(what);
    this.failures.set(daemon, list);
  }

  failuresOf(daemon: DaemonName): string[] {
    return this.failures.get(daemon) ?? [];
  }

  /** The shown value of a metric for a daemon (NaN without samples). */
  value(spec: MetricSpec, daemon: DaemonName): number {
    const xs = this.samples.get(spec)?.[daemon] ?? [];
    if (xs.length === 0) return Number.NaN;
    const m = median(xs);
    return spec.derive ? spec.derive(m) : m;
  }

  table(): string {
    const rows = this.specs.map((spec) => {
      const c = this.value(spec, "containerd");
      const b = this.value(spec, "berthd");
      return [spec.name, spec.unit, fmt(c), fmt(b), fmtRatio(b, c)];
    });
    return renderTable(["metric", "unit", "containerd", "berthd", "berthd/containerd"], rows);
  }

  toJSON(): unknown {
    return {
      metrics: this.specs.map((spec) => ({
        name: spec.name,
        unit: spec.unit,
        containerd: { value: this.value(spec, "containerd"), samples: this.samples.get(spec)!.containerd },
        berthd: { value: this.value(spec, "berthd"), samples: this.samples.get(spec)!.berthd },
      })),
      failures: Object.fromEntries(this.failures),
    };
  }
}

/** Daemon order for repeat `rep`: alternate which daemon goes first. */
export function orderFor<T>(rep: number, items: readonly T[]): T[] {
  return rep % 2 === 0 ? [...items] : [...items].reverse();
}

/** Runs `total` async jobs with at most `inFlight` pending at once; returns each job's latency in ms. */
export async function runConcurrent(
  total: number,
  inFlight: number,
  job: (i: number) => Promise<unknown>,
): Promise<number[]> {
  const latencies = new Array<number>(total);
  let next = 0;
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= total) return;
      const start = nowMs();
      await job(i);
      latencies[i] = nowMs() - start;
    }
  };
  await Promise.all(Array.from({ length: Math.min(inFlight, total) }, worker));
  return latencies;
}

/**
 * What a benchmark's Containers/Create sends: a busybox container on the runc v2 runtime whose
 * snapshot (overlayfs) has the container's id as its key, with `spec` (an Any) and `labels`.
 */
export function benchContainer(
  id: string,
  spec: { typeUrl: string; value: Uint8Array },
  labels: Record<string, string>,
) {
  return {
    id,
    image: "docker.io/library/busybox:latest",
    runtime: { name: "io.containerd.runc.v2" },
    spec,
    snapshotter: "overlayfs",
    snapshotKey: id,
    labels,
  };
}

const CLK_TCK = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  } catch {
    return 100;
  }
})();

function statFields(pid: number | "self"): string[] {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
}

/** A size field of /proc/<pid>/status (VmRSS, VmHWM, RssAnon, …) in bytes; NaN when absent. */
export function procStatus(pid: number, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) * 1024 : Number.NaN;
}

/** CPU seconds (user + system) a process has used so far. */
export function cpuSeconds(pid: number): number {
  const f = statFields(pid);
  // fields 14 and 15 of stat (utime, stime) are 11 and 12 after the command name and state
  return (Number(f[11]) + Number(f[12])) / CLK_TCK;
}

/**
 * CPU seconds a process's threads have run so far, to the nanosecond: the sum of each live
 * thread's schedstat. cpuSeconds counts in clock ticks (10 ms), too coarse for a daemon that
 * uses a few ms per second; a thread that ended meanwhile is not counted here.
 */
export function threadsCpuSeconds(pid: number): number {
  let ns = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ")[0]);
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return ns / 1e9;
}

/**
 * CPU seconds of the children a process has waited for (cutime + cstime, fields 16 and 17 of
 * stat): a daemon's decompressors, or this process's own CLI runs and shell pipelines.
 */
export function childrenCpuSeconds(pid: number | "self"): number {
  const f = statFields(pid);
  return (Number(f[13]) + Number(f[14])) / CLK_TCK;
}
