// The fetching half of a pull: handlers that walk an image's tree from the registry into the
// content store with containerd's labels (distribution source, gc.ref.content.*), and layer
// downloads (bounded by max_concurrent_downloads, one per digest however many manifests share
// it) whose verified bytes can be teed, as they arrive, into extractions (ChunkPipe taps).

import type { Readable } from "node:stream";
import { BerthError, isAlreadyExists, isKind, wrap } from "../../base/errdefs.js";
import type { Platform } from "../../base/platforms.js";
import type { MetadataContentStore } from "../content/metadata.js";
import { type PlatformMatcher, platformEntries, walk } from "../images/image.js";
import { childrenLabels, refKey } from "../images/labels.js";
import {
  configPlatform,
  type Descriptor,
  type ImageConfig,
  type Index,
  isImageManifestType,
  isIndexType,
  type Manifest,
} from "../images/media.js";
import type { Labels } from "../metadata/db.js";
import { metricsHooks } from "../metrics.js";
import type { RegistryClient } from "../remotes/client.js";
import { givePieces, intoPieces } from "../unpack/pieces.js";
import { ChunkPipe } from "../unpack/stage.js";
import type { ProgressEvent } from "./progress.js";

/** A counting semaphore. */
export class Limiter {
  private active = 0;
  private readonly queue: (() => void)[] = [];
  constructor(private readonly max: number) {}
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active >= this.max) await new Promise<void>((r) => this.queue.push(r));
    this.active++;
    try {
      return await fn();
    } finally {
      this.active--;
      this.queue.shift()?.();
    }
  }
}

/** Where a download's bytes go besides the content store. */
interface Tee {
  /** Bytes are about to flow. */
  start(): void;
  write(chunk: Buffer): Promise<void>;
  /** All bytes were written (the store has yet to commit them). */
  end(): void;
}

interface Tap {
  pipe: ChunkPipe;
  /** Told once: whether the bytes will flow through the pipe. */
  decide(flows: boolean): void;
}

interface Download {
  /** Settles once the blob is committed in the store (or was there already). */
  done: Promise<void>;
  start(): void;
  started: boolean;
  /** Extractions that want the bytes as they arrive; closed to newcomers once `frozen`. */
  taps: Tap[];
  frozen: boolean;
}

/** A manifest found by the walk, with what fetching and unpacking it need. */
export interface FoundManifest {
  manifest: Descriptor;
  platform?: Platform;
  config: Descriptor;
  layers: Descriptor[];
  diffIds: string[];
  /** Its layers are wanted (else only its metadata was fetched). */
  withLayers: boolean;
}

export interface FetcherOptions {
  content: MetadataContentStore;
  namespace: string;
  /** The lease new content is written under. */
  lease: string;
  client: RegistryClient;
  ref: string;
  /** The distribution source label set on every blob fetched. */
  sourceLabel: Labels;
  maxConcurrentDownloads: number;
  signal: AbortSignal;
  emit: (ev: ProgressEvent) => void;
}

/** Fetches one image's content into the store. */
export class Fetcher {
  private readonly limiter: Limiter;
  /** Layer downloads, by digest (a layer shared by two manifests is fetched once). */
  private readonly downloads = new Map<string, Download>();
  /** Layer responses asked for before their download started (see prefetch), by digest. */
  private readonly prefetched = new Map<string, Promise<Readable>>();
  /**
   * Small blobs (indexes, manifests, configs) being written to the store while the walk goes on
   * with their bytes: the pull waits for them (pending()) before it writes the image record.
   */
  private readonly storing: Promise<unknown>[] = [];
  /** The same writes by digest, until they settle. */
  private readonly writing = new Map<string, Promise<unknown>>();

  constructor(private readonly o: FetcherOptions) {
    this.limiter = new Limiter(o.maxConcurrentDownloads);
  }

  private check(): void {
    this.o.signal.throwIfAborted();
  }

  /** Set labels on content that is already there (merged; existing keys overwritten). */
  addLabels(dgst: string, labels: Labels): void {
    const keys = Object.keys(labels);
    if (keys.length === 0) return;
    this.o.content.update(
      this.o.namespace,
      { digest: dgst, labels },
      keys.map((k) => `labels.${k}`),
    );
  }

  /**
   * Write `desc` into the content store from `chunks` (or find it there), then make sure it carries
   * `labels`. Returns false when the blob was already present. `tee` gets the bytes too, as they
   * are written (`start` first; not at all when the blob was there).
   */
  private async store(
    desc: Descriptor,
    labels: Labels,
    chunks: () => Promise<AsyncIterable<Uint8Array> | Iterable<Uint8Array>>,
    onBytes?: (n: number) => void,
    tee?: Tee,
  ): Promise<boolean> {
    const { content, namespace: ns, lease } = this.o;
    const ref = refKey(desc);
    // What the store fails with (a full disk, a full database) names the blob it was writing.
    const writing = (err: unknown) => wrap(err, `writing blob ${desc.digest}`);
    let w: Awaited<ReturnType<MetadataContentStore["writer"]>>;
    try {
      w = await content.writer(ns, ref, { total: desc.size, expected: desc.digest, lease });
    } catch (err) {
      if (!isAlreadyExists(err)) throw writing(err);
      this.addLabels(desc.digest, labels);
      return false;
    }
    let committed = false;
    try {
      if (w.status().offset > 0) await w.truncate(0).catch((err: unknown) => Promise.reject(writing(err)));
      tee?.start();
      let n = 0;
      // copied into pieces of memory used before (pieces.ts): the copy is cheap, fresh memory
      // is not
      for await (const c of intoPieces(await chunks())) {
        this.check();
        await w.write(c).catch((err: unknown) => Promise.reject(writing(err)));
        // counted first: a piece that moves to an extraction thread is empty here afterwards
        n += c.length;
        // after the write: the extraction may take the piece over (stage-thread.ts) and hand it
        // back when done; with no extraction it is free again now
        if (tee) await tee.write(c);
        else givePieces([c.buffer as ArrayBuffer]);
        onBytes?.(n);
      }
      tee?.end();
      try {
        await w.commit(desc.size, desc.digest, labels);
      } catch (err) {
        if (isAlreadyExists(err)) this.addLabels(desc.digest, labels);
        else if (isKind(err, "failed precondition")) {
          // the registry sent other bytes than the descriptor names
          const e = new BerthError("data loss", undefined, { cause: err });
          e.message = `${desc.digest} failed verification: ${(err as Error).message}`;
          throw e;
        } else throw writing(err);
      }
      committed = true;
      metricsHooks.pull?.fetched(desc.size);
      return true;
    } finally {
      if (!committed) {
        await w.close().catch(() => {});
        await content.abort(ns, ref, lease).catch(() => {});
      }
    }
  }

  /** Fetch a small JSON object (index, manifest, config) into the store; returns its bytes. */
  private async fetchSmall(desc: Descriptor, labels: (data: Buffer) => Labels): Promise<Buffer> {
    this.check();
    let data: Buffer | undefined;
    // Found in the store, it is this pull's lease that keeps it until the image record does
    // (it may be unreferenced: left by a pull that crashed, or by an image just removed).
    if (this.o.content.hold(this.o.namespace, desc.digest, this.o.lease)) {
      const ra = await this.o.content.readerAt(this.o.namespace, desc.digest);
      try {
        const parts: Buffer[] = [];
        for await (const c of ra.stream(0, ra.size)) parts.push(Buffer.from(c));
        data = Buffer.concat(parts);
      } finally {
        await ra.close();
      }
    }
    if (data) {
      this.addLabels(desc.digest, { ...this.o.sourceLabel, ...labels(data) });
      return data;
    }
    // The write (and its fsync) goes on while the walk fetches the next level. It is registered
    // before the request is even sent: a walk that fails elsewhere meanwhile still waits for it.
    const fetched = this.o.client.fetchBytes(this.o.ref, desc);
    const stored = fetched.then((bytes) =>
      // the labels parse the document: one that does not parse is never stored
      this.store(desc, { ...this.o.sourceLabel, ...labels(bytes) }, async () => [bytes]),
    );
    stored.catch(() => {}); // reported through pending()
    this.storing.push(stored);
    this.writing.set(desc.digest, stored);
    void stored
      .finally(() => {
        if (this.writing.get(desc.digest) === stored) this.writing.delete(desc.digest);
      })
      .catch(() => {});
    // (a document that does not parse fails its write, and fetchJson's parse fails the walk)
    return fetched;
  }

  /** The write of a small blob still under way (to label it once it is stored), else undefined. */
  stillWriting(digest: string): Promise<unknown> | undefined {
    return this.writing.get(digest);
  }

  /** The writes of the small blobs fetched so far: all must succeed before the image record. */
  pending(): Promise<unknown>[] {
    return [...this.storing];
  }

  /**
   * Ask the registry for the first layers of a manifest now (up to max_concurrent_downloads),
   * while its config is still being fetched: their downloads, started once the unpacks are
   * planned, then begin with the response already there. Layers the store has are skipped.
   */
  prefetch(layers: Descriptor[]): void {
    let asked = 0;
    for (const l of layers) {
      if (asked >= this.o.maxConcurrentDownloads) break;
      if (this.downloads.get(l.digest)?.started || this.prefetched.has(l.digest)) continue;
      if (this.o.content.has(this.o.namespace, l.digest)) continue;
      asked++;
      const res = this.o.client.fetch(this.o.ref, l, { verifyDigest: false });
      res.catch(() => {}); // the download that takes it reports the failure
      this.prefetched.set(l.digest, res);
    }
  }

  /** Release the prefetched responses no download took (the pull failed, or found them stored). */
  discardPrefetched(): void {
    for (const res of this.prefetched.values()) void res.then((r) => r.destroy()).catch(() => {});
    this.prefetched.clear();
  }

  private async fetchJson<T>(desc: Descriptor, labels: (doc: T) => Labels): Promise<T> {
    let doc: T | undefined;
    const parse = (b: Buffer) => {
      try {
        doc ??= JSON.parse(b.toString("utf8")) as T;
      } catch (err) {
        // a registry can serve any bytes under a valid digest: say which blob is not JSON
        throw new BerthError(
          "invalid argument",
          `${desc.mediaType} ${desc.digest} is not valid JSON: ${(err as Error).message}`,
        );
      }
      return doc;
    };
    return parse(await this.fetchSmall(desc, (b) => labels(parse(b))));
  }

  /**
   * Fetch the tree under `root`: indexes (only the entries for `platforms` unless `allMetadata`),
   * manifests and their configs; layers are left to download(). Returns the manifests found.
   */
  async walk(root: Descriptor, platforms: PlatformMatcher, allMetadata: boolean): Promise<FoundManifest[]> {
    const found: FoundManifest[] = [];
    await walk(
      root,
      {
        enter: async (desc, at) => {
          if (isIndexType(desc.mediaType)) {
            const idx = await this.fetchJson<Index>(desc, childrenLabels);
            return allMetadata ? (idx.manifests ?? []) : platformEntries(idx, platforms);
          }
          if (!isImageManifestType(desc.mediaType)) return; // attestations and other artifacts are not followed
          const m = await this.fetchJson<Manifest>(desc, childrenLabels);
          if (!m.config) throw new BerthError("invalid argument", `manifest ${desc.digest} has no config`);
          const withLayers = at.platform === undefined || platforms.match(at.platform);
          if (withLayers) this.prefetch(m.layers ?? []);
          const cfg = await this.fetchJson<ImageConfig>(m.config, () => ({}));
          found.push({
            manifest: desc,
            platform: at.platform ?? configPlatform(cfg),
            config: m.config,
            layers: m.layers ?? [],
            diffIds: cfg.rootfs?.diff_ids ?? [],
            withLayers,
          });
          return; // layers are downloaded apart (download())
        },
      },
      { parallel: true },
    );
    return found;
  }

  /** The download of a layer (created on first use, started by start()). */
  private downloadOf(desc: Descriptor): Download {
    let dl = this.downloads.get(desc.digest);
    if (!dl) {
      let start!: () => void;
      const go = new Promise<void>((r) => {
        start = r;
      });
      const taps: Tap[] = [];
      const created: Download = {
        taps,
        frozen: false,
        started: false,
        start: () => {
          if (created.started) return;
          created.started = true;
          start();
        },
        done: go.then(() => this.downloadLayer(desc, created)),
      };
      created.done.catch(() => {});
      dl = created;
      this.downloads.set(desc.digest, dl);
    }
    return dl;
  }

  /** Start (if not yet) and wait for a layer's download. */
  download(desc: Descriptor): Promise<void> {
    const dl = this.downloadOf(desc);
    dl.start();
    return dl.done;
  }

  /**
   * Ask for a layer's bytes as they are downloaded. Resolves to the pipe once they flow, or to
   * undefined when they will not (the blob was in the store already, the download had begun
   * before, or it failed before any byte): then read the store once the download is done.
   */
  tap(desc: Descriptor): Promise<ChunkPipe | undefined> {
    const dl = this.downloadOf(desc);
    if (dl.frozen) return Promise.resolve(undefined);
    const pipe = new ChunkPipe();
    return new Promise((resolve) => {
      dl.taps.push({ pipe, decide: (flows) => resolve(flows ? pipe : undefined) });
    });
  }

  private async downloadLayer(desc: Descriptor, dl: Download): Promise<void> {
    const { emit } = this.o;
    const name = refKey(desc);
    const taps = dl.taps;
    const decide = (flows: boolean) => {
      dl.frozen = true;
      for (const t of taps) t.decide(flows);
    };
    const tee: Tee | undefined =
      taps.length === 0
        ? undefined
        : {
            start: () => decide(true),
            write: async (c) => {
              if (taps.length === 1) await taps[0]!.pipe.write(c);
              // an extraction may take its chunk's memory over (stage-thread.ts): one each
              else await Promise.all(taps.map((t, i) => t.pipe.write(i === 0 ? c : Buffer.from(c))));
            },
            end: () => {
              for (const t of taps) t.pipe.end();
            },
          };
    emit({ event: "waiting", name, total: desc.size, desc });
    try {
      await this.limiter.run(async () => {
        this.check();
        emit({ event: "downloading", name, progress: 0, total: desc.size, desc });
        let last = 0;
        const fresh = await this.store(
          desc,
          this.o.sourceLabel,
          // the content writer checks the digest when it commits: no second hash of the bytes here
          () => {
            const early = this.prefetched.get(desc.digest);
            this.prefetched.delete(desc.digest);
            return early ?? this.o.client.fetch(this.o.ref, desc, { verifyDigest: false });
          },
          (n) => {
            const now = Date.now();
            if (now - last >= 100) {
              last = now;
              emit({ event: "downloading", name, progress: n, total: desc.size, desc });
            }
          },
          tee,
        );
        emit({
          event: fresh ? "complete" : "already exists",
          name,
          progress: desc.size,
          total: desc.size,
          desc,
        });
      });
    } catch (err) {
      for (const t of taps) t.pipe.fail(err);
      throw err;
    } finally {
      decide(false); // no-op for the taps told already
    }
  }
}
