// Image archives (src/core/images/archive.ts) without a daemon: an export from in-memory content
// imported back (same blobs, children-first writes with the gc.ref labels, names from the
// index annotations, the host platform's manifest to unpack), and a `docker save` layout read
// into a schema-2 manifest. The archive files are real tars in a temp dir.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { errNotFound } from "../../src/base/errdefs.js";
import { hostPlatform } from "../../src/base/platforms.js";
import {
  type ExportSource,
  exportArchive,
  type ImportSink,
  importArchive,
} from "../../src/core/images/archive.js";
import { hostMatcher } from "../../src/core/images/image.js";
import { type Descriptor, MediaTypes } from "../../src/core/images/media.js";
import { buildTar } from "../helpers/tarbuild.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const sha = (b: Uint8Array) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

class Memory implements ExportSource, ImportSink {
  readonly blobs = new Map<string, Buffer>();
  readonly labels = new Map<string, Record<string, string>>();
  /** Digests in the order they were written. */
  readonly writes: string[] = [];
  add(mediaType: string, data: Buffer | object, extra: Partial<Descriptor> = {}): Descriptor {
    const b = Buffer.isBuffer(data) ? data : Buffer.from(JSON.stringify(data));
    const digest = sha(b);
    this.blobs.set(digest, b);
    return { mediaType, digest, size: b.length, ...extra };
  }
  async readBlob(digest: string): Promise<Uint8Array> {
    const b = this.blobs.get(digest);
    if (!b) throw errNotFound(`content digest ${digest}`);
    return b;
  }
  async has(digest: string): Promise<boolean> {
    return this.blobs.has(digest);
  }
  async *stream(digest: string): AsyncIterable<Uint8Array> {
    yield await this.readBlob(digest);
  }
  async put(
    digest: string,
    size: number,
    data: AsyncIterable<Uint8Array> | Uint8Array[],
    labels: Record<string, string>,
  ): Promise<void> {
    const parts: Uint8Array[] = [];
    for await (const c of data) parts.push(c);
    const b = Buffer.concat(parts);
    assert.equal(b.length, size, digest);
    assert.equal(sha(b), digest);
    this.blobs.set(digest, b);
    this.labels.set(digest, { ...this.labels.get(digest), ...labels });
    this.writes.push(digest);
  }
}

/** An image for a platform: config, one layer, manifest. */
function image(m: Memory, arch: string, layerText: string) {
  const layer = m.add("application/vnd.oci.image.layer.v1.tar", buildTar([{ name: "f", data: layerText }]));
  const config = m.add(MediaTypes.ociConfig, {
    os: "linux",
    architecture: arch,
    rootfs: { type: "layers", diff_ids: [layer.digest] },
  });
  const manifest = m.add(MediaTypes.ociManifest, { schemaVersion: 2, config, layers: [layer] });
  return { layer, config, manifest };
}

describe("image archives", () => {
  let dir: string;
  before(async () => {
    dir = await makeTempDir("images-archive");
  });
  after(async () => {
    if (dir) await removeTempDir(dir);
  });

  const host = hostPlatform().architecture;
  const other = host === "amd64" ? "arm64" : "amd64";

  it("exports the host platform's tree and imports it back, children first", async () => {
    const src = new Memory();
    const mine = image(src, host, "host");
    const theirs = image(src, other, "other");
    const index = src.add(MediaTypes.ociIndex, {
      schemaVersion: 2,
      manifests: [
        { ...mine.manifest, platform: { os: "linux", architecture: host } },
        { ...theirs.manifest, platform: { os: "linux", architecture: other } },
      ],
    });
    const file = join(dir, "one.tar");
    await exportArchive(src, file, [{ name: "docker.io/library/app:1", target: index }], {
      platforms: hostMatcher(),
    });

    const dst = new Memory();
    const r = await importArchive(file, dst, { platforms: hostMatcher() });
    assert.deepEqual(r.images, [
      {
        name: "docker.io/library/app:1",
        target: { mediaType: index.mediaType, digest: index.digest, size: index.size },
      },
    ]);
    assert.equal(r.manifests.length, 1);
    assert.equal(r.manifests[0]!.config?.digest, mine.config.digest);
    // the other platform's manifest is not in the archive; the index still names it
    assert.equal(dst.blobs.has(theirs.manifest.digest), false);
    assert.deepEqual(dst.writes, [mine.config.digest, mine.layer.digest, mine.manifest.digest, index.digest]);
    assert.deepEqual(dst.labels.get(mine.manifest.digest), {
      "containerd.io/gc.ref.content.config": mine.config.digest,
      "containerd.io/gc.ref.content.l.0": mine.layer.digest,
    });
    assert.deepEqual(dst.labels.get(index.digest), {
      "containerd.io/gc.ref.content.m.0": mine.manifest.digest,
      "containerd.io/gc.ref.content.m.1": theirs.manifest.digest,
    });
    for (const d of dst.writes) assert.deepEqual(dst.blobs.get(d), src.blobs.get(d));

    // with every platform asked for, an archive that lacks one fails naming it
    await assert.rejects(
      importArchive(file, new Memory(), { platforms: hostMatcher(), allPlatforms: true }),
      new RegExp(`${theirs.manifest.digest} is not in the archive`),
    );
  });

  it("reads a docker save archive into a schema-2 manifest", async () => {
    const layerTar = buildTar([{ name: "hello", data: "world" }]);
    const config = Buffer.from(
      JSON.stringify({
        os: "linux",
        architecture: host,
        rootfs: { type: "layers", diff_ids: [sha(layerTar)] },
      }),
    );
    const file = join(dir, "save.tar");
    writeFileSync(
      file,
      buildTar([
        {
          name: "manifest.json",
          data: JSON.stringify([{ Config: "c.json", RepoTags: ["app:2"], Layers: ["l/layer.tar"] }]),
        },
        { name: "c.json", data: config },
        { name: "l/layer.tar", data: layerTar },
      ]),
    );
    const dst = new Memory();
    const r = await importArchive(file, dst, { platforms: hostMatcher() });
    assert.equal(r.images.length, 1);
    assert.equal(r.images[0]!.name, "docker.io/library/app:2");
    assert.equal(r.images[0]!.target.mediaType, MediaTypes.dockerManifest);
    const m = JSON.parse(dst.blobs.get(r.images[0]!.target.digest)!.toString()) as {
      config: Descriptor;
      layers: Descriptor[];
    };
    assert.deepEqual(m.config, {
      mediaType: MediaTypes.dockerConfig,
      digest: sha(config),
      size: config.length,
    });
    assert.deepEqual(m.layers, [
      {
        mediaType: "application/vnd.docker.image.rootfs.diff.tar",
        digest: sha(layerTar),
        size: layerTar.length,
      },
    ]);
    assert.deepEqual(r.manifests, [m]);
  });
});
