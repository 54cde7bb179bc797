// Mounting containerd mounts (bind/rbind, overlay, tmpfs, ...) on a target: which raw calls make
// one, stacking and rollback, unmounting everything stacked, and temporary mounts. Every function
// takes the Syscalls to use (the kernel's by default) so that callers can be tested on the fake.
import { mkdtempSync, rmdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Mount } from "../../base/mount.js";
import { SyscallError } from "../../sys/errors.js";
import { MNT_DETACH, MOUNT_ATTR, MOUNT_DATA_MAX, MS } from "../../sys/mount.js";
import { realSyscalls, type Syscalls } from "../../sys/syscalls.js";
import { parseMountOptions, splitLowerdir } from "./options.js";

/** Mount one API mount on target (bind/rbind, overlay, tmpfs, ...), honouring ro for binds. */
export function mountOne(m: Mount, target: string, sys: Syscalls = realSyscalls): void {
  const { flags, propagation, data } = parseMountOptions(m.options);
  const type = m.type === "bind" || m.type === "rbind" ? "none" : m.type;
  const isBind = (flags & MS.BIND) !== 0 || m.type === "bind" || m.type === "rbind";
  let f = flags;
  if (m.type === "rbind") f |= MS.BIND | MS.REC;
  else if (m.type === "bind") f |= MS.BIND;
  const joined = data.join(",");
  if (!isBind && (flags & MS.REMOUNT) === 0 && Buffer.byteLength(joined) + 1 > MOUNT_DATA_MAX) {
    fsContextMount(type, m.source, target, f, data, sys);
    if (propagation !== 0) sys.mount("", target, "", propagation, "");
    return;
  }
  sys.mount(m.source, target, type, isBind ? f & ~MS.RDONLY & ~MS.REMOUNT : f, joined);
  // A bind mount ignores MS_RDONLY on the first call: remount to apply it.
  if (isBind && (flags & MS.RDONLY) !== 0)
    sys.mount("", target, "", f | MS.REMOUNT | MS.BIND | MS.RDONLY, "");
  if (propagation !== 0) sys.mount("", target, "", propagation, "");
}

/** Mount a list of mounts on target in order (later ones stack on earlier ones). */
export function mountAll(mounts: Mount[], target: string, sys: Syscalls = realSyscalls): void {
  const done: string[] = [];
  try {
    for (const m of mounts) {
      mountOne(m, target, sys);
      done.push(target);
    }
  } catch (err) {
    for (const t of done.reverse()) {
      try {
        sys.unmount(t, MNT_DETACH);
      } catch {
        // best effort rollback
      }
    }
    throw err;
  }
}

/** Unmount everything stacked on target (until EINVAL: not a mount point). */
export function unmountAll(target: string, flags = 0, sys: Syscalls = realSyscalls): void {
  for (let i = 0; i < 64; i++) {
    try {
      sys.unmount(target, flags);
    } catch (err) {
      if (err instanceof SyscallError && (err.code === "EINVAL" || err.code === "ENOENT")) return;
      throw err;
    }
  }
}

/** Mount `mounts` on a fresh temp dir, run fn, then unmount and remove the dir. */
export async function withTempMount<T>(
  mounts: Mount[],
  fn: (root: string) => Promise<T>,
  base = tmpdir(),
  sys: Syscalls = realSyscalls,
): Promise<T> {
  const dir = mkdtempSync(join(base, "berth-mount-"));
  try {
    mountAll(mounts, dir, sys);
    try {
      return await fn(dir);
    } finally {
      unmountAll(dir, 0, sys);
    }
  } finally {
    rmdirSync(dir);
  }
}

// The new mount API (overlay's "lowerdir+" since Linux 6.8, layers by file descriptor since
// 6.13). Every option is its own fsconfig call, so there is no one-page limit on the whole option
// string: an overlay with hundreds of long lower layers mounts.

/** Options whose value is a path (long ones cannot go as strings: see FsContext.path). */
const PATH_OPTIONS = new Set(["upperdir", "workdir", "lowerdir+", "datadir+"]);

/** MS_* flags as fsmount attributes. */
function mountAttrs(flags: number): number {
  let a = 0;
  if (flags & MS.RDONLY) a |= MOUNT_ATTR.RDONLY;
  if (flags & MS.NOSUID) a |= MOUNT_ATTR.NOSUID;
  if (flags & MS.NODEV) a |= MOUNT_ATTR.NODEV;
  if (flags & MS.NOEXEC) a |= MOUNT_ATTR.NOEXEC;
  if (flags & MS.NODIRATIME) a |= MOUNT_ATTR.NODIRATIME;
  if (flags & MS.NOATIME) a |= MOUNT_ATTR.NOATIME;
  else if (flags & MS.STRICTATIME) a |= MOUNT_ATTR.STRICTATIME;
  return a;
}

/**
 * Mount a filesystem through a filesystem context: one fsconfig call per option (overlay's
 * `lowerdir=a:b:c` becomes one `lowerdir+` per layer, in the same order), then fsmount and
 * move_mount onto target. `flags` are MS_* flags; superblock ones (ro, sync, dirsync) become
 * fsconfig flags, the rest mount attributes.
 */
export function fsContextMount(
  fstype: string,
  source: string,
  target: string,
  flags: number,
  data: string[],
  sys: Syscalls = realSyscalls,
): void {
  const ctx = sys.fsopen(fstype);
  try {
    if (source) ctx.string("source", source);
    if (flags & MS.RDONLY) ctx.flag("ro");
    if (flags & MS.SYNCHRONOUS) ctx.flag("sync");
    if (flags & MS.DIRSYNC) ctx.flag("dirsync");
    for (const opt of data) {
      if (opt === "") continue;
      const eq = opt.indexOf("=");
      if (eq < 0) {
        ctx.flag(opt);
        continue;
      }
      const key = opt.slice(0, eq);
      const value = opt.slice(eq + 1);
      if (fstype === "overlay" && key === "lowerdir") {
        const { lower, data: dataLayers } = splitLowerdir(value);
        for (const l of lower) ctx.path("lowerdir+", l);
        for (const d of dataLayers) ctx.path("datadir+", d);
      } else if (fstype === "overlay" && PATH_OPTIONS.has(key)) {
        ctx.path(key, value);
      } else {
        ctx.string(key, value);
      }
    }
    ctx.create();
    ctx.attach(target, mountAttrs(flags));
  } finally {
    ctx.close();
  }
}
