// Creating a container from the CLI (`berth run`, `berth containers create`): the image resolved
// for the host platform, its layers unpacked into the snapshotter where missing (as ctr does
// before it creates a container), the rootfs snapshot prepared on the top chain ID, the spec
// generated from the flags with that rootfs mounted read-only for user lookups, and the record.
import { readFileSync } from "node:fs";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { Mount } from "../../base/mount.js";
import type { ResolvedImage } from "../../core/images/image.js";
import { withTempMount } from "../../core/mount/mount.js";
import { generateSpec, SPEC_TYPE_URL, type Spec } from "../../core/oci/index.js";
import { Containers } from "../../gen/containerd/services/containers/v1/containers_pb.js";
import { Snapshots } from "../../gen/containerd/services/snapshots/v1/snapshots_pb.js";
import { type ContainerFlags, containerSpecOpts, runtimeOptions } from "./container-flags.js";
import type { CliContext } from "./context.js";
import { defaultSnapshotter, ensureUnpacked, resolveStoredImage } from "./image-common.js";
import { withLease } from "./lease-scope.js";
import { parseLabelArgs } from "./table.js";

/** A stored image resolved for the host platform, with the name it is stored under. */
export async function resolveImage(ctx: CliContext, ref: string): Promise<ResolvedImage & { name: string }> {
  const img = await resolveStoredImage(ctx, ref);
  if (!img.topChainId) throw new Error(`image "${ref}" has no layers`);
  return img;
}

/** A single overlay mount made read-only (the other kinds are left as they are). */
const readonlyMounts = (mounts: Mount[]): Mount[] =>
  mounts.length === 1 && mounts[0]!.type === "overlay"
    ? [{ ...mounts[0]!, options: [...mounts[0]!.options, "ro"] }]
    : mounts;

/**
 * Creates container `id` from `ref`: the snapshot first (prepared from the image's chain ID), then
 * the spec (from --config, or generated with the rootfs mounted read-only on a temp dir for user
 * and group lookups), then the container record; the snapshot goes again when a step fails.
 */
export async function createContainer(
  ctx: CliContext,
  ref: string,
  id: string,
  args: string[],
  f: ContainerFlags,
): Promise<{ spec: Spec; snapshotter: string }> {
  const img = await resolveImage(ctx, ref);
  const snapshotter = f.snapshotter || defaultSnapshotter();
  const runConfig = img.config.config ?? {};
  const labels = { ...(runConfig.Labels ?? {}), ...parseLabelArgs(f.label) };
  const options = runtimeOptions(f);
  let spec: Spec | undefined;
  await withLease(ctx, async (lease) => {
    await ensureUnpacked(ctx, img, snapshotter, lease);
    const snaps = await ctx.client(Snapshots);
    const { mounts } = await snaps.prepare(
      { snapshotter, key: id, parent: img.topChainId },
      ctx.call({ lease }),
    );
    try {
      spec = f.config
        ? (JSON.parse(readFileSync(f.config, "utf8")) as Spec)
        : await withTempMount(readonlyMounts(mounts), (root) =>
            generateSpec(ctx.namespace, id, containerSpecOpts(runConfig, args, f), { rootfs: root }),
          );
      const containers = await ctx.client(Containers);
      await containers.create(
        {
          container: {
            id,
            image: img.name,
            labels,
            runtime: { name: f.runtime, options },
            spec: { typeUrl: SPEC_TYPE_URL, value: Buffer.from(JSON.stringify(spec)) },
            snapshotter,
            snapshotKey: id,
            createdAt: timestampFromDate(new Date()),
            updatedAt: timestampFromDate(new Date()),
          },
        },
        ctx.call({ lease }),
      );
    } catch (err) {
      await snaps.remove({ snapshotter, key: id }, ctx.call()).catch(() => {});
      throw err;
    }
  });
  return { spec: spec as Spec, snapshotter };
}
