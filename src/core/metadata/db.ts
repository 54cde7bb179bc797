// The metadata database: SQLite (better-sqlite3, WAL). Every mutation runs in a transaction, so
// a crash leaves either the old or the new state. Schema changes are numbered migrations
// tracked in PRAGMA user_version.
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import Database from "better-sqlite3";
import { errFailedPrecondition, wrap } from "../../base/errdefs.js";
import type { Logger } from "../../base/log.js";
import { isOutOfSpace, RESERVE_BYTES, reservePathFor, retryFreeing, SpaceReserve } from "./reserve.js";

export type Labels = Record<string, string>;

/**
 * SQL over json_each's row `j`: a label key that names a blob (containerd.io/gc.ref.content, or
 * it followed by "." or "/" and anything), the collector's rule (gc/collector.ts, labelEdges).
 */
const CONTENT_REF_KEY = `(j.key = 'containerd.io/gc.ref.content'
  OR substr(j.key, 1, 29) IN ('containerd.io/gc.ref.content.', 'containerd.io/gc.ref.content/'))`;

const MIGRATIONS: string[] = [
  // 1: core tables
  `CREATE TABLE namespaces (
     name TEXT PRIMARY KEY,
     labels TEXT NOT NULL DEFAULT '{}',
     created_at INTEGER NOT NULL,
     updated_at INTEGER NOT NULL
   );
   CREATE TABLE leases (
     namespace TEXT NOT NULL,
     id TEXT NOT NULL,
     created_at INTEGER NOT NULL,
     labels TEXT NOT NULL DEFAULT '{}',
     PRIMARY KEY (namespace, id)
   );
   CREATE TABLE lease_resources (
     namespace TEXT NOT NULL,
     lease TEXT NOT NULL,
     type TEXT NOT NULL,
     id TEXT NOT NULL,
     PRIMARY KEY (namespace, lease, type, id)
   );
   CREATE TABLE content (
     namespace TEXT NOT NULL,
     digest TEXT NOT NULL,
     size INTEGER NOT NULL,
     created_at INTEGER NOT NULL,
     updated_at INTEGER NOT NULL,
     labels TEXT NOT NULL DEFAULT '{}',
     PRIMARY KEY (namespace, digest)
   );
   CREATE INDEX content_by_digest ON content (digest);
   CREATE TABLE ingests (
     namespace TEXT NOT NULL,
     ref TEXT NOT NULL,
     expected TEXT NOT NULL DEFAULT '',
     lease TEXT NOT NULL DEFAULT '',
     PRIMARY KEY (namespace, ref)
   );`,
  // 2: snapshots, per namespace and snapshotter. `parent` is the parent's name in the same
  // namespace ("" if none); `backend_key` is the snapshotter's own key (<namespace>/<seq>/<key>).
  // snapshot_sequences hands out <seq> per namespace and snapshotter and never goes back.
  `CREATE TABLE snapshots (
     namespace TEXT NOT NULL,
     snapshotter TEXT NOT NULL,
     key TEXT NOT NULL,
     backend_key TEXT NOT NULL,
     parent TEXT NOT NULL DEFAULT '',
     kind TEXT NOT NULL,
     labels TEXT NOT NULL DEFAULT '{}',
     created_at INTEGER NOT NULL,
     updated_at INTEGER NOT NULL,
     PRIMARY KEY (namespace, snapshotter, key)
   );
   CREATE INDEX snapshots_by_parent ON snapshots (namespace, snapshotter, parent);
   CREATE INDEX snapshots_by_backend_key ON snapshots (snapshotter, backend_key);
   CREATE TABLE snapshot_sequences (
     namespace TEXT NOT NULL,
     snapshotter TEXT NOT NULL,
     seq INTEGER NOT NULL,
     PRIMARY KEY (namespace, snapshotter)
   );`,
  // 3: images, per namespace. The target descriptor is flattened; its annotations and the
  // image labels are JSON objects. The GC marks from (namespace, target_digest, labels).
  `CREATE TABLE images (
     namespace TEXT NOT NULL,
     name TEXT NOT NULL,
     target_media_type TEXT NOT NULL,
     target_digest TEXT NOT NULL,
     target_size INTEGER NOT NULL,
     target_annotations TEXT NOT NULL DEFAULT '{}',
     labels TEXT NOT NULL DEFAULT '{}',
     created_at INTEGER NOT NULL,
     updated_at INTEGER NOT NULL,
     PRIMARY KEY (namespace, name)
   );
   CREATE INDEX images_by_target ON images (target_digest);`,
  // 4: containers, per namespace. Runtime options and the spec are protobuf Anys kept as type
  // URL + bytes (NULL when the client sent none); extensions are a JSON object of name ->
  // {type_url, value (base64)}. The GC marks from (namespace, snapshotter, snapshot_key, labels).
  // container_buckets remembers the namespaces a container was ever created in (containerd's
  // per-namespace containers bucket, whose absence changes some not-found messages); it goes
  // with the namespace.
  `CREATE TABLE containers (
     namespace TEXT NOT NULL,
     id TEXT NOT NULL,
     labels TEXT NOT NULL DEFAULT '{}',
     image TEXT NOT NULL DEFAULT '',
     runtime_name TEXT NOT NULL,
     runtime_options_type_url TEXT,
     runtime_options BLOB,
     spec_type_url TEXT,
     spec BLOB,
     snapshotter TEXT NOT NULL DEFAULT '',
     snapshot_key TEXT NOT NULL DEFAULT '',
     sandbox_id TEXT NOT NULL DEFAULT '',
     extensions TEXT NOT NULL DEFAULT '{}',
     created_at INTEGER NOT NULL,
     updated_at INTEGER NOT NULL,
     PRIMARY KEY (namespace, id)
   );
   CREATE INDEX containers_by_snapshot ON containers (namespace, snapshotter, snapshot_key);
   CREATE TABLE container_buckets (
     namespace TEXT PRIMARY KEY
   );
   CREATE TRIGGER container_buckets_gone AFTER DELETE ON namespaces
   BEGIN
     DELETE FROM container_buckets WHERE namespace = OLD.name;
   END;`,
  // 5: lease resources by what they hold, so a collection asks SQLite which blobs no lease
  // holds instead of reading every lease resource and every blob into the daemon's heap.
  `CREATE INDEX lease_resources_by_resource ON lease_resources (namespace, type, id);`,
  // 6: each container's record as containerd's Container message, encoded when the row is
  // written, so that Get and an unfiltered List send it as it is instead of decoding the row and
  // encoding it again (docs/performance.md, finding 69). NULL in rows written before this
  // migration, or by a store given no encoder; the store fills those in when it opens, finding
  // them through the partial index (a scan of the table took ~24 ms of every start with 5,000
  // containers; the index holds no entry once every row has its encoding).
  `ALTER TABLE containers ADD COLUMN wire BLOB;
   CREATE INDEX containers_without_wire ON containers (namespace) WHERE wire IS NULL;`,
  // 7: kept records become field-1 items (tag, length, message: metadata/kept.ts), so that
  // SQLite joins a list's answer itself; containers kept as bare messages are encoded again when
  // the store opens. Images keep theirs too, as containers do (finding 72).
  `UPDATE containers SET wire = NULL;
   ALTER TABLE images ADD COLUMN wire BLOB;
   CREATE INDEX images_without_wire ON images (namespace) WHERE wire IS NULL;`,
  // 8: a collection merges the unlabelled blobs with the blobs leases hold, both read in
  // (namespace, digest) order from an index, instead of asking the lease index about each blob
  // (gc/collector.ts, finding 73). The lease resources' index leads with the type, so that the
  // content ones are one ordered range; equality lookups use it as they used the one it replaces.
  `DROP INDEX lease_resources_by_resource;
   CREATE INDEX lease_resources_by_type ON lease_resources (type, namespace, id);
   CREATE INDEX content_unlabelled ON content (namespace, digest) WHERE labels = '{}';`,
  // 9: the blobs a collection reads split by whether their labels hold a GC label
  // (containerd.io/gc.*) rather than by whether they have labels at all: a pulled layer's
  // labels name nothing, and it is merged with the leases' blobs as an unlabelled one was; the
  // others' labels are read for what they name (gc/collector.ts, findings 75, 77). The two
  // expressions are the collector's, to the letter.
  `DROP INDEX content_unlabelled;
   CREATE INDEX content_plain ON content (namespace, digest)
     WHERE instr(labels, 'containerd.io/gc.') = 0;
   CREATE INDEX content_naming ON content (namespace, digest)
     WHERE instr(labels, 'containerd.io/gc.') > 0;`,
  // 10: what each blob's labels name (gc.ref.content, gc.ref.content.<x>, gc.ref.content/<x>:
  // the collector's key rule, gc/collector.ts labelEdges), kept by triggers on every write of a
  // row, so that a collection merges the plain blobs with the names in index order instead of
  // parsing every naming blob's labels and sorting what they name on each pass (finding 78: the
  // sort grew faster than the node). Labels that are not JSON name nothing here, as a row the
  // store could not have written.
  `CREATE TABLE content_refs (
     namespace TEXT NOT NULL,
     digest TEXT NOT NULL,
     target TEXT NOT NULL,
     PRIMARY KEY (namespace, digest, target)
   ) WITHOUT ROWID;
   CREATE INDEX content_refs_by_target ON content_refs (namespace, target);
   CREATE TRIGGER content_refs_insert AFTER INSERT ON content
     WHEN instr(NEW.labels, 'containerd.io/gc.') > 0 AND json_valid(NEW.labels)
   BEGIN
     INSERT OR IGNORE INTO content_refs (namespace, digest, target)
       SELECT NEW.namespace, NEW.digest, j.value FROM json_each(NEW.labels) j
       WHERE ${CONTENT_REF_KEY};
   END;
   CREATE TRIGGER content_refs_update AFTER UPDATE ON content
     WHEN instr(OLD.labels, 'containerd.io/gc.') > 0 OR instr(NEW.labels, 'containerd.io/gc.') > 0
   BEGIN
     DELETE FROM content_refs WHERE namespace = OLD.namespace AND digest = OLD.digest;
     INSERT OR IGNORE INTO content_refs (namespace, digest, target)
       SELECT NEW.namespace, NEW.digest, j.value
       FROM json_each(CASE WHEN json_valid(NEW.labels) THEN NEW.labels ELSE '{}' END) j
       WHERE ${CONTENT_REF_KEY};
   END;
   CREATE TRIGGER content_refs_delete AFTER DELETE ON content
     WHEN instr(OLD.labels, 'containerd.io/gc.') > 0
   BEGIN
     DELETE FROM content_refs WHERE namespace = OLD.namespace AND digest = OLD.digest;
   END;
   INSERT OR IGNORE INTO content_refs (namespace, digest, target)
     SELECT c.namespace, c.digest, j.value FROM content c, json_each(c.labels) j
     WHERE instr(c.labels, 'containerd.io/gc.') > 0 AND json_valid(c.labels)
       AND ${CONTENT_REF_KEY};`,
];

/**
 * The order containerd lists what a namespace still holds in; anything else (snapshots per
 * snapshotter) follows in registration order.
 */
const HOLDS_ORDER = ["images", "blobs", "containers"];
const holdsRank = (what: string) => {
  const i = HOLDS_ORDER.indexOf(what);
  return i < 0 ? HOLDS_ORDER.length : i;
};

export interface MetadataDBOptions {
  log?: Logger;
  /** Size of the space reserve next to the database (`reserve`); 0 for none. */
  reserveBytes?: number;
  /** How long to wait for another process's lock on the file (openDaemonDatabase). */
  lockTimeoutMs?: number;
}

/**
 * Opens one of the daemon's SQLite files for this process alone, in WAL mode with synchronous
 * NORMAL, as containerd's bolt file is held by one containerd. EXCLUSIVE locking before the first
 * WAL access keeps the WAL index in this process's memory: each read transaction no longer takes
 * and drops a lock on the `-shm` file (two fcntl calls; ~150 per container's lifecycle, ~0.5 ms
 * of CPU, docs/performance.md finding 79). The lock is taken at open, so a second daemon on the
 * same root fails here, naming the file, instead of sharing it.
 */
export function openDaemonDatabase(path: string, lockTimeoutMs = 5000): Database.Database {
  const sql = new Database(path, { timeout: lockTimeoutMs });
  try {
    sql.pragma("locking_mode = EXCLUSIVE");
    sql.pragma("journal_mode = WAL");
  } catch (err) {
    sql.close();
    if ((err as { code?: string }).code === "SQLITE_BUSY")
      throw errFailedPrecondition(
        `${path} is locked by another process: is another daemon running with the same root?`,
      );
    throw err;
  }
  // NORMAL with WAL keeps committed transactions across a process crash (only an OS crash
  // can lose the last ones), which is the durability the daemon promises.
  sql.pragma("synchronous = NORMAL");
  return sql;
}

export interface TxOptions {
  /**
   * The transaction frees space (it deletes rows, and what they name goes with them): on a full
   * disk it may use the space reserve. Only deletions set this, so nothing else can eat it.
   */
  frees?: boolean;
  /**
   * What the transaction writes, for an out-of-space error ("image \"x\" (target sha256:…)"):
   * the client is told what could not be stored, not only that the disk is full.
   */
  what?: string;
}

/** The options of a transaction that frees space: `db.tx(fn, FREES)`. */
export const FREES: TxOptions = Object.freeze({ frees: true });

export class MetadataDB {
  readonly sql: Database.Database;
  private readonly emptyChecks: { what: string; stmt: Database.Statement }[] = [];
  private readonly mutationHooks: ((dirty: boolean) => void)[] = [];
  /** Undefined when disabled (reserveBytes 0). */
  readonly reserve: SpaceReserve | undefined;

  constructor(path: string, opts: MetadataDBOptions = {}) {
    mkdirSync(dirname(path), { recursive: true, mode: 0o711 });
    this.sql = openDaemonDatabase(path, opts.lockTimeoutMs);
    this.sql.pragma("foreign_keys = ON");
    // Reads go through a memory map (up to 1 GiB of the file), as containerd's bolt reads its
    // file. Without it, every page past SQLite's 16 MB cache, and every overflow page (a
    // container's ~4 KiB spec; better-sqlite3's SQLite reads those straight from the file, never
    // caching them), was a pread on each read: the rows of a 5,000-container List took 70 ms,
    // 31-41 ms mapped (docs/performance.md, finding 44). Writes still go through SQLite's write
    // calls, so a full disk stays an error; the map holds file pages the kernel can drop.
    this.sql.pragma("mmap_size = 1073741824");
    this.migrate();
    this.addEmptyCheck("images", "SELECT 1 FROM images WHERE namespace = ? LIMIT 1");
    this.addEmptyCheck("blobs", "SELECT 1 FROM content WHERE namespace = ? LIMIT 1");
    this.addEmptyCheck("containers", "SELECT 1 FROM containers WHERE namespace = ? LIMIT 1");
    const bytes = opts.reserveBytes ?? RESERVE_BYTES;
    this.reserve = bytes > 0 ? new SpaceReserve(reservePathFor(path), { bytes, log: opts.log }) : undefined;
  }

  private migrate(): void {
    const current = this.sql.pragma("user_version", { simple: true }) as number;
    if (current > MIGRATIONS.length)
      throw new Error(
        `metadata database schema version ${current} is newer than this berthd understands (${MIGRATIONS.length})`,
      );
    for (let v = current; v < MIGRATIONS.length; v++) {
      this.sql.transaction(() => {
        this.sql.exec(MIGRATIONS[v]!);
        this.sql.pragma(`user_version = ${v + 1}`);
      })();
    }
  }

  /** Backends ("content", "snapshots/<name>") that may hold data no row points at any more. */
  private readonly dirtyBackends: DirtyBackends = new Map();

  /**
   * A row was removed outside a collection and its backend data may have stayed (a deleted blob,
   * a snapshot the backend refused to remove): the next collection sweeps that backend. As
   * containerd's dirty flags, this keeps collections from walking every backend every time.
   * `names` are the backend's names whose rows went (a blob's digest): the sweep then looks at
   * those alone, not at everything the backend holds; without them, it looks at everything.
   */
  markBackendDirty(kind: string, names?: Iterable<string>): void {
    markDirty(this.dirtyBackends, kind, names);
  }

  /** The backends marked since the last call (the collector takes them once per collection). */
  takeDirtyBackends(): DirtyBackends {
    const out = new Map(this.dirtyBackends);
    this.dirtyBackends.clear();
    return out;
  }

  /** The GC scheduler listens here (containerd's RegisterMutationCallback). */
  onMutation(fn: (dirty: boolean) => void): void {
    this.mutationHooks.push(fn);
  }

  /** Report a committed mutation; `dirty` when something was deleted (GC may have work). */
  mutated(dirty: boolean): void {
    for (const fn of this.mutationHooks) fn(dirty);
  }

  private readonly statements = new Map<string, Database.Statement>();

  /** A prepared statement, compiled once per SQL text (preparing costs more than running). */
  stmt(sql: string): Database.Statement {
    let st = this.statements.get(sql);
    if (!st) {
      st = this.sql.prepare(sql);
      this.statements.set(sql, st);
    }
    return st;
  }

  /**
   * Run fn in an immediate (write-locking) transaction. One that frees space and fails for lack
   * of it (SQLITE_FULL: even a delete appends to the WAL) releases the space reserve and runs
   * once more, so such an fn must do nothing outside the database that a rollback cannot undo.
   */
  tx<T>(fn: () => T, opts: TxOptions = {}): T {
    const attempt = () => this.sql.transaction(fn).immediate();
    try {
      // nested: the outermost transaction decides, its retry reruns this one too
      if (!opts.frees || !this.reserve || this.sql.inTransaction) return attempt();
      const reserve = this.reserve;
      return retryFreeing(attempt, (err) => reserve.release(err));
    } catch (err) {
      if (opts.what && isOutOfSpace(err) && !this.sql.inTransaction) throw wrap(err, `writing ${opts.what}`);
      throw err;
    }
  }

  /** Write the space reserve again if it was used and there is room now (after a collection). */
  restoreReserve(): void {
    this.reserve?.restore();
  }

  /**
   * Register a check for "namespace still holds X"; later modules (images, containers,
   * snapshots) add theirs. The statement takes the namespace as its only parameter.
   */
  addEmptyCheck(what: string, query: string): void {
    this.emptyChecks.push({ what, stmt: this.sql.prepare(query) });
  }

  /** What a namespace still holds, in containerd's wording and order ("images", "blobs", ...). */
  namespaceHolds(ns: string): string[] {
    return this.emptyChecks
      .filter((c) => c.stmt.get(ns) !== undefined)
      .map((c) => c.what)
      .sort((a, b) => holdsRank(a) - holdsRank(b));
  }

  close(): void {
    this.reserve?.close();
    this.sql.close();
  }
}

export function encodeLabels(l: Labels | undefined): string {
  return JSON.stringify(l ?? {});
}

export function decodeLabels(s: string): Labels {
  // most records carry none
  return s === "{}" ? {} : (JSON.parse(s) as Labels);
}

/** Per backend kind, what its sweep must look at: some names, or "all" of it. */
export type DirtyBackends = Map<string, Set<string> | "all">;

/** Adds `names` (or everything, without them) to what a backend's next sweep looks at. */
export function markDirty(d: DirtyBackends, kind: string, names?: Iterable<string>): void {
  const had = d.get(kind);
  if (had === "all") return;
  if (names === undefined) {
    d.set(kind, "all");
    return;
  }
  const set = had ?? new Set<string>();
  for (const n of names) set.add(n);
  d.set(kind, set);
}
