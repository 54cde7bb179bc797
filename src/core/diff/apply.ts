// Apply an OCI layer (an uncompressed tar stream) onto a directory, safely.
//
// Two ways to treat whiteouts:
//   plain    the target is the whole root filesystem (native snapshotter, a mounted rootfs):
//            `.wh.<name>` deletes <name>; `.wh..wh..opq` deletes what the directory held before
//            this layer.
//   overlay  the target is an overlay upper directory over the parent layers: `.wh.<name>` becomes
//            a 0/0 character device, `.wh..wh..opq` the xattr trusted.overlay.opaque=y.
//
// Safety: every path is resolved inside the root the way containerd's fs.RootPath does it —
// `..` cannot climb above the root, absolute names and symlink targets are taken as rooted, and
// each parent component is checked for symlinks (which are then followed *inside* the root).
// The final component is never followed: files are created with O_EXCL|O_NOFOLLOW, links and
// special files with calls that do not follow. Hard links resolve their target the same way.
// Known-good directories are cached so that a layer costs about one syscall per path
// component once, not per entry; any removal invalidates the cache.
//
// Cost per regular file: open, write, futimes, close (+ fchown/fchmod/fsetxattr only when the
// header asks for something the kernel did not already give us).
import { createHash } from "node:crypto";
import {
  closeSync,
  constants as fsc,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  type Stats,
  symlinkSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { constants as osc } from "node:os";
import { type Logger, nopLogger } from "../../base/log.js";
import { makedev, S_IFBLK, S_IFCHR, S_IFIFO } from "../../sys/mknod.js";
import { realSyscalls, type Syscalls } from "../../sys/syscalls.js";
import type { LayerStream } from "./compression.js";
import { bytesOf, displayName, type TarHeader, TarParser, type TarSink, TarType } from "./tar.js";

export type ApplyMode = "plain" | "overlay";

export interface ApplyOptions {
  /** How whiteouts are written (default plain). */
  mode?: ApplyMode;
  /**
   * Overlay mode: the lower directories (top first). A parent directory that the layer does not
   * carry but needs is created with the attributes of the same directory in the first lower
   * that has it, so that it does not hide them.
   */
  parents?: string[];
  /**
   * Record here the root-relative paths of the parent directories the layer needed but did not
   * carry, as this applier created them (parents first), minus those the layer then carried
   * itself. For applying without the lowers at hand (`parents` empty) and giving those
   * directories their lowers' attributes afterwards (adoptLowerDirs).
   */
  implicitDirs?: Set<string>;
  log?: Logger;
  signal?: AbortSignal;
  /** Do not chown and do not create device nodes (default: when not running as root). */
  rootless?: boolean;
  /**
   * Device nodes, owners, modes, times and xattrs go through these calls (default: the
   * kernel's); file contents, directories and links through node:fs.
   */
  sys?: Syscalls;
}

export interface ApplyResult {
  /** sha256 of the uncompressed tar bytes (all of them, trailing data included). */
  digest: string;
  /** Number of uncompressed tar bytes. */
  size: number;
  /** Entries in the archive. */
  entries: number;
}

/** An archive that cannot be applied; the message names the offending entry. */
export class ApplyError extends Error {
  constructor(
    readonly entry: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`failed to apply layer entry ${JSON.stringify(entry)}: ${message}`, options);
    this.name = "ApplyError";
  }
}

const WHITEOUT_PREFIX = ".wh.";
const WHITEOUT_OPAQUE = ".wh..wh..opq";
const MAX_LINKS = 255;
/** Largest time that fits a 64-bit nanosecond count (Go's maxTime for Chtimes). */
const MAX_TIME_SEC = 9223372036;

const OPEN_FLAGS = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW;
const { EEXIST, ENODATA, ENOTSUP, EPERM } = osc.errno;
const XATTR_CREATE = 1;

function processUmask(): number {
  try {
    const m = /^Umask:\s+([0-7]+)/m.exec(readFileSync("/proc/self/status", "utf8"));
    if (m) return Number.parseInt(m[1]!, 8);
  } catch {
    // fall through
  }
  return 0o022;
}

const errCode = (err: unknown) => (err as NodeJS.ErrnoException | undefined)?.code;

/** Lexically clean a tar name into a root-relative path ("" for the root itself). */
export function cleanName(name: string): string {
  let s = name;
  while (s.length > 1 && s.endsWith("/")) s = s.slice(0, -1);
  if (
    s !== "" &&
    s !== "/" &&
    s[0] !== "/" &&
    s !== "." &&
    s !== ".." &&
    !s.startsWith("./") &&
    !s.startsWith("../") &&
    !s.includes("//") &&
    !s.includes("/./") &&
    !s.includes("/../") &&
    !s.endsWith("/.") &&
    !s.endsWith("/..")
  )
    return s;
  const out: string[] = [];
  for (const c of s.split("/")) {
    if (c === "" || c === ".") continue;
    if (c === "..") out.pop();
    else out.push(c);
  }
  return out.join("/");
}

function boundTime(t: number): number {
  return t < 0 || t > MAX_TIME_SEC || !Number.isFinite(t) ? 0 : t;
}

/** Access and modification times of an entry: atime is the later of the two (as containerd). */
interface Times {
  atime: number;
  mtime: number;
  /** Nanosecond times when the archive carried fractions of a second. */
  ns?: [bigint, bigint];
}

const NS = 1_000_000_000n;

function entryTimes(h: TarHeader): Times {
  const mtime = boundTime(h.mtime);
  const atime = boundTime(Math.max(h.atime ?? mtime, mtime));
  if (h.mtimeNs === undefined && h.atimeNs === undefined) return { atime, mtime };
  const bound = (ns: bigint) => (ns < 0n || ns > BigInt(MAX_TIME_SEC) * NS ? 0n : ns);
  const m = bound(h.mtimeNs ?? BigInt(Math.trunc(h.mtime)) * NS);
  let a = h.atimeNs ?? (h.atime !== undefined ? BigInt(Math.trunc(h.atime)) * NS : m);
  a = bound(a < m ? m : a);
  return { atime, mtime, ns: [a, m] };
}

interface DirInfo {
  /** Real root-relative path (no symlinks in it). */
  real: string;
  /** The directory has the setgid bit (new entries inherit its group). */
  sgid: boolean;
}

interface DirRecord {
  real: string;
  gen: number;
  times: Times;
  /** A mode to set at the end (directories that must stay writable while filled). */
  mode?: number;
}

const ROOT_KEY = "";

/** The applier: a TarSink writing entries below `root`. */
export class LayerApplier implements TarSink {
  private readonly mode: ApplyMode;
  private readonly log: Logger;
  private readonly sys: Syscalls;
  private readonly rootless: boolean;
  private readonly euid: number;
  private readonly egid: number;
  private readonly umask: number;
  /** Root as a byte string with a trailing slash. */
  private readonly rootB: string;
  private readonly parents: string[];
  private readonly implicitDirs: Set<string> | undefined;
  /** lexical key → resolved directory; valid while `gen` is unchanged. */
  private dirs = new Map<string, DirInfo>();
  private gen = 0;
  private readonly rootInfo: DirInfo;
  /** Real paths written by this layer (plain mode: what an opaque marker keeps). */
  private readonly unpacked = new Set<string>();
  private readonly dirRecords: DirRecord[] = [];
  private linksWalked = 0;

  // current entry
  private cur: TarHeader | undefined;
  private curName = "";
  private fd = -1;
  private curParentSgid = false;

  constructor(root: string, opts: ApplyOptions = {}) {
    this.mode = opts.mode ?? "plain";
    this.log = opts.log ?? nopLogger;
    this.sys = opts.sys ?? realSyscalls;
    this.euid = process.geteuid?.() ?? 0;
    this.egid = process.getegid?.() ?? 0;
    this.rootless = opts.rootless ?? this.euid !== 0;
    this.umask = processUmask();
    const r = root.replace(/\/+$/, "") || "/";
    this.rootB = Buffer.from(r === "/" ? "/" : `${r}/`, "utf8").toString("latin1");
    this.parents = (opts.parents ?? []).map((p) =>
      Buffer.from(p.replace(/\/+$/, ""), "utf8").toString("latin1"),
    );
    this.implicitDirs = opts.implicitDirs;
    const st = lstatSync(r);
    if (!st.isDirectory()) throw new Error(`apply target ${r} is not a directory`);
    this.rootInfo = { real: "", sgid: (st.mode & 0o2000) !== 0 };
  }

  /** Absolute path (bytes) of a root-relative real path. */
  private full(rel: string): Buffer {
    return Buffer.from(this.rootB + rel, "latin1");
  }

  /** Set times on a path without following a final symlink. */
  private setPathTimes(p: Buffer, t: Times): void {
    if (t.ns) this.sys.lutimes(p, t.ns[0], t.ns[1]);
    else this.sys.lutimes(p, t.atime, t.mtime);
  }

  private invalidate(): void {
    this.gen++;
    this.dirs = new Map();
  }

  // --- path resolution --------------------------------------------------------------------------

  /**
   * Resolve root-relative components inside `rootB` (a byte string ending in "/"), following
   * symlinks as if `rootB` were "/". Returns the real components and the index of the first one
   * that does not exist (-1 if all do). Only the lexical walk of the main root uses the cache.
   */
  private walk(
    rootB: string,
    comps: string[],
    useCache: boolean,
  ): { real: string[]; missing: number; sgid: boolean } {
    const real: string[] = [];
    let missing = -1;
    let sgid = useCache ? this.rootInfo.sgid : false;
    let todo = comps;
    let i = 0;
    while (i < todo.length) {
      const c = todo[i++]!;
      if (c === "" || c === ".") continue;
      if (c === "..") {
        real.pop();
        if (missing >= 0 && real.length <= missing) missing = -1;
        sgid = false; // unknown for an ancestor; only used when nothing is created
        if (useCache && missing < 0) {
          const hit = real.length === 0 ? this.rootInfo : this.dirs.get(real.join("/"));
          if (hit) sgid = hit.sgid;
        }
        continue;
      }
      real.push(c);
      if (missing >= 0) continue;
      const rel = real.join("/");
      if (useCache) {
        const hit = this.dirs.get(rel);
        if (hit && hit.real === rel) {
          sgid = hit.sgid;
          continue;
        }
      }
      let st: Stats | undefined;
      try {
        st = lstatSync(Buffer.from(rootB + rel, "latin1"), { throwIfNoEntry: false });
      } catch (err) {
        if (errCode(err) === "ENOTDIR") st = undefined;
        else throw err;
      }
      if (!st) {
        missing = real.length - 1;
        continue;
      }
      if (st.isDirectory()) {
        sgid = (st.mode & 0o2000) !== 0;
        if (useCache) this.dirs.set(rel, { real: rel, sgid });
        continue;
      }
      if (st.isSymbolicLink()) {
        if (++this.linksWalked > MAX_LINKS) throw new Error("too many links");
        const target = (
          readlinkSync(Buffer.from(rootB + rel, "latin1"), { encoding: "buffer" }) as Buffer
        ).toString("latin1");
        real.pop();
        if (target.startsWith("/")) real.length = 0;
        todo = [...target.split("/"), ...todo.slice(i)];
        i = 0;
        continue;
      }
      // a non-directory in the middle of a path: the caller reports ENOTDIR when it needs a dir
      const e = new Error(`${displayName(rel)}: not a directory`) as NodeJS.ErrnoException;
      e.code = "ENOTDIR";
      throw e;
    }
    return { real, missing, sgid };
  }

  /** The real directory for lexical parent `key` (components `comps`), creating what is missing. */
  private parentDir(key: string): DirInfo {
    if (key === ROOT_KEY) return this.rootInfo;
    const hit = this.dirs.get(key);
    if (hit) return hit;
    this.linksWalked = 0;
    const { real, missing, sgid } = this.walk(this.rootB, key.split("/"), true);
    let info: DirInfo;
    if (missing < 0) {
      info = { real: real.join("/"), sgid };
    } else {
      let parentSgid = missing === 0 ? this.rootInfo.sgid : sgid;
      for (let j = missing; j < real.length; j++) {
        const rel = real.slice(0, j + 1).join("/");
        parentSgid = this.makeParent(rel, parentSgid);
        this.dirs.set(rel, { real: rel, sgid: parentSgid });
      }
      info = { real: real.join("/"), sgid: parentSgid };
    }
    this.dirs.set(key, info);
    return info;
  }

  /** mkdir for a parent the layer did not carry; returns whether it has the setgid bit. */
  private makeParent(rel: string, parentSgid: boolean): boolean {
    const p = this.full(rel);
    try {
      mkdirSync(p, 0o755);
    } catch (err) {
      if (errCode(err) !== "EEXIST") throw err;
      const st = lstatSync(p);
      if (!st.isDirectory()) throw err;
      return (st.mode & 0o2000) !== 0;
    }
    this.implicitDirs?.add(rel);
    if (this.mode === "overlay" && this.parents.length > 0) {
      const copied = this.copyParentInfo(rel, p);
      if (copied !== undefined) return copied;
    }
    if (this.umask & 0o755 || parentSgid) this.sys.chmod(p, 0o755);
    return false;
  }

  /** Give a created upper directory the owner, mode, times and xattrs of its first lower. */
  private copyParentInfo(rel: string, p: Buffer): boolean | undefined {
    for (const lower of this.parents) {
      let found: { real: string[]; missing: number };
      this.linksWalked = 0;
      try {
        found = this.walk(`${lower}/`, rel.split("/"), false);
      } catch (err) {
        if (errCode(err) === "ENOTDIR") break;
        throw err;
      }
      if (found.missing >= 0) continue;
      const lp = Buffer.from(`${lower}/${found.real.join("/")}`, "latin1");
      const st = lstatSync(lp, { throwIfNoEntry: false, bigint: true });
      if (!st) continue;
      if (!st.isDirectory()) break; // replaced below: keep defaults
      if (!this.rootless) this.sys.lchown(p, Number(st.uid), Number(st.gid));
      this.sys.chmod(p, Number(st.mode) & 0o7777);
      for (const name of this.sys.llistxattr(lp)) {
        if (name.toString("latin1").startsWith("trusted.")) continue;
        const v = this.sys.lgetxattr(lp, name);
        if (v === undefined) continue;
        try {
          this.sys.lsetxattr(p, name, v, XATTR_CREATE);
        } catch (err) {
          const e = (err as { errno?: number }).errno;
          if (e !== ENOTSUP && e !== ENODATA && e !== EEXIST) throw err;
        }
      }
      this.dirRecords.push({
        real: rel,
        gen: this.gen,
        times: {
          atime: Number(st.atimeMs) / 1000,
          mtime: Number(st.mtimeMs) / 1000,
          ns: [st.atimeNs, st.mtimeNs],
        },
      });
      return (Number(st.mode) & 0o2000) !== 0;
    }
    return undefined;
  }

  /** Remove whatever is at `rel` (recursively for directories). */
  private clear(rel: string, st?: Stats): void {
    const p = this.full(rel);
    const s = st ?? lstatSync(p, { throwIfNoEntry: false });
    if (!s) return;
    if (s.isDirectory()) {
      rmSync(p, { recursive: true, force: true });
      this.invalidate();
    } else {
      unlinkSync(p);
      if (s.isSymbolicLink()) this.invalidate();
    }
  }

  // --- sink -------------------------------------------------------------------------------------

  entry(h: TarHeader): void {
    this.cur = h;
    this.curName = displayName(h.name);
    try {
      this.begin(h);
    } catch (err) {
      throw this.wrap(err);
    }
  }

  data(chunk: Buffer): void {
    if (this.fd < 0) return;
    try {
      let off = 0;
      while (off < chunk.length) off += writeSync(this.fd, chunk, off, chunk.length - off);
    } catch (err) {
      throw this.wrap(err);
    }
  }

  end(): void {
    if (this.fd < 0) return;
    const fd = this.fd;
    this.fd = -1;
    try {
      const h = this.cur!;
      const perm = h.mode & 0o7777;
      let chowned = false;
      if (this.needChown(h, this.curParentSgid)) {
        this.sys.fchown(fd, h.uid, h.gid);
        chowned = true;
      }
      if (h.xattrs) this.setXattrs(h, fd);
      if (perm & this.umask || (chowned && perm & 0o6000)) this.sys.fchmod(fd, perm);
      const t = entryTimes(h);
      if (t.ns) this.sys.futimes(fd, t.ns[0], t.ns[1]);
      else this.sys.futimes(fd, t.atime, t.mtime);
    } catch (err) {
      throw this.wrap(err);
    } finally {
      closeSync(fd);
    }
  }

  /** Close an open file after a failure elsewhere. */
  abort(): void {
    if (this.fd >= 0) {
      try {
        closeSync(this.fd);
      } catch {
        // already failing
      }
      this.fd = -1;
    }
  }

  private wrap(err: unknown): Error {
    if (err instanceof ApplyError) return err;
    const msg = err instanceof Error ? err.message : String(err);
    return new ApplyError(this.curName, msg, { cause: err });
  }

  private needChown(h: TarHeader, parentSgid: boolean): boolean {
    return !this.rootless && (h.uid !== this.euid || h.gid !== this.egid || parentSgid);
  }

  private begin(h: TarHeader): void {
    const name = cleanName(h.name);
    if (name === "") return; // the root itself is never changed by a layer
    const slash = name.lastIndexOf("/");
    const parentKey = slash < 0 ? ROOT_KEY : name.slice(0, slash);
    const base = slash < 0 ? name : name.slice(slash + 1);

    if (
      h.type !== TarType.File &&
      h.type !== TarType.Dir &&
      h.type !== TarType.Symlink &&
      h.type !== TarType.Link &&
      h.type !== TarType.Char &&
      h.type !== TarType.Block &&
      h.type !== TarType.Fifo
    )
      throw new Error(`unhandled tar header type ${h.type.charCodeAt(0)}`);

    if ((h.type === TarType.Char || h.type === TarType.Block) && this.rootless) {
      this.log.warn("device node ignored: not running as root", { name: this.curName });
      return;
    }

    let parent: DirInfo;
    try {
      parent = this.parentDir(parentKey);
    } catch (err) {
      if (errCode(err) === "ENOTDIR") throw new Error(`parent is not a directory: ${(err as Error).message}`);
      throw err;
    }

    if (base.startsWith(WHITEOUT_PREFIX)) {
      this.whiteout(h, parent, base);
      return;
    }

    const rel = parent.real === "" ? base : `${parent.real}/${base}`;
    const perm = h.mode & 0o7777;
    switch (h.type) {
      case TarType.File:
        this.createFile(h, rel, perm, parent.sgid);
        break;
      case TarType.Dir:
        this.createDir(h, name, rel, perm, parent.sgid);
        break;
      case TarType.Symlink:
        this.createSymlink(h, rel, parent.sgid);
        break;
      case TarType.Link:
        this.createHardlink(h, rel, perm);
        break;
      default:
        this.createSpecial(h, rel, perm, parent.sgid);
    }
    if (this.mode === "plain") this.unpacked.add(rel);
  }

  private whiteout(h: TarHeader, parent: DirInfo, base: string): void {
    if (base === WHITEOUT_OPAQUE) {
      if (this.mode === "overlay") {
        this.sys.lsetxattr(this.full(parent.real), "trusted.overlay.opaque", Buffer.from("y"));
      } else {
        this.removeLower(parent.real);
      }
      return;
    }
    const orig = base.slice(WHITEOUT_PREFIX.length);
    if (orig === "" || orig === "." || orig === "..")
      throw new Error(`invalid whiteout name: ${displayName(base)}`);
    const rel = parent.real === "" ? orig : `${parent.real}/${orig}`;
    if (this.mode === "overlay") {
      const p = this.full(rel);
      try {
        this.sys.mknod(p, S_IFCHR, 0);
      } catch (err) {
        if ((err as { errno?: number }).errno !== EEXIST) throw err;
        this.clear(rel);
        this.sys.mknod(p, S_IFCHR, 0);
      }
      if (this.needChown(h, parent.sgid)) this.sys.lchown(p, h.uid, h.gid);
    } else {
      this.clear(rel);
    }
  }

  /** Plain-mode opaque directory: delete everything below `dirReal` this layer did not write. */
  private removeLower(dirReal: string): void {
    const walk = (rel: string) => {
      let ents: import("node:fs").Dirent<Buffer>[];
      try {
        ents = readdirSync(this.full(rel), { encoding: "buffer", withFileTypes: true });
      } catch (err) {
        if (errCode(err) === "ENOENT") return;
        throw err;
      }
      for (const d of ents) {
        const name = d.name.toString("latin1");
        const child = rel === "" ? name : `${rel}/${name}`;
        if (!this.unpacked.has(child)) {
          if (d.isDirectory()) rmSync(this.full(child), { recursive: true, force: true });
          else unlinkSync(this.full(child));
        } else if (d.isDirectory()) {
          walk(child);
        }
      }
    };
    walk(dirReal);
    this.invalidate();
  }

  private createFile(_h: TarHeader, rel: string, perm: number, parentSgid: boolean): void {
    const p = this.full(rel);
    let fd: number;
    try {
      fd = openSync(p, OPEN_FLAGS, perm);
    } catch (err) {
      if (errCode(err) !== "EEXIST") throw err;
      this.clear(rel);
      fd = openSync(p, OPEN_FLAGS, perm);
    }
    this.fd = fd;
    this.curParentSgid = parentSgid;
    // data() writes, end() finishes metadata and closes
  }

  private createDir(h: TarHeader, key: string, rel: string, perm: number, parentSgid: boolean): void {
    const p = this.full(rel);
    this.implicitDirs?.delete(rel);
    let existing: Stats | undefined;
    try {
      mkdirSync(p, perm & 0o1777);
    } catch (err) {
      if (errCode(err) !== "EEXIST") throw err;
      existing = lstatSync(p);
      if (!existing.isDirectory()) {
        this.clear(rel, existing);
        existing = undefined;
        mkdirSync(p, perm & 0o1777);
      }
    }
    // A directory we cannot write into until the layer is done gets its mode at the end.
    const deferMode = this.rootless && (perm & 0o300) !== 0o300;
    let chowned = false;
    if (existing) {
      if (!this.rootless && (existing.uid !== h.uid || existing.gid !== h.gid)) {
        this.sys.lchown(p, h.uid, h.gid);
        chowned = true;
      }
      if (!deferMode && ((existing.mode & 0o7777) !== perm || chowned)) this.sys.chmod(p, perm);
    } else {
      if (this.needChown(h, parentSgid)) {
        this.sys.lchown(p, h.uid, h.gid);
        chowned = true;
      }
      if (!deferMode && (perm & this.umask || perm & 0o6000 || parentSgid || chowned))
        this.sys.chmod(p, perm);
    }
    if (h.xattrs) this.setXattrs(h, undefined, p);
    const sgid = (perm & 0o2000) !== 0;
    if (existing && ((existing.mode & 0o2000) !== 0) !== sgid) this.invalidate();
    this.dirs.set(rel, { real: rel, sgid });
    if (key !== rel) this.dirs.set(key, { real: rel, sgid });
    this.dirRecords.push({
      real: rel,
      gen: this.gen,
      times: entryTimes(h),
      mode: deferMode ? perm : undefined,
    });
  }

  private createSymlink(h: TarHeader, rel: string, parentSgid: boolean): void {
    const p = this.full(rel);
    const target = bytesOf(h.linkname);
    try {
      symlinkSync(target, p);
    } catch (err) {
      if (errCode(err) !== "EEXIST") throw err;
      this.clear(rel);
      symlinkSync(target, p);
    }
    if (this.needChown(h, parentSgid)) this.sys.lchown(p, h.uid, h.gid);
    if (h.xattrs) this.setXattrs(h, undefined, p);
    this.setPathTimes(p, entryTimes(h));
  }

  private createHardlink(h: TarHeader, rel: string, perm: number): void {
    // The target's parent is resolved inside the root; its last component is not followed (a
    // link to a symlink links the symlink).
    const target = cleanName(h.linkname);
    let targetReal: string;
    if (target === "") {
      targetReal = "";
    } else {
      const slash = target.lastIndexOf("/");
      const base = target.slice(slash + 1);
      let dir = "";
      if (slash >= 0) {
        this.linksWalked = 0;
        const r = this.walk(this.rootB, target.slice(0, slash).split("/"), true);
        dir = r.real.join("/");
      }
      targetReal = dir === "" ? base : `${dir}/${base}`;
    }
    if (targetReal === "") throw new Error("invalid hardlink target: the root directory");
    const from = this.full(targetReal);
    const p = this.full(rel);
    if (targetReal === rel) return; // a link to itself: nothing to do
    try {
      linkSync(from, p);
    } catch (err) {
      if (errCode(err) !== "EEXIST") throw err;
      this.clear(rel);
      linkSync(from, p);
    }
    // containerd applies the header's owner, mode and times to the (shared) inode as well
    const st = lstatSync(p);
    if (!this.rootless && (st.uid !== h.uid || st.gid !== h.gid)) this.sys.lchown(p, h.uid, h.gid);
    if (h.xattrs) this.setXattrs(h, undefined, p);
    if (!st.isSymbolicLink() && (st.mode & 0o7777) !== perm) this.sys.chmod(p, perm);
    this.setPathTimes(p, entryTimes(h));
  }

  private createSpecial(h: TarHeader, rel: string, perm: number, parentSgid: boolean): void {
    const p = this.full(rel);
    const type = h.type === TarType.Char ? S_IFCHR : h.type === TarType.Block ? S_IFBLK : S_IFIFO;
    const dev = type === S_IFIFO ? 0n : makedev(h.devmajor, h.devminor);
    try {
      this.sys.mknod(p, type | perm, dev);
    } catch (err) {
      if ((err as { errno?: number }).errno !== EEXIST) throw err;
      this.clear(rel);
      this.sys.mknod(p, type | perm, dev);
    }
    let chowned = false;
    if (this.needChown(h, parentSgid)) {
      this.sys.lchown(p, h.uid, h.gid);
      chowned = true;
    }
    if (h.xattrs) this.setXattrs(h, undefined, p);
    if (perm & this.umask || perm & 0o6000 || chowned) this.sys.chmod(p, perm);
    this.setPathTimes(p, entryTimes(h));
  }

  /** SCHILY.xattr.* records; trusted.* ones are refused (as containerd does) and skipped. */
  private setXattrs(h: TarHeader, fd: number | undefined, p?: Buffer): void {
    for (const [key, value] of h.xattrs!) {
      if (key.startsWith("trusted.")) {
        this.log.warn("ignored xattr in archive: admin attributes from archive not supported", {
          name: this.curName,
          xattr: displayName(key),
        });
        continue;
      }
      const kb = bytesOf(key);
      try {
        if (fd !== undefined) this.sys.fsetxattr(fd, kb, value);
        else this.sys.lsetxattr(p!, kb, value);
      } catch (err) {
        const errno = (err as { errno?: number }).errno;
        const ignorable =
          errno === ENOTSUP ||
          (errno === EPERM && key.startsWith("user.") && h.type !== TarType.File && h.type !== TarType.Dir);
        if (!ignorable)
          throw new Error(
            `failed to setxattr for key ${JSON.stringify(displayName(key))}: ${(err as Error).message}`,
          );
        this.log.warn("ignored xattr in archive", {
          name: this.curName,
          xattr: displayName(key),
          error: err,
        });
      }
    }
  }

  /**
   * For a tree applied in overlay mode without its lowers (`implicitDirs` recorded, `parents`
   * empty) and now about to sit over them: give each directory the layer needed but did not carry
   * what applying with `parents` would have given it — the owner, mode, xattrs and times of the
   * same directory in the first lower that has it, or, when none has it, the group of a setgid
   * parent. `dirs` parents first; a directory no longer at its path is skipped. Sets times last.
   */
  adoptLowerDirs(dirs: Iterable<string>): void {
    for (const rel of dirs) {
      let found: { real: string[]; missing: number };
      this.linksWalked = 0;
      try {
        found = this.walk(this.rootB, rel.split("/"), false);
      } catch (err) {
        if (errCode(err) === "ENOTDIR") continue;
        throw err;
      }
      if (found.missing >= 0 || found.real.join("/") !== rel) continue;
      const p = this.full(rel);
      const st = lstatSync(p, { throwIfNoEntry: false });
      if (!st?.isDirectory()) continue;
      if (this.parents.length > 0 && this.copyParentInfo(rel, p) !== undefined) continue;
      const slash = rel.lastIndexOf("/");
      if (slash < 0 || this.rootless) continue;
      const ps = lstatSync(this.full(rel.slice(0, slash)));
      if ((ps.mode & 0o2000) !== 0 && ps.gid !== st.gid) this.sys.lchown(p, st.uid, ps.gid);
    }
    this.finish();
  }

  /** Directory times (and deferred modes) last, once nothing more is created inside them. */
  finish(): void {
    for (const d of this.dirRecords) {
      let real = d.real;
      if (d.gen !== this.gen) {
        // something was removed since: resolve the path again inside the root
        this.linksWalked = 0;
        let r: { real: string[]; missing: number };
        try {
          r = this.walk(this.rootB, real.split("/"), false);
        } catch (err) {
          // a later entry replaced the directory (or a parent) with a file: nothing to finish
          if (errCode(err) === "ENOTDIR") continue;
          throw err;
        }
        if (r.missing >= 0) continue;
        real = r.real.join("/");
      }
      const p = this.full(real);
      try {
        if (d.mode !== undefined) {
          const st = lstatSync(p);
          if (!st.isDirectory()) continue;
          this.sys.chmod(p, d.mode);
        }
        this.setPathTimes(p, d.times);
      } catch (err) {
        if (errCode(err) === "ENOENT") continue;
        throw err;
      }
    }
  }
}

/**
 * Give the directories a layer applied onto `root` created implicitly (ApplyOptions.implicitDirs)
 * the attributes they would have had if it had been applied with `lowers` (top first) as parents.
 */
export function adoptLowerDirs(
  root: string,
  dirs: Iterable<string>,
  lowers: string[],
  opts: Pick<ApplyOptions, "log" | "rootless" | "sys"> = {},
): void {
  new LayerApplier(root, { ...opts, mode: "overlay", parents: lowers }).adoptLowerDirs(dirs);
}

/**
 * Apply an uncompressed layer tar read from `tar` onto `root`. Returns the sha256 and size of the
 * tar bytes (the layer's diff ID): from the stream itself when it computes them (a LayerStream
 * from openLayer), otherwise hashed here.
 */
export async function applyTar(
  root: string,
  tar: AsyncIterable<Uint8Array> | LayerStream,
  opts: ApplyOptions = {},
): Promise<ApplyResult> {
  const applier = new LayerApplier(root, opts);
  const parser = new TarParser(applier);
  const layer = "tarDigest" in tar ? tar : undefined;
  const hash = layer ? undefined : createHash("sha256");
  let size = 0;
  try {
    for await (const c of tar) {
      opts.signal?.throwIfAborted();
      const chunk = Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.byteLength);
      hash?.update(chunk);
      size += chunk.length;
      if (!parser.done) parser.push(chunk);
    }
    parser.finish();
    applier.finish();
  } finally {
    applier.abort();
  }
  if (layer) {
    const d = await layer.tarDigest();
    return { digest: d.digest, size: d.size, entries: parser.entries };
  }
  return { digest: `sha256:${hash!.digest("hex")}`, size, entries: parser.entries };
}
