// The local content store: a namespace-free, digest-addressed blob store on disk with resumable
// ingests, in containerd's layout so an existing containerd root reads the same:
//
//   <root>/blobs/<alg>/<hex>                      committed blobs (read-only files)
//   <root>/ingest/<sha256 of ref>/data            bytes received so far
//   <root>/ingest/<sha256 of ref>/ref             the ref, to recover it from the directory name
//   <root>/ingest/<sha256 of ref>/startedat       RFC 3339 timestamps
//   <root>/ingest/<sha256 of ref>/updatedat
//   <root>/ingest/<sha256 of ref>/total           expected size, when announced
//
// A blob only appears under blobs/ through a rename after its data was fsynced, so a crash never
// leaves a partial blob visible. One writer per ref at a time (in-process locks).

import { createHash, type Hash } from "node:crypto";
import * as fsCb from "node:fs";
import { constants as fsc } from "node:fs";
import {
  chmod,
  type FileHandle,
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  utimes,
  writeFile,
} from "node:fs/promises";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import { goDuration } from "../../base/duration.js";
import {
  BerthError,
  errAlreadyExists,
  errFailedPrecondition,
  errInvalidArgument,
  errNotFound,
  errUnavailable,
} from "../../base/errdefs.js";
import { type Logger, nopLogger } from "../../base/log.js";
import { parseFilters } from "../filters.js";
import type { Labels } from "../metadata/db.js";

export interface Info {
  digest: string;
  size: number;
  createdAt: Date;
  updatedAt: Date;
  labels: Labels;
}

export interface Status {
  ref: string;
  offset: number;
  total: number;
  startedAt: Date;
  updatedAt: Date;
  /** Set by the metadata layer for shared ingests; empty below it. */
  expected: string;
}

/** Random access to one blob; `stream` reads a range in chunks with one read ahead. */
export interface ReaderAt {
  readonly size: number;
  readAt(buf: Uint8Array, offset: number): Promise<number>;
  /**
   * Blocking positional read, for small reads of cached blobs where a thread-pool round trip
   * costs more than the read (Content/Read serves clients that read in 32 KiB requests).
   */
  readAtSync?(buf: Uint8Array, offset: number): number;
  stream(offset: number, length: number, chunkSize?: number): AsyncIterable<Buffer>;
  close(): Promise<void>;
}

/** The writer interface shared by the local store and the metadata layer. */
export interface ContentWriter {
  status(): Status;
  /** Digest of the bytes written so far (or of the committed blob). */
  digest(): string;
  write(data: Uint8Array): Promise<number>;
  /** Commit the data as a blob; returns its digest. */
  commit(size: number, expected: string, labels?: Labels): Promise<string>;
  truncate(size: number): Promise<void>;
  close(): Promise<void>;
}

// --- digests -------------------------------------------------------------------------------------

const HEX_LEN: Record<string, number> = { sha256: 64, sha384: 96, sha512: 128 };
const ALG_RE = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*$/;
const ENCODED_RE = /^[a-zA-Z0-9=_-]+$/;

export const CANONICAL_ALGORITHM = "sha256";

export function algorithmAvailable(alg: string): boolean {
  return Object.hasOwn(HEX_LEN, alg);
}

/** go-digest's Validate: returns the reason a digest string is invalid, or undefined. */
export function digestError(d: string): string | undefined {
  const i = d.indexOf(":");
  if (i <= 0 || i + 1 === d.length) return "invalid checksum digest format";
  const alg = d.slice(0, i);
  const enc = d.slice(i + 1);
  if (!algorithmAvailable(alg)) {
    if (!ALG_RE.test(alg) || !ENCODED_RE.test(enc)) return "invalid checksum digest format";
    return "unsupported digest algorithm";
  }
  if (enc.length !== HEX_LEN[alg]) return "invalid checksum digest length";
  if (!/^[a-f0-9]+$/.test(enc)) return "invalid checksum digest format";
  return undefined;
}

/** Throws InvalidArgument unless `d` is a valid digest of a supported algorithm. */
export function validateDigest(d: string): void {
  const e = digestError(d);
  if (e) throw errInvalidArgument(`cannot calculate blob path from invalid digest: ${e}`);
}

const algorithmOf = (d: string) => d.slice(0, d.indexOf(":"));

// --- Go-style formatting for the lock message ---------------------------------------------------

const pad = (n: number, w = 2) => String(n).padStart(w, "0");

/** Go's time.Time String() of a wall-clock reading taken `monoMs` after process start. */
export function goTime(t: Date, monoMs?: number): string {
  const offMin = -t.getTimezoneOffset();
  const frac = t.getMilliseconds() ? `.${pad(t.getMilliseconds(), 3).replace(/0+$/, "")}` : "";
  const abs = Math.abs(offMin);
  const off = `${offMin < 0 ? "-" : "+"}${pad(Math.floor(abs / 60))}${pad(abs % 60)}`;
  let zone = "UTC";
  if (offMin !== 0) {
    const part = new Intl.DateTimeFormat("en-US", { timeZoneName: "short" })
      .formatToParts(t)
      .find((p) => p.type === "timeZoneName");
    zone = part?.value ?? off;
  }
  let s =
    `${t.getFullYear()}-${pad(t.getMonth() + 1)}-${pad(t.getDate())} ` +
    `${pad(t.getHours())}:${pad(t.getMinutes())}:${pad(t.getSeconds())}${frac} ${off} ${zone}`;
  if (monoMs !== undefined) {
    const ns = BigInt(Math.round(monoMs * 1e6));
    s += ` m=+${ns / 1_000_000_000n}.${(ns % 1_000_000_000n).toString().padStart(9, "0")}`;
  }
  return s;
}

// --- small file helpers -------------------------------------------------------------------------

const isErrno = (err: unknown, code: string) => (err as NodeJS.ErrnoException | undefined)?.code === code;

/**
 * mkdir -p that reports why it failed. Node's recursive mkdir answers ENOENT for a directory it
 * could not create for another reason (ENOSPC when the filesystem is out of inodes, …), which
 * would reach clients as NotFound; plain mkdirs, parent first, report the real errno.
 */
async function mkdirAll(dir: string, mode: number): Promise<void> {
  try {
    await mkdir(dir, { mode });
  } catch (err) {
    if (isErrno(err, "EEXIST")) return;
    if (!isErrno(err, "ENOENT") || dirname(dir) === dir) throw err;
    await mkdirAll(dirname(dir), mode);
    await mkdir(dir, { mode }).catch((e: unknown) => {
      if (!isErrno(e, "EEXIST")) throw e;
    });
  }
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch (err) {
    if (isErrno(err, "ENOENT")) return false;
    throw err;
  }
}

/** Write a small file via a temp name and rename, so readers never see it half-written. */
async function writeSmallFile(p: string, data: string): Promise<void> {
  const tmp = `${p}.tmp`;
  await writeFile(tmp, data, { mode: 0o666 });
  await rename(tmp, p);
}

async function readTimestamp(p: string): Promise<Date> {
  let text: string;
  try {
    text = await readFile(p, "utf8");
  } catch (err) {
    if (isErrno(err, "ENOENT")) throw errNotFound((err as Error).message);
    throw err;
  }
  const t = new Date(text.trim());
  if (Number.isNaN(t.getTime())) throw new Error(`could not parse timestamp file ${p}`);
  return t;
}

async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, fsc.O_RDONLY | fsc.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Hash a file's first bytes with two alternating buffers, so reading overlaps hashing. */
async function hashFile(path: string, hash: Hash): Promise<number> {
  const fh = await open(path, "r");
  try {
    const size = 1 << 20;
    const bufs = [Buffer.allocUnsafe(size), Buffer.allocUnsafe(size)];
    let pos = 0;
    let i = 0;
    let pending = fh.read(bufs[0]!, 0, size, 0);
    while (true) {
      const { bytesRead } = await pending;
      if (bytesRead === 0) break;
      const cur = bufs[i]!;
      pos += bytesRead;
      i ^= 1;
      pending = fh.read(bufs[i]!, 0, size, pos);
      hash.update(cur.subarray(0, bytesRead));
    }
    return pos;
  } finally {
    await fh.close();
  }
}

// --- reader -------------------------------------------------------------------------------------

const fsRead = (fd: number, buf: Uint8Array, off: number, len: number, pos: number) =>
  new Promise<number>((resolve, reject) =>
    fsCb.read(fd, buf, off, len, pos, (err, n) => (err ? reject(err) : resolve(n))),
  );
const fsOpen = (p: string) =>
  new Promise<number>((resolve, reject) => fsCb.open(p, "r", (err, fd) => (err ? reject(err) : resolve(fd))));
const fsFstat = (fd: number) =>
  new Promise<fsCb.Stats>((resolve, reject) =>
    fsCb.fstat(fd, (err, st) => (err ? reject(err) : resolve(st))),
  );
const fsClose = (fd: number) => fsCb.close(fd, () => {});

/**
 * An open blob, shared by readers. Blobs never change once committed, so one descriptor serves
 * every reader (positional reads); it stays open briefly after the last reader is done, which
 * spares clients that read a blob in many small requests an open/stat/close each time.
 */
class BlobHandle {
  refs = 0;
  idleSince = 0;
  evicted = false;
  constructor(
    readonly fd: number,
    readonly size: number,
  ) {}
}

/** How long an unused blob descriptor stays open, and how many may stay open unused. */
const HANDLE_IDLE_MS = 2000;
const HANDLE_IDLE_MAX = 128;

class BlobReaderAt implements ReaderAt {
  private closed = false;
  constructor(
    private readonly store: LocalContentStore,
    private readonly h: BlobHandle,
  ) {}

  get size(): number {
    return this.h.size;
  }

  async readAt(buf: Uint8Array, offset: number): Promise<number> {
    if (this.closed) throw errFailedPrecondition("reader is closed");
    let got = 0;
    while (got < buf.length) {
      const n = await fsRead(this.h.fd, buf, got, buf.length - got, offset + got);
      if (n === 0) break;
      got += n;
    }
    return got;
  }

  readAtSync(buf: Uint8Array, offset: number): number {
    if (this.closed) throw errFailedPrecondition("reader is closed");
    let got = 0;
    while (got < buf.length) {
      const n = fsCb.readSync(this.h.fd, buf, got, buf.length - got, offset + got);
      if (n === 0) break;
      got += n;
    }
    return got;
  }

  async *stream(offset: number, length: number, chunkSize = 1 << 20): AsyncIterable<Buffer> {
    const end = Math.min(offset + length, this.size);
    const readChunk = async (p: number): Promise<Buffer> => {
      const buf = Buffer.allocUnsafe(Math.min(chunkSize, end - p));
      const n = await this.readAt(buf, p);
      return n < buf.length ? buf.subarray(0, n) : buf;
    };
    let pos = offset;
    let next: Promise<Buffer> | undefined = pos < end ? readChunk(pos) : undefined;
    try {
      while (next) {
        const buf = await next;
        next = undefined;
        if (buf.length === 0) return;
        pos += buf.length;
        if (pos < end) next = readChunk(pos);
        yield buf;
      }
    } finally {
      // a consumer that stops early must not leave a read-ahead rejecting unobserved
      next?.catch(() => {});
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.store.release(this.h);
  }
}

// --- writer -------------------------------------------------------------------------------------

export class LocalWriter implements ContentWriter {
  private offset: number;
  private updatedAt: Date;

  constructor(
    private readonly store: LocalContentStore,
    private fh: FileHandle | undefined,
    readonly ref: string,
    /** The ingest directory. */
    readonly path: string,
    offset: number,
    private readonly total: number,
    private hash: Hash,
    private readonly algorithm: string,
    private readonly startedAt: Date,
    updatedAt: Date,
  ) {
    this.offset = offset;
    this.updatedAt = updatedAt;
  }

  status(): Status {
    return {
      ref: this.ref,
      offset: this.offset,
      total: this.total,
      startedAt: this.startedAt,
      updatedAt: this.updatedAt,
      expected: "",
    };
  }

  digest(): string {
    return `${this.algorithm}:${this.hash.copy().digest("hex")}`;
  }

  /** Appends at the current offset; the hash runs while the kernel takes the bytes. */
  async write(data: Uint8Array): Promise<number> {
    const fh = this.fh;
    if (!fh) throw errFailedPrecondition("cannot write on closed writer");
    if (data.length === 0) return 0;
    const at = this.offset;
    const pending = fh.write(data, 0, data.length, at);
    this.hash.update(data);
    let { bytesWritten } = await pending;
    while (bytesWritten < data.length) {
      const r = await fh.write(data, bytesWritten, data.length - bytesWritten, at + bytesWritten);
      bytesWritten += r.bytesWritten;
    }
    this.offset += data.length;
    this.updatedAt = new Date();
    return data.length;
  }

  async commit(size: number, expected: string): Promise<string> {
    try {
      const fh = this.fh;
      this.fh = undefined;
      if (!fh) throw errFailedPrecondition("cannot commit on closed writer");
      let fileSize: number;
      let mode: number;
      try {
        await fh.sync();
        const st = await fh.stat();
        fileSize = st.size;
        mode = st.mode;
      } finally {
        await fh.close();
      }
      if (size > 0 && size !== fileSize)
        throw errFailedPrecondition(`unexpected commit size ${fileSize}, expected ${size}`);

      let dgst = this.digest();
      const data = join(this.path, "data");
      if (expected && algorithmOf(expected) !== this.algorithm && algorithmAvailable(algorithmOf(expected))) {
        // opened without knowing the algorithm: hash the finished data again with the right one
        const h = createHash(algorithmOf(expected));
        await hashFile(data, h);
        this.hash = h;
        dgst = `${algorithmOf(expected)}:${h.copy().digest("hex")}`;
      }
      if (expected && expected !== dgst)
        throw errFailedPrecondition(`unexpected commit digest ${dgst}, expected ${expected}`);

      const target = this.store.blobPath(dgst);
      const dir = join(this.store.root, "blobs", algorithmOf(dgst));
      await mkdirAll(dir, 0o755);
      if (await exists(target)) {
        await rm(this.path, { recursive: true, force: true }).catch(() => {});
        throw errAlreadyExists(`content ${dgst}`);
      }
      await rename(data, target);
      await syncDir(dir);
      // The blob is in place; what follows is best effort, as it cannot be rolled back.
      const now = new Date();
      await utimes(target, now, now).catch(() => {});
      await rm(this.path, { recursive: true, force: true }).catch((err) =>
        this.store.log.error("failed to remove ingest directory", {
          ref: this.ref,
          path: this.path,
          error: err,
        }),
      );
      await chmod(target, mode & 0o777 & ~0o333).catch(() => {});
      return dgst;
    } finally {
      this.store.unlock(this.ref);
    }
  }

  async truncate(size: number): Promise<void> {
    if (size !== 0) throw new Error("Truncate: unsupported size");
    const fh = this.fh;
    if (!fh) throw errFailedPrecondition("cannot truncate on closed writer");
    this.offset = 0;
    this.hash = createHash(this.algorithm);
    await fh.truncate(0);
  }

  async sync(): Promise<void> {
    await this.fh?.sync();
  }

  /** Release the ref, keeping the progress for a later writer to resume. */
  async close(): Promise<void> {
    const fh = this.fh;
    if (!fh) return;
    this.fh = undefined;
    try {
      await fh.sync().catch(() => {});
      await fh.close();
      await writeSmallFile(join(this.path, "updatedat"), this.updatedAt.toISOString()).catch(() => {});
    } finally {
      this.store.unlock(this.ref);
    }
  }
}

// --- store --------------------------------------------------------------------------------------

interface Lock {
  since: Date;
  mono: number;
  hr: bigint;
}

export class LocalContentStore {
  private readonly locks = new Map<string, Lock>();
  private readonly handles = new Map<string, BlobHandle>();
  private readonly opening = new Map<string, Promise<BlobHandle>>();
  private sweeper: NodeJS.Timeout | undefined;
  private ingestRootReady: Promise<void> | undefined;

  constructor(
    readonly root: string,
    readonly log: Logger = nopLogger,
  ) {}

  /** Create the root directory (containerd does it when the plugin loads). */
  async init(): Promise<this> {
    await mkdir(this.root, { recursive: true, mode: 0o755 });
    return this;
  }

  blobPath(dgst: string): string {
    validateDigest(dgst);
    const i = dgst.indexOf(":");
    return join(this.root, "blobs", dgst.slice(0, i), dgst.slice(i + 1));
  }

  /** Ingest directory of a ref: the sha256 of the ref keeps path lengths constant. */
  ingestRoot(ref: string): string {
    return join(this.root, "ingest", createHash("sha256").update(ref).digest("hex"));
  }

  async info(dgst: string): Promise<Info> {
    const p = this.blobPath(dgst);
    try {
      const st = await stat(p);
      return { digest: dgst, size: st.size, createdAt: st.mtime, updatedAt: st.atime, labels: {} };
    } catch (err) {
      if (isErrno(err, "ENOENT")) throw errNotFound(`content ${dgst}`);
      throw err;
    }
  }

  async readerAt(dgst: string): Promise<ReaderAt> {
    const h = this.handles.get(dgst) ?? (await this.openHandle(dgst));
    h.refs++;
    return new BlobReaderAt(this, h);
  }

  private openHandle(dgst: string): Promise<BlobHandle> {
    let p = this.opening.get(dgst);
    if (p) return p;
    const path = this.blobPath(dgst);
    p = (async () => {
      let fd: number;
      try {
        fd = await fsOpen(path);
      } catch (err) {
        if (isErrno(err, "ENOENT")) throw errNotFound(`blob ${dgst} expected at ${path}: blob not found`);
        throw err;
      }
      let st: fsCb.Stats;
      try {
        st = await fsFstat(fd);
      } catch (err) {
        fsClose(fd);
        throw err;
      }
      const h = new BlobHandle(fd, st.size);
      this.handles.set(dgst, h);
      this.startSweeper();
      return h;
    })();
    this.opening.set(dgst, p);
    const done = () => this.opening.delete(dgst);
    p.then(done, done);
    return p;
  }

  /** @internal a reader is done with a blob descriptor. */
  release(h: BlobHandle): void {
    h.refs--;
    if (h.refs > 0) return;
    h.idleSince = Date.now();
    if (h.evicted) fsClose(h.fd);
  }

  private evict(dgst: string): void {
    const h = this.handles.get(dgst);
    if (!h) return;
    this.handles.delete(dgst);
    h.evicted = true;
    if (h.refs === 0) fsClose(h.fd);
  }

  private startSweeper(): void {
    if (this.sweeper) return;
    this.sweeper = setInterval(() => this.sweep(), HANDLE_IDLE_MS / 2);
    this.sweeper.unref();
  }

  private sweep(): void {
    const now = Date.now();
    const idle: [string, BlobHandle][] = [];
    for (const [d, h] of this.handles) if (h.refs === 0) idle.push([d, h]);
    idle.sort((a, b) => a[1].idleSince - b[1].idleSince);
    let keep = idle.length;
    for (const [d, h] of idle) {
      if (now - h.idleSince >= HANDLE_IDLE_MS || keep > HANDLE_IDLE_MAX) {
        this.evict(d);
        keep--;
      }
    }
    if (this.handles.size === 0 && this.sweeper) {
      clearInterval(this.sweeper);
      this.sweeper = undefined;
    }
  }

  /** Close cached blob descriptors (at shutdown). Readers still open keep theirs until closed. */
  close(): void {
    for (const d of [...this.handles.keys()]) this.evict(d);
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = undefined;
  }

  async delete(dgst: string): Promise<void> {
    const p = this.blobPath(dgst);
    this.evict(dgst);
    try {
      await rm(p);
    } catch (err) {
      if (isErrno(err, "ENOENT")) throw errNotFound(`content ${dgst}`);
      throw err;
    }
  }

  /** Every blob, filtered on digest and labels (which the backend does not keep). */
  async walk(fn: (info: Info) => void | Promise<void>, filters: string[] = []): Promise<void> {
    const filter = parseFilters(filters);
    const blobs = join(this.root, "blobs");
    let algs: string[];
    try {
      algs = await readdir(blobs);
    } catch (err) {
      if (isErrno(err, "ENOENT")) return;
      throw err;
    }
    for (const alg of algs.sort()) {
      if (!algorithmAvailable(alg)) continue;
      let names: string[];
      try {
        names = await readdir(join(blobs, alg));
      } catch (err) {
        if (isErrno(err, "ENOENT") || isErrno(err, "ENOTDIR")) continue;
        throw err;
      }
      for (const name of names.sort()) {
        const dgst = `${alg}:${name}`;
        if (digestError(dgst)) {
          this.log.error("invalid digest for blob path", { path: join(blobs, alg, name) });
          continue;
        }
        let st: Awaited<ReturnType<typeof stat>>;
        try {
          st = await stat(join(blobs, alg, name));
        } catch (err) {
          if (isErrno(err, "ENOENT")) continue; // deleted while walking
          throw err;
        }
        if (!st.isFile()) continue;
        const info: Info = {
          digest: dgst,
          size: st.size,
          createdAt: st.mtime,
          updatedAt: st.atime,
          labels: {},
        };
        if (filter.match((fp) => (fp.length === 1 && fp[0] === "digest" ? dgst : undefined))) await fn(info);
      }
    }
  }

  async status(ref: string): Promise<Status> {
    return this.statusAt(this.ingestRoot(ref));
  }

  private async statusAt(dir: string): Promise<Status> {
    const dp = join(dir, "data");
    let st: Awaited<ReturnType<typeof stat>>;
    try {
      st = await stat(dp);
    } catch (err) {
      if (isErrno(err, "ENOENT")) throw errNotFound(`stat ${dp}: no such file or directory`);
      throw err;
    }
    let ref: string;
    try {
      ref = await readFile(join(dir, "ref"), "utf8");
    } catch (err) {
      if (isErrno(err, "ENOENT")) throw errNotFound(`open ${join(dir, "ref")}: no such file or directory`);
      throw err;
    }
    const stamp = async (name: string) => {
      try {
        return await readTimestamp(join(dir, name));
      } catch (err) {
        const msg = `could not read ${name}: ${(err as Error).message}`;
        if (err instanceof BerthError) {
          err.message = msg;
          throw err;
        }
        throw new Error(msg, { cause: err });
      }
    };
    const startedAt = await stamp("startedat");
    let updatedAt = await stamp("updatedat");
    // updatedat is only written when a writer closes: the data's mtime may be newer
    if (st.mtime > updatedAt) updatedAt = st.mtime;
    return { ref, offset: st.size, total: await this.totalAt(dir), startedAt, updatedAt, expected: "" };
  }

  private async totalAt(dir: string): Promise<number> {
    try {
      const n = Number.parseInt(await readFile(join(dir, "total"), "utf8"), 10);
      return Number.isFinite(n) ? n : 0;
    } catch {
      return 0;
    }
  }

  async listStatuses(filters: string[] = []): Promise<Status[]> {
    const names = await this.ingestNames();
    const filter = parseFilters(filters);
    const out: Status[] = [];
    for (const name of names) {
      let st: Status;
      try {
        st = await this.statusAt(join(this.root, "ingest", name));
      } catch (err) {
        // an ingest committed or aborted while listing
        if (err instanceof BerthError && err.kind === "not found") continue;
        throw err;
      }
      if (filter.match((fp) => (fp.length >= 1 && fp[0] === "ref" ? st.ref : undefined))) out.push(st);
    }
    return out;
  }

  /** The refs of all ingests on disk (for GC); unreadable ones are logged and skipped. */
  async walkStatusRefs(fn: (ref: string) => void | Promise<void>): Promise<void> {
    for (const name of await this.ingestNames()) {
      const rf = join(this.root, "ingest", name, "ref");
      let ref: string;
      try {
        ref = await readFile(rf, "utf8");
      } catch (err) {
        this.log.error("failed to read ingest ref", { path: rf, error: err });
        continue;
      }
      await fn(ref);
    }
  }

  private async ingestNames(): Promise<string[]> {
    try {
      return await readdir(join(this.root, "ingest"));
    } catch (err) {
      if (isErrno(err, "ENOENT")) return [];
      throw err;
    }
  }

  /**
   * Begin or resume the ingest `ref`. Only one writer per ref: a second one gets Unavailable
   * until the first commits or closes. `expected` fails early with AlreadyExists when the
   * blob is present and selects the digest algorithm.
   */
  async writer(ref: string, total = 0, expected = ""): Promise<LocalWriter> {
    if (!ref) throw errInvalidArgument("ref must not be empty");
    this.tryLock(ref);
    try {
      return await this.openWriter(ref, total, expected);
    } catch (err) {
      this.unlock(ref);
      throw err;
    }
  }

  /** Remove an ingest and everything it wrote. A missing ingest is not an error. */
  async abort(ref: string): Promise<void> {
    await rm(this.ingestRoot(ref), { recursive: true, force: true });
  }

  private tryLock(ref: string): void {
    const l = this.locks.get(ref);
    if (l) {
      const held = process.hrtime.bigint() - l.hr;
      throw errUnavailable(`ref ${ref} locked for ${goDuration(held)} (since ${goTime(l.since, l.mono)})`);
    }
    this.locks.set(ref, { since: new Date(), mono: performance.now(), hr: process.hrtime.bigint() });
  }

  /** @internal released by writers on commit and close. */
  unlock(ref: string): void {
    this.locks.delete(ref);
  }

  private ensureIngestRoot(): Promise<void> {
    if (!this.ingestRootReady) {
      this.ingestRootReady = mkdirAll(join(this.root, "ingest"), 0o777);
      this.ingestRootReady.catch(() => {
        this.ingestRootReady = undefined;
      });
    }
    return this.ingestRootReady;
  }

  private async resume(dir: string, ref: string, total: number, hash: Hash): Promise<Status> {
    const st = await this.statusAt(dir);
    if (st.ref !== ref) throw new Error(`ref key does not match: ${ref} != ${st.ref}`);
    if (total > 0 && st.total > 0 && total !== st.total)
      throw new Error(`provided total differs from status: ${total} != ${st.total}`);
    st.offset = await hashFile(join(dir, "data"), hash);
    return st;
  }

  private async openWriter(ref: string, total: number, expected: string): Promise<LocalWriter> {
    if (expected && (await exists(this.blobPath(expected)))) throw errAlreadyExists(`content ${expected}`);
    const dir = this.ingestRoot(ref);
    const alg =
      expected && algorithmAvailable(algorithmOf(expected)) ? algorithmOf(expected) : CANONICAL_ALGORITHM;
    let hash = createHash(alg);
    let offset = 0;
    let startedAt: Date | undefined;
    let updatedAt: Date | undefined;

    await this.ensureIngestRoot();
    try {
      await mkdir(dir, { mode: 0o755 });
    } catch (err) {
      if (!isErrno(err, "EEXIST")) throw err;
      try {
        const st = await this.resume(dir, ref, total, hash);
        startedAt = st.startedAt;
        updatedAt = st.updatedAt;
        total = st.total;
        offset = st.offset;
      } catch (e) {
        this.log.info(
          `failed to resume the status from path ${dir}: ${(e as Error).message}. will recreate them`,
        );
        hash = createHash(alg);
      }
    }

    const fresh = startedAt === undefined;
    if (!startedAt || !updatedAt) {
      startedAt = new Date();
      updatedAt = startedAt;
      await writeFile(join(dir, "ref"), ref, { mode: 0o666 });
      await writeSmallFile(join(dir, "startedat"), startedAt.toISOString());
      await writeSmallFile(join(dir, "updatedat"), startedAt.toISOString());
      if (total > 0) await writeFile(join(dir, "total"), String(total), { mode: 0o666 });
      else await rm(join(dir, "total"), { force: true });
    }

    const fh = await open(join(dir, "data"), fsc.O_WRONLY | fsc.O_CREAT, 0o666);
    try {
      // a fresh start over leftovers we could not resume: drop the old bytes
      if (fresh) await fh.truncate(0);
    } catch (err) {
      await fh.close();
      throw err;
    }
    return new LocalWriter(this, fh, ref, dir, offset, total, hash, alg, startedAt, updatedAt);
  }
}
