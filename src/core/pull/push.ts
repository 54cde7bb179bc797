// The push pipeline, run inside the daemon (the transfer service's image store → registry path):
// walk an image's tree in the content store, upload the blobs the registry lacks (mounting them
// from the repository they were pulled from when that is on the same registry), then PUT the
// manifests children first and the root under the reference's tag (or digest).
import { Readable } from "node:stream";
import { BerthError } from "../../base/errdefs.js";
import { type Logger, nopLogger } from "../../base/log.js";
import { matchesAny, type Platform } from "../../base/platforms.js";
import type { MetadataContentStore } from "../content/metadata.js";
import type { ImageStore } from "../images/store.js";
import { hostname, parseNormalized } from "../reference.js";
import type { RegistryClient } from "../remotes/client.js";
import { type Descriptor, isImageManifestType, isIndexType } from "../remotes/media.js";
import { DISTRIBUTION_SOURCE_PREFIX, type ProgressEvent } from "./pull.js";

export interface PushDeps {
  content: MetadataContentStore;
  images: ImageStore;
  log?: Logger;
}

export interface PushRequest {
  namespace: string;
  /** The image record to push. */
  image: string;
  /** Where to: the destination reference (tag or digest). */
  ref: string;
  client: RegistryClient;
  /** Platforms whose manifests are pushed; empty: every manifest present. */
  platforms?: Platform[];
  maxConcurrentUploads?: number;
  progress?: (ev: ProgressEvent) => void;
  signal?: AbortSignal;
}

interface TreeJson {
  mediaType?: string;
  manifests?: (Descriptor & { platform?: Platform })[];
  config?: Descriptor;
  layers?: Descriptor[];
}

export async function push(deps: PushDeps, req: PushRequest): Promise<Descriptor> {
  const ns = req.namespace;
  const img = deps.images.get(ns, req.image);
  let root: Descriptor = {
    mediaType: img.target.mediaType,
    digest: img.target.digest,
    size: img.target.size,
  };
  const dest = parseNormalized(req.ref);
  const destHost = hostname(dest.domain);
  const log = deps.log ?? nopLogger;
  const emit = (ev: ProgressEvent) => {
    try {
      req.progress?.(ev);
    } catch {
      // not the push's failure
    }
  };
  const has = (d: string) => {
    try {
      deps.content.info(ns, d);
      return true;
    } catch {
      return false;
    }
  };
  const readAll = async (d: Descriptor): Promise<Buffer> => {
    const ra = await deps.content.readerAt(ns, d.digest);
    try {
      const parts: Buffer[] = [];
      for await (const c of ra.stream(0, ra.size)) parts.push(Buffer.from(c));
      return Buffer.concat(parts);
    } finally {
      await ra.close();
    }
  };

  // With platforms named, an index whose other manifests are not all here is replaced by the
  // first matching manifest: a registry refuses an index naming manifests it lacks.
  if (req.platforms?.length && isIndexType(root.mediaType)) {
    const idx = JSON.parse((await readAll(root)).toString("utf8")) as TreeJson;
    const children = idx.manifests ?? [];
    if (!children.every((m) => has(m.digest))) {
      const m = children.find(
        (x) =>
          isImageManifestType(x.mediaType) &&
          x.platform &&
          matchesAny(req.platforms!, x.platform) &&
          has(x.digest),
      );
      if (!m) throw new BerthError("not found", `${req.image}: no manifest here for the platforms asked for`);
      root = { mediaType: m.mediaType, digest: m.digest, size: m.size };
    }
  }

  // Collect: blobs (configs, layers) and manifests in children-first order.
  const blobs = new Map<string, Descriptor>();
  const manifests: { desc: Descriptor; data: Buffer }[] = [];
  const seen = new Set<string>();
  const walk = async (desc: Descriptor, depth: number): Promise<void> => {
    if (seen.has(desc.digest)) return;
    seen.add(desc.digest);
    if (depth > 4) throw new BerthError("invalid argument", `${desc.digest}: indexes nested too deep`);
    if (isIndexType(desc.mediaType) || isImageManifestType(desc.mediaType)) {
      const data = await readAll(desc);
      const j = JSON.parse(data.toString("utf8")) as TreeJson;
      if (isIndexType(desc.mediaType)) {
        for (const m of j.manifests ?? []) {
          const want = !req.platforms?.length || !m.platform || matchesAny(req.platforms, m.platform);
          if (!want && depth > 0) continue;
          if (!has(m.digest)) {
            if (!want) continue;
            throw new BerthError(
              "not found",
              `content ${m.digest} of ${req.image} is missing: pull it with --all-platforms to push the whole index`,
            );
          }
          await walk(m, depth + 1);
        }
      } else {
        if (j.config) blobs.set(j.config.digest, j.config);
        for (const l of j.layers ?? []) blobs.set(l.digest, l);
      }
      manifests.push({ desc, data });
      return;
    }
    blobs.set(desc.digest, desc);
  };
  await walk(root, 0);

  // Blobs, a few at a time.
  const queue = [...blobs.values()];
  const worker = async () => {
    for (let b = queue.shift(); b; b = queue.shift()) {
      req.signal?.throwIfAborted();
      const desc = b;
      const name = `blob-${desc.digest}`;
      const info = deps.content.info(ns, desc.digest);
      const source = info.labels[`${DISTRIBUTION_SOURCE_PREFIX}${destHost}`];
      const mountFrom = source && source !== dest.path ? source.split(",")[0] : undefined;
      emit({ event: "uploading", name, progress: 0, total: desc.size, desc });
      const opened: { close(): Promise<void> }[] = [];
      try {
        const result = await req.client.pushBlob(
          dest,
          desc,
          () => {
            const s = Readable.from(
              (async function* () {
                const ra = await deps.content.readerAt(ns, desc.digest);
                opened.push(ra);
                yield* ra.stream(0, ra.size);
              })(),
            );
            return s;
          },
          { mountFrom },
        );
        emit({
          event: result === "uploaded" ? "complete" : result === "mounted" ? "mounted" : "already exists",
          name,
          progress: desc.size,
          total: desc.size,
          desc,
        });
      } finally {
        for (const o of opened) await o.close().catch(() => {});
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, req.maxConcurrentUploads ?? 3) }, worker));

  // Manifests: children by digest, the root under the reference's tag (or digest).
  for (const m of manifests) {
    req.signal?.throwIfAborted();
    const isRoot = m.desc.digest === root.digest;
    const object = isRoot ? (dest.digest ?? dest.tag ?? "latest") : m.desc.digest;
    if (isRoot && dest.digest && dest.digest !== root.digest)
      throw new BerthError(
        "invalid argument",
        `${req.ref}: the image is ${root.digest}, not the digest the reference names`,
      );
    await req.client.pushManifest(dest, m.desc, m.data, object);
    emit({
      event: "complete",
      name: `${isIndexType(m.desc.mediaType) ? "index" : "manifest"}-${m.desc.digest}`,
      desc: m.desc,
    });
  }
  log.debug("image pushed", { image: req.image, ref: req.ref, digest: root.digest });
  emit({ event: "pushed", name: req.ref, desc: root });
  return root;
}
