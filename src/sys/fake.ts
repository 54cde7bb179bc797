// A Syscalls for unit tests that run without root: every call is recorded (in order, with its
// arguments, paths as strings) and its effect is kept in memory — a mount table, owners, modes,
// times, extended attributes, device nodes — instead of reaching the kernel. mknod leaves an
// empty regular file at the path (so what follows sees something there, and a second mknod fails
// with EEXIST as the kernel's would). Errors a real kernel would give for the situations tests
// set up (missing path, existing node, unmounting a non-mount point) are SyscallErrors with the
// same errno; more can be injected with failWith().

import { existsSync, lstatSync, readlinkSync, writeFileSync } from "node:fs";
import { constants as errno } from "node:os";
import { SyscallError } from "./errors.js";
import { MOUNT_ATTR, MS } from "./mount.js";
import type { FsContext, PathLike, Syscalls } from "./syscalls.js";

const E = errno.errno;

/** One recorded call: `op` is the Syscalls method (fsopen's context calls: "fsconfig", "fsmount"). */
export interface FakeCall {
  op: string;
  path?: string;
  target?: string;
  [arg: string]: unknown;
}

export interface FakeMount {
  source: string;
  target: string;
  fstype: string;
  flags: number;
  /** mount(2) data, or the options a filesystem context was given, joined by commas. */
  data: string;
}

export interface FakeNode {
  mode: number;
  dev: bigint;
}

const PROPAGATION_FLAGS = MS.PRIVATE | MS.SLAVE | MS.SHARED | MS.UNBINDABLE;

const str = (p: PathLike): string => (typeof p === "string" ? p : Buffer.from(p).toString("utf8"));

export class FakeSyscalls implements Syscalls {
  readonly calls: FakeCall[] = [];
  /** Mounted filesystems, oldest first (later ones stack on earlier ones at the same target). */
  readonly mounts: FakeMount[] = [];
  readonly owners = new Map<string, { uid: number; gid: number }>();
  readonly modes = new Map<string, number>();
  readonly times = new Map<string, { atime: number | bigint; mtime: number | bigint }>();
  readonly nodes = new Map<string, FakeNode>();
  readonly xattrs = new Map<string, Map<string, Buffer>>();
  /** What supportsDType answers. */
  dtype = true;
  private readonly failures: { op: string; errno: number; when: (c: FakeCall) => boolean }[] = [];

  /** The recorded calls of one kind. */
  callsOf(op: string): FakeCall[] {
    return this.calls.filter((c) => c.op === op);
  }

  /** From now on, calls of `op` (for which `when` holds) fail with errno. */
  failWith(op: string, errnoValue: number, when: (c: FakeCall) => boolean = () => true): void {
    this.failures.push({ op, errno: errnoValue, when });
  }

  /** Forget recorded calls (the state stays). */
  clearCalls(): void {
    this.calls.length = 0;
  }

  private record(call: FakeCall, detail: string): void {
    this.calls.push(call);
    const f = this.failures.find((x) => x.op === call.op && x.when(call));
    if (f) throw new SyscallError(call.op, f.errno, detail);
  }

  private mustExist(op: string, path: string): void {
    if (!existsSync(path) && !isSymlink(path)) throw new SyscallError(op, E.ENOENT, path);
  }

  private fdPath(fd: number): string {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      throw new SyscallError("fd", E.EBADF, `fd ${fd}`);
    }
  }

  // --- mounts -----------------------------------------------------------------------------------

  mount(source: string, target: string, fstype: string, flags: number, data: string): void {
    this.record({ op: "mount", source, target, fstype, flags, data }, `${fstype} ${source} on ${target}`);
    this.mustExist("mount", target);
    // remounts and propagation changes alter a mount; they add none
    if ((flags & MS.REMOUNT) !== 0 || (flags & PROPAGATION_FLAGS) !== 0) {
      if (!this.mounts.some((m) => m.target === target)) throw new SyscallError("mount", E.EINVAL, target);
      return;
    }
    this.mounts.push({ source, target, fstype, flags, data });
  }

  unmount(target: string, flags = 0): void {
    this.record({ op: "unmount", target, flags }, target);
    const i = this.mounts.findLastIndex((m) => m.target === target);
    if (i < 0) {
      if (!existsSync(target)) throw new SyscallError("umount2", E.ENOENT, target);
      throw new SyscallError("umount2", E.EINVAL, target);
    }
    this.mounts.splice(i, 1);
  }

  fsopen(fstype: string): FsContext {
    this.record({ op: "fsopen", fstype }, fstype);
    return new FakeFsContext(this, fstype);
  }

  /** Used by FakeFsContext. */
  recordContext(call: FakeCall, detail: string): void {
    this.record(call, detail);
  }

  /** Used by FakeFsContext: a context's mount attached at target. */
  attached(m: FakeMount): void {
    this.mustExist("move_mount", m.target);
    this.mounts.push(m);
  }

  // --- inodes -----------------------------------------------------------------------------------

  mknod(path: PathLike, mode: number, dev: bigint | number = 0): void {
    const p = str(path);
    this.record({ op: "mknod", path: p, mode, dev: BigInt(dev) }, p);
    if (existsSync(p) || isSymlink(p)) throw new SyscallError("mknod", E.EEXIST, p);
    try {
      writeFileSync(p, "", { flag: "wx", mode: 0o600 });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw new SyscallError("mknod", code === "ENOTDIR" ? E.ENOTDIR : E.ENOENT, p);
    }
    this.nodes.set(p, { mode, dev: BigInt(dev) });
  }

  lchown(path: PathLike, uid: number, gid: number): void {
    const p = str(path);
    this.record({ op: "lchown", path: p, uid, gid }, p);
    this.mustExist("lchown", p);
    this.owners.set(p, { uid, gid });
  }

  fchown(fd: number, uid: number, gid: number): void {
    const p = this.fdPath(fd);
    this.record({ op: "fchown", fd, path: p, uid, gid }, `fd ${fd}`);
    this.owners.set(p, { uid, gid });
  }

  chmod(path: PathLike, mode: number): void {
    const p = str(path);
    this.record({ op: "chmod", path: p, mode }, p);
    this.mustExist("chmod", p);
    this.modes.set(p, mode);
  }

  fchmod(fd: number, mode: number): void {
    const p = this.fdPath(fd);
    this.record({ op: "fchmod", fd, path: p, mode }, `fd ${fd}`);
    this.modes.set(p, mode);
  }

  lutimes(path: PathLike, atime: number | bigint, mtime: number | bigint): void {
    const p = str(path);
    this.record({ op: "lutimes", path: p, atime, mtime }, p);
    this.mustExist("utimensat", p);
    this.times.set(p, { atime, mtime });
  }

  futimes(fd: number, atime: number | bigint, mtime: number | bigint): void {
    const p = this.fdPath(fd);
    this.record({ op: "futimes", fd, path: p, atime, mtime }, `fd ${fd}`);
    this.times.set(p, { atime, mtime });
  }

  // --- extended attributes ----------------------------------------------------------------------

  private setX(op: string, p: string, name: PathLike, value: Uint8Array, flags: number): void {
    const n = str(name);
    this.record({ op, path: p, name: n, value: Buffer.from(value), flags }, `${n} on ${p}`);
    this.mustExist(op, p);
    let attrs = this.xattrs.get(p);
    if (!attrs) {
      attrs = new Map();
      this.xattrs.set(p, attrs);
    }
    if (flags === 1 && attrs.has(n)) throw new SyscallError(op, E.EEXIST, `${n} on ${p}`);
    if (flags === 2 && !attrs.has(n)) throw new SyscallError(op, E.ENODATA, `${n} on ${p}`);
    attrs.set(n, Buffer.from(value));
  }

  lsetxattr(path: PathLike, name: PathLike, value: Uint8Array, flags = 0): void {
    this.setX("lsetxattr", str(path), name, value, flags);
  }

  fsetxattr(fd: number, name: PathLike, value: Uint8Array, flags = 0): void {
    this.setX("fsetxattr", this.fdPath(fd), name, value, flags);
  }

  lgetxattr(path: PathLike, name: PathLike): Buffer | undefined {
    const p = str(path);
    const n = str(name);
    this.record({ op: "lgetxattr", path: p, name: n }, `${n} on ${p}`);
    this.mustExist("lgetxattr", p);
    return this.xattrs.get(p)?.get(n);
  }

  llistxattr(path: PathLike): Buffer[] {
    const p = str(path);
    this.record({ op: "llistxattr", path: p }, p);
    this.mustExist("llistxattr", p);
    return [...(this.xattrs.get(p)?.keys() ?? [])].map((n) => Buffer.from(n));
  }

  lremovexattr(path: PathLike, name: PathLike): void {
    const p = str(path);
    const n = str(name);
    this.record({ op: "lremovexattr", path: p, name: n }, `${n} on ${p}`);
    if (!this.xattrs.get(p)?.delete(n)) throw new SyscallError("lremovexattr", E.ENODATA, `${n} on ${p}`);
  }

  // --- probes -----------------------------------------------------------------------------------

  supportsDType(dir: string): boolean {
    this.record({ op: "supportsDType", path: dir }, dir);
    return this.dtype;
  }

  syncfs(fd: number): void {
    this.record({ op: "syncfs", fd }, `fd ${fd}`);
  }
}

function isSymlink(p: string): boolean {
  try {
    return lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}

/** MOUNT_ATTR_* back to the MS_* flags a mount(2) of the same mount would carry. */
function attrFlags(attrs: number): number {
  let f = 0;
  if (attrs & MOUNT_ATTR.RDONLY) f |= MS.RDONLY;
  if (attrs & MOUNT_ATTR.NOSUID) f |= MS.NOSUID;
  if (attrs & MOUNT_ATTR.NODEV) f |= MS.NODEV;
  if (attrs & MOUNT_ATTR.NOEXEC) f |= MS.NOEXEC;
  if (attrs & MOUNT_ATTR.NOATIME) f |= MS.NOATIME;
  if (attrs & MOUNT_ATTR.STRICTATIME) f |= MS.STRICTATIME;
  if (attrs & MOUNT_ATTR.NODIRATIME) f |= MS.NODIRATIME;
  return f;
}

class FakeFsContext implements FsContext {
  private readonly options: string[] = [];
  private source = "";
  private created = false;

  constructor(
    private readonly sys: FakeSyscalls,
    readonly fstype: string,
  ) {}

  flag(key: string): void {
    this.sys.recordContext({ op: "fsconfig", fstype: this.fstype, key }, `${this.fstype} ${key}`);
    this.options.push(key);
  }

  string(key: string, value: string): void {
    this.sys.recordContext(
      { op: "fsconfig", fstype: this.fstype, key, value },
      `${this.fstype} ${key}=${value}`,
    );
    if (key === "source") this.source = value;
    else this.options.push(`${key}=${value}`);
  }

  path(key: string, value: string): void {
    this.sys.recordContext(
      { op: "fsconfig", fstype: this.fstype, key, value, path: value },
      `${this.fstype} ${key}=${value}`,
    );
    if (!existsSync(value)) throw new SyscallError("fsconfig", E.ENOENT, `${this.fstype} ${key}=${value}`);
    this.options.push(`${key}=${value}`);
  }

  create(): void {
    this.sys.recordContext({ op: "fscreate", fstype: this.fstype }, `${this.fstype} create`);
    this.created = true;
  }

  attach(target: string, attrs: number): void {
    this.sys.recordContext(
      { op: "fsmount", fstype: this.fstype, target, attrs },
      `${this.fstype} on ${target}`,
    );
    if (!this.created) throw new SyscallError("fsmount", E.EINVAL, `${this.fstype} on ${target}`);
    this.sys.attached({
      source: this.source,
      target,
      fstype: this.fstype,
      flags: attrFlags(attrs),
      data: this.options.join(","),
    });
  }

  close(): void {
    this.sys.recordContext({ op: "fsclose", fstype: this.fstype }, this.fstype);
  }
}
