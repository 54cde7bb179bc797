// `berth images export` / `berth images import`, done in the client through the daemon's Content,
// Images, Leases, Snapshots and Diff services (ctr 1.x's way, not the Transfer import/export
// streams). The archive formats live in src/core/images/archive.ts; this file connects them to
// the daemon: content read and written over gRPC, the image records, and the host platform's
// layers unpacked into snapshots named by chain ID, like a pull.

import { randomBytes } from "node:crypto";
import type { Command } from "commander";
import { isAlreadyExists } from "../../base/errdefs.js";
import { GC_EXPIRE } from "../../core/gc/labels.js";
import { exportArchive, importArchive } from "../../core/images/archive.js";
import { hostMatcher, imageConfig } from "../../core/images/image.js";
import { unpackImage } from "../../core/unpack/unpacker.js";
import { Content, WriteAction } from "../../gen/containerd/services/content/v1/content_pb.js";
import { Images } from "../../gen/containerd/services/images/v1/images_pb.js";
import { Leases } from "../../gen/containerd/services/leases/v1/leases_pb.js";
import type { CliContext, Wire } from "./context.js";
import { contentBlobs, defaultSnapshotter, getImage, grpcUnpacker, targetOf } from "./image-common.js";

const CHUNK = 1 << 20;

async function exportImages(ctx: CliContext, out: string, refs: string[], all: boolean): Promise<void> {
  const blobs = await contentBlobs(ctx);
  const content = await ctx.client(Content);
  const images = [];
  for (const ref of refs) {
    const image = await getImage(ctx, ref);
    images.push({ name: image.name, target: targetOf(image) });
  }
  await exportArchive(
    {
      ...blobs,
      stream: async function* (digest: string) {
        for await (const r of content.read({ digest }, ctx.stream())) yield r.data;
      },
    },
    out,
    images,
    { platforms: hostMatcher(), allPlatforms: all },
  );
}

/** Write a blob through the Content service (or lease and label the one that is there). */
async function putBlob(
  ctx: CliContext,
  lease: string,
  digest: string,
  size: number,
  data: AsyncIterable<Uint8Array> | Uint8Array[],
  labels: Record<string, string>,
): Promise<void> {
  const content = await ctx.client(Content);
  const opts = ctx.stream({ lease });
  const label = async () => {
    const keys = Object.keys(labels);
    if (keys.length === 0) return;
    await content.update(
      { info: { digest, labels }, updateMask: { paths: keys.map((k) => `labels.${k}`) } },
      ctx.call({ lease }),
    );
  };
  // No Info first: a blob already there (say, unreferenced after `images rm`) must be added to
  // the import's lease, or a collection before the image record exists removes it. Opening a
  // writer for it does that and answers AlreadyExists.
  const call = content.write(opts);
  const it = call.responses[Symbol.asyncIterator]();
  const next = async () => {
    const r = await it.next();
    if (r.done) throw new Error(`writing ${digest}: the daemon closed the stream`);
    return r.value;
  };
  const ref = `import-${digest}`;
  try {
    await call.send({ action: WriteAction.STAT, ref, total: BigInt(size), expected: digest });
    await next();
    // a leftover ingest is written over from the start
    let offset = 0n;
    for await (const c of data) {
      for (let i = 0; i < c.length; i += CHUNK) {
        const part = c.subarray(i, i + CHUNK);
        await call.send({ action: WriteAction.WRITE, ref, offset, data: part });
        await next();
        offset += BigInt(part.length);
      }
    }
    await call.send({
      action: WriteAction.COMMIT,
      ref,
      total: BigInt(size),
      offset,
      expected: digest,
      labels,
    });
    await next();
    call.end();
  } catch (err) {
    call.cancel();
    if (isAlreadyExists(err)) return label();
    throw err;
  }
}

interface ImportOpts {
  allPlatforms?: boolean;
  indexName?: string;
  snapshotter?: string;
  skipUnpack?: boolean;
  baseName?: string;
}

async function importImages(ctx: CliContext, file: string, o: ImportOpts): Promise<void> {
  const snapshotter = o.snapshotter || defaultSnapshotter();
  const images = await ctx.client(Images);
  const leases = await ctx.client(Leases);
  const lease = `import-${Date.now()}-${randomBytes(6).toString("hex")}`;
  const expire = new Date(Date.now() + 24 * 3600 * 1000).toISOString().replace(/\.\d+Z$/, "Z");
  await leases.create({ id: lease, labels: { [GC_EXPIRE]: expire } }, ctx.call());
  try {
    const r = await importArchive(
      file,
      { put: (digest, size, data, labels) => putBlob(ctx, lease, digest, size, data, labels) },
      {
        platforms: hostMatcher(),
        allPlatforms: o.allPlatforms,
        indexName: o.indexName,
        baseName: o.baseName,
      },
    );
    if (!o.skipUnpack) {
      const blobs = await contentBlobs(ctx);
      const u = await grpcUnpacker(ctx, snapshotter, lease);
      for (const m of r.manifests) {
        if (!m.config) continue;
        const cfg = await imageConfig(blobs, m);
        await unpackImage(
          u.snapshots,
          u.apply,
          u.label,
          {
            configDigest: m.config.digest,
            layers: m.layers ?? [],
            diffIds: cfg.rootfs?.diff_ids ?? [],
          },
          snapshotter,
        );
      }
    }
    for (const img of r.images) {
      const image = {
        name: img.name,
        target: { mediaType: img.target.mediaType, digest: img.target.digest, size: BigInt(img.target.size) },
      };
      try {
        await images.create({ image }, ctx.call());
      } catch (err) {
        if (!isAlreadyExists(err)) throw err;
        await images.update({ image, updateMask: { paths: ["target"] } }, ctx.call());
      }
      process.stdout.write(`${img.name}\t${img.target.digest}\n`);
    }
    if (r.images.length === 0) process.stderr.write("berth: the archive names no image\n");
  } finally {
    await leases.delete({ id: lease }, ctx.call()).catch(() => {});
  }
}

export function registerImageArchive(images: Command, wire: Wire): void {
  images
    .command("export")
    .description("export images to an OCI image layout tar archive (with a docker manifest.json)")
    .argument("<out>", "archive file to write")
    .argument("<refs...>", "images to export")
    .option("--all-platforms", "export content for every platform")
    .action(
      wire(async (ctx, cmd) => {
        const [out, ...refs] = cmd.args as [string, ...string[]];
        await exportImages(ctx, out, refs, cmd.opts<{ allPlatforms?: boolean }>().allPlatforms ?? false);
      }),
    );

  images
    .command("import")
    .description("import images from an OCI image layout or docker save tar archive")
    .argument("<in>", "archive file to read")
    .option("--all-platforms", "import content for every platform")
    .option("--index-name <name>", "also keep the archive's index as an image of this name")
    .option("--base-name <name>", "name prefix for images named only by a tag")
    .option("--snapshotter <name>", "snapshotter to unpack into [$CONTAINERD_SNAPSHOTTER]")
    .option("--skip-unpack", "do not unpack the images")
    .action(
      wire(async (ctx, cmd) => {
        await importImages(ctx, cmd.args[0]!, cmd.opts<ImportOpts>());
      }),
    );
}
