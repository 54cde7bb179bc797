// A reproducible set of gzip layer blobs for apply benchmarks: about 300 MB of uncompressed tar in
// six layers (an OS-like base with many small files, a runtime with big shared objects, a deep
// node_modules-like tree, large blobs, an app layer with whiteouts and an opaque directory, a
// small config layer). Generated once and cached under /tmp.
import { createHash } from "node:crypto";
import { once } from "node:events";
import { createWriteStream, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createGzip } from "node:zlib";
import { END_OF_ARCHIVE, encodeHeader, padLength, TarType } from "../src/core/diff/tar.js";

export interface LayerFile {
  /** Path of the gzip blob. */
  path: string;
  /** sha256 of the compressed blob. */
  digest: string;
  size: number;
  /** sha256 of the uncompressed tar (the diff ID). */
  diffId: string;
  tarSize: number;
  entries: number;
  mediaType: string;
}

const VERSION = 5;

/** Deterministic PRNG (xorshift32). */
class Rng {
  constructor(private s: number) {}
  next(): number {
    let x = this.s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.s = x >>> 0;
    return this.s / 0x100000000;
  }
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  /** Log-uniform size between lo and hi. */
  size(lo: number, hi: number): number {
    return Math.floor(Math.exp(Math.log(lo) + this.next() * (Math.log(hi) - Math.log(lo))));
  }
}

const WORDS =
  "the of and to in is that for it as was with be by on not he this are or his from at which but have an they you were her she there been one all we their has would when if so no will can more other its into time only some could new them man out".split(
    " ",
  );

function textPool(rng: Rng, size: number): Buffer {
  const parts: string[] = [];
  let n = 0;
  while (n < size) {
    let line = "";
    const words = rng.int(3, 14);
    for (let i = 0; i < words; i++)
      line += `${WORDS[rng.int(0, WORDS.length - 1)]}${rng.next() < 0.1 ? rng.int(0, 99999) : ""} `;
    line += "\n";
    parts.push(line);
    n += line.length;
  }
  return Buffer.from(parts.join("")).subarray(0, size);
}

function binaryPool(rng: Rng, size: number): Buffer {
  // half random, half runs: compresses to roughly 60%
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i += 4) {
    if ((i >> 12) % 2 === 0) b.writeUInt32LE((rng.next() * 0x100000000) >>> 0, i);
    else b.writeUInt32LE((i >> 6) & 0xff, i);
  }
  return b;
}

interface Entry {
  name: string;
  type: string;
  size?: number;
  linkname?: string;
  mode?: number;
  /** Data: a slice of a pool. */
  pool?: "text" | "bin";
}

function* baseLayer(rng: Rng): Generator<Entry> {
  const dirs = ["bin", "etc", "lib", "usr", "usr/bin", "usr/lib", "usr/share", "var", "var/lib", "opt"];
  for (const d of dirs) yield { name: `${d}/`, type: TarType.Dir };
  for (let d = 0; d < 400; d++) {
    const dir = `usr/share/pkg${d}`;
    yield { name: `${dir}/`, type: TarType.Dir };
    const n = rng.int(5, 30);
    for (let f = 0; f < n; f++)
      yield { name: `${dir}/file${f}.txt`, type: TarType.File, size: rng.size(200, 60000), pool: "text" };
  }
  for (let f = 0; f < 450; f++)
    yield {
      name: `usr/bin/tool${f}`,
      type: TarType.File,
      size: rng.size(20000, 400000),
      pool: "bin",
      mode: 0o755,
    };
  for (let f = 0; f < 400; f++)
    yield { name: `bin/link${f}`, type: TarType.Symlink, linkname: `../usr/bin/tool${f}` };
  for (let f = 0; f < 50; f++)
    yield { name: `usr/bin/hard${f}`, type: TarType.Link, linkname: `usr/bin/tool${f}` };
  for (let f = 0; f < 300; f++)
    yield { name: `etc/conf${f}`, type: TarType.File, size: rng.size(50, 4000), pool: "text" };
}

function* runtimeLayer(rng: Rng): Generator<Entry> {
  yield { name: "usr/lib/python3/", type: TarType.Dir };
  for (let d = 0; d < 250; d++) {
    const dir = `usr/lib/python3/mod${d}`;
    yield { name: `${dir}/`, type: TarType.Dir };
    const n = rng.int(10, 60);
    for (let f = 0; f < n; f++)
      yield { name: `${dir}/m${f}.py`, type: TarType.File, size: rng.size(300, 30000), pool: "text" };
  }
  for (let f = 0; f < 5; f++)
    yield {
      name: `usr/lib/libbig${f}.so`,
      type: TarType.File,
      size: rng.size(2e6, 12e6),
      pool: "bin",
      mode: 0o755,
    };
}

function* modulesLayer(rng: Rng): Generator<Entry> {
  yield { name: "app/", type: TarType.Dir };
  yield { name: "app/node_modules/", type: TarType.Dir };
  for (let p = 0; p < 700; p++) {
    const dir = `app/node_modules/pkg${p}`;
    yield { name: `${dir}/`, type: TarType.Dir };
    yield { name: `${dir}/lib/`, type: TarType.Dir };
    yield { name: `${dir}/package.json`, type: TarType.File, size: rng.size(300, 2000), pool: "text" };
    const n = rng.int(5, 40);
    for (let f = 0; f < n; f++)
      yield { name: `${dir}/lib/f${f}.js`, type: TarType.File, size: rng.size(150, 8000), pool: "text" };
  }
}

function* blobLayer(rng: Rng): Generator<Entry> {
  yield { name: "data/", type: TarType.Dir };
  for (let f = 0; f < 2; f++)
    yield { name: `data/blob${f}.bin`, type: TarType.File, size: rng.int(14e6, 18e6), pool: "bin" };
}

function* appLayer(rng: Rng): Generator<Entry> {
  yield { name: "usr/share/", type: TarType.Dir };
  for (let d = 0; d < 40; d++) yield { name: `usr/share/.wh.pkg${d}`, type: TarType.File, size: 0 };
  yield { name: "etc/", type: TarType.Dir };
  for (let f = 0; f < 50; f++) yield { name: `etc/.wh.conf${f}`, type: TarType.File, size: 0 };
  yield { name: "usr/share/pkg100/", type: TarType.Dir };
  yield { name: "usr/share/pkg100/.wh..wh..opq", type: TarType.File, size: 0 };
  yield { name: "usr/share/pkg100/new.txt", type: TarType.File, size: 1000, pool: "text" };
  yield { name: "srv/", type: TarType.Dir };
  for (let d = 0; d < 100; d++) {
    yield { name: `srv/d${d}/`, type: TarType.Dir };
    for (let f = 0; f < 30; f++)
      yield { name: `srv/d${d}/page${f}.html`, type: TarType.File, size: rng.size(500, 40000), pool: "text" };
  }
}

function* configLayer(rng: Rng): Generator<Entry> {
  yield { name: "etc/", type: TarType.Dir };
  for (let f = 0; f < 100; f++)
    yield { name: `etc/app${f}.conf`, type: TarType.File, size: rng.size(100, 3000), pool: "text" };
}

const LAYERS = [baseLayer, runtimeLayer, modulesLayer, blobLayer, appLayer, configLayer];

async function writeLayer(
  entries: Iterable<Entry>,
  pools: Record<"text" | "bin", Buffer>,
  rng: Rng,
  out: string,
): Promise<LayerFile> {
  const tmp = `${out}.tmp`;
  const file = createWriteStream(tmp);
  const gz = createGzip({ level: 6, chunkSize: 1 << 20 });
  gz.pipe(file);
  const blobHash = createHash("sha256");
  let blobSize = 0;
  gz.on("data", (c: Buffer) => {
    blobHash.update(c);
    blobSize += c.length;
  });
  const tarHash = createHash("sha256");
  let tarSize = 0;
  let count = 0;
  const write = async (b: Buffer) => {
    tarHash.update(b);
    tarSize += b.length;
    if (!gz.write(b)) await once(gz, "drain");
  };
  const mtime = 1700000000;
  for (const e of entries) {
    const size = e.type === TarType.File ? (e.size ?? 0) : 0;
    const mode = e.mode ?? (e.type === TarType.Dir ? 0o755 : 0o644);
    await write(
      encodeHeader({ name: e.name, type: e.type, mode, uid: 0, gid: 0, size, mtime, linkname: e.linkname }),
    );
    if (size > 0) {
      const pool = pools[e.pool ?? "text"];
      let left = size;
      while (left > 0) {
        const n = Math.min(left, pool.length >> 1);
        const off = rng.int(0, pool.length - n);
        await write(pool.subarray(off, off + n));
        left -= n;
      }
      const pad = padLength(size);
      if (pad) await write(Buffer.alloc(pad));
    }
    count++;
  }
  await write(END_OF_ARCHIVE);
  gz.end();
  await once(file, "close");
  renameSync(tmp, out);
  return {
    path: out,
    digest: `sha256:${blobHash.digest("hex")}`,
    size: blobSize,
    diffId: `sha256:${tarHash.digest("hex")}`,
    tarSize,
    entries: count,
    mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
  };
}

/** The layer set, generated on first use into `dir` (default /tmp/berth-bench-layers). */
export async function benchLayers(dir = "/tmp/berth-bench-layers"): Promise<LayerFile[]> {
  const manifest = join(dir, `layers-v${VERSION}.json`);
  if (existsSync(manifest)) {
    const layers = JSON.parse(readFileSync(manifest, "utf8")) as LayerFile[];
    if (layers.every((l) => existsSync(l.path))) return layers;
  }
  mkdirSync(dir, { recursive: true });
  const rng = new Rng(0x9e3779b9);
  const pools = { text: textPool(rng, 8 << 20), bin: binaryPool(rng, 8 << 20) };
  const out: LayerFile[] = [];
  for (let i = 0; i < LAYERS.length; i++) {
    out.push(await writeLayer(LAYERS[i]!(rng), pools, rng, join(dir, `layer${i}.tar.gz`)));
  }
  writeFileSync(manifest, JSON.stringify(out, null, 2));
  return out;
}
