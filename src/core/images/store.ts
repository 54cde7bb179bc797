// Images: named pointers to a target descriptor (an index or a manifest in the content store),
// kept per namespace in the metadata DB's `images` table. An image holds its target (and what
// its gc.ref.* labels name) against the garbage collector, so deleting one is what frees a
// pulled image's blobs and snapshots.
//
// Behaviour follows containerd's metadata image store and images service: names are free-form
// but required, the target must carry a valid digest, a positive size and a media type, updates
// take field paths (labels, labels.<key>, annotations, annotations.<key>, target), empty label
// and annotation values are dropped, and deletes may wait for a collection (`sync`).
import { create } from "@bufbuild/protobuf";
import { errAlreadyExists, errInvalidArgument, errNotFound } from "../../base/errdefs.js";
import {
  ImageCreateSchema,
  ImageDeleteSchema,
  ImageUpdateSchema,
} from "../../gen/containerd/events/image_pb.js";
import { digestError } from "../content/local.js";
import type { Exchange } from "../events/exchange.js";
import { packEvent } from "../events/exchange.js";
import { labelAdaptor, selectMatching } from "../filters.js";
import { decodeLabels, encodeLabels, FREES, type Labels, type MetadataDB } from "../metadata/db.js";
import { encodeMissingItems, keptItemsReader } from "../metadata/kept.js";
import type { NamespaceStore } from "../namespaces/store.js";

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations: Labels;
}

export interface Image {
  name: string;
  labels: Labels;
  target: Descriptor;
  createdAt: Date;
  updatedAt: Date;
}

/** What a caller hands in: times are the store's to set. */
export interface ImageInput {
  name: string;
  labels?: Labels;
  target?: Partial<Descriptor>;
}

export interface DeleteOptions {
  /** Wait for a garbage collection before returning. */
  sync?: boolean;
  /** Delete only while the image still points at this digest (an empty digest checks nothing). */
  target?: { digest: string };
}

const MAX_LABEL_SIZE = 4096;
const KEY_SHOWN_BYTES = 10;
const q = (s: string) => JSON.stringify(s);

/** containerd 1.6's label rule (key + value at most 4096 bytes), with its message. */
function validateLabel(k: string, v: string): void {
  if (Buffer.byteLength(k) + Buffer.byteLength(v) > MAX_LABEL_SIZE) {
    const shown = Buffer.from(k).subarray(0, KEY_SHOWN_BYTES).toString("utf8");
    throw errInvalidArgument(
      `image.Labels: label key and value greater than maximum size (${MAX_LABEL_SIZE} bytes), key: ${shown}`,
    );
  }
}

function validateTarget(t: Descriptor): void {
  const bad = digestError(t.digest);
  if (bad) throw errInvalidArgument(`Target.Digest ${q(t.digest)} invalid: ${bad}`);
  if (!(t.size > 0)) throw errInvalidArgument("Target.Size must be greater than zero");
  if (!t.mediaType) throw errInvalidArgument("Target.MediaType must be set");
}

function validateImage(img: { name: string; labels: Labels; target: Descriptor }): void {
  if (!img.name) throw errInvalidArgument("image name must not be empty");
  for (const [k, v] of Object.entries(img.labels)) validateLabel(k, v);
  validateTarget(img.target);
}

/** A stored map never keeps empty values: setting one to "" removes it. */
function dropEmpty(m: Labels | undefined): Labels {
  const out: Labels = {};
  for (const [k, v] of Object.entries(m ?? {})) if (v !== "") out[k] = v;
  return out;
}

/** A map's own value for k ("" when absent: setting a path to an absent value removes it). */
const own = (m: Labels, k: string): string => (Object.hasOwn(m, k) ? m[k]! : "");

const toDescriptor = (t: Partial<Descriptor> | undefined): Descriptor => ({
  mediaType: t?.mediaType ?? "",
  digest: t?.digest ?? "",
  size: t?.size ?? 0,
  annotations: { ...(t?.annotations ?? {}) },
});

/** A row of `cols` as an array (better-sqlite3's raw mode, ~30% cheaper than row objects). */
type Row = [
  name: string,
  mediaType: string,
  digest: string,
  size: number,
  annotations: string,
  labels: string,
  createdAt: number,
  updatedAt: number,
];

const toImage = ([name, mediaType, digest, size, annotations, labels, createdAt, updatedAt]: Row): Image => ({
  name,
  labels: decodeLabels(labels),
  target: { mediaType, digest, size, annotations: decodeLabels(annotations) },
  createdAt: new Date(createdAt),
  updatedAt: new Date(updatedAt),
});

function statements(db: MetadataDB) {
  const s = db.sql;
  const cols =
    "name, target_media_type, target_digest, target_size, target_annotations, labels, created_at, updated_at";
  return {
    get: s.prepare(`SELECT ${cols} FROM images WHERE namespace = ? AND name = ?`).raw(true),
    list: s.prepare(`SELECT ${cols} FROM images WHERE namespace = ? ORDER BY name`).raw(true),
    getWire: s.prepare("SELECT wire FROM images WHERE namespace = ? AND name = ?").raw(true),
    withoutWire: s.prepare(`SELECT namespace, ${cols} FROM images WHERE wire IS NULL`).raw(true),
    insert: s.prepare(
      `INSERT OR IGNORE INTO images (namespace, ${cols}, wire) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ),
    update: s.prepare(
      // every column of a Row after the name, in order (created_at is written back unchanged)
      `UPDATE images SET target_media_type = ?, target_digest = ?, target_size = ?, target_annotations = ?,
         labels = ?, created_at = ?, updated_at = ?, wire = ? WHERE namespace = ? AND name = ?`,
    ),
    delete: s.prepare("DELETE FROM images WHERE namespace = ? AND name = ?"),
  };
}

/** containerd's image field paths for filters: name, target.digest, target.mediatype, labels.*, annotations.*. */
function adapt(img: Image) {
  return (fp: string[]): string | undefined => {
    switch (fp[0]) {
      case "name":
        return img.name || undefined;
      case "target":
        if (fp[1] === "digest") return img.target.digest || undefined;
        if (fp[1] === "mediatype") return img.target.mediaType || undefined;
        return undefined;
      case "labels":
        return labelAdaptor(img.labels, fp.slice(1));
      case "annotations":
        return labelAdaptor(img.target.annotations, fp.slice(1));
      default:
        return undefined;
    }
  };
}

/**
 * A record as field 1 of an answer, its tag and length then containerd's Image message
 * (services/image-wire.ts has the encoder: the store is below the wire layer, so the daemon hands
 * it in; metadata/kept.ts says why this form).
 */
export type ImageEncoder = (i: Image) => Uint8Array;

export class ImageStore {
  /** Runs a garbage collection and waits for it (sync deletes); set by the plugin wiring. */
  collect: (() => Promise<void>) | undefined;
  private readonly stmts: ReturnType<typeof statements>;

  /**
   * With `encode`, every row also keeps its record encoded (the `wire` column), as the container
   * store does (see ContainerStore): written with the row from the same values a read decodes,
   * and filled in here, once, for rows written without it. Without `encode` the column stays
   * NULL and answers are built from decoded records.
   */
  constructor(
    private readonly db: MetadataDB,
    private readonly namespaces: NamespaceStore,
    private readonly events: Exchange,
    private readonly encode?: ImageEncoder,
  ) {
    this.stmts = statements(db);
    this.listEncoded = keptItemsReader(db, "images", "name");
    if (encode)
      encodeMissingItems<Row>(db, "images", "name", this.stmts.withoutWire, (r) => encode(toImage(r)));
  }

  /**
   * Every image of the namespace in name order as the store keeps it encoded, one field-1
   * item after the other, in parts: the body of an unfiltered List's answer. Null when a row has
   * no encoding: the caller then lists through `list`.
   */
  readonly listEncoded: (ns: string) => Buffer[] | null;

  /** The encoding of what a read of `row` gives, or NULL without an encoder. */
  private wireOf(row: Row): Uint8Array | null {
    return this.encode ? this.encode(toImage(row)) : null;
  }

  private row(ns: string, name: string): Row | undefined {
    return this.stmts.get.get(ns, name) as Row | undefined;
  }

  get(ns: string, name: string): Image {
    const r = this.row(ns, name);
    if (!r) throw errNotFound(`image ${q(name)}`);
    return toImage(r);
  }

  /**
   * The record as the store keeps it encoded, as field 1 of an answer (see the constructor); null
   * when this row has no encoding, for the caller to encode `get`'s record itself. Not found as
   * `get` says it.
   */
  getEncoded(ns: string, name: string): Buffer | null {
    const r = this.stmts.getWire.get(ns, name) as [Buffer | null] | undefined;
    if (!r) throw errNotFound(`image ${q(name)}`);
    return r[0];
  }

  list(ns: string, filters: string[] = []): Image[] {
    return selectMatching(filters, (this.stmts.list.all(ns) as Row[]).map(toImage), adapt);
  }

  create(ns: string, input: ImageInput): Image {
    const img = {
      name: input.name,
      labels: { ...(input.labels ?? {}) },
      target: toDescriptor(input.target),
    };
    validateImage(img);
    const labels = dropEmpty(img.labels);
    const target = { ...img.target, annotations: dropEmpty(img.target.annotations) };
    const now = Date.now();
    const row: Row = [
      img.name,
      target.mediaType,
      target.digest,
      target.size,
      encodeLabels(target.annotations),
      encodeLabels(labels),
      now,
      now,
    ];
    const wire = this.wireOf(row);
    this.db.tx(
      () => {
        this.namespaces.ensure(ns);
        const r = this.stmts.insert.run(ns, ...row, wire);
        if (r.changes === 0) throw errAlreadyExists(`image ${q(img.name)}`);
      },
      { what: `image ${q(img.name)} (target ${target.digest})` },
    );
    this.db.mutated(false);
    const created: Image = {
      name: img.name,
      labels,
      target,
      createdAt: new Date(now),
      updatedAt: new Date(now),
    };
    this.events.publish(
      ns,
      "/images/create",
      packEvent(ImageCreateSchema, create(ImageCreateSchema, { name: created.name, labels: created.labels })),
    );
    return created;
  }

  /**
   * Update with containerd's field paths. No paths replaces labels and target as given (the
   * name is the key and never changes; the creation time stays).
   */
  update(ns: string, input: ImageInput, paths: string[] = []): Image {
    if (!input.name) throw errInvalidArgument("image name is required for update");
    const given = {
      name: input.name,
      labels: input.labels ?? {},
      target: toDescriptor(input.target),
    };
    const updated = this.db.tx(
      () => {
        const r = this.row(ns, given.name);
        if (!r) throw errNotFound(`image ${q(given.name)}`);
        const cur = toImage(r);
        let labels: Labels = cur.labels;
        let target: Descriptor = cur.target;
        if (paths.length === 0) {
          labels = { ...given.labels };
          target = { ...given.target, annotations: { ...given.target.annotations } };
        }
        for (const p of paths) {
          if (p.startsWith("labels.")) {
            const k = p.slice("labels.".length);
            labels = { ...labels, [k]: own(given.labels, k) };
          } else if (p.startsWith("annotations.")) {
            const k = p.slice("annotations.".length);
            target = {
              ...target,
              annotations: { ...target.annotations, [k]: own(given.target.annotations, k) },
            };
          } else if (p === "labels") {
            labels = { ...given.labels };
          } else if (p === "target") {
            target = { ...given.target, annotations: { ...given.target.annotations } };
          } else if (p === "annotations") {
            target = { ...target, annotations: { ...given.target.annotations } };
          } else {
            throw errInvalidArgument(`cannot update ${q(p)} field on image ${q(given.name)}`);
          }
        }
        validateImage({ name: given.name, labels, target });
        labels = dropEmpty(labels);
        target = { ...target, annotations: dropEmpty(target.annotations) };
        const now = Date.now();
        const written: Row = [
          given.name,
          target.mediaType,
          target.digest,
          target.size,
          encodeLabels(target.annotations),
          encodeLabels(labels),
          r[6],
          now,
        ];
        this.stmts.update.run(...written.slice(1), this.wireOf(written), ns, given.name);
        return { name: given.name, labels, target, createdAt: cur.createdAt, updatedAt: new Date(now) };
      },
      { what: `image ${q(given.name)} (target ${given.target.digest || "unchanged"})` },
    );
    this.db.mutated(false);
    this.events.publish(
      ns,
      "/images/update",
      packEvent(ImageUpdateSchema, create(ImageUpdateSchema, { name: updated.name, labels: updated.labels })),
    );
    return updated;
  }

  async delete(ns: string, name: string, opts: DeleteOptions = {}): Promise<void> {
    this.db.tx(() => {
      const want = opts.target?.digest;
      if (want) {
        const r = this.row(ns, name);
        if (!r) throw errNotFound(`image ${q(name)}`);
        const [, , digest] = r;
        if (digest !== want) throw errNotFound(`image ${q(name)} has target ${digest}, not ${want}`);
      }
      if (this.stmts.delete.run(ns, name).changes === 0) throw errNotFound(`image ${q(name)}`);
    }, FREES);
    // the target and everything it references may now be garbage
    this.db.mutated(true);
    this.events.publish(
      ns,
      "/images/delete",
      packEvent(ImageDeleteSchema, create(ImageDeleteSchema, { name })),
    );
    if (opts.sync && this.collect) await this.collect();
  }
}
