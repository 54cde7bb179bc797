// A BlobReader over the daemon's content store, for walking images inside the daemon.
import type { MetadataContentStore } from "../content/metadata.js";
import type { BlobReader } from "./image.js";

/** Reads whole blobs of a namespace from the content store (not found when absent there). */
export function contentStoreReader(store: Pick<MetadataContentStore, "readerAt">, ns: string): BlobReader {
  return {
    async readBlob(digest: string): Promise<Uint8Array> {
      const ra = await store.readerAt(ns, digest);
      try {
        const parts: Buffer[] = [];
        for await (const c of ra.stream(0, ra.size)) parts.push(c);
        return Buffer.concat(parts);
      } finally {
        await ra.close();
      }
    },
  };
}
