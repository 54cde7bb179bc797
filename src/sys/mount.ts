// mount(2)/umount2(2) and containerd's mount option language (ro, rbind, nosuid, ...). Raw
// syscalls live here only; callers use mountAll/unmountAll/withTempMount.
import { mkdtempSync, rmdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Mount } from "../core/mount/types.js";
import { lastErrno, libc } from "./libc.js";

export const MS = {
  RDONLY: 0x1,
  NOSUID: 0x2,
  NODEV: 0x4,
  NOEXEC: 0x8,
  SYNCHRONOUS: 0x10,
  REMOUNT: 0x20,
  MANDLOCK: 0x40,
  DIRSYNC: 0x80,
  NOATIME: 0x400,
  NODIRATIME: 0x800,
  BIND: 0x1000,
  MOVE: 0x2000,
  REC: 0x4000,
  SILENT: 0x8000,
  UNBINDABLE: 1 << 17,
  PRIVATE: 1 << 18,
  SLAVE: 1 << 19,
  SHARED: 1 << 20,
  RELATIME: 1 << 21,
  STRICTATIME: 1 << 24,
} as const;

export const MNT_DETACH = 2;

const ERRNO_NAMES: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  13: "EACCES",
  16: "EBUSY",
  19: "ENODEV",
  20: "ENOTDIR",
  22: "EINVAL",
  28: "ENOSPC",
};

export class SyscallError extends Error {
  constructor(
    readonly syscall: string,
    readonly errno: number,
    detail: string,
  ) {
    super(`${syscall} ${detail}: ${ERRNO_NAMES[errno] ?? `errno ${errno}`}`);
    this.name = "SyscallError";
  }
  get code(): string {
    return ERRNO_NAMES[this.errno] ?? `E${this.errno}`;
  }
}

// flag options: name → [set?, bits]
const FLAG_OPTIONS: Record<string, [boolean, number]> = {
  async: [false, MS.SYNCHRONOUS],
  atime: [false, MS.NOATIME],
  bind: [true, MS.BIND],
  defaults: [true, 0],
  dev: [false, MS.NODEV],
  diratime: [false, MS.NODIRATIME],
  dirsync: [true, MS.DIRSYNC],
  exec: [false, MS.NOEXEC],
  mand: [true, MS.MANDLOCK],
  noatime: [true, MS.NOATIME],
  nodev: [true, MS.NODEV],
  nodiratime: [true, MS.NODIRATIME],
  noexec: [true, MS.NOEXEC],
  nomand: [false, MS.MANDLOCK],
  norelatime: [false, MS.RELATIME],
  nostrictatime: [false, MS.STRICTATIME],
  nosuid: [true, MS.NOSUID],
  rbind: [true, MS.BIND | MS.REC],
  relatime: [true, MS.RELATIME],
  remount: [true, MS.REMOUNT],
  ro: [true, MS.RDONLY],
  rw: [false, MS.RDONLY],
  strictatime: [true, MS.STRICTATIME],
  suid: [false, MS.NOSUID],
  sync: [true, MS.SYNCHRONOUS],
};

const PROPAGATION: Record<string, number> = {
  private: MS.PRIVATE,
  rprivate: MS.PRIVATE | MS.REC,
  shared: MS.SHARED,
  rshared: MS.SHARED | MS.REC,
  slave: MS.SLAVE,
  rslave: MS.SLAVE | MS.REC,
  unbindable: MS.UNBINDABLE,
  runbindable: MS.UNBINDABLE | MS.REC,
};

export interface ParsedOptions {
  flags: number;
  propagation: number;
  data: string[];
}

export function parseMountOptions(options: string[]): ParsedOptions {
  let flags = 0;
  let propagation = 0;
  const data: string[] = [];
  for (const o of options) {
    const f = FLAG_OPTIONS[o];
    if (f) {
      flags = f[0] ? flags | f[1] : flags & ~f[1];
      continue;
    }
    const p = PROPAGATION[o];
    if (p !== undefined) {
      propagation |= p;
      continue;
    }
    data.push(o);
  }
  return { flags, propagation, data };
}

export function mountSyscall(source: string, target: string, fstype: string, flags: number, data: string): void {
  const fn = libc("mount", "int mount(const char *, const char *, const char *, unsigned long, const char *)");
  const r = fn(source, target, fstype, flags, data.length > 0 ? data : null) as number;
  if (r !== 0) throw new SyscallError("mount", lastErrno(), `${fstype} ${source} on ${target}`);
}

export function unmount(target: string, flags = 0): void {
  const fn = libc("umount2", "int umount2(const char *, int)");
  const r = fn(target, flags) as number;
  if (r !== 0) throw new SyscallError("umount2", lastErrno(), target);
}

/** Mount one API mount on target (bind/rbind, overlay, tmpfs, ...), honouring ro for binds. */
export function mountOne(m: Mount, target: string): void {
  const { flags, propagation, data } = parseMountOptions(m.options);
  const type = m.type === "bind" || m.type === "rbind" ? "none" : m.type;
  const isBind = (flags & MS.BIND) !== 0 || m.type === "bind" || m.type === "rbind";
  let f = flags;
  if (m.type === "rbind") f |= MS.BIND | MS.REC;
  else if (m.type === "bind") f |= MS.BIND;
  mountSyscall(m.source, target, type, isBind ? f & ~MS.RDONLY & ~MS.REMOUNT : f, data.join(","));
  // A bind mount ignores MS_RDONLY on the first call: remount to apply it.
  if (isBind && (flags & MS.RDONLY) !== 0) mountSyscall("", target, "", f | MS.REMOUNT | MS.BIND | MS.RDONLY, "");
  if (propagation !== 0) mountSyscall("", target, "", propagation, "");
}

/** Mount a list of mounts on target in order (later ones stack on earlier ones). */
export function mountAll(mounts: Mount[], target: string): void {
  const done: string[] = [];
  try {
    for (const m of mounts) {
      mountOne(m, target);
      done.push(target);
    }
  } catch (err) {
    for (const t of done.reverse()) {
      try {
        unmount(t, MNT_DETACH);
      } catch {
        // best effort rollback
      }
    }
    throw err;
  }
}

/** Unmount everything stacked on target (until EINVAL: not a mount point). */
export function unmountAll(target: string, flags = 0): void {
  for (let i = 0; i < 64; i++) {
    try {
      unmount(target, flags);
    } catch (err) {
      if (err instanceof SyscallError && (err.code === "EINVAL" || err.code === "ENOENT")) return;
      throw err;
    }
  }
}

/** Mount `mounts` on a fresh temp dir, run fn, then unmount and remove the dir. */
export async function withTempMount<T>(mounts: Mount[], fn: (root: string) => Promise<T>, base = tmpdir()): Promise<T> {
  const dir = mkdtempSync(join(base, "berth-mount-"));
  try {
    mountAll(mounts, dir);
    try {
      return await fn(dir);
    } finally {
      unmountAll(dir);
    }
  } finally {
    rmdirSync(dir);
  }
}
