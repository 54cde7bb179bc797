// `berth images export` / `berth images import`, done in the client through the daemon's Content,
// Images, Leases, Snapshots and Diff services (ctr 1.x's way, not the Transfer import/export
// streams). Export writes an OCI image layout archive (oci-layout, index.json, blobs/sha256/*)
// with Docker's manifest.json added so `docker load` takes it too. Import takes OCI layout
// archives and `docker save` archives (manifest.json with layer tars), creates the image records
// and unpacks the host platform's layers (snapshots named by chain ID, like a pull).
import { createHash, randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import type { Command } from "commander";
import { isAlreadyExists, isNotFound } from "../../base/errdefs.js";
import { hostPlatform, matchesAny, type Platform } from "../../base/platforms.js";
import { MediaType } from "../../core/diff/compression.js";
import { END_OF_ARCHIVE, encodeHeader, padLength, TarType } from "../../core/diff/tar.js";
import { UNCOMPRESSED_LABEL } from "../../core/diff/walking.js";
import { chainIds, GC_REF_CONTENT, GC_REF_SNAPSHOT } from "../../core/pull/pull.js";
import { familiarString, formatReference, parseNormalized } from "../../core/reference.js";
import { isImageManifestType, isIndexType, MediaTypes } from "../../core/remotes/media.js";
import { SNAPSHOT_REF_LABEL } from "../../core/snapshots/metadata.js";
import { Content, WriteAction } from "../../gen/containerd/services/content/v1/content_pb.js";
import { Diff } from "../../gen/containerd/services/diff/v1/diff_pb.js";
import { Images } from "../../gen/containerd/services/images/v1/images_pb.js";
import { Leases } from "../../gen/containerd/services/leases/v1/leases_pb.js";
import { Snapshots } from "../../gen/containerd/services/snapshots/v1/snapshots_pb.js";
import type { CliContext, Wire } from "./context.js";

const ANN_IMAGE_NAME = "io.containerd.image.name";
const ANN_REF_NAME = "org.opencontainers.image.ref.name";
const DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json";
const CHUNK = 1 << 20;

interface Desc {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: Platform;
}

interface TreeJson {
  mediaType?: string;
  manifests?: Desc[];
  config?: Desc;
  layers?: Desc[];
  rootfs?: { diff_ids?: string[] };
  os?: string;
  architecture?: string;
  variant?: string;
}

const blobPath = (d: string) => `blobs/${d.replace(":", "/")}`;
const sha256 = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

async function readBlob(ctx: CliContext, digest: string): Promise<Buffer> {
  const content = await ctx.client(Content);
  const parts: Uint8Array[] = [];
  for await (const r of content.read({ digest }, ctx.stream())) parts.push(r.data);
  return Buffer.concat(parts);
}

// --- export ---------------------------------------------------------------------------------

/** Sequential tar writer to a file. */
class TarOut {
  private pos = 0;
  constructor(private readonly fh: FileHandle) {}
  private async put(b: Uint8Array): Promise<void> {
    await this.fh.write(b, 0, b.length, this.pos);
    this.pos += b.length;
  }
  async file(name: string, size: number, data: AsyncIterable<Uint8Array> | Uint8Array[]): Promise<void> {
    await this.put(encodeHeader({ name, type: TarType.File, mode: 0o444, uid: 0, gid: 0, size, mtime: 0 }));
    let n = 0;
    for await (const c of data) {
      await this.put(c);
      n += c.length;
    }
    if (n !== size) throw new Error(`${name}: wrote ${n} bytes, expected ${size}`);
    const pad = padLength(size);
    if (pad > 0) await this.put(Buffer.alloc(pad));
  }
  async dir(name: string): Promise<void> {
    await this.put(encodeHeader({ name, type: TarType.Dir, mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 0 }));
  }
  async end(): Promise<void> {
    await this.put(END_OF_ARCHIVE);
  }
}

async function exportImages(ctx: CliContext, out: string, refs: string[], allPlatforms: boolean) {
  const images = await ctx.client(Images);
  const content = await ctx.client(Content);
  const want = [hostPlatform()];
  const blobs = new Map<string, Desc>();
  const index: Desc[] = [];
  const dockerManifest: { Config: string; RepoTags: string[]; Layers: string[] }[] = [];
  const has = async (d: string) =>
    content.info({ digest: d }, ctx.call()).then(
      () => true,
      (err: unknown) => {
        if (isNotFound(err)) return false;
        throw err;
      },
    );

  for (const ref of refs) {
    let image: Awaited<ReturnType<typeof images.get>>["image"];
    try {
      image = (await images.get({ name: ref }, ctx.call())).image;
    } catch (err) {
      if (!isNotFound(err)) throw err;
      image = (await images.get({ name: formatReference(parseNormalized(ref)) }, ctx.call())).image;
    }
    const t = image!.target!;
    const root: Desc = { mediaType: t.mediaType, digest: t.digest, size: Number(t.size) };
    let dockerPick: TreeJson | undefined;
    const walk = async (d: Desc, depth: number): Promise<void> => {
      blobs.set(d.digest, d);
      if (!isIndexType(d.mediaType) && !isImageManifestType(d.mediaType)) return;
      const j = JSON.parse((await readBlob(ctx, d.digest)).toString("utf8")) as TreeJson;
      if (isIndexType(d.mediaType)) {
        for (const m of j.manifests ?? []) {
          const match = !m.platform || matchesAny(want, m.platform);
          if (!allPlatforms && !match) continue;
          if (!(await has(m.digest))) {
            if (allPlatforms)
              throw new Error(`${ref}: content ${m.digest} is missing (pull with --all-platforms first)`);
            continue;
          }
          await walk(m, depth + 1);
        }
        return;
      }
      if (j.config) blobs.set(j.config.digest, j.config);
      for (const l of j.layers ?? []) blobs.set(l.digest, l);
      if (!dockerPick) {
        const cfg = j.config && (JSON.parse((await readBlob(ctx, j.config.digest)).toString()) as TreeJson);
        const plat = cfg?.architecture
          ? { os: cfg.os ?? "linux", architecture: cfg.architecture, variant: cfg.variant }
          : undefined;
        if (!plat || matchesAny(want, plat) || depth === 0) dockerPick = j;
      }
    };
    await walk(root, 0);
    const named = parseNormalized(image!.name);
    const annotations: Record<string, string> = { [ANN_IMAGE_NAME]: image!.name };
    if (named.tag) annotations[ANN_REF_NAME] = named.tag;
    index.push({ ...root, annotations });
    if (dockerPick?.config)
      dockerManifest.push({
        Config: blobPath(dockerPick.config.digest),
        RepoTags: named.tag ? [familiarString(named)] : [],
        Layers: (dockerPick.layers ?? []).map((l) => blobPath(l.digest)),
      });
  }

  const fh = await open(out, "w");
  try {
    const tar = new TarOut(fh);
    const small = async (name: string, data: Buffer) => tar.file(name, data.length, [data]);
    await small("oci-layout", Buffer.from(JSON.stringify({ imageLayoutVersion: "1.0.0" })));
    await tar.dir("blobs/");
    await tar.dir("blobs/sha256/");
    for (const d of blobs.values()) {
      const chunks = (async function* () {
        for await (const r of content.read({ digest: d.digest }, ctx.stream())) yield r.data;
      })();
      await tar.file(blobPath(d.digest), d.size, chunks);
    }
    await small(
      "index.json",
      Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.ociIndex, manifests: index })),
    );
    if (dockerManifest.length > 0) await small("manifest.json", Buffer.from(JSON.stringify(dockerManifest)));
    await tar.end();
  } finally {
    await fh.close();
  }
}

// --- import ---------------------------------------------------------------------------------

interface Entry {
  offset: number;
  size: number;
}

/** Index a tar file: entry name (normalised, no leading ./) → data offset and size. */
async function indexTar(file: string): Promise<Map<string, Entry>> {
  const fh = await open(file, "r");
  const out = new Map<string, Entry>();
  try {
    const block = Buffer.alloc(512);
    let pos = 0;
    let longName: string | undefined;
    for (;;) {
      const { bytesRead } = await fh.read(block, 0, 512, pos);
      if (bytesRead < 512 || block.every((b) => b === 0)) break;
      const str = (o: number, l: number) => {
        const s = block.subarray(o, o + l);
        const z = s.indexOf(0);
        return s.subarray(0, z < 0 ? l : z).toString("utf8");
      };
      const size = Number.parseInt(str(124, 12).trim() || "0", 8);
      const type = String.fromCharCode(block[156] ?? 0);
      const prefix = str(257, 6).startsWith("ustar") ? str(345, 155) : "";
      let name = prefix ? `${prefix}/${str(0, 100)}` : str(0, 100);
      const dataAt = pos + 512;
      pos = dataAt + size + padLength(size);
      if (type === "x" || type === "L") {
        const data = Buffer.alloc(size);
        await fh.read(data, 0, size, dataAt);
        if (type === "L") longName = data.toString("utf8").replace(/\0+$/, "");
        else {
          const m = /\d+ path=([^\n]*)\n/.exec(data.toString("utf8"));
          if (m) longName = m[1];
        }
        continue;
      }
      if (longName !== undefined) {
        name = longName;
        longName = undefined;
      }
      if (type === "0" || type === "\0") out.set(name.replace(/^(\.\/)+/, ""), { offset: dataAt, size });
    }
  } finally {
    await fh.close();
  }
  return out;
}

class Importer {
  private readonly lease = `import-${Date.now()}-${randomBytes(6).toString("hex")}`;
  private readonly entries: Map<string, Entry>;
  constructor(
    private readonly ctx: CliContext,
    private readonly file: string,
    entries: Map<string, Entry>,
  ) {
    this.entries = entries;
  }

  entry(name: string): Entry {
    const e = this.entries.get(name.replace(/^(\.\/)+/, ""));
    if (!e) throw new Error(`${this.file}: no ${name} in the archive`);
    return e;
  }

  stream(e: Entry): AsyncIterable<Buffer> {
    if (e.size === 0) return (async function* () {})();
    return createReadStream(this.file, { start: e.offset, end: e.offset + e.size - 1, highWaterMark: CHUNK });
  }

  async bytes(name: string): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const c of this.stream(this.entry(name))) parts.push(c);
    return Buffer.concat(parts);
  }

  async digestOf(name: string): Promise<string> {
    const h = createHash("sha256");
    for await (const c of this.stream(this.entry(name))) h.update(c);
    return `sha256:${h.digest("hex")}`;
  }

  async withLease<T>(fn: () => Promise<T>): Promise<T> {
    const leases = await this.ctx.client(Leases);
    const expire = new Date(Date.now() + 24 * 3600 * 1000).toISOString().replace(/\.\d+Z$/, "Z");
    await leases.create({ id: this.lease, labels: { "containerd.io/gc.expire": expire } }, this.ctx.call());
    try {
      return await fn();
    } finally {
      await leases.delete({ id: this.lease }, this.ctx.call()).catch(() => {});
    }
  }

  /** Write a blob (from the archive or from memory) with labels; an existing one gets the labels. */
  async put(
    digest: string,
    size: number,
    data: AsyncIterable<Uint8Array> | Uint8Array[],
    labels: Record<string, string>,
  ): Promise<void> {
    const content = await this.ctx.client(Content);
    const opts = this.ctx.stream({ lease: this.lease });
    const exists = await content.info({ digest }, opts).then(
      () => true,
      (err: unknown) => {
        if (isNotFound(err)) return false;
        throw err;
      },
    );
    if (exists) {
      await this.label(digest, labels);
      return;
    }
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
      let offset = (await next()).offset;
      if (offset > 0n) {
        // a leftover ingest: start over
        offset = 0n;
      }
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
      if (isAlreadyExists(err)) {
        await this.label(digest, labels);
        return;
      }
      throw err;
    }
  }

  async label(digest: string, labels: Record<string, string>): Promise<void> {
    const keys = Object.keys(labels);
    if (keys.length === 0) return;
    const content = await this.ctx.client(Content);
    await content.update(
      { info: { digest, labels }, updateMask: { paths: keys.map((k) => `labels.${k}`) } },
      this.ctx.call({ lease: this.lease }),
    );
  }

  /** Unpack a manifest's layers into a snapshotter (chain IDs as snapshot names). */
  async unpack(manifest: TreeJson, snapshotter: string): Promise<void> {
    if (!manifest.config) return;
    const cfg = JSON.parse((await readBlob(this.ctx, manifest.config.digest)).toString()) as TreeJson;
    const diffIds = cfg.rootfs?.diff_ids ?? [];
    const layers = manifest.layers ?? [];
    if (diffIds.length !== layers.length)
      throw new Error(`config has ${diffIds.length} diff IDs for ${layers.length} layers`);
    const snaps = await this.ctx.client(Snapshots);
    const diff = await this.ctx.client(Diff);
    const opts = this.ctx.call({ lease: this.lease, timeoutMs: undefined });
    const chain = chainIds(diffIds);
    let parent = "";
    for (let i = 0; i < layers.length; i++) {
      const chainId = chain[i]!;
      const layer = layers[i]!;
      const exists = await snaps.stat({ snapshotter, key: chainId }, opts).then(
        () => true,
        () => false,
      );
      if (!exists) {
        const key = `extract-${Date.now()}-${randomBytes(6).toString("base64url")} ${chainId}`;
        const labels = { [SNAPSHOT_REF_LABEL]: chainId };
        const { mounts } = await snaps.prepare({ snapshotter, key, parent, labels }, opts);
        try {
          const { applied } = await diff.apply(
            { diff: { mediaType: layer.mediaType, digest: layer.digest, size: BigInt(layer.size) }, mounts },
            opts,
          );
          if (applied?.digest !== diffIds[i])
            throw new Error(
              `layer ${layer.digest} unpacked to ${applied?.digest}, config says ${diffIds[i]}`,
            );
          await snaps.commit({ snapshotter, name: chainId, key, labels }, opts).catch((err: unknown) => {
            if (!isAlreadyExists(err)) throw err;
          });
        } catch (err) {
          await snaps.remove({ snapshotter, key }, opts).catch(() => {});
          throw err;
        }
      }
      await this.label(layer.digest, { [UNCOMPRESSED_LABEL]: diffIds[i]! });
      parent = chainId;
    }
    const top = chain[chain.length - 1];
    if (top) await this.label(manifest.config.digest, { [`${GC_REF_SNAPSHOT}${snapshotter}`]: top });
  }
}

/** gc.ref.content labels for an index or manifest, as a pull sets them. */
function refLabels(j: TreeJson): Record<string, string> {
  const l: Record<string, string> = {};
  (j.manifests ?? []).forEach((m, i) => {
    l[`${GC_REF_CONTENT}.m.${i}`] = m.digest;
  });
  if (j.config) l[`${GC_REF_CONTENT}.config`] = j.config.digest;
  (j.layers ?? []).forEach((x, i) => {
    l[`${GC_REF_CONTENT}.l.${i}`] = x.digest;
  });
  return l;
}

interface ImportOpts {
  allPlatforms?: boolean;
  indexName?: string;
  snapshotter?: string;
  skipUnpack?: boolean;
  baseName?: string;
}

async function importArchive(ctx: CliContext, file: string, o: ImportOpts): Promise<void> {
  const entries = await indexTar(file);
  const im = new Importer(ctx, file, entries);
  const want = [hostPlatform()];
  const snapshotter = o.snapshotter || process.env.CONTAINERD_SNAPSHOTTER || "overlayfs";
  const images = await ctx.client(Images);
  await im.withLease(async () => {
    const records: { name: string; target: Desc }[] = [];
    const toUnpack: TreeJson[] = [];
    const done = new Set<string>();
    const hasBlob = (d: string) => entries.has(blobPath(d));

    /** Import a tree from blobs/ children first; returns false when a part is absent. */
    const putTree = async (d: Desc, depth: number): Promise<void> => {
      if (done.has(d.digest)) return;
      if (isIndexType(d.mediaType) || isImageManifestType(d.mediaType)) {
        const data = await im.bytes(blobPath(d.digest));
        const j = JSON.parse(data.toString("utf8")) as TreeJson;
        if (isIndexType(d.mediaType)) {
          for (const m of j.manifests ?? []) {
            const match = !m.platform || matchesAny(want, m.platform);
            if (!hasBlob(m.digest)) {
              if (o.allPlatforms) throw new Error(`${file}: ${m.digest} is not in the archive`);
              continue;
            }
            if (o.allPlatforms || match || isIndexType(m.mediaType)) await putTree(m, depth + 1);
          }
        } else {
          const cfg = j.config;
          if (cfg) await putTree(cfg, depth + 1);
          for (const l of j.layers ?? []) await putTree(l, depth + 1);
          let plat = d.platform;
          if (!plat && cfg) {
            const c = JSON.parse((await im.bytes(blobPath(cfg.digest))).toString()) as TreeJson;
            if (c.architecture)
              plat = { os: c.os ?? "linux", architecture: c.architecture, variant: c.variant };
          }
          if (!plat || matchesAny(want, plat)) toUnpack.push(j);
        }
        await im.put(d.digest, d.size, [data], refLabels(j));
      } else {
        const e = im.entry(blobPath(d.digest));
        await im.put(d.digest, e.size, im.stream(e), {});
      }
      done.add(d.digest);
    };

    if (entries.has("index.json")) {
      const idxData = await im.bytes("index.json");
      const idx = JSON.parse(idxData.toString("utf8")) as TreeJson;
      for (const m of idx.manifests ?? []) {
        await putTree(m, 0);
        const a = m.annotations ?? {};
        let name = a[ANN_IMAGE_NAME];
        const refName = a[ANN_REF_NAME];
        if (!name && refName) {
          try {
            name = formatReference(parseNormalized(refName));
          } catch {
            if (o.baseName) name = `${o.baseName}:${refName}`;
          }
        }
        if (name) records.push({ name, target: { mediaType: m.mediaType, digest: m.digest, size: m.size } });
      }
      if (o.indexName) {
        const d = sha256(idxData);
        await im.put(d, idxData.length, [idxData], refLabels(idx));
        records.push({
          name: o.indexName,
          target: { mediaType: idx.mediaType ?? MediaTypes.ociIndex, digest: d, size: idxData.length },
        });
      }
    } else if (entries.has("manifest.json")) {
      // docker save: config and layer tars named in manifest.json; a schema 2 manifest is made.
      const dm = JSON.parse((await im.bytes("manifest.json")).toString("utf8")) as {
        Config: string;
        RepoTags?: string[] | null;
        Layers: string[];
      }[];
      for (const item of dm) {
        const cfgData = await im.bytes(item.Config);
        const config: Desc = { mediaType: DOCKER_CONFIG, digest: sha256(cfgData), size: cfgData.length };
        await im.put(config.digest, config.size, [cfgData], {});
        const layers: Desc[] = [];
        for (const l of item.Layers) {
          const e = im.entry(l);
          const magic = Buffer.alloc(2);
          const fh = await open(file, "r");
          try {
            await fh.read(magic, 0, Math.min(2, e.size), e.offset);
          } finally {
            await fh.close();
          }
          const gz = magic[0] === 0x1f && magic[1] === 0x8b;
          const digest = await im.digestOf(l);
          await im.put(digest, e.size, im.stream(e), {});
          layers.push({
            mediaType: gz ? MediaType.DockerLayerGzip : MediaType.DockerLayer,
            digest,
            size: e.size,
          });
        }
        const manifest: TreeJson & { schemaVersion: number } = {
          schemaVersion: 2,
          mediaType: MediaTypes.dockerManifest,
          config,
          layers,
        };
        const mdata = Buffer.from(JSON.stringify(manifest));
        const md: Desc = { mediaType: MediaTypes.dockerManifest, digest: sha256(mdata), size: mdata.length };
        await im.put(md.digest, md.size, [mdata], refLabels(manifest));
        toUnpack.push(manifest);
        for (const tag of item.RepoTags ?? [])
          records.push({ name: formatReference(parseNormalized(tag)), target: md });
      }
    } else throw new Error(`${file}: neither an OCI image layout (index.json) nor a docker save archive`);

    if (!o.skipUnpack) for (const m of toUnpack) await im.unpack(m, snapshotter);

    for (const r of records) {
      const image = {
        name: r.name,
        target: { mediaType: r.target.mediaType, digest: r.target.digest, size: BigInt(r.target.size) },
      };
      try {
        await images.create({ image }, ctx.call());
      } catch (err) {
        if (!isAlreadyExists(err)) throw err;
        await images.update({ image, updateMask: { paths: ["target"] } }, ctx.call());
      }
      process.stdout.write(`${r.name}\t${r.target.digest}\n`);
    }
    if (records.length === 0) process.stderr.write("berth: the archive names no image\n");
  });
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
        await importArchive(ctx, cmd.args[0]!, cmd.opts<ImportOpts>());
      }),
    );
}
