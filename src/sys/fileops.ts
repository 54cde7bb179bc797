// File syscalls Node's fs module lacks (xattrs in xattr.ts; mknod and the nanosecond utimensat
// in mknod.ts): a d_type probe (getdents64).
import { closeSync, constants as fsConstants, openSync } from "node:fs";
import { SyscallError } from "./errors.js";
import { lastErrno, libc } from "./libc.js";

const DT_UNKNOWN = 0;

/**
 * Whether the filesystem holding dir reports entry types in readdir (d_type). Overlay needs
 * it; xfs formatted with ftype=0 does not. `dir` must hold at least one entry besides . and ..
 */
export function supportsDType(dir: string): boolean {
  const getdents = libc("getdents64", "intptr_t getdents64(int, void *, size_t)");
  const fd = openSync(dir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
  try {
    const buf = Buffer.alloc(32 * 1024);
    for (;;) {
      const n = Number(getdents(fd, buf, buf.length));
      if (n < 0) throw new SyscallError("getdents64", lastErrno(), dir);
      if (n === 0) return false;
      // struct linux_dirent64: u64 ino, s64 off, u16 reclen, u8 type, char name[]
      for (let off = 0; off < n; ) {
        const reclen = buf.readUInt16LE(off + 16);
        const type = buf.readUInt8(off + 18);
        const end = buf.indexOf(0, off + 19);
        const name = buf.toString("utf8", off + 19, end < 0 || end > off + reclen ? off + reclen : end);
        if (name !== "." && name !== "..") return type !== DT_UNKNOWN;
        off += reclen;
      }
    }
  } finally {
    closeSync(fd);
  }
}
