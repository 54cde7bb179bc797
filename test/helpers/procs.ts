// Reading /proc: which processes exist, their parents and command lines. Tests use it to find
// shims a daemon left behind and to check that nothing under a daemon is a zombie.
import { readdirSync, readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";

export interface Proc {
  pid: number;
  ppid: number;
  /** One-letter state from /proc/<pid>/stat (R, S, Z, ...). */
  state: string;
  argv: string[];
}

export function procs(): Proc[] {
  const out: Proc[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      const [state, ppid] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      const argv = readFileSync(`/proc/${name}/cmdline`, "utf8").split("\0").filter(Boolean);
      out.push({ pid: Number(name), ppid: Number(ppid), state: state!, argv });
    } catch {
      // the process went away meanwhile
    }
  }
  return out;
}

/** True once `pid` has exited (gone, or a zombie waiting to be reaped). */
export function isGone(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
  } catch {
    return true;
  }
}

/** Shims whose command line names this daemon address. */
export const shimsOf = (address: string): Proc[] =>
  procs().filter((p) => p.argv.some((a) => a.includes("containerd-shim")) && p.argv.includes(address));

/** Every process below `pid`. */
export function descendants(pid: number): Proc[] {
  const all = procs();
  const out: Proc[] = [];
  const walk = (p: number) => {
    for (const c of all.filter((x) => x.ppid === p)) {
      out.push(c);
      walk(c.pid);
    }
  };
  walk(pid);
  return out;
}

/** Poll `fn` every 50 ms until it holds, or fail naming `what`. */
export async function until(what: string, fn: () => boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}
