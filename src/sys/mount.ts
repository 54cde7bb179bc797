// mount(2)/umount2(2) and containerd's mount option language (ro, rbind, nosuid, ...). Raw
// syscalls live here only; callers use mountAll/unmountAll/withTempMount.
import { closeSync, constants as fsConstants, mkdtempSync, openSync, readSync, rmdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Mount } from "../base/mount.js";
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
  17: "EEXIST",
  19: "ENODEV",
  20: "ENOTDIR",
  22: "EINVAL",
  28: "ENOSPC",
  34: "ERANGE",
  38: "ENOSYS",
  61: "ENODATA",
  95: "EOPNOTSUPP",
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

export function mountSyscall(
  source: string,
  target: string,
  fstype: string,
  flags: number,
  data: string,
): void {
  const fn = libc(
    "mount",
    "int mount(const char *, const char *, const char *, unsigned long, const char *)",
  );
  const r = fn(source, target, fstype, flags, data.length > 0 ? data : null) as number;
  if (r !== 0) throw new SyscallError("mount", lastErrno(), `${fstype} ${source} on ${target}`);
}

export function unmount(target: string, flags = 0): void {
  const fn = libc("umount2", "int umount2(const char *, int)");
  const r = fn(target, flags) as number;
  if (r !== 0) throw new SyscallError("umount2", lastErrno(), target);
}

/**
 * mount(2) copies at most one page of option data (NUL included); longer data is cut short by
 * the kernel. Longer option strings go through the new mount API instead (see fsContextMount).
 */
export const MOUNT_DATA_MAX = 4096;

/** Mount one API mount on target (bind/rbind, overlay, tmpfs, ...), honouring ro for binds. */
export function mountOne(m: Mount, target: string): void {
  const { flags, propagation, data } = parseMountOptions(m.options);
  const type = m.type === "bind" || m.type === "rbind" ? "none" : m.type;
  const isBind = (flags & MS.BIND) !== 0 || m.type === "bind" || m.type === "rbind";
  let f = flags;
  if (m.type === "rbind") f |= MS.BIND | MS.REC;
  else if (m.type === "bind") f |= MS.BIND;
  const joined = data.join(",");
  if (!isBind && (flags & MS.REMOUNT) === 0 && Buffer.byteLength(joined) + 1 > MOUNT_DATA_MAX) {
    fsContextMount(type, m.source, target, f, data);
    if (propagation !== 0) mountSyscall("", target, "", propagation, "");
    return;
  }
  mountSyscall(m.source, target, type, isBind ? f & ~MS.RDONLY & ~MS.REMOUNT : f, joined);
  // A bind mount ignores MS_RDONLY on the first call: remount to apply it.
  if (isBind && (flags & MS.RDONLY) !== 0)
    mountSyscall("", target, "", f | MS.REMOUNT | MS.BIND | MS.RDONLY, "");
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
export async function withTempMount<T>(
  mounts: Mount[],
  fn: (root: string) => Promise<T>,
  base = tmpdir(),
): Promise<T> {
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

// ---------------------------------------------------------------------------------------------
// The new mount API (fsopen/fsconfig/fsmount/move_mount, Linux 5.2+; overlay's "lowerdir+" since
// 6.8, layers by file descriptor since 6.13). Every option is its own fsconfig call, so there is
// no one-page limit on the whole option string: an overlay with hundreds of long lower layers
// mounts. A single string value is limited to 255 bytes by the kernel, so longer paths are passed
// as an open directory descriptor.

const FSOPEN_CLOEXEC = 0x1;
const FSMOUNT_CLOEXEC = 0x1;
const FSCONFIG_SET_FLAG = 0;
const FSCONFIG_SET_STRING = 1;
const FSCONFIG_SET_FD = 5;
const FSCONFIG_CMD_CREATE = 6;
const MOVE_MOUNT_F_EMPTY_PATH = 0x4;
const AT_FDCWD = -100;
/** Longest string value fsconfig takes (the kernel copies at most 256 bytes, NUL included). */
const FSCONFIG_STRING_MAX = 255;

const MOUNT_ATTR = {
  RDONLY: 0x1,
  NOSUID: 0x2,
  NODEV: 0x4,
  NOEXEC: 0x8,
  NOATIME: 0x10,
  STRICTATIME: 0x20,
  NODIRATIME: 0x80,
} as const;

/** Options whose value is a path: long ones are passed as a directory descriptor. */
const PATH_OPTIONS = new Set(["upperdir", "workdir", "lowerdir+", "datadir+"]);

/** Split an overlay lowerdir value ("a:b::c") into lower layers and data-only layers. */
export function splitLowerdir(value: string): { lower: string[]; data: string[] } {
  const lower: string[] = [];
  const data: string[] = [];
  let cur = "";
  let inData = false;
  for (let i = 0; i < value.length; i++) {
    const c = value[i]!;
    if (c === "\\" && i + 1 < value.length) {
      cur += value[++i];
      continue;
    }
    if (c === ":") {
      (inData ? data : lower).push(cur);
      cur = "";
      if (value[i + 1] === ":") {
        inData = true;
        i++;
      }
      continue;
    }
    cur += c;
  }
  (inData ? data : lower).push(cur);
  return { lower: lower.filter((l) => l !== ""), data: data.filter((d) => d !== "") };
}

class FsContext {
  private readonly fsconfig = libc(
    "fsconfig",
    "int fsconfig(int, unsigned int, const char *, const void *, int)",
  );
  readonly fd: number;

  constructor(readonly fstype: string) {
    const fsopen = libc("fsopen", "int fsopen(const char *, unsigned int)");
    const fd = fsopen(fstype, FSOPEN_CLOEXEC) as number;
    if (fd < 0) throw new SyscallError("fsopen", lastErrno(), fstype);
    this.fd = fd;
  }

  /** The kernel's messages about this context (the reason behind an EINVAL), if any. */
  private kernelLog(): string {
    const msgs: string[] = [];
    const buf = Buffer.alloc(1024);
    for (let i = 0; i < 16; i++) {
      let n: number;
      try {
        n = readSync(this.fd, buf);
      } catch {
        break;
      }
      if (n <= 0) break;
      msgs.push(
        buf
          .subarray(0, n)
          .toString()
          .replace(/^[ewi] /, ""),
      );
    }
    return msgs.join("; ");
  }

  private fail(syscall: string, errno: number, detail: string): never {
    const why = this.kernelLog();
    throw new SyscallError(syscall, errno, why ? `${detail} (${why})` : detail);
  }

  flag(key: string): void {
    if (this.fsconfig(this.fd, FSCONFIG_SET_FLAG, key, null, 0) !== 0)
      this.fail("fsconfig", lastErrno(), `${this.fstype} ${key}`);
  }

  string(key: string, value: string): void {
    if (this.fsconfig(this.fd, FSCONFIG_SET_STRING, key, value, 0) !== 0)
      this.fail("fsconfig", lastErrno(), `${this.fstype} ${key}=${value}`);
  }

  path(key: string, value: string): void {
    if (Buffer.byteLength(value) <= FSCONFIG_STRING_MAX) {
      this.string(key, value);
      return;
    }
    const dfd = openSync(value, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
    try {
      if (this.fsconfig(this.fd, FSCONFIG_SET_FD, key, null, dfd) !== 0)
        this.fail("fsconfig", lastErrno(), `${this.fstype} ${key}=${value}`);
    } finally {
      closeSync(dfd);
    }
  }

  create(): void {
    if (this.fsconfig(this.fd, FSCONFIG_CMD_CREATE, null, null, 0) !== 0)
      this.fail("fsconfig", lastErrno(), `${this.fstype} create`);
  }

  /** Make the mount object and attach it at target. */
  attach(target: string, attrs: number): void {
    const fsmount = libc("fsmount", "int fsmount(int, unsigned int, unsigned int)");
    const mfd = fsmount(this.fd, FSMOUNT_CLOEXEC, attrs) as number;
    if (mfd < 0) this.fail("fsmount", lastErrno(), `${this.fstype} on ${target}`);
    try {
      const move = libc("move_mount", "int move_mount(int, const char *, int, const char *, unsigned int)");
      if (move(mfd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH) !== 0)
        throw new SyscallError("move_mount", lastErrno(), `${this.fstype} on ${target}`);
    } finally {
      closeSync(mfd);
    }
  }

  close(): void {
    closeSync(this.fd);
  }
}

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
 * `lowerdir=a:b:c` becomes one `lowerdir+` per layer), then fsmount and move_mount onto target.
 * `flags` are MS_* flags; superblock ones (ro, sync, dirsync) become fsconfig flags, the rest
 * mount attributes.
 */
export function fsContextMount(
  fstype: string,
  source: string,
  target: string,
  flags: number,
  data: string[],
): void {
  const ctx = new FsContext(fstype);
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
