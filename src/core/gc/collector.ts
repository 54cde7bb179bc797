// Mark and sweep over the metadata DB, as containerd's metadata GC: roots are live leases and
// their resources, images, containers and anything labelled containerd.io/gc.root; references
// follow containerd.io/gc.ref.* labels and snapshot parents. Unreferenced content and snapshot
// records are removed in one transaction (so a concurrent write either lands before the mark
// or after the sweep), then backends drop the blobs and snapshot dirs no record points at.
import type { Labels, MetadataDB } from "../metadata/db.js";
import { decodeLabels } from "../metadata/db.js";
import type { GcStats } from "./scheduler.js";

export const GC_ROOT = "containerd.io/gc.root";
export const GC_EXPIRE = "containerd.io/gc.expire";
const REF_CONTENT = "containerd.io/gc.ref.content";
const REF_SNAPSHOT = "containerd.io/gc.ref.snapshot.";
/** Unleased ingests older than this are removed, like containerd's default ingest expiry. */
const INGEST_MAX_AGE_MS = 24 * 3600 * 1000;

/** A backend's part of the sweep: drop what no metadata record references any more. */
export interface BackendSweeper {
  sweep(): Promise<number>;
}

const contentNode = (ns: string, digest: string) => `c\0${ns}\0${digest}`;
const snapshotNode = (ns: string, snapshotter: string, key: string) => `s\0${ns}\0${snapshotter}\0${key}`;

/** The nodes a set of labels references (gc.ref.content*, gc.ref.snapshot.<name>*). */
export function labelRefs(ns: string, labels: Labels): string[] {
  const out: string[] = [];
  for (const [k, v] of Object.entries(labels)) {
    if (k.startsWith(REF_CONTENT)) {
      const rest = k.slice(REF_CONTENT.length);
      if (rest === "" || rest[0] === "." || rest[0] === "/") out.push(contentNode(ns, v));
    } else if (k.startsWith(REF_SNAPSHOT)) {
      const snapshotter = k.slice(REF_SNAPSHOT.length).split("/")[0]!;
      if (snapshotter) out.push(snapshotNode(ns, snapshotter, v));
    }
  }
  return out;
}

/** containerd writes gc.expire as RFC 3339; an unparsable value never expires. */
export function expired(labels: Labels, now: number): boolean {
  const v = labels[GC_EXPIRE];
  if (!v) return false;
  const t = Date.parse(v);
  return !Number.isNaN(t) && t < now;
}

export class MetadataCollector {
  private sweepers: BackendSweeper[] = [];

  constructor(private readonly db: MetadataDB) {}

  addSweeper(s: BackendSweeper): void {
    this.sweepers.push(s);
  }

  private tableExists(name: string): boolean {
    return (
      this.db.stmt("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").get(name) !== undefined
    );
  }

  /** Mark from roots; returns the set of live nodes and the expired leases. */
  private mark(now: number): { live: Set<string>; expiredLeases: { namespace: string; id: string }[] } {
    const live = new Set<string>();
    const stack: string[] = [];
    const push = (n: string) => {
      if (!live.has(n)) {
        live.add(n);
        stack.push(n);
      }
    };
    const expiredLeases: { namespace: string; id: string }[] = [];

    const leases = this.db.stmt("SELECT namespace, id, labels FROM leases").all() as {
      namespace: string;
      id: string;
      labels: string;
    }[];
    const leaseLive = new Set<string>();
    for (const l of leases) {
      if (expired(decodeLabels(l.labels), now)) expiredLeases.push({ namespace: l.namespace, id: l.id });
      else leaseLive.add(`${l.namespace}\0${l.id}`);
    }
    const resources = this.db.stmt("SELECT namespace, lease, type, id FROM lease_resources").all() as {
      namespace: string;
      lease: string;
      type: string;
      id: string;
    }[];
    for (const r of resources) {
      if (!leaseLive.has(`${r.namespace}\0${r.lease}`)) continue;
      if (r.type === "content") push(contentNode(r.namespace, r.id));
      else if (r.type.startsWith("snapshots/"))
        push(snapshotNode(r.namespace, r.type.slice("snapshots/".length), r.id));
    }

    const content = this.db.stmt("SELECT namespace, digest, labels FROM content").all() as {
      namespace: string;
      digest: string;
      labels: string;
    }[];
    const contentLabels = new Map<string, Labels>();
    for (const c of content) {
      const labels = decodeLabels(c.labels);
      const node = contentNode(c.namespace, c.digest);
      contentLabels.set(node, labels);
      if (GC_ROOT in labels) push(node);
    }
    const hasSnapshots = this.tableExists("snapshots");
    const snapshotInfo = new Map<string, { parent: string; labels: Labels }>();
    if (hasSnapshots) {
      const rows = this.db
        .stmt("SELECT namespace, snapshotter, key, parent, labels FROM snapshots")
        .all() as {
        namespace: string;
        snapshotter: string;
        key: string;
        parent: string;
        labels: string;
      }[];
      for (const s of rows) {
        const labels = decodeLabels(s.labels);
        const node = snapshotNode(s.namespace, s.snapshotter, s.key);
        snapshotInfo.set(node, {
          parent: s.parent ? snapshotNode(s.namespace, s.snapshotter, s.parent) : "",
          labels,
        });
        if (GC_ROOT in labels) push(node);
      }
    }
    if (this.tableExists("images")) {
      const rows = this.db.stmt("SELECT namespace, target_digest, labels FROM images").all() as {
        namespace: string;
        target_digest: string;
        labels: string;
      }[];
      for (const i of rows) {
        push(contentNode(i.namespace, i.target_digest));
        for (const n of labelRefs(i.namespace, decodeLabels(i.labels))) push(n);
      }
    }
    if (this.tableExists("containers")) {
      const rows = this.db
        .stmt("SELECT namespace, snapshotter, snapshot_key, labels FROM containers")
        .all() as {
        namespace: string;
        snapshotter: string;
        snapshot_key: string;
        labels: string;
      }[];
      for (const c of rows) {
        if (c.snapshotter && c.snapshot_key) push(snapshotNode(c.namespace, c.snapshotter, c.snapshot_key));
        for (const n of labelRefs(c.namespace, decodeLabels(c.labels))) push(n);
      }
    }

    while (stack.length > 0) {
      const n = stack.pop()!;
      const ns = n.split("\0")[1]!;
      if (n.startsWith("c\0")) {
        const labels = contentLabels.get(n);
        if (labels) for (const r of labelRefs(ns, labels)) push(r);
      } else {
        const s = snapshotInfo.get(n);
        if (s) {
          if (s.parent) push(s.parent);
          for (const r of labelRefs(ns, s.labels)) push(r);
        }
      }
    }
    return { live, expiredLeases };
  }

  /** One full collection. */
  async collect(): Promise<GcStats> {
    const start = performance.now();
    let removed = 0;
    this.db.tx(() => {
      const now = Date.now();
      const { live, expiredLeases } = this.mark(now);
      for (const l of expiredLeases) {
        this.db.stmt("DELETE FROM lease_resources WHERE namespace = ? AND lease = ?").run(l.namespace, l.id);
        this.db.stmt("DELETE FROM leases WHERE namespace = ? AND id = ?").run(l.namespace, l.id);
        removed++;
      }
      const delContent = this.db.stmt("DELETE FROM content WHERE namespace = ? AND digest = ?");
      for (const c of this.db.stmt("SELECT namespace, digest FROM content").all() as {
        namespace: string;
        digest: string;
      }[]) {
        if (!live.has(contentNode(c.namespace, c.digest)))
          removed += delContent.run(c.namespace, c.digest).changes;
      }
      if (this.tableExists("snapshots")) {
        const del = this.db.stmt("DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?");
        const rows = this.db.stmt("SELECT namespace, snapshotter, key FROM snapshots").all() as {
          namespace: string;
          snapshotter: string;
          key: string;
        }[];
        for (const s of rows)
          if (!live.has(snapshotNode(s.namespace, s.snapshotter, s.key)))
            removed += del.run(s.namespace, s.snapshotter, s.key).changes;
      }
      // Ingests held by no live lease and idle for a day are abandoned.
      const leased = new Set(
        (
          this.db.stmt("SELECT namespace, id FROM lease_resources WHERE type = 'ingests'").all() as {
            namespace: string;
            id: string;
          }[]
        ).map((r) => `${r.namespace}\0${r.id}`),
      );
      if (this.tableExists("ingests")) {
        const cols = (this.db.stmt("PRAGMA table_info(ingests)").all() as { name: string }[]).map(
          (c) => c.name,
        );
        if (cols.includes("updated_at")) {
          const stale = this.db
            .stmt("SELECT namespace, ref FROM ingests WHERE updated_at < ?")
            .all(now - INGEST_MAX_AGE_MS) as {
            namespace: string;
            ref: string;
          }[];
          for (const i of stale)
            if (!leased.has(`${i.namespace}\0${i.ref}`))
              removed += this.db
                .stmt("DELETE FROM ingests WHERE namespace = ? AND ref = ?")
                .run(i.namespace, i.ref).changes;
        }
      }
    });
    for (const s of this.sweepers) removed += await s.sweep();
    return { elapsedMs: performance.now() - start, removed };
  }
}
