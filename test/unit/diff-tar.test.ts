import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  END_OF_ARCHIVE,
  encodeHeader,
  padLength,
  type TarHeader,
  TarParser,
  TarType,
} from "../../src/core/diff/tar.js";
import { buildTar } from "../helpers/tarbuild.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

interface Got {
  h: TarHeader;
  data: Buffer;
}

function parse(tar: Buffer, chunk = tar.length): Got[] {
  const out: Got[] = [];
  let cur: Got | undefined;
  const parts: Buffer[] = [];
  const p = new TarParser({
    entry(h) {
      cur = { h, data: Buffer.alloc(0) };
      parts.length = 0;
    },
    data(c) {
      parts.push(Buffer.from(c));
    },
    end() {
      cur!.data = Buffer.concat(parts);
      out.push(cur!);
    },
  });
  for (let i = 0; i < tar.length; i += chunk) p.push(tar.subarray(i, i + chunk));
  p.finish();
  return out;
}

let dir: string;
before(async () => {
  dir = await makeTempDir("diff-tar");
});
after(async () => {
  await removeTempDir(dir);
});

describe("tar reader", () => {
  const long = `${"d".repeat(90)}/${"e".repeat(90)}/${"f".repeat(90)}`;
  const entries = [
    { name: "dir/", type: "dir" as const, mode: 0o1755, uid: 1000, gid: 1001, mtime: 1600000001 },
    { name: "dir/file", data: "hello world", mode: 0o4755, mtime: 1600000002.25 },
    { name: long, data: "long", xattrs: { "user.k": "v", "security.capability": Buffer.from([1, 0, 0, 2]) } },
    { name: `gnu/${"g".repeat(120)}`, data: "g", gnu: true },
    { name: "sl", type: "symlink" as const, linkname: `${"t".repeat(150)}` },
    { name: "hl", type: "link" as const, linkname: "dir/file" },
    { name: "null", type: "char" as const, devmajor: 1, devminor: 3 },
    { name: "sda", type: "block" as const, devmajor: 8, devminor: 0 },
    { name: "fifo", type: "fifo" as const },
  ];
  const tar = buildTar(entries);

  it("reads ustar, PAX and GNU headers, whatever the chunking", () => {
    for (const size of [tar.length, 512, 511, 100, 7, 1]) {
      const got = parse(tar, size);
      assert.equal(got.length, entries.length, `chunk ${size}`);
      assert.equal(got[0]!.h.type, TarType.Dir);
      assert.equal(got[0]!.h.mode, 0o1755);
      assert.equal(got[0]!.h.uid, 1000);
      assert.equal(got[0]!.h.gid, 1001);
      assert.equal(got[1]!.h.mtime, 1600000002.25);
      assert.equal(got[1]!.data.toString(), "hello world");
      assert.equal(got[1]!.h.mode, 0o4755);
      assert.equal(got[2]!.h.name, long);
      assert.equal(got[2]!.h.xattrs?.get("user.k")?.toString(), "v");
      assert.deepEqual([...got[2]!.h.xattrs!.get("security.capability")!], [1, 0, 0, 2]);
      assert.equal(got[3]!.h.name, `gnu/${"g".repeat(120)}`);
      assert.equal(got[4]!.h.linkname, "t".repeat(150));
      assert.equal(got[5]!.h.type, TarType.Link);
      assert.equal(got[6]!.h.devmajor, 1);
      assert.equal(got[6]!.h.devminor, 3);
      assert.equal(got[8]!.h.type, TarType.Fifo);
    }
  });

  it("rejects a bad checksum and a cut stream", () => {
    const bad = Buffer.from(tar);
    bad[0] ^= 1;
    assert.throws(() => parse(bad), /checksum/);
    assert.throws(() => parse(tar.subarray(0, 1024 + 100)), /unexpected EOF/);
    // a stream that ends on a header boundary without the end marker is accepted (like Go)
    assert.equal(parse(buildTar([{ name: "a", data: "x" }], { noEnd: true })).length, 1);
  });

  it("reads base-256 numbers and old-style directory entries", () => {
    const t = buildTar([
      { name: "olddir/", typeflag: "\0" },
      { name: "big", data: "x" },
    ]);
    // big uid in base-256 in the second header
    const h = t.subarray(512, 1024);
    h.fill(0, 108, 116);
    h[108] = 0x80;
    h.writeUInt32BE(5_000_000, 112);
    let sum = 0;
    h.fill(0x20, 148, 156);
    for (const c of h) sum += c;
    h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "latin1");
    const got = parse(t);
    assert.equal(got[0]!.h.type, TarType.Dir);
    assert.equal(got[1]!.h.uid, 5_000_000);
  });

  it("reads archives written by GNU tar (pax, gnu, ustar formats)", () => {
    const src = join(dir, "gnu-src");
    mkdirSync(join(src, "a".repeat(80), "b".repeat(80)), { recursive: true });
    writeFileSync(join(src, "a".repeat(80), "b".repeat(80), "c".repeat(80)), "deep");
    symlinkSync("x".repeat(120), join(src, "longlink"));
    for (const format of ["pax", "gnu"]) {
      const out = spawnSync("tar", [`--format=${format}`, "-C", src, "-cf", "-", "."], {
        maxBuffer: 1 << 26,
      });
      assert.equal(out.status, 0, out.stderr.toString());
      const got = parse(out.stdout, 333);
      const names = got.map((g) => g.h.name);
      assert.ok(
        names.includes(`./${"a".repeat(80)}/${"b".repeat(80)}/${"c".repeat(80)}`),
        `${format}: ${names}`,
      );
      const ll = got.find((g) => g.h.name === "./longlink");
      assert.equal(ll?.h.linkname, "x".repeat(120));
    }
  });
});

describe("tar writer", () => {
  it("writes headers GNU tar reads back, with PAX for what ustar cannot hold", () => {
    const long = `${"p".repeat(120)}/${"q".repeat(120)}`;
    const parts: Buffer[] = [];
    const add = (h: Parameters<typeof encodeHeader>[0], data?: Buffer) => {
      parts.push(encodeHeader(h));
      if (data) parts.push(data, Buffer.alloc(padLength(data.length)));
    };
    add({ name: "dir/", type: TarType.Dir, mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 1600000000 });
    add(
      { name: "dir/f", type: TarType.File, mode: 0o644, uid: 3000000, gid: 7, size: 3, mtime: 1600000000 },
      Buffer.from("abc"),
    );
    add(
      { name: long, type: TarType.File, mode: 0o600, uid: 0, gid: 0, size: 1, mtime: 1600000000 },
      Buffer.from("z"),
    );
    const uni = Buffer.from("ünï").toString("latin1"); // names are byte strings
    add({
      name: uni,
      type: TarType.Symlink,
      mode: 0o777,
      uid: 0,
      gid: 0,
      size: 0,
      mtime: 1600000000,
      linkname: "l".repeat(130),
    });
    add({
      name: "cap",
      type: TarType.File,
      mode: 0o755,
      uid: 0,
      gid: 0,
      size: 0,
      mtime: 1600000000,
      xattrs: new Map([["security.capability", Buffer.from([1, 2, 3])]]),
    });
    parts.push(END_OF_ARCHIVE);
    const tar = Buffer.concat(parts);
    const listing = spawnSync("tar", ["-tvf", "-", "--numeric-owner", "--quoting-style=literal"], {
      input: tar,
      env: { ...process.env, LC_ALL: "C.UTF-8" },
    });
    assert.equal(listing.status, 0, listing.stderr.toString());
    const text = listing.stdout.toString();
    assert.match(text, /3000000\/7/);
    assert.ok(text.includes(long), text);
    assert.ok(text.includes(`ünï -> ${"l".repeat(130)}`), text);
    const back = parse(tar);
    assert.equal(back[1]!.h.uid, 3000000);
    assert.equal(back[2]!.h.name, long);
    assert.equal(back[3]!.h.name, uni);
    assert.deepEqual([...back[4]!.h.xattrs!.get("security.capability")!], [1, 2, 3]);
    writeFileSync(join(dir, "w.tar"), tar);
    assert.ok(readFileSync(join(dir, "w.tar")).length % 512 === 0);
  });
});
