// Unpacking a manifest's layers while they download (the pull pipeline's unpack half). A
// snapshot's parent is fixed when it is prepared, so layer N's snapshot can only be prepared once
// layer N-1's is committed. Two ways, by what the snapshotter can do:
//   staged   (the snapshotter has `stagedExtraction`, e.g. overlayfs: layers are independent
//            directories) each layer is extracted while it downloads (the bytes teed into the
//            extraction, or read from the store when the blob is there already) into a staging
//            directory, all layers at once, on worker threads for large ones; in layer order,
//            each staged tree is then renamed into a snapshot prepared on its committed parent
//            and committed — only once its blob is committed and its diff ID matches the config.
//   applied  (others) each layer is applied from the content store, through the differ, once
//            it is there and its parent is committed (unpacker.ts).
import { BerthError, isNotFound, wrap } from "../../base/errdefs.js";
import type { Logger } from "../../base/log.js";
import type { ReaderAt } from "../content/local.js";
import type { ApplyMode } from "../diff/apply.js";
import { UNCOMPRESSED_LABEL } from "../diff/walking.js";
import { chainIds } from "../images/image.js";
import { snapshotRefLabel } from "../images/labels.js";
import type { Descriptor } from "../images/media.js";
import type { NamespacedSnapshotter } from "../snapshots/metadata.js";
import type { StagedExtraction } from "../snapshots/snapshotter.js";
import { type ChunkPipe, moveStaged, type StagedLayer } from "./stage.js";
import { stageLayerThreaded } from "./stage-thread.js";
import {
  applyLayers,
  checkDiffId,
  intoSnapshot,
  type LayerApplier,
  type LayerSnapshots,
} from "./unpacker.js";

/** Where an unpack gets its layers' bytes (the pull's downloads). */
export interface LayerFeed {
  /** Start (if not yet) and wait for a layer's blob to be committed in the store. */
  download(layer: Descriptor): Promise<void>;
  /** The layer's bytes as they download, or undefined when they will not flow (read the store). */
  tap(layer: Descriptor): Promise<ChunkPipe | undefined>;
  /** Open a committed layer blob. */
  open(layer: Descriptor): Promise<ReaderAt>;
}

export interface UnpackEnv {
  feed: LayerFeed;
  /** The snapshotter, bound to the namespace and lease. */
  snapshots: LayerSnapshots;
  /** Present when layers can be staged (the snapshotter's capability). */
  staging?: StagedExtraction;
  apply: LayerApplier;
  /** Merge labels onto a blob (once it is stored: a promise while it is still being written). */
  label(digest: string, labels: Record<string, string>): void | Promise<void>;
  /** Bounds extractions that read from the store (streamed ones need none). */
  limit<T>(fn: () => Promise<T>): Promise<T>;
  /** Marks a step whose failure fails the whole pull at once (the others stop early). */
  step<T>(p: Promise<T>): Promise<T>;
  signal: AbortSignal;
  log: Logger;
  onUnpacking(layer: Descriptor): void;
  onUnpacked(layer: Descriptor): void;
}

/** An extraction's failure (a full disk, a bad tar) naming the layer it was extracting. */
function extracting(layer: Descriptor, err: unknown): unknown {
  // a stop because another step failed first is that step's story
  if ((err as Error | undefined)?.name === "AbortError") return err;
  return wrap(err, `extracting layer ${layer.digest}`);
}

/** A NamespacedSnapshotter as an unpack's LayerSnapshots (one namespace, one lease). */
export function namespacedSnapshots(sn: NamespacedSnapshotter, ns: string, lease: string): LayerSnapshots {
  return {
    exists: (key) =>
      sn.stat(ns, key).then(
        () => true,
        (err: unknown) => {
          if (isNotFound(err)) return false;
          throw err;
        },
      ),
    prepare: (key, parent, labels) => sn.prepare(ns, key, parent, labels, { lease }),
    commit: (name, key, labels, usage) => sn.commit(ns, name, key, labels, { lease, usage }),
    remove: (key) => sn.remove(ns, key, { lease }),
  };
}

/**
 * One manifest's unpack into one snapshotter. plan() looks at what is needed before any download
 * starts (which chains exist; for the staged way, a tap on each layer to extract), run() unpacks.
 */
export class LayerUnpack {
  private constructor(
    private readonly env: UnpackEnv,
    private readonly layers: Descriptor[],
    private readonly diffIds: string[],
    private readonly chain: string[],
    /** Whether each layer's chain was there already (nothing to extract). */
    private readonly exists: boolean[],
    private readonly taps: (Promise<ChunkPipe | undefined> | undefined)[],
  ) {}

  static async plan(env: UnpackEnv, layers: Descriptor[], diffIds: string[]): Promise<LayerUnpack> {
    if (layers.length !== diffIds.length)
      throw new BerthError(
        "invalid argument",
        `mismatched image rootfs and manifest layers: ${diffIds.length} diff IDs, ${layers.length} layers`,
      );
    const chain = chainIds(diffIds);
    const exists: boolean[] = [];
    for (const c of chain) exists.push(await env.snapshots.exists(c));
    const taps = layers.map((l, i) => (env.staging && !exists[i] ? env.feed.tap(l) : undefined));
    return new LayerUnpack(env, layers, diffIds, chain, exists, taps);
  }

  /** Unpack; label the layers with their diff IDs and the config with the top chain. */
  async run(configDigest: string, snapshotter: string): Promise<string> {
    const { env, layers, diffIds } = this;
    if (env.staging) await this.runStaged(env.staging);
    else
      await applyLayers(env.snapshots, env.apply, layers, diffIds, {
        exists: this.exists,
        before: async (i) => {
          await env.feed.download(layers[i]!);
          env.signal.throwIfAborted();
        },
        applying: (i) => env.onUnpacking(layers[i]!),
        done: async (i) => {
          await env.label(layers[i]!.digest, { [UNCOMPRESSED_LABEL]: diffIds[i]! });
          env.onUnpacked(layers[i]!);
        },
      });
    const top = this.chain[this.chain.length - 1] ?? "";
    // the config may still be being written (the pull stores it while the layers download)
    if (top) await env.label(configDigest, { [snapshotRefLabel(snapshotter)]: top });
    return top;
  }

  /** Every missing layer extracted into a staging directory at once, moved in layer order. */
  private async runStaged(staging: StagedExtraction): Promise<void> {
    const steps: Promise<void>[] = [];
    let parentDone: Promise<void> = Promise.resolve();
    for (let i = 0; i < this.layers.length; i++) {
      const step = this.stagedLayer(staging, i, parentDone);
      step.catch(() => {});
      steps.push(step);
      parentDone = step;
    }
    const results = await Promise.allSettled(steps);
    const failed = results.find((r) => r.status === "rejected") as PromiseRejectedResult | undefined;
    if (failed) throw failed.reason;
  }

  private async stagedLayer(staging: StagedExtraction, i: number, parentDone: Promise<void>): Promise<void> {
    const { env } = this;
    const layer = this.layers[i]!;
    const diffId = this.diffIds[i]!;
    const parent = i > 0 ? this.chain[i - 1]! : "";
    const downloaded = env.feed.download(layer);
    if (!this.exists[i]) {
      const dir = staging.createStagingDir();
      try {
        const staged = await env.step(
          this.extract(layer, dir, parent === "" ? "plain" : "overlay", this.taps[i]),
        );
        await downloaded; // committed: the store verified the digest
        checkDiffId(diffId, staged.diffId);
        await parentDone;
        env.signal.throwIfAborted();
        await intoSnapshot(env.snapshots, this.chain[i]!, parent, async (mounts) => {
          moveStaged(staged, mounts, env.log);
          return undefined; // measured when first asked for (the snapshotter's usage())
        });
      } finally {
        await staging.releaseStagingDir(dir);
      }
    } else {
      await downloaded;
      await parentDone;
    }
    await env.label(layer.digest, { [UNCOMPRESSED_LABEL]: diffId });
    env.onUnpacked(layer);
  }

  /** Extract a layer into `dir`: from its download as it flows, else from the store after it. */
  private async extract(
    layer: Descriptor,
    dir: string,
    mode: ApplyMode,
    tap: Promise<ChunkPipe | undefined> | undefined,
  ): Promise<StagedLayer> {
    const { env } = this;
    const opts = { signal: env.signal, log: env.log };
    const pipe = await tap;
    if (pipe) {
      env.onUnpacking(layer); // the bytes flow
      try {
        // not verified here: the staged tree is used only once the store committed the blob
        return await stageLayerThreaded(dir, pipe, layer, mode, { ...opts, verify: false, giveChunks: true });
      } catch (err) {
        // Bytes that do not extract are most often bytes that are not the blob: let the download
        // finish and its verification speak first.
        pipe.close();
        await env.feed.download(layer);
        throw extracting(layer, err);
      } finally {
        pipe.close();
      }
    }
    await env.feed.download(layer);
    return env.limit(async () => {
      env.signal.throwIfAborted();
      env.onUnpacking(layer);
      const ra = await env.feed.open(layer);
      try {
        return await stageLayerThreaded(dir, ra.stream(0, ra.size, 1 << 20), layer, mode, opts).catch(
          (err: unknown) => Promise.reject(extracting(layer, err)),
        );
      } finally {
        await ra.close();
      }
    });
  }
}
