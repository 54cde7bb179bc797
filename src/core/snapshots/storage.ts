// A local snapshotter's own metadata: one SQLite file (metadata.db) in the snapshotter root,
// as containerd keeps one bolt file per snapshotter. Each snapshot has a key (its name once
// committed), a numeric id that names its directory and never changes (nor is reused), a
// parent, a kind, labels, times and, once committed, the usage measured at commit.
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import type Database from "better-sqlite3";
import {
  errAlreadyExists,
  errFailedPrecondition,
  errInvalidArgument,
  errNotFound,
} from "../../base/errdefs.js";
import {
  decodeLabels,
  encodeLabels,
  type Labels,
  openDaemonDatabase,
  type TxOptions,
} from "../metadata/db.js";
import { releaseReserveFor, retryFreeing } from "../metadata/reserve.js";
import type { Kind, SnapshotInfo, Usage } from "./snapshotter.js";

const SCHEMA = `
CREATE TABLE IF NOT EXISTS snapshots (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  key TEXT NOT NULL UNIQUE,
  parent_id INTEGER,
  kind TEXT NOT NULL,
  labels TEXT NOT NULL DEFAULT '{}',
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  size INTEGER NOT NULL DEFAULT 0,
  inodes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS snapshots_by_parent ON snapshots (parent_id);
`;

/** size and inodes of a committed snapshot whose usage has not been measured yet. */
const UNMEASURED = -1;

type Row = {
  id: number;
  key: string;
  parent_id: number | null;
  parent: string | null;
  kind: Kind;
  labels: string;
  created_at: number;
  updated_at: number;
  size: number;
  inodes: number;
};

/** An active or view snapshot as a snapshotter needs it to build mounts. */
export interface StoredSnapshot {
  id: string;
  kind: Kind;
  /** Ids of the parent chain, nearest first. */
  parentIds: string[];
}

const SELECT = `SELECT s.id, s.key, s.parent_id, p.key AS parent, s.kind, s.labels, s.created_at, s.updated_at,
  s.size, s.inodes FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id`;

function toInfo(r: Row): SnapshotInfo {
  return {
    name: r.key,
    parent: r.parent ?? "",
    kind: r.kind,
    labels: decodeLabels(r.labels),
    created: new Date(r.created_at),
    updated: new Date(r.updated_at),
  };
}

/** Drop empty values: an empty label is no label. */
export function cleanLabels(labels: Labels | undefined): Labels {
  const out: Labels = {};
  for (const [k, v] of Object.entries(labels ?? {})) if (v !== "") out[k] = v;
  return out;
}

/** Apply containerd's field paths to labels: "labels" replaces, "labels.<k>" sets or drops one. */
export function updateLabels(name: string, current: Labels, labels: Labels, paths: string[]): Labels {
  if (paths.length === 0) return cleanLabels(labels);
  let next: Labels = { ...current };
  for (const p of paths) {
    if (p.startsWith("labels.")) {
      next[p.slice("labels.".length)] = labels[p.slice("labels.".length)] ?? "";
      continue;
    }
    if (p === "labels") {
      next = { ...labels };
      continue;
    }
    throw errInvalidArgument(`cannot update ${JSON.stringify(p)} field on snapshot ${JSON.stringify(name)}`);
  }
  return cleanLabels(next);
}

export class MetaStore {
  readonly sql: Database.Database;
  private readonly stmts;
  private writes = 0;

  constructor(
    private readonly path: string,
    lockTimeoutMs?: number,
  ) {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    this.sql = openDaemonDatabase(path, lockTimeoutMs);
    this.sql.exec(SCHEMA);
    const s = this.sql;
    this.stmts = {
      byKey: s.prepare(`${SELECT} WHERE s.key = ?`),
      byId: s.prepare("SELECT id, key, parent_id, kind FROM snapshots WHERE id = ?"),
      all: s.prepare(`${SELECT} ORDER BY s.id`),
      kinds: s.prepare("SELECT id, key, kind, labels FROM snapshots").raw(true),
      insert: s.prepare(
        "INSERT INTO snapshots (key, parent_id, kind, labels, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
      ),
      setLabels: s.prepare("UPDATE snapshots SET labels = ?, updated_at = ? WHERE id = ?"),
      commit: s.prepare(
        "UPDATE snapshots SET key = ?, kind = 'committed', labels = ?, created_at = ?, updated_at = ?, size = ?, inodes = ? WHERE id = ?",
      ),
      setUsage: s.prepare("UPDATE snapshots SET size = ?, inodes = ? WHERE id = ? AND size = ?"),
      hasChild: s.prepare("SELECT 1 FROM snapshots WHERE parent_id = ? LIMIT 1"),
      remove: s.prepare("DELETE FROM snapshots WHERE id = ?"),
      ids: s.prepare("SELECT id FROM snapshots").pluck(),
      seq: s.prepare("SELECT seq FROM sqlite_sequence WHERE name = 'snapshots'").pluck(),
      insertSeq: s.prepare("INSERT INTO sqlite_sequence (name, seq) VALUES ('snapshots', ?)"),
      updateSeq: s.prepare("UPDATE sqlite_sequence SET seq = ? WHERE name = 'snapshots'"),
    };
  }

  /**
   * Run fn in a write transaction (synchronous: nothing else interleaves). One that frees space
   * may use the metadata space reserve on a full disk when this file lives on the same one.
   */
  tx<T>(fn: () => T, opts: TxOptions = {}): T {
    const attempt = () => this.sql.transaction(fn).immediate();
    if (!opts.frees || this.sql.inTransaction) return attempt();
    return retryFreeing(attempt, (err) => releaseReserveFor(dirname(this.path), err));
  }

  /**
   * Make sure new ids are above `n`: directories left by a crash between creating a snapshot's
   * directory and recording it must never be taken for a later snapshot's.
   */
  reserveIdsUpTo(n: number): void {
    this.tx(() => {
      const cur = this.stmts.seq.get() as number | undefined;
      if (cur === undefined) this.stmts.insertSeq.run(n);
      else if (n > cur) this.stmts.updateSeq.run(n);
    });
  }

  private row(key: string): Row | undefined {
    return this.stmts.byKey.get(key) as Row | undefined;
  }

  /** `usage` is undefined for a committed snapshot whose usage was not measured yet (see commitActive). */
  getInfo(key: string): { id: string; info: SnapshotInfo; usage: Usage | undefined } {
    const r = this.row(key);
    if (!r) throw errNotFound("snapshot does not exist");
    const usage = r.size === UNMEASURED ? undefined : { size: r.size, inodes: r.inodes };
    return { id: String(r.id), info: toInfo(r), usage };
  }

  /** Keep the usage measured for a committed snapshot committed without one. */
  recordUsage(id: string, usage: Usage): void {
    this.writes++;
    this.stmts.setUsage.run(usage.size, usage.inodes, Number(id), UNMEASURED);
  }

  updateInfo(
    info: Pick<SnapshotInfo, "name" | "labels">,
    paths: string[],
  ): { id: string; info: SnapshotInfo } {
    return this.tx(() => {
      const r = this.row(info.name);
      if (!r) throw errNotFound("snapshot does not exist");
      const labels = updateLabels(info.name, decodeLabels(r.labels), info.labels ?? {}, paths);
      const now = Date.now();
      this.writes++;
      this.stmts.setLabels.run(encodeLabels(labels), now, r.id);
      return { id: String(r.id), info: { ...toInfo(r), labels, updated: new Date(now) } };
    });
  }

  /**
   * How many writes to the snapshot records this store has made (a rolled-back one counts too):
   * a reader can keep what it derived from the records while this is unchanged. berthd is the
   * only process that opens this database.
   */
  get generation(): number {
    return this.writes;
  }

  /** Every snapshot's kind and labels, by key. */
  kinds(): Map<string, { id: string; kind: Kind; labels: Labels }> {
    const out = new Map<string, { id: string; kind: Kind; labels: Labels }>();
    for (const [id, key, kind, labels] of this.stmts.kinds.all() as [number, string, Kind, string][])
      out.set(key, { id: String(id), kind, labels: decodeLabels(labels) });
    return out;
  }

  /** Every snapshot with its id, parents before children. */
  list(): { id: string; info: SnapshotInfo }[] {
    return (this.stmts.all.all() as Row[]).map((r) => ({ id: String(r.id), info: toInfo(r) }));
  }

  private parentChain(id: number | null): string[] {
    const out: string[] = [];
    let cur = id;
    while (cur !== null) {
      const p = this.stmts.byId.get(cur) as { id: number; parent_id: number | null } | undefined;
      if (!p) throw errNotFound("missing parent");
      out.push(String(p.id));
      cur = p.parent_id;
    }
    return out;
  }

  /** An active or view snapshot with its parent chain. */
  getSnapshot(key: string): StoredSnapshot {
    const r = this.row(key);
    if (!r) throw errNotFound("snapshot does not exist");
    if (r.kind !== "active" && r.kind !== "view")
      throw errFailedPrecondition(`requested snapshot ${key} not active or view`);
    return { id: String(r.id), kind: r.kind, parentIds: this.parentChain(r.parent_id) };
  }

  /** Check that a snapshot can be created (call again inside the recording transaction). */
  checkCreate(key: string, parent: string): number | null {
    if (!key) throw errInvalidArgument("snapshot key must not be empty");
    let parentId: number | null = null;
    if (parent !== "") {
      const p = this.row(parent);
      if (!p) throw errNotFound(`missing parent ${JSON.stringify(parent)} bucket`);
      if (p.kind !== "committed")
        throw errInvalidArgument(`parent ${JSON.stringify(parent)} is not committed snapshot`);
      parentId = p.id;
    }
    if (this.row(key)) throw errAlreadyExists(`snapshot ${key}`);
    return parentId;
  }

  /** Record a new active or view snapshot; must run inside tx(). */
  createSnapshot(kind: Kind, key: string, parent: string, labels: Labels): StoredSnapshot {
    if (kind !== "active" && kind !== "view")
      throw errInvalidArgument(
        `snapshot type ${kind} invalid; only snapshots of type Active or View can be created`,
      );
    const parentId = this.checkCreate(key, parent);
    const now = Date.now();
    this.writes++;
    const r = this.stmts.insert.run(key, parentId, kind, encodeLabels(cleanLabels(labels)), now, now);
    const id = Number(r.lastInsertRowid);
    return { id: String(id), kind, parentIds: this.parentChain(parentId) };
  }

  /**
   * Turn an active snapshot into a committed one named `name`; its id stays. Without `usage` the
   * snapshot is recorded as not measured yet: a committed snapshot's files never change, so the
   * walk that measures them can wait until its usage is asked for (getInfo, recordUsage).
   */
  commitActive(key: string, name: string, usage: Usage | undefined, labels: Labels): string {
    return this.tx(() => {
      if (this.row(name)) throw errAlreadyExists(`committed snapshot ${name}`);
      const r = this.row(key);
      if (!r) throw errNotFound(`failed to get active snapshot ${JSON.stringify(key)}`);
      if (r.kind !== "active") throw errFailedPrecondition(`snapshot ${JSON.stringify(key)} is not active`);
      const now = Date.now();
      this.writes++;
      this.stmts.commit.run(
        name,
        encodeLabels(cleanLabels(labels)),
        now,
        now,
        usage?.size ?? UNMEASURED,
        usage?.inodes ?? UNMEASURED,
        r.id,
      );
      return String(r.id);
    });
  }

  /** Forget a snapshot that has no children; must run inside tx(). */
  remove(key: string): { id: string; kind: Kind } {
    const r = this.row(key);
    if (!r) throw errNotFound(`snapshot ${key}`);
    if (this.stmts.hasChild.get(r.id)) throw errFailedPrecondition("cannot remove snapshot with child");
    this.writes++;
    this.stmts.remove.run(r.id);
    return { id: String(r.id), kind: r.kind };
  }

  /** Ids of every recorded snapshot. */
  ids(): Set<string> {
    return new Set((this.stmts.ids.all() as number[]).map(String));
  }

  close(): void {
    if (this.sql.open) this.sql.close();
  }
}
