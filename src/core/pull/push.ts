// The push pipeline, run inside the daemon (the transfer service's image store → registry path):
// walk an image's tree in the content store, upload the blobs the registry lacks (mounting them
// from the repository they were pulled from when that is on the same registry), then PUT the
// manifests children first and the root under the reference's tag (or digest).
import { Readable } from "node:stream";
import { BerthError, isNotFound } from "../../base/errdefs.js";
import { type Logger, nopLogger } from "../../base/log.js";
import type { Platform } from "../../base/platforms.js";
import type { MetadataContentStore } from "../content/metadata.js";
import { contentStoreReader } from "../images/content.js";
import { manifestForPlatform, platformEntries, platformMatcher, walk } from "../images/image.js";
import { DISTRIBUTION_SOURCE_PREFIX } from "../images/labels.js";
import {
  type Descriptor,
  type Index,
  isImageManifestType,
  isIndexType,
  type Manifest,
} from "../images/media.js";
import type { ImageStore } from "../images/store.js";
import { hostname, parseNormalized } from "../reference.js";
import type { RegistryClient } from "../remotes/client.js";
import type { ProgressEvent } from "./progress.js";

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
  // manifest for them: a registry refuses an index naming manifests it lacks.
  const wanted = platformMatcher(req.platforms ?? []);
  if (req.platforms?.length && isIndexType(root.mediaType)) {
    const idx = JSON.parse((await readAll(root)).toString("utf8")) as Index;
    if (!(idx.manifests ?? []).every((m) => has(m.digest))) {
      try {
        root = (await manifestForPlatform(contentStoreReader(deps.content, ns), root, wanted)).desc;
      } catch (err) {
        if (!isNotFound(err)) throw err;
        throw new BerthError("not found", `${req.image}: no manifest here for the platforms asked for`);
      }
      root = { mediaType: root.mediaType, digest: root.digest, size: root.size };
    }
  }

  // Collect: blobs (configs, layers) and manifests in children-first order.
  const blobs = new Map<string, Descriptor>();
  const manifests: { desc: Descriptor; data: Buffer }[] = [];
  const docs = new Map<string, Buffer>();
  await walk(root, {
    enter: async (desc, { depth }) => {
      if (!isIndexType(desc.mediaType) && !isImageManifestType(desc.mediaType)) {
        blobs.set(desc.digest, desc);
        return;
      }
      const data = await readAll(desc);
      docs.set(desc.digest, data);
      const j = JSON.parse(data.toString("utf8")) as Index & Manifest;
      if (!isIndexType(desc.mediaType)) {
        if (j.config) blobs.set(j.config.digest, j.config);
        for (const l of j.layers ?? []) blobs.set(l.digest, l);
        return;
      }
      // the root index is pushed whole (its absent manifests fail); nested ones for the platforms
      const matching = new Set(platformEntries(j, wanted));
      const kids: Descriptor[] = [];
      for (const m of j.manifests ?? []) {
        const want = matching.has(m);
        if (!want && depth > 0) continue;
        if (!has(m.digest)) {
          if (!want) continue;
          throw new BerthError(
            "not found",
            `content ${m.digest} of ${req.image} is missing: pull it with --all-platforms to push the whole index`,
          );
        }
        kids.push(m);
      }
      return kids;
    },
    leave: (desc) => {
      const data = docs.get(desc.digest);
      if (data) manifests.push({ desc, data });
    },
  });

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
