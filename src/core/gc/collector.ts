// Mark and sweep over the metadata DB, as containerd's metadata GC: roots are live leases and
// their resources, images, containers and anything labelled containerd.io/gc.root; references
// follow containerd.io/gc.ref.* labels and snapshot parents. Unreferenced content and snapshot
// records are removed in one transaction (so a concurrent write either lands before the mark
// or after the sweep), then backends drop the blobs and snapshot dirs no record points at.
// The graph it marks (RefGraph) is also what `berth gc why` walks backwards to explain a record.
import type { DirtyBackends, Labels, MetadataDB } from "../metadata/db.js";
import { decodeLabels, FREES, markDirty } from "../metadata/db.js";
import { GC_EXPIRE, GC_ROOT } from "./labels.js";
import type { GcStats } from "./scheduler.js";

export { GC_EXPIRE, GC_ROOT };

const REF_CONTENT = "containerd.io/gc.ref.content";
const REF_SNAPSHOT = "containerd.io/gc.ref.snapshot.";
/**
 * Every label a collection acts on for content and snapshots (gc.root, gc.ref.content*,
 * gc.ref.snapshot.*) begins with this. A record whose labels (as stored: JSON, with the keys as
 * they are) do not hold it is plain: it names no other record and is no root, whatever else it
 * carries (a pulled layer's containerd.io/uncompressed and distribution source, a snapshot's
 * snapshot.ref). The test is on the stored text, so a value holding it only makes a record read
 * in full for nothing; no key that matters is missed.
 */
const GC_LABEL_PREFIX = "containerd.io/gc.";
/** SQL: the record at hand is plain (see GC_LABEL_PREFIX); the partial index content_plain's. */
const PLAIN = `instr(labels, '${GC_LABEL_PREFIX}') = 0`;
/** SQL: the record at hand may name others or be a root; the partial index content_naming's. */
const NAMING = `instr(labels, '${GC_LABEL_PREFIX}') > 0`;
/** Unleased ingests older than this are removed, like containerd's default ingest expiry. */
const INGEST_MAX_AGE_MS = 24 * 3600 * 1000;

/** A backend's part of the sweep: drop what no metadata record references any more. */
export interface BackendSweeper {
  /**
   * "content" or "snapshots/<name>": the sweep runs only when rows of that backend went since
   * its last sweep (MetadataDB.markBackendDirty, or this collection's own deletions), and on the
   * first collection after start (what a crash left). Without a kind it runs every time.
   */
  kind?: string;
  /**
   * `only`: the backend's names whose rows went since its last sweep (a blob's digest), the
   * only data that can have become garbage since; without it, everything the backend holds is
   * looked at (the first sweep after start, a full collection, a kind marked without names).
   */
  sweep(only?: ReadonlySet<string>): Promise<number>;
}

/** A node of the reference graph: a record kind, its namespace and its name(s), NUL-separated. */
export const contentNode = (ns: string, digest: string) => `c\0${ns}\0${digest}`;
export const snapshotNode = (ns: string, snapshotter: string, key: string) =>
  `s\0${ns}\0${snapshotter}\0${key}`;
// Images, containers and leases are roots only: nothing references them, they reference others.
export const imageNode = (ns: string, name: string) => `i\0${ns}\0${name}`;
export const containerNode = (ns: string, id: string) => `k\0${ns}\0${id}`;
export const leaseNode = (ns: string, id: string) => `l\0${ns}\0${id}`;

export type NodeKind = "content" | "snapshot" | "image" | "container" | "lease";
const NODE_KINDS: Record<string, NodeKind> = {
  c: "content",
  s: "snapshot",
  i: "image",
  k: "container",
  l: "lease",
};

/** A node's parts; `snapshotter` only for snapshots. */
export function parseNode(n: string): {
  kind: NodeKind;
  namespace: string;
  snapshotter: string;
  name: string;
} {
  const parts = n.split("\0");
  const kind = NODE_KINDS[parts[0]!]!;
  if (kind === "snapshot")
    return { kind, namespace: parts[1]!, snapshotter: parts[2]!, name: parts.slice(3).join("\0") };
  return { kind, namespace: parts[1]!, snapshotter: "", name: parts.slice(2).join("\0") };
}

const NO_LABELS: Labels = Object.freeze({}) as Labels;
const NO_EDGES: RefEdge[] = Object.freeze([]) as unknown as RefEdge[];

/** A reference from one node to another; `via` says how (a label key, "target", "parent", ...). */
export interface RefEdge {
  to: string;
  via: string;
}

/** Why a node is a root of the mark. */
export interface RefRoot {
  node: string;
  /** "lease", "image", "container" or the label (containerd.io/gc.root) that makes it one. */
  reason: string;
}

/**
 * The references a set of labels makes (gc.ref.content*, gc.ref.snapshot.<name>*), with the label.
 * `blobs`: only the references to these blobs (digests, in `ns`) are taken among the content ones.
 * The rule for a content reference's key is also content_refs's, in SQL (metadata/db.ts).
 */
export function labelEdges(ns: string, labels: Labels, blobs?: ReadonlySet<string>): RefEdge[] {
  const out: RefEdge[] = [];
  for (const [k, v] of Object.entries(labels)) {
    if (k.startsWith(REF_CONTENT)) {
      const rest = k.slice(REF_CONTENT.length);
      if ((rest === "" || rest[0] === "." || rest[0] === "/") && (!blobs || blobs.has(v)))
        out.push({ to: contentNode(ns, v), via: k });
    } else if (k.startsWith(REF_SNAPSHOT)) {
      const snapshotter = k.slice(REF_SNAPSHOT.length).split("/")[0]!;
      if (snapshotter) out.push({ to: snapshotNode(ns, snapshotter, v), via: k });
    }
  }
  return out;
}

/** The nodes a set of labels references (gc.ref.content*, gc.ref.snapshot.<name>*). */
export function labelRefs(ns: string, labels: Labels): string[] {
  return labelEdges(ns, labels).map((e) => e.to);
}

/** containerd writes gc.expire as RFC 3339; an unparsable value never expires. */
export function expired(labels: Labels, now: number): boolean {
  const v = labels[GC_EXPIRE];
  if (!v) return false;
  const t = Date.parse(v);
  return !Number.isNaN(t) && t < now;
}

const tableExists = (db: MetadataDB, name: string) =>
  db.stmt("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").get(name) !== undefined;

/** SQL: a lease resource holds the content row at hand (served by lease_resources_by_type). */
const LEASE_HOLDS_BLOB = `SELECT 1 FROM lease_resources r
  WHERE r.type = 'content' AND r.namespace = content.namespace AND r.id = content.digest`;

/** SQL: a lease resource holds the snapshot row at hand (served by lease_resources_by_type). */
const LEASE_HOLDS_SNAPSHOT = `SELECT 1 FROM lease_resources r
  WHERE r.type = 'snapshots/' || snapshots.snapshotter AND r.namespace = snapshots.namespace
    AND r.id = snapshots.key`;

/** SQL: the blobs whose labels may name a record or make them a root (content_naming), leased or not. */
export const NAMING_BLOBS = `SELECT namespace, digest, labels, EXISTS (${LEASE_HOLDS_BLOB})
  FROM content WHERE ${NAMING}`;

/**
 * SQL: the plain blobs (unlabelled, or with no GC label) that no lease holds and no blob left in
 * the table names in a gc.ref.content label (content_refs, which triggers keep as the rows are
 * written; its key rule is labelEdges's: metadata/db.ts, migration 10). A collection asks it
 * once the blobs with GC labels that the mark did not reach are deleted, so that only live
 * ones name anything, and gets back what nothing references, not every blob: a pulled image's
 * layers are plain, named by its manifest, and handing 50,000 of them to the mark's set and the
 * sweep's checks was most of a collection (finding 77). SQLite runs the compound SELECT with
 * its ORDER BY as a merge of three indexes read in (namespace, digest) order: content_plain,
 * lease_resources_by_type (whose leading type is fixed) and content_refs_by_target. Asking the
 * lease index about every blob instead grew as n log n (10,000 to 50,000 blobs: 8 to 68 ms;
 * merged: 2 to 7 ms; findings 73, 75); so did sorting what the labels name, parsed anew on each
 * pass (finding 78).
 */
export const UNREFERENCED_PLAIN_BLOBS = `SELECT namespace, digest FROM content WHERE ${PLAIN}
  EXCEPT SELECT namespace, id FROM lease_resources WHERE type = 'content'
  EXCEPT SELECT namespace, target FROM content_refs
  ORDER BY 1, 2`;

/**
 * The metadata DB as containerd's GC sees it: roots (live leases, images, containers, records
 * labelled gc.root) and edges (lease resources, image targets, container snapshots, gc.ref labels,
 * snapshot parents). The collector marks with it and `gc why` explains with it, so the two
 * cannot disagree. Read it inside a transaction for a consistent picture.
 */
export class RefGraph {
  readonly roots: RefRoot[] = [];
  readonly expiredLeases: { namespace: string; id: string; labels: Labels }[] = [];
  /** Outgoing edges of every node that has a record. */
  private readonly out = new Map<string, RefEdge[]>();
  /** Labels of content, snapshot, image and lease records (for explanations; empty for a collection). */
  readonly labels = new Map<string, Labels>();
  /**
   * The content records read, as their nodes: every blob in a graph built to explain; in a
   * collection's, the blobs with GC labels (the plain ones are the collector's question to
   * SQLite after the mark: UNREFERENCED_PLAIN_BLOBS).
   */
  readonly content: string[] = [];
  /** The snapshot records read, with their nodes. */
  readonly snapshots: { node: string; namespace: string; snapshotter: string; key: string }[] = [];
  /**
   * For a collection: what live leases and containers hold (their resources, a container's
   * snapshot and the records its labels name), marked as roots without an edge each.
   */
  private readonly heldRoots: string[] = [];

  /**
   * `explain`: keep every record's labels and every edge (`gc why`). A collection (`explain`
   * false) needs only what decides a record's fate, and must run after the expired leases and
   * their resources were deleted (`deleteExpiredLeases`, same transaction): it then takes every
   * lease resource as held. A plain blob (see GC_LABEL_PREFIX) references nothing, so its row
   * is not read here: the graph holds the blobs with GC labels, and the collector asks SQLite
   * after the mark which plain blobs nothing holds or names (UNREFERENCED_PLAIN_BLOBS).
   */
  constructor(db: MetadataDB, now: number, explain = true) {
    const keep = (node: string, labels: Labels) => {
      if (explain) this.labels.set(node, labels);
    };
    const leases = db.stmt("SELECT namespace, id, labels FROM leases").all() as {
      namespace: string;
      id: string;
      labels: string;
    }[];
    for (const l of leases) {
      const labels = decodeLabels(l.labels);
      const node = leaseNode(l.namespace, l.id);
      keep(node, labels);
      this.out.set(node, []);
      if (expired(labels, now)) {
        this.expiredLeases.push({ namespace: l.namespace, id: l.id, labels });
      } else this.roots.push({ node, reason: "lease" });
    }
    if (explain) this.readAllContent(db);
    else this.readContentForCollection(db);
    if (tableExists(db, "snapshots")) {
      // rows as arrays, and no parse of labels that name nothing: a node can hold thousands of
      // snapshots, most of them plain
      const rows = (
        explain
          ? db.stmt("SELECT namespace, snapshotter, key, parent, labels, 0 FROM snapshots")
          : this.snapshotsForCollection(db)
      )
        .raw(true)
        .all() as [string, string, string, string, string, number][];
      for (const [ns, snapshotter, key, parent, rawLabels, leased] of rows) {
        const node = snapshotNode(ns, snapshotter, key);
        const toParent: RefEdge | undefined = parent
          ? { to: snapshotNode(ns, snapshotter, parent), via: "parent" }
          : undefined;
        // a collection needs no labels that cannot name a record or make a root
        if (rawLabels === "{}" || (!explain && !rawLabels.includes(GC_LABEL_PREFIX))) {
          keep(node, NO_LABELS);
          this.out.set(node, toParent ? [toParent] : NO_EDGES);
        } else {
          const labels = decodeLabels(rawLabels);
          keep(node, labels);
          const edges = labelEdges(ns, labels);
          if (toParent) edges.unshift(toParent);
          this.out.set(node, edges);
          if (GC_ROOT in labels) this.roots.push({ node, reason: GC_ROOT });
        }
        if (leased) this.heldRoots.push(node);
        this.snapshots.push({ node, namespace: ns, snapshotter, key });
      }
    }
    if (tableExists(db, "images")) {
      const rows = db.stmt("SELECT namespace, name, target_digest, labels FROM images").all() as {
        namespace: string;
        name: string;
        target_digest: string;
        labels: string;
      }[];
      for (const i of rows) {
        const node = imageNode(i.namespace, i.name);
        const labels = decodeLabels(i.labels);
        keep(node, labels);
        this.out.set(node, [
          { to: contentNode(i.namespace, i.target_digest), via: "target" },
          ...labelEdges(i.namespace, labels),
        ]);
        this.roots.push({ node, reason: "image" });
      }
    }
    if (tableExists(db, "containers")) {
      if (explain) this.readAllContainers(db);
      else this.readContainersForCollection(db);
    }
  }

  /** Every container as a root, with its snapshot and label edges (`gc why`). */
  private readAllContainers(db: MetadataDB): void {
    const rows = db
      .stmt("SELECT namespace, id, snapshotter, snapshot_key, labels FROM containers")
      .raw(true)
      .all() as [string, string, string, string, string][];
    for (const [ns, id, snapshotter, snapshotKey, rawLabels] of rows) {
      const node = containerNode(ns, id);
      const edges: RefEdge[] = [];
      if (snapshotter && snapshotKey)
        edges.push({ to: snapshotNode(ns, snapshotter, snapshotKey), via: "snapshot" });
      if (rawLabels !== "{}") edges.push(...labelEdges(ns, decodeLabels(rawLabels)));
      this.out.set(node, edges);
      this.roots.push({ node, reason: "container" });
    }
  }

  /**
   * For a collection (every lease in the DB live), the snapshots whose fate is open or whose
   * labels may name other records: those with GC labels (with whether a lease holds them) and
   * the plain ones (see GC_LABEL_PREFIX) no lease holds. A leased plain snapshot is live and
   * names nothing but its parent, so its row is not read: its parent (if any) becomes a held
   * root instead. With 5,000 leased snapshots, reading every row and every lease resource into
   * the graph made a GC pass as long as containerd's (findings 74, 75).
   */
  private snapshotsForCollection(db: MetadataDB): ReturnType<MetadataDB["stmt"]> {
    const parents = db
      .stmt(
        `SELECT namespace, snapshotter, parent FROM snapshots
           WHERE ${PLAIN} AND parent != '' AND EXISTS (${LEASE_HOLDS_SNAPSHOT})`,
      )
      .raw(true)
      .all() as [string, string, string][];
    for (const [ns, snapshotter, parent] of parents)
      this.heldRoots.push(snapshotNode(ns, snapshotter, parent));
    // a row with GC labels says whether a lease holds it; a plain one comes only if none does
    return db.stmt(
      `SELECT namespace, snapshotter, key, parent, labels,
              ${NAMING} AND EXISTS (${LEASE_HOLDS_SNAPSHOT}) AS held
         FROM snapshots WHERE ${NAMING} OR NOT EXISTS (${LEASE_HOLDS_SNAPSHOT})`,
    );
  }

  /**
   * For a collection, a container matters only through what it holds: its snapshot (from the
   * index on containers by snapshot, without reading the rows) and what its labels name. A row
   * keeps its ~4 KiB spec before the snapshot columns, so reading those from the table would
   * read every spec, and handing every row's labels to JavaScript costs more than SQLite's scan:
   * with 5,000 containers, twice containerd's time for a GC pass.
   */
  private readContainersForCollection(db: MetadataDB): void {
    const snapshots = db
      .stmt("SELECT namespace, snapshotter, snapshot_key FROM containers WHERE snapshot_key != ''")
      .raw(true)
      .all() as [string, string, string][];
    for (const [ns, snapshotter, key] of snapshots)
      if (snapshotter) this.heldRoots.push(snapshotNode(ns, snapshotter, key));
    // only labels that can name a record (SQLite's LIKE ignores ASCII case: it may pass more
    // rows than labelEdges takes, never fewer); a container's other labels are not read
    const labelled = db
      .stmt("SELECT namespace, labels FROM containers WHERE labels LIKE '%containerd.io/gc.ref.%'")
      .raw(true)
      .all() as [string, string][];
    for (const [ns, rawLabels] of labelled)
      for (const e of labelEdges(ns, decodeLabels(rawLabels))) this.heldRoots.push(e.to);
  }

  /** Every lease resource as an edge from its lease, and every blob with its labels (`gc why`). */
  private readAllContent(db: MetadataDB): void {
    const resources = db.stmt("SELECT namespace, lease, type, id FROM lease_resources").raw(true).all() as [
      string,
      string,
      string,
      string,
    ][];
    for (const [ns, lease, type, id] of resources) {
      const edges = this.out.get(leaseNode(ns, lease));
      if (!edges) continue;
      let to: string;
      if (type === "content") to = contentNode(ns, id);
      else if (type.startsWith("snapshots/")) to = snapshotNode(ns, type.slice("snapshots/".length), id);
      else continue;
      edges.push({ to, via: "resource" });
    }
    const content = db.stmt("SELECT namespace, digest, labels FROM content").raw(true).all() as [
      string,
      string,
      string,
    ][];
    for (const [ns, digest, rawLabels] of content) {
      const node = contentNode(ns, digest);
      // most blobs carry no labels: no parse, and one shared empty edge list
      if (rawLabels === "{}") {
        this.labels.set(node, NO_LABELS);
        this.out.set(node, NO_EDGES);
      } else {
        const labels = decodeLabels(rawLabels);
        this.labels.set(node, labels);
        this.out.set(node, labelEdges(ns, labels));
        if (GC_ROOT in labels) this.roots.push({ node, reason: GC_ROOT });
      }
      this.content.push(node);
    }
  }

  /**
   * For a collection (every lease in the DB live): only the blobs with GC labels are read.
   * Leased ones are roots; each carries its edges to snapshots and to other blobs with GC labels.
   * A plain blob names nothing, so whether one of these names it decides nothing but its own
   * fate: the collector leaves that to SQLite once the mark is done (UNREFERENCED_PLAIN_BLOBS),
   * and the edges to plain blobs are not made. Edges from images, containers and snapshots to
   * plain blobs are, and the collector keeps what they reach.
   */
  private readContentForCollection(db: MetadataDB): void {
    if (this.expiredLeases.length > 0)
      throw new Error("internal: a collection's graph was read before its expired leases were deleted");
    const naming = db.stmt(NAMING_BLOBS).raw(true).all() as [string, string, string, number][];
    const byNamespace = new Map<string, Set<string>>();
    for (const [ns, digest] of naming) {
      const set = byNamespace.get(ns);
      if (set) set.add(digest);
      else byNamespace.set(ns, new Set([digest]));
    }
    for (const [ns, digest, rawLabels, leased] of naming) {
      const node = contentNode(ns, digest);
      const labels = decodeLabels(rawLabels);
      this.out.set(node, labelEdges(ns, labels, byNamespace.get(ns)));
      if (GC_ROOT in labels) this.roots.push({ node, reason: GC_ROOT });
      if (leased) this.heldRoots.push(node);
      this.content.push(node);
    }
  }

  /** The references a node makes (none when it has no record). */
  edges(node: string): RefEdge[] {
    return this.out.get(node) ?? NO_EDGES;
  }

  /** Whether the node has a record. */
  has(node: string): boolean {
    return this.out.has(node);
  }

  /** Every node that has a record. */
  nodes(): IterableIterator<string> {
    return this.out.keys();
  }

  /** Everything reachable from the roots (roots included). */
  mark(): Set<string> {
    const live = new Set<string>();
    const stack: string[] = [];
    // one hash lookup per reference: a pulled image's tens of thousands of layers are each reached
    const push = (n: string) => {
      const before = live.size;
      if (live.add(n).size !== before) stack.push(n);
    };
    for (const r of this.roots) push(r.node);
    for (const n of this.heldRoots) push(n);
    while (stack.length > 0) for (const e of this.edges(stack.pop()!)) push(e.to);
    return live;
  }
}

/** Delete the leases whose gc.expire has passed, with their resources; how many went. */
function deleteExpiredLeases(db: MetadataDB, now: number): number {
  let n = 0;
  const leases = db.stmt("SELECT namespace, id, labels FROM leases WHERE labels != '{}'").raw(true).all() as [
    string,
    string,
    string,
  ][];
  for (const [ns, id, labels] of leases) {
    if (!expired(decodeLabels(labels), now)) continue;
    db.stmt("DELETE FROM lease_resources WHERE namespace = ? AND lease = ?").run(ns, id);
    db.stmt("DELETE FROM leases WHERE namespace = ? AND id = ?").run(ns, id);
    n++;
  }
  return n;
}

export class MetadataCollector {
  private sweepers: BackendSweeper[] = [];

  constructor(private readonly db: MetadataDB) {}

  addSweeper(s: BackendSweeper): void {
    this.sweepers.push(s);
  }

  private tableExists(name: string): boolean {
    return tableExists(this.db, name);
  }

  /** Whether every backend has been swept once since start (crash leftovers). */
  private sweptAll = false;

  /** One collection: mark, delete unreachable rows, sweep the backends that need it (`full`: all). */
  async collect(opts: { full?: boolean } = {}): Promise<GcStats> {
    const start = performance.now();
    let removed = 0;
    const dirty: DirtyBackends = new Map();
    this.db.tx(() => {
      // counted afresh if a full disk makes the transaction run twice (FREES)
      removed = 0;
      dirty.clear();
      const now = Date.now();
      removed += deleteExpiredLeases(this.db, now);
      const graph = new RefGraph(this.db, now, false);
      const live = graph.mark();
      // the records the graph read, in the same transaction: no second pass over the tables
      const delContent = this.db.stmt("DELETE FROM content WHERE namespace = ? AND digest = ?");
      const dropBlob = (ns: string, digest: string) => {
        if (delContent.run(ns, digest).changes > 0) {
          removed++;
          markDirty(dirty, "content", [digest]);
        }
      };
      for (const node of graph.content)
        if (!live.has(node)) {
          const { namespace, name } = parseNode(node);
          dropBlob(namespace, name);
        }
      // then the plain blobs that no lease and no blob left names: unless an image, a container
      // or a snapshot reached them in the mark, they go too
      const unreferenced = this.db.stmt(UNREFERENCED_PLAIN_BLOBS).raw(true).all() as [string, string][];
      for (const [ns, digest] of unreferenced) if (!live.has(contentNode(ns, digest))) dropBlob(ns, digest);
      // (no snapshot records: the snapshots table may not exist yet)
      if (graph.snapshots.length > 0) {
        const del = this.db.stmt("DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?");
        for (const sn of graph.snapshots)
          if (!live.has(sn.node) && del.run(sn.namespace, sn.snapshotter, sn.key).changes > 0) {
            removed++;
            markDirty(dirty, `snapshots/${sn.snapshotter}`);
          }
      }
      // Ingests held by no live lease are abandoned (see below for when they go).
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
        // An ingest opened under a lease that no longer holds it (the client's lease was deleted
        // after a failed pull) goes at once, as containerd collects unreferenced leased ingests:
        // left, a complete but wrong ingest is resumed by every later pull of the same ref
        // (ctr's), whose commit then fails. Unleased ones go after a day idle.
        const when = [
          ...(cols.includes("updated_at") ? ["updated_at < ?"] : []),
          ...(cols.includes("lease") ? ["lease != ''"] : []),
        ];
        if (when.length > 0) {
          const stale = this.db
            .stmt(`SELECT namespace, ref FROM ingests WHERE ${when.join(" OR ")}`)
            .all(...(cols.includes("updated_at") ? [now - INGEST_MAX_AGE_MS] : [])) as {
            namespace: string;
            ref: string;
          }[];
          for (const i of stale)
            if (
              !leased.has(`${i.namespace}\0${i.ref}`) &&
              this.db.stmt("DELETE FROM ingests WHERE namespace = ? AND ref = ?").run(i.namespace, i.ref)
                .changes > 0
            ) {
              removed++;
              // no blob: the sweep's look at the ingests removes its data
              markDirty(dirty, "content", []);
            }
        }
      }
    }, FREES);
    for (const [k, v] of this.db.takeDirtyBackends()) markDirty(dirty, k, v === "all" ? undefined : v);
    const all = opts.full || !this.sweptAll;
    this.sweptAll = true;
    try {
      const scopeOf = (s: BackendSweeper) => (all || s.kind === undefined ? "all" : dirty.get(s.kind));
      for (const [i, s] of this.sweepers.entries()) {
        const scope = scopeOf(s);
        if (scope === undefined) continue;
        try {
          removed += await s.sweep(scope === "all" ? undefined : scope);
        } catch (err) {
          // neither this backend nor the ones after it were swept: the next collection sweeps
          // them, as much of each
          for (const later of this.sweepers.slice(i)) {
            const left = scopeOf(later);
            if (later.kind !== undefined && left !== undefined)
              this.db.markBackendDirty(later.kind, left === "all" ? undefined : left);
          }
          throw err;
        }
      }
    } finally {
      // what was swept may be the room the space reserve (used on a full disk) needs
      this.db.restoreReserve();
    }
    return { elapsedMs: performance.now() - start, removed };
  }
}
