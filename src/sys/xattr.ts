// Extended attributes (l*xattr / f*xattr) through libc. Paths and attribute names may be given as
// strings (UTF-8) or as byte buffers, so that names which are not valid UTF-8 survive unchanged.

import { SyscallError } from "./errors.js";
import { lastErrno, libc } from "./libc.js";

export type PathLike = string | Uint8Array;

export const ENODATA = 61;
export const ENOTSUP = 95;
export const ERANGE = 34;
export const EPERM = 1;

/** A NUL-terminated copy of a byte path; strings are handed to koffi as they are. */
function cstr(p: PathLike): string | Buffer {
  if (typeof p === "string") return p;
  const b = Buffer.allocUnsafe(p.length + 1);
  b.set(p, 0);
  b[p.length] = 0;
  return b;
}

const show = (p: PathLike) => (typeof p === "string" ? p : Buffer.from(p).toString("utf8"));

const sig = {
  lsetxattr: "int lsetxattr(const void *path, const void *name, const void *value, size_t size, int flags)",
  setxattr: "int setxattr(const void *path, const void *name, const void *value, size_t size, int flags)",
  fsetxattr: "int fsetxattr(int fd, const void *name, const void *value, size_t size, int flags)",
  lgetxattr: "intptr_t lgetxattr(const void *path, const void *name, _Out_ void *value, size_t size)",
  llistxattr: "intptr_t llistxattr(const void *path, _Out_ void *list, size_t size)",
  lremovexattr: "int lremovexattr(const void *path, const void *name)",
};

function check(r: number | bigint, syscall: string, detail: string): number {
  const n = Number(r);
  if (n < 0) throw new SyscallError(syscall, lastErrno(), detail);
  return n;
}

/** Set an attribute on the path itself (symlinks are not followed). */
export function lsetxattr(path: PathLike, name: PathLike, value: Uint8Array, flags = 0): void {
  const fn = libc("lsetxattr", sig.lsetxattr);
  check(
    fn(cstr(path), cstr(name), value, value.length, flags),
    "lsetxattr",
    `${show(name)} on ${show(path)}`,
  );
}

/** Set an attribute, following symlinks. */
export function setxattr(path: PathLike, name: PathLike, value: Uint8Array, flags = 0): void {
  const fn = libc("setxattr", sig.setxattr);
  check(fn(cstr(path), cstr(name), value, value.length, flags), "setxattr", `${show(name)} on ${show(path)}`);
}

/** Set an attribute on an open file. */
export function fsetxattr(fd: number, name: PathLike, value: Uint8Array, flags = 0): void {
  const fn = libc("fsetxattr", sig.fsetxattr);
  check(fn(fd, cstr(name), value, value.length, flags), "fsetxattr", `${show(name)} on fd ${fd}`);
}

/** The value of an attribute, or undefined when the file has none of that name (or the fs none at all). */
export function lgetxattr(path: PathLike, name: PathLike): Buffer | undefined {
  const fn = libc("lgetxattr", sig.lgetxattr);
  const p = cstr(path);
  const n = cstr(name);
  let size = 256;
  for (let i = 0; i < 8; i++) {
    const buf = Buffer.allocUnsafe(size);
    const r = Number(fn(p, n, buf, size));
    if (r >= 0) return buf.subarray(0, r);
    const errno = lastErrno();
    if (errno === ENODATA || errno === ENOTSUP) return undefined;
    if (errno !== ERANGE) throw new SyscallError("lgetxattr", errno, `${show(name)} on ${show(path)}`);
    size = Math.max(size * 4, check(fn(p, n, null, 0), "lgetxattr", `${show(name)} on ${show(path)}`));
  }
  throw new SyscallError("lgetxattr", ERANGE, `${show(name)} on ${show(path)}`);
}

/** Attribute names of the path itself, as byte buffers; empty when the fs has no xattrs. */
export function llistxattr(path: PathLike): Buffer[] {
  const fn = libc("llistxattr", sig.llistxattr);
  const p = cstr(path);
  let size = 1024;
  for (let i = 0; i < 8; i++) {
    const buf = Buffer.allocUnsafe(size);
    const r = Number(fn(p, buf, size));
    if (r >= 0) {
      const out: Buffer[] = [];
      let start = 0;
      for (let j = 0; j < r; j++) {
        if (buf[j] === 0) {
          if (j > start) out.push(Buffer.from(buf.subarray(start, j)));
          start = j + 1;
        }
      }
      return out;
    }
    const errno = lastErrno();
    if (errno === ENOTSUP) return [];
    if (errno !== ERANGE) throw new SyscallError("llistxattr", errno, show(path));
    size = Math.max(size * 4, check(fn(p, null, 0), "llistxattr", show(path)));
  }
  throw new SyscallError("llistxattr", ERANGE, show(path));
}

export function lremovexattr(path: PathLike, name: PathLike): void {
  const fn = libc("lremovexattr", sig.lremovexattr);
  check(fn(cstr(path), cstr(name)), "lremovexattr", `${show(name)} on ${show(path)}`);
}
