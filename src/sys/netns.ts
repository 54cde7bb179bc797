// Persistent network namespaces bound to files, the way `ip netns add` makes them: the namespace
// lives as long as its nsfs bind mount on `<dir>/cni-<uuid>`, with no process inside it.
//
// The namespace is created by a short-lived child (util-linux `unshare --net=<file> true`), not
// by unshare(2) in berthd: unshare(CLONE_NEWNET) moves the *calling thread* into the new
// namespace, and on Node that is the event-loop thread (or a libuv pool thread another request
// will reuse). Every socket berthd opened afterwards on that thread would live in the pod's
// namespace, and setns(2) back can fail halfway. A child process isolates all of that: its
// namespace switch dies with it, and unshare's own bind mount of /proc/<pid>/ns/net onto the
// file is what keeps the namespace alive. It costs one posix_spawn (src/sys/spawn.ts) per pod sandbox.
import { randomUUID } from "node:crypto";
import { closeSync, mkdirSync, openSync, readFileSync, statfsSync, unlinkSync } from "node:fs";
import path from "node:path";
import { MNT_DETACH, MS, mountSyscall, SyscallError, unmount } from "./mount.js";
import { lookPath, runCollect } from "./spawn.js";

/** statfs f_type of nsfs, the filesystem namespace files are bound from. */
const NSFS_MAGIC = 0x6e736673;

/** containerd's default: netns files under /var/run/netns, where `ip netns` finds them too. */
export const DEFAULT_NETNS_DIR = "/var/run/netns";

/** Where a pod's netns file goes: under the state dir when `netns_mounts_under_state_dir`. */
export function netnsDirFor(stateDir: string, mountsUnderStateDir: boolean): string {
  return mountsUnderStateDir ? path.join(stateDir, "netns") : DEFAULT_NETNS_DIR;
}

function isMountPoint(dir: string): boolean {
  const want = path.resolve(dir);
  let info: string;
  try {
    info = readFileSync("/proc/self/mountinfo", "utf8");
  } catch {
    return false;
  }
  for (const line of info.split("\n")) {
    const mp = line.split(" ")[4];
    if (mp && mp.replace(/\\040/g, " ") === want) return true;
  }
  return false;
}

const prepared = new Set<string>();

/**
 * Makes `dir` a shared mount point (binding it onto itself first when it is not a mount point),
 * as `ip netns` does with /run/netns: mount namespaces created later (a pod's containers) get
 * the netns mounts as slaves, so unmounting the file here unmounts it there too and the
 * namespace is not kept alive by a copy nobody can see.
 */
function prepareDir(dir: string): void {
  if (prepared.has(dir)) return;
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  if (!isMountPoint(dir)) mountSyscall(dir, dir, "none", MS.BIND | MS.REC, "");
  mountSyscall("none", dir, "", MS.SHARED | MS.REC, "");
  prepared.add(dir);
}

/**
 * Creates a new network namespace bound to `<dir>/cni-<uuid>` and returns that path. Creations
 * run concurrently: the one step two of them must not both take, binding the dir onto itself,
 * is synchronous (prepareDir) and done before the first await.
 */
export async function createNetns(dir: string): Promise<string> {
  const abs = path.resolve(dir);
  prepareDir(abs);
  const file = path.join(abs, `cni-${randomUUID()}`);
  // The mount point must exist; read-only and exclusive, as nothing ever writes it.
  closeSync(openSync(file, "wx", 0o444));
  try {
    const r = await runCollect(lookPath("unshare"), [`--net=${file}`, "true"], {
      env: process.env,
      signal: AbortSignal.timeout(30_000),
    });
    if (r.code !== 0)
      throw Object.assign(
        new Error(`unshare: ${r.signal ? `killed by ${r.signal}` : `exit status ${r.code}`}`),
        {
          stderr: r.stderr.toString(),
        },
      );
  } catch (err) {
    try {
      unmount(file, MNT_DETACH);
    } catch {
      // not mounted: nothing to undo
    }
    try {
      unlinkSync(file);
    } catch {
      // already gone
    }
    const e = err as { stderr?: string; message: string };
    throw new Error(`failed to create network namespace ${file}: ${(e.stderr ?? "").trim() || e.message}`);
  }
  return file;
}

/**
 * Removes a netns file: unmounts it (lazily, so a process still inside keeps its namespace
 * until it exits) and unlinks it. Succeeds when it is already gone.
 */
export function removeNetns(file: string): void {
  for (let i = 0; i < 8; i++) {
    try {
      unmount(file, MNT_DETACH);
    } catch (err) {
      if (err instanceof SyscallError && (err.code === "EINVAL" || err.code === "ENOENT")) break;
      throw err;
    }
  }
  try {
    unlinkSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
}

/** Whether `file` is a live network namespace mount (not merely a leftover empty file). */
export function netnsExists(file: string): boolean {
  try {
    return statfsSync(file).type === NSFS_MAGIC;
  } catch {
    return false;
  }
}
