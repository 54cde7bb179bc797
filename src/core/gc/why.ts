// `berth gc why`: the chains of references that keep a record alive, read from the same graph the
// collector marks with (RefGraph), so an answer "collectable" means the next collection removes
// it and a chain means it does not.
import { errNotFound } from "../../base/errdefs.js";
import type { MetadataDB } from "../metadata/db.js";
import {
  containerNode,
  contentNode,
  GC_EXPIRE,
  GC_ROOT,
  imageNode,
  leaseNode,
  type NodeKind,
  parseNode,
  RefGraph,
  snapshotNode,
} from "./collector.js";

export type WhyType = "content" | "snapshot" | "image" | "lease" | "container";

export interface WhyQuery {
  namespace: string;
  object: string;
  /** Force the kind of object; guessed from the name and the records otherwise. */
  type?: WhyType | "";
  /** For snapshots: the snapshotter (default: the one holding the key, overlayfs first). */
  snapshotter?: string;
}

export interface WhyLink {
  kind: NodeKind;
  name: string;
  snapshotter: string;
  /** What the object is to whoever references it: manifest, index, layer, config, parent, ... */
  role: string;
  /** How the previous link references this one (a label key, target, parent, resource); "" first. */
  via: string;
}

export interface WhyChain {
  /** Why the first link is a root: lease, image, container or containerd.io/gc.root. */
  rootReason: string;
  links: WhyLink[];
}

export interface WhyAnswer {
  kind: NodeKind;
  name: string;
  snapshotter: string;
  collectable: boolean;
  chains: WhyChain[];
  notes: string[];
}

/** More chains than this are summarised: an explanation, not a dump of the graph. */
const MAX_CHAINS = 32;
const DIGEST_RE = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$/;

function roleOf(db: MetadataDB, via: string, ns: string, kind: NodeKind, from: string): string {
  if (kind === "snapshot") return via === "parent" ? "parent snapshot" : "snapshot";
  if (kind !== "content") return kind;
  if (via === "target") {
    const p = parseNode(from);
    const r = db
      .stmt("SELECT target_media_type FROM images WHERE namespace = ? AND name = ?")
      .get(ns, p.name) as { target_media_type: string } | undefined;
    const mt = r?.target_media_type ?? "";
    return /index|manifest\.list/.test(mt) ? "index" : "manifest";
  }
  if (/^containerd\.io\/gc\.ref\.content\.(?:l|layer)[./]/.test(via)) return "layer";
  if (/^containerd\.io\/gc\.ref\.content\.(?:m|manifest)[./]/.test(via)) return "manifest";
  if (/^containerd\.io\/gc\.ref\.content\.config$/.test(via)) return "config";
  return "content";
}

function resolve(db: MetadataDB, graph: RefGraph, q: WhyQuery): string {
  const ns = q.namespace;
  const name = q.object;
  const snapshotters = (): string[] => {
    if (q.snapshotter) return [q.snapshotter];
    const rows = db
      .stmt("SELECT snapshotter FROM snapshots WHERE namespace = ? AND key = ? ORDER BY snapshotter")
      .pluck()
      .all(ns, name) as string[];
    // overlayfs is the default snapshotter: prefer it when several hold the key
    return rows.sort((a, b) => Number(b === "overlayfs") - Number(a === "overlayfs"));
  };
  const snapshot = () => {
    for (const sn of snapshotters()) {
      const n = snapshotNode(ns, sn, name);
      if (graph.has(n)) return n;
    }
    return undefined;
  };
  const candidates: Record<WhyType, () => string | undefined> = {
    content: () => (graph.has(contentNode(ns, name)) ? contentNode(ns, name) : undefined),
    image: () => (graph.has(imageNode(ns, name)) ? imageNode(ns, name) : undefined),
    lease: () => (graph.has(leaseNode(ns, name)) ? leaseNode(ns, name) : undefined),
    container: () => (graph.has(containerNode(ns, name)) ? containerNode(ns, name) : undefined),
    snapshot,
  };
  if (q.type) {
    const found = candidates[q.type]();
    if (!found) throw errNotFound(`${q.type} ${JSON.stringify(name)} in namespace ${JSON.stringify(ns)}`);
    return found;
  }
  const order: WhyType[] = DIGEST_RE.test(name)
    ? ["content", "image", "lease", "snapshot", "container"]
    : ["image", "lease", "snapshot", "container", "content"];
  for (const t of order) {
    const found = candidates[t]();
    if (found) return found;
  }
  throw errNotFound(
    `no content, image, lease, snapshot or container ${JSON.stringify(name)} in namespace ${JSON.stringify(ns)}`,
  );
}

/** Explain why `q.object` is kept, or say it is collectable. Runs in one read transaction. */
export function explain(db: MetadataDB, q: WhyQuery, now = Date.now()): WhyAnswer {
  return db.sql.transaction(() => explainIn(db, q, now)).deferred();
}

function explainIn(db: MetadataDB, q: WhyQuery, now: number): WhyAnswer {
  const graph = new RefGraph(db, now);
  const target = resolve(db, graph, q);
  const t = parseNode(target);
  const answer: WhyAnswer = {
    kind: t.kind,
    name: t.name,
    snapshotter: t.snapshotter,
    collectable: false,
    chains: [],
    notes: [],
  };
  if (t.kind === "lease") {
    const expiry = graph.labels.get(target)?.[GC_EXPIRE];
    if (graph.expiredLeases.some((l) => l.namespace === t.namespace && l.id === t.name)) {
      answer.collectable = true;
      answer.notes.push(
        `lease expired at ${expiry}: the next collection removes it and releases what it holds`,
      );
      return answer;
    }
    if (expiry) answer.notes.push(`lease expires at ${expiry}`);
  }

  const rootReasons = new Map<string, string[]>();
  for (const r of graph.roots) {
    const list = rootReasons.get(r.node) ?? [];
    list.push(r.reason);
    rootReasons.set(r.node, list);
  }
  // Who references whom, reversed: walk back from the target to every root that reaches it.
  const rev = new Map<string, { from: string; via: string }[]>();
  for (const n of graph.nodes())
    for (const e of graph.edges(n)) {
      const list = rev.get(e.to) ?? [];
      list.push({ from: n, via: e.via });
      rev.set(e.to, list);
    }
  const next = new Map<string, { to: string; via: string }>();
  const seen = new Set<string>([target]);
  const queue = [target];
  let omitted = 0;
  const chainFrom = (root: string, reason: string): WhyChain => {
    const links: WhyLink[] = [];
    let cur = root;
    let via = "";
    let from = "";
    for (;;) {
      const p = parseNode(cur);
      links.push({
        kind: p.kind,
        name: p.name,
        snapshotter: p.snapshotter,
        role: via ? roleOf(db, via, p.namespace, p.kind, from) : p.kind,
        via,
      });
      const step = next.get(cur);
      if (!step) break;
      from = cur;
      cur = step.to;
      via = step.via;
    }
    return { rootReason: reason, links };
  };
  // Breadth first, so each root's chain is a shortest one.
  while (queue.length > 0) {
    const n = queue.shift()!;
    for (const reason of rootReasons.get(n) ?? []) {
      if (answer.chains.length < MAX_CHAINS) answer.chains.push(chainFrom(n, reason));
      else omitted++;
    }
    for (const r of rev.get(n) ?? []) {
      if (seen.has(r.from)) continue;
      seen.add(r.from);
      next.set(r.from, { to: n, via: r.via });
      queue.push(r.from);
    }
  }
  if (omitted > 0) answer.notes.push(`${omitted} more chains not shown`);
  answer.collectable = answer.chains.length + omitted === 0;
  if (answer.collectable) answer.notes.push("nothing references it: the next collection removes it");
  else if (rootReasons.get(target)?.includes(GC_ROOT)) answer.notes.push(`labelled ${GC_ROOT}`);
  return answer;
}

export { formatChain } from "./why-format.js";
