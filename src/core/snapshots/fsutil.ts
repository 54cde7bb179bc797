// Filesystem helpers for the local snapshotters: disk usage of a tree (what a committed
// snapshot records) and a faithful tree copy (what the native snapshotter makes of its parent).
import { constants as fsConstants, lstatSync, readdirSync } from "node:fs";
import { copyFile, link, lstat, mkdir, opendir, readlink, symlink } from "node:fs/promises";
import { join } from "node:path";
import { realSyscalls, type Syscalls } from "../../sys/syscalls.js";
import type { Usage } from "./snapshotter.js";

/** Bytes of st_blocks. */
const BLOCK = 512;
/** Longest stretch a walk runs before letting other work in. */
const YIELD_MS = 10;

/**
 * Space and inodes used by the tree at root (root included): allocated blocks of each distinct
 * inode, so hard links count once.
 */
export async function diskUsage(root: string): Promise<Usage> {
  // Only an inode with more than one link can be met twice (directories cannot be hard-linked),
  // so only those are remembered, by their exact (bigint) identity. Plain number stats and path
  // concatenation keep the walk at about the cost of its system calls: it runs once per
  // extracted layer, over every entry.
  const linked = new Set<string>();
  let size = 0;
  let inodes = 0;
  // Synchronous calls are several times faster than the fs promise API here; the walk yields
  // to the event loop every few milliseconds so that a big layer does not stall the daemon.
  const stack: string[] = [root];
  let slice = performance.now();
  let count = 0;
  while (stack.length > 0) {
    const path = stack.pop()!;
    const st = lstatSync(path);
    if (st.isDirectory()) {
      size += st.blocks * BLOCK;
      inodes++;
      const prefix = path.endsWith("/") ? path : `${path}/`;
      for (const name of readdirSync(path)) stack.push(prefix + name);
    } else if (st.nlink > 1) {
      const big = lstatSync(path, { bigint: true });
      const id = `${big.dev}:${big.ino}`;
      if (!linked.has(id)) {
        linked.add(id);
        size += st.blocks * BLOCK;
        inodes++;
      }
    } else {
      size += st.blocks * BLOCK;
      inodes++;
    }
    if (++count % 256 === 0 && performance.now() - slice > YIELD_MS) {
      await new Promise((r) => setImmediate(r));
      slice = performance.now();
    }
  }
  return { size, inodes };
}

export interface CopyOptions {
  /** Device nodes, owners, modes, xattrs and times go through these calls (default: the kernel's). */
  sys?: Syscalls;
  /** Called when an extended attribute cannot be copied; rethrow to fail the copy. */
  onXattrError?: (path: string, name: string, err: unknown) => void;
}

type BigStats = Awaited<ReturnType<typeof statBig>>;
const statBig = (p: string) => lstat(p, { bigint: true });

/**
 * Copy the tree at src into dst (which may exist, as an empty directory): contents, owners,
 * modes, extended attributes, hard links, symlinks, devices, fifos and sockets, and access and
 * modification times (directories' last, so that filling them does not change theirs).
 */
export async function copyDir(dst: string, src: string, opts: CopyOptions = {}): Promise<void> {
  const links = new Map<string, string>();
  await copyTree(dst, src, await statBig(src), links, opts);
}

async function copyTree(
  dst: string,
  src: string,
  st: BigStats,
  links: Map<string, string>,
  opts: CopyOptions,
) {
  try {
    await mkdir(dst, { mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
  }
  const dir = await opendir(src);
  const names: string[] = [];
  for await (const e of dir) names.push(e.name);
  for (const name of names) {
    const s = join(src, name);
    const d = join(dst, name);
    const est = await statBig(s);
    if (est.isDirectory()) {
      await copyTree(d, s, est, links, opts);
      continue;
    }
    if (est.nlink > 1n) {
      const id = `${est.dev}:${est.ino}`;
      const first = links.get(id);
      if (first !== undefined) {
        await link(first, d);
        continue;
      }
      links.set(id, d);
    }
    if (est.isFile()) {
      await copyFile(s, d, fsConstants.COPYFILE_FICLONE);
    } else if (est.isSymbolicLink()) {
      await symlink(await readlink(s), d);
    } else {
      // character/block devices, fifos, sockets
      (opts.sys ?? realSyscalls).mknod(d, Number(est.mode), est.rdev);
    }
    copyInfo(d, s, est, opts);
  }
  copyInfo(dst, src, st, opts);
}

/** Owner, mode, extended attributes, then times (in this order: chown clears set-id bits). */
function copyInfo(dst: string, src: string, st: BigStats, opts: CopyOptions): void {
  const sys = opts.sys ?? realSyscalls;
  sys.lchown(dst, Number(st.uid), Number(st.gid));
  if (!st.isSymbolicLink()) sys.chmod(dst, Number(st.mode & 0o7777n));
  copyXattrs(dst, src, sys, opts);
  sys.lutimes(dst, st.atimeNs, st.mtimeNs);
}

function copyXattrs(dst: string, src: string, sys: Syscalls, opts: CopyOptions): void {
  let names: Buffer[];
  try {
    names = sys.llistxattr(src);
  } catch (err) {
    if (!opts.onXattrError) throw err;
    opts.onXattrError(src, "", err);
    return;
  }
  for (const name of names) {
    try {
      const v = sys.lgetxattr(src, name);
      if (v !== undefined) sys.lsetxattr(dst, name, v);
    } catch (err) {
      if (!opts.onXattrError) throw err;
      opts.onXattrError(dst, name.toString(), err);
    }
  }
}
