// Streamed unpacking for the pull pipeline: a layer's bytes are handed to an extraction while they
// are written into the content store (ChunkPipe), and the extraction builds the layer's tree in a
// staging directory on the snapshotter's filesystem, not yet inside any snapshot. Once the blob
// is committed (its digest verified), the tree's diff ID matches the image config and the parent
// chain is committed, the tree is renamed into a freshly prepared snapshot's upper directory and
// the snapshot committed under its chain ID (moveStaged). Nothing else ever reaches a snapshot.
import { chmodSync, lchownSync, lstatSync, renameSync } from "node:fs";
import { BerthError } from "../../base/errdefs.js";
import type { Logger } from "../../base/log.js";
import type { Mount } from "../../base/mount.js";
import { type ApplyMode, adoptLowerDirs, applyTar } from "../diff/apply.js";
import { type Compression, diffCompression, openLayer } from "../diff/compression.js";
import { overlayDirs } from "../diff/walking.js";
import type { Descriptor } from "../images/media.js";

/**
 * Bytes a pipe holds before its writer waits (per layer streamed). The less a pull holds at once,
 * the sooner the download's pieces come back to be refilled (pieces.ts): 16 MiB left most of the
 * zstd set's pieces fresh, 8 still lets a layer waiting for a thread download ahead (finding 61).
 */
const PIPE_HIGH_WATER = 8 << 20;

/**
 * A bounded queue of chunks from one writer (a download) to one reader (an extraction). The
 * writer waits while more than `highWater` bytes are queued; once the reader is gone (it
 * finished or failed) writes are dropped and never wait.
 */
export class ChunkPipe implements AsyncIterable<Buffer> {
  private chunks: Buffer[] = [];
  private bytes = 0;
  private ended = false;
  private failed: { err: unknown } | undefined;
  private closed = false;
  private wakeReader: (() => void) | undefined;
  private wakeWriter: (() => void) | undefined;

  constructor(private readonly highWater = PIPE_HIGH_WATER) {}

  private wake(which: "reader" | "writer"): void {
    const w = which === "reader" ? this.wakeReader : this.wakeWriter;
    if (which === "reader") this.wakeReader = undefined;
    else this.wakeWriter = undefined;
    w?.();
  }

  async write(chunk: Buffer): Promise<void> {
    if (this.closed || this.ended || chunk.length === 0) return;
    this.chunks.push(chunk);
    this.bytes += chunk.length;
    this.wake("reader");
    while (this.bytes > this.highWater && !this.closed)
      await new Promise<void>((r) => {
        this.wakeWriter = r;
      });
  }

  /** No more chunks: the reader sees the end once it drained the queue. */
  end(): void {
    this.ended = true;
    this.wake("reader");
  }

  /** The writer failed: the reader gets `err` at its next read. */
  fail(err: unknown): void {
    if (this.ended) return;
    this.failed = { err };
    this.ended = true;
    this.wake("reader");
  }

  /**
   * The reader is gone: drop what is queued, let the writer go on. A read still waiting (a
   * reader that gave up from elsewhere) ends.
   */
  close(): void {
    this.closed = true;
    this.chunks = [];
    this.bytes = 0;
    this.wake("writer");
    this.wake("reader");
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
    try {
      for (;;) {
        if (this.failed) throw this.failed.err;
        const c = this.chunks.shift();
        if (c) {
          this.bytes -= c.length;
          if (this.bytes <= this.highWater) this.wake("writer");
          yield c;
          continue;
        }
        if (this.ended || this.closed) return;
        await new Promise<void>((r) => {
          this.wakeReader = r;
        });
      }
    } finally {
      this.close();
    }
  }
}

/** A layer's tree built in a staging directory. */
export interface StagedLayer {
  dir: string;
  /** sha256 of the uncompressed tar: the layer's diff ID. */
  diffId: string;
  /** Parent directories the layer did not carry (ApplyOptions.implicitDirs). */
  implicitDirs: Set<string>;
}

function compressionOf(desc: Descriptor): Compression {
  try {
    return diffCompression(desc.mediaType);
  } catch {
    throw new Error(`failed to get stream processor for ${desc.mediaType}: no processor for media-type`);
  }
}

/**
 * Extract the layer blob `desc`, read from `src` (compressed bytes, verified against `desc`
 * at their end unless `verify` is false), into the empty directory `dir`: whiteouts as `mode` says (plain for a base layer,
 * overlay for a layer that will sit over parents).
 */
export async function stageLayer(
  dir: string,
  src: AsyncIterable<Buffer>,
  desc: Descriptor,
  mode: ApplyMode,
  opts: { signal?: AbortSignal; log?: Logger; verify?: boolean } = {},
): Promise<StagedLayer> {
  const expect = opts.verify === false ? undefined : { digest: desc.digest, size: desc.size };
  const layer = openLayer(src, compressionOf(desc), { expect });
  const implicitDirs = new Set<string>();
  const r = await applyTar(dir, layer, { mode, implicitDirs, log: opts.log, signal: opts.signal });
  // no walk to measure the tree's disk usage: the snapshot measures it when first asked
  // (docs/performance.md, finding 56)
  return { dir, diffId: r.digest, implicitDirs };
}

/** The upper directory and lowers (top first) of an overlay snapshot's active mounts. */
export function upperOf(mounts: Mount[]): { upper: string; lowers: string[] } {
  const m = mounts[0];
  if (mounts.length === 1 && m) {
    if (m.type === "overlay") {
      const { upper, lower } = overlayDirs(m);
      if (upper) return { upper, lowers: lower };
    } else if ((m.type === "bind" || m.type === "rbind") && !m.options.includes("ro")) {
      return { upper: m.source, lowers: [] };
    }
  }
  throw new BerthError(
    "failed precondition",
    `cannot move a staged layer into mounts ${JSON.stringify(mounts.map((x) => x.type))}`,
  );
}

/**
 * Put a staged tree in place of the (empty) upper directory of a just prepared snapshot: the
 * implicit directories get their lowers' attributes, the root keeps the owner and mode the
 * snapshotter gave the upper directory, then one rename replaces it.
 */
export function moveStaged(staged: StagedLayer, mounts: Mount[], log?: Logger): void {
  const { upper, lowers } = upperOf(mounts);
  if (lowers.length > 0 && staged.implicitDirs.size > 0)
    adoptLowerDirs(staged.dir, staged.implicitDirs, lowers, { log });
  const st = lstatSync(upper);
  if (!st.isDirectory()) throw new Error(`${upper} is not a directory`);
  const own = lstatSync(staged.dir);
  if (own.uid !== st.uid || own.gid !== st.gid) lchownSync(staged.dir, st.uid, st.gid);
  chmodSync(staged.dir, st.mode & 0o7777);
  // rename(2) replaces an empty directory
  renameSync(staged.dir, upper);
}
