// Build small OCI images at test time from the host's static busybox, and push them to a
// registry with plain HTTP (the OCI distribution API). Every byte is deterministic (fixed mtimes,
// gzip without a timestamp), so two builds give the same digests.
import { readFileSync } from "node:fs";
import { buildTar, gzip, sha256, type TarEntry } from "./tarbuild.js";

export const BUSYBOX_BIN = "/bin/busybox";

export const MediaType = {
  index: "application/vnd.oci.image.index.v1+json",
  manifest: "application/vnd.oci.image.manifest.v1+json",
  config: "application/vnd.oci.image.config.v1+json",
  layerGzip: "application/vnd.oci.image.layer.v1.tar+gzip",
} as const;

export interface Blob {
  mediaType: string;
  digest: string;
  size: number;
  data: Buffer;
}

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface PlatformImage {
  platform: Platform;
  manifest: Blob;
  config: Blob;
  layers: Blob[];
  /** sha256 of each uncompressed layer (the config's rootfs.diff_ids). */
  diffIds: string[];
}

export interface BuiltImage {
  /** The image's target: the index when there is one, else the single manifest. */
  target: Blob;
  index?: Blob;
  platforms: PlatformImage[];
  /** Every blob the image consists of (layers, configs, manifests, index), without repeats. */
  blobs: Blob[];
}

const MTIME = 1700000000;
const CREATED = new Date(MTIME * 1000).toISOString();
const APPLETS = ["sh", "ls", "echo", "cat"];

const json = (v: unknown) => Buffer.from(JSON.stringify(v));

/**
 * An amd64 Linux image config naming its layers' diff IDs, with `config` (Cmd, Env, …) as the
 * runtime part when given.
 */
export function linuxConfigBlob(diffIds: string[], config?: Record<string, unknown>): Blob {
  return blob(
    MediaType.config,
    Buffer.from(
      JSON.stringify({
        architecture: "amd64",
        os: "linux",
        ...(config ? { config } : {}),
        rootfs: { type: "layers", diff_ids: diffIds },
      }),
    ),
  );
}

/** A blob of `data` with its digest and size. */
export const blob = (mediaType: string, data: Buffer): Blob => ({
  mediaType,
  digest: sha256(data),
  size: data.length,
  data,
});

/** An OCI image manifest blob for a config and its layers. */
export function manifestBlob(config: Blob, layers: Blob[]): Blob {
  return blob(
    MediaType.manifest,
    json({
      schemaVersion: 2,
      mediaType: MediaType.manifest,
      config: { mediaType: config.mediaType, digest: config.digest, size: config.size },
      layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
    }),
  );
}

/** The busybox layer: bin/busybox, a few applet symlinks, and the usual /etc files. */
export function busyboxLayerTar(): Buffer {
  const entries: TarEntry[] = [
    { name: "bin/", type: "dir", mtime: MTIME },
    { name: "bin/busybox", data: readFileSync(BUSYBOX_BIN), mode: 0o755, mtime: MTIME },
    ...APPLETS.map(
      (a): TarEntry => ({ name: `bin/${a}`, type: "symlink", linkname: "busybox", mtime: MTIME }),
    ),
    { name: "etc/", type: "dir", mtime: MTIME },
    {
      name: "etc/passwd",
      data: "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
      mtime: MTIME,
    },
    { name: "etc/group", data: "root:x:0:\nnogroup:x:65534:\n", mtime: MTIME },
    { name: "etc/hostname", data: "berth-test\n", mtime: MTIME },
    { name: "root/", type: "dir", mode: 0o700, mtime: MTIME },
    { name: "tmp/", type: "dir", mode: 0o1777, mtime: MTIME },
  ];
  return buildTar(entries);
}

/** `linux/amd64` or `linux/arm64/v8` (as containerd formats platforms). */
export const formatPlatform = (p: Platform) =>
  [p.os, p.architecture, ...(p.variant ? [p.variant] : [])].join("/");

export interface BuildOptions {
  /** Platforms; more than one (or `index: true`) makes an index. Default: linux/amd64 only. */
  platforms?: Platform[];
  index?: boolean;
}

/**
 * Build the busybox image. Every platform gets its own config (architecture, os, variant) and
 * manifest but shares the one layer (the bytes are amd64's: the other platforms only exist to
 * exercise index handling).
 */
export function buildBusyboxImage(opts: BuildOptions = {}): BuiltImage {
  const platforms = opts.platforms ?? [{ os: "linux", architecture: "amd64" }];
  const tar = busyboxLayerTar();
  const layer = blob(MediaType.layerGzip, gzip(tar));
  const diffId = sha256(tar);
  const built: PlatformImage[] = platforms.map((platform) => {
    const config = blob(
      MediaType.config,
      json({
        created: CREATED,
        architecture: platform.architecture,
        ...(platform.variant ? { variant: platform.variant } : {}),
        os: platform.os,
        config: {
          Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
          Cmd: ["sh"],
        },
        rootfs: { type: "layers", diff_ids: [diffId] },
        history: [{ created: CREATED, created_by: "berth test: busybox layer" }],
      }),
    );
    const manifest = manifestBlob(config, [layer]);
    return { platform, manifest, config, layers: [layer], diffIds: [diffId] };
  });
  let index: Blob | undefined;
  if (opts.index || built.length > 1) {
    index = blob(
      MediaType.index,
      json({
        schemaVersion: 2,
        mediaType: MediaType.index,
        manifests: built.map((b) => ({
          mediaType: b.manifest.mediaType,
          digest: b.manifest.digest,
          size: b.manifest.size,
          platform: b.platform,
        })),
      }),
    );
  }
  const all = new Map<string, Blob>();
  for (const b of built) for (const x of [...b.layers, b.config, b.manifest]) all.set(x.digest, x);
  if (index) all.set(index.digest, index);
  return { target: index ?? built[0]!.manifest, index, platforms: built, blobs: [...all.values()] };
}

async function expectStatus(r: Response, want: number, what: string): Promise<void> {
  const body = await r.text();
  if (r.status !== want) throw new Error(`${what}: HTTP ${r.status} (want ${want}): ${body.slice(0, 500)}`);
}

/** Upload one blob: POST an upload session, then PUT the bytes with ?digest= to finish it. */
export async function pushBlob(registryUrl: string, repo: string, b: Blob): Promise<void> {
  const head = await fetch(`${registryUrl}/v2/${repo}/blobs/${b.digest}`, { method: "HEAD" });
  await head.arrayBuffer();
  if (head.status === 200) return;
  const start = await fetch(`${registryUrl}/v2/${repo}/blobs/uploads/`, { method: "POST" });
  await expectStatus(start, 202, `start upload of ${b.digest}`);
  const location = start.headers.get("location");
  if (!location) throw new Error(`start upload of ${b.digest}: no Location header`);
  const u = new URL(location, registryUrl);
  u.searchParams.set("digest", b.digest);
  const put = await fetch(u, {
    method: "PUT",
    headers: { "content-type": "application/octet-stream" },
    body: b.data,
  });
  await expectStatus(put, 201, `finish upload of ${b.digest}`);
}

/** PUT a manifest or index under a tag or digest. */
export async function pushManifest(registryUrl: string, repo: string, ref: string, b: Blob): Promise<void> {
  const r = await fetch(`${registryUrl}/v2/${repo}/manifests/${ref}`, {
    method: "PUT",
    headers: { "content-type": b.mediaType },
    body: b.data,
  });
  await expectStatus(r, 201, `put manifest ${repo}:${ref}`);
}

/** Push a built image as `<repo>:<tag>`: blobs, then manifests by digest, then the target by tag. */
export async function pushImage(
  registryUrl: string,
  repo: string,
  tag: string,
  img: BuiltImage,
): Promise<void> {
  for (const p of img.platforms) {
    for (const l of p.layers) await pushBlob(registryUrl, repo, l);
    await pushBlob(registryUrl, repo, p.config);
  }
  if (img.index)
    for (const p of img.platforms) await pushManifest(registryUrl, repo, p.manifest.digest, p.manifest);
  await pushManifest(registryUrl, repo, tag, img.target);
}

/**
 * A single-platform (linux/amd64) busybox image whose config carries `config` (Entrypoint, Cmd,
 * StopSignal, Volumes, …) and PATH; `extra` puts one more file in the layer, making the image
 * distinct from every other.
 */
export function busyboxImageWith(
  config: Record<string, unknown>,
  extra?: { name: string; data: string },
): BuiltImage {
  const tar = extra
    ? Buffer.concat([buildTar([{ ...extra, mtime: MTIME }], { noEnd: true }), busyboxLayerTar()])
    : busyboxLayerTar();
  const layer = blob(MediaType.layerGzip, gzip(tar));
  const cfg = blob(
    MediaType.config,
    Buffer.from(
      JSON.stringify({
        architecture: "amd64",
        os: "linux",
        config: { Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], ...config },
        rootfs: { type: "layers", diff_ids: [sha256(tar)] },
      }),
    ),
  );
  const manifest = manifestBlob(cfg, [layer]);
  const platform = { os: "linux", architecture: "amd64" };
  return {
    target: manifest,
    platforms: [{ platform, manifest, config: cfg, layers: [layer], diffIds: [sha256(tar)] }],
    blobs: [layer, cfg, manifest],
  };
}
