// A space reserve next to the metadata database. SQLite in WAL mode appends frames to the WAL even
// to delete rows, so on a filesystem full to the last byte every deletion fails with SQLITE_FULL
// and an operator cannot free space through berth at all (removing a container, a snapshot, an
// image). The reserve is a file of real blocks written while there is room; a transaction that
// frees space and fails for lack of it unlinks the file and runs again. Writes that do not free
// space never touch it, so a pull cannot eat it. Once space is back the file is written again.

import { randomBytes } from "node:crypto";
import { closeSync, openSync, renameSync, statfsSync, statSync, unlinkSync, writeSync } from "node:fs";
import { dirname, join } from "node:path";
import { type Logger, nopLogger } from "../../base/log.js";

/**
 * 8 MiB. What a deletion appends to the WAL, measured on a database of 2,000 images (8 blobs and
 * 6 snapshots each), 500 containers, 18 MiB in all: removing one container, image, blob or
 * snapshot 12 to 30 KiB; a collection after 10% of the images were removed 1.7 MiB, after all of
 * them (28,000 rows) 4.2 MiB. The worst found, deleting nearly every row of a 17 MiB database with
 * long labels in one collection, took 7.4 MiB. 8 MiB covers a large node's full clean-up with
 * room for the operator's own deletions and for a snapshotter's database, which shares it.
 */
export const RESERVE_BYTES = 8 << 20;

/** While the reserve is missing, how often to look for room to write it again. */
export const RESERVE_RETRY_MS = 2000;

/** Out of space as the kernel or SQLite reports it. */
export function isOutOfSpace(err: unknown): boolean {
  const code = (err as { code?: unknown } | undefined)?.code;
  return code === "SQLITE_FULL" || code === "ENOSPC" || code === "EDQUOT";
}

/** Every open reserve, so another database on the same filesystem (a snapshotter's) can use it. */
const open = new Set<SpaceReserve>();

export interface ReserveOptions {
  bytes?: number;
  log?: Logger;
  retryMs?: number;
  /** What the reserve is for, in log messages ("metadata"). */
  name?: string;
}

export class SpaceReserve {
  readonly bytes: number;
  private readonly log: Logger;
  private readonly retryMs: number;
  private readonly name: string;
  private readonly dev: number;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  /** Said once per stretch without the reserve, not at every retry. */
  private toldMissing = false;

  /** `path` is the reserve file; its directory must exist. Writes the file if it can. */
  constructor(
    readonly path: string,
    opts: ReserveOptions = {},
  ) {
    this.bytes = opts.bytes ?? RESERVE_BYTES;
    this.log = opts.log ?? nopLogger;
    this.retryMs = opts.retryMs ?? RESERVE_RETRY_MS;
    this.name = opts.name ?? "metadata";
    this.dev = statSync(dirname(path)).dev;
    open.add(this);
    if (!this.ensure()) this.retryLater();
  }

  private get mib(): string {
    return `${Math.round((this.bytes / (1 << 20)) * 10) / 10} MiB`;
  }

  /** Whether the file is there with all its blocks. */
  present(): boolean {
    try {
      const st = statSync(this.path);
      // blocks, not only the size: a sparse or truncated file holds no space to give back
      return st.size === this.bytes && st.blocks * 512 >= this.bytes;
    } catch {
      return false;
    }
  }

  /**
   * Write the file when it is missing and the filesystem has room for it twice over: taking the
   * last free megabytes back at once would fill the disk again just after an operator freed it.
   * Never throws; false when the reserve is not there afterwards.
   */
  ensure(): boolean {
    if (this.closed) return false;
    if (this.present()) return true;
    try {
      const st = statfsSync(dirname(this.path));
      const free = st.bavail * st.bsize;
      if (free < 2 * this.bytes) {
        this.missing(`only ${Math.floor(free / 1024)} KiB free`);
        return false;
      }
    } catch (err) {
      this.missing(String(err));
      return false;
    }
    const tmp = `${this.path}.tmp`;
    let fd: number | undefined;
    try {
      fd = openSync(tmp, "w", 0o600);
      // Random bytes rather than zeros: a compressing filesystem (btrfs, zfs) stores zeros in no
      // blocks at all, and a tmpfs only gives pages to what was written.
      const chunk = randomBytes(Math.min(this.bytes, 1 << 20));
      for (let off = 0; off < this.bytes; ) {
        const n = Math.min(chunk.length, this.bytes - off);
        off += writeSync(fd, chunk, 0, n);
      }
      closeSync(fd);
      fd = undefined;
      renameSync(tmp, this.path);
      return true;
    } catch (err) {
      if (fd !== undefined) closeSync(fd);
      try {
        unlinkSync(tmp);
      } catch {
        // nothing was created
      }
      this.missing(String(err));
      return false;
    }
  }

  private missing(why: string): void {
    if (this.toldMissing) return;
    this.toldMissing = true;
    this.log.info(`no room for the ${this.mib} ${this.name} space reserve; carrying on without it`, {
      path: this.path,
      reason: why,
    });
  }

  /**
   * Unlink the file so a deletion can proceed on a full disk; false when there was none. Starts
   * looking for room to write it again.
   */
  release(error: unknown): boolean {
    if (!this.present()) return false;
    try {
      unlinkSync(this.path);
    } catch {
      return false;
    }
    this.log.warn(`disk full: released the ${this.mib} ${this.name} reserve so a deletion can proceed`, {
      path: this.path,
      error: String(error),
    });
    this.retryLater();
    return true;
  }

  /** Try to write the file again now (a collection just ran, say); never throws. */
  restore(): void {
    if (this.present()) return;
    if (this.ensure()) this.recreated();
  }

  private recreated(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.toldMissing = false;
    this.log.info(`space is back: re-created the ${this.mib} ${this.name} reserve`, { path: this.path });
  }

  private retryLater(): void {
    if (this.timer || this.closed) return;
    this.timer = setInterval(() => {
      if (this.ensure()) this.recreated();
    }, this.retryMs);
    this.timer.unref();
  }

  /** Whether `path` (an existing directory or file) is on this reserve's filesystem. */
  covers(path: string): boolean {
    try {
      return statSync(path).dev === this.dev;
    } catch {
      return false;
    }
  }

  /** Stop retrying; the file stays for the next start. */
  close(): void {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    open.delete(this);
  }
}

/**
 * Release an open reserve on the filesystem holding `path` (a snapshotter's database shares the
 * metadata reserve when it lives on the same disk). False when there is none to release.
 */
export function releaseReserveFor(path: string, error: unknown): boolean {
  for (const r of open) if (r.covers(path) && r.release(error)) return true;
  return false;
}

/**
 * Run `attempt` (a transaction that frees space); if it fails for lack of space and `release`
 * gives some back, run it once more. Any other failure, or no space to give, throws as it came.
 */
export function retryFreeing<T>(attempt: () => T, release: (err: unknown) => boolean): T {
  try {
    return attempt();
  } catch (err) {
    if (!isOutOfSpace(err) || !release(err)) throw err;
    return attempt();
  }
}

/** The reserve file next to a database file. */
export function reservePathFor(dbPath: string): string {
  return join(dirname(dbPath), "reserve");
}
