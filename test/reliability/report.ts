// The reliability suite's shared pieces: how big a run is, a seeded random source, and the
// per-group counts that `make reliability` prints as one table.
//
// Each group is one test file here. `make test` runs every file with the sample sizes (a few
// cases per group); `make reliability` runs them with BERTH_RELIABILITY=full and collects each
// group's report (a JSON line appended to the file BERTH_RELIABILITY_REPORT names).
import { appendFileSync } from "node:fs";

/** "full" under `make reliability`, otherwise "sample" (`make test`). */
export const MODE: "sample" | "full" = process.env.BERTH_RELIABILITY === "full" ? "full" : "sample";

/** The case count for this run: `full` under `make reliability`, `sample` otherwise. */
export function cases(sample: number, full: number): number {
  return MODE === "full" ? full : sample;
}

/** The base seed: BERTH_RELIABILITY_SEED or a fixed default, printed with every report. */
export const SEED = Number(process.env.BERTH_RELIABILITY_SEED ?? 20261203);

/** mulberry32: a small, fast, seeded PRNG (values in [0, 1)). Same seed, same sequence. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** An integer in [0, n). */
export function randInt(r: () => number, n: number): number {
  return Math.floor(r() * n);
}

export interface GroupReport {
  group: string;
  /** Cases tried. */
  cases: number;
  /** Cases that broke the group's rule (each also fails its test). */
  failures: number;
  /** What every case was checked for, in a few words. */
  checked: string;
  seed?: number;
  /** Defects found on the way (kept as regression cases), one line each. */
  notes?: string[];
}

/** Records one group's counts for the `make reliability` table (a no-op without the env var). */
export function report(r: GroupReport): void {
  const file = process.env.BERTH_RELIABILITY_REPORT;
  if (!file) return;
  appendFileSync(file, `${JSON.stringify({ seed: SEED, mode: MODE, ...r })}\n`);
}
