// Pieces the image commands share (images, image archive, image mount, run): image content read
// through the daemon's Content service as a BlobReader for src/core/images, image lookup by the
// name given or its normalised form, the default snapshotter, and unpacking from the client
// (src/core/unpack over the Snapshots, Diff and Content services).
import { isNotFound } from "../../base/errdefs.js";
import type { Platform } from "../../base/platforms.js";
import {
  type BlobReader,
  hostMatcher,
  isUnpacked,
  type PlatformMatcher,
  type ResolvedImage,
  resolvedImage,
} from "../../core/images/image.js";
import type { Descriptor } from "../../core/images/media.js";
import { formatReference, parseNormalized } from "../../core/reference.js";
import {
  type LabelContent,
  type LayerApplier,
  type LayerSnapshots,
  unpackImage,
} from "../../core/unpack/unpacker.js";
import { Content } from "../../gen/containerd/services/content/v1/content_pb.js";
import { Diff } from "../../gen/containerd/services/diff/v1/diff_pb.js";
import { type Image, Images } from "../../gen/containerd/services/images/v1/images_pb.js";
import { Snapshots } from "../../gen/containerd/services/snapshots/v1/snapshots_pb.js";
import type { CliContext } from "./context.js";

/** A repeatable option's collector. */
export const collect = (v: string, prev: string[]) => [...prev, v];

/** The snapshotter commands use when none is given: $CONTAINERD_SNAPSHOTTER, else overlayfs. */
export const defaultSnapshotter = () => process.env.CONTAINERD_SNAPSHOTTER || "overlayfs";

/** A BlobReader over the Content service, plus a presence check. */
export interface ContentBlobs extends BlobReader {
  has(digest: string): Promise<boolean>;
}

/** Read blobs of the context's namespace through the daemon's Content service. */
export async function contentBlobs(ctx: CliContext): Promise<ContentBlobs> {
  const content = await ctx.client(Content);
  return {
    async readBlob(digest: string): Promise<Uint8Array> {
      const parts: Uint8Array[] = [];
      for await (const r of content.read({ digest }, ctx.stream())) parts.push(r.data);
      return Buffer.concat(parts);
    },
    async has(digest: string): Promise<boolean> {
      try {
        await content.info({ digest }, ctx.call());
        return true;
      } catch (err) {
        if (isNotFound(err)) return false;
        throw err;
      }
    },
  };
}

/** An image record's target as an OCI descriptor. */
export const targetOf = (i: Image): Descriptor => ({
  digest: i.target?.digest ?? "",
  mediaType: i.target?.mediaType ?? "",
  size: Number(i.target?.size ?? 0n),
});

/** The image record named `ref`, or else the one named by its normalised form (busybox → docker.io/…). */
export async function getImage(ctx: CliContext, ref: string): Promise<Image> {
  const images = await ctx.client(Images);
  try {
    const { image } = await images.get({ name: ref }, ctx.call());
    if (image) return image;
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  let name: string;
  try {
    name = formatReference(parseNormalized(ref));
  } catch {
    throw new Error(`image "${ref}": not found`);
  }
  try {
    const { image } = await images.get({ name }, ctx.call());
    if (image) return image;
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  throw new Error(`image "${ref}": not found`);
}

/** An unpack target over the daemon's Snapshots, Diff and Content services (src/core/unpack). */
export interface GrpcUnpacker {
  snapshots: LayerSnapshots;
  apply: LayerApplier;
  label: LabelContent;
}

/**
 * Unpacking from the client, as ctr does it: snapshots of `snapshotter` and content labels under
 * `lease`, layers applied by the daemon's Diff service. Calls that may take long (a layer's
 * apply) have no deadline.
 */
export async function grpcUnpacker(
  ctx: CliContext,
  snapshotter: string,
  lease: string,
): Promise<GrpcUnpacker> {
  const snaps = await ctx.client(Snapshots);
  const diff = await ctx.client(Diff);
  const content = await ctx.client(Content);
  const opts = () => ctx.call({ lease, timeoutMs: undefined });
  return {
    snapshots: {
      exists: (key) =>
        snaps.stat({ snapshotter, key }, ctx.call({ lease })).then(
          () => true,
          (err: unknown) => {
            if (isNotFound(err)) return false;
            throw err;
          },
        ),
      prepare: async (key, parent, labels) =>
        (await snaps.prepare({ snapshotter, key, parent, labels }, opts())).mounts.map((m) => ({
          type: m.type,
          source: m.source,
          target: m.target,
          options: [...m.options],
        })),
      commit: async (name, key, labels) => {
        await snaps.commit({ snapshotter, name, key, labels }, opts());
      },
      remove: async (key) => {
        await snaps.remove({ snapshotter, key }, opts());
      },
    },
    apply: async (layer, mounts) => {
      const { applied } = await diff.apply(
        { diff: { mediaType: layer.mediaType, digest: layer.digest, size: BigInt(layer.size) }, mounts },
        opts(),
      );
      return applied?.digest ?? "";
    },
    label: async (digest, labels) => {
      const keys = Object.keys(labels);
      if (keys.length === 0) return;
      await content.update(
        { info: { digest, labels }, updateMask: { paths: keys.map((k) => `labels.${k}`) } },
        ctx.call({ lease }),
      );
    },
  };
}

/** A stored image resolved for a platform (default: this machine's) through the daemon. */
export async function resolveStoredImage(
  ctx: CliContext,
  ref: string,
  platforms: PlatformMatcher | Platform[] = hostMatcher(),
): Promise<ResolvedImage & { name: string }> {
  const image = await getImage(ctx, ref);
  return { name: image.name, ...(await resolvedImage(await contentBlobs(ctx), targetOf(image), platforms)) };
}

/**
 * Unpack an image's layers into `snapshotter` where they are missing (as ctr does before it
 * creates a container), under `lease`; the config then references the top snapshot.
 */
export async function ensureUnpacked(
  ctx: CliContext,
  img: ResolvedImage,
  snapshotter: string,
  lease: string,
): Promise<void> {
  const u = await grpcUnpacker(ctx, snapshotter, lease);
  if (await isUnpacked(img.chainIds, u.snapshots.exists)) return;
  await unpackImage(
    u.snapshots,
    u.apply,
    u.label,
    { configDigest: img.configDesc.digest, layers: img.layers, diffIds: img.diffIds },
    snapshotter,
  );
}
