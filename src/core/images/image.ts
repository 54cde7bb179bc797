// Walking an image: from its target (an index or a manifest) to the manifest for a platform, its
// config, diff IDs and chain IDs. The content comes through a BlobReader, so the same walk serves
// the CLI (content read over gRPC) and the daemon (its content store).
//
// Platform selection follows containerd's images.Manifest: an index's entries that carry a
// matching platform, or none, are candidates (nested indexes are walked), the preferred platform
// first; an entry without a platform is taken only when its config names a matching platform; a
// target that is itself a manifest is taken whatever its platform.
import { createHash } from "node:crypto";
import { BerthError, isNotFound } from "../../base/errdefs.js";
import { formatPlatform, hostPlatform, type Platform, platformMatches } from "../../base/platforms.js";
import {
  configPlatform,
  type Descriptor,
  type ImageConfig,
  type Index,
  isImageManifestType,
  isIndexType,
  type Manifest,
  toPlatform,
} from "./media.js";

/** Where image content comes from. Throws a not-found BerthError for a blob that is not there. */
export interface BlobReader {
  readBlob(digest: string): Promise<Uint8Array>;
}

/** Which platforms a walk wants, and which of two it prefers. */
export interface PlatformMatcher {
  match(p: Platform): boolean;
  /** Lower is preferred; only compared among matching platforms. */
  rank(p: Platform): number;
  /** For messages: the platforms wanted. */
  toString(): string;
}

/** Any of `wanted`, the earlier ones preferred. An empty list matches every platform. */
export function platformMatcher(wanted: Platform[]): PlatformMatcher {
  if (wanted.length === 0) return allPlatforms;
  return {
    match: (p) => wanted.some((w) => platformMatches(w, p)),
    rank: (p) => {
      const i = wanted.findIndex((w) => platformMatches(w, p));
      return i < 0 ? wanted.length : i;
    },
    toString: () => wanted.map(formatPlatform).join(", "),
  };
}

/** Every platform. */
export const allPlatforms: PlatformMatcher = {
  match: () => true,
  rank: () => 0,
  toString: () => "all platforms",
};

/** This machine's platform (containerd's platforms.Default()). */
export const hostMatcher = (): PlatformMatcher => platformMatcher([hostPlatform()]);

const asMatcher = (p: PlatformMatcher | Platform[]): PlatformMatcher =>
  Array.isArray(p) ? platformMatcher(p) : p;

/** Indexes nested deeper than this are refused (a loop or a hostile image). */
export const MAX_INDEX_DEPTH = 5;

export async function readJson<T>(reader: BlobReader, digest: string): Promise<T> {
  const data = await reader.readBlob(digest);
  try {
    return JSON.parse(Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString("utf8")) as T;
  } catch (err) {
    throw new BerthError("invalid argument", `${digest}: not valid JSON (${(err as Error).message})`);
  }
}

/** The direct children of a descriptor: an index's manifests, a manifest's config and layers. */
export async function children(reader: BlobReader, desc: Descriptor): Promise<Descriptor[]> {
  if (isIndexType(desc.mediaType)) return (await readJson<Index>(reader, desc.digest)).manifests ?? [];
  if (isImageManifestType(desc.mediaType))
    return manifestChildren(await readJson<Manifest>(reader, desc.digest));
  return [];
}

/** A manifest's config and layers, in that order. */
export function manifestChildren(m: Manifest): Descriptor[] {
  return [...(m.config ? [m.config] : []), ...(m.layers ?? [])];
}

/**
 * The entries of an index a platform-limited walk follows: nested indexes, entries without a
 * platform (their config decides later) and entries whose platform matches.
 */
export function platformEntries(index: Index, platforms: PlatformMatcher | Platform[]): Descriptor[] {
  const m = asMatcher(platforms);
  return (index.manifests ?? []).filter((d) => !d.platform || m.match(toPlatform(d.platform)));
}

/** Where a walk is: how deep, and the platform of the nearest index entry above that named one. */
export interface WalkStep {
  depth: number;
  platform?: Platform;
}

/** What a walk does at each descriptor (containerd's images.Handler, split in two). */
export interface WalkHandler {
  /** Visit a descriptor; returns the children to walk into (none: a leaf). */
  enter(desc: Descriptor, at: WalkStep): Promise<Descriptor[] | undefined>;
  /** After its children were walked (post-order: children before the documents naming them). */
  leave?(desc: Descriptor, at: WalkStep): Promise<void> | void;
}

/**
 * Walk the tree under `root` depth first, each digest once. `parallel` walks siblings at once
 * (fetching); otherwise in order (writing archives, pushing children first).
 */
export async function walk(
  root: Descriptor,
  h: WalkHandler,
  opts: { parallel?: boolean } = {},
): Promise<void> {
  const seen = new Set<string>();
  const visit = async (desc: Descriptor, at: WalkStep): Promise<void> => {
    if (seen.has(desc.digest)) return;
    seen.add(desc.digest);
    if (at.depth >= MAX_INDEX_DEPTH && isIndexType(desc.mediaType))
      throw new BerthError("invalid argument", `${desc.digest}: indexes nested too deep`);
    const kids = (await h.enter(desc, at)) ?? [];
    const step = (d: Descriptor): WalkStep => ({
      depth: at.depth + 1,
      platform: d.platform ? toPlatform(d.platform) : at.platform,
    });
    if (opts.parallel) await Promise.all(kids.map((d) => visit(d, step(d))));
    else for (const d of kids) await visit(d, step(d));
    await h.leave?.(desc, at);
  };
  await visit(root, { depth: 0, platform: root.platform && toPlatform(root.platform) });
}

/** The image config a manifest names. */
export async function imageConfig(reader: BlobReader, manifest: Manifest): Promise<ImageConfig> {
  if (!manifest.config) throw new BerthError("invalid argument", "manifest has no config");
  return readJson<ImageConfig>(reader, manifest.config.digest);
}

/** The manifest picked for a platform. */
export interface PlatformManifest {
  /** The manifest's descriptor (with the index entry's platform when it came from one). */
  desc: Descriptor;
  manifest: Manifest;
  /** The platform it is for: the index entry's, else its config's (when that was read). */
  platform?: Platform;
}

/**
 * The manifest for `platforms` under `target` (the target itself when it is a manifest). A
 * candidate whose content is not there is passed over. Not found, naming the platforms, when no
 * manifest fits.
 */
export async function manifestForPlatform(
  reader: BlobReader,
  target: Descriptor,
  platforms: PlatformMatcher | Platform[],
): Promise<PlatformManifest> {
  const m = asMatcher(platforms);
  if (isImageManifestType(target.mediaType)) {
    const manifest = await readJson<Manifest>(reader, target.digest);
    return { desc: target, manifest, platform: target.platform && toPlatform(target.platform) };
  }
  if (!isIndexType(target.mediaType))
    throw new BerthError("invalid argument", `${target.digest}: unexpected media type ${target.mediaType}`);
  const found = await pick(reader, target, m, 0);
  if (!found)
    throw new BerthError("not found", `no match for platform in manifest ${target.digest}: ${m.toString()}`);
  return found;
}

/** The best manifest for `m` under an index, or undefined. */
async function pick(
  reader: BlobReader,
  index: Descriptor,
  m: PlatformMatcher,
  depth: number,
): Promise<PlatformManifest | undefined> {
  if (depth >= MAX_INDEX_DEPTH)
    throw new BerthError("invalid argument", `${index.digest}: indexes nested too deep`);
  const idx = await readJson<Index>(reader, index.digest);
  // preferred platforms first; entries without a platform after those with one (stable otherwise)
  const rank = (d: Descriptor) => (d.platform ? m.rank(toPlatform(d.platform)) : Number.MAX_SAFE_INTEGER);
  const candidates = platformEntries(idx, m)
    .map((d, i) => ({ d, i, r: rank(d) }))
    .sort((a, b) => a.r - b.r || a.i - b.i)
    .map((x) => x.d);
  for (const d of candidates) {
    try {
      if (isIndexType(d.mediaType)) {
        const r = await pick(reader, d, m, depth + 1);
        if (r) return r;
        continue;
      }
      if (!isImageManifestType(d.mediaType)) continue; // attestations and other artifacts
      const manifest = await readJson<Manifest>(reader, d.digest);
      if (d.platform) return { desc: d, manifest, platform: toPlatform(d.platform) };
      if (!manifest.config) continue;
      const plat = configPlatform(await readJson<ImageConfig>(reader, manifest.config.digest));
      if (plat && m.match(plat)) return { desc: d, manifest, platform: plat };
    } catch (err) {
      if (!isNotFound(err)) throw err; // content not here: the next candidate may be
    }
  }
  return undefined;
}

/**
 * The platforms an image is for: an index's entries' platforms (nested indexes walked, entries
 * without one left out), in index order; a manifest's config's platform.
 */
export async function imagePlatforms(reader: BlobReader, target: Descriptor, depth = 0): Promise<Platform[]> {
  if (depth >= MAX_INDEX_DEPTH)
    throw new BerthError("invalid argument", `${target.digest}: indexes nested too deep`);
  if (isIndexType(target.mediaType)) {
    const out: Platform[] = [];
    for (const d of (await readJson<Index>(reader, target.digest)).manifests ?? []) {
      if (d.platform) out.push(toPlatform(d.platform));
      else if (isIndexType(d.mediaType)) out.push(...(await imagePlatforms(reader, d, depth + 1)));
    }
    return out;
  }
  if (!isImageManifestType(target.mediaType)) return [];
  const manifest = await readJson<Manifest>(reader, target.digest);
  if (!manifest.config) return [];
  const p = configPlatform(await imageConfig(reader, manifest));
  return p ? [p] : [];
}

/** The chain IDs of a list of diff IDs (OCI image spec: each layer's chain digests its parent's). */
export function chainIds(diffIds: string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) {
    const prev = out[out.length - 1];
    out.push(prev ? `sha256:${createHash("sha256").update(`${prev} ${d}`).digest("hex")}` : d);
  }
  return out;
}

/** An image resolved for one platform: what unpacking it and running it need. */
export interface ResolvedImage {
  target: Descriptor;
  /** The manifest's descriptor. */
  manifestDesc: Descriptor;
  manifest: Manifest;
  platform?: Platform;
  configDesc: Descriptor;
  config: ImageConfig;
  /** The manifest's layers, one per diff ID. */
  layers: Descriptor[];
  diffIds: string[];
  chainIds: string[];
  /** The rootfs's snapshot name: the last chain ID ("" for an image without layers). */
  topChainId: string;
}

/** Resolve `target` for a platform: its manifest, config, layers, diff IDs and chain IDs. */
export async function resolvedImage(
  reader: BlobReader,
  target: Descriptor,
  platforms: PlatformMatcher | Platform[],
): Promise<ResolvedImage> {
  const pm = await manifestForPlatform(reader, target, platforms);
  const configDesc = pm.manifest.config;
  if (!configDesc) throw new BerthError("invalid argument", `manifest ${pm.desc.digest} has no config`);
  const config = await readJson<ImageConfig>(reader, configDesc.digest);
  const layers = pm.manifest.layers ?? [];
  const diffIds = config.rootfs?.diff_ids ?? [];
  if (layers.length !== diffIds.length)
    throw new BerthError(
      "invalid argument",
      `mismatched image rootfs and manifest layers: ${diffIds.length} diff IDs, ${layers.length} layers`,
    );
  const chain = chainIds(diffIds);
  return {
    target,
    manifestDesc: pm.desc,
    manifest: pm.manifest,
    platform: pm.platform ?? configPlatform(config),
    configDesc,
    config,
    layers,
    diffIds,
    chainIds: chain,
    topChainId: chain[chain.length - 1] ?? "",
  };
}

/** Whether a snapshot named `key` exists (in the snapshotter being asked about). */
export type SnapshotExists = (key: string) => Promise<boolean>;

/**
 * Whether an image's rootfs is unpacked: its top chain ID is a committed snapshot (a chain's
 * snapshot is committed only on its parent's, so the top one stands for all). An image without
 * layers is never unpacked.
 */
export async function isUnpacked(chain: string[], exists: SnapshotExists): Promise<boolean> {
  const top = chain[chain.length - 1];
  return top ? exists(top) : false;
}

/**
 * The layers still to unpack: the index of the first layer whose chain is missing (every layer
 * from there on needs applying), or `chain.length` when all are there. Checks from the top down,
 * so an unpacked image costs one lookup.
 */
export async function firstMissingLayer(chain: string[], exists: SnapshotExists): Promise<number> {
  let i = chain.length;
  while (i > 0 && !(await exists(chain[i - 1]!))) i--;
  return i;
}
