// What the local snapshotters (overlayfs, native) share: a MetaStore in <root>/metadata.db and one
// directory per snapshot id under <root>/snapshots. A new snapshot's directory is filled under a
// staging name ("stage-…", see createStagingDir) and renamed to its id inside the transaction that
// records it, so a crash leaves either nothing or a complete snapshot (plus staging debris, removed
// at the next start).
// Removal forgets the record first, then renames the directory to "rm-<id>" and deletes it now
// (sync) or leaves it to cleanup() (async).
import { existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync } from "node:fs";
import { rm } from "node:fs/promises";
import { basename, join } from "node:path";
import { BerthError, errAborted, errFailedPrecondition } from "../../base/errdefs.js";
import { type Logger, nopLogger } from "../../base/log.js";
import type { Mount } from "../../base/mount.js";
import { removeTree } from "../../sys/remove-tree.js";
import { FREES, type Labels } from "../metadata/db.js";
import { diskUsage } from "./fsutil.js";
import type { Kind, SnapshotInfo, Snapshotter, Usage } from "./snapshotter.js";
import { MetaStore, type StoredSnapshot } from "./storage.js";

/** Prefix an error's message, keeping its kind (or errno code). */
export function wrapError(err: unknown, prefix: string): Error {
  if (err instanceof BerthError) {
    const e = new BerthError(err.kind, undefined, { cause: err });
    e.message = `${prefix}: ${err.message}`;
    return e;
  }
  if (err instanceof Error) {
    err.message = `${prefix}: ${err.message}`;
    return err;
  }
  return new Error(`${prefix}: ${String(err)}`);
}

/** Name prefix of staging directories under snapshots/ (see createStagingDir). */
export const STAGING_PREFIX = "stage-";

export interface LocalOptions {
  /** Leave removed snapshots' directories for cleanup() instead of deleting them at once. */
  asyncRemove?: boolean;
  log?: Logger;
}

export abstract class LocalSnapshotter implements Snapshotter {
  protected readonly ms: MetaStore;
  readonly snapshotsDir: string;
  protected readonly asyncRemove: boolean;
  protected readonly log: Logger;
  /** Temporary directories of snapshots being created: cleanup() must leave them alone. */
  private readonly inflight = new Set<string>();
  private cleaning: Promise<void> = Promise.resolve();
  /** kinds() as of the store's generation `gen`. */
  private kindsMemo?: {
    gen: number;
    map: ReadonlyMap<string, { readonly kind: Kind; readonly labels: Readonly<Labels> }>;
  };

  constructor(
    readonly root: string,
    opts: LocalOptions = {},
  ) {
    this.asyncRemove = opts.asyncRemove ?? false;
    this.log = opts.log ?? nopLogger;
    mkdirSync(root, { recursive: true, mode: 0o700 });
    this.ms = new MetaStore(join(root, "metadata.db"));
    this.snapshotsDir = join(root, "snapshots");
    mkdirSync(this.snapshotsDir, { recursive: true, mode: 0o700 });
    const names = readdirSync(this.snapshotsDir);
    let max = 0;
    for (const name of names) {
      const m = /^(?:rm-)?(\d+)$/.exec(name);
      if (m) max = Math.max(max, Number(m[1]));
    }
    this.ms.reserveIdsUpTo(max);
    // Staging directories a crash left behind belong to nothing, nor do removed snapshots'
    // directories (renamed to rm-<id> only once their record is gone) that a crash kept from
    // being deleted: remove them in the background (close() waits), as cleanup() would.
    const dir = this.snapshotsDir;
    const log = this.log;
    const stale = names.filter((n) => n.startsWith(STAGING_PREFIX) || /^rm-\d+$/.test(n));
    if (stale.length > 0) {
      this.cleaning = (async () => {
        for (const name of stale) {
          const path = join(dir, name);
          await rm(path, { recursive: true, force: true }).catch((err: unknown) =>
            log.warn("failed to remove stale staging directory", { path, error: String(err) }),
          );
        }
      })();
    }
  }

  /**
   * A new empty directory on the snapshots' filesystem (mode 0700) where a snapshot's content can
   * be built before the snapshot exists, then renamed into it. cleanup() leaves it alone until
   * releaseStagingDir(); a crash leaves it to the next start (or cleanup()).
   */
  createStagingDir(): string {
    const td = mkdtempSync(join(this.snapshotsDir, STAGING_PREFIX));
    this.inflight.add(basename(td));
    return td;
  }

  /** Remove a staging directory (whatever is still in it) and forget it. */
  async releaseStagingDir(path: string): Promise<void> {
    try {
      await removeTree(path);
    } catch (err) {
      this.log.warn("failed to remove staging directory", { path, error: String(err) });
    } finally {
      this.inflight.delete(basename(path));
    }
  }

  /** The directory of snapshot `id`. */
  snapshotDir(id: string): string {
    return join(this.snapshotsDir, id);
  }

  /** The directory whose disk usage is the snapshot's own (overlay: its upper dir). */
  protected abstract usagePath(id: string): string;
  /** Mounts for an active or view snapshot. */
  protected abstract mountsFor(s: StoredSnapshot): Mount[];
  /** Whether a new snapshot of this kind gets a directory of its own. */
  protected abstract needsDir(kind: Kind, parent: string): boolean;
  /** Fill the temporary directory of a new snapshot (`parentId`: its parent's id, if any). */
  protected abstract populate(td: string, kind: Kind, parentId: string | undefined): Promise<void>;
  /** Add snapshotter-specific labels to what stat/update/list report. */
  protected decorate(id: string, info: SnapshotInfo): SnapshotInfo {
    const labels = this.decorateLabels(id, info.labels);
    return labels === info.labels ? info : { ...info, labels };
  }

  /** Labels a snapshotter adds to what is stored (the overlay's upperdir label). */
  protected decorateLabels(_id: string, labels: Labels): Labels {
    return labels;
  }

  async stat(key: string): Promise<SnapshotInfo> {
    const { id, info } = this.ms.getInfo(key);
    return this.decorate(id, info);
  }

  async update(info: Pick<SnapshotInfo, "name" | "labels">, paths: string[]): Promise<SnapshotInfo> {
    const r = this.ms.updateInfo(info, paths);
    return this.decorate(r.id, r.info);
  }

  async usage(key: string): Promise<Usage> {
    const { id, info, usage } = this.ms.getInfo(key);
    if (info.kind === "active") return diskUsage(this.usagePath(id));
    if (usage) return usage;
    // committed without a measurement (see commit): measured once, on the first ask
    let measured: Usage;
    try {
      measured = await diskUsage(this.usagePath(id));
    } catch (err) {
      // removed while being measured: say so as a lookup would
      if ((err as NodeJS.ErrnoException).code === "ENOENT") this.ms.getInfo(key);
      throw err;
    }
    this.ms.recordUsage(id, measured);
    return measured;
  }

  async mounts(key: string): Promise<Mount[]> {
    let s: StoredSnapshot;
    try {
      s = this.ms.getSnapshot(key);
    } catch (err) {
      throw wrapError(err, "failed to get active mount");
    }
    return this.mountsFor(s);
  }

  prepare(key: string, parent: string, labels: Labels): Promise<Mount[]> {
    return this.create("active", key, parent, labels);
  }

  view(key: string, parent: string, labels: Labels): Promise<Mount[]> {
    return this.create("view", key, parent, labels);
  }

  private async create(kind: Kind, key: string, parent: string, labels: Labels): Promise<Mount[]> {
    let parentId: string | undefined;
    try {
      const pid = this.ms.checkCreate(key, parent);
      if (pid !== null) parentId = String(pid);
    } catch (err) {
      throw wrapError(err, "failed to create snapshot");
    }
    let td: string | undefined;
    if (this.needsDir(kind, parent)) {
      td = this.createStagingDir();
    }
    let renamedTo: string | undefined;
    try {
      if (td) await this.populate(td, kind, parentId);
      return this.mountsFor(
        this.ms.tx(() => {
          let s: StoredSnapshot;
          try {
            s = this.ms.createSnapshot(kind, key, parent, labels);
          } catch (err) {
            throw wrapError(err, "failed to create snapshot");
          }
          if (s.parentIds[0] !== parentId)
            throw errAborted(`parent ${JSON.stringify(parent)} changed while preparing`);
          if (td) {
            const path = this.snapshotDir(s.id);
            // Only debris can be there (an id whose recording never committed).
            rmSync(path, { recursive: true, force: true });
            renameSync(td, path);
            renamedTo = path;
          }
          return s;
        }),
      );
    } catch (err) {
      if (td) {
        // The transaction failed after the rename (at COMMIT): take the directory back.
        if (renamedTo && !existsSync(td)) {
          try {
            renameSync(renamedTo, td);
          } catch {
            // left for cleanup()
          }
        }
        await removeTree(td).catch((e: unknown) =>
          this.log.warn("failed to remove temporary snapshot directory", { path: td, error: String(e) }),
        );
      }
      throw err;
    } finally {
      if (td) this.inflight.delete(basename(td));
    }
  }

  async commit(name: string, key: string, labels: Labels, measured?: Usage): Promise<void> {
    const { info } = this.ms.getInfo(key);
    if (info.kind !== "active")
      throw wrapError(
        errFailedPrecondition(`snapshot ${JSON.stringify(key)} is not active`),
        "failed to commit snapshot",
      );
    // Without a measurement the walk over the snapshot's files waits until its usage is asked
    // for (usage()): containerd measures at commit, on the path of every unpack, while most
    // snapshots' usage is never read, or read long after (docs/performance.md, finding 56).
    try {
      this.ms.commitActive(key, name, measured, labels);
    } catch (err) {
      throw wrapError(err, "failed to commit snapshot");
    }
  }

  async remove(key: string): Promise<void> {
    let id: string;
    try {
      id = this.ms.tx(() => this.ms.remove(key).id, FREES);
    } catch (err) {
      throw wrapError(err, "failed to remove");
    }
    const dir = this.snapshotDir(id);
    const renamed = join(this.snapshotsDir, `rm-${id}`);
    try {
      renameSync(dir, renamed);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
      this.log.warn("failed to rename removed snapshot directory", { path: dir, error: String(err) });
      return;
    }
    if (this.asyncRemove) return;
    try {
      await removeTree(renamed);
    } catch (err) {
      this.log.warn("failed to remove directory", { path: renamed, error: String(err) });
    }
  }

  async list(): Promise<SnapshotInfo[]> {
    return this.ms.list().map((r) => this.decorate(r.id, r.info));
  }

  kinds(): ReadonlyMap<string, { readonly kind: Kind; readonly labels: Readonly<Labels> }> {
    // A namespaced Snapshots/List reads every backend record; while nothing was written since
    // the last one, the same map answers (5,000 records: 11–19 ms a read).
    const gen = this.ms.generation;
    if (this.kindsMemo?.gen === gen) return this.kindsMemo.map;
    const out = new Map<string, { kind: Kind; labels: Labels }>();
    for (const [key, r] of this.ms.kinds())
      out.set(key, { kind: r.kind, labels: this.decorateLabels(r.id, r.labels) });
    this.kindsMemo = { gen, map: out };
    return out;
  }

  /**
   * What disagrees between the records and snapshots/ (for `berth gc prune` and `berth check`):
   * directories no record owns (in-flight staging left out) and records whose directory is gone.
   * Read in one synchronous step, so a snapshot being recorded is never half seen.
   */
  inventory(): { strayDirs: string[]; missing: { key: string; id: string; kind: Kind }[] } {
    const rows = this.ms.list();
    const ids = new Set(rows.map((r) => r.id));
    const names = readdirSync(this.snapshotsDir);
    const present = new Set(names);
    // rm-<id>: a removed snapshot's directory on its way out (now, in cleanup() or at the next
    // start), not debris
    const strayDirs = names
      .filter((n) => !ids.has(n) && !this.inflight.has(n) && !/^rm-\d+$/.test(n))
      .map((n) => join(this.snapshotsDir, n));
    // A committed snapshot keeps the directory it had while active.
    const missing = rows
      .filter(
        (r) =>
          this.needsDir(r.info.kind === "committed" ? "active" : r.info.kind, r.info.parent) &&
          !present.has(r.id),
      )
      .map((r) => ({ key: r.info.name, id: r.id, kind: r.info.kind }));
    return { strayDirs, missing };
  }

  /** Delete every directory under snapshots/ that belongs to no recorded snapshot. */
  cleanup(): Promise<void> {
    const run = this.cleaning.then(async () => {
      const ids = this.ms.ids();
      const garbage = readdirSync(this.snapshotsDir).filter((n) => !ids.has(n) && !this.inflight.has(n));
      // In the thread pool, not removeTree: this runs in the background (a collection's sweep),
      // and synchronous removals there held up the calls that came meanwhile (Snapshots/Remove
      // one at a time on ext4: 480-530 → 760-860 µs, docs/performance.md finding 79).
      for (const name of garbage) {
        const path = join(this.snapshotsDir, name);
        try {
          await rm(path, { recursive: true, force: true });
        } catch (err) {
          this.log.warn("failed to remove directory", { path, error: String(err) });
        }
      }
    });
    this.cleaning = run.catch(() => {});
    return run;
  }

  async close(): Promise<void> {
    await this.cleaning;
    this.ms.close();
  }
}
