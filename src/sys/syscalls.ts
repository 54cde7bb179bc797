// The calls berth's filesystem code makes that need privilege or that Node's fs lacks, behind one
// interface (as youki's Syscall trait): mounts, device nodes, ownership, modes, times and extended
// attributes. Code that takes a `Syscalls` can be unit-tested on the recording fake (fake.ts)
// without root; `realSyscalls` is the kernel. Creating, writing, listing and removing files is
// not here: Node's fs does that, unprivileged, in a test's temp directory as well.
import {
  chmodSync,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  lutimesSync,
  type PathLike as NodePathLike,
} from "node:fs";
import { supportsDType } from "./fileops.js";
import { futimensNs, lutimensNs, mknod, syncfs } from "./mknod.js";
import { type FsContext, fsopen, mountSyscall, unmount } from "./mount.js";
import { fsetxattr, lgetxattr, llistxattr, lremovexattr, lsetxattr, type PathLike } from "./xattr.js";

export type { FsContext } from "./mount.js";
export type { PathLike } from "./xattr.js";

export interface Syscalls {
  /** mount(2); an empty `data` is no data. */
  mount(source: string, target: string, fstype: string, flags: number, data: string): void;
  /** umount2(2); throws SyscallError EINVAL when target is not a mount point. */
  unmount(target: string, flags?: number): void;
  /** A new mount API filesystem context (fsopen). */
  fsopen(fstype: string): FsContext;

  /** mknod(2): `mode` carries the file type (S_IFCHR, S_IFBLK, S_IFIFO) and permissions. */
  mknod(path: PathLike, mode: number, dev?: bigint | number): void;
  /** Owner of the path itself (symlinks are not followed). */
  lchown(path: PathLike, uid: number, gid: number): void;
  fchown(fd: number, uid: number, gid: number): void;
  /** Mode of the path (follows symlinks, as chmod(2)). */
  chmod(path: PathLike, mode: number): void;
  fchmod(fd: number, mode: number): void;
  /**
   * Access and modification times of the path itself: seconds (fractions allowed) as numbers, or
   * nanoseconds since the epoch as bigints.
   */
  lutimes(path: PathLike, atime: number, mtime: number): void;
  lutimes(path: PathLike, atime: bigint, mtime: bigint): void;
  futimes(fd: number, atime: number, mtime: number): void;
  futimes(fd: number, atime: bigint, mtime: bigint): void;

  /** Set an attribute on the path itself. `flags`: XATTR_CREATE (1) / XATTR_REPLACE (2). */
  lsetxattr(path: PathLike, name: PathLike, value: Uint8Array, flags?: number): void;
  fsetxattr(fd: number, name: PathLike, value: Uint8Array, flags?: number): void;
  /** An attribute's value; undefined when the file (or its filesystem) has none of that name. */
  lgetxattr(path: PathLike, name: PathLike): Buffer | undefined;
  /** Attribute names of the path itself; empty when the filesystem has no xattrs. */
  llistxattr(path: PathLike): Buffer[];
  lremovexattr(path: PathLike, name: PathLike): void;

  /** Whether the filesystem holding dir reports entry types (d_type); dir must not be empty. */
  supportsDType(dir: string): boolean;
  /** syncfs(2): flush the filesystem holding fd. */
  syncfs(fd: number): void;
}

/** Node's fs takes Uint8Array paths only as Buffers. */
const nodePath = (p: PathLike): NodePathLike =>
  typeof p === "string" || Buffer.isBuffer(p) ? p : Buffer.from(p);

/** The kernel: libc through koffi, and Node's fs where it already has the call. */
export const realSyscalls: Syscalls = {
  mount: mountSyscall,
  unmount,
  fsopen,
  mknod,
  lchown: (path, uid, gid) => lchownSync(nodePath(path), uid, gid),
  fchown: fchownSync,
  chmod: (path, mode) => chmodSync(nodePath(path), mode),
  fchmod: fchmodSync,
  lutimes(path: PathLike, atime: number | bigint, mtime: number | bigint): void {
    if (typeof atime === "bigint") lutimensNs(path, atime, mtime as bigint);
    else lutimesSync(nodePath(path), atime, mtime as number);
  },
  futimes(fd: number, atime: number | bigint, mtime: number | bigint): void {
    if (typeof atime === "bigint") futimensNs(fd, atime, mtime as bigint);
    else futimesSync(fd, atime, mtime as number);
  },
  lsetxattr,
  fsetxattr,
  lgetxattr,
  llistxattr,
  lremovexattr,
  supportsDType,
  syncfs,
};
