// Image archives: export writes an OCI image layout tar (oci-layout, index.json, blobs/sha256/*)
// with Docker's manifest.json added so `docker load` takes it too; import reads OCI layout
// archives and `docker save` archives (manifest.json naming a config and layer tars, for which a
// schema-2 manifest is made) into a content sink, children before the documents naming them, with
// the gc.ref labels a pull sets. Content comes and goes through small interfaces, so the CLI
// (over gRPC) and the daemon can both use this.
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import { MediaType } from "../diff/compression.js";
import { END_OF_ARCHIVE, encodeHeader, padLength, TarType } from "../diff/tar.js";
import { familiarString, formatReference, parseNormalized } from "../reference.js";
import {
  type BlobReader,
  manifestChildren,
  type PlatformMatcher,
  platformEntries,
  readJson,
  walk,
} from "./image.js";
import { childrenLabels } from "./labels.js";
import {
  configPlatform,
  type Descriptor,
  type ImageConfig,
  type Index,
  isImageManifestType,
  isIndexType,
  type Manifest,
  MediaTypes,
  toPlatform,
} from "./media.js";

/** Annotations naming an image in an OCI layout's index.json. */
export const ANN_IMAGE_NAME = "io.containerd.image.name";
export const ANN_REF_NAME = "org.opencontainers.image.ref.name";
const CHUNK = 1 << 20;

const blobPath = (d: string) => `blobs/${d.replace(":", "/")}`;
const sha256 = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

/** An image named in an archive: its record name and target. */
export interface ArchiveImage {
  name: string;
  target: Descriptor;
}

// --- export ---------------------------------------------------------------------------------

/** Where exported content comes from. */
export interface ExportSource extends BlobReader {
  has(digest: string): Promise<boolean>;
  /** A blob's bytes, in pieces. */
  stream(digest: string): AsyncIterable<Uint8Array>;
}

export interface ExportOptions {
  /** Platforms whose manifests go in (unless allPlatforms); the first match is Docker's pick. */
  platforms: PlatformMatcher;
  /** Every manifest of an index; its content must all be there. */
  allPlatforms?: boolean;
}

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

/** Write `images` (their trees for the platforms asked for) as an archive file `out`. */
export async function exportArchive(
  src: ExportSource,
  out: string,
  images: ArchiveImage[],
  o: ExportOptions,
): Promise<void> {
  const blobs = new Map<string, Descriptor>();
  const index: Descriptor[] = [];
  const dockerManifest: { Config: string; RepoTags: string[]; Layers: string[] }[] = [];

  for (const image of images) {
    const root: Descriptor = {
      mediaType: image.target.mediaType,
      digest: image.target.digest,
      size: image.target.size,
    };
    let dockerPick: Manifest | undefined;
    await walk(root, {
      enter: async (d, { depth }) => {
        blobs.set(d.digest, d);
        if (isIndexType(d.mediaType)) {
          const idx = await readJson<Index>(src, d.digest);
          const kids: Descriptor[] = [];
          for (const m of o.allPlatforms ? (idx.manifests ?? []) : platformEntries(idx, o.platforms)) {
            if (await src.has(m.digest)) kids.push(m);
            else if (o.allPlatforms)
              throw new Error(
                `${image.name}: content ${m.digest} is missing (pull with --all-platforms first)`,
              );
          }
          return kids;
        }
        if (!isImageManifestType(d.mediaType)) return;
        const j = await readJson<Manifest>(src, d.digest);
        if (!dockerPick) {
          const plat = j.config && configPlatform(await readJson<ImageConfig>(src, j.config.digest));
          if (!plat || o.platforms.match(plat) || depth === 0) dockerPick = j;
        }
        return manifestChildren(j);
      },
    });
    const named = parseNormalized(image.name);
    const annotations: Record<string, string> = { [ANN_IMAGE_NAME]: image.name };
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
    for (const d of blobs.values()) await tar.file(blobPath(d.digest), d.size, src.stream(d.digest));
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

/** Where imported content goes. */
export interface ImportSink {
  /** Store a blob with labels; one that is there already gets the labels merged. */
  put(
    digest: string,
    size: number,
    data: AsyncIterable<Uint8Array> | Uint8Array[],
    labels: Record<string, string>,
  ): Promise<void>;
}

export interface ImportOptions {
  /** Platforms whose manifests are imported (unless allPlatforms) and returned for unpacking. */
  platforms: PlatformMatcher;
  /** Every manifest of an index; the archive must hold them all. */
  allPlatforms?: boolean;
  /** Also keep the archive's index as an image of this name. */
  indexName?: string;
  /** Name prefix for images the index names only by a tag. */
  baseName?: string;
}

export interface ImportResult {
  /** The image records the archive names. */
  images: ArchiveImage[];
  /** The imported manifests for the platforms asked for (to unpack). */
  manifests: Manifest[];
}

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

/** An archive file's entries. */
class Archive {
  private constructor(
    readonly file: string,
    readonly entries: Map<string, Entry>,
  ) {}

  static async open(file: string): Promise<Archive> {
    return new Archive(file, await indexTar(file));
  }

  has(name: string): boolean {
    return this.entries.has(name.replace(/^(\.\/)+/, ""));
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

  /** Whether an entry starts with gzip's magic bytes. */
  async isGzip(e: Entry): Promise<boolean> {
    const magic = Buffer.alloc(2);
    const fh = await open(this.file, "r");
    try {
      await fh.read(magic, 0, Math.min(2, e.size), e.offset);
    } finally {
      await fh.close();
    }
    return magic[0] === 0x1f && magic[1] === 0x8b;
  }
}

const json = <T>(b: Buffer) => JSON.parse(b.toString("utf8")) as T;

/** Read an archive file into `sink`; returns the images it names and the manifests to unpack. */
export async function importArchive(file: string, sink: ImportSink, o: ImportOptions): Promise<ImportResult> {
  const ar = await Archive.open(file);
  const images: ArchiveImage[] = [];
  const manifests: Manifest[] = [];
  const done = new Set<string>();

  /** Import a tree from blobs/, children first. */
  const putTree = (root: Descriptor) => {
    const docs = new Map<string, { data: Buffer; doc: Index & Manifest }>();
    return walk(root, {
      enter: async (d) => {
        if (done.has(d.digest)) return;
        if (!isIndexType(d.mediaType) && !isImageManifestType(d.mediaType)) return;
        const data = await ar.bytes(blobPath(d.digest));
        const j = json<Index & Manifest>(data);
        docs.set(d.digest, { data, doc: j });
        if (isImageManifestType(d.mediaType)) {
          let plat = d.platform && toPlatform(d.platform);
          if (!plat && j.config)
            plat = configPlatform(json<ImageConfig>(await ar.bytes(blobPath(j.config.digest))));
          if (!plat || o.platforms.match(plat)) manifests.push(j);
          return manifestChildren(j);
        }
        const wanted = new Set(platformEntries(j, o.platforms));
        const kids: Descriptor[] = [];
        for (const m of j.manifests ?? []) {
          if (!ar.has(blobPath(m.digest))) {
            if (o.allPlatforms) throw new Error(`${file}: ${m.digest} is not in the archive`);
            continue;
          }
          if (o.allPlatforms || wanted.has(m) || isIndexType(m.mediaType)) kids.push(m);
        }
        return kids;
      },
      leave: async (d) => {
        if (done.has(d.digest)) return;
        const doc = docs.get(d.digest);
        if (doc) await sink.put(d.digest, d.size, [doc.data], childrenLabels(doc.doc));
        else {
          const e = ar.entry(blobPath(d.digest));
          await sink.put(d.digest, e.size, ar.stream(e), {});
        }
        done.add(d.digest);
      },
    });
  };

  if (ar.has("index.json")) {
    const idxData = await ar.bytes("index.json");
    const idx = json<Index>(idxData);
    for (const m of idx.manifests ?? []) {
      await putTree(m);
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
      if (name) images.push({ name, target: { mediaType: m.mediaType, digest: m.digest, size: m.size } });
    }
    if (o.indexName) {
      const d = sha256(idxData);
      await sink.put(d, idxData.length, [idxData], childrenLabels(idx));
      images.push({
        name: o.indexName,
        target: { mediaType: idx.mediaType ?? MediaTypes.ociIndex, digest: d, size: idxData.length },
      });
    }
  } else if (ar.has("manifest.json")) {
    // docker save: config and layer tars named in manifest.json; a schema 2 manifest is made.
    const dm = json<{ Config: string; RepoTags?: string[] | null; Layers: string[] }[]>(
      await ar.bytes("manifest.json"),
    );
    for (const item of dm) {
      const cfgData = await ar.bytes(item.Config);
      const config: Descriptor = {
        mediaType: MediaTypes.dockerConfig,
        digest: sha256(cfgData),
        size: cfgData.length,
      };
      await sink.put(config.digest, config.size, [cfgData], {});
      const layers: Descriptor[] = [];
      for (const l of item.Layers) {
        const e = ar.entry(l);
        const gz = await ar.isGzip(e);
        const digest = await ar.digestOf(l);
        await sink.put(digest, e.size, ar.stream(e), {});
        layers.push({
          mediaType: gz ? MediaType.DockerLayerGzip : MediaType.DockerLayer,
          digest,
          size: e.size,
        });
      }
      const manifest: Manifest = { schemaVersion: 2, mediaType: MediaTypes.dockerManifest, config, layers };
      const mdata = Buffer.from(JSON.stringify(manifest));
      const md: Descriptor = {
        mediaType: MediaTypes.dockerManifest,
        digest: sha256(mdata),
        size: mdata.length,
      };
      await sink.put(md.digest, md.size, [mdata], childrenLabels(manifest));
      manifests.push(manifest);
      for (const tag of item.RepoTags ?? [])
        images.push({ name: formatReference(parseNormalized(tag)), target: md });
    }
  } else throw new Error(`${file}: neither an OCI image layout (index.json) nor a docker save archive`);
  return { images, manifests };
}
