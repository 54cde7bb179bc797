// A streaming tar reader and a tar header writer, written for layer tars: ustar, PAX (extended
// and global headers, SCHILY.xattr.*), GNU long names/links and base-256 numbers.
//
// Names are "byte strings": every byte of a name is one UTF-16 code unit (latin1), so names
// that are not valid UTF-8 survive a round trip. Convert with `bytesOf` before handing them to
// the file system and with `displayName` before showing them to people.

export const TarType = {
  File: "0",
  OldFile: "\0",
  Link: "1",
  Symlink: "2",
  Char: "3",
  Block: "4",
  Dir: "5",
  Fifo: "6",
  Cont: "7",
  PaxHeader: "x",
  PaxGlobal: "g",
  GnuLongName: "L",
  GnuLongLink: "K",
  GnuSparse: "S",
} as const;

export interface TarHeader {
  /** Entry name as a byte string, as stored (not normalised). */
  name: string;
  /** Type flag character ("0" file, "5" dir, ...). Old-style files ("\0") are reported as "0" or "5". */
  type: string;
  mode: number;
  uid: number;
  gid: number;
  /** Bytes of data that follow the header (0 for header-only types). */
  size: number;
  /** Seconds since the epoch, possibly fractional (PAX). */
  mtime: number;
  atime?: number;
  /** Exact times in nanoseconds, when a PAX record gave a fraction of a second. */
  mtimeNs?: bigint;
  atimeNs?: bigint;
  /** Link target (byte string) for hard and symbolic links. */
  linkname: string;
  devmajor: number;
  devminor: number;
  /** Extended attributes from SCHILY.xattr.* records: name (byte string) → value bytes. */
  xattrs?: Map<string, Buffer>;
  /** All PAX records that applied to this entry (values as byte strings). */
  pax?: Record<string, string>;
}

/** Receives the entries of an archive, in order: entry, then its data pieces, then end. */
export interface TarSink {
  entry(h: TarHeader): void;
  data(chunk: Buffer): void;
  end(): void;
}

export class TarFormatError extends Error {
  constructor(message: string) {
    super(`invalid tar archive: ${message}`);
    this.name = "TarFormatError";
  }
}

const BLOCK = 512;
/** Largest PAX or GNU long-name payload accepted (Go's archive/tar uses the same bound). */
const MAX_SPECIAL = 1 << 20;

export const bytesOf = (s: string): Buffer => Buffer.from(s, "latin1");
export const displayName = (s: string): string => Buffer.from(s, "latin1").toString("utf8");

const ZERO_BLOCK = Buffer.alloc(BLOCK);

/**
 * One comparison whatever the block holds. A loop that leaves at the first non-zero word runs
 * its later iterations only on the end-of-archive marker, once per layer: optimised code has no
 * type feedback for them and is thrown away there, and the next layer runs unoptimised until V8
 * has compiled it again (docs/performance.md, finding 62).
 */
function isZeroBlock(b: Buffer, off: number): boolean {
  return b.compare(ZERO_BLOCK, 0, BLOCK, off, off + BLOCK) === 0;
}

/** A NUL-terminated string field as a byte string. */
function str(b: Buffer, off: number, len: number): string {
  let end = off;
  const max = off + len;
  while (end < max && b[end] !== 0) end++;
  return b.toString("latin1", off, end);
}

/** An octal (or base-256) numeric field. */
function num(b: Buffer, off: number, len: number): number {
  const first = b[off]!;
  if (first & 0x80) {
    // base-256: big-endian two's complement once the marker bit is cleared
    let v = first & 0x7f;
    if (first & 0x40) v -= 0x80;
    for (let i = 1; i < len; i++) v = v * 256 + b[off + i]!;
    if (!Number.isSafeInteger(v)) throw new TarFormatError("numeric field out of range");
    return v;
  }
  let i = off;
  const end = off + len;
  while (i < end && (b[i] === 0x20 || b[i] === 0)) i++;
  let v = 0;
  let any = false;
  for (; i < end; i++) {
    const c = b[i]!;
    if (c === 0 || c === 0x20) break;
    if (c < 0x30 || c > 0x37) throw new TarFormatError(`invalid octal digit in numeric field`);
    v = v * 8 + (c - 0x30);
    any = true;
  }
  return any ? v : 0;
}

function checksumOk(b: Buffer, off: number): boolean {
  const stored = num(b, off + 148, 8);
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const c = i >= 148 && i < 156 ? 0x20 : b[off + i]!;
    unsigned += c;
    signed += c > 127 ? c - 256 : c;
  }
  return stored === unsigned || stored === signed;
}

/** PAX records: "<len> <key>=<value>\n", values as byte strings. */
export function parsePax(data: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let pos = 0;
  while (pos < data.length) {
    if (data[pos] === 0) break; // some writers pad with NULs
    let sp = pos;
    while (sp < data.length && data[sp] !== 0x20) sp++;
    const len = Number(data.toString("latin1", pos, sp));
    if (!Number.isInteger(len) || len <= 0 || pos + len > data.length || sp >= pos + len)
      throw new TarFormatError("invalid PAX record");
    const rec = data.subarray(sp + 1, pos + len);
    if (rec[rec.length - 1] !== 0x0a) throw new TarFormatError("invalid PAX record");
    const eq = rec.indexOf(0x3d);
    if (eq <= 0) throw new TarFormatError("invalid PAX record");
    out[rec.toString("latin1", 0, eq)] = rec.toString("latin1", eq + 1, rec.length - 1);
    pos += len;
  }
  return out;
}

/** A PAX time ("1500000000.123456789") in nanoseconds, or undefined if it has no fraction. */
function paxTimeNs(v: string): bigint | undefined {
  const m = /^(-?)(\d+)\.(\d+)$/.exec(v);
  if (!m) return undefined;
  const ns = BigInt(m[2]!) * 1_000_000_000n + BigInt(m[3]!.slice(0, 9).padEnd(9, "0"));
  return m[1] ? -ns : ns;
}

function paxNumber(v: string, what: string): number {
  const n = Number(v);
  if (v === "" || !Number.isFinite(n)) throw new TarFormatError(`invalid PAX ${what} ${JSON.stringify(v)}`);
  return n;
}

const HEADER_ONLY = new Set<string>([
  TarType.Link,
  TarType.Symlink,
  TarType.Char,
  TarType.Block,
  TarType.Dir,
  TarType.Fifo,
]);

// The parser's states: plain constants, because an enum member is a property load that needs
// type feedback, and the end-of-archive path runs only once per layer (see isZeroBlock).
const HEADER = 0;
const DATA = 1;
const SPECIAL = 2;
const PADDING = 3;
const DONE = 4;
type State = typeof HEADER | typeof DATA | typeof SPECIAL | typeof PADDING | typeof DONE;

/**
 * Push-based tar reader: `push` parses as much as the chunk allows and calls the sink
 * synchronously; data is handed over as views of the pushed chunk (no copies).
 */
export class TarParser {
  private state: State = HEADER;
  /** Bytes of an incomplete header (or special payload) carried between chunks. */
  private carry: Buffer | undefined;
  private remaining = 0;
  private padding = 0;
  private specialType = "";
  private specialParts: Buffer[] = [];
  private specialLen = 0;
  private pax: Record<string, string> | undefined;
  private longName: string | undefined;
  private longLink: string | undefined;
  /** Entries seen so far (for error messages). */
  entries = 0;

  constructor(private readonly sink: TarSink) {}

  /** True after the end-of-archive marker; further bytes are ignored. */
  get done(): boolean {
    return this.state === DONE;
  }

  push(chunk: Buffer): void {
    let pos = 0;
    const len = chunk.length;
    while (pos < len && this.state !== DONE) {
      switch (this.state) {
        case HEADER: {
          let block: Buffer;
          let off: number;
          if (this.carry) {
            const need = BLOCK - this.carry.length;
            const take = Math.min(need, len - pos);
            this.carry = Buffer.concat([this.carry, chunk.subarray(pos, pos + take)]);
            pos += take;
            if (this.carry.length < BLOCK) return;
            block = this.carry;
            off = 0;
            this.carry = undefined;
          } else if (len - pos < BLOCK) {
            this.carry = Buffer.from(chunk.subarray(pos));
            return;
          } else {
            block = chunk;
            off = pos;
            pos += BLOCK;
          }
          this.header(block, off);
          break;
        }
        case DATA: {
          const take = Math.min(this.remaining, len - pos);
          if (take > 0) this.sink.data(chunk.subarray(pos, pos + take));
          pos += take;
          this.remaining -= take;
          if (this.remaining === 0) {
            this.sink.end();
            this.state = this.padding > 0 ? PADDING : HEADER;
          }
          break;
        }
        case SPECIAL: {
          const take = Math.min(this.remaining, len - pos);
          this.specialParts.push(Buffer.from(chunk.subarray(pos, pos + take)));
          pos += take;
          this.remaining -= take;
          if (this.remaining === 0) {
            this.special(Buffer.concat(this.specialParts, this.specialLen));
            this.specialParts = [];
            this.state = this.padding > 0 ? PADDING : HEADER;
          }
          break;
        }
        case PADDING: {
          const take = Math.min(this.padding, len - pos);
          pos += take;
          this.padding -= take;
          if (this.padding === 0) this.state = HEADER;
          break;
        }
      }
    }
  }

  /** Call at the end of input: a stream cut inside an entry is an error. */
  finish(): void {
    if (this.state === DONE) return;
    if (this.state === HEADER && !this.carry && !this.pax && !this.longName && !this.longLink) return;
    throw new TarFormatError("unexpected EOF");
  }

  private header(b: Buffer, off: number): void {
    // the end-of-archive marker shares the store below with every entry (see isZeroBlock)
    this.state = isZeroBlock(b, off) ? DONE : this.entryHeader(b, off);
  }

  /** An entry's header (or a special one's): returns the state to go on in. */
  private entryHeader(b: Buffer, off: number): State {
    if (!checksumOk(b, off)) throw new TarFormatError("invalid tar header checksum");
    let type = String.fromCharCode(b[off + 156]!);
    const size = num(b, off + 124, 12);
    if (size < 0) throw new TarFormatError("negative size");
    const pad = (BLOCK - (size % BLOCK)) % BLOCK;

    if (
      type === TarType.PaxHeader ||
      type === TarType.PaxGlobal ||
      type === TarType.GnuLongName ||
      type === TarType.GnuLongLink
    ) {
      if (size > MAX_SPECIAL) throw new TarFormatError(`${type} header of ${size} bytes is too large`);
      this.specialType = type;
      this.specialLen = size;
      this.remaining = size;
      this.padding = pad;
      if (size > 0) return SPECIAL;
      this.special(Buffer.alloc(0));
      return HEADER;
    }

    const magic = b.toString("latin1", off + 257, off + 263);
    const ustar = magic === "ustar\0";
    let name = str(b, off, 100);
    if (ustar) {
      // star archives keep a trailer "tar\0" and a shorter prefix
      const star = b.toString("latin1", off + 508, off + 512) === "tar\0";
      const prefix = str(b, off + 345, star ? 131 : 155);
      if (prefix) name = `${prefix}/${name}`;
    }
    let linkname = str(b, off + 157, 100);
    const h: TarHeader = {
      name,
      type,
      mode: num(b, off + 100, 8),
      uid: num(b, off + 108, 8),
      gid: num(b, off + 116, 8),
      size,
      mtime: num(b, off + 136, 12),
      linkname,
      devmajor: ustar || magic === "ustar " ? num(b, off + 329, 8) : 0,
      devminor: ustar || magic === "ustar " ? num(b, off + 337, 8) : 0,
      // every header has one shape, PAX or not: the sink's code then sees a single map
      atime: undefined,
      mtimeNs: undefined,
      atimeNs: undefined,
      xattrs: undefined,
      pax: undefined,
    };
    if (this.longName !== undefined) {
      h.name = this.longName;
      this.longName = undefined;
    }
    if (this.longLink !== undefined) {
      linkname = this.longLink;
      h.linkname = linkname;
      this.longLink = undefined;
    }
    const pax = this.pax;
    if (pax) {
      this.pax = undefined;
      this.applyPax(h, pax);
    }
    if (type === TarType.OldFile || type === TarType.Cont) {
      type = h.name.endsWith("/") ? TarType.Dir : TarType.File;
      h.type = type;
    }
    if (
      type === TarType.GnuSparse ||
      pax?.["GNU.sparse.major"] !== undefined ||
      pax?.["GNU.sparse.size"] !== undefined
    )
      throw new TarFormatError(`${JSON.stringify(displayName(h.name))}: sparse files are not supported`);
    if (HEADER_ONLY.has(type)) h.size = 0;
    this.entries++;
    this.sink.entry(h);
    const dataLen = h.size;
    const dataPad = (BLOCK - (dataLen % BLOCK)) % BLOCK;
    if (dataLen > 0) {
      this.remaining = dataLen;
      this.padding = dataPad;
      return DATA;
    }
    this.sink.end();
    this.padding = dataPad;
    return HEADER;
  }

  private applyPax(h: TarHeader, pax: Record<string, string>): void {
    h.pax = pax;
    for (const k in pax) {
      const v = pax[k]!;
      switch (k) {
        case "path":
          h.name = v;
          break;
        case "linkpath":
          h.linkname = v;
          break;
        case "size":
          h.size = paxNumber(v, "size");
          if (!Number.isSafeInteger(h.size) || h.size < 0) throw new TarFormatError(`invalid PAX size ${v}`);
          break;
        case "uid":
          h.uid = paxNumber(v, "uid");
          break;
        case "gid":
          h.gid = paxNumber(v, "gid");
          break;
        case "mtime":
          h.mtime = paxNumber(v, "mtime");
          h.mtimeNs = paxTimeNs(v);
          break;
        case "atime":
          h.atime = paxNumber(v, "atime");
          h.atimeNs = paxTimeNs(v);
          break;
        default:
          if (k.startsWith("SCHILY.xattr.")) {
            h.xattrs ??= new Map();
            h.xattrs.set(k.slice("SCHILY.xattr.".length), Buffer.from(v, "latin1"));
          }
      }
    }
  }

  private special(data: Buffer): void {
    switch (this.specialType) {
      case TarType.PaxHeader:
        this.pax = { ...this.pax, ...parsePax(data) };
        break;
      case TarType.PaxGlobal:
        // Global headers are reported by Go's reader as entries of their own that containerd
        // ignores; they do not change later entries here either.
        parsePax(data);
        break;
      case TarType.GnuLongName:
        this.longName = str(data, 0, data.length);
        break;
      case TarType.GnuLongLink:
        this.longLink = str(data, 0, data.length);
        break;
    }
  }
}

// --- writer -------------------------------------------------------------------------------------

export interface WriteHeader {
  name: string;
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** Seconds since the epoch; written as an integer (truncated). */
  mtime: number;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  xattrs?: Map<string, Uint8Array>;
}

const isAscii = (s: string) => {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 0x7f) return false;
  return true;
};

function putStr(b: Buffer, off: number, len: number, s: string): void {
  b.write(s, off, Math.min(len, s.length), "latin1");
}

function putOctal(b: Buffer, off: number, len: number, v: number): void {
  const s = Math.trunc(v)
    .toString(8)
    .padStart(len - 1, "0");
  b.write(s, off, len - 1, "latin1");
  b[off + len - 1] = 0;
}

function fitsOctal(v: number, len: number): boolean {
  return v >= 0 && Number.isSafeInteger(v) && v < 8 ** (len - 1);
}

function paxRecord(key: string, value: string): string {
  // the length counts itself: grow until stable
  const body = ` ${key}=${value}\n`;
  let n = body.length + 1;
  while (String(n).length + body.length !== n) n = String(n).length + body.length;
  return `${n}${body}`;
}

/** Split a long name into ustar prefix/name at a slash, or undefined if it cannot be. */
function splitUstar(name: string): [string, string] | undefined {
  if (name.length <= 100) return ["", name];
  if (name.length > 256) return undefined;
  let i = name.length - 1;
  while (i > 0) {
    i = name.lastIndexOf("/", i);
    if (i <= 0) return undefined;
    if (i <= 155 && name.length - i - 1 <= 100 && name.length - i - 1 > 0)
      return [name.slice(0, i), name.slice(i + 1)];
    i--;
  }
  return undefined;
}

function rawHeader(h: {
  name: string;
  prefix: string;
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  linkname: string;
  devmajor: number;
  devminor: number;
}): Buffer {
  const b = Buffer.alloc(BLOCK);
  putStr(b, 0, 100, h.name);
  putOctal(b, 100, 8, h.mode);
  putOctal(b, 108, 8, h.uid);
  putOctal(b, 116, 8, h.gid);
  putOctal(b, 124, 12, h.size);
  putOctal(b, 136, 12, h.mtime);
  b.fill(0x20, 148, 156);
  b.write(h.type, 156, 1, "latin1");
  putStr(b, 157, 100, h.linkname);
  b.write("ustar\x0000", 257, 8, "latin1");
  putOctal(b, 329, 8, h.devmajor);
  putOctal(b, 337, 8, h.devminor);
  putStr(b, 345, 155, h.prefix);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += b[i]!;
  const cs = sum.toString(8).padStart(6, "0");
  b.write(cs, 148, 6, "latin1");
  b[154] = 0;
  b[155] = 0x20;
  return b;
}

/**
 * The header block(s) for an entry: ustar when everything fits, preceded by a PAX extended
 * header for whatever does not (long or non-ASCII names, large ids or sizes, xattrs).
 */
export function encodeHeader(h: WriteHeader): Buffer {
  const records: string[] = [];
  let name = h.name;
  let prefix = "";
  const linkname = h.linkname ?? "";
  const split = isAscii(name) ? splitUstar(name) : undefined;
  if (split) [prefix, name] = split;
  else {
    records.push(paxRecord("path", h.name));
    name = h.name.slice(0, 100);
  }
  let link = linkname;
  if (linkname.length > 100 || !isAscii(linkname)) {
    records.push(paxRecord("linkpath", linkname));
    link = linkname.slice(0, 100);
  }
  let { uid, gid, size } = h;
  if (!fitsOctal(uid, 8)) {
    records.push(paxRecord("uid", String(uid)));
    uid = 0;
  }
  if (!fitsOctal(gid, 8)) {
    records.push(paxRecord("gid", String(gid)));
    gid = 0;
  }
  if (!fitsOctal(size, 12)) {
    records.push(paxRecord("size", String(size)));
    size = 0;
  }
  let mtime = Math.trunc(h.mtime);
  if (!fitsOctal(mtime, 12)) {
    records.push(paxRecord("mtime", String(mtime)));
    mtime = 0;
  }
  if (h.xattrs) {
    const keys = [...h.xattrs.keys()].sort();
    for (const k of keys)
      records.push(paxRecord(`SCHILY.xattr.${k}`, Buffer.from(h.xattrs.get(k)!).toString("latin1")));
  }
  const main = rawHeader({
    name,
    prefix,
    type: h.type,
    mode: h.mode & 0o7777777,
    uid,
    gid,
    size,
    mtime,
    linkname: link,
    devmajor: h.devmajor ?? 0,
    devminor: h.devminor ?? 0,
  });
  if (records.length === 0) return main;
  const body = Buffer.from(records.join(""), "latin1");
  const paxName = `PaxHeaders.0/${h.name.replace(/\/+$/, "").split("/").pop() ?? ""}`.slice(0, 100);
  const ph = rawHeader({
    name: isAscii(paxName) ? paxName : "PaxHeaders.0/entry",
    prefix: "",
    type: TarType.PaxHeader,
    mode: 0o644,
    uid: 0,
    gid: 0,
    size: body.length,
    mtime: 0,
    linkname: "",
    devmajor: 0,
    devminor: 0,
  });
  return Buffer.concat([ph, body, Buffer.alloc(padLength(body.length)), main]);
}

/** Zero bytes that follow `size` bytes of entry data. */
export function padLength(size: number): number {
  return (BLOCK - (size % BLOCK)) % BLOCK;
}

/** The end-of-archive marker: two zero blocks. */
export const END_OF_ARCHIVE = Buffer.alloc(2 * BLOCK);
