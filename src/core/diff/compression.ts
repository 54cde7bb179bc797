// Layer media types and (de)compression streams: gzip through node:zlib, zstd through the `zstd`
// binary (Node 20 has no zstd), as async iterables of buffers.
import { createHash, type Hash } from "node:crypto";
import { closeSync } from "node:fs";
import { Socket, type SocketConstructorOpts } from "node:net";
import { Readable } from "node:stream";
import { zlib } from "../../base/builtin.js";
import { BerthError, errNotImplemented } from "../../base/errdefs.js";
import { type FastChild, fastSpawnAsync, lookPath, makePipe } from "../../sys/spawn.js";

export const MediaType = {
  OciLayer: "application/vnd.oci.image.layer.v1.tar",
  OciLayerGzip: "application/vnd.oci.image.layer.v1.tar+gzip",
  OciLayerZstd: "application/vnd.oci.image.layer.v1.tar+zstd",
  OciLayerNonDistributable: "application/vnd.oci.image.layer.nondistributable.v1.tar",
  DockerLayer: "application/vnd.docker.image.rootfs.diff.tar",
  DockerLayerGzip: "application/vnd.docker.image.rootfs.diff.tar.gzip",
  DockerLayerForeign: "application/vnd.docker.image.rootfs.foreign.diff.tar",
  DockerLayerForeignGzip: "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
} as const;

/** "" (a plain tar), "gzip", "zstd", or "unknown" (may be compressed: detect from the bytes). */
export type Compression = "" | "gzip" | "zstd" | "unknown";

/**
 * The compression a layer media type announces, as containerd's images.DiffCompression decides
 * it. Types that are not layers are NotImplemented.
 */
export function diffCompression(mediaType: string): Compression {
  const parts = mediaType === "" ? [""] : mediaType.split("+");
  const base = parts[0]!;
  const ext = parts.slice(1).sort();
  switch (base) {
    case MediaType.DockerLayer:
    case MediaType.DockerLayerForeign:
      return ext.length > 0 ? "" : "unknown";
    case MediaType.DockerLayerGzip:
    case MediaType.DockerLayerForeignGzip:
      return ext.length > 0 ? "" : "gzip";
    case MediaType.OciLayer:
    case MediaType.OciLayerNonDistributable: {
      const last = ext[ext.length - 1];
      if (last === "gzip" || last === "zstd") return last;
      return "";
    }
    default:
      throw errNotImplemented(`unrecognised mediatype ${mediaType}`);
  }
}

/** What the first bytes of a stream say it is. */
export function detectCompression(head: Uint8Array): "gzip" | "zstd" | "" {
  if (head.length >= 3 && head[0] === 0x1f && head[1] === 0x8b && head[2] === 0x08) return "gzip";
  if (head.length >= 4 && head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd)
    return "zstd";
  return "";
}

/**
 * Chunks whose memory goes back to its owner once a decompressor has taken their bytes in (an
 * extraction thread hands its input pieces back to the daemon's event loop, which refills them:
 * memory touched for the first time costs a page fault per 4 KiB on this VM, finding 61).
 */
const onConsumed = new WeakMap<Buffer, () => void>();

/** Call `fn` once a decompressor here is done with `chunk` (it may never be, if none reads it). */
export function whenConsumed(chunk: Buffer, fn: () => void): void {
  onConsumed.set(chunk, fn);
}

function consumed(chunk: Buffer): void {
  const fn = onConsumed.get(chunk);
  if (fn) {
    onConsumed.delete(chunk);
    fn();
  }
}

/** Output chunk size of the gzip decoder: large chunks mean fewer threadpool round trips. */
const GUNZIP_CHUNK = 1 << 20;

/** A layer's tar bytes; `tarDigest` resolves, once they were all read, to their sha256 and size. */
export interface LayerStream extends AsyncIterable<Buffer> {
  tarDigest(): Promise<{ digest: string; size: number }>;
}

export interface OpenLayerOptions {
  /** Verify the (compressed) blob: a digest or size mismatch fails the stream at its end. */
  expect?: { digest: string; size: number };
}

function mismatch(
  expect: { digest: string; size: number },
  digest: string,
  size: number,
): BerthError | undefined {
  if (expect.size > 0 && size !== expect.size)
    return new BerthError("data loss", `content ${expect.digest} has ${size} bytes, expected ${expect.size}`);
  if (digest && digest !== expect.digest)
    return new BerthError("data loss", `content ${expect.digest} failed verification: digest is ${digest}`);
  return undefined;
}

function hasherFor(digest: string): { alg: string; hash: Hash | undefined } {
  const alg = digest.slice(0, Math.max(0, digest.indexOf(":")));
  try {
    return { alg, hash: alg ? createHash(alg) : undefined };
  } catch {
    return { alg: "", hash: undefined }; // an algorithm node lacks: the store verified it on commit
  }
}

/** The blob's bytes, hashed as they pass; a mismatch fails at the end. */
async function* verified(
  src: AsyncIterable<Buffer>,
  expect: { digest: string; size: number },
): AsyncGenerator<Buffer> {
  const { alg, hash } = hasherFor(expect.digest);
  let n = 0;
  for await (const chunk of src) {
    hash?.update(chunk);
    n += chunk.length;
    yield chunk;
  }
  const err = mismatch(expect, hash ? `${alg}:${hash.digest("hex")}` : "", n);
  if (err) throw err;
}

/**
 * Open a layer blob's bytes as its tar stream: verified against `expect`, decompressed as
 * `compression` (and the magic bytes) say, with the tar's sha256 computed on the way. A chunk
 * of a zstd layer is valid only until the next one is asked for (filterProcess reuses its
 * buffer): the consumer must be done with it by then, as applyTar is.
 *
 * (Inflating and hashing in a worker thread was measured and lost: node's gunzip already runs
 * in the threadpool alongside the caller, and a worker serialises inflating with hashing.)
 */
export function openLayer(
  src: AsyncIterable<Buffer>,
  compression: Compression,
  opts: OpenLayerOptions = {},
): LayerStream {
  let result: { digest: string; size: number } | undefined;
  let settle!: (r: { digest: string; size: number }) => void;
  let fail!: (e: unknown) => void;
  const digest = new Promise<{ digest: string; size: number }>((resolve, reject) => {
    settle = resolve;
    fail = reject;
  });
  digest.catch(() => {});
  async function* run(): AsyncGenerator<Buffer> {
    try {
      if (compression === "") {
        yield* hashed(opts.expect ? verified(src, opts.expect) : src);
        return;
      }
      const { head, rest } = await peek(src, 4);
      const kind = detectCompression(head);
      const body = opts.expect ? verified(rest, opts.expect) : rest;
      if (kind === "gzip") yield* hashed(gunzip(body));
      else if (kind === "zstd") yield* hashed(zstdDecompress(body, true));
      else yield* hashed(body);
    } catch (err) {
      fail(err);
      throw err;
    } finally {
      if (result) settle(result);
      else fail(new Error("layer stream was not read to its end"));
    }
  }
  async function* hashed(s: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
    const h = createHash("sha256");
    let n = 0;
    for await (const c of s) {
      h.update(c);
      n += c.length;
      yield c;
    }
    result = { digest: `sha256:${h.digest("hex")}`, size: n };
  }
  return {
    [Symbol.asyncIterator]: () => run(),
    tarDigest: () => digest,
  };
}

/** The first `n` bytes (or fewer at the end) and the whole stream again. */
async function peek(
  src: AsyncIterable<Buffer>,
  n: number,
): Promise<{ head: Buffer; rest: AsyncGenerator<Buffer> }> {
  const it = src[Symbol.asyncIterator]();
  const parts: Buffer[] = [];
  let len = 0;
  let ended = false;
  while (len < n) {
    const r = await it.next();
    if (r.done) {
      ended = true;
      break;
    }
    parts.push(r.value);
    len += r.value.length;
  }
  // one chunk is passed on as it is (a piece handed back once consumed stays itself, pieces.ts)
  const head = parts.length === 1 ? parts[0]! : Buffer.concat(parts, len);
  async function* rest(): AsyncGenerator<Buffer> {
    let finished = ended;
    try {
      if (head.length > 0) yield head;
      while (!finished) {
        const r = await it.next();
        if (r.done) finished = true;
        else yield r.value;
      }
    } finally {
      if (!finished) await it.return?.();
    }
  }
  return { head, rest: rest() };
}

/**
 * Decompress `src` as `compression` says: "" passes the bytes through; any other value looks at
 * the magic bytes (as containerd does), so a mislabelled uncompressed layer still applies.
 */
export async function* decompress(
  src: AsyncIterable<Buffer>,
  compression: Compression,
): AsyncGenerator<Buffer> {
  if (compression === "") {
    yield* src;
    return;
  }
  const { head, rest } = await peek(src, 4);
  const kind = detectCompression(head);
  if (kind === "gzip") yield* gunzip(rest);
  else if (kind === "zstd") yield* zstdDecompress(rest, false);
  else yield* rest;
}

async function* gunzip(src: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  const gz = zlib().createGunzip({ chunkSize: GUNZIP_CHUNK });
  // A larger readable buffer lets the decoder run ahead (in the threadpool) while the caller
  // works on the previous chunks.
  (gz as unknown as { _readableState: { highWaterMark: number } })._readableState.highWaterMark =
    4 * GUNZIP_CHUNK;
  // Fed by hand rather than piped: a write's callback says when zlib has taken the chunk in.
  // The next chunk is asked for while zlib works on this one, as a pipe's read-ahead would.
  const feed = (async () => {
    const it = src[Symbol.asyncIterator]();
    // a failure while it waits is taken when it is awaited (not an unhandled rejection meanwhile)
    const ask = () => {
      const p = it.next();
      p.catch(() => {});
      return p;
    };
    let next = ask();
    for (;;) {
      const r = await next;
      if (r.done) break;
      if (gz.destroyed) {
        await it.return?.();
        return;
      }
      const chunk = r.value;
      const more = gz.write(chunk, () => consumed(chunk));
      next = ask();
      if (!more) await drained(gz);
    }
    gz.end();
  })();
  feed.catch((err: unknown) => gz.destroy(err as Error));
  try {
    for await (const chunk of gz) yield chunk as Buffer;
  } finally {
    // the feeder stops at its next chunk (gz is destroyed), which also closes `src`
    gz.destroy();
  }
}

/**
 * Until `w` wants more writes. A stream destroyed without an error (its reader stopped early)
 * sends no drain: that ends the wait too; a failed one rejects it.
 */
function drained(w: NodeJS.WritableStream & { destroyed: boolean }): Promise<void> {
  if (w.destroyed) return Promise.resolve();
  return new Promise<void>((resolve, reject) => {
    const done = (err?: Error) => {
      w.off("drain", ok);
      w.off("close", ok);
      w.off("error", done);
      if (err) reject(err);
      else resolve();
    };
    const ok = () => done();
    w.on("drain", ok);
    w.on("close", ok);
    w.on("error", done);
  });
}

/** Pipe buffer and read size for a filter program's output. */
const FILTER_PIPE_SIZE = 1 << 20;

/**
 * Run `zstd` (or another filter program) over a stream, yielding its output. The program is
 * started with posix_spawn (src/sys/spawn.ts), not child_process: a fork() leaves every page of
 * the daemon copy-on-write, so for a while after each start every first write to a page of
 * berthd's heap is a fault (100 MiB touched after a spawn: 25,600 faults and ~385 ms of CPU on
 * this VM, against none after posix_spawn; finding 49), and a pull starts one per zstd layer.
 *
 * Its output comes through a pipe with a 1 MiB buffer, read into one buffer again and again:
 * reading into fresh memory cost a fault per 4 KiB as well (finding 47). With `reuse`, a chunk
 * yielded is valid only until the next one is asked for, and the caller must be done with it by
 * then; without, each chunk is copied out.
 */
async function* filterProcess(
  cmd: string,
  args: string[],
  src: AsyncIterable<Buffer>,
  reuse: boolean,
): AsyncGenerator<Buffer> {
  let child: FastChild;
  const output = makePipe(FILTER_PIPE_SIZE);
  try {
    child = await fastSpawnAsync(lookPath(cmd), args, {
      env: process.env,
      stdio: ["pipe", output.write, "pipe"],
    });
  } catch (err) {
    closeSync(output.read);
    if ((err as NodeJS.ErrnoException).code === "ENOENT")
      throw errNotImplemented(`${cmd} binary not found (install the Debian package ${JSON.stringify(cmd)})`);
    throw err;
  } finally {
    closeSync(output.write); // the child has its own copy (or never started)
  }
  const stdin = child.stdin!;
  const buffer = Buffer.allocUnsafeSlow(FILTER_PIPE_SIZE);
  let ready: Buffer | undefined;
  let ended = false;
  let readError: Error | undefined;
  let wake: (() => void) | undefined;
  const wakeUp = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  // `onread` is a constructor option of net.Socket (net.js), missing from @types/node's type
  const stdout = new Socket({
    fd: output.read,
    readable: true,
    writable: false,
    onread: {
      buffer,
      callback: (n: number) => {
        ready = buffer.subarray(0, n);
        wakeUp();
        return false; // paused until the chunk is consumed
      },
    },
  } as SocketConstructorOpts);
  stdout.on("end", () => {
    ended = true;
    wakeUp();
  });
  stdout.on("error", (err) => {
    readError = err;
    wakeUp();
  });
  const stderr: Buffer[] = [];
  child.stderr!.on("data", (c: Buffer) => stderr.push(c));
  // read to its end, so that the exit status is collected as soon as the program is done
  const stderrDone = new Promise<void>((resolve) => {
    child.stderr!.once("close", resolve);
    child.stderr!.once("error", () => resolve());
  });
  let feedError: unknown;
  const feed = (async () => {
    try {
      for await (const chunk of src) {
        if (stdin.destroyed) break; // the reader gave up (or the program is gone)
        if (!stdin.write(chunk, () => consumed(chunk))) await drained(stdin);
      }
      stdin.end();
    } catch (err) {
      feedError = err;
      stdin.destroy();
      child.kill("SIGKILL");
    }
  })();
  stdin.on("error", () => {}); // EPIPE when the program stops early: reported by its exit
  let complete = false;
  try {
    for (;;) {
      if (ready) {
        const c = ready;
        ready = undefined;
        yield reuse ? c : Buffer.from(c);
        stdout.resume();
        continue;
      }
      if (readError) throw readError;
      if (ended) break;
      await new Promise<void>((r) => {
        wake = r;
      });
    }
    await feed;
    if (feedError) throw feedError;
    const { code, signal } = await child.exited;
    await stderrDone;
    if (code !== 0) {
      const msg = Buffer.concat(stderr).toString("utf8").trim();
      throw new Error(`${cmd} ${args.join(" ")} failed (${signal ?? `exit ${code}`}): ${msg}`);
    }
    complete = true;
  } finally {
    stdout.destroy();
    if (!complete) {
      child.kill("SIGKILL");
      stdin.destroy();
    }
    await child.exited;
    await feed;
  }
}

function zstdDecompress(src: AsyncIterable<Buffer>, reuse: boolean): AsyncGenerator<Buffer> {
  return filterProcess("zstd", ["-d", "-c", "-q"], src, reuse);
}

/**
 * Compress a stream: gzip (level 6, like Go's default) or zstd (level 3, like containerd's). A
 * zstd chunk is valid only until the next one is asked for (filterProcess).
 */
export async function* compress(src: AsyncIterable<Buffer>, kind: "gzip" | "zstd"): AsyncGenerator<Buffer> {
  if (kind === "zstd") {
    // the one caller (walking.ts) writes each chunk before it asks for the next
    yield* filterProcess("zstd", ["-c", "-q", "-3"], src, true);
    return;
  }
  const input = Readable.from(src, { objectMode: false });
  const z = zlib();
  const gz = z.createGzip({ level: z.constants.Z_DEFAULT_COMPRESSION, chunkSize: 1 << 20 });
  input.on("error", (err) => gz.destroy(err));
  input.pipe(gz);
  try {
    for await (const chunk of gz) yield chunk as Buffer;
  } finally {
    input.destroy();
    gz.destroy();
  }
}
