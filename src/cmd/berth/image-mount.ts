// `berth images mount/unmount/usage`. Mount, as ctr does it: a view (or, with --rw, an active
// snapshot) keyed by the target path on top of the image's top chain ID, held by a lease named
// after the target, mounted here with mountAll. Unmount undoes the mounts and with --rm removes
// the snapshot and the lease. Usage: per layer of the host platform's manifest, the content size
// and the unpacked snapshot's usage.

import { resolve } from "node:path";
import type { Command } from "commander";
import { isAlreadyExists, isNotFound } from "../../base/errdefs.js";
import { GC_EXPIRE } from "../../core/gc/labels.js";
import { mountAll, unmountAll } from "../../core/mount/mount.js";
import { Leases } from "../../gen/containerd/services/leases/v1/leases_pb.js";
import { Snapshots } from "../../gen/containerd/services/snapshots/v1/snapshots_pb.js";
import type { Wire } from "./context.js";
import { defaultSnapshotter, resolveStoredImage } from "./image-common.js";
import { humanSize, TabWriter } from "./table.js";

export function registerImageMount(images: Command, wire: Wire): void {
  images
    .command("mount")
    .description("mount an image's root file system on a target path")
    .argument("<ref>", "image reference")
    .argument("<target>", "directory to mount on")
    .option("--rw", "an active (writable) snapshot instead of a view")
    .option("--snapshotter <name>", "snapshotter [$CONTAINERD_SNAPSHOTTER]")
    .action(
      wire(async (ctx, cmd) => {
        const [ref, t] = cmd.args as [string, string];
        const target = resolve(t);
        const o = cmd.opts<{ rw?: boolean; snapshotter?: string }>();
        const snapshotter = o.snapshotter || defaultSnapshotter();
        const img = await resolveStoredImage(ctx, ref);
        const top = img.topChainId;
        if (!top) throw new Error(`${ref}: the image has no layers`);
        const snaps = await ctx.client(Snapshots);
        await snaps.stat({ snapshotter, key: top }, ctx.call()).catch((err: unknown) => {
          if (isNotFound(err))
            throw new Error(`${ref} is not unpacked in ${snapshotter}: pull it without --skip-unpack`);
          throw err;
        });
        const leases = await ctx.client(Leases);
        const expire = new Date(Date.now() + 24 * 3600 * 1000).toISOString().replace(/\.\d+Z$/, "Z");
        await leases
          .create({ id: target, labels: { [GC_EXPIRE]: expire } }, ctx.call())
          .catch((err: unknown) => {
            if (!isAlreadyExists(err)) throw err;
          });
        const opts = ctx.call({ lease: target });
        let mounts: Awaited<ReturnType<typeof snaps.view>>["mounts"];
        try {
          mounts = o.rw
            ? (await snaps.prepare({ snapshotter, key: target, parent: top }, opts)).mounts
            : (await snaps.view({ snapshotter, key: target, parent: top }, opts)).mounts;
        } catch (err) {
          if (!isAlreadyExists(err)) throw err;
          mounts = (await snaps.mounts({ snapshotter, key: target }, opts)).mounts;
        }
        mountAll(
          mounts.map((m) => ({ type: m.type, source: m.source, options: [...m.options] })),
          target,
        );
        process.stdout.write(`${target}\n`);
      }),
    );

  images
    .command("unmount")
    .description("unmount an image from a target path")
    .argument("<target>", "mounted directory")
    .option("--rm", "remove the snapshot and its lease after unmounting")
    .option("--snapshotter <name>", "snapshotter [$CONTAINERD_SNAPSHOTTER]")
    .action(
      wire(async (ctx, cmd) => {
        const target = resolve(cmd.args[0]!);
        const o = cmd.opts<{ rm?: boolean; snapshotter?: string }>();
        unmountAll(target, 0);
        if (o.rm) {
          const snaps = await ctx.client(Snapshots);
          await snaps
            .remove({ snapshotter: o.snapshotter || defaultSnapshotter(), key: target }, ctx.call())
            .catch((err: unknown) => {
              if (!isNotFound(err)) throw err;
            });
          const leases = await ctx.client(Leases);
          await leases.delete({ id: target }, ctx.call()).catch((err: unknown) => {
            if (!isNotFound(err)) throw err;
          });
        }
        process.stdout.write(`${target}\n`);
      }),
    );

  images
    .command("usage")
    .description("show the content and unpacked (snapshot) sizes of an image's layers")
    .argument("<ref>", "image reference")
    .option("--snapshotter <name>", "snapshotter [$CONTAINERD_SNAPSHOTTER]")
    .action(
      wire(async (ctx, cmd) => {
        const snapshotter = cmd.opts<{ snapshotter?: string }>().snapshotter || defaultSnapshotter();
        const img = await resolveStoredImage(ctx, cmd.args[0]!);
        const snaps = await ctx.client(Snapshots);
        const tw = new TabWriter().row("LAYER", "SIZE", "CHAIN ID", "UNPACKED", "INODES");
        let size = 0;
        let unpacked = 0;
        for (let i = 0; i < img.layers.length; i++) {
          const l = img.layers[i]!;
          const chain = img.chainIds[i] ?? "";
          size += l.size;
          const u = await snaps.usage({ snapshotter, key: chain }, ctx.call()).catch(() => undefined);
          if (u) unpacked += Number(u.size);
          tw.row(
            l.digest,
            humanSize(l.size),
            chain,
            u ? humanSize(Number(u.size)) : "-",
            u ? String(u.inodes) : "-",
          );
        }
        tw.row("TOTAL", humanSize(size), "", humanSize(unpacked), "");
        tw.flush();
      }),
    );
}
