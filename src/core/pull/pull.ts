// The pull pipeline, run inside the daemon: resolve a reference, fetch the index/manifests/configs
// it needs into the content store with containerd's labels (distribution source, gc.ref.content.*),
// download layers in parallel (max_concurrent_downloads) and unpack them into snapshots named by
// chain ID while later layers are still downloading, then create or update the image record.
// Everything happens under a lease that is deleted at the end, so the image record is what holds
// the tree afterwards; a failure leaves no image record and only collectable content behind.
//
// Unpack order: an overlay snapshot's parent is fixed when it is prepared, so layer N can only be
// applied once layer N-1 is committed. Downloads run ahead in parallel; each layer is applied from
// the content store as soon as it is there and its parent is committed.
import { createHash, randomBytes } from "node:crypto";
import type { MetadataContentStore } from "../content/metadata.js";
import type { Differ } from "../diff/service.js";
import { UNCOMPRESSED_LABEL } from "../diff/walking.js";
import { BerthError, isAlreadyExists, isNotFound } from "../errdefs.js";
import type { ImageStore } from "../images/store.js";
import type { LeaseStore } from "../leases/store.js";
import { type Logger, nopLogger } from "../log.js";
import type { Labels } from "../metadata/db.js";
import { hostname, parseNormalized } from "../reference.js";
import type { RegistryClient } from "../remotes/client.js";
import { type Descriptor, MediaTypes } from "../remotes/media.js";
import { SNAPSHOT_REF_LABEL, type SnapshotService } from "../snapshots/metadata.js";
import { formatPlatform, hostPlatform, matchesAny, type Platform, platformMatches } from "./platforms.js";

export const DISTRIBUTION_SOURCE_PREFIX = "containerd.io/distribution.source.";
export const GC_REF_CONTENT = "containerd.io/gc.ref.content";
export const GC_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot.";
const GC_EXPIRE = "containerd.io/gc.expire";

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

const isIndex = (mt: string) => mt === MediaTypes.ociIndex || mt === MediaTypes.dockerManifestList;
const isManifest = (mt: string) => mt === MediaTypes.ociManifest || mt === MediaTypes.dockerManifest;

/** containerd's ingest keys (remotes.MakeRefKey). */
function refKey(desc: Descriptor): string {
  if (isIndex(desc.mediaType)) return `index-${desc.digest}`;
  if (isManifest(desc.mediaType)) return `manifest-${desc.digest}`;
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

/** One pull: state shared by its steps. */
class PullJob {
  private readonly ns: string;
  private readonly lease: string;
  private readonly sourceLabel: Labels;
  private readonly limiter: Limiter;
  private readonly log: Logger;
  /** Layer downloads in flight or done, by digest (a layer shared by two manifests is fetched once). */
  private readonly downloads = new Map<string, Promise<void>>();

  constructor(
    private readonly deps: PullDeps,
    private readonly req: PullRequest,
    lease: string,
  ) {
    this.ns = req.namespace;
    this.lease = lease;
    const r = parseNormalized(req.ref);
    this.sourceLabel = { [`${DISTRIBUTION_SOURCE_PREFIX}${hostname(r.domain)}`]: r.path };
    this.limiter = new Limiter(Math.max(1, req.maxConcurrentDownloads ?? 3));
    this.log = deps.log ?? nopLogger;
  }

  private emit(ev: ProgressEvent): void {
    try {
      this.req.progress?.(ev);
    } catch {
      // a progress consumer's failure is not the pull's
    }
  }

  private check(): void {
    this.req.signal?.throwIfAborted();
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
   * `labels`. Returns false when the blob was already present.
   */
  private async store(
    desc: Descriptor,
    labels: Labels,
    chunks: () => Promise<AsyncIterable<Uint8Array> | Iterable<Uint8Array>>,
    onBytes?: (n: number) => void,
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
      let n = 0;
      for await (const c of await chunks()) {
        this.check();
        await w.write(c);
        n += c.length;
        onBytes?.(n);
      }
      try {
        await w.commit(desc.size, desc.digest, labels);
      } catch (err) {
        if (!isAlreadyExists(err)) throw err;
        this.addLabels(desc.digest, labels);
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

  private download(desc: Descriptor): Promise<void> {
    let p = this.downloads.get(desc.digest);
    if (!p) {
      p = this.downloadLayer(desc);
      p.catch(() => {});
      this.downloads.set(desc.digest, p);
    }
    return p;
  }

  private async downloadLayer(desc: Descriptor): Promise<void> {
    const name = refKey(desc);
    this.emit({ event: "waiting", name, total: desc.size, desc });
    await this.limiter.run(async () => {
      this.check();
      this.emit({ event: "downloading", name, progress: 0, total: desc.size, desc });
      let last = 0;
      const fresh = await this.store(
        desc,
        this.sourceLabel,
        () => this.req.client.fetch(this.req.ref, desc),
        (n) => {
          const now = Date.now();
          if (now - last >= 100) {
            last = now;
            this.emit({ event: "downloading", name, progress: n, total: desc.size, desc });
          }
        },
      );
      this.emit({
        event: fresh ? "complete" : "already exists",
        name,
        progress: desc.size,
        total: desc.size,
        desc,
      });
    });
  }

  /** Unpack a manifest's layers into one snapshotter; returns the top chain ID. */
  private async unpack(
    config: Descriptor,
    layers: Descriptor[],
    diffIds: string[],
    snapshotter: string,
  ): Promise<string> {
    if (layers.length !== diffIds.length)
      throw new BerthError(
        "invalid argument",
        `mismatched image rootfs and manifest layers: ${diffIds.length} diff IDs, ${layers.length} layers`,
      );
    const sn = this.deps.snapshots.get(snapshotter);
    const chain = chainIds(diffIds);
    let parent = "";
    for (let i = 0; i < layers.length; i++) {
      const layer = layers[i]!;
      const chainId = chain[i]!;
      const name = refKey(layer);
      const exists = await sn.stat(this.ns, chainId).then(
        () => true,
        (err: unknown) => {
          if (isNotFound(err)) return false;
          throw err;
        },
      );
      await this.download(layer);
      this.check();
      if (!exists) {
        this.emit({ event: "unpacking", name, total: layer.size, desc: layer });
        await this.applyLayer(sn, layer, chainId, parent, diffIds[i]!);
      }
      this.addLabels(layer.digest, { [UNCOMPRESSED_LABEL]: diffIds[i]! });
      this.emit({ event: "unpacked", name, progress: layer.size, total: layer.size, desc: layer });
      parent = chainId;
    }
    const top = chain[chain.length - 1] ?? "";
    if (top) this.addLabels(config.digest, { [`${GC_REF_SNAPSHOT}${snapshotter}`]: top });
    return top;
  }

  private async applyLayer(
    sn: ReturnType<SnapshotService["get"]>,
    layer: Descriptor,
    chainId: string,
    parent: string,
    diffId: string,
  ): Promise<void> {
    const key = `extract-${process.hrtime.bigint() % 1_000_000_000n}-${randomBytes(6).toString("base64url")} ${chainId}`;
    const labels = { [SNAPSHOT_REF_LABEL]: chainId };
    let mounts: Awaited<ReturnType<typeof sn.prepare>>;
    try {
      mounts = await sn.prepare(this.ns, key, parent, labels, { lease: this.lease });
    } catch (err) {
      if (isAlreadyExists(err)) return; // the chain is there already (a concurrent unpack made it)
      throw pullError(err, `failed to prepare extraction snapshot ${JSON.stringify(key)}`);
    }
    let done = false;
    try {
      const applied = await this.deps.differ.apply(this.ns, layer, mounts, { signal: this.req.signal });
      if (applied.digest !== diffId)
        throw new BerthError(
          "failed precondition",
          `wrong diff id calculated on extraction ${JSON.stringify(diffId)}: got ${applied.digest}`,
        );
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
      if (isIndex(desc.mediaType)) {
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
          (m) => req.allMetadata || !m.platform || wanted(m.platform) || isIndex(m.mediaType),
        );
        await Promise.all(children.map((m) => walk(m, m.platform ?? platform, depth + 1)));
        return;
      }
      if (!isManifest(desc.mediaType)) return; // attestations and other artifacts are not followed
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

    // Layers: start every download now (bounded by the limiter), unpack as they land.
    const jobs: Promise<unknown>[] = [];
    for (const f of found) if (f.withLayers) for (const l of f.layers) jobs.push(this.download(l));
    const unpacked: Record<string, string> = {};
    for (const u of req.unpacks ?? []) {
      const f = found.find((x) => x.withLayers && platformMatches(u.platform, x.platform));
      if (!f) continue;
      jobs.push(
        this.unpack(f.config, f.layers, f.diffIds, u.snapshotter).then((top) => {
          unpacked[`${formatPlatform(u.platform)}@${u.snapshotter}`] = top;
        }),
      );
    }
    const results = await Promise.allSettled(jobs);
    const failed = results.find((r) => r.status === "rejected") as PromiseRejectedResult | undefined;
    if (failed) throw failed.reason;

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
  deps.leases.create(req.namespace, lease, { [GC_EXPIRE]: expire });
  try {
    return await new PullJob(deps, req, lease).run();
  } finally {
    await deps.leases
      .delete(req.namespace, lease, false)
      .catch((err: unknown) =>
        (deps.log ?? nopLogger).warn("failed to delete pull lease", { lease, error: String(err) }),
      );
  }
}
