// mknod(2) for device nodes and fifos, syncfs(2), and utimensat(2)/futimens(2) for nanosecond
// times; paths as strings or byte buffers.

import { SyscallError } from "./errors.js";
import { lastErrno, libc } from "./libc.js";

export const S_IFMT = 0o170000;
export const S_IFIFO = 0o010000;
export const S_IFCHR = 0o020000;
export const S_IFDIR = 0o040000;
export const S_IFBLK = 0o060000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const S_IFSOCK = 0o140000;

/** glibc's makedev: the 64-bit dev_t of a major/minor pair. */
export function makedev(major: number, minor: number): bigint {
  const ma = BigInt(major >>> 0);
  const mi = BigInt(minor >>> 0);
  return ((ma & 0xfffff000n) << 32n) | ((ma & 0xfffn) << 8n) | ((mi & 0xffffff00n) << 12n) | (mi & 0xffn);
}

/** The major/minor numbers of a dev_t (as node's fs.Stats.rdev reports it). */
export function devNumbers(rdev: number | bigint): { major: number; minor: number } {
  const d = BigInt(rdev);
  const major = Number(((d >> 32n) & 0xfffff000n) | ((d >> 8n) & 0xfffn));
  const minor = Number(((d >> 12n) & 0xffffff00n) | (d & 0xffn));
  return { major, minor };
}

function cstr(p: string | Uint8Array): string | Buffer {
  if (typeof p === "string") return p;
  const b = Buffer.allocUnsafe(p.length + 1);
  b.set(p, 0);
  b[p.length] = 0;
  return b;
}

const show = (p: string | Uint8Array) => (typeof p === "string" ? p : Buffer.from(p).toString("utf8"));

/** mknod(path, mode, dev): mode carries the file type (S_IFCHR, S_IFBLK, S_IFIFO) and permissions. */
export function mknod(path: string | Uint8Array, mode: number, dev: bigint | number = 0): void {
  const fn = libc("mknod", "int mknod(const void *path, uint32_t mode, uint64_t dev)");
  const r = fn(cstr(path), mode >>> 0, BigInt(dev)) as number;
  if (r !== 0) throw new SyscallError("mknod", lastErrno(), show(path));
}

/** syncfs(fd): flush the filesystem holding fd. */
export function syncfs(fd: number): void {
  const fn = libc("syncfs", "int syncfs(int fd)");
  const r = fn(fd) as number;
  if (r !== 0) throw new SyscallError("syncfs", lastErrno(), `fd ${fd}`);
}

const AT_FDCWD = -100;
const AT_SYMLINK_NOFOLLOW = 0x100;

/** struct timespec[2] {atime, mtime} from nanoseconds since the epoch. */
function timespecs(atimeNs: bigint, mtimeNs: bigint): Buffer {
  const b = Buffer.alloc(32);
  const put = (off: number, ns: bigint) => {
    let sec = ns / 1_000_000_000n;
    let nsec = ns % 1_000_000_000n;
    if (nsec < 0n) {
      nsec += 1_000_000_000n;
      sec -= 1n;
    }
    b.writeBigInt64LE(sec, off);
    b.writeBigInt64LE(nsec, off + 8);
  };
  put(0, atimeNs);
  put(16, mtimeNs);
  return b;
}

/** Set times with nanosecond precision on the path itself (symlinks are not followed). */
export function lutimensNs(path: string | Uint8Array, atimeNs: bigint, mtimeNs: bigint): void {
  const fn = libc("utimensat", "int utimensat(int dirfd, const void *path, const void *times, int flags)");
  const r = fn(AT_FDCWD, cstr(path), timespecs(atimeNs, mtimeNs), AT_SYMLINK_NOFOLLOW) as number;
  if (r !== 0) throw new SyscallError("utimensat", lastErrno(), show(path));
}

/** Set times with nanosecond precision on an open file. */
export function futimensNs(fd: number, atimeNs: bigint, mtimeNs: bigint): void {
  const fn = libc("futimens", "int futimens(int fd, const void *times)");
  const r = fn(fd, timespecs(atimeNs, mtimeNs)) as number;
  if (r !== 0) throw new SyscallError("futimens", lastErrno(), `fd ${fd}`);
}
