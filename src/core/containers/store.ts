// Containers: metadata records (id, runtime, spec, snapshot, labels, extensions) kept per
// namespace in the metadata DB's `containers` table. A container holds its snapshot (and what its
// gc.ref.* labels name) against the garbage collector; deleting one may free them.
//
// Behaviour follows containerd 1.6's metadata container store and containers service:
//   - ids follow the identifier rule; a runtime name and a spec are required; a snapshot key
//     needs a snapshotter; labels obey the 4096-byte rule and empty values are dropped;
//     extension names must not be empty.
//   - updates take field paths: labels, labels.<key>, spec, extensions, extensions.<name>, image,
//     snapshotkey. No paths means all of those, and then the snapshotter and runtime name must
//     not change. Anything else (runtime, snapshotter, ...) is refused.
//   - stored extensions are never removed by an update, only added or replaced (containerd
//     writes them into a bucket it never clears); the Update reply shows the computed set.
//   - creation stamps created_at/updated_at itself, whatever the client sent.
//   - events /containers/create, /containers/update, /containers/delete in the caller's
//     namespace, with containerd's payloads.
import { create } from "@bufbuild/protobuf";
import type { Any } from "@bufbuild/protobuf/wkt";
import { errAlreadyExists, errInvalidArgument, errNotFound } from "../../base/errdefs.js";
import { validateIdentifier } from "../../base/identifiers.js";
import {
  ContainerCreateSchema,
  ContainerDeleteSchema,
  ContainerUpdateSchema,
} from "../../gen/containerd/events/container_pb.js";
import type { Exchange } from "../events/exchange.js";
import { packEvent } from "../events/exchange.js";
import { type Adaptor, labelAdaptor, parseListFilters } from "../filters.js";
import { decodeLabels, encodeLabels, FREES, type Labels, type MetadataDB } from "../metadata/db.js";
import { encodeMissingItems, keptItemsReader } from "../metadata/kept.js";
import type { NamespaceStore } from "../namespaces/store.js";

/** A protobuf Any as the store keeps it: the type URL and the encoded value. */
export interface AnyValue {
  typeUrl: string;
  value: Uint8Array;
}

export interface RuntimeInfo {
  name: string;
  options?: AnyValue;
}

export interface Container {
  id: string;
  labels: Labels;
  image: string;
  runtime: RuntimeInfo;
  spec?: AnyValue;
  snapshotter: string;
  snapshotKey: string;
  /** Not on containerd 1.6's wire; kept for the sandbox API of later versions. */
  sandboxId: string;
  extensions: Record<string, AnyValue>;
  createdAt: Date;
  updatedAt: Date;
}

/** What a caller hands in: times are the store's to set. */
export interface ContainerInput {
  id: string;
  labels?: Labels;
  image?: string;
  runtime?: RuntimeInfo;
  spec?: AnyValue;
  snapshotter?: string;
  snapshotKey?: string;
  sandboxId?: string;
  extensions?: Record<string, AnyValue>;
}

const MAX_LABEL_SIZE = 4096;
const KEY_SHOWN_BYTES = 10;
const q = (s: string) => JSON.stringify(s);

/** The field paths an update with no mask applies. */
const DEFAULT_PATHS = ["labels", "spec", "extensions", "image", "snapshotkey"];

function validateLabel(k: string, v: string): void {
  if (Buffer.byteLength(k) + Buffer.byteLength(v) > MAX_LABEL_SIZE) {
    const kb = Buffer.from(k);
    const shown = kb.length > KEY_SHOWN_BYTES ? kb.subarray(0, KEY_SHOWN_BYTES).toString("utf8") : k;
    throw errInvalidArgument(
      `containers.Labels: label key and value greater than maximum size (${MAX_LABEL_SIZE} bytes), key: ${shown}`,
    );
  }
}

/** containerd's validateContainer, in its order and with its messages. */
function validateContainer(c: {
  id: string;
  labels: Labels;
  runtime: RuntimeInfo;
  spec?: AnyValue;
  snapshotter: string;
  snapshotKey: string;
  extensions: Record<string, AnyValue>;
}): void {
  try {
    validateIdentifier(c.id);
  } catch (err) {
    throw errInvalidArgument(`container.ID: ${(err as Error).message.replace(/: invalid argument$/, "")}`);
  }
  if (Object.hasOwn(c.extensions, ""))
    throw errInvalidArgument("container.Extension keys must not be zero-length");
  for (const [k, v] of Object.entries(c.labels)) validateLabel(k, v);
  if (!c.runtime.name) throw errInvalidArgument("container.Runtime.Name must be set");
  if (!c.spec) throw errInvalidArgument("container.Spec must be set");
  if (c.snapshotKey !== "" && c.snapshotter === "")
    throw errInvalidArgument("container.Snapshotter must be set if container.SnapshotKey is set");
}

/** Prefix a validation error's message the way containerd wraps it, keeping its kind. */
function wrapValidation(prefix: string, fn: () => void): void {
  try {
    fn();
  } catch (err) {
    const e = err as Error;
    e.message = `${prefix}: ${e.message}`;
    throw e;
  }
}

/** A stored map never keeps empty values. */
function dropEmpty(m: Labels | undefined): Labels {
  const out: Labels = {};
  for (const [k, v] of Object.entries(m ?? {})) if (v !== "") out[k] = v;
  return out;
}

const own = <T>(m: Record<string, T>, k: string): T | undefined => (Object.hasOwn(m, k) ? m[k] : undefined);

const copyAny = (a: AnyValue | undefined): AnyValue | undefined =>
  a ? { typeUrl: a.typeUrl, value: new Uint8Array(a.value) } : undefined;

const copyExtensions = (m: Record<string, AnyValue> | undefined): Record<string, AnyValue> => {
  const out: Record<string, AnyValue> = {};
  for (const [k, v] of Object.entries(m ?? {})) out[k] = copyAny(v)!;
  return out;
};

const EMPTY_ANY: AnyValue = { typeUrl: "", value: new Uint8Array() };

function encodeExtensions(m: Record<string, AnyValue>): string {
  const out: Record<string, { type_url: string; value: string }> = {};
  for (const [k, v] of Object.entries(m))
    out[k] = { type_url: v.typeUrl, value: Buffer.from(v.value).toString("base64") };
  return JSON.stringify(out);
}

function decodeExtensions(s: string): Record<string, AnyValue> {
  const raw = JSON.parse(s) as Record<string, { type_url: string; value: string }>;
  const out: Record<string, AnyValue> = {};
  for (const [k, v] of Object.entries(raw))
    out[k] = { typeUrl: v.type_url, value: new Uint8Array(Buffer.from(v.value, "base64")) };
  return out;
}

/** A row of `cols` as an array (better-sqlite3's raw mode: a list reads every container). */
type Row = [
  id: string,
  labels: string,
  image: string,
  runtimeName: string,
  runtimeOptionsTypeUrl: string | null,
  runtimeOptions: Buffer | null,
  specTypeUrl: string | null,
  spec: Buffer | null,
  snapshotter: string,
  snapshotKey: string,
  sandboxId: string,
  extensions: string,
  createdAt: number,
  updatedAt: number,
];

// SQLite hands each row's blob as a Buffer of its own: a plain view of it, not a copy
const anyFromRow = (typeUrl: string | null, value: Buffer | null): AnyValue | undefined =>
  typeUrl === null
    ? undefined
    : {
        typeUrl,
        value: value ? new Uint8Array(value.buffer, value.byteOffset, value.byteLength) : new Uint8Array(),
      };

const toContainer = ([
  id,
  labels,
  image,
  runtimeName,
  runtimeOptionsTypeUrl,
  runtimeOptions,
  specTypeUrl,
  spec,
  snapshotter,
  snapshotKey,
  sandboxId,
  extensions,
  createdAt,
  updatedAt,
]: Row): Container => ({
  id,
  labels: decodeLabels(labels),
  image,
  runtime: { name: runtimeName, options: anyFromRow(runtimeOptionsTypeUrl, runtimeOptions) },
  spec: anyFromRow(specTypeUrl, spec),
  snapshotter,
  snapshotKey,
  sandboxId,
  extensions: decodeExtensions(extensions),
  createdAt: new Date(createdAt),
  updatedAt: new Date(updatedAt),
});

function statements(db: MetadataDB) {
  const s = db.sql;
  const cols = `id, labels, image, runtime_name, runtime_options_type_url, runtime_options, spec_type_url,
    spec, snapshotter, snapshot_key, sandbox_id, extensions, created_at, updated_at`;
  return {
    get: s.prepare(`SELECT ${cols} FROM containers WHERE namespace = ? AND id = ?`).raw(true),
    list: s.prepare(`SELECT ${cols} FROM containers WHERE namespace = ? ORDER BY id`).raw(true),
    getWire: s.prepare("SELECT wire FROM containers WHERE namespace = ? AND id = ?").raw(true),
    listWire: s.prepare("SELECT wire FROM containers WHERE namespace = ? ORDER BY id").pluck(true),
    withoutWire: s.prepare(`SELECT namespace, ${cols} FROM containers WHERE wire IS NULL`).raw(true),
    insert: s.prepare(
      `INSERT OR IGNORE INTO containers (namespace, ${cols}, wire)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ),
    update: s.prepare(
      `UPDATE containers SET labels = ?, image = ?, spec_type_url = ?, spec = ?, snapshot_key = ?,
         extensions = ?, updated_at = ?, wire = ? WHERE namespace = ? AND id = ?`,
    ),
    delete: s.prepare("DELETE FROM containers WHERE namespace = ? AND id = ?"),
    hasBucket: s.prepare("SELECT 1 FROM container_buckets WHERE namespace = ?"),
    addBucket: s.prepare("INSERT OR IGNORE INTO container_buckets (namespace) VALUES (?)"),
  };
}

/** containerd's container field paths for filters: id, image, runtime.name, labels.*. */
function adapt(c: Container): Adaptor {
  return (fp) => {
    switch (fp[0]) {
      case "id":
        return c.id || undefined;
      case "image":
        return c.image || undefined;
      case "runtime":
        return fp[1] === "name" && fp.length === 2 ? c.runtime.name || undefined : undefined;
      case "labels":
        return labelAdaptor(c.labels, fp.slice(1)) || undefined;
      default:
        return undefined;
    }
  };
}

function anyPb(a: AnyValue | undefined): Any | undefined {
  return a ? ({ $typeName: "google.protobuf.Any", typeUrl: a.typeUrl, value: a.value } as Any) : undefined;
}

/**
 * A record as field 1 of an answer, its tag and length then containerd's Container message
 * (services/container-wire.ts has the encoder: the store is below the wire layer, so the daemon
 * hands it in; metadata/kept.ts says why this form).
 */
export type ContainerEncoder = (c: Container) => Uint8Array;

export class ContainerStore {
  /**
   * Called before a delete; throws to refuse it. The tasks service sets this once tasks exist.
   * containerd 1.6 itself refuses "delete with a live task" only on the client side (its client
   * asks Tasks/Get first and fails with `cannot delete running task <id>: failed precondition`),
   * so a guard installed here should use that message and a failed-precondition error.
   */
  beforeDelete: ((ns: string, id: string) => void) | undefined;
  private readonly stmts: ReturnType<typeof statements>;

  /**
   * With `encode`, every row also keeps its record encoded (the `wire` column), written with the
   * row from the same values a read decodes, and rows written without it are encoded here, once.
   * Get and an unfiltered List then answer with those bytes: a 5,000-container List spent most
   * of its time decoding rows and encoding them again (docs/performance.md, findings 69 and 72).
   * Without `encode` the column stays NULL and answers are built from decoded records.
   */
  constructor(
    private readonly db: MetadataDB,
    private readonly namespaces: NamespaceStore,
    private readonly events: Exchange,
    private readonly encode?: ContainerEncoder,
  ) {
    this.stmts = statements(db);
    this.listEncoded = keptItemsReader(db, "containers", "id");
    if (encode)
      encodeMissingItems<Row>(db, "containers", "id", this.stmts.withoutWire, (r) => encode(toContainer(r)));
  }

  /**
   * Every container of the namespace in id order as the store keeps it encoded, one field-1
   * item after the other, in parts: the body of an unfiltered List's answer. Null when a row has
   * no encoding: the caller then lists through `each`.
   */
  readonly listEncoded: (ns: string) => Buffer[] | null;

  /** The encoding of what a read of `row` gives, or NULL without an encoder. */
  private wireOf(row: Row): Uint8Array | null {
    return this.encode ? this.encode(toContainer(row)) : null;
  }

  private row(ns: string, id: string): Row | undefined {
    return this.stmts.get.get(ns, id) as Row | undefined;
  }

  private hasBucket(ns: string): boolean {
    return this.stmts.hasBucket.get(ns) !== undefined;
  }

  get(ns: string, id: string): Container {
    const r = this.row(ns, id);
    if (!r) throw errNotFound(`container ${q(id)} in namespace ${q(ns)}`);
    return toContainer(r);
  }

  /**
   * The record as the store keeps it encoded, as field 1 of an answer (see the constructor); null
   * when this row has no encoding, for the caller to encode `get`'s record itself. Not found as
   * `get` says it.
   */
  getEncoded(ns: string, id: string): Buffer | null {
    const r = this.stmts.getWire.get(ns, id) as [Buffer | null] | undefined;
    if (!r) throw errNotFound(`container ${q(id)} in namespace ${q(ns)}`);
    return r[0];
  }

  /**
   * Every container of the namespace in id order, as the store keeps it encoded, handed to
   * `fn` as SQLite reads it (ListStream sends each as a message of its own). False, and `fn`
   * called for only some, when a row has no encoding: the caller then lists through `each`.
   * `fn` must not write to the database.
   */
  eachEncoded(ns: string, fn: (wire: Buffer) => void): boolean {
    for (const wire of this.stmts.listWire.iterate(ns) as IterableIterator<Buffer | null>) {
      if (wire === null) return false;
      fn(wire);
    }
    return true;
  }

  list(ns: string, filters: readonly string[] = []): Container[] {
    const out: Container[] = [];
    this.each(ns, filters, (c) => out.push(c));
    return out;
  }

  /**
   * The namespace's containers that match `filters`, in id order, handed to `fn` one at a time
   * as SQLite reads them (nothing holds the whole list). `fn` must not write to the database.
   */
  each(ns: string, filters: readonly string[], fn: (c: Container) => void): void {
    const filter = parseListFilters(filters);
    for (const r of this.stmts.list.iterate(ns) as IterableIterator<Row>) {
      const c = toContainer(r);
      if (filter.match(adapt(c))) fn(c);
    }
  }

  create(ns: string, input: ContainerInput): Container {
    const c = {
      id: input.id,
      labels: { ...(input.labels ?? {}) },
      image: input.image ?? "",
      runtime: { name: input.runtime?.name ?? "", options: copyAny(input.runtime?.options) },
      spec: copyAny(input.spec),
      snapshotter: input.snapshotter ?? "",
      snapshotKey: input.snapshotKey ?? "",
      sandboxId: input.sandboxId ?? "",
      extensions: copyExtensions(input.extensions),
    };
    wrapValidation("create container failed validation", () => validateContainer(c));
    const labels = dropEmpty(c.labels);
    const now = Date.now();
    const row: Row = [
      c.id,
      encodeLabels(labels),
      c.image,
      c.runtime.name,
      c.runtime.options?.typeUrl ?? null,
      c.runtime.options ? Buffer.from(c.runtime.options.value) : null,
      c.spec?.typeUrl ?? null,
      c.spec ? Buffer.from(c.spec.value) : null,
      c.snapshotter,
      c.snapshotKey,
      c.sandboxId,
      encodeExtensions(c.extensions),
      now,
      now,
    ];
    const wire = this.wireOf(row);
    this.db.tx(
      () => {
        this.namespaces.ensure(ns);
        this.stmts.addBucket.run(ns);
        const r = this.stmts.insert.run(ns, ...row, wire);
        if (r.changes === 0) throw errAlreadyExists(`container ${q(c.id)}`);
      },
      { what: `container ${q(c.id)}` },
    );
    this.db.mutated(false);
    const created: Container = { ...c, labels, createdAt: new Date(now), updatedAt: new Date(now) };
    this.events.publish(
      ns,
      "/containers/create",
      packEvent(
        ContainerCreateSchema,
        create(ContainerCreateSchema, {
          id: created.id,
          image: created.image,
          runtime: { name: created.runtime.name, options: anyPb(created.runtime.options) },
        }),
      ),
    );
    return created;
  }

  /** Update with containerd's field paths (see the header). */
  update(ns: string, input: ContainerInput, paths: readonly string[] = []): Container {
    if (!input.id) throw errInvalidArgument("must specify a container id");
    const given = {
      labels: input.labels ?? {},
      image: input.image ?? "",
      runtimeName: input.runtime?.name ?? "",
      spec: input.spec,
      snapshotter: input.snapshotter ?? "",
      snapshotKey: input.snapshotKey ?? "",
      extensions: input.extensions ?? {},
    };
    const id = input.id;
    const updated = this.db.tx(() => {
      if (!this.hasBucket(ns)) throw errNotFound(`cannot update container ${q(id)} in namespace ${q(ns)}`);
      const r = this.row(ns, id);
      if (!r) throw errNotFound(`container ${q(id)}`);
      const cur = toContainer(r);
      const next = { ...cur, labels: { ...cur.labels }, extensions: { ...cur.extensions } };
      let fieldpaths = paths;
      if (fieldpaths.length === 0) {
        fieldpaths = DEFAULT_PATHS;
        if (cur.snapshotter !== given.snapshotter)
          throw errInvalidArgument("container.Snapshotter field is immutable");
        if (cur.runtime.name !== given.runtimeName)
          throw errInvalidArgument("container.Runtime.Name field is immutable");
      }
      for (const p of fieldpaths) {
        if (p.startsWith("labels.")) {
          const k = p.slice("labels.".length);
          next.labels[k] = own(given.labels, k) ?? "";
          continue;
        }
        if (p.startsWith("extensions.")) {
          const k = p.slice("extensions.".length);
          next.extensions[k] = copyAny(own(given.extensions, k)) ?? EMPTY_ANY;
          continue;
        }
        switch (p) {
          case "labels":
            next.labels = { ...given.labels };
            break;
          case "spec":
            next.spec = copyAny(given.spec);
            break;
          case "extensions":
            next.extensions = copyExtensions(given.extensions);
            break;
          case "image":
            next.image = given.image;
            break;
          case "snapshotkey":
            next.snapshotKey = given.snapshotKey;
            break;
          default:
            throw errInvalidArgument(`cannot update ${q(p)} field on ${q(id)}`);
        }
      }
      wrapValidation("update failed validation", () => validateContainer(next));
      next.labels = dropEmpty(next.labels);
      const now = Date.now();
      // stored extensions are only ever added to or replaced, never removed (see the header)
      const stored = { ...cur.extensions, ...next.extensions };
      const written: Row = [
        r[0],
        encodeLabels(next.labels),
        next.image,
        r[3],
        r[4],
        r[5],
        next.spec?.typeUrl ?? null,
        next.spec ? Buffer.from(next.spec.value) : null,
        r[8],
        next.snapshotKey,
        r[10],
        encodeExtensions(stored),
        r[12],
        now,
      ];
      this.stmts.update.run(
        written[1],
        written[2],
        written[6],
        written[7],
        written[9],
        written[11],
        now,
        this.wireOf(written),
        ns,
        id,
      );
      next.updatedAt = new Date(now);
      return next;
    });
    // a changed snapshot key or gc.ref label may have released something
    this.db.mutated(false);
    this.events.publish(
      ns,
      "/containers/update",
      packEvent(
        ContainerUpdateSchema,
        create(ContainerUpdateSchema, {
          id: updated.id,
          image: updated.image,
          labels: updated.labels,
          snapshotKey: updated.snapshotKey,
        }),
      ),
    );
    return updated;
  }

  delete(ns: string, id: string): void {
    this.beforeDelete?.(ns, id);
    this.db.tx(() => {
      if (!this.hasBucket(ns)) throw errNotFound(`cannot delete container ${q(id)} in namespace ${q(ns)}`);
      if (this.stmts.delete.run(ns, id).changes === 0) throw errNotFound(`container ${id}`);
    }, FREES);
    // the snapshot and whatever the labels referenced may now be garbage
    this.db.mutated(true);
    this.events.publish(
      ns,
      "/containers/delete",
      packEvent(ContainerDeleteSchema, create(ContainerDeleteSchema, { id })),
    );
  }
}
