// Namespaces: created explicitly or implicitly by the first resource written in them; a
// namespace that still holds resources cannot be deleted.
import { create } from "@bufbuild/protobuf";
import {
  errAlreadyExists,
  errFailedPrecondition,
  errInvalidArgument,
  errNotFound,
} from "../../base/errdefs.js";
import { validateIdentifier } from "../../base/identifiers.js";
import {
  NamespaceCreateSchema,
  NamespaceDeleteSchema,
  NamespaceUpdateSchema,
} from "../../gen/containerd/events/namespace_pb.js";
import type { Exchange } from "../events/exchange.js";
import { packEvent } from "../events/exchange.js";
import { decodeLabels, encodeLabels, FREES, type Labels, type MetadataDB } from "../metadata/db.js";

export interface Namespace {
  name: string;
  labels: Labels;
}

const MAX_LABEL_SIZE = 4096;

/** containerd's label rule: key+value at most 4096 bytes, key not empty. */
export function validateLabels(labels: Labels): void {
  for (const [k, v] of Object.entries(labels)) {
    if (k.length === 0) throw errInvalidArgument("label key must not be empty");
    if (k.length + v.length > MAX_LABEL_SIZE)
      throw errInvalidArgument(
        `label key and value length (${k.length + v.length} bytes) greater than maximum size (${MAX_LABEL_SIZE} bytes), key: ${k.slice(0, 10)}`,
      );
  }
}

export class NamespaceStore {
  /**
   * The committed rows, by name and in name order, loaded on first read. Every call names its
   * namespace and most check it, so reads come from here, not SQLite. Writes only ever drop it
   * (the next read reloads), which is also right when the transaction they ran in rolls back.
   */
  private cache: { byName: Map<string, Namespace>; sorted: Namespace[] } | undefined;

  constructor(
    private readonly db: MetadataDB,
    private readonly events: Exchange,
  ) {}

  private rows(): { byName: Map<string, Namespace>; sorted: Namespace[] } {
    if (!this.cache) {
      const rows = this.db.stmt("SELECT name, labels FROM namespaces ORDER BY name").all() as {
        name: string;
        labels: string;
      }[];
      const sorted = rows.map((r) => ({ name: r.name, labels: decodeLabels(r.labels) }));
      const loaded = { byName: new Map(sorted.map((n) => [n.name, n])), sorted };
      // Inside a transaction the rows may not be committed yet: use them, do not keep them.
      if (this.db.sql.inTransaction) return loaded;
      this.cache = loaded;
    }
    return this.cache;
  }

  /** Create the namespace row if missing (resources create their namespace implicitly). */
  ensure(name: string): void {
    // Known to exist: a delete drops the cache, so a cached name is a committed row.
    if (this.cache?.byName.has(name)) return;
    const now = Date.now();
    // Implicit creation publishes no event, as in containerd.
    const r = this.db
      .stmt("INSERT OR IGNORE INTO namespaces (name, labels, created_at, updated_at) VALUES (?, '{}', ?, ?)")
      .run(name, now, now);
    if (r.changes > 0) this.cache = undefined;
  }

  /** `eventNs` is the caller's namespace: containerd publishes namespace events in it. */
  create(name: string, labels: Labels, eventNs: string): Namespace {
    validateIdentifier(name);
    validateLabels(labels);
    const now = Date.now();
    this.db.tx(() => {
      const r = this.db
        .stmt("INSERT OR IGNORE INTO namespaces (name, labels, created_at, updated_at) VALUES (?, ?, ?, ?)")
        .run(name, encodeLabels(labels), now, now);
      if (r.changes === 0) throw errAlreadyExists(`namespace ${JSON.stringify(name)}`);
      this.cache = undefined;
    });
    this.events.publish(
      eventNs,
      "/namespaces/create",
      packEvent(NamespaceCreateSchema, create(NamespaceCreateSchema, { name, labels })),
    );
    return { name, labels };
  }

  get(name: string): Namespace | undefined {
    const n = this.rows().byName.get(name);
    return n && { name: n.name, labels: { ...n.labels } };
  }

  list(): Namespace[] {
    return this.rows().sorted.map((n) => ({ name: n.name, labels: { ...n.labels } }));
  }

  /**
   * Update with containerd's field paths: "labels" replaces all labels, "labels.<key>" sets or
   * (with an empty value) removes one. No paths means replace labels.
   */
  update(name: string, labels: Labels, paths: string[], eventNs: string): Namespace {
    validateLabels(labels);
    const updated = this.db.tx(() => {
      const cur = this.get(name);
      if (!cur) throw errNotFound(`namespace ${JSON.stringify(name)}`);
      let next: Labels = { ...cur.labels };
      if (paths.length === 0) next = { ...labels };
      for (const p of paths) {
        if (p === "labels") next = { ...labels };
        else if (p.startsWith("labels.")) {
          const key = p.slice("labels.".length);
          const v = labels[key];
          if (v === undefined || v === "") delete next[key];
          else next[key] = v;
        } else
          throw errInvalidArgument(
            `cannot update ${JSON.stringify(p)} field on namespace ${JSON.stringify(name)}`,
          );
      }
      this.db
        .stmt("UPDATE namespaces SET labels = ?, updated_at = ? WHERE name = ?")
        .run(encodeLabels(next), Date.now(), name);
      this.cache = undefined;
      return { name, labels: next };
    });
    this.events.publish(
      eventNs,
      "/namespaces/update",
      packEvent(NamespaceUpdateSchema, create(NamespaceUpdateSchema, updated)),
    );
    return updated;
  }

  delete(name: string, eventNs: string): void {
    this.db.tx(() => {
      if (!this.get(name)) throw errNotFound(`namespace ${JSON.stringify(name)}`);
      const holds = this.db.namespaceHolds(name);
      if (holds.length > 0)
        throw errFailedPrecondition(
          `namespace ${JSON.stringify(name)} must be empty, but it still has ${holds.join(", ")}`,
        );
      // Leases and their resource lists go with the namespace, as in containerd.
      this.db.stmt("DELETE FROM lease_resources WHERE namespace = ?").run(name);
      this.db.stmt("DELETE FROM leases WHERE namespace = ?").run(name);
      this.db.stmt("DELETE FROM ingests WHERE namespace = ?").run(name);
      // no blob went with it (the namespace is empty), only ingests: the sweep looks at those
      this.db.markBackendDirty("content", []);
      this.db.stmt("DELETE FROM namespaces WHERE name = ?").run(name);
      this.cache = undefined;
    }, FREES);
    this.db.mutated(true);
    this.events.publish(
      eventNs,
      "/namespaces/delete",
      packEvent(NamespaceDeleteSchema, create(NamespaceDeleteSchema, { name })),
    );
  }
}
