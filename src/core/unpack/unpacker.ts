// Unpacking an image's layers into a snapshotter, containerd's way: one committed snapshot per
// layer, named by its chain ID, each prepared on its parent's. A layer's snapshot is an active
// snapshot keyed `extract-… <chainID>`, filled (the layer applied into its mounts, or a staged
// tree moved in), checked against the config's diff ID and committed under the chain ID. Chains
// that exist already are left as they are. The snapshots and the layer applier are interfaces, so
// the daemon (its snapshotters and differ) and a client (the Snapshots and Diff services) share
// this code.
import { randomBytes } from "node:crypto";
import { BerthError, isAlreadyExists } from "../../base/errdefs.js";
import type { Mount } from "../../base/mount.js";
import { UNCOMPRESSED_LABEL } from "../diff/walking.js";
import { chainIds } from "../images/image.js";
import { snapshotRefLabel } from "../images/labels.js";
import type { Descriptor } from "../images/media.js";
import { SNAPSHOT_REF_LABEL, type Usage } from "../snapshots/snapshotter.js";

/** One snapshotter, as an unpack sees it (namespace and lease bound by the caller). */
export interface LayerSnapshots {
  /** Whether a snapshot (a committed chain) exists. */
  exists(key: string): Promise<boolean>;
  prepare(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]>;
  /** `usage`: the snapshot's disk usage when the caller measured it already (a staged layer). */
  commit(name: string, key: string, labels: Record<string, string>, usage?: Usage): Promise<void>;
  remove(key: string): Promise<void>;
}

/** Applies a layer blob into mounts; returns the diff ID (digest of the uncompressed tar). */
export type LayerApplier = (layer: Descriptor, mounts: Mount[]) => Promise<string>;

/** An unpack snapshot's key, as containerd's unpacker makes them. */
export function extractKey(chainId: string): string {
  return `extract-${process.hrtime.bigint() % 1_000_000_000n}-${randomBytes(6).toString("base64url")} ${chainId}`;
}

/** The error for a layer whose content is not the one the config names. */
export function checkDiffId(want: string, got: string): void {
  if (got !== want)
    throw new BerthError(
      "failed precondition",
      `wrong diff id calculated on extraction ${JSON.stringify(want)}: got ${got}`,
    );
}

/** Prefix an error's message, keeping its kind. */
function wrapError(err: unknown, what: string): Error {
  const msg = err instanceof Error ? err.message : String(err);
  if (err instanceof BerthError) {
    const e = new BerthError(err.kind, undefined, { cause: err });
    e.message = `${what}: ${msg}`;
    return e;
  }
  return new Error(`${what}: ${msg}`, { cause: err });
}

/**
 * containerd's unpack step: an active snapshot keyed `extract-… <chainID>` on `parent`, filled
 * by `fill` (which may return the disk usage it measured), committed as the chain ID, removed
 * again if anything fails. A chain that exists already (a concurrent unpack made it) is left as
 * it is.
 */
export async function intoSnapshot(
  sn: LayerSnapshots,
  chainId: string,
  parent: string,
  fill: (mounts: Mount[]) => Promise<Usage | undefined>,
): Promise<void> {
  const key = extractKey(chainId);
  const labels = { [SNAPSHOT_REF_LABEL]: chainId };
  let mounts: Mount[];
  try {
    mounts = await sn.prepare(key, parent, labels);
  } catch (err) {
    if (isAlreadyExists(err)) return;
    throw wrapError(err, `failed to prepare extraction snapshot ${JSON.stringify(key)}`);
  }
  let done = false;
  try {
    const usage = await fill(mounts);
    try {
      await sn.commit(chainId, key, labels, usage);
    } catch (err) {
      if (!isAlreadyExists(err)) throw wrapError(err, `failed to commit snapshot ${key}`);
      await sn.remove(key).catch(() => {});
    }
    done = true;
  } finally {
    if (!done) await sn.remove(key).catch(() => {});
  }
}

/** Prepare a layer's snapshot on its committed parent, apply the blob, check it, commit. */
export function applyLayer(
  sn: LayerSnapshots,
  apply: LayerApplier,
  layer: Descriptor,
  chainId: string,
  parent: string,
  diffId: string,
): Promise<void> {
  return intoSnapshot(sn, chainId, parent, async (mounts) => {
    checkDiffId(diffId, await apply(layer, mounts));
    return undefined; // the snapshotter measures what the differ applied
  });
}

export interface UnpackHooks {
  /** Before layer `i` is looked at (the daemon waits for its download here). */
  before?(i: number): Promise<void>;
  /** Layer `i` is about to be applied (its chain was missing). */
  applying?(i: number): void;
  /** Layer `i`'s chain is there (applied now or before). */
  done?(i: number): Promise<void> | void;
}

/**
 * Apply `layers` (with their config's `diffIds`) in order, each chain that is missing on its
 * parent. Returns the chain IDs.
 */
export async function applyLayers(
  sn: LayerSnapshots,
  apply: LayerApplier,
  layers: Descriptor[],
  diffIds: string[],
  hooks: UnpackHooks & { exists?: boolean[] } = {},
): Promise<string[]> {
  if (layers.length !== diffIds.length)
    throw new BerthError(
      "invalid argument",
      `mismatched image rootfs and manifest layers: ${diffIds.length} diff IDs, ${layers.length} layers`,
    );
  const chain = chainIds(diffIds);
  let parent = "";
  for (let i = 0; i < layers.length; i++) {
    await hooks.before?.(i);
    const exists = hooks.exists?.[i] ?? (await sn.exists(chain[i]!));
    if (!exists) {
      hooks.applying?.(i);
      await applyLayer(sn, apply, layers[i]!, chain[i]!, parent, diffIds[i]!);
    }
    await hooks.done?.(i);
    parent = chain[i]!;
  }
  return chain;
}

/** Labels a blob (merged onto its existing labels). */
export type LabelContent = (digest: string, labels: Record<string, string>) => Promise<void> | void;

/**
 * Unpack an image (its manifest's layers, its config's diff IDs) into `snapshotter`, then label
 * as a pull does: each layer blob with its diff ID, the config with the top snapshot (so the
 * garbage collector keeps the snapshots while the image lives). Returns the top chain ID.
 */
export async function unpackImage(
  sn: LayerSnapshots,
  apply: LayerApplier,
  label: LabelContent,
  img: { configDigest: string; layers: Descriptor[]; diffIds: string[] },
  snapshotter: string,
): Promise<string> {
  const chain = await applyLayers(sn, apply, img.layers, img.diffIds, {
    done: (i) => label(img.layers[i]!.digest, { [UNCOMPRESSED_LABEL]: img.diffIds[i]! }),
  });
  const top = chain[chain.length - 1] ?? "";
  if (top) await label(img.configDigest, { [snapshotRefLabel(snapshotter)]: top });
  return top;
}
