// The namespaced content store: a view over the namespace-free local store in which a blob is
// visible in a namespace only when that namespace holds a `content` row for it. Ingests are per
// namespace too: (namespace, ref) maps to a backend ref, so two namespaces may use the same ref.
//
// Sharing policy: with "shared", a writer whose expected digest is already in the backend (from
// another namespace) needs no data: committing it just adds the row. With "isolated", the client
// must send the whole blob again unless the blob is held by a namespace labelled
// containerd.io/namespace.shareable=true.
import { create } from "@bufbuild/protobuf";
import {
  BerthError,
  errAlreadyExists,
  errFailedPrecondition,
  errInvalidArgument,
  errNotFound,
  isAlreadyExists,
  isKind,
  isNotFound,
  wrap,
} from "../../base/errdefs.js";
import { ContentCreateSchema, ContentDeleteSchema } from "../../gen/containerd/events/content_pb.js";
import type { Exchange } from "../events/exchange.js";
import { packEvent } from "../events/exchange.js";
import { parseFilters } from "../filters.js";
import { decodeLabels, encodeLabels, FREES, type Labels, type MetadataDB } from "../metadata/db.js";
import type { NamespaceStore } from "../namespaces/store.js";
import type { ContentWriter, Info, LocalContentStore, ReaderAt, Status } from "./local.js";

export type SharingPolicy = "shared" | "isolated";

/**
 * A readers-writer lock for async sections. Waiting exclusive holders go first, so a steady
 * stream of writers cannot starve the collector. Sections must not nest.
 */
export class SharedLock {
  private sharedHolders = 0;
  private exclusiveHeld = false;
  private readonly waitingShared: (() => void)[] = [];
  private readonly waitingExclusive: (() => void)[] = [];

  async shared<T>(fn: () => Promise<T>): Promise<T> {
    if (this.exclusiveHeld || this.waitingExclusive.length > 0)
      await new Promise<void>((r) => this.waitingShared.push(r));
    else this.sharedHolders++;
    try {
      return await fn();
    } finally {
      this.sharedHolders--;
      this.wake();
    }
  }

  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    if (this.exclusiveHeld || this.sharedHolders > 0)
      await new Promise<void>((r) => this.waitingExclusive.push(r));
    else this.exclusiveHeld = true;
    try {
      return await fn();
    } finally {
      this.exclusiveHeld = false;
      this.wake();
    }
  }

  /** Hand the lock over: ownership is taken for the woken before they run. */
  private wake(): void {
    if (this.exclusiveHeld || this.sharedHolders > 0) return;
    const ex = this.waitingExclusive.shift();
    if (ex) {
      this.exclusiveHeld = true;
      ex();
      return;
    }
    const waiting = this.waitingShared.splice(0);
    this.sharedHolders += waiting.length;
    for (const r of waiting) r();
  }
}

export const SHAREABLE_NAMESPACE_LABEL = "containerd.io/namespace.shareable";

const MAX_LABEL_SIZE = 4096;
const q = (s: string) => JSON.stringify(s);

/** containerd's label check on content info: key + value at most 4096 bytes. */
function validateInfoLabels(labels: Labels | undefined): void {
  for (const [k, v] of Object.entries(labels ?? {})) {
    const total = Buffer.byteLength(k) + Buffer.byteLength(v);
    if (total > MAX_LABEL_SIZE)
      throw errInvalidArgument(
        `info.Labels: label key and value length (${total} bytes) greater than maximum size (${MAX_LABEL_SIZE} bytes), key: ${k.slice(0, 64)}`,
      );
  }
}

/** Drop empty values: an empty label is no label. */
function cleanLabels(labels: Labels | undefined): Labels {
  const out: Labels = {};
  for (const [k, v] of Object.entries(labels ?? {})) if (v !== "") out[k] = v;
  return out;
}

/** A content row as an array (better-sqlite3's raw mode: a list reads every blob of a namespace). */
type ContentRow = [digest: string, size: number, createdAt: number, updatedAt: number, labels: string];
const toInfo = ([digest, size, createdAt, updatedAt, labels]: ContentRow): Info => ({
  digest,
  size,
  createdAt: new Date(createdAt),
  updatedAt: new Date(updatedAt),
  labels: decodeLabels(labels),
});

/**
 * A system error (ENOSPC, SQLITE_FULL, …) from an ingest, with the ingest's ref before it: the
 * errno alone ("ENOSPC: no space left on device, write") names nothing the client can act on.
 * BerthErrors already say what they are about and pass unchanged; the errno code is kept.
 */
function ingestError(err: unknown, ref: string): unknown {
  const code = (err as { code?: unknown } | undefined)?.code;
  return err instanceof Error && typeof code === "string" && !(err instanceof BerthError)
    ? wrap(err, `ingest ${ref}`)
    : err;
}

/** The backend ref of a namespaced ingest, in containerd's `<ns>/<seq>/<ref>` shape. */
export function backendRef(ns: string, ref: string): string {
  return `${ns}/1/${ref}`;
}

export interface WriterOptions {
  /** Expected size; 0 when unknown. */
  total?: number;
  /** Expected digest; "" when unknown. */
  expected?: string;
  /** Lease id from the request; leased ingests and blobs are added to it. */
  lease?: string;
}

/** Blobs remembered as visible (see MetadataContentStore.visible). */
const VISIBLE_CACHE_MAX = 4096;

function prepare(db: MetadataDB) {
  const s = db.sql;
  return {
    getContent: s
      .prepare(
        "SELECT digest, size, created_at, updated_at, labels FROM content WHERE namespace = ? AND digest = ?",
      )
      .raw(true),
    listContent: s
      .prepare(
        "SELECT digest, size, created_at, updated_at, labels FROM content WHERE namespace = ? ORDER BY digest",
      )
      .raw(true),
    insertContent: s.prepare(
      "INSERT OR IGNORE INTO content (namespace, digest, size, created_at, updated_at, labels) VALUES (?, ?, ?, ?, ?, ?)",
    ),
    updateContent: s.prepare(
      "UPDATE content SET labels = ?, updated_at = ? WHERE namespace = ? AND digest = ?",
    ),
    deleteContent: s.prepare("DELETE FROM content WHERE namespace = ? AND digest = ?"),
    sharedElsewhere: s.prepare(
      `SELECT 1 FROM content c JOIN namespaces n ON n.name = c.namespace
       WHERE c.digest = ? AND json_extract(n.labels, '$."${SHAREABLE_NAMESPACE_LABEL}"') = 'true' LIMIT 1`,
    ),
    hasContent: s.prepare("SELECT 1 FROM content WHERE namespace = ? AND digest = ?").pluck(),
    // rows changed through this connection so far (the daemon's only one); no table access
    totalChanges: s.prepare("SELECT total_changes()").pluck(),
    getIngest: s.prepare("SELECT ref, expected, lease FROM ingests WHERE namespace = ? AND ref = ?"),
    listIngests: s.prepare("SELECT ref, expected FROM ingests WHERE namespace = ? ORDER BY ref"),
    insertIngest: s.prepare(
      "INSERT OR IGNORE INTO ingests (namespace, ref, expected, lease) VALUES (?, ?, ?, ?)",
    ),
    setIngestExpected: s.prepare("UPDATE ingests SET expected = ? WHERE namespace = ? AND ref = ?"),
    deleteIngest: s.prepare("DELETE FROM ingests WHERE namespace = ? AND ref = ?"),
    leaseExists: s.prepare("SELECT 1 FROM leases WHERE namespace = ? AND id = ?"),
    addLeaseResource: s.prepare(
      "INSERT OR IGNORE INTO lease_resources (namespace, lease, type, id) VALUES (?, ?, ?, ?)",
    ),
    removeLeaseResource: s.prepare(
      "DELETE FROM lease_resources WHERE namespace = ? AND lease = ? AND type = ? AND id = ?",
    ),
  };
}

export class MetadataContentStore {
  private readonly stmts: ReturnType<typeof prepare>;
  /** Writers and commits share it; the garbage collector's sweep takes it alone. */
  readonly lock = new SharedLock();
  private readonly visibleSet = new Set<string>();
  private visibleAt = -1;

  constructor(
    private readonly db: MetadataDB,
    readonly backend: LocalContentStore,
    private readonly namespaces: NamespaceStore,
    private readonly events: Exchange,
    readonly policy: SharingPolicy = "shared",
  ) {
    this.stmts = prepare(db);
  }

  // --- lease bookkeeping (inside transactions) ---

  private addLease(ns: string, lease: string | undefined, type: "content" | "ingests", id: string): void {
    if (!lease) return;
    if (this.stmts.leaseExists.get(ns, lease) === undefined) throw errNotFound("lease does not exist");
    this.stmts.addLeaseResource.run(ns, lease, type, id);
  }

  private removeLease(ns: string, lease: string | undefined, type: "content" | "ingests", id: string): void {
    if (!lease) return;
    this.stmts.removeLeaseResource.run(ns, lease, type, id);
  }

  private row(ns: string, dgst: string): ContentRow | undefined {
    return this.stmts.getContent.get(ns, dgst) as ContentRow | undefined;
  }

  /**
   * Whether the namespace holds `dgst`; when it does and a lease is given, the blob is added to
   * the lease in the same transaction. Every "already exists" under a lease goes through here:
   * content found in place of being written must be held like written content, or a collection
   * between finding it and referencing it (an image record, a label) removes it.
   */
  hold(ns: string, dgst: string, lease?: string): boolean {
    try {
      return this.db.tx(() => {
        if (!this.row(ns, dgst)) return false;
        this.addLease(ns, lease, "content", dgst);
        return true;
      });
    } catch (err) {
      if (err instanceof Error) err.message = `unable to lease content ${dgst}: ${err.message}`;
      throw err;
    }
  }

  /** Whether the namespace holds `dgst` (no lease taken: a hint that may be stale a moment later). */
  has(ns: string, dgst: string): boolean {
    return this.row(ns, dgst) !== undefined;
  }

  // --- info ---

  info(ns: string, dgst: string): Info {
    const r = this.row(ns, dgst);
    if (!r) throw errNotFound(`content digest ${dgst}`);
    return toInfo(r);
  }

  /** containerd's field paths: "labels" replaces all, "labels.<k>" sets one; none replaces all. */
  update(ns: string, info: { digest: string; labels?: Labels }, paths: string[] = []): Info {
    const out = this.db.tx(
      () => {
        const r = this.row(ns, info.digest);
        if (!r) throw errNotFound(`content digest ${info.digest}`);
        const cur = toInfo(r);
        const given = info.labels ?? {};
        let labels: Labels = { ...cur.labels };
        if (paths.length === 0) labels = { ...given };
        for (const p of paths) {
          if (p.startsWith("labels.")) {
            const k = p.slice("labels.".length);
            labels[k] = given[k] ?? "";
          } else if (p === "labels") {
            labels = { ...given };
          } else {
            throw errInvalidArgument(`cannot update ${q(p)} field on content info ${q(info.digest)}`);
          }
        }
        validateInfoLabels(labels);
        labels = cleanLabels(labels);
        const now = Date.now();
        this.stmts.updateContent.run(encodeLabels(labels), now, ns, info.digest);
        return { ...cur, labels, updatedAt: new Date(now) };
      },
      { what: `the labels of blob ${info.digest}` },
    );
    this.db.mutated(false);
    return out;
  }

  list(ns: string, filters: string[] = []): Info[] {
    const out: Info[] = [];
    this.each(ns, filters, (info) => out.push(info));
    return out;
  }

  /**
   * Hand each of the namespace's blobs that match the filters to `fn`, in digest order, before
   * returning (no statement stays open across a turn of the event loop). Rows are read one at a
   * time: a node with 50,000 blobs made one array of them all, which cost twice the read.
   */
  each(ns: string, filters: string[], fn: (info: Info) => void): void {
    const filter = parseFilters(filters);
    for (const r of this.stmts.listContent.iterate(ns) as IterableIterator<ContentRow>) {
      const info = toInfo(r);
      const matched = filter.match((fp) => {
        if (fp.length === 0) return undefined;
        if (fp[0] === "digest") return info.digest;
        if (fp[0] === "labels") {
          const key = fp.slice(1).join(".");
          return Object.hasOwn(info.labels, key) ? info.labels[key] : undefined;
        }
        return undefined; // containerd does not filter on size
      });
      if (matched) fn(info);
    }
  }

  /** Remove the blob from the namespace; the file stays for the garbage collector. */
  delete(ns: string, dgst: string, lease?: string): void {
    this.db.tx(() => {
      const r = this.stmts.deleteContent.run(ns, dgst);
      if (r.changes === 0) throw errNotFound(`content digest ${dgst}`);
      this.removeLease(ns, lease, "content", dgst);
    }, FREES);
    // the blob may now be garbage: tell the collector, and that the blob store needs a sweep
    this.db.markBackendDirty("content", [dgst]);
    this.db.mutated(true);
    this.events.publish(
      ns,
      "/content/delete",
      packEvent(ContentDeleteSchema, create(ContentDeleteSchema, { digest: dgst })),
    );
  }

  /**
   * Whether the namespace holds the blob. Clients read a blob in thousands of small Read calls,
   * so answers are remembered for as long as no row changed: a lookup costs a WAL read lock
   * each time, comparing the change counter does not.
   */
  private visible(ns: string, dgst: string): boolean {
    const changes = this.stmts.totalChanges.get() as number;
    if (changes !== this.visibleAt) {
      this.visibleSet.clear();
      this.visibleAt = changes;
    }
    const key = `${ns}\n${dgst}`;
    if (this.visibleSet.has(key)) return true;
    if (this.stmts.hasContent.get(ns, dgst) === undefined) return false;
    if (this.visibleSet.size >= VISIBLE_CACHE_MAX) this.visibleSet.clear();
    this.visibleSet.add(key);
    return true;
  }

  async readerAt(ns: string, dgst: string): Promise<ReaderAt> {
    if (!this.visible(ns, dgst)) throw errNotFound(`content digest ${dgst}`);
    return this.backend.readerAt(dgst);
  }

  // --- ingests ---

  async status(ns: string, ref: string): Promise<Status> {
    const row = this.stmts.getIngest.get(ns, ref) as { ref: string } | undefined;
    if (!row) throw errNotFound(`reference ${ref}`);
    const st = await this.backend.status(backendRef(ns, ref));
    return { ...st, ref };
  }

  async listStatuses(ns: string, filters: string[] = []): Promise<Status[]> {
    const filter = parseFilters(filters);
    const rows = this.stmts.listIngests.all(ns) as { ref: string }[];
    const out: Status[] = [];
    for (const { ref } of rows) {
      let st: Status;
      try {
        st = await this.backend.status(backendRef(ns, ref));
      } catch (err) {
        if (isNotFound(err)) continue;
        throw err;
      }
      st = { ...st, ref };
      if (filter.match((fp) => (fp.length >= 1 && fp[0] === "ref" ? ref : undefined))) out.push(st);
    }
    return out;
  }

  async abort(ns: string, ref: string, lease?: string): Promise<void> {
    try {
      this.db.tx(() => {
        const row = this.stmts.getIngest.get(ns, ref);
        if (!row) throw errNotFound(`reference ${ref}`);
        this.stmts.deleteIngest.run(ns, ref);
        this.removeLease(ns, lease, "ingests", ref);
      }, FREES);
    } catch (err) {
      // The data goes even when the row cannot (a full disk fails the database write too):
      // the space is what the caller needs back, and a row without data is only a stale name.
      if (!isNotFound(err)) await this.backend.abort(backendRef(ns, ref)).catch(() => {});
      throw err;
    }
    this.db.mutated(false);
    // A shared ingest may have started copying into the backend too: remove whatever is there.
    await this.backend.abort(backendRef(ns, ref));
  }

  /**
   * Open (or resume) the ingest `ref` in `ns`. AlreadyExists when the expected blob is already
   * in the namespace (the caller then has nothing to do).
   */
  async writer(ns: string, ref: string, opts: WriterOptions = {}): Promise<NamespacedWriter> {
    if (!ref) throw errInvalidArgument("ref must not be empty");
    // shared with other writers, exclusive of a sweep: the ingest row and the backend ingest
    // appear together, so a sweep never sees one without the other
    return this.lock.shared(() => this.openWriter(ns, ref, opts));
  }

  private async openWriter(ns: string, ref: string, opts: WriterOptions): Promise<NamespacedWriter> {
    const expected = opts.expected ?? "";
    let size = opts.total ?? 0;
    const lease = opts.lease;
    const bref = backendRef(ns, ref);

    // Is the blob there already, in this namespace or (shareable) in the backend?
    let shared = false;
    if (expected) {
      // held by the lease from here on, so a collection cannot take it from this client
      if (this.hold(ns, expected, lease)) throw errAlreadyExists(`content ${expected}`);
      if (this.policy === "shared" || this.stmts.sharedElsewhere.get(expected) !== undefined) {
        // any failure here (missing, or not even a valid digest) just means "not shared"
        const bi = await this.backend.info(expected).catch(() => undefined);
        if (bi && (size === 0 || size === bi.size)) {
          shared = true;
          size = bi.size;
        }
      }
    }

    let inserted = false;
    try {
      this.db.tx(() => {
        this.namespaces.ensure(ns);
        inserted = this.stmts.insertIngest.run(ns, ref, shared ? expected : "", lease ?? "").changes > 0;
        if (!inserted && shared) this.stmts.setIngestExpected.run(expected, ns, ref);
        this.addLease(ns, lease, "ingests", ref);
      });
    } catch (err) {
      throw ingestError(err, ref);
    }
    this.db.mutated(false);

    const desc = { size, digest: shared ? expected : "" };
    if (shared) return new NamespacedWriter(this, ns, ref, bref, lease, desc, undefined);
    try {
      // the backend never sees the expected digest: it was checked against this namespace only
      const w = await this.backend.writer(bref, size, "");
      return new NamespacedWriter(this, ns, ref, bref, lease, desc, w);
    } catch (err) {
      if (inserted) {
        // a backend ingest half made (out of space, say) would hold space no row names
        if (!isKind(err, "unavailable")) await this.backend.abort(bref).catch(() => {});
        try {
          this.db.tx(() => {
            this.stmts.deleteIngest.run(ns, ref);
            this.removeLease(ns, lease, "ingests", ref);
          });
        } catch {
          // the first failure is the one to report
        }
      }
      throw ingestError(err, ref);
    }
  }

  /**
   * The garbage collector's backend sweep: remove blobs that no namespace holds (and no shared
   * ingest expects) and ingests that no namespace has. Returns how many things were removed.
   * `only` names the blobs whose rows went since the last sweep: those alone are looked at, not
   * every file of the store (containerd walks them all; on a node with 50,000 blobs removing
   * one image would stat each of them). Ingests are always looked at: there are few.
   */
  async sweep(only?: ReadonlySet<string>): Promise<number> {
    return this.lock.exclusive(async () => {
      const { garbage, keep, ingestSeen } = this.db.tx(() => {
        const ingests = this.db.sql.prepare("SELECT namespace, ref, expected FROM ingests").all() as {
          namespace: string;
          ref: string;
          expected: string;
        }[];
        // a shared ingest's blob may belong to no namespace yet: keep it for the writer
        const keep = new Set<string>();
        const ingestSeen = new Set<string>();
        for (const i of ingests) {
          if (i.expected) keep.add(i.expected);
          ingestSeen.add(backendRef(i.namespace, i.ref));
        }
        if (only) {
          const held = this.db.sql.prepare("SELECT 1 FROM content WHERE digest = ? LIMIT 1").pluck();
          const garbage = [...only].filter((d) => !keep.has(d) && held.get(d) === undefined);
          return { garbage, keep, ingestSeen };
        }
        for (const d of this.db.sql.prepare("SELECT DISTINCT digest FROM content").pluck().all() as string[])
          keep.add(d);
        return { garbage: undefined, keep, ingestSeen };
      });
      let removed = 0;
      let blobs = garbage;
      if (!blobs) {
        const found: string[] = [];
        await this.backend.walk((info) => {
          if (!keep.has(info.digest)) found.push(info.digest);
        });
        blobs = found;
      }
      for (const d of blobs) {
        try {
          await this.backend.delete(d);
          removed++;
        } catch (err) {
          if (!isNotFound(err)) throw err;
        }
      }
      const refs: string[] = [];
      await this.backend.walkStatusRefs((ref) => {
        if (!ingestSeen.has(ref)) refs.push(ref);
      });
      for (const ref of refs) {
        await this.backend.abort(ref);
        removed++;
      }
      return removed;
    });
  }

  /** @internal the writer's commit: add the row, drop the ingest, move the lease. */
  commitRow(
    ns: string,
    ref: string,
    lease: string | undefined,
    dgst: string,
    size: number,
    labels: Labels,
  ): boolean {
    let created = false;
    try {
      this.db.tx(
        () => {
          this.namespaces.ensure(ns);
          const now = Date.now();
          created =
            this.stmts.insertContent.run(ns, dgst, size, now, now, encodeLabels(cleanLabels(labels)))
              .changes > 0;
          this.stmts.deleteIngest.run(ns, ref);
          this.removeLease(ns, lease, "ingests", ref);
          this.addLease(ns, lease, "content", dgst);
        },
        { what: `blob ${dgst} (ingest ${ref})` },
      );
    } catch (err) {
      // the blob is stored, and may now be a file no row names: the next sweep looks at it
      this.db.markBackendDirty("content", [dgst]);
      throw err;
    }
    this.db.mutated(false);
    return created;
  }

  /** @internal */
  publishCreate(ns: string, dgst: string, size: number): void {
    this.events.publish(
      ns,
      "/content/create",
      packEvent(ContentCreateSchema, create(ContentCreateSchema, { digest: dgst, size: BigInt(size) })),
    );
  }
}

/**
 * A writer in a namespace. Without a backend writer it stands for a shared blob that is already
 * stored: committing it needs no data; writing or truncating first copies the blob into a real
 * ingest (the client chose to send data after all).
 */
export class NamespacedWriter implements ContentWriter {
  private readonly started = new Date();

  constructor(
    private readonly store: MetadataContentStore,
    readonly namespace: string,
    readonly ref: string,
    private readonly bref: string,
    private readonly lease: string | undefined,
    private readonly desc: { size: number; digest: string },
    private w: ContentWriter | undefined,
  ) {}

  status(): Status {
    if (this.w) return { ...this.w.status(), ref: this.ref };
    return {
      ref: this.ref,
      offset: this.desc.size,
      total: this.desc.size,
      startedAt: this.started,
      updatedAt: this.started,
      expected: this.desc.digest,
    };
  }

  digest(): string {
    return this.w ? this.w.digest() : this.desc.digest;
  }

  async write(data: Uint8Array): Promise<number> {
    try {
      if (!this.w) {
        if (data.length === 0) return 0;
        await this.createAndCopy(this.desc.size);
      }
      return await this.w!.write(data);
    } catch (err) {
      throw ingestError(err, this.ref);
    }
  }

  async truncate(size: number): Promise<void> {
    if (this.w) return this.w.truncate(size);
    await this.createAndCopy(size);
  }

  private async createAndCopy(size: number): Promise<void> {
    const w = await this.store.backend.writer(this.bref, size, "");
    try {
      if (size === 0) {
        if (w.status().offset > 0) await w.truncate(0);
      } else {
        const from = w.status().offset;
        const ra = await this.store.backend.readerAt(this.desc.digest);
        try {
          let copied = from;
          for await (const chunk of ra.stream(from, size - from)) {
            await w.write(chunk);
            copied += chunk.length;
          }
          if (copied < size)
            throw new Error("failed to copy: failed to read expected number of bytes: unexpected EOF");
        } finally {
          await ra.close();
        }
      }
    } catch (err) {
      await w.close();
      throw err;
    }
    this.w = w;
  }

  async commit(size: number, expected: string, labels?: Labels): Promise<string> {
    // from the backend's rename to the content row, a sweep must not run
    return this.store.lock.shared(() => this.commitLocked(size, expected, labels));
  }

  private async commitLocked(size: number, expected: string, labels?: Labels): Promise<string> {
    try {
      validateInfoLabels(labels);
    } catch (err) {
      await this.w?.close();
      throw err;
    }
    let actual: string;
    if (!this.w) {
      if (size !== 0 && size !== this.desc.size)
        throw errFailedPrecondition(`${q(this.ref)} failed size validation: ${this.desc.size} != ${size}`);
      if (expected && expected !== this.desc.digest)
        throw errFailedPrecondition(`${q(this.ref)} unexpected digest`);
      size = this.desc.size;
      actual = this.desc.digest;
    } else {
      const st = this.w.status();
      if (size !== 0 && size !== st.offset) {
        await this.w.close();
        throw errFailedPrecondition(`${q(this.ref)} failed size validation: ${st.offset} != ${size}`);
      }
      size = st.offset;
      try {
        await this.w.commit(size, expected);
      } catch (err) {
        // the bytes were verified; the blob was simply stored already
        if (!isAlreadyExists(err)) throw err;
      }
      actual = this.w.digest();
    }
    const created = this.store.commitRow(this.namespace, this.ref, this.lease, actual, size, labels ?? {});
    if (!created) throw errAlreadyExists(`content ${actual}`);
    this.store.publishCreate(this.namespace, actual, size);
    return actual;
  }

  async close(): Promise<void> {
    await this.w?.close();
  }
}
