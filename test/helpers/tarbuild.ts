// A tiny tar writer for crafting layers in tests — deliberately independent of src/core/diff/tar.ts
// so the reader is checked against another writer. It writes whatever it is told, including
// names and links no sane archiver would produce.

import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { gzipSync } from "node:zlib";

export type EntryType = "file" | "dir" | "symlink" | "link" | "char" | "block" | "fifo";

export interface TarEntry {
  name: string;
  type?: EntryType;
  /** Raw type flag, overriding `type`. */
  typeflag?: string;
  data?: string | Buffer;
  mode?: number;
  uid?: number;
  gid?: number;
  /** Seconds; a fractional value is written as a PAX record. */
  mtime?: number;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  /** SCHILY.xattr.<key> records. */
  xattrs?: Record<string, string | Buffer>;
  /** Extra PAX records. */
  pax?: Record<string, string>;
  /** Write a long name as a GNU 'L' record instead of PAX. */
  gnu?: boolean;
}

const FLAGS: Record<EntryType, string> = {
  file: "0",
  link: "1",
  symlink: "2",
  char: "3",
  block: "4",
  dir: "5",
  fifo: "6",
};

function octal(n: number, len: number): string {
  return `${n.toString(8).padStart(len - 1, "0")}\0`;
}

function block(fields: {
  name: Buffer;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  flag: string;
  linkname: Buffer;
  devmajor: number;
  devminor: number;
}): Buffer {
  const b = Buffer.alloc(512);
  fields.name.copy(b, 0, 0, Math.min(100, fields.name.length));
  b.write(octal(fields.mode, 8), 100, "latin1");
  b.write(octal(fields.uid, 8), 108, "latin1");
  b.write(octal(fields.gid, 8), 116, "latin1");
  b.write(octal(fields.size, 12), 124, "latin1");
  b.write(octal(Math.floor(fields.mtime), 12), 136, "latin1");
  b.write("        ", 148, "latin1");
  b.write(fields.flag, 156, "latin1");
  fields.linkname.copy(b, 157, 0, Math.min(100, fields.linkname.length));
  b.write("ustar\u000000", 257, "latin1");
  b.write(octal(fields.devmajor, 8), 329, "latin1");
  b.write(octal(fields.devminor, 8), 337, "latin1");
  let sum = 0;
  for (const c of b) sum += c;
  b.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "latin1");
  return b;
}

const pad = (n: number) => Buffer.alloc((512 - (n % 512)) % 512);

function paxBody(records: [string, Buffer][]): Buffer {
  const parts: Buffer[] = [];
  for (const [k, v] of records) {
    const body = Buffer.concat([Buffer.from(` ${k}=`), v, Buffer.from("\n")]);
    let len = body.length + 1;
    while (String(len).length + body.length !== len) len = String(len).length + body.length;
    parts.push(Buffer.from(String(len)), body);
  }
  return Buffer.concat(parts);
}

/** Tar bytes for `entries`, with the two-block end marker unless `noEnd`. */
export function buildTar(entries: TarEntry[], opts: { noEnd?: boolean } = {}): Buffer {
  const out: Buffer[] = [];
  for (const e of entries) {
    const type = e.type ?? "file";
    const data = e.data === undefined ? Buffer.alloc(0) : Buffer.from(e.data);
    const name = Buffer.from(e.name);
    const linkname = Buffer.from(e.linkname ?? "");
    const records: [string, Buffer][] = [];
    if (name.length > 100 && !e.gnu) records.push(["path", name]);
    if (linkname.length > 100 && !e.gnu) records.push(["linkpath", linkname]);
    const mtime = e.mtime ?? 1600000000;
    if (!Number.isInteger(mtime)) records.push(["mtime", Buffer.from(mtime.toFixed(9))]);
    for (const [k, v] of Object.entries(e.xattrs ?? {})) records.push([`SCHILY.xattr.${k}`, Buffer.from(v)]);
    for (const [k, v] of Object.entries(e.pax ?? {})) records.push([k, Buffer.from(v)]);
    if (e.gnu && name.length > 100) {
      const n = Buffer.concat([name, Buffer.from([0])]);
      out.push(
        block({
          name: Buffer.from("././@LongLink"),
          mode: 0,
          uid: 0,
          gid: 0,
          size: n.length,
          mtime: 0,
          flag: "L",
          linkname: Buffer.alloc(0),
          devmajor: 0,
          devminor: 0,
        }),
        n,
        pad(n.length),
      );
    }
    if (e.gnu && linkname.length > 100) {
      const n = Buffer.concat([linkname, Buffer.from([0])]);
      out.push(
        block({
          name: Buffer.from("././@LongLink"),
          mode: 0,
          uid: 0,
          gid: 0,
          size: n.length,
          mtime: 0,
          flag: "K",
          linkname: Buffer.alloc(0),
          devmajor: 0,
          devminor: 0,
        }),
        n,
        pad(n.length),
      );
    }
    if (records.length > 0) {
      const body = paxBody(records);
      out.push(
        block({
          name: Buffer.from("PaxHeader"),
          mode: 0o644,
          uid: 0,
          gid: 0,
          size: body.length,
          mtime: 0,
          flag: "x",
          linkname: Buffer.alloc(0),
          devmajor: 0,
          devminor: 0,
        }),
        body,
        pad(body.length),
      );
    }
    const dflt = type === "dir" ? 0o755 : type === "symlink" ? 0o777 : 0o644;
    out.push(
      block({
        name,
        mode: e.mode ?? dflt,
        uid: e.uid ?? 0,
        gid: e.gid ?? 0,
        size: data.length,
        mtime,
        flag: e.typeflag ?? FLAGS[type],
        linkname,
        devmajor: e.devmajor ?? 0,
        devminor: e.devminor ?? 0,
      }),
    );
    if (data.length > 0) out.push(data, pad(data.length));
  }
  if (!opts.noEnd) out.push(Buffer.alloc(1024));
  return Buffer.concat(out);
}

export const sha256 = (b: Uint8Array) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

export const gzip = (b: Uint8Array) => gzipSync(b);

/** zstd-compress with the zstd binary. */
export function zstd(b: Uint8Array): Buffer {
  const r = spawnSync("zstd", ["-c", "-q"], { input: b, maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`zstd failed: ${r.stderr}`);
  return r.stdout;
}

/** Chunks of `b` of the given size, as an async iterable (to exercise chunk boundaries). */
export async function* chunks(b: Buffer, size = 1 << 16): AsyncGenerator<Buffer> {
  for (let i = 0; i < b.length; i += size) yield b.subarray(i, i + size);
}
