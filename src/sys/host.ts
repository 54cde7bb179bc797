// Read-only probes of the host that `berth doctor` reports on: the cgroup layout, the effective
// capabilities, executables on PATH, and free space. Parsers take the file text so tests can
// feed them other machines' /proc contents.
import { accessSync, constants, readFileSync, statfsSync } from "node:fs";
import { delimiter, join } from "node:path";

export interface CgroupLayout {
  /** v2: one unified hierarchy; hybrid: v1 controllers plus a v2 tree at .../unified; v1: only v1. */
  version: "v1" | "v2" | "hybrid" | "none";
  /** Controllers containers can use: v1 hierarchies' controllers, or v2's cgroup.controllers. */
  controllers: string[];
  /** Where the v2 tree is mounted, if any. */
  unifiedMount?: string;
  /** The v2 tree's own controllers (in hybrid mode usually none: v1 holds them all). */
  unifiedControllers?: string[];
}

/** The layout from /proc/self/mounts text (and, for v2, the root's cgroup.controllers text). */
export function parseCgroupLayout(mounts: string, readV2Controllers: (dir: string) => string): CgroupLayout {
  const v1 = new Set<string>();
  let unified: string | undefined;
  for (const line of mounts.split("\n")) {
    const [, dir, type, options] = line.split(" ");
    if (!dir || !options) continue;
    if (type === "cgroup2") unified ??= dir;
    else if (type === "cgroup")
      for (const o of options.split(","))
        if (
          !["rw", "ro", "relatime", "nosuid", "nodev", "noexec", "xattr", "clone_children"].includes(o) &&
          !o.startsWith("name=") &&
          !o.startsWith("release_agent")
        )
          v1.add(o);
  }
  let v2: string[] = [];
  if (unified)
    try {
      v2 = readV2Controllers(unified).split(/\s+/).filter(Boolean).sort();
    } catch {
      // an unreadable root: no controllers known
    }
  if (v1.size > 0)
    return unified
      ? { version: "hybrid", controllers: [...v1].sort(), unifiedMount: unified, unifiedControllers: v2 }
      : { version: "v1", controllers: [...v1].sort() };
  if (unified) return { version: "v2", controllers: v2, unifiedMount: unified, unifiedControllers: v2 };
  return { version: "none", controllers: [] };
}

export function cgroupLayout(): CgroupLayout {
  return parseCgroupLayout(readFileSync("/proc/self/mounts", "utf8"), (dir) =>
    readFileSync(join(dir, "cgroup.controllers"), "utf8"),
  );
}

export const CAP_SYS_ADMIN = 21;
export const CAP_SYS_RESOURCE = 24;

/** The CapEff mask from /proc/<pid>/status text. */
export function effectiveCaps(status: string): bigint {
  const m = /^CapEff:\s*([0-9a-fA-F]+)$/m.exec(status);
  if (!m) throw new Error("no CapEff line in /proc/self/status");
  return BigInt(`0x${m[1]}`);
}

export function hasCap(mask: bigint, cap: number): boolean {
  return ((mask >> BigInt(cap)) & 1n) === 1n;
}

/** The first executable named `name` on PATH (as execvp would find it), or undefined. */
export function which(
  name: string,
  path = process.env.PATH ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
): string | undefined {
  for (const dir of path.split(delimiter)) {
    if (!dir) continue;
    const p = join(dir, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

export interface FsSpace {
  bytesFree: number;
  bytesTotal: number;
  inodesFree: number;
  inodesTotal: number;
}

/** Space available to unprivileged writers and free inodes on the filesystem holding `path`. */
export function fsSpace(path: string): FsSpace {
  const s = statfsSync(path);
  return {
    bytesFree: s.bavail * s.bsize,
    bytesTotal: s.blocks * s.bsize,
    inodesFree: s.ffree,
    inodesTotal: s.files,
  };
}
