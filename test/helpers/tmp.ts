// Temporary directories for tests and benchmarks: /tmp/berth-test-*, removed safely (anything
// mounted beneath is unmounted first, deepest first, so rm never walks into a live mount).
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import path from "node:path";

const PREFIX = "berth-test-";
const TMP = "/tmp";

/** Directories made here and not yet removed; the exit hook removes what tests leave behind. */
const live = new Set<string>();

function prefixFor(name?: string): string {
  const clean = (name ?? "").replace(/[^A-Za-z0-9_.-]/g, "");
  return path.join(TMP, PREFIX + (clean ? `${clean}-` : ""));
}

/** Creates /tmp/berth-test-[name-]XXXXXX. */
export async function makeTempDir(name?: string): Promise<string> {
  const dir = await mkdtemp(prefixFor(name));
  live.add(dir);
  return dir;
}

export function makeTempDirSync(name?: string): string {
  const dir = mkdtempSync(prefixFor(name));
  live.add(dir);
  return dir;
}

/** Decodes the octal escapes (\040 for space, …) used in /proc/self/mountinfo. */
function unescapeMountPath(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
}

/** Mount points at or below `dir`, deepest first. */
export function mountsUnder(dir: string): string[] {
  const base = path.resolve(dir);
  let info: string;
  try {
    info = readFileSync("/proc/self/mountinfo", "utf8");
  } catch {
    return [];
  }
  const found = new Set<string>();
  for (const line of info.split("\n")) {
    const fields = line.split(" ");
    if (fields.length < 5) continue;
    const mp = unescapeMountPath(fields[4]!);
    if (mp === base || mp.startsWith(base + "/")) found.add(mp);
  }
  return [...found].sort((a, b) => b.split("/").length - a.split("/").length || b.length - a.length);
}

/** Unmounts everything at or below `dir` (lazily if a plain unmount fails). */
export function unmountAll(dir: string): void {
  // A path can be mounted over several times; repeat until nothing is left (bounded).
  for (let round = 0; round < 8; round++) {
    const mps = mountsUnder(dir);
    if (mps.length === 0) return;
    for (const mp of mps) {
      try {
        execFileSync("umount", [mp], { stdio: "ignore" });
      } catch {
        try {
          execFileSync("umount", ["-l", mp], { stdio: "ignore" });
        } catch {
          // reported below if it stays mounted
        }
      }
    }
  }
  const left = mountsUnder(dir);
  if (left.length > 0) throw new Error(`cannot unmount under ${dir}: ${left.join(", ")}`);
}

function checkRemovable(dir: string): string {
  const abs = path.resolve(dir);
  if (!path.basename(abs).startsWith(PREFIX) || path.dirname(abs) !== TMP) {
    throw new Error(`refusing to remove ${abs}: not a ${PREFIX}* directory under ${TMP}`);
  }
  return abs;
}

/** Unmounts whatever is mounted beneath a temp dir made here, then removes it. */
export async function removeTempDir(dir: string): Promise<void> {
  const abs = checkRemovable(dir);
  unmountAll(abs);
  await rm(abs, { recursive: true, force: true, maxRetries: 3 });
  live.delete(abs);
}

export function removeTempDirSync(dir: string): void {
  const abs = checkRemovable(dir);
  unmountAll(abs);
  rmSync(abs, { recursive: true, force: true, maxRetries: 3 });
  live.delete(abs);
}

/** Runs `fn` with a fresh temp dir and removes the dir afterwards, whatever happens. */
export async function withTempDir<T>(fn: (dir: string) => Promise<T>, name?: string): Promise<T> {
  const dir = await makeTempDir(name);
  try {
    return await fn(dir);
  } finally {
    await removeTempDir(dir);
  }
}

const shutdownHooks: (() => Promise<void>)[] = [];
const beforeRemoval: (() => void)[] = [];

/**
 * Registers an async hook run when the process is about to end with work left over: when the event
 * loop empties (beforeExit) and on SIGINT/SIGTERM/SIGHUP. daemons.ts stops its leftover daemons there
 * (and reaps them: nobody else would, PID 1 does not). It must be a no-op when nothing is left.
 */
export function onShutdown(fn: () => Promise<void>): void {
  shutdownHooks.push(fn);
}

/**
 * Registers a synchronous last-resort hook run at exit before leftover temp dirs are removed
 * (daemons.ts SIGKILLs what is still running there, so nothing holds the dirs or mounts in them).
 */
export function onExitBeforeRemoval(fn: () => void): void {
  beforeRemoval.push(fn);
}

async function runShutdownHooks(): Promise<void> {
  for (const fn of shutdownHooks) {
    try {
      await fn();
    } catch (err) {
      process.stderr.write(`berth test helpers: shutdown hook failed: ${(err as Error).message}\n`);
    }
  }
}

let exiting = false;

/** Runs the exit hooks, then removes the temp dirs still alive. */
export function removeLeftoverTempDirs(): void {
  if (exiting) return;
  exiting = true;
  for (const fn of beforeRemoval) {
    try {
      fn();
    } catch (err) {
      process.stderr.write(`berth test helpers: exit hook failed: ${(err as Error).message}\n`);
    }
  }
  for (const dir of [...live]) {
    try {
      removeTempDirSync(dir);
    } catch (err) {
      process.stderr.write(`berth test helpers: leaving ${dir}: ${(err as Error).message}\n`);
    }
  }
}

process.on("beforeExit", () => {
  void runShutdownHooks();
});
process.on("exit", removeLeftoverTempDirs);
// Interrupted runs clean up too (waiting at most 5 s for the async part), then die of the same signal.
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.once(sig, () => {
    const limit = new Promise<void>((resolve) => setTimeout(resolve, 5000).unref());
    void Promise.race([runShutdownHooks(), limit]).finally(() => {
      removeLeftoverTempDirs();
      process.kill(process.pid, sig);
    });
  });
}
