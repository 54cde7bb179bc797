// The pull pipeline, run inside the daemon: resolve a reference, fetch the index/manifests/configs
// it needs into the content store (fetch.ts), download layers in parallel and unpack them into
// snapshots named by chain ID while later layers are still downloading (src/core/unpack), then
// create or update the image record. This file is the orchestration: one lease for the whole
// pull (deleted at the end, so the image record is what holds the tree afterwards; a failure
// leaves no image record and only collectable content behind), the first failure stopping
// every other step, progress events.
import { randomBytes } from "node:crypto";
import { BerthError, isAlreadyExists, isKind, wrap } from "../../base/errdefs.js";
import { type Logger, nopLogger } from "../../base/log.js";
import { formatPlatform, hostPlatform, type Platform, platformMatches } from "../../base/platforms.js";
import type { MetadataContentStore } from "../content/metadata.js";
import type { Differ } from "../diff/service.js";
import { platformMatcher } from "../images/image.js";
import { DISTRIBUTION_SOURCE_PREFIX, refKey } from "../images/labels.js";
import type { Descriptor } from "../images/media.js";
import type { ImageStore } from "../images/store.js";
import { GC_EXPIRE_LABEL, type LeaseStore } from "../leases/store.js";
import type { Labels } from "../metadata/db.js";
import { metricsHooks, PullTimer } from "../metrics.js";
import { formatReference, hostname, parseNormalized } from "../reference.js";
import type { RegistryClient } from "../remotes/client.js";
import type { SnapshotService } from "../snapshots/metadata.js";
import { LayerUnpack, namespacedSnapshots, type UnpackEnv } from "../unpack/layers.js";
import { Fetcher, type FoundManifest, Limiter } from "./fetch.js";
import type { ProgressEvent } from "./progress.js";

export type { ProgressEvent, ProgressEventName } from "./progress.js";

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

/** One pull: state shared by its steps. */
class PullJob {
  private readonly ns: string;
  private readonly fetcher: Fetcher;
  /** Extractions from the content store into staging directories (streamed ones need none). */
  private readonly unpackLimiter: Limiter;
  private readonly log: Logger;
  /** Aborted at the first failure (or with the request): the other steps stop early. */
  private readonly abort = new AbortController();
  private readonly signal: AbortSignal;
  private firstError: { err: unknown } | undefined;
  /** Phase timings for the metrics (a no-op while they are off). */
  readonly timer = new PullTimer();
  /** Layers being extracted (for the metrics' count of layers unpacked). */
  private readonly extracting = new Set<string>();
  /** Undo what ties this job to the request (its abort listener). */
  private unlisten: () => void = () => {};

  constructor(
    private readonly deps: PullDeps,
    private readonly req: PullRequest,
    private readonly lease: string,
  ) {
    this.ns = req.namespace;
    const r = parseNormalized(req.ref);
    const max = Math.max(1, req.maxConcurrentDownloads ?? 3);
    this.unpackLimiter = new Limiter(max);
    this.log = deps.log ?? nopLogger;
    // the request's signal aborts ours (AbortSignal.any needs node ≥ 20.3)
    const outer = req.signal;
    if (outer?.aborted) this.abort.abort(outer.reason);
    else if (outer) {
      const onAbort = () => this.abort.abort(outer.reason);
      outer.addEventListener("abort", onAbort, { once: true });
      this.unlisten = () => outer.removeEventListener("abort", onAbort);
    }
    this.signal = this.abort.signal;
    this.fetcher = new Fetcher({
      content: deps.content,
      namespace: this.ns,
      lease,
      client: req.client,
      ref: req.ref,
      sourceLabel: { [`${DISTRIBUTION_SOURCE_PREFIX}${hostname(r.domain)}`]: r.path },
      maxConcurrentDownloads: max,
      signal: this.signal,
      emit: (ev) => this.emit(ev),
    });
  }

  /** The job is over: drop its abort listener and any layer response it asked for but did not read. */
  dispose(): void {
    this.unlisten();
    this.fetcher.discardPrefetched();
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

  /** What an unpack into `snapshotter` works with: this pull's downloads, lease and signal. */
  private unpackEnv(snapshotter: string): UnpackEnv {
    const sn = this.deps.snapshots.get(snapshotter);
    const { fetcher } = this;
    return {
      feed: {
        download: (l) => fetcher.download(l),
        tap: (l) => fetcher.tap(l),
        open: (l) => this.deps.content.readerAt(this.ns, l.digest),
      },
      snapshots: namespacedSnapshots(sn, this.ns, this.lease),
      staging: sn.backend.stagedExtraction,
      apply: async (layer, mounts) =>
        (await this.deps.differ.apply(this.ns, layer, mounts, { signal: this.signal })).digest,
      label: (digest, labels) => {
        const writing = fetcher.stillWriting(digest);
        if (!writing) return fetcher.addLabels(digest, labels);
        return writing.then(() => fetcher.addLabels(digest, labels));
      },
      limit: (fn) => this.unpackLimiter.run(fn),
      step: (p) => this.step(p),
      signal: this.signal,
      log: this.log,
      onUnpacking: (l) => {
        this.extracting.add(l.digest);
        this.emit({ event: "unpacking", name: refKey(l), total: l.size, desc: l });
      },
      onUnpacked: (l) => {
        // "unpacked" is reported for layers whose snapshot existed too: count only extractions
        if (this.extracting.delete(l.digest)) metricsHooks.pull?.layerUnpacked();
        this.emit({ event: "unpacked", name: refKey(l), progress: l.size, total: l.size, desc: l });
      },
    };
  }

  /** Whether the image record this pull would write exists already. */
  private imageKnown(): boolean {
    try {
      const name = this.req.name || formatReference(parseNormalized(this.req.ref));
      this.deps.images.get(this.ns, name);
      return true;
    } catch {
      return false;
    }
  }

  async run(): Promise<PullResult> {
    const { req } = this;
    this.emit({ event: "resolving", name: req.ref });
    // A first pull GETs the manifest at once: the walk below takes those bytes instead of asking
    // again, one round trip fewer for the same count of GETs. A re-pull asks with HEAD first, as
    // containerd does: an unchanged image then downloads nothing, and a registry that meters GETs
    // (Docker Hub) counts nothing.
    const resolved = await req.client.resolve(req.ref, { withBody: !this.imageKnown() });
    const root = resolved.descriptor;
    this.timer.mark("resolve");
    this.emit({ event: "resolved", name: resolved.name, desc: root });
    const platforms = req.platforms ?? [hostPlatform()];

    try {
      return await this.fetchAndUnpack(resolved.name, root, platforms);
    } catch (err) {
      // nothing may still be writing under the lease once the pull has returned: the walk's
      // writes of small blobs go on in the background (see Fetcher.pending)
      this.failed(err);
      await Promise.allSettled(this.fetcher.pending());
      throw err;
    }
  }

  private async fetchAndUnpack(
    resolvedName: string,
    root: Descriptor,
    platforms: Platform[],
  ): Promise<PullResult> {
    const { req } = this;
    // The tree: indexes to the manifests wanted, manifests to configs (layers come below).
    const found = await this.fetcher.walk(root, platformMatcher(platforms), req.allMetadata ?? false);
    this.timer.mark("metadata");
    if (found.length === 0 || !found.some((f) => f.withLayers))
      throw new BerthError(
        "not found",
        `no match for platform in manifest ${root.digest}: ${platforms.map(formatPlatform).join(", ")}`,
      );

    // Layers: plan the unpacks (taps before bytes flow), start every download now (bounded by
    // the fetcher's limiter), unpack as they land.
    const unpacks: { u: UnpackConfig; f: FoundManifest; plan: LayerUnpack }[] = [];
    for (const u of req.unpacks ?? []) {
      const f = found.find((x) => x.withLayers && platformMatches(u.platform, x.platform));
      if (!f) continue;
      unpacks.push({
        u,
        f,
        // a manifest and config that disagree (layers vs diff_ids) are named in the error
        plan: await LayerUnpack.plan(this.unpackEnv(u.snapshotter), f.layers, f.diffIds).catch(
          (err: unknown) => Promise.reject(wrap(err, `manifest ${f.manifest.digest}`)),
        ),
      });
    }
    // the walk's own writes (manifests, configs) finish alongside the layers
    const jobs: Promise<unknown>[] = this.fetcher.pending().map((p) => this.step(p));
    for (const f of found)
      if (f.withLayers) for (const l of f.layers) jobs.push(this.step(this.fetcher.download(l)));
    const unpacked: Record<string, string> = {};
    for (const { u, f, plan } of unpacks) {
      jobs.push(
        this.step(plan.run(f.config.digest, u.snapshotter)).then((top) => {
          unpacked[`${formatPlatform(u.platform)}@${u.snapshotter}`] = top;
        }),
      );
    }
    const results = await Promise.allSettled(jobs);
    this.timer.mark("layers");
    const failed = results.find((r) => r.status === "rejected") as PromiseRejectedResult | undefined;
    if (failed) throw this.firstError ? this.firstError.err : failed.reason;

    // Last: the image record.
    const name = req.name || resolvedName;
    const target = { mediaType: root.mediaType, digest: root.digest, size: root.size, annotations: {} };
    try {
      this.deps.images.create(this.ns, { name, labels: req.labels ?? {}, target });
    } catch (err) {
      if (!isAlreadyExists(err)) throw err;
      const paths = ["target", ...Object.keys(req.labels ?? {}).map((k) => `labels.${k}`)];
      this.deps.images.update(this.ns, { name, labels: req.labels ?? {}, target }, paths);
    }
    this.timer.mark("record");
    this.emit({ event: "saved", name, desc: root });
    this.log.debug("image pulled", { name, digest: root.digest });
    return { name, target: root, unpacked };
  }
}

/**
 * The daemon's log says why a pull failed, not only the client: out of space above all, which
 * the operator (not the client) has to act on.
 */
function logFailure(log: Logger, ref: string, err: unknown): void {
  const code = (err as { code?: unknown } | undefined)?.code;
  const full =
    isKind(err, "resource exhausted") || code === "ENOSPC" || code === "EDQUOT" || code === "SQLITE_FULL";
  log[full ? "error" : "info"]("pull failed", {
    ref,
    error: err instanceof Error ? err.message : String(err),
  });
}

/** Pull an image into a namespace: the transfer service's registry → image store path. */
export async function pull(deps: PullDeps, req: PullRequest): Promise<PullResult> {
  const lease = `pull-${Date.now()}-${randomBytes(6).toString("hex")}`;
  const expire = new Date(Date.now() + 24 * 3600 * 1000).toISOString().replace(/\.\d+Z$/, "Z");
  deps.leases.create(req.namespace, lease, { [GC_EXPIRE_LABEL]: expire });
  try {
    const job = new PullJob(deps, req, lease);
    try {
      const r = await job.run();
      job.timer.finished();
      return r;
    } catch (err) {
      job.timer.finished(err);
      logFailure(deps.log ?? nopLogger, req.ref, err);
      throw err;
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
