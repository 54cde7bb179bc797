import { randomBytes } from "node:crypto";
// Leases: named holds on resources (content, ingests, snapshots) that keep them from GC until
// the lease is deleted or its containerd.io/gc.expire time passes.
import { errAlreadyExists, errInvalidArgument, errNotFound } from "../../base/errdefs.js";
import { type Filter, parseFilters } from "../filters.js";
import { decodeLabels, encodeLabels, FREES, type Labels, type MetadataDB } from "../metadata/db.js";
import type { NamespaceStore } from "../namespaces/store.js";
import { validateLabels } from "../namespaces/store.js";

export interface Lease {
  id: string;
  createdAt: Date;
  labels: Labels;
}

export interface LeaseResource {
  id: string;
  type: string;
}

export { GC_EXPIRE as GC_EXPIRE_LABEL } from "../gc/labels.js";

const ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/**
 * A generated lease id in containerd's shape, `<nanoseconds of now>-<4 chars>`, drawn from
 * letters and digits only: containerd's url-safe base64 can yield "--" or "_", which its own
 * identifier rule then rejects.
 */
export function randomLeaseId(): string {
  const ns = (Date.now() % 1000) * 1_000_000 + Math.floor(Number(process.hrtime.bigint() % 1_000_000n));
  const bytes = randomBytes(4);
  let tail = "";
  for (const b of bytes) tail += ID_CHARS[b % ID_CHARS.length];
  return `${ns}-${tail}`;
}
const DIGEST_RE = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

/** Resource types a lease can hold, as containerd accepts them. */
export function validateLeaseResource(r: LeaseResource): void {
  if (!r.id) throw errInvalidArgument("resource id must not be empty");
  if (r.type === "content") {
    if (!DIGEST_RE.test(r.id))
      throw errInvalidArgument(`resource id ${JSON.stringify(r.id)}: invalid digest`);
    return;
  }
  if (r.type === "ingests") return;
  if (r.type.startsWith("snapshots/") && r.type.length > "snapshots/".length) return;
  throw errInvalidArgument(`unsupported resource type ${JSON.stringify(r.type)}`);
}

type Row = { id: string; created_at: number; labels: string };
const toLease = (r: Row): Lease => ({
  id: r.id,
  createdAt: new Date(r.created_at),
  labels: decodeLabels(r.labels),
});

export class LeaseStore {
  /** Called after a delete with sync=true; the GC plugin sets it. */
  collect: (() => Promise<void>) | undefined;

  constructor(
    private readonly db: MetadataDB,
    private readonly namespaces: NamespaceStore,
  ) {}

  create(ns: string, id: string, labels: Labels): Lease {
    // containerd only requires a non-empty id; ctr's generated ids may contain "--" or "_".
    if (!id) throw errInvalidArgument("lease id must be provided");
    validateLabels(labels);
    const now = Date.now();
    this.db.tx(
      () => {
        this.namespaces.ensure(ns);
        const r = this.db
          .stmt("INSERT OR IGNORE INTO leases (namespace, id, created_at, labels) VALUES (?, ?, ?, ?)")
          .run(ns, id, now, encodeLabels(labels));
        if (r.changes === 0) throw errAlreadyExists(`lease ${JSON.stringify(id)}`);
      },
      { what: `lease ${JSON.stringify(id)}` },
    );
    return { id, createdAt: new Date(now), labels };
  }

  get(ns: string, id: string): Lease | undefined {
    const r = this.db
      .stmt("SELECT id, created_at, labels FROM leases WHERE namespace = ? AND id = ?")
      .get(ns, id) as Row | undefined;
    return r ? toLease(r) : undefined;
  }

  list(ns: string, filters: string[]): Lease[] {
    const filter: Filter = parseFilters(filters);
    const rows = this.db
      .stmt("SELECT id, created_at, labels FROM leases WHERE namespace = ? ORDER BY created_at, id")
      .all(ns) as Row[];
    return rows.map(toLease).filter((l) =>
      filter.match((fp) => {
        if (fp[0] === "id" && fp.length === 1) return l.id;
        if (fp[0] === "labels" && fp.length >= 2) return l.labels[fp.slice(1).join(".")];
        return undefined;
      }),
    );
  }

  async delete(ns: string, id: string, sync: boolean): Promise<void> {
    this.db.tx(() => {
      const r = this.db.stmt("DELETE FROM leases WHERE namespace = ? AND id = ?").run(ns, id);
      if (r.changes === 0) throw errNotFound(`lease ${JSON.stringify(id)}`);
      this.db.stmt("DELETE FROM lease_resources WHERE namespace = ? AND lease = ?").run(ns, id);
    }, FREES);
    this.db.mutated(true);
    if (sync && this.collect) await this.collect();
  }

  addResource(ns: string, id: string, r: LeaseResource): void {
    validateLeaseResource(r);
    this.db.tx(
      () => {
        if (!this.get(ns, id)) throw errNotFound(`lease ${JSON.stringify(id)}`);
        this.db
          .stmt("INSERT OR IGNORE INTO lease_resources (namespace, lease, type, id) VALUES (?, ?, ?, ?)")
          .run(ns, id, r.type, r.id);
      },
      { what: `${r.type} ${r.id} into lease ${JSON.stringify(id)}` },
    );
  }

  deleteResource(ns: string, id: string, r: LeaseResource): void {
    validateLeaseResource(r);
    this.db.tx(() => {
      if (!this.get(ns, id)) throw errNotFound(`lease ${JSON.stringify(id)}`);
      this.db
        .stmt("DELETE FROM lease_resources WHERE namespace = ? AND lease = ? AND type = ? AND id = ?")
        .run(ns, id, r.type, r.id);
    }, FREES);
  }

  listResources(ns: string, id: string): LeaseResource[] {
    if (!this.get(ns, id)) throw errNotFound(`lease ${JSON.stringify(id)}`);
    return this.db
      .stmt("SELECT id, type FROM lease_resources WHERE namespace = ? AND lease = ? ORDER BY type, id")
      .all(ns, id) as LeaseResource[];
  }
}
