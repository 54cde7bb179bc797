// Walking images (src/core/images/image.ts) over in-memory blobs: platform selection through
// nested indexes (arm variants, entries without a platform, missing content), the not-found
// error naming the platforms, configs and chain IDs against known values.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, it } from "node:test";
import { BerthError, errNotFound } from "../../src/base/errdefs.js";
import { parsePlatform } from "../../src/base/platforms.js";
import {
  type BlobReader,
  chainIds,
  children,
  firstMissingLayer,
  isUnpacked,
  manifestForPlatform,
  platformMatcher,
  resolvedImage,
  walk,
} from "../../src/core/images/image.js";
import {
  type Descriptor,
  type ImageConfig,
  MediaTypes,
  type OciPlatform,
} from "../../src/core/images/media.js";

const A = `sha256:${"a".repeat(64)}`;
const B = `sha256:${"b".repeat(64)}`;
const C = `sha256:${"c".repeat(64)}`;

/** An in-memory content store. */
class Blobs implements BlobReader {
  readonly map = new Map<string, Uint8Array>();
  reads: string[] = [];
  put(mediaType: string, doc: unknown, platform?: OciPlatform): Descriptor {
    const data = Buffer.from(JSON.stringify(doc));
    const digest = `sha256:${createHash("sha256").update(data).digest("hex")}`;
    this.map.set(digest, data);
    return { mediaType, digest, size: data.length, ...(platform ? { platform } : {}) };
  }
  async readBlob(digest: string): Promise<Uint8Array> {
    this.reads.push(digest);
    const b = this.map.get(digest);
    if (!b) throw errNotFound(`content digest ${digest}`);
    return b;
  }
  /** An image manifest for a platform (the config names it too), with one layer per diff ID. */
  image(p: OciPlatform, diffIds: string[] = [A]): Descriptor {
    const cfg: ImageConfig = { ...p, rootfs: { type: "layers", diff_ids: diffIds }, config: { Cmd: ["sh"] } };
    const config = this.put(MediaTypes.ociConfig, cfg);
    const layers = diffIds.map((_, i) => ({
      mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
      digest: `sha256:${String(i).repeat(64)}`,
      size: 100 + i,
    }));
    return this.put(MediaTypes.ociManifest, { schemaVersion: 2, config, layers });
  }
  index(entries: Descriptor[], mediaType: string = MediaTypes.ociIndex): Descriptor {
    return this.put(mediaType, { schemaVersion: 2, manifests: entries });
  }
}

const withPlatform = (d: Descriptor, p: OciPlatform): Descriptor => ({ ...d, platform: p });
const linux = (architecture: string, variant?: string): OciPlatform =>
  variant ? { os: "linux", architecture, variant } : { os: "linux", architecture };

describe("manifestForPlatform", () => {
  const b = new Blobs();
  const amd64 = b.image(linux("amd64"));
  const armv6 = b.image(linux("arm", "v6"));
  const armv7 = b.image(linux("arm", "v7"));
  const arm64 = b.image(linux("arm64", "v8"));
  const root = b.index([
    withPlatform(amd64, linux("amd64")),
    withPlatform(armv6, linux("arm", "v6")),
    withPlatform(armv7, linux("arm", "v7")),
    withPlatform(arm64, linux("arm64", "v8")),
  ]);

  it("picks the entry for the platform asked for", async () => {
    for (const [want, got] of [
      ["linux/amd64", amd64],
      ["linux/arm/v6", armv6],
      ["linux/arm/v7", armv7],
      ["linux/arm64", arm64],
    ] as const) {
      const pm = await manifestForPlatform(b, root, [parsePlatform(want)]);
      assert.equal(pm.desc.digest, got.digest, want);
      assert.equal(pm.manifest.layers?.length, 1);
    }
  });

  it("treats arm without a variant as arm/v7 and arm64/v8 as arm64", async () => {
    const pm = await manifestForPlatform(b, root, [{ os: "linux", architecture: "arm" }]);
    assert.equal(pm.desc.digest, armv7.digest);
    const only = b.index([withPlatform(arm64, { os: "linux", architecture: "arm64" })]);
    const pm2 = await manifestForPlatform(b, only, [parsePlatform("linux/arm64/v8")]);
    assert.equal(pm2.desc.digest, arm64.digest);
    assert.deepEqual(pm2.platform, { os: "linux", architecture: "arm64" });
  });

  it("prefers the earlier of several wanted platforms, whatever the index order", async () => {
    const pm = await manifestForPlatform(b, root, [
      parsePlatform("linux/arm64"),
      parsePlatform("linux/amd64"),
    ]);
    assert.equal(pm.desc.digest, arm64.digest);
  });

  it("walks nested indexes, and docker manifest lists", async () => {
    const inner = b.index([withPlatform(armv7, linux("arm", "v7"))], MediaTypes.dockerManifestList);
    const outer = b.index([withPlatform(amd64, linux("amd64")), inner]);
    const pm = await manifestForPlatform(b, outer, [parsePlatform("linux/arm/v7")]);
    assert.equal(pm.desc.digest, armv7.digest);
  });

  it("takes an entry without a platform only when its config names a matching one", async () => {
    const idx = b.index([amd64, arm64]); // no platform on either entry
    const pm = await manifestForPlatform(b, idx, [parsePlatform("linux/arm64")]);
    assert.equal(pm.desc.digest, arm64.digest);
    assert.deepEqual(pm.platform, { os: "linux", architecture: "arm64", variant: "v8" });
    await assert.rejects(
      manifestForPlatform(b, idx, [parsePlatform("linux/s390x")]),
      /no match for platform/,
    );
  });

  it("passes over a matching entry whose content is not here", async () => {
    const gone = { ...b.image(linux("riscv64")), digest: `sha256:${"d".repeat(64)}` };
    const other = b.image(linux("riscv64"), [B]);
    const idx = b.index([withPlatform(gone, linux("riscv64")), withPlatform(other, linux("riscv64"))]);
    const pm = await manifestForPlatform(b, idx, [parsePlatform("linux/riscv64")]);
    assert.equal(pm.desc.digest, other.digest);
  });

  it("fails not found naming the platforms wanted", async () => {
    await assert.rejects(
      manifestForPlatform(b, root, [parsePlatform("linux/ppc64le"), parsePlatform("windows/amd64")]),
      (err: unknown) => {
        assert.ok(err instanceof BerthError);
        assert.equal(err.kind, "not found");
        assert.match(err.message, new RegExp(`no match for platform in manifest ${root.digest}`));
        assert.match(err.message, /linux\/ppc64le, windows\/amd64/);
        return true;
      },
    );
  });

  it("takes a target that is a manifest whatever its platform", async () => {
    const pm = await manifestForPlatform(b, amd64, [parsePlatform("linux/arm64")]);
    assert.equal(pm.desc.digest, amd64.digest);
  });

  it("refuses indexes nested without end", async () => {
    let d = b.index([withPlatform(amd64, linux("amd64"))]);
    for (let i = 0; i < 8; i++) d = b.index([d]);
    await assert.rejects(manifestForPlatform(b, d, [parsePlatform("linux/amd64")]), /nested too deep/);
  });

  it("an empty platform list matches any platform", async () => {
    const pm = await manifestForPlatform(b, root, platformMatcher([]));
    assert.equal(pm.desc.digest, amd64.digest);
  });
});

describe("children", () => {
  it("lists an index's manifests and a manifest's config then layers", async () => {
    const b = new Blobs();
    const m = b.image(linux("amd64"), [A, B]);
    const idx = b.index([m]);
    assert.deepEqual(
      (await children(b, idx)).map((d) => d.digest),
      [m.digest],
    );
    const kids = await children(b, m);
    assert.equal(kids.length, 3);
    assert.equal(kids[0]!.mediaType, MediaTypes.ociConfig);
    assert.deepEqual(await children(b, kids[1]!), []); // a layer has none
  });
});

describe("chain IDs", () => {
  it("match known values", () => {
    assert.deepEqual(chainIds([]), []);
    assert.deepEqual(chainIds([A]), [A]);
    // sha256("<A> <B>"), then sha256("<that> <C>"), computed with sha256sum
    const ab = "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c";
    const abc = "sha256:c1377126441fb2f5ec2c21ae2a60255331d639e830f0ee1b40a36e52d4c40588";
    assert.deepEqual(chainIds([A, B, C]), [A, ab, abc]);
  });
});

describe("resolvedImage and the unpack check", () => {
  it("gives config, layers, diff IDs and chain IDs for the platform", async () => {
    const b = new Blobs();
    const arm = b.image(linux("arm", "v7"), [A, B]);
    const amd = b.image(linux("amd64"), [C]);
    const root = b.index([withPlatform(amd, linux("amd64")), withPlatform(arm, linux("arm", "v7"))]);
    const r = await resolvedImage(b, root, [parsePlatform("linux/arm")]);
    assert.equal(r.manifestDesc.digest, arm.digest);
    assert.deepEqual(r.diffIds, [A, B]);
    assert.deepEqual(r.chainIds, chainIds([A, B]));
    assert.equal(r.topChainId, chainIds([A, B])[1]);
    assert.equal(r.layers.length, 2);
    assert.deepEqual(r.config.config?.Cmd, ["sh"]);
    assert.equal(r.config.architecture, "arm");
    assert.ok(b.map.has(r.configDesc.digest));

    const have = new Set([r.chainIds[0]!]);
    const exists = async (k: string) => have.has(k);
    assert.equal(await isUnpacked(r.chainIds, exists), false);
    assert.equal(await firstMissingLayer(r.chainIds, exists), 1);
    have.add(r.topChainId);
    assert.equal(await isUnpacked(r.chainIds, exists), true);
    assert.equal(await firstMissingLayer(r.chainIds, exists), 2);
    assert.equal(await isUnpacked([], exists), false);
  });

  it("refuses a config whose diff IDs do not match the layers", async () => {
    const b = new Blobs();
    const config = b.put(MediaTypes.ociConfig, {
      architecture: "amd64",
      os: "linux",
      rootfs: { diff_ids: [A, B] },
    });
    const m = b.put(MediaTypes.ociManifest, {
      schemaVersion: 2,
      config,
      layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar", digest: A, size: 1 }],
    });
    await assert.rejects(resolvedImage(b, m, [parsePlatform("linux/amd64")]), /mismatched image rootfs/);
  });
});

describe("walk", () => {
  const b = new Blobs();
  const amd = b.image(linux("amd64"), [A, B]);
  const arm = b.image(linux("arm", "v7"), [A]);
  const inner = b.index([withPlatform(arm, linux("arm", "v7"))]);
  const root = b.index([withPlatform(amd, linux("amd64")), inner]);
  const kids = (d: Descriptor) => children(b, d);

  it("visits children before leaving their parent, each digest once, in order", async () => {
    const order: string[] = [];
    const name = (d: Descriptor) =>
      d.digest === root.digest
        ? "root"
        : d.digest === inner.digest
          ? "inner"
          : d.digest === amd.digest
            ? "amd"
            : d.digest === arm.digest
              ? "arm"
              : d.mediaType === MediaTypes.ociConfig
                ? "config"
                : `layer${d.digest[7]}`;
    await walk(root, {
      enter: async (d) => {
        order.push(`+${name(d)}`);
        return kids(d);
      },
      leave: (d) => {
        order.push(`-${name(d)}`);
      },
    });
    // the layer sha256:000… is shared by both manifests: walked once
    assert.deepEqual(order, [
      "+root",
      "+amd",
      "+config",
      "-config",
      "+layer0",
      "-layer0",
      "+layer1",
      "-layer1",
      "-amd",
      "+inner",
      "+arm",
      "+config",
      "-config",
      "-arm",
      "-inner",
      "-root",
    ]);
  });

  it("tells each step its depth and the platform of the index entry above it", async () => {
    const seen: string[] = [];
    await walk(
      root,
      {
        enter: async (d, at) => {
          seen.push(
            `${at.depth} ${at.platform ? `${at.platform.architecture}${at.platform.variant ?? ""}` : "-"} ${d.mediaType.split(".").pop()}`,
          );
          return isLayer(d) ? [] : kids(d);
        },
      },
      { parallel: true },
    );
    assert.deepEqual(
      seen.sort(),
      [
        "0 - v1+json", // the root index
        "1 - v1+json", // the nested index (no platform)
        "1 amd64 v1+json", // amd's manifest
        "2 amd64 tar+gzip",
        "2 amd64 tar+gzip",
        "2 amd64 v1+json", // amd's config
        "2 armv7 v1+json", // arm's manifest
        "3 armv7 v1+json", // arm's config
      ].sort(),
    );
  });
});

const isLayer = (d: Descriptor) => d.mediaType.includes("layer");
