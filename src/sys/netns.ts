// Persistent network namespaces bound to files, the way `ip netns add` makes them: the namespace
// lives as long as its nsfs bind mount on `<dir>/cni-<uuid>`, with no process inside it.
//
// The namespace is made in-process, as containerd does, in three synchronous system calls on the
// event-loop thread: unshare(CLONE_NEWNET) moves the calling thread (only it) into a new
// namespace, /proc/thread-self/ns/net is bind-mounted onto the file, and setns(2) returns the
// thread to the namespace it came from. No JavaScript runs in between (the calls are synchronous),
// so no socket can be opened in the pod's namespace by mistake; the libuv pool threads never
// leave the daemon's namespace. The thread's namespace is checked afterwards: if it could not be
// restored, every later socket would be made in a pod's namespace, so the daemon stops at once
// rather than go on (systemd restarts it; running containers are not affected).
//
// A child process used to do it (util-linux `unshare --net=<file> true`): ~4.5 ms of CPU per pod
// and, with eight pods starting at once on two cores, a median of ~70 ms before the namespace
// existed. Every CNI ADD waits for the namespace, so that was on each RunPodSandbox's critical path.
import { randomUUID } from "node:crypto";
import {
  closeSync,
  fstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  statfsSync,
  statSync,
  unlinkSync,
} from "node:fs";
import path from "node:path";
import { lastErrno, libc } from "./libc.js";
import { MNT_DETACH, MS, mountSyscall, SyscallError, unmount } from "./mount.js";

const CLONE_NEWNET = 0x40000000;
const THREAD_NETNS = "/proc/thread-self/ns/net";

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

/** The event-loop thread's own network namespace (the daemon's), opened once. */
let homeNetns: number | undefined;

function home(): number {
  homeNetns ??= openSync(THREAD_NETNS, "r");
  return homeNetns;
}

/** The calling thread is back in the daemon's namespace, or the process cannot go on. */
function mustBeHome(): void {
  let ok = false;
  try {
    ok = statSync(THREAD_NETNS).ino === fstatSync(home()).ino;
  } catch {
    ok = false;
  }
  if (ok) return;
  process.stderr.write(
    "berthd: fatal: the event-loop thread could not return to the daemon's network namespace after creating a pod's; stopping\n",
  );
  process.abort();
}

/** unshare(CLONE_NEWNET), bind the new namespace onto `file`, setns back: see the top of the file. */
function bindNewNetns(file: string): void {
  const unshare = libc("unshare", "int unshare(int)");
  const setns = libc("setns", "int setns(int, int)");
  const fd = home();
  if ((unshare(CLONE_NEWNET) as number) !== 0) throw new SyscallError("unshare", lastErrno(), "CLONE_NEWNET");
  let mountErr: unknown;
  try {
    mountSyscall(THREAD_NETNS, file, "none", MS.BIND, "");
  } catch (err) {
    mountErr = err;
  }
  setns(fd, CLONE_NEWNET); // whether it worked is what mustBeHome checks
  mustBeHome();
  if (mountErr) throw mountErr;
}

/**
 * Creates a new network namespace bound to `<dir>/cni-<uuid>` and returns that path. The work is
 * synchronous (a millisecond or two of kernel time); the promise is for the callers' sake.
 */
export async function createNetns(dir: string): Promise<string> {
  const abs = path.resolve(dir);
  prepareDir(abs);
  const file = path.join(abs, `cni-${randomUUID()}`);
  // The mount point must exist; read-only and exclusive, as nothing ever writes it.
  closeSync(openSync(file, "wx", 0o444));
  try {
    bindNewNetns(file);
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
    throw new Error(`failed to create network namespace ${file}: ${(err as Error).message}`);
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
