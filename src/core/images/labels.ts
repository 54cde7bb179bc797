// The content labels an image's tree carries (containerd's names): what holds a child against
// the garbage collector, where a blob came from, and which snapshot a config was unpacked to.
import { type Index, isImageManifestType, isIndexType, type Manifest } from "./media.js";

export const DISTRIBUTION_SOURCE_PREFIX = "containerd.io/distribution.source.";
export const GC_REF_CONTENT = "containerd.io/gc.ref.content";
export const GC_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot.";

/**
 * The gc.ref.content labels of an index (`.m.<i>`) or a manifest (`.config`, `.l.<i>`), so its
 * children live as long as it does.
 */
export function childrenLabels(doc: Index & Manifest): Record<string, string> {
  const l: Record<string, string> = {};
  (doc.manifests ?? []).forEach((m, i) => {
    l[`${GC_REF_CONTENT}.m.${i}`] = m.digest;
  });
  if (doc.config) l[`${GC_REF_CONTENT}.config`] = doc.config.digest;
  (doc.layers ?? []).forEach((x, i) => {
    l[`${GC_REF_CONTENT}.l.${i}`] = x.digest;
  });
  return l;
}

/** The label naming the top snapshot an image config was unpacked to in `snapshotter`. */
export const snapshotRefLabel = (snapshotter: string) => `${GC_REF_SNAPSHOT}${snapshotter}`;

/** containerd's ingest/progress keys for a descriptor (remotes.MakeRefKey). */
export function refKey(desc: { mediaType: string; digest: string }): string {
  if (isIndexType(desc.mediaType)) return `index-${desc.digest}`;
  if (isImageManifestType(desc.mediaType)) return `manifest-${desc.digest}`;
  if (desc.mediaType.includes("config") || desc.mediaType.endsWith("+json")) return `config-${desc.digest}`;
  if (desc.mediaType.includes("layer")) return `layer-${desc.digest}`;
  return `unknown-${desc.digest}`;
}
