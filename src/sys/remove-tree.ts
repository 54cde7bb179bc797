// `rm -rf` for what a call removes and waits for (a task's bundle, a snapshot removed
// synchronously, a CRI pod's directories). fs.promises.rm sends every entry through libuv's
// thread pool, several calls each (lstat, rmdir, readdir, unlink): a task bundle of ten files
// cost ~50 round trips, each a wake-up of a pool thread and of the event loop, which on this kind
// of VM costs more CPU than the calls themselves. A small tree is removed here with synchronous
// calls instead, one per file and a few per directory; a tree that turns out larger than the
// budget (a container's writable layer can hold any number of files) is finished in the pool, so
// a large removal never holds up the event loop. Removals that run in the background (a
// collection's sweep) stay with fs.promises.rm: there even a few synchronous calls delay the
// calls that arrive meanwhile (docs/performance.md, finding 79).
import { lstatSync, readdirSync, rmdirSync, unlinkSync } from "node:fs";
import { rm } from "node:fs/promises";
import { join } from "node:path";

/** Entries removed synchronously before the rest is left to the thread pool. */
const SYNC_REMOVE_BUDGET = 64;

/**
 * Remove `path` and everything under it; a missing path is not an error. Symbolic links are
 * removed, never followed. Errors are fs.promises.rm's, whose removal takes over from the first
 * entry the synchronous part could not remove.
 */
export async function removeTree(path: string, budget = SYNC_REMOVE_BUDGET): Promise<void> {
  try {
    const st = lstatSync(path, { throwIfNoEntry: false });
    if (!st) return;
    if (!st.isDirectory()) {
      unlinkSync(path);
      return;
    }
    if (removeDir(path, { n: budget })) return;
  } catch {
    // whatever failed (EBUSY, EPERM, ...) fails again below with rm's error, or rm gets past it
  }
  await rm(path, { recursive: true, force: true });
}

/**
 * Removes a directory (not a link to one) bottom-up. True once it is gone; false when the budget
 * ran out first, with part of it removed: fs.promises.rm finishes the rest.
 */
function removeDir(path: string, left: { n: number }): boolean {
  // entry types come from the listing (d_type; Node stats the entries a filesystem leaves
  // untyped), so a link to a directory is unlinked like a file
  const entries = readdirSync(path, { withFileTypes: true });
  left.n -= 1 + entries.length;
  if (left.n < 0) return false;
  for (const e of entries) {
    const child = join(path, e.name);
    if (e.isDirectory()) {
      if (!removeDir(child, left)) return false;
    } else unlinkSync(child);
  }
  rmdirSync(path);
  return true;
}
