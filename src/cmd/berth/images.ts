// `berth images`: pull and push (daemon-side, through the Transfer service: image-transfer.ts),
// list, remove, tag, label and check images. Output follows ctr's.
import type { Command } from "commander";
import { isAlreadyExists, isNotFound } from "../../base/errdefs.js";
import { formatPlatform } from "../../base/platforms.js";
import {
  type BlobReader,
  chainIds,
  hostMatcher,
  imageConfig,
  imagePlatforms,
  isUnpacked,
  manifestForPlatform,
} from "../../core/images/image.js";
import { type Descriptor, isIndexType } from "../../core/images/media.js";
import { Images } from "../../gen/containerd/services/images/v1/images_pb.js";
import { Snapshots } from "../../gen/containerd/services/snapshots/v1/snapshots_pb.js";
import type { Wire } from "./context.js";
import { collect, contentBlobs, defaultSnapshotter, targetOf } from "./image-common.js";
import { type PullOpts, type PushOpts, pullImage, pushImage } from "./image-transfer.js";
import { formatLabels, humanSize, parseLabelArgs, TabWriter } from "./table.js";

/** What the host platform's manifest, its config and layers weigh (with the index, if any). */
async function imageSize(blobs: BlobReader, t: Descriptor): Promise<number> {
  const pm = await manifestForPlatform(blobs, t, hostMatcher());
  let size = (isIndexType(t.mediaType) ? t.size : 0) + pm.desc.size + (pm.manifest.config?.size ?? 0);
  for (const l of pm.manifest.layers ?? []) size += l.size;
  return size;
}

/** Registers the `images` group; returns it for the commands other files add (export, mount, ...). */
export function registerImages(program: Command, wire: Wire): Command {
  const images = program.command("images").aliases(["image", "i"]).description("manage images");

  images
    .command("pull")
    .description("pull an image from a registry, unpacking it in the daemon (Transfer service)")
    .argument("<ref>", "image reference")
    .option("--plain-http", "allow connections using plain HTTP")
    .option("-u, --user <user[:password]>", "user[:password] registry credentials")
    .option("--platform <platform>", "pull content for a platform (repeatable)", collect, [])
    .option("--all-platforms", "pull content and metadata for all platforms")
    .option("--hosts-dir <dir>", "custom hosts configuration directory")
    .option("--snapshotter <name>", "snapshotter to unpack into [$CONTAINERD_SNAPSHOTTER]")
    .option("--skip-unpack", "fetch only, do not unpack")
    .action(
      wire(async (ctx, cmd) => {
        await pullImage(ctx, cmd.args[0]!, cmd.opts<PullOpts>());
      }),
    );

  images
    .command("push")
    .description("push an image to a registry from the daemon's image store (Transfer service)")
    .argument("<ref>", "destination reference")
    .argument("[local]", "local image to push (default: the destination reference)")
    .option("--plain-http", "allow connections using plain HTTP")
    .option("-u, --user <user[:password]>", "user[:password] registry credentials")
    .option("--platform <platform>", "push content for a platform only (repeatable)", collect, [])
    .option("--hosts-dir <dir>", "custom hosts configuration directory")
    .action(
      wire(async (ctx, cmd) => {
        await pushImage(ctx, cmd.args[0]!, cmd.args[1], cmd.opts<PushOpts>());
      }),
    );

  images
    .command("list")
    .alias("ls")
    .description("list images known to the daemon")
    .argument("[filters...]", "filters")
    .option("-q, --quiet", "print only the image refs")
    .action(
      wire(async (ctx, cmd) => {
        const client = await ctx.client(Images);
        const { images: list } = await client.list({ filters: cmd.args }, ctx.call());
        if (cmd.opts<{ quiet?: boolean }>().quiet) {
          for (const i of list) process.stdout.write(`${i.name}\n`);
          return;
        }
        const blobs = await contentBlobs(ctx);
        const tw = new TabWriter().row("REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS", "");
        for (const i of list) {
          const t = targetOf(i);
          const size = await imageSize(blobs, t).then(humanSize, () => "-");
          const plats = await imagePlatforms(blobs, t).then(
            (p) => p.map(formatPlatform).join(","),
            () => "-",
          );
          tw.row(i.name, t.mediaType, t.digest, size, plats, formatLabels(i.labels, "-"), "");
        }
        tw.flush();
      }),
    );

  images
    .command("remove")
    .alias("rm")
    .description("remove one or more images by reference")
    .argument("<ref...>", "image references")
    .option("--sync", "synchronously remove image and all associated resources")
    .action(
      wire(async (ctx, cmd) => {
        const client = await ctx.client(Images);
        const sync = cmd.opts<{ sync?: boolean }>().sync ?? false;
        let failed = false;
        for (const name of cmd.args) {
          try {
            await client.delete({ name, sync }, ctx.call());
            process.stdout.write(`${name}\n`);
          } catch (err) {
            if (isNotFound(err)) {
              process.stderr.write(`berth: ${name}: image not found\n`);
              continue;
            }
            process.stderr.write(`berth: unable to delete ${name}: ${(err as Error).message}\n`);
            failed = true;
          }
        }
        if (failed) process.exitCode = 1;
      }),
    );

  images
    .command("tag")
    .description("tag an image")
    .argument("<source>", "source image")
    .argument("<target...>", "new references")
    .option("--force", "force the tag even if it already exists")
    .action(
      wire(async (ctx, cmd) => {
        const client = await ctx.client(Images);
        const [src, ...targets] = cmd.args as [string, ...string[]];
        const { image } = await client.get({ name: src }, ctx.call());
        const force = cmd.opts<{ force?: boolean }>().force ?? false;
        for (const t of targets) {
          const img = { name: t, target: image!.target, labels: image!.labels };
          try {
            await client.create({ image: img }, ctx.call());
          } catch (err) {
            if (!force || !isAlreadyExists(err)) throw err;
            await client.delete({ name: t }, ctx.call());
            await client.create({ image: img }, ctx.call());
          }
          process.stdout.write(`${t}\n`);
        }
      }),
    );

  images
    .command("label")
    .description("set and clear labels for an image (KEY= clears)")
    .argument("<ref>", "image reference")
    .argument("[labels...]", "KEY=VALUE labels")
    .action(
      wire(async (ctx, cmd) => {
        const client = await ctx.client(Images);
        const [name, ...args] = cmd.args as [string, ...string[]];
        const labels = parseLabelArgs(args);
        const paths = Object.keys(labels).map((k) => `labels.${k}`);
        const { image } = await client.update({ image: { name, labels }, updateMask: { paths } }, ctx.call());
        const shown = Object.entries(labels)
          .filter(([k]) => image?.labels[k] !== undefined)
          .map(([k, v]) => `${k}=${v}`);
        process.stdout.write(`${shown.join(",")}\n`);
      }),
    );

  images
    .command("check")
    .description("check existing images to ensure all content is available locally")
    .argument("[filters...]", "filters")
    .option("-q, --quiet", "print only the ready image refs")
    .option("--snapshotter <name>", "snapshotter to check unpacking in")
    .action(
      wire(async (ctx, cmd) => {
        const o = cmd.opts<{ quiet?: boolean; snapshotter?: string }>();
        const snapshotter = o.snapshotter || defaultSnapshotter();
        const client = await ctx.client(Images);
        const snaps = await ctx.client(Snapshots);
        const blobs = await contentBlobs(ctx);
        const { images: list } = await client.list({ filters: cmd.args }, ctx.call());
        const tw = new TabWriter().row("REF", "TYPE", "DIGEST", "STATUS", "SIZE", "UNPACKED");
        for (const i of list) {
          const t = targetOf(i);
          let total = 0;
          let have = 0;
          let size = 0;
          let sizeAvail = 0;
          let unpacked = false;
          const count = async (d: { digest: string; size: number }) => {
            total++;
            size += d.size;
            if (await blobs.has(d.digest)) {
              have++;
              sizeAvail += d.size;
              return true;
            }
            return false;
          };
          try {
            if (await count(t)) {
              const pm = await manifestForPlatform(blobs, t, hostMatcher());
              if (isIndexType(t.mediaType)) await count(pm.desc);
              if (pm.manifest.config && (await count(pm.manifest.config))) {
                const cfg = await imageConfig(blobs, pm.manifest);
                unpacked = await isUnpacked(chainIds(cfg.rootfs?.diff_ids ?? []), (key) =>
                  snaps.stat({ snapshotter, key }, ctx.call()).then(
                    () => true,
                    () => false,
                  ),
                );
              }
              for (const l of pm.manifest.layers ?? []) await count(l);
            }
          } catch {
            // counted as missing
          }
          const complete = have === total && total > 0;
          if (o.quiet) {
            if (complete) process.stdout.write(`${i.name}\n`);
            continue;
          }
          tw.row(
            i.name,
            t.mediaType,
            t.digest,
            `${complete ? "complete" : "incomplete"} (${have}/${total})`,
            `${humanSize(sizeAvail)}/${humanSize(size)}`,
            String(unpacked),
          );
        }
        if (!o.quiet) tw.flush();
      }),
    );
  return images;
}
