// The `walking` differ (containerd's io.containerd.differ.v1 "walking"): applies layer blobs
// from the content store onto mounts, and computes layers from pairs of mounts into it.
import { createHash, randomBytes } from "node:crypto";
import { closeSync, mkdtempSync, openSync, rmdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  BerthError,
  errInvalidArgument,
  errNotImplemented,
  isAlreadyExists,
  isKind,
} from "../../base/errdefs.js";
import { type Logger, nopLogger } from "../../base/log.js";
import type { Mount } from "../../base/mount.js";
import { syncfs } from "../../sys/mknod.js";
import type { ContentWriter, Info, ReaderAt } from "../content/local.js";
import type { Labels } from "../metadata/db.js";
import { withTempMount } from "../mount/mount.js";
import { splitLowerdir } from "../mount/options.js";
import { type ApplyMode, applyTar } from "./apply.js";
import { type Compression, compress, diffCompression, MediaType, openLayer } from "./compression.js";
import { writeDiff } from "./diff.js";

export const UNCOMPRESSED_LABEL = "containerd.io/uncompressed";

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

/** What the differ needs of the (namespaced) content store; MetadataContentStore fits. */
export interface DiffContentStore {
  readerAt(ns: string, dgst: string): Promise<ReaderAt>;
  info(ns: string, dgst: string): Info | Promise<Info>;
  update(ns: string, info: { digest: string; labels?: Labels }, paths?: string[]): Info | Promise<Info>;
  writer(
    ns: string,
    ref: string,
    opts?: { total?: number; expected?: string; lease?: string },
  ): Promise<ContentWriter>;
  abort(ns: string, ref: string, lease?: string): Promise<void>;
}

export interface ApplyOpts {
  /** syncfs the target after applying (ApplyRequest.sync_fs). */
  syncFs?: boolean;
  signal?: AbortSignal;
}

export interface CompareOpts {
  /** Default: tar+gzip. */
  mediaType?: string;
  /** Ingest ref; a unique one is made up when empty. */
  ref?: string;
  labels?: Labels;
  sourceDateEpoch?: Date;
  lease?: string;
  signal?: AbortSignal;
}

/** An error that keeps the kind of its cause, with containerd's "context: cause" message. */
function wrap(err: unknown, context: string): Error {
  const msg = err instanceof Error ? err.message : String(err);
  if (err instanceof BerthError) {
    const e = new BerthError(err.kind, undefined, { cause: err });
    e.message = `${context}: ${msg}`;
    return e;
  }
  return new Error(`${context}: ${msg}`, { cause: err });
}

function option(m: Mount, prefix: string): string | undefined {
  for (const o of m.options) if (o.startsWith(prefix)) return o.slice(prefix.length);
  return undefined;
}

/** upperdir and lowerdirs (top first) of an overlay mount; upper undefined when read-only. */
export function overlayDirs(m: Mount): { upper?: string; lower: string[] } {
  const lower = option(m, "lowerdir=");
  return { upper: option(m, "upperdir="), lower: lower ? splitLowerdir(lower).lower : [] };
}

const isBind = (m: Mount) => m.type === "bind" || m.type === "rbind";
const readOnly = (m: Mount) => m.options.includes("ro");

/** A path as one element of a lowerdir list (":" and "\\" escaped). */
const escapeLower = (p: string) => p.replace(/[\\:]/g, "\\$&");

/**
 * The mounts made read-only, as containerd does for a diff's upper side: "ro" for plain mounts;
 * an overlay loses upperdir and workdir and gets the upper directory as its top lowerdir (so it
 * can be mounted while the writable overlay is still in use).
 */
export function readonlyMounts(mounts: Mount[]): Mount[] {
  return mounts.map((m) => {
    if (m.type === "overlay") {
      const upper = option(m, "upperdir=");
      const opts = m.options.filter((o) => !o.startsWith("upperdir=") && !o.startsWith("workdir="));
      return {
        ...m,
        options: upper
          ? opts.map((o) => (o.startsWith("lowerdir=") ? `lowerdir=${escapeLower(upper)}:${o.slice(9)}` : o))
          : opts,
      };
    }
    return { ...m, options: [...m.options.filter((o) => o !== "rw" && o !== "ro"), "ro"] };
  });
}

/** Run fn on a directory that shows `mounts`, mounting only when there is no shortcut. */
async function withView<T>(mounts: Mount[], fn: (root: string) => Promise<T>): Promise<T> {
  if (mounts.length === 0) {
    const dir = mkdtempSync(join(tmpdir(), "berth-empty-"));
    try {
      return await fn(dir);
    } finally {
      rmdirSync(dir);
    }
  }
  if (mounts.length === 1 && isBind(mounts[0]!)) return fn(mounts[0]!.source);
  return withTempMount(readonlyMounts(mounts), fn);
}

/**
 * A directory the shortcuts apply straight into: only an absolute path. An empty one would be
 * taken as "/" (the host's root) and a relative one as berthd's working directory, where a
 * mount (containerd's only way) would fail or mean something else.
 */
function directRoot(p: string): string {
  if (!p.startsWith("/"))
    throw errInvalidArgument(`cannot apply a layer onto ${JSON.stringify(p)}: not an absolute path`);
  return p;
}

function uniqueRef(): string {
  return `${process.hrtime.bigint()}-${randomBytes(3).toString("base64url")}`;
}

function syncDir(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    syncfs(fd);
  } finally {
    closeSync(fd);
  }
}

export class WalkingDiffer {
  constructor(
    private readonly store: DiffContentStore,
    private readonly log: Logger = nopLogger,
  ) {}

  /**
   * Apply the layer `desc` onto `mounts`: straight into an overlay's upperdir (overlay whiteouts)
   * or a bind mount's source, otherwise through a temporary mount (plain whiteouts). Returns the
   * uncompressed layer's descriptor (its digest is the diff ID).
   */
  async apply(ns: string, desc: Descriptor, mounts: Mount[], opts: ApplyOpts = {}): Promise<Descriptor> {
    const t0 = performance.now();
    let compression: Compression;
    try {
      compression = diffCompression(desc.mediaType);
    } catch {
      throw new Error(`failed to get stream processor for ${desc.mediaType}: no processor for media-type`);
    }
    let ra: ReaderAt;
    try {
      ra = await this.store.readerAt(ns, desc.digest);
    } catch (err) {
      throw wrap(err, "failed to get reader from content store");
    }
    try {
      const run = async (root: string, mode: ApplyMode, parents?: string[]) => {
        const layer = openLayer(ra.stream(0, ra.size, 1 << 20), compression, { expect: desc });
        const r = await applyTar(root, layer, {
          mode,
          parents,
          log: this.log,
          signal: opts.signal,
        });
        if (opts.syncFs) syncDir(root);
        return r;
      };
      let result: Awaited<ReturnType<typeof run>>;
      const m = mounts[0];
      if (mounts.length === 1 && m!.type === "overlay" && overlayDirs(m!).upper) {
        const { upper, lower } = overlayDirs(m!);
        result = await run(directRoot(upper!), "overlay", lower);
      } else if (mounts.length === 1 && isBind(m!) && !readOnly(m!)) {
        result = await run(directRoot(m!.source), "plain");
      } else {
        if (mounts.length === 0) throw errInvalidArgument("no mounts to apply the layer onto");
        result = await withTempMount(mounts, (root) => run(root, "plain"));
      }
      this.log.debug("diff applied", {
        d: `${((performance.now() - t0) / 1000).toFixed(3)}s`,
        digest: desc.digest,
        size: desc.size,
        media: desc.mediaType,
      });
      return { mediaType: MediaType.OciLayer, digest: result.digest, size: result.size };
    } finally {
      await ra.close();
    }
  }

  /**
   * The layer that turns `lower` into `upper`, written to the content store with the label
   * containerd.io/uncompressed; returns its descriptor.
   */
  async compare(ns: string, lower: Mount[], upper: Mount[], opts: CompareOpts = {}): Promise<Descriptor> {
    const mediaType = opts.mediaType || MediaType.OciLayerGzip;
    let kind: "" | "gzip" | "zstd";
    switch (mediaType) {
      case MediaType.OciLayer:
        kind = "";
        break;
      case MediaType.OciLayerGzip:
        kind = "gzip";
        break;
      case MediaType.OciLayerZstd:
        kind = "zstd";
        break;
      default:
        throw errNotImplemented(`unsupported diff media type: ${mediaType}`);
    }
    if (upper.length === 0) throw errInvalidArgument("no upper mounts to compare");

    // Overlay shortcut: read the upper layer's own directory when lower is exactly its lowerdirs.
    const u = upper.length === 1 && upper[0]!.type === "overlay" ? overlayDirs(upper[0]!) : undefined;
    let overlayUpper: string | undefined;
    if (u?.upper) {
      const l = lower.length === 1 ? lower[0]! : undefined;
      const same =
        (l?.type === "overlay" &&
          !overlayDirs(l).upper &&
          overlayDirs(l).lower.join("\0") === u.lower.join("\0")) ||
        (l !== undefined && isBind(l) && u.lower.length === 1 && l.source === u.lower[0]);
      if (same) overlayUpper = u.upper;
    }

    return withView(lower, async (lowerRoot) => {
      const produce = (upperRoot: string, overlay: boolean) =>
        this.write(
          ns,
          writeDiff(lowerRoot, upperRoot, {
            overlayUpper: overlay,
            sourceDateEpoch: opts.sourceDateEpoch,
            signal: opts.signal,
          }),
          mediaType,
          kind,
          opts,
        );
      if (overlayUpper) return produce(overlayUpper, true);
      return withView(upper, (upperRoot) => produce(upperRoot, false));
    });
  }

  private async write(
    ns: string,
    tar: AsyncIterable<Buffer>,
    mediaType: string,
    kind: "" | "gzip" | "zstd",
    opts: CompareOpts,
  ): Promise<Descriptor> {
    const newRef = !opts.ref;
    const ref = opts.ref || uniqueRef();
    let w: ContentWriter;
    try {
      w = await this.store.writer(ns, ref, { lease: opts.lease });
    } catch (err) {
      throw wrap(err, "failed to open writer");
    }
    let open = true;
    try {
      if (!newRef) await w.truncate(0);
      const tarHash = createHash("sha256");
      async function* hashed(): AsyncGenerator<Buffer> {
        for await (const c of tar) {
          tarHash.update(c);
          yield c;
        }
      }
      const out = kind === "" ? hashed() : compress(hashed(), kind);
      try {
        for await (const c of out) await w.write(c);
      } catch (err) {
        throw wrap(err, kind === "" ? "failed to write diff" : "failed to write compressed diff");
      }
      const uncompressed = `sha256:${tarHash.digest("hex")}`;
      const labels: Labels = { ...opts.labels, [UNCOMPRESSED_LABEL]: uncompressed };
      const dgst = w.digest();
      try {
        await w.commit(0, dgst, labels);
      } catch (err) {
        if (!isAlreadyExists(err)) throw wrap(err, "failed to commit");
      }
      open = false;
      let info: Info;
      try {
        info = await this.store.info(ns, dgst);
      } catch (err) {
        throw wrap(err, "failed to get info from content store");
      }
      if (!info.labels[UNCOMPRESSED_LABEL]) {
        try {
          await this.store.update(ns, { digest: dgst, labels: { [UNCOMPRESSED_LABEL]: uncompressed } }, [
            `labels.${UNCOMPRESSED_LABEL}`,
          ]);
        } catch (err) {
          throw wrap(err, "error setting uncompressed label");
        }
      }
      return { mediaType, digest: info.digest, size: info.size };
    } catch (err) {
      if (open) {
        await w.close().catch(() => {});
        if (newRef)
          await this.store.abort(ns, ref, opts.lease).catch((e) => {
            if (!isKind(e, "not found")) this.log.warn("failed to delete diff upload", { ref, error: e });
          });
      }
      throw err;
    }
  }
}
