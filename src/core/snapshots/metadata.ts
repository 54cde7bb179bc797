// The namespaced snapshots layer (containerd's metadata snapshotter): each namespace has its own
// snapshot names per snapshotter, kept in the metadata DB's `snapshots` table; each maps to a
// namespace-free backend key `<namespace>/<seq>/<name>`. Backends only ever see backend keys and
// only the labels they inherit (containerd.io/snapshot/… and containerd.io/snapshot.ref).
//
// A create runs in three steps, like containerd's: reserve (check the name, resolve the parent,
// take a sequence number), create in the backend, record (or undo the backend snapshot). Names
// in flight are locked so that two calls on one name run one after the other. Removing a
// snapshot forgets the name and removes the backend snapshot at once (there is no GC yet);
// collect() prunes backend snapshots no namespace refers to, as containerd's GC does.
import { create } from "@bufbuild/protobuf";
import {
  BerthError,
  errAlreadyExists,
  errFailedPrecondition,
  errInvalidArgument,
  errNotFound,
  errNotImplemented,
  isAlreadyExists,
  isKind,
  isNotFound,
} from "../../base/errdefs.js";
import { type Logger, nopLogger } from "../../base/log.js";
import type { Mount } from "../../base/mount.js";
import {
  SnapshotCommitSchema,
  SnapshotPrepareSchema,
  SnapshotRemoveSchema,
} from "../../gen/containerd/events/snapshot_pb.js";
import type { Exchange } from "../events/exchange.js";
import { packEvent } from "../events/exchange.js";
import { parseFilters } from "../filters.js";
import { decodeLabels, encodeLabels, FREES, type Labels, type MetadataDB } from "../metadata/db.js";
import type { NamespaceStore } from "../namespaces/store.js";
import {
  type Kind,
  SNAPSHOT_REF_LABEL,
  type SnapshotInfo,
  type Snapshotter,
  type Usage,
} from "./snapshotter.js";
import { cleanLabels, updateLabels } from "./storage.js";

const INHERITED_PREFIX = "containerd.io/snapshot/";
const MAX_LABEL_SIZE = 4096;

/** The labels a backend snapshotter gets: containerd.io/snapshot/… and containerd.io/snapshot.ref. */
export function inheritedLabels(labels: Labels): Labels {
  const out: Labels = {};
  for (const [k, v] of Object.entries(labels))
    if (k === SNAPSHOT_REF_LABEL || k.startsWith(INHERITED_PREFIX)) out[k] = v;
  return out;
}

function validateLabels(labels: Labels): void {
  for (const [k, v] of Object.entries(labels)) {
    if (Buffer.byteLength(k) + Buffer.byteLength(v) > MAX_LABEL_SIZE)
      throw errInvalidArgument(
        `info.Labels: label key and value greater than maximum size (${MAX_LABEL_SIZE} bytes), key: ${k.slice(0, 10)}`,
      );
  }
}

/** The lease resource type of a snapshotter's snapshots. */
export const leaseResourceType = (snapshotter: string) => `snapshots/${snapshotter}`;

export interface CallOptions {
  /** Lease of the request: created and committed snapshots are added to it. */
  lease?: string;
}

export interface CommitOptions extends CallOptions {
  /**
   * The active snapshot's disk usage, measured by the caller that filled it (the pull's staged
   * layers); the backend measures it when absent.
   */
  usage?: Usage;
}

/** A row of the metadata DB's `snapshots` table. */
export interface SnapshotRecord {
  namespace: string;
  snapshotter: string;
  key: string;
  backendKey: string;
  parent: string;
  kind: Kind;
  labels: Labels;
  created: Date;
  updated: Date;
}

type Row = {
  namespace: string;
  snapshotter: string;
  key: string;
  backend_key: string;
  parent: string;
  kind: Kind;
  labels: string;
  created_at: number;
  updated_at: number;
};

const toRecord = (r: Row): SnapshotRecord => ({
  namespace: r.namespace,
  snapshotter: r.snapshotter,
  key: r.key,
  backendKey: r.backend_key,
  parent: r.parent,
  kind: r.kind,
  labels: decodeLabels(r.labels),
  created: new Date(r.created_at),
  updated: new Date(r.updated_at),
});

const isEmpty = (o: object): boolean => {
  for (const _ in o) return false;
  return true;
};

/** Backend info seen through a namespace: name, parent, times and labels are the namespace's. */
function overlayInfo(
  backend: { readonly kind: Kind; readonly labels: Readonly<Labels> },
  local: SnapshotRecord,
): SnapshotInfo {
  return {
    name: local.key,
    parent: local.parent,
    kind: backend.kind,
    labels: isEmpty(backend.labels) ? local.labels : { ...backend.labels, ...local.labels },
    created: local.created,
    updated: local.updated,
  };
}

/** Exclusive locks by name; a call takes all its names in sorted order, so calls never deadlock. */
class NameLocks {
  private readonly tails = new Map<string, Promise<void>>();

  async run<T>(names: string[], fn: () => Promise<T>): Promise<T> {
    const releases: (() => void)[] = [];
    try {
      for (const n of [...new Set(names)].sort()) releases.push(await this.acquire(n));
      return await fn();
    } finally {
      for (const r of releases.reverse()) r();
    }
  }

  private async acquire(name: string): Promise<() => void> {
    const prev = this.tails.get(name) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => {
      release = r;
    });
    const tail = prev.then(() => mine);
    this.tails.set(name, tail);
    await prev;
    return () => {
      release();
      if (this.tails.get(name) === tail) this.tails.delete(name);
    };
  }
}

/** Calls share; collect() excludes (it must not see a backend snapshot not yet recorded). */
class SharedLock {
  private readers = 0;
  private writer = false;
  private readonly waiting: { write: boolean; go: () => void }[] = [];

  async shared<T>(fn: () => Promise<T>): Promise<T> {
    if (this.writer || this.waiting.length > 0)
      await new Promise<void>((go) => this.waiting.push({ write: false, go }));
    else this.readers++;
    try {
      return await fn();
    } finally {
      this.readers--;
      this.wake();
    }
  }

  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    if (this.writer || this.readers > 0 || this.waiting.length > 0)
      await new Promise<void>((go) => this.waiting.push({ write: true, go }));
    else this.writer = true;
    try {
      return await fn();
    } finally {
      this.writer = false;
      this.wake();
    }
  }

  private wake(): void {
    while (this.waiting.length > 0 && !this.writer) {
      const next = this.waiting[0]!;
      if (next.write) {
        if (this.readers > 0) return;
        this.waiting.shift();
        this.writer = true;
        next.go();
        return;
      }
      this.waiting.shift();
      this.readers++;
      next.go();
    }
  }
}

function statements(db: MetadataDB) {
  const s = db.sql;
  return {
    get: s.prepare("SELECT * FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?"),
    listRaw: s
      .prepare(
        "SELECT key, backend_key, parent, kind, labels, created_at, updated_at FROM snapshots WHERE namespace = ? AND snapshotter = ? ORDER BY key",
      )
      .raw(true),
    hasChild: s.prepare(
      "SELECT 1 FROM snapshots WHERE namespace = ? AND snapshotter = ? AND parent = ? LIMIT 1",
    ),
    any: s.prepare(
      `SELECT 1 WHERE EXISTS (SELECT 1 FROM snapshots WHERE namespace = @ns AND snapshotter = @sn)
         OR EXISTS (SELECT 1 FROM snapshot_sequences WHERE namespace = @ns AND snapshotter = @sn)`,
    ),
    insert: s.prepare(
      `INSERT INTO snapshots (namespace, snapshotter, key, backend_key, parent, kind, labels, created_at, updated_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ),
    setLabels: s.prepare(
      "UPDATE snapshots SET labels = ?, updated_at = ? WHERE namespace = ? AND snapshotter = ? AND key = ?",
    ),
    remove: s.prepare("DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?"),
    nextSeq: s.prepare(
      `INSERT INTO snapshot_sequences (namespace, snapshotter, seq) VALUES (?, ?, 1)
       ON CONFLICT (namespace, snapshotter) DO UPDATE SET seq = seq + 1 RETURNING seq`,
    ),
    backendKeys: s.prepare("SELECT backend_key FROM snapshots WHERE snapshotter = ?").pluck(),
    snapshotters: s.prepare("SELECT DISTINCT snapshotter FROM snapshots").pluck(),
    leaseExists: s.prepare("SELECT 1 FROM leases WHERE namespace = ? AND id = ?"),
    addLeaseResource: s.prepare(
      "INSERT OR IGNORE INTO lease_resources (namespace, lease, type, id) VALUES (?, ?, ?, ?)",
    ),
    removeLeaseResource: s.prepare(
      "DELETE FROM lease_resources WHERE namespace = ? AND lease = ? AND type = ? AND id = ?",
    ),
  };
}

type Statements = ReturnType<typeof statements>;

interface Shared {
  db: MetadataDB;
  stmts: Statements;
  namespaces: NamespaceStore;
  events: Exchange;
  log: Logger;
}

/** One snapshotter seen through namespaces: the API's view of it. */
export class NamespacedSnapshotter {
  private readonly locks = new NameLocks();
  private readonly gate = new SharedLock();
  private cleanupQueued = false;
  private cleanupRun: Promise<void> = Promise.resolve();

  constructor(
    readonly name: string,
    readonly backend: Snapshotter,
    private readonly s: Shared,
  ) {}

  private lockName(ns: string, key: string): string {
    return `${ns}\0${key}`;
  }

  private row(ns: string, key: string): SnapshotRecord | undefined {
    const r = this.s.stmts.get.get(ns, this.name, key) as Row | undefined;
    return r ? toRecord(r) : undefined;
  }

  private mustRow(ns: string, key: string): SnapshotRecord {
    const r = this.row(ns, key);
    if (!r) throw errNotFound(`snapshot ${key} does not exist`);
    return r;
  }

  private checkLease(ns: string, lease: string | undefined): void {
    if (lease && !this.s.stmts.leaseExists.get(ns, lease)) throw errNotFound("lease does not exist");
  }

  private addLease(ns: string, lease: string | undefined, key: string): void {
    if (!lease) return;
    this.checkLease(ns, lease);
    this.s.stmts.addLeaseResource.run(ns, lease, leaseResourceType(this.name), key);
  }

  private removeLease(ns: string, lease: string | undefined, key: string): void {
    if (lease) this.s.stmts.removeLeaseResource.run(ns, lease, leaseResourceType(this.name), key);
  }

  private nextBackendKey(ns: string, key: string): string {
    const { seq } = this.s.stmts.nextSeq.get(ns, this.name) as { seq: number };
    return `${ns}/${seq}/${key}`;
  }

  async stat(ns: string, key: string): Promise<SnapshotInfo> {
    const local = this.mustRow(ns, key);
    return overlayInfo(await this.backend.stat(local.backendKey), local);
  }

  async update(ns: string, info: { name: string; labels?: Labels }, paths: string[]): Promise<SnapshotInfo> {
    if (!info.name) throw errInvalidArgument();
    const name = info.name;
    return this.gate.shared(() =>
      this.locks.run([this.lockName(ns, name)], async () => {
        const local = this.mustRow(ns, name);
        const labels = updateLabels(name, local.labels, info.labels ?? {}, paths);
        validateLabels(labels);
        const binfo = await this.backend.update(
          { name: local.backendKey, labels: inheritedLabels(labels) },
          paths,
        );
        const now = Date.now();
        this.s.db.tx(() => this.s.stmts.setLabels.run(encodeLabels(labels), now, ns, this.name, name));
        return overlayInfo(binfo, { ...local, labels, updated: new Date(now) });
      }),
    );
  }

  async usage(ns: string, key: string): Promise<Usage> {
    return this.backend.usage(this.mustRow(ns, key).backendKey);
  }

  async mounts(ns: string, key: string): Promise<Mount[]> {
    return this.backend.mounts(this.mustRow(ns, key).backendKey);
  }

  async prepare(
    ns: string,
    key: string,
    parent: string,
    labels: Labels = {},
    opts: CallOptions = {},
  ): Promise<Mount[]> {
    const mounts = await this.createSnapshot(ns, key, parent, labels, false, opts);
    this.s.events.publish(
      ns,
      "/snapshot/prepare",
      packEvent(
        SnapshotPrepareSchema,
        create(SnapshotPrepareSchema, { key, parent, snapshotter: this.name }),
      ),
    );
    return mounts;
  }

  view(
    ns: string,
    key: string,
    parent: string,
    labels: Labels = {},
    opts: CallOptions = {},
  ): Promise<Mount[]> {
    return this.createSnapshot(ns, key, parent, labels, true, opts);
  }

  private async createSnapshot(
    ns: string,
    key: string,
    parent: string,
    labels: Labels,
    readonly: boolean,
    opts: CallOptions,
  ): Promise<Mount[]> {
    if (!key) throw errInvalidArgument("snapshot key must not be empty");
    validateLabels(labels);
    const base = cleanLabels(labels);
    const target = base[SNAPSHOT_REF_LABEL] ?? "";
    return this.gate.shared(() =>
      this.locks.run([this.lockName(ns, key)], async () => {
        // 1. reserve
        const r = this.s.db.tx(
          () => {
            this.checkLease(ns, opts.lease);
            if (target && this.row(ns, target)) {
              this.addLease(ns, opts.lease, target);
              return { exists: `target snapshot ${JSON.stringify(target)}` };
            }
            if (this.row(ns, key)) {
              this.addLease(ns, opts.lease, key);
              return { exists: `snapshot ${JSON.stringify(key)}` };
            }
            let bparent = "";
            if (parent) {
              const p = this.row(ns, parent);
              if (!p) throw errNotFound(`parent snapshot ${parent} does not exist`);
              bparent = p.backendKey;
            }
            this.s.namespaces.ensure(ns);
            return { bkey: this.nextBackendKey(ns, key), bparent };
          },
          { what: `snapshot ${JSON.stringify(key)}` },
        );
        if ("exists" in r) throw errAlreadyExists(r.exists);
        // 2. create in the backend
        const inherited = inheritedLabels(base);
        let mounts: Mount[];
        try {
          mounts = readonly
            ? await this.backend.view(r.bkey, r.bparent, inherited)
            : await this.backend.prepare(r.bkey, r.bparent, inherited);
        } catch (err) {
          // The backend key is new: the backend must not know it already.
          if (isAlreadyExists(err))
            throw new BerthError("unknown", `unexpected error from snapshotter: ${(err as Error).message}`);
          throw err;
        }
        // 3. record
        try {
          this.s.db.tx(() => {
            this.addLease(ns, opts.lease, key);
            if (this.row(ns, key)) throw errAlreadyExists(`snapshot ${JSON.stringify(key)}`);
            if (parent) {
              const p = this.row(ns, parent);
              if (!p) throw errNotFound(`parent snapshot ${parent} does not exist`);
              if (p.backendKey !== r.bparent)
                throw errInvalidArgument(`mismatched parent ${parent} from target ${target}`);
            }
            const now = Date.now();
            this.s.stmts.insert.run(
              ns,
              this.name,
              key,
              r.bkey,
              parent,
              readonly ? "view" : "active",
              encodeLabels(base),
              now,
              now,
            );
          });
        } catch (err) {
          await this.backend.remove(r.bkey).catch((e: unknown) =>
            this.s.log.error("failed to cleanup unreferenced snapshot", {
              snapshotter: this.name,
              key: r.bkey,
              error: String(e),
            }),
          );
          throw err;
        }
        return mounts;
      }),
    );
  }

  async commit(
    ns: string,
    name: string,
    key: string,
    labels: Labels = {},
    opts: CommitOptions = {},
  ): Promise<void> {
    validateLabels(labels);
    const base = cleanLabels(labels);
    await this.gate.shared(() =>
      this.locks.run([this.lockName(ns, name), this.lockName(ns, key)], async () => {
        const r = this.s.db.tx(
          () => {
            if (!this.s.stmts.any.get({ ns, sn: this.name }))
              throw errNotFound(`can not find snapshotter ${JSON.stringify(this.name)}`);
            this.addLease(ns, opts.lease, name);
            if (this.row(ns, name)) return { exists: `snapshot ${JSON.stringify(name)}` };
            const active = this.mustRow(ns, key);
            return { active, nameKey: this.nextBackendKey(ns, name) };
          },
          { what: `snapshot ${JSON.stringify(name)}` },
        );
        if ("exists" in r) throw errAlreadyExists(r.exists);
        try {
          await this.backend.commit(r.nameKey, r.active.backendKey, inheritedLabels(base), opts.usage);
        } catch (err) {
          if (isNotFound(err))
            this.s.log.error("uncommittable snapshot: missing in backend, snapshot should be removed", {
              snapshotter: this.name,
              key,
            });
          throw err;
        }
        this.s.db.tx(() => {
          const now = Date.now();
          this.s.stmts.insert.run(
            ns,
            this.name,
            name,
            r.nameKey,
            r.active.parent,
            "committed",
            encodeLabels(base),
            now,
            now,
          );
          this.s.stmts.remove.run(ns, this.name, key);
          this.addLease(ns, opts.lease, name);
          this.removeLease(ns, opts.lease, key);
        });
      }),
    );
    this.s.events.publish(
      ns,
      "/snapshot/commit",
      packEvent(SnapshotCommitSchema, create(SnapshotCommitSchema, { key, name, snapshotter: this.name })),
    );
  }

  async remove(ns: string, key: string, opts: CallOptions = {}): Promise<void> {
    await this.gate.shared(() =>
      this.locks.run([this.lockName(ns, key)], async () => {
        const bkey = this.s.db.tx(() => {
          const r = this.mustRow(ns, key);
          if (this.s.stmts.hasChild.get(ns, this.name, key))
            throw errFailedPrecondition("cannot remove snapshot with child");
          this.s.stmts.remove.run(ns, this.name, key);
          this.removeLease(ns, opts.lease, key);
          return r.backendKey;
        }, FREES);
        this.s.db.mutated(true);
        await this.removeBackend(bkey);
      }),
    );
    this.s.events.publish(
      ns,
      "/snapshot/remove",
      packEvent(SnapshotRemoveSchema, create(SnapshotRemoveSchema, { key, snapshotter: this.name })),
    );
  }

  /**
   * Remove a snapshot by namespace and name without the API's checks (for GC): its record goes
   * even if it has children; the backend snapshot goes if the backend allows it (else collect()
   * takes it later). No event is published. Returns false if there was no such snapshot.
   */
  async removeUnchecked(ns: string, key: string): Promise<boolean> {
    return this.gate.shared(() =>
      this.locks.run([this.lockName(ns, key)], async () => {
        const r = this.row(ns, key);
        if (!r) return false;
        this.s.db.tx(() => this.s.stmts.remove.run(ns, this.name, key), FREES);
        await this.removeBackend(r.backendKey);
        return true;
      }),
    );
  }

  private async removeBackend(bkey: string): Promise<void> {
    try {
      await this.backend.remove(bkey);
    } catch (err) {
      // left for the collector: its next run must sweep this backend
      this.s.db.markBackendDirty(`snapshots/${this.name}`);
      if (!isNotFound(err))
        this.s.log.warn("failed to remove backend snapshot; left for collection", {
          snapshotter: this.name,
          key: bkey,
          error: String(err),
        });
    }
    this.scheduleCleanup();
  }

  /** Run the backend's cleanup soon (once, however many removals ask for it meanwhile). */
  private scheduleCleanup(): void {
    const cleanup = this.backend.cleanup?.bind(this.backend);
    if (!cleanup || this.cleanupQueued) return;
    this.cleanupQueued = true;
    this.cleanupRun = this.cleanupRun.then(async () => {
      this.cleanupQueued = false;
      try {
        await cleanup();
      } catch (err) {
        this.s.log.warn("snapshotter cleanup failed", { snapshotter: this.name, error: String(err) });
      }
    });
  }

  /** Wait for background cleanups started by removals. */
  async settled(): Promise<void> {
    await this.cleanupRun;
  }

  /** Snapshots of a namespace in name order, matching containerd filters (ORed). */
  async list(ns: string, filters: string[] = []): Promise<SnapshotInfo[]> {
    const filter = parseFilters(filters);
    // rows as arrays, and of the backend only each snapshot's kind and labels: a list reads
    // every snapshot of the namespace and of the backend
    const rows = this.s.stmts.listRaw.all(ns, this.name) as [
      string,
      string,
      string,
      Kind,
      string,
      number,
      number,
    ][];
    if (rows.length === 0) return [];
    const backend: ReadonlyMap<string, { readonly kind: Kind; readonly labels: Readonly<Labels> }> =
      this.backend.kinds?.() ?? new Map((await this.backend.list()).map((i) => [i.name, i]));
    const out: SnapshotInfo[] = [];
    for (const [key, backendKey, parent, kind, labels, createdAt, updatedAt] of rows) {
      const b = backend.get(backendKey);
      if (!b) continue;
      const info = overlayInfo(b, {
        namespace: ns,
        snapshotter: this.name,
        key,
        backendKey,
        parent,
        kind,
        labels: decodeLabels(labels),
        created: new Date(createdAt),
        updated: new Date(updatedAt),
      });
      const match = filter.match((fp) => {
        switch (fp[0]) {
          case "kind":
            return info.kind;
          case "name":
            return info.name;
          case "parent":
            return info.parent;
          case "labels": {
            if (Object.keys(info.labels).length === 0) return undefined;
            const k = fp.slice(1).join(".");
            return Object.hasOwn(info.labels, k) ? info.labels[k] : undefined;
          }
          default:
            return undefined;
        }
      });
      if (match) out.push(info);
    }
    return out;
  }

  async cleanup(): Promise<void> {
    if (!this.backend.cleanup) throw errNotImplemented("snapshotter does not implement Cleanup method");
    await this.backend.cleanup();
  }

  /**
   * Remove backend snapshots that no namespace refers to (children before parents), then run
   * the backend's cleanup: what containerd's GC does for a snapshotter. Returns how many went.
   */
  async collect(): Promise<number> {
    return this.gate.exclusive(async () => {
      const referenced = new Set(this.s.stmts.backendKeys.all(this.name) as string[]);
      const all = await this.backend.list();
      let removed = 0;
      for (const info of all.reverse()) {
        if (referenced.has(info.name)) continue;
        try {
          await this.backend.remove(info.name);
          removed++;
        } catch (err) {
          if (!isKind(err, "failed precondition") && !isNotFound(err)) throw err;
          this.s.log.warn("failed to remove snapshot", {
            snapshotter: this.name,
            key: info.name,
            error: String(err),
          });
        }
      }
      if (this.backend.cleanup) await this.backend.cleanup();
      return removed;
    });
  }

  /** Run fn with no create, commit or remove in flight (what collect() holds; for `gc prune`). */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return this.gate.exclusive(fn);
  }

  /** The record of a snapshot (for GC and tools), or undefined. */
  record(ns: string, key: string): SnapshotRecord | undefined {
    return this.row(ns, key);
  }
}

export interface SnapshotServiceOptions {
  db: MetadataDB;
  namespaces: NamespaceStore;
  events: Exchange;
  /** Loaded snapshotters by name (plugin id). */
  snapshotters: Map<string, Snapshotter>;
  log?: Logger;
}

/** All snapshotters, namespaced: what the snapshots service and in-process callers use. */
export class SnapshotService {
  private readonly byName = new Map<string, NamespacedSnapshotter>();

  constructor(opts: SnapshotServiceOptions) {
    const stmts = statements(opts.db);
    const shared: Shared = {
      db: opts.db,
      stmts,
      namespaces: opts.namespaces,
      events: opts.events,
      log: opts.log ?? nopLogger,
    };
    for (const [name, sn] of opts.snapshotters)
      this.byName.set(name, new NamespacedSnapshotter(name, sn, shared));
    // A namespace holding snapshots cannot be deleted (containerd's wording, per snapshotter).
    const names = new Set([...opts.snapshotters.keys(), ...(stmts.snapshotters.all() as string[])]);
    for (const name of [...names].sort()) {
      opts.db.addEmptyCheck(
        `snapshots on ${JSON.stringify(name)} snapshotter`,
        `SELECT 1 FROM snapshots WHERE namespace = ? AND snapshotter = '${name.replaceAll("'", "''")}' LIMIT 1`,
      );
    }
  }

  /** The named snapshotter; InvalidArgument when it is not loaded (containerd's wording). */
  get(name: string): NamespacedSnapshotter {
    if (!name) throw errInvalidArgument("snapshotter argument missing");
    const sn = this.byName.get(name);
    if (!sn) throw errInvalidArgument(`snapshotter not loaded: ${name}`);
    return sn;
  }

  names(): string[] {
    return [...this.byName.keys()];
  }

  all(): NamespacedSnapshotter[] {
    return [...this.byName.values()];
  }

  /** Wait for background cleanups of every snapshotter. */
  async settled(): Promise<void> {
    await Promise.all(this.all().map((s) => s.settled()));
  }
}
