// The pull pipeline, run inside the daemon: resolve a reference, fetch the index/manifests/configs
// it needs into the content store with containerd's labels (distribution source, gc.ref.content.*),
// download layers in parallel (max_concurrent_downloads) and unpack them into snapshots named by
// chain ID while later layers are still downloading, then create or update the image record.
// Everything happens under a lease that is deleted at the end, so the image record is what holds
// the tree afterwards; a failure leaves no image record and only collectable content behind.
//
// Unpack order: a snapshot's parent is fixed when it is prepared, so layer N's snapshot can only
// be prepared once layer N-1's is committed.
//   overlayfs  layers are independent directories: each layer is extracted while it downloads
//              (the verified bytes are teed into the extraction, or read from the store when the
//              blob is there already) into a staging directory of the snapshotter (stage.ts), all
//              layers at once; in layer order, each staged tree is then renamed into a snapshot
//              prepared on its committed parent and committed — only once its blob is committed
//              and its diff ID matches the config.
//   others     each layer is applied from the content store (through the differ) once it is there
//              and its parent is committed.
import { createHash, randomBytes } from "node:crypto";
import { BerthError, isAlreadyExists, isKind, isNotFound } from "../../base/errdefs.js";
import { type Logger, nopLogger } from "../../base/log.js";
import {
  formatPlatform,
  hostPlatform,
  matchesAny,
  type Platform,
  platformMatches,
} from "../../base/platforms.js";
import type { MetadataContentStore } from "../content/metadata.js";
import type { ApplyMode } from "../diff/apply.js";
import type { Differ } from "../diff/service.js";
import { UNCOMPRESSED_LABEL } from "../diff/walking.js";
import type { ImageStore } from "../images/store.js";
import { GC_EXPIRE_LABEL, type LeaseStore } from "../leases/store.js";
import type { Labels } from "../metadata/db.js";
import { hostname, parseNormalized } from "../reference.js";
import type { RegistryClient } from "../remotes/client.js";
import { type Descriptor, isImageManifestType, isIndexType } from "../remotes/media.js";
import {
  type NamespacedSnapshotter,
  SNAPSHOT_REF_LABEL,
  type SnapshotService,
} from "../snapshots/metadata.js";
import { OverlaySnapshotter } from "../snapshots/overlay.js";
import { ChunkPipe, moveStaged, type StagedLayer } from "./stage.js";
import { stageLayerThreaded } from "./stage-thread.js";

export const DISTRIBUTION_SOURCE_PREFIX = "containerd.io/distribution.source.";
export const GC_REF_CONTENT = "containerd.io/gc.ref.content";
export const GC_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot.";

/** containerd's progress event names, as the transfer service reports them. */
export type ProgressEventName =
  | "resolving"
  | "resolved"
  | "waiting"
  | "downloading"
  | "already exists"
  | "complete"
  | "unpacking"
  | "unpacked"
  | "saved";

export interface ProgressEvent {
  event: ProgressEventName | string;
  /** What the event is about: the reference, or a blob's `<kind>-<digest>` key. */
  name: string;
  parents?: string[];
  progress?: number;
  total?: number;
  desc?: Descriptor;
}

export interface UnpackConfig {
  platform: Platform;
  snapshotter: string;
}

export interface PullRequest {
  namespace: string;
  /** The reference to pull (normalised like ctr does). */
  ref: string;
  client: RegistryClient;
  /** Image record name; default the fully qualified reference. */
  name?: string;
  labels?: Labels;
  /** Platforms to fetch; empty = all platforms. Default: this machine's. */
  platforms?: Platform[];
  /** Fetch manifests and configs of the platforms not wanted too (not their layers). */
  allMetadata?: boolean;
  /** Platforms to unpack and where; empty: fetch only. */
  unpacks?: UnpackConfig[];
  maxConcurrentDownloads?: number;
  progress?: (ev: ProgressEvent) => void;
  signal?: AbortSignal;
}

export interface PullDeps {
  content: MetadataContentStore;
  snapshots: SnapshotService;
  differ: Differ;
  leases: LeaseStore;
  images: ImageStore;
  log?: Logger;
}

export interface PullResult {
  name: string;
  target: Descriptor;
  /** Top chain IDs unpacked, by `<platform>@<snapshotter>`. */
  unpacked: Record<string, string>;
}

interface ManifestJson {
  mediaType?: string;
  config?: Descriptor;
  layers?: Descriptor[];
  manifests?: (Descriptor & { platform?: Platform })[];
}

interface ConfigJson {
  rootfs?: { diff_ids?: string[] };
}

/** containerd's ingest keys (remotes.MakeRefKey). */
function refKey(desc: Descriptor): string {
  if (isIndexType(desc.mediaType)) return `index-${desc.digest}`;
  if (isImageManifestType(desc.mediaType)) return `manifest-${desc.digest}`;
  if (desc.mediaType.includes("config") || desc.mediaType.endsWith("+json")) return `config-${desc.digest}`;
  if (desc.mediaType.includes("layer")) return `layer-${desc.digest}`;
  return `unknown-${desc.digest}`;
}

/** The chain IDs of a list of diff IDs (OCI image spec). */
export function chainIds(diffIds: string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) {
    const prev = out[out.length - 1];
    out.push(prev ? `sha256:${createHash("sha256").update(`${prev} ${d}`).digest("hex")}` : d);
  }
  return out;
}

/** A counting semaphore. */
class Limiter {
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

function pullError(err: unknown, what: string): Error {
  const msg = err instanceof Error ? err.message : String(err);
  if (err instanceof BerthError) {
    const e = new BerthError(err.kind, undefined, { cause: err });
    e.message = `${what}: ${msg}`;
    return e;
  }
  return new Error(`${what}: ${msg}`, { cause: err });
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

interface UnpackPlan {
  sn: NamespacedSnapshotter;
  /** The overlay snapshotter, when layers are staged (extracted apart, in parallel). */
  staged: OverlaySnapshotter | undefined;
  chain: string[];
  /** Whether each layer's chain was there already (nothing to extract). */
  exists: boolean[];
  taps: (Promise<ChunkPipe | undefined> | undefined)[];
}

/** An unpack snapshot's key, as containerd's unpacker makes them. */
function extractKey(chainId: string): string {
  return `extract-${process.hrtime.bigint() % 1_000_000_000n}-${randomBytes(6).toString("base64url")} ${chainId}`;
}

/** Write size for blobs being stored: a write per network read (16–64 KiB) costs ~6× the CPU. */
const STORE_WRITE_SIZE = 1 << 20;

/** The same bytes in pieces of at least `min` bytes (the last may be shorter). */
async function* coalesce(
  src: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  min = STORE_WRITE_SIZE,
): AsyncGenerator<Uint8Array> {
  let parts: Uint8Array[] = [];
  let size = 0;
  for await (const c of src) {
    if (size === 0 && c.length >= min) {
      yield c;
      continue;
    }
    parts.push(c);
    size += c.length;
    if (size >= min) {
      yield Buffer.concat(parts, size);
      parts = [];
      size = 0;
    }
  }
  if (size > 0) yield parts.length === 1 ? parts[0]! : Buffer.concat(parts, size);
}

/** One pull: state shared by its steps. */
class PullJob {
  private readonly ns: string;
  private readonly lease: string;
  private readonly sourceLabel: Labels;
  private readonly limiter: Limiter;
  /** Extractions from the content store into staging directories (streamed ones need none). */
  private readonly unpackLimiter: Limiter;
  private readonly log: Logger;
  /** Layer downloads, by digest (a layer shared by two manifests is fetched once). */
  private readonly downloads = new Map<string, Download>();
  /** Aborted at the first failure (or with the request): the other steps stop early. */
  private readonly abort = new AbortController();
  private readonly signal: AbortSignal;
  private firstError: { err: unknown } | undefined;
  /** Undo what ties this job to the request (its abort listener). */
  dispose: () => void = () => {};

  constructor(
    private readonly deps: PullDeps,
    private readonly req: PullRequest,
    lease: string,
  ) {
    this.ns = req.namespace;
    this.lease = lease;
    const r = parseNormalized(req.ref);
    this.sourceLabel = { [`${DISTRIBUTION_SOURCE_PREFIX}${hostname(r.domain)}`]: r.path };
    const max = Math.max(1, req.maxConcurrentDownloads ?? 3);
    this.limiter = new Limiter(max);
    this.unpackLimiter = new Limiter(max);
    this.log = deps.log ?? nopLogger;
    // the request's signal aborts ours (AbortSignal.any needs node ≥ 20.3)
    const outer = req.signal;
    if (outer?.aborted) this.abort.abort(outer.reason);
    else if (outer) {
      const onAbort = () => this.abort.abort(outer.reason);
      outer.addEventListener("abort", onAbort, { once: true });
      this.dispose = () => outer.removeEventListener("abort", onAbort);
    }
    this.signal = this.abort.signal;
  }

  /** Remember the first failure of a step and stop the others. */
  private failed(err: unknown): void {
    if (this.firstError) return;
    this.firstError = { err };
    this.abort.abort(err);
  }

  /** Run a step whose failure fails the pull. */
  private step<T>(p: Promise<T>): Promise<T> {
    p.catch((err: unknown) => this.failed(err));
    return p;
  }

  private emit(ev: ProgressEvent): void {
    try {
      this.req.progress?.(ev);
    } catch {
      // a progress consumer's failure is not the pull's
    }
  }

  private check(): void {
    this.signal.throwIfAborted();
  }

  /** Set labels on content that is already there (merged; existing keys overwritten). */
  private addLabels(dgst: string, labels: Labels): void {
    const keys = Object.keys(labels);
    if (keys.length === 0) return;
    this.deps.content.update(
      this.ns,
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
    const ref = refKey(desc);
    let w: Awaited<ReturnType<MetadataContentStore["writer"]>>;
    try {
      w = await this.deps.content.writer(this.ns, ref, {
        total: desc.size,
        expected: desc.digest,
        lease: this.lease,
      });
    } catch (err) {
      if (!isAlreadyExists(err)) throw err;
      this.addLabels(desc.digest, labels);
      return false;
    }
    let committed = false;
    try {
      if (w.status().offset > 0) await w.truncate(0);
      tee?.start();
      let n = 0;
      for await (const c of coalesce(await chunks())) {
        this.check();
        await w.write(c);
        // after the write: the extraction may take the chunk's memory over (stage-thread.ts)
        if (tee) await tee.write(Buffer.from(c.buffer, c.byteOffset, c.byteLength));
        n += c.length;
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
        } else throw err;
      }
      committed = true;
      return true;
    } finally {
      if (!committed) {
        await w.close().catch(() => {});
        await this.deps.content.abort(this.ns, ref, this.lease).catch(() => {});
      }
    }
  }

  /** Fetch a small JSON object (index, manifest, config) into the store; returns its bytes. */
  private async fetchSmall(desc: Descriptor, labels: (data: Buffer) => Labels): Promise<Buffer> {
    this.check();
    let data: Buffer | undefined;
    try {
      const ra = await this.deps.content.readerAt(this.ns, desc.digest);
      try {
        const parts: Buffer[] = [];
        for await (const c of ra.stream(0, ra.size)) parts.push(Buffer.from(c));
        data = Buffer.concat(parts);
      } finally {
        await ra.close();
      }
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    if (data) {
      this.addLabels(desc.digest, { ...this.sourceLabel, ...labels(data) });
      return data;
    }
    const bytes = await this.req.client.fetchBytes(this.req.ref, desc);
    await this.store(desc, { ...this.sourceLabel, ...labels(bytes) }, async () => [bytes]);
    return bytes;
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
  private download(desc: Descriptor): Promise<void> {
    const dl = this.downloadOf(desc);
    dl.start();
    return dl.done;
  }

  /**
   * Ask for a layer's bytes as they are downloaded. Resolves to the pipe once they flow, or to
   * undefined when they will not (the blob was in the store already, the download had begun
   * before, or it failed before any byte): then read the store once the download is done.
   */
  private tap(desc: Descriptor): Promise<ChunkPipe | undefined> {
    const dl = this.downloadOf(desc);
    if (dl.frozen) return Promise.resolve(undefined);
    const pipe = new ChunkPipe();
    return new Promise((resolve) => {
      dl.taps.push({ pipe, decide: (flows) => resolve(flows ? pipe : undefined) });
    });
  }

  private async downloadLayer(desc: Descriptor, dl: Download): Promise<void> {
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
              else await Promise.all(taps.map((t) => t.pipe.write(c)));
            },
            end: () => {
              for (const t of taps) t.pipe.end();
            },
          };
    this.emit({ event: "waiting", name, total: desc.size, desc });
    try {
      await this.limiter.run(async () => {
        this.check();
        this.emit({ event: "downloading", name, progress: 0, total: desc.size, desc });
        let last = 0;
        const fresh = await this.store(
          desc,
          this.sourceLabel,
          // the content writer checks the digest when it commits: no second hash of the bytes here
          () => this.req.client.fetch(this.req.ref, desc, { verifyDigest: false }),
          (n) => {
            const now = Date.now();
            if (now - last >= 100) {
              last = now;
              this.emit({ event: "downloading", name, progress: n, total: desc.size, desc });
            }
          },
          tee,
        );
        this.emit({
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

  private async stat(sn: NamespacedSnapshotter, key: string): Promise<boolean> {
    return sn.stat(this.ns, key).then(
      () => true,
      (err: unknown) => {
        if (isNotFound(err)) return false;
        throw err;
      },
    );
  }

  /**
   * Look at what an unpack needs before any download starts: which chains exist, and for the
   * overlay way, a tap on each layer to extract.
   */
  private async planUnpack(
    layers: Descriptor[],
    diffIds: string[],
    snapshotter: string,
  ): Promise<UnpackPlan> {
    if (layers.length !== diffIds.length)
      throw new BerthError(
        "invalid argument",
        `mismatched image rootfs and manifest layers: ${diffIds.length} diff IDs, ${layers.length} layers`,
      );
    const sn = this.deps.snapshots.get(snapshotter);
    const chain = chainIds(diffIds);
    const exists: boolean[] = [];
    for (const c of chain) exists.push(await this.stat(sn, c));
    const staged = sn.backend instanceof OverlaySnapshotter ? sn.backend : undefined;
    const taps = layers.map((l, i) => (staged && !exists[i] ? this.tap(l) : undefined));
    return { sn, staged, chain, exists, taps };
  }

  /** Unpack a manifest's layers into one snapshotter; returns the top chain ID. */
  private async unpack(
    config: Descriptor,
    layers: Descriptor[],
    diffIds: string[],
    snapshotter: string,
    plan: UnpackPlan,
  ): Promise<string> {
    const { sn, chain } = plan;
    if (plan.staged) {
      await this.unpackStaged(sn, plan.staged, layers, diffIds, plan);
    } else {
      let parent = "";
      for (let i = 0; i < layers.length; i++) {
        const layer = layers[i]!;
        const chainId = chain[i]!;
        const name = refKey(layer);
        await this.download(layer);
        this.check();
        if (!plan.exists[i]) {
          this.emit({ event: "unpacking", name, total: layer.size, desc: layer });
          await this.applyLayer(sn, layer, chainId, parent, diffIds[i]!);
        }
        this.addLabels(layer.digest, { [UNCOMPRESSED_LABEL]: diffIds[i]! });
        this.emit({ event: "unpacked", name, progress: layer.size, total: layer.size, desc: layer });
        parent = chainId;
      }
    }
    const top = chain[chain.length - 1] ?? "";
    if (top) this.addLabels(config.digest, { [`${GC_REF_SNAPSHOT}${snapshotter}`]: top });
    return top;
  }

  /**
   * The overlay way: every layer whose chain is missing is extracted into a staging directory at
   * once (while it downloads when it can), then moved into its snapshot in layer order.
   */
  private async unpackStaged(
    sn: NamespacedSnapshotter,
    backend: OverlaySnapshotter,
    layers: Descriptor[],
    diffIds: string[],
    plan: UnpackPlan,
  ): Promise<void> {
    const { chain } = plan;
    const steps: Promise<void>[] = [];
    let parentDone: Promise<void> = Promise.resolve();
    for (let i = 0; i < layers.length; i++) {
      const step = this.unpackLayerStaged(sn, backend, layers[i]!, {
        chainId: chain[i]!,
        parent: i > 0 ? chain[i - 1]! : "",
        diffId: diffIds[i]!,
        exists: plan.exists[i]!,
        tap: plan.taps[i],
        parentDone,
      });
      step.catch(() => {});
      steps.push(step);
      parentDone = step;
    }
    const results = await Promise.allSettled(steps);
    const failed = results.find((r) => r.status === "rejected") as PromiseRejectedResult | undefined;
    if (failed) throw failed.reason;
  }

  private async unpackLayerStaged(
    sn: NamespacedSnapshotter,
    backend: OverlaySnapshotter,
    layer: Descriptor,
    l: {
      chainId: string;
      parent: string;
      diffId: string;
      exists: boolean;
      tap: Promise<ChunkPipe | undefined> | undefined;
      parentDone: Promise<void>;
    },
  ): Promise<void> {
    const name = refKey(layer);
    const downloaded = this.download(layer);
    if (!l.exists) {
      const dir = backend.createStagingDir();
      try {
        const staged = await this.step(
          this.extract(layer, dir, l.parent === "" ? "plain" : "overlay", l.tap),
        );
        await downloaded; // committed: the store verified the digest
        if (staged.diffId !== l.diffId)
          throw new BerthError(
            "failed precondition",
            `wrong diff id calculated on extraction ${JSON.stringify(l.diffId)}: got ${staged.diffId}`,
          );
        await l.parentDone;
        this.check();
        await this.commitStaged(sn, staged, l.chainId, l.parent);
      } finally {
        await backend.releaseStagingDir(dir);
      }
    } else {
      await downloaded;
      await l.parentDone;
    }
    this.addLabels(layer.digest, { [UNCOMPRESSED_LABEL]: l.diffId });
    this.emit({ event: "unpacked", name, progress: layer.size, total: layer.size, desc: layer });
  }

  /** Extract a layer into `dir`: from its download as it flows, else from the store after it. */
  private async extract(
    layer: Descriptor,
    dir: string,
    mode: ApplyMode,
    tap: Promise<ChunkPipe | undefined> | undefined,
  ): Promise<StagedLayer> {
    const opts = { signal: this.signal, log: this.log };
    const unpacking = () =>
      this.emit({ event: "unpacking", name: refKey(layer), total: layer.size, desc: layer });
    const pipe = await tap;
    if (pipe) {
      unpacking(); // the bytes flow
      try {
        // not verified here: the staged tree is used only once the store committed the blob
        return await stageLayerThreaded(dir, pipe, layer, mode, { ...opts, verify: false, giveChunks: true });
      } catch (err) {
        // Bytes that do not extract are most often bytes that are not the blob: let the download
        // finish and its verification speak first.
        pipe.close();
        await this.download(layer);
        throw err;
      } finally {
        pipe.close();
      }
    }
    await this.download(layer);
    return this.unpackLimiter.run(async () => {
      this.check();
      unpacking();
      const ra = await this.deps.content.readerAt(this.ns, layer.digest);
      try {
        return await stageLayerThreaded(dir, ra.stream(0, ra.size, 1 << 20), layer, mode, opts);
      } finally {
        await ra.close();
      }
    });
  }

  /** Prepare the layer's snapshot on its committed parent, move the staged tree in, commit. */
  private commitStaged(
    sn: NamespacedSnapshotter,
    staged: StagedLayer,
    chainId: string,
    parent: string,
  ): Promise<void> {
    return this.intoSnapshot(sn, chainId, parent, async (mounts) => moveStaged(staged, mounts, this.log));
  }

  /** Prepare the layer's snapshot on its committed parent, apply the blob from the store, commit. */
  private applyLayer(
    sn: NamespacedSnapshotter,
    layer: Descriptor,
    chainId: string,
    parent: string,
    diffId: string,
  ): Promise<void> {
    return this.intoSnapshot(sn, chainId, parent, async (mounts) => {
      const applied = await this.deps.differ.apply(this.ns, layer, mounts, { signal: this.signal });
      if (applied.digest !== diffId)
        throw new BerthError(
          "failed precondition",
          `wrong diff id calculated on extraction ${JSON.stringify(diffId)}: got ${applied.digest}`,
        );
    });
  }

  /**
   * containerd's unpack step: an active snapshot keyed `extract-… <chainID>` on `parent`, filled
   * by `fill`, committed as the chain ID, removed again if anything fails. A chain that exists
   * already (a concurrent unpack made it) is left as it is.
   */
  private async intoSnapshot(
    sn: NamespacedSnapshotter,
    chainId: string,
    parent: string,
    fill: (mounts: Awaited<ReturnType<NamespacedSnapshotter["prepare"]>>) => Promise<void>,
  ): Promise<void> {
    const key = extractKey(chainId);
    const labels = { [SNAPSHOT_REF_LABEL]: chainId };
    let mounts: Awaited<ReturnType<typeof sn.prepare>>;
    try {
      mounts = await sn.prepare(this.ns, key, parent, labels, { lease: this.lease });
    } catch (err) {
      if (isAlreadyExists(err)) return;
      throw pullError(err, `failed to prepare extraction snapshot ${JSON.stringify(key)}`);
    }
    let done = false;
    try {
      await fill(mounts);
      try {
        await sn.commit(this.ns, chainId, key, labels, { lease: this.lease });
      } catch (err) {
        if (!isAlreadyExists(err)) throw pullError(err, `failed to commit snapshot ${key}`);
        await sn.remove(this.ns, key, { lease: this.lease }).catch(() => {});
      }
      done = true;
    } finally {
      if (!done) await sn.remove(this.ns, key, { lease: this.lease }).catch(() => {});
    }
  }

  async run(): Promise<PullResult> {
    const { req } = this;
    this.emit({ event: "resolving", name: req.ref });
    const resolved = await req.client.resolve(req.ref);
    const root = resolved.descriptor;
    this.emit({ event: "resolved", name: resolved.name, desc: root });
    const platforms = req.platforms ?? [hostPlatform()];
    const wanted = (p: Platform | undefined) => platforms.length === 0 || matchesAny(platforms, p);

    // Walk the tree: indexes to the manifests wanted, manifests to configs and layers.
    interface Found {
      manifest: Descriptor;
      platform?: Platform;
      config: Descriptor;
      layers: Descriptor[];
      diffIds: string[];
      withLayers: boolean;
    }
    const found: Found[] = [];
    const walk = async (desc: Descriptor, platform: Platform | undefined, depth: number): Promise<void> => {
      if (depth > 4) throw new BerthError("invalid argument", `${desc.digest}: indexes nested too deep`);
      if (isIndexType(desc.mediaType)) {
        const data = await this.fetchSmall(desc, (b) => {
          const j = JSON.parse(b.toString("utf8")) as ManifestJson;
          const l: Labels = {};
          (j.manifests ?? []).forEach((m, i) => {
            l[`${GC_REF_CONTENT}.m.${i}`] = m.digest;
          });
          return l;
        });
        const idx = JSON.parse(data.toString("utf8")) as ManifestJson;
        const children = (idx.manifests ?? []).filter(
          (m) => req.allMetadata || !m.platform || wanted(m.platform) || isIndexType(m.mediaType),
        );
        await Promise.all(children.map((m) => walk(m, m.platform ?? platform, depth + 1)));
        return;
      }
      if (!isImageManifestType(desc.mediaType)) return; // attestations and other artifacts are not followed
      const data = await this.fetchSmall(desc, (b) => {
        const j = JSON.parse(b.toString("utf8")) as ManifestJson;
        const l: Labels = {};
        if (j.config) l[`${GC_REF_CONTENT}.config`] = j.config.digest;
        (j.layers ?? []).forEach((x, i) => {
          l[`${GC_REF_CONTENT}.l.${i}`] = x.digest;
        });
        return l;
      });
      const m = JSON.parse(data.toString("utf8")) as ManifestJson;
      if (!m.config) throw new BerthError("invalid argument", `manifest ${desc.digest} has no config`);
      const cdata = await this.fetchSmall(m.config, () => ({}));
      const cfg = JSON.parse(cdata.toString("utf8")) as ConfigJson & {
        os?: string;
        architecture?: string;
        variant?: string;
      };
      const plat =
        platform ??
        (cfg.architecture
          ? { os: cfg.os ?? "linux", architecture: cfg.architecture, variant: cfg.variant }
          : undefined);
      found.push({
        manifest: desc,
        platform: plat,
        config: m.config,
        layers: m.layers ?? [],
        diffIds: cfg.rootfs?.diff_ids ?? [],
        withLayers: platform === undefined || wanted(platform),
      });
    };
    await walk(root, undefined, 0);
    if (found.length === 0 || !found.some((f) => f.withLayers))
      throw new BerthError(
        "not found",
        `no match for platform in manifest ${root.digest}: ${platforms.map(formatPlatform).join(", ")}`,
      );

    // Layers: plan the unpacks (taps before bytes flow), start every download now (bounded by
    // the limiter), unpack as they land.
    const unpacks: { u: UnpackConfig; f: Found; plan: UnpackPlan }[] = [];
    for (const u of req.unpacks ?? []) {
      const f = found.find((x) => x.withLayers && platformMatches(u.platform, x.platform));
      if (!f) continue;
      unpacks.push({ u, f, plan: await this.planUnpack(f.layers, f.diffIds, u.snapshotter) });
    }
    const jobs: Promise<unknown>[] = [];
    for (const f of found) if (f.withLayers) for (const l of f.layers) jobs.push(this.step(this.download(l)));
    const unpacked: Record<string, string> = {};
    for (const { u, f, plan } of unpacks) {
      jobs.push(
        this.step(this.unpack(f.config, f.layers, f.diffIds, u.snapshotter, plan)).then((top) => {
          unpacked[`${formatPlatform(u.platform)}@${u.snapshotter}`] = top;
        }),
      );
    }
    const results = await Promise.allSettled(jobs);
    const failed = results.find((r) => r.status === "rejected") as PromiseRejectedResult | undefined;
    if (failed) throw this.firstError ? this.firstError.err : failed.reason;

    // Last: the image record.
    const name = req.name || resolved.name;
    const target = { mediaType: root.mediaType, digest: root.digest, size: root.size, annotations: {} };
    try {
      this.deps.images.create(this.ns, { name, labels: req.labels ?? {}, target });
    } catch (err) {
      if (!isAlreadyExists(err)) throw err;
      const paths = ["target", ...Object.keys(req.labels ?? {}).map((k) => `labels.${k}`)];
      this.deps.images.update(this.ns, { name, labels: req.labels ?? {}, target }, paths);
    }
    this.emit({ event: "saved", name, desc: root });
    this.log.debug("image pulled", { name, digest: root.digest });
    return { name, target: root, unpacked };
  }
}

/** Pull an image into a namespace: the transfer service's registry → image store path. */
export async function pull(deps: PullDeps, req: PullRequest): Promise<PullResult> {
  const lease = `pull-${Date.now()}-${randomBytes(6).toString("hex")}`;
  const expire = new Date(Date.now() + 24 * 3600 * 1000).toISOString().replace(/\.\d+Z$/, "Z");
  deps.leases.create(req.namespace, lease, { [GC_EXPIRE_LABEL]: expire });
  try {
    const job = new PullJob(deps, req, lease);
    try {
      return await job.run();
    } finally {
      job.dispose();
    }
  } finally {
    await deps.leases
      .delete(req.namespace, lease, false)
      .catch((err: unknown) =>
        (deps.log ?? nopLogger).warn("failed to delete pull lease", { lease, error: String(err) }),
      );
  }
}
