// The raw mount calls: mount(2), umount2(2), and the new mount API (fsopen, fsconfig, fsmount,
// move_mount; Linux 5.2+) as a filesystem-context object. Which calls to make for a containerd
// mount (option language, bind read-only remounts, overlay's lowerdir list) is policy and lives in
// src/core/mount.
import { closeSync, constants as fsConstants, openSync, readSync } from "node:fs";
import { SyscallError } from "./errors.js";
import { lastErrno, libc } from "./libc.js";

// Callers that caught mount errors before errors.ts existed import the class from here.
export { SyscallError } from "./errors.js";

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

/** fsmount(2) attributes (MOUNT_ATTR_*). */
export const MOUNT_ATTR = {
  RDONLY: 0x1,
  NOSUID: 0x2,
  NODEV: 0x4,
  NOEXEC: 0x8,
  NOATIME: 0x10,
  STRICTATIME: 0x20,
  NODIRATIME: 0x80,
} as const;

/**
 * mount(2) copies at most one page of option data (NUL included); longer data is cut short by
 * the kernel. Longer option strings have to go through the new mount API.
 */
export const MOUNT_DATA_MAX = 4096;

/** mount(2). An empty `data` passes NULL. */
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

/** umount2(2). */
export function unmount(target: string, flags = 0): void {
  const fn = libc("umount2", "int umount2(const char *, int)");
  const r = fn(target, flags) as number;
  if (r !== 0) throw new SyscallError("umount2", lastErrno(), target);
}

const FSOPEN_CLOEXEC = 0x1;
const FSMOUNT_CLOEXEC = 0x1;
const FSCONFIG_SET_FLAG = 0;
const FSCONFIG_SET_STRING = 1;
const FSCONFIG_SET_FD = 5;
const FSCONFIG_CMD_CREATE = 6;
const MOVE_MOUNT_F_EMPTY_PATH = 0x4;
const AT_FDCWD = -100;
/** Longest string value fsconfig takes (the kernel copies at most 256 bytes, NUL included). */
export const FSCONFIG_STRING_MAX = 255;

/**
 * A filesystem context (fsopen): configure it one option at a time, create the superblock, then
 * attach a mount of it somewhere. Always close() it.
 */
export interface FsContext {
  readonly fstype: string;
  /** fsconfig(FSCONFIG_SET_FLAG, key). */
  flag(key: string): void;
  /** fsconfig(FSCONFIG_SET_STRING, key, value). */
  string(key: string, value: string): void;
  /**
   * A path-valued option: as a string when it fits fsconfig's string limit, else as an open
   * directory descriptor (FSCONFIG_SET_FD).
   */
  path(key: string, value: string): void;
  /** fsconfig(FSCONFIG_CMD_CREATE). */
  create(): void;
  /** fsmount with MOUNT_ATTR_* `attrs`, then move_mount onto target. */
  attach(target: string, attrs: number): void;
  close(): void;
}

class KernelFsContext implements FsContext {
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

/** fsopen(2): a new filesystem context for fstype. */
export function fsopen(fstype: string): FsContext {
  return new KernelFsContext(fstype);
}
