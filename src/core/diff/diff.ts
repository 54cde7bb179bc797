// Compute the changes between two directory trees as an OCI layer tar (uncompressed).
//
// Two sources of changes:
//   double walk   lower (the parent view) and upper (the container's rootfs) are walked side by
//                 side in path order; files are compared by stat, capabilities and, when the
//                 times cannot tell, content (continuity's rules, which containerd uses).
//   overlay       upper is an overlay upperdir: only it is walked, and overlay's own whiteouts
//                 (0/0 character devices, trusted.overlay.opaque / user.overlay.opaque = y)
//                 become OCI whiteouts; the lower tree is consulted only for existence.
//
// The tar is written like containerd's ChangeWriter: parents of every change first (once),
// directories with a trailing slash, hard links of changed files kept together, sockets left out,
// only the security.capability xattr recorded, mtimes truncated to seconds (clamped to the
// source date epoch when given) and whiteouts timestamped at the epoch.
import {
  type BigIntStats,
  closeSync,
  constants as fsc,
  lstatSync,
  openSync,
  readdirSync,
  readlinkSync,
  readSync,
} from "node:fs";
import {
  devNumbers,
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  S_IFSOCK,
} from "../../sys/mknod.js";
import { lgetxattr } from "../../sys/xattr.js";
import { displayName, END_OF_ARCHIVE, encodeHeader, padLength, TarType } from "./tar.js";

export interface DiffOptions {
  /** `upper` is an overlay upper directory over `lower` (read it directly). */
  overlayUpper?: boolean;
  /** Clamp modification times to this (SOURCE_DATE_EPOCH). */
  sourceDateEpoch?: Date;
  signal?: AbortSignal;
}

type Kind = "add" | "modify" | "delete" | "unmodified";

/** Files are read without following a symlink swapped in meanwhile. */
const RDONLY_NOFOLLOW = fsc.O_RDONLY | fsc.O_NOFOLLOW;
const BATCH = 1 << 20;
/** Hand out the batch once it is this full (file data fills it to BATCH). */
const FLUSH_AT = BATCH - (64 << 10);
/** Entries walked between two returns to the event loop. */
const TICK = 2048;
const EMPTY = Buffer.alloc(0);
const CAPABILITY = "security.capability";
const WHITEOUT_PREFIX = ".wh.";
const OPAQUE_NAME = ".wh..opq"; // a deleted ".wh..opq" becomes the ".wh..wh..opq" marker

const fmt = (st: BigIntStats) => Number(st.mode) & S_IFMT;
const isDir = (st: BigIntStats) => fmt(st) === S_IFDIR;

const join = (dir: string, name: string) => (dir === "" ? name : `${dir}/${name}`);

function sortedNames(path: Buffer): string[] {
  const names = readdirSync(path, { encoding: "buffer" }) as Buffer[];
  return names.map((n) => n.toString("latin1")).sort();
}

function caps(p: Buffer): Buffer | undefined {
  const v = lgetxattr(p, CAPABILITY);
  return v && v.length > 0 ? v : undefined;
}

function sameContent(a: Buffer, b: Buffer): boolean {
  const fa = openSync(a, RDONLY_NOFOLLOW);
  try {
    const fb = openSync(b, RDONLY_NOFOLLOW);
    try {
      const ba = Buffer.allocUnsafe(1 << 16);
      const bb = Buffer.allocUnsafe(1 << 16);
      for (;;) {
        const na = readSync(fa, ba, 0, ba.length, null);
        let nb = 0;
        while (nb < na) {
          const r = readSync(fb, bb, nb, na - nb, null);
          if (r === 0) break;
          nb += r;
        }
        if (na !== nb || !ba.subarray(0, na).equals(bb.subarray(0, nb))) return false;
        if (na === 0) return true;
      }
    } finally {
      closeSync(fb);
    }
  } finally {
    closeSync(fa);
  }
}

/** continuity's sameFile: is the upper file unchanged from the lower one? */
function sameFile(a: BigIntStats, b: BigIntStats, pa: Buffer, pb: Buffer): boolean {
  if (a.dev === b.dev && a.ino === b.ino) return true;
  if (a.mode !== b.mode || a.uid !== b.uid || a.gid !== b.gid || a.rdev !== b.rdev) return false;
  const ca = caps(pa);
  const cb = caps(pb);
  if ((ca === undefined) !== (cb === undefined) || (ca && cb && !ca.equals(cb))) return false;
  if (isDir(a)) return true;
  if (a.size !== b.size) return false;
  const NS = 1_000_000_000n;
  if (a.mtimeNs / NS !== b.mtimeNs / NS) return false;
  const na = a.mtimeNs % NS;
  const nb = b.mtimeNs % NS;
  if (na === 0n && nb === 0n) {
    // times may have been truncated (by a tar round trip): look at the content
    if (fmt(a) === S_IFLNK)
      return readlinkSync(pa, { encoding: "buffer" }).equals(readlinkSync(pb, { encoding: "buffer" }));
    if (a.size === 0n) return true;
    return sameContent(pa, pb);
  }
  return na === nb;
}

/** Turns changes into tar bytes, batched into large buffers. */
class ChangeWriter {
  private batch = Buffer.allocUnsafe(BATCH);
  private used = 0;
  private readonly addedDirs = new Set<string>();
  private readonly inodeSrc = new Map<bigint, string>();
  private readonly inodeRefs = new Map<bigint, string[]>();
  private readonly epochSec: number | undefined;

  constructor(
    /** The tree entries are read from (upper root), as a byte string ending in "/". */
    private readonly sourceB: string,
    sourceDateEpoch: Date | undefined,
  ) {
    this.epochSec = sourceDateEpoch ? Math.floor(sourceDateEpoch.getTime() / 1000) : undefined;
  }

  private full(rel: string): Buffer {
    return Buffer.from(this.sourceB + rel, "latin1");
  }

  /** Bytes ready to hand out (resets the batch). */
  take(): Buffer | undefined {
    if (this.used === 0) return undefined;
    const out = this.batch.subarray(0, this.used);
    this.batch = Buffer.allocUnsafe(BATCH);
    this.used = 0;
    return out;
  }

  get pending(): number {
    return this.used;
  }

  /** Hand out the batch if it is full enough; otherwise, every TICK calls, an empty chunk. */
  *flush(): Generator<Buffer> {
    if (this.used >= FLUSH_AT) {
      this.ticks = 0;
      yield this.take()!;
    } else if (++this.ticks >= TICK) {
      this.ticks = 0;
      yield EMPTY;
    }
  }
  private ticks = 0;

  private put(b: Uint8Array): void {
    if (this.used + b.length > this.batch.length) {
      // grow once for this batch; the caller drains at BATCH anyway
      const nb = Buffer.allocUnsafe(Math.max(this.batch.length * 2, this.used + b.length));
      this.batch.copy(nb, 0, 0, this.used);
      this.batch = nb;
    }
    this.batch.set(b, this.used);
    this.used += b.length;
  }

  private zeros(n: number): void {
    if (n === 0) return;
    if (this.used + n > this.batch.length) this.put(Buffer.alloc(n));
    else {
      this.batch.fill(0, this.used, this.used + n);
      this.used += n;
    }
  }

  /** Emit ancestors of `rel` (not the root) that were not written yet, outermost first. */
  private *parents(rel: string): Generator<Buffer> {
    const slash = rel.lastIndexOf("/");
    if (slash < 0) return;
    const parent = rel.slice(0, slash);
    if (this.addedDirs.has(parent)) return;
    this.addedDirs.add(parent);
    yield* this.parents(parent);
    const st = lstatSync(this.full(parent), { bigint: true });
    yield* this.change("modify", parent, st, true);
  }

  /** A deletion: `.wh.<name>` beside it. */
  *whiteout(rel: string): Generator<Buffer> {
    const slash = rel.lastIndexOf("/");
    const name =
      slash < 0
        ? `${WHITEOUT_PREFIX}${rel}`
        : `${rel.slice(0, slash)}/${WHITEOUT_PREFIX}${rel.slice(slash + 1)}`;
    yield* this.parents(name);
    this.put(encodeHeader({ name, type: TarType.File, mode: 0, uid: 0, gid: 0, size: 0, mtime: 0 }));
  }

  /** An added, modified or (hard-linked) unmodified entry. */
  *change(kind: Kind, rel: string, st: BigIntStats, isParent = false): Generator<Buffer> {
    const type = fmt(st);
    if (type === S_IFSOCK) return;
    let name = rel;
    const p = this.full(rel);
    let t: string;
    let linkname = "";
    let size = 0;
    let devmajor = 0;
    let devminor = 0;
    switch (type) {
      case S_IFDIR:
        t = TarType.Dir;
        name = `${rel}/`;
        break;
      case S_IFREG:
        t = TarType.File;
        size = Number(st.size);
        break;
      case S_IFLNK:
        t = TarType.Symlink;
        linkname = (readlinkSync(p, { encoding: "buffer" }) as Buffer).toString("latin1");
        break;
      case S_IFCHR:
      case S_IFBLK: {
        t = type === S_IFCHR ? TarType.Char : TarType.Block;
        const d = devNumbers(st.rdev);
        devmajor = d.major;
        devminor = d.minor;
        break;
      }
      case S_IFIFO:
        t = TarType.Fifo;
        break;
      default:
        throw new Error(`unsupported file type ${type.toString(8)}: ${displayName(rel)}`);
    }
    let additional: string[] | undefined;
    const hardlinked = type !== S_IFDIR && st.nlink > 1n;
    if (hardlinked) {
      const src = this.inodeSrc.get(st.ino);
      if (src !== undefined) {
        t = TarType.Link;
        linkname = src;
        size = 0;
      } else {
        if (kind === "unmodified") {
          const refs = this.inodeRefs.get(st.ino);
          if (refs) refs.push(name);
          else this.inodeRefs.set(st.ino, [name]);
          return;
        }
        this.inodeSrc.set(st.ino, name);
        additional = this.inodeRefs.get(st.ino);
        this.inodeRefs.delete(st.ino);
      }
    } else if (kind === "unmodified") {
      return;
    }
    let xattrs: Map<string, Uint8Array> | undefined;
    if (type === S_IFREG || type === S_IFDIR) {
      // (capabilities exist on regular files; reading them on directories costs one call)
      const c = caps(p);
      if (c) xattrs = new Map([[CAPABILITY, c]]);
    }
    if (!isParent) yield* this.parents(rel);
    if (type === S_IFDIR) this.addedDirs.add(rel);
    let mtime = Number(st.mtimeNs / 1_000_000_000n);
    if (this.epochSec !== undefined && mtime > this.epochSec) mtime = this.epochSec;
    const header = {
      name,
      type: t,
      mode: Number(st.mode) & 0o7777,
      uid: Number(st.uid),
      gid: Number(st.gid),
      size,
      mtime,
      linkname,
      devmajor,
      devminor,
      xattrs,
    };
    this.put(encodeHeader(header));
    if (t === TarType.File && size > 0) yield* this.content(p, rel, size);
    if (additional) {
      for (const extra of additional) {
        yield* this.parents(extra);
        this.put(
          encodeHeader({
            ...header,
            name: extra,
            type: TarType.Link,
            linkname: name,
            size: 0,
            xattrs: undefined,
          }),
        );
      }
    }
  }

  /** File data: small files go into the batch, large ones are handed out in chunks. */
  private *content(p: Buffer, rel: string, size: number): Generator<Buffer> {
    const fd = openSync(p, RDONLY_NOFOLLOW);
    try {
      let done = 0;
      while (done < size) {
        const room = this.batch.length - this.used;
        if (room < 4096) {
          const out = this.take();
          if (out) yield out;
          continue;
        }
        const want = Math.min(room, size - done);
        const n = readSync(fd, this.batch, this.used, want, done);
        if (n === 0)
          throw new Error(`${displayName(rel)}: file shrank while being read (short write copying file)`);
        this.used += n;
        done += n;
      }
    } finally {
      closeSync(fd);
    }
    this.zeros(padLength(size));
  }

  end(): void {
    this.put(END_OF_ARCHIVE);
  }
}

/** Changes from walking lower and upper side by side, in path order. */
function* doubleWalk(w: ChangeWriter, lowerB: string, upperB: string, rel: string): Generator<Buffer> {
  const lnames = sortedNames(Buffer.from(lowerB + rel, "latin1"));
  const unames = sortedNames(Buffer.from(upperB + rel, "latin1"));
  let i = 0;
  let j = 0;
  while (i < lnames.length || j < unames.length) {
    const ln = lnames[i];
    const un = unames[j];
    yield* w.flush();
    if (un === undefined || (ln !== undefined && ln < un)) {
      yield* w.whiteout(join(rel, ln!));
      i++;
      continue;
    }
    const r = join(rel, un);
    const pu = Buffer.from(upperB + r, "latin1");
    const su = lstatSync(pu, { bigint: true });
    if (ln === undefined || un < ln) {
      yield* w.change("add", r, su);
      if (isDir(su)) yield* addAll(w, upperB, r);
      j++;
      continue;
    }
    // present on both sides
    i++;
    j++;
    const pl = Buffer.from(lowerB + r, "latin1");
    const sl = lstatSync(pl, { bigint: true });
    if (sameFile(sl, su, pl, pu)) {
      if (!isDir(su) && su.nlink > 1n) yield* w.change("unmodified", r, su);
    } else {
      yield* w.change("modify", r, su);
    }
    if (isDir(su)) {
      if (isDir(sl)) yield* doubleWalk(w, lowerB, upperB, r);
      else yield* addAll(w, upperB, r);
    }
  }
}

/** Everything below an added directory. */
function* addAll(w: ChangeWriter, upperB: string, rel: string): Generator<Buffer> {
  for (const n of sortedNames(Buffer.from(upperB + rel, "latin1"))) {
    yield* w.flush();
    const r = join(rel, n);
    const st = lstatSync(Buffer.from(upperB + r, "latin1"), { bigint: true });
    yield* w.change("add", r, st);
    if (isDir(st)) yield* addAll(w, upperB, r);
  }
}

/** continuity's sameFsTime: equal, or the same second with one side truncated to it. */
function sameFsTime(a: bigint, b: bigint): boolean {
  const NS = 1_000_000_000n;
  return a === b || (a / NS === b / NS && (a % NS === 0n || b % NS === 0n));
}

function opaqueDir(p: Buffer): boolean {
  for (const x of ["trusted.overlay.opaque", "user.overlay.opaque"]) {
    const v = lgetxattr(p, x);
    if (v !== undefined) return v.length === 1 && v[0] === 0x79;
  }
  return false;
}

/**
 * Changes from an overlay upper directory. `lowerIsDir`: the lower tree has this directory as a
 * real directory whose content shows through (not opaque, not replaced); only then are lower
 * paths below it looked at.
 */
function* overlayWalk(
  w: ChangeWriter,
  lowerB: string,
  upperB: string,
  rel: string,
  lowerIsDir: boolean,
): Generator<Buffer> {
  for (const n of sortedNames(Buffer.from(upperB + rel, "latin1"))) {
    yield* w.flush();
    const r = join(rel, n);
    const pu = Buffer.from(upperB + r, "latin1");
    const su = lstatSync(pu, { bigint: true });
    const sl = lowerIsDir
      ? lstatSync(Buffer.from(lowerB + r, "latin1"), { bigint: true, throwIfNoEntry: false })
      : undefined;
    if (fmt(su) === S_IFCHR && su.rdev === 0n) {
      // an overlay whiteout: a deletion if there is something to delete
      if (sl) yield* w.whiteout(r);
      continue;
    }
    if (isDir(su)) {
      const opaque = opaqueDir(pu);
      if (opaque) {
        yield* w.change(sl ? "modify" : "add", r, su);
        yield* w.whiteout(`${r}/${OPAQUE_NAME}`);
      } else if (
        !(sl && isDir(sl) && sl.size === su.size && sl.mode === su.mode && sameFsTime(sl.mtimeNs, su.mtimeNs))
      ) {
        yield* w.change(sl ? "modify" : "add", r, su);
      }
      yield* overlayWalk(w, lowerB, upperB, r, !opaque && sl !== undefined && isDir(sl));
      continue;
    }
    yield* w.change(sl ? "modify" : "add", r, su);
  }
}

const asDirB = (p: string) => {
  const s = Buffer.from(p.replace(/\/+$/, ""), "utf8").toString("latin1");
  return `${s}/`;
};

/**
 * The layer tar (uncompressed) that turns `lower` into `upper`, in chunks of about 1 MiB. With
 * `overlayUpper`, `upper` is an overlay upperdir and `lower` the merged view of its lowerdirs.
 */
export async function* writeDiff(
  lower: string,
  upper: string,
  opts: DiffOptions = {},
): AsyncGenerator<Buffer> {
  const lowerB = asDirB(lower);
  const upperB = asDirB(upper);
  const w = new ChangeWriter(upperB, opts.sourceDateEpoch);
  const gen = opts.overlayUpper
    ? overlayWalk(w, lowerB, upperB, "", true)
    : doubleWalk(w, lowerB, upperB, "");
  for (const chunk of gen) {
    if (chunk.length > 0) yield chunk;
    else await new Promise<void>((resolve) => setImmediate(resolve));
    opts.signal?.throwIfAborted();
  }
  w.end();
  const rest = w.take();
  if (rest) yield rest;
}
