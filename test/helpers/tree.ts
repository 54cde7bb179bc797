// Describe a directory tree as comparable records (type, mode, owner, size, mtime, content hash,
// link target, device numbers, xattrs, hard-link groups), for tests that compare trees.
import { createHash } from "node:crypto";
import { lstatSync, readdirSync, readFileSync, readlinkSync } from "node:fs";
import { join } from "node:path";
import { lgetxattr, llistxattr } from "../../src/sys/xattr.js";

export interface TreeEntry {
  type: string;
  mode: string;
  uid: number;
  gid: number;
  size?: number;
  /** Seconds (integer) for non-directories, and for directories unless ignored. */
  mtime?: number;
  sha?: string;
  link?: string;
  rdev?: number;
  xattrs?: Record<string, string>;
  /** For hard links: the first path (sorted) sharing the inode. */
  linkedTo?: string;
}

export interface TreeOptions {
  /** Leave directory mtimes out (they change with any creation inside). */
  noDirTimes?: boolean;
  /** Leave all mtimes out. */
  noTimes?: boolean;
  /** xattr names to leave out (prefix match). */
  skipXattrs?: string[];
}

function typeOf(mode: number): string {
  switch (mode & 0o170000) {
    case 0o040000:
      return "dir";
    case 0o100000:
      return "file";
    case 0o120000:
      return "symlink";
    case 0o020000:
      return "char";
    case 0o060000:
      return "block";
    case 0o010000:
      return "fifo";
    case 0o140000:
      return "socket";
    default:
      return "?";
  }
}

/** path (relative, "/"-separated) → entry, for everything below `root` (not root itself). */
export function describeTree(root: string, opts: TreeOptions = {}): Record<string, TreeEntry> {
  const out: Record<string, TreeEntry> = {};
  const inodes = new Map<string, string>();
  const walk = (rel: string) => {
    const names = readdirSync(join(root, rel)).sort();
    for (const n of names) {
      const r = rel ? `${rel}/${n}` : n;
      const p = join(root, r);
      const st = lstatSync(p);
      const type = typeOf(st.mode);
      const e: TreeEntry = { type, mode: (st.mode & 0o7777).toString(8), uid: st.uid, gid: st.gid };
      if (!opts.noTimes && !(opts.noDirTimes && type === "dir")) e.mtime = Math.floor(st.mtimeMs / 1000);
      if (type === "file") {
        e.size = st.size;
        e.sha = createHash("sha256").update(readFileSync(p)).digest("hex").slice(0, 16);
      }
      if (type === "symlink") e.link = readlinkSync(p);
      if (type === "char" || type === "block") e.rdev = st.rdev;
      const xs: Record<string, string> = {};
      for (const x of llistxattr(p)) {
        const k = x.toString("utf8");
        if (opts.skipXattrs?.some((s) => k.startsWith(s))) continue;
        xs[k] = (lgetxattr(p, x) ?? Buffer.alloc(0)).toString("base64");
      }
      if (Object.keys(xs).length > 0) e.xattrs = xs;
      if (type !== "dir" && st.nlink > 1) {
        const key = `${st.dev}:${st.ino}`;
        const first = inodes.get(key);
        if (first) e.linkedTo = first;
        else inodes.set(key, r);
      }
      out[r] = e;
      if (type === "dir") walk(r);
    }
  };
  walk("");
  return out;
}
