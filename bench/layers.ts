// Reproducible layer blobs for the apply and pull benchmarks, generated once and cached under /tmp.
// The "big" set: about 300 MB of uncompressed tar in six layers (an OS-like base with many small
// files, a runtime with big shared objects, a deep node_modules-like tree, large blobs, an app layer
// with whiteouts and an opaque directory, a small config layer). The "small" set: six layers of
// about 20k files of 1-16 KiB in all, in directories of 50. Either set can be gzip (node:zlib,
// level 6) or zstd (the `zstd` binary, level 3) compressed, and scaled down (entry counts times
// `scale`) for quick runs. `benchLayers()` is the big gzip set at full size.
import { spawn } from "node:child_process";
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

/** Scales an entry count (identity at scale 1, at least 1). */
type Count = (n: number) => number;

function* baseLayer(rng: Rng, k: Count): Generator<Entry> {
  const dirs = ["bin", "etc", "lib", "usr", "usr/bin", "usr/lib", "usr/share", "var", "var/lib", "opt"];
  for (const d of dirs) yield { name: `${d}/`, type: TarType.Dir };
  for (let d = 0; d < k(400); d++) {
    const dir = `usr/share/pkg${d}`;
    yield { name: `${dir}/`, type: TarType.Dir };
    const n = rng.int(5, 30);
    for (let f = 0; f < n; f++)
      yield { name: `${dir}/file${f}.txt`, type: TarType.File, size: rng.size(200, 60000), pool: "text" };
  }
  const tools = k(450);
  for (let f = 0; f < tools; f++)
    yield {
      name: `usr/bin/tool${f}`,
      type: TarType.File,
      size: rng.size(20000, 400000),
      pool: "bin",
      mode: 0o755,
    };
  for (let f = 0; f < Math.min(tools, k(400)); f++)
    yield { name: `bin/link${f}`, type: TarType.Symlink, linkname: `../usr/bin/tool${f}` };
  for (let f = 0; f < Math.min(tools, k(50)); f++)
    yield { name: `usr/bin/hard${f}`, type: TarType.Link, linkname: `usr/bin/tool${f}` };
  for (let f = 0; f < k(300); f++)
    yield { name: `etc/conf${f}`, type: TarType.File, size: rng.size(50, 4000), pool: "text" };
}

function* runtimeLayer(rng: Rng, k: Count): Generator<Entry> {
  yield { name: "usr/lib/python3/", type: TarType.Dir };
  for (let d = 0; d < k(250); d++) {
    const dir = `usr/lib/python3/mod${d}`;
    yield { name: `${dir}/`, type: TarType.Dir };
    const n = rng.int(10, 60);
    for (let f = 0; f < n; f++)
      yield { name: `${dir}/m${f}.py`, type: TarType.File, size: rng.size(300, 30000), pool: "text" };
  }
  for (let f = 0; f < k(5); f++)
    yield {
      name: `usr/lib/libbig${f}.so`,
      type: TarType.File,
      size: rng.size(2e6, 12e6),
      pool: "bin",
      mode: 0o755,
    };
}

function* modulesLayer(rng: Rng, k: Count): Generator<Entry> {
  yield { name: "app/", type: TarType.Dir };
  yield { name: "app/node_modules/", type: TarType.Dir };
  for (let p = 0; p < k(700); p++) {
    const dir = `app/node_modules/pkg${p}`;
    yield { name: `${dir}/`, type: TarType.Dir };
    yield { name: `${dir}/lib/`, type: TarType.Dir };
    yield { name: `${dir}/package.json`, type: TarType.File, size: rng.size(300, 2000), pool: "text" };
    const n = rng.int(5, 40);
    for (let f = 0; f < n; f++)
      yield { name: `${dir}/lib/f${f}.js`, type: TarType.File, size: rng.size(150, 8000), pool: "text" };
  }
}

function* blobLayer(rng: Rng, k: Count): Generator<Entry> {
  yield { name: "data/", type: TarType.Dir };
  // two blobs of 14-18 MB at full size; scaled down, one blob of proportionally fewer bytes
  const scale = k(1000) / 1000;
  for (let f = 0; f < k(2); f++)
    yield {
      name: `data/blob${f}.bin`,
      type: TarType.File,
      size: Math.round(rng.int(14e6, 18e6) * Math.min(1, scale * 2)),
      pool: "bin",
    };
}

function* appLayer(rng: Rng, k: Count): Generator<Entry> {
  yield { name: "usr/share/", type: TarType.Dir };
  for (let d = 0; d < Math.min(40, k(400)); d++)
    yield { name: `usr/share/.wh.pkg${d}`, type: TarType.File, size: 0 };
  yield { name: "etc/", type: TarType.Dir };
  for (let f = 0; f < Math.min(50, k(300)); f++)
    yield { name: `etc/.wh.conf${f}`, type: TarType.File, size: 0 };
  yield { name: "usr/share/pkg100/", type: TarType.Dir };
  yield { name: "usr/share/pkg100/.wh..wh..opq", type: TarType.File, size: 0 };
  yield { name: "usr/share/pkg100/new.txt", type: TarType.File, size: 1000, pool: "text" };
  yield { name: "srv/", type: TarType.Dir };
  for (let d = 0; d < k(100); d++) {
    yield { name: `srv/d${d}/`, type: TarType.Dir };
    for (let f = 0; f < 30; f++)
      yield { name: `srv/d${d}/page${f}.html`, type: TarType.File, size: rng.size(500, 40000), pool: "text" };
  }
}

function* configLayer(rng: Rng, k: Count): Generator<Entry> {
  yield { name: "etc/", type: TarType.Dir };
  for (let f = 0; f < k(100); f++)
    yield { name: `etc/app${f}.conf`, type: TarType.File, size: rng.size(100, 3000), pool: "text" };
}

const LAYERS = [baseLayer, runtimeLayer, modulesLayer, blobLayer, appLayer, configLayer];

/** Files in the small-files set at scale 1, spread evenly over its six layers. */
export const SMALL_FILES_TOTAL = 20_000;
const SMALL_LAYERS = 6;
const SMALL_PER_DIR = 50;

/** Layer `layer` of the small-files set: `files` files of 1-16 KiB (2/3 text, 1/3 binary-ish). */
function* smallFilesLayer(rng: Rng, layer: number, files: number): Generator<Entry> {
  const top = `srv/l${layer}`;
  yield { name: "srv/", type: TarType.Dir };
  yield { name: `${top}/`, type: TarType.Dir };
  for (let f = 0; f < files; f++) {
    const dir = `${top}/d${Math.floor(f / SMALL_PER_DIR)}`;
    if (f % SMALL_PER_DIR === 0) yield { name: `${dir}/`, type: TarType.Dir };
    yield {
      name: `${dir}/f${f}.dat`,
      type: TarType.File,
      size: rng.size(1024, 16384),
      pool: f % 3 === 2 ? "bin" : "text",
    };
  }
}

export type LayerCompression = "gzip" | "zstd";
export type LayerSetName = "big" | "small";

export const LayerMediaType: Record<LayerCompression, string> = {
  gzip: "application/vnd.oci.image.layer.v1.tar+gzip",
  zstd: "application/vnd.oci.image.layer.v1.tar+zstd",
};

/** Where compressed bytes go: a writable for the tar and a promise that settles once all is out. */
interface Compressor {
  input: NodeJS.WritableStream;
  output: NodeJS.ReadableStream;
  done: Promise<void>;
}

function compressor(kind: LayerCompression): Compressor {
  if (kind === "gzip") {
    const gz = createGzip({ level: 6, chunkSize: 1 << 20 });
    return { input: gz, output: gz, done: Promise.resolve() };
  }
  const child = spawn("zstd", ["-q", "-c", "-3"], { stdio: ["pipe", "pipe", "inherit"] });
  const done = new Promise<void>((resolve, reject) => {
    child.once("error", reject);
    child.once("close", (code, signal) =>
      code === 0 ? resolve() : reject(new Error(`zstd exited with ${code ?? signal}`)),
    );
  });
  return { input: child.stdin, output: child.stdout, done };
}

async function writeLayer(
  entries: Iterable<Entry>,
  pools: Record<"text" | "bin", Buffer>,
  rng: Rng,
  out: string,
  compression: LayerCompression = "gzip",
): Promise<LayerFile> {
  const tmp = `${out}.tmp`;
  const file = createWriteStream(tmp);
  const z = compressor(compression);
  const gz = z.input;
  z.output.pipe(file);
  const blobHash = createHash("sha256");
  let blobSize = 0;
  z.output.on("data", (c: Buffer) => {
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
  await Promise.all([once(file, "close"), z.done]);
  renameSync(tmp, out);
  return {
    path: out,
    digest: `sha256:${blobHash.digest("hex")}`,
    size: blobSize,
    diffId: `sha256:${tarHash.digest("hex")}`,
    tarSize,
    entries: count,
    mediaType: LayerMediaType[compression],
  };
}

const DEFAULT_DIR = "/tmp/berth-bench-layers";

export interface LayerSetOptions {
  /** "big" (default): the ~300 MB mixed set; "small": ~20k files of 1-16 KiB. */
  set?: LayerSetName;
  /** Default gzip. */
  compression?: LayerCompression;
  /** Multiplies entry counts (and the big blobs' sizes), in (0, 1]; default 1. */
  scale?: number;
}

/** The big gzip layer set at full size, generated on first use into `dir`. */
export async function benchLayers(dir = DEFAULT_DIR): Promise<LayerFile[]> {
  return benchLayerSet({}, dir);
}

/** A layer set, generated on first use into `dir` (default /tmp/berth-bench-layers) and cached there. */
export async function benchLayerSet(opts: LayerSetOptions = {}, dir = DEFAULT_DIR): Promise<LayerFile[]> {
  const set = opts.set ?? "big";
  const compression = opts.compression ?? "gzip";
  const scale = opts.scale ?? 1;
  if (!(scale > 0 && scale <= 1)) throw new Error(`layer set scale ${scale}: want a number in (0, 1]`);
  // the full-size big gzip set keeps its original names (bench/apply.ts shares that cache)
  const plain = set === "big" && compression === "gzip" && scale === 1;
  const tag = plain ? "" : `-${set}-${compression}-x${scale}`;
  const ext = compression === "gzip" ? "tar.gz" : "tar.zst";
  const manifest = join(dir, `layers-v${VERSION}${tag}.json`);
  if (existsSync(manifest)) {
    const layers = JSON.parse(readFileSync(manifest, "utf8")) as LayerFile[];
    if (layers.every((l) => existsSync(l.path))) return layers;
  }
  mkdirSync(dir, { recursive: true });
  const k: Count = (n) => Math.max(1, Math.round(n * scale));
  const rng = new Rng(set === "big" ? 0x9e3779b9 : 0x85ebca6b);
  const pools = { text: textPool(rng, 8 << 20), bin: binaryPool(rng, 8 << 20) };
  const generators: (() => Iterable<Entry>)[] =
    set === "big"
      ? LAYERS.map((g) => () => g(rng, k))
      : Array.from({ length: SMALL_LAYERS }, (_, i) => () => {
          const total = k(SMALL_FILES_TOTAL);
          const files = Math.floor(total / SMALL_LAYERS) + (i < total % SMALL_LAYERS ? 1 : 0);
          return smallFilesLayer(rng, i, files);
        });
  const out: LayerFile[] = [];
  for (let i = 0; i < generators.length; i++) {
    const file = join(dir, plain ? `layer${i}.${ext}` : `${set}-x${scale}-layer${i}.${ext}`);
    out.push(await writeLayer(generators[i]!(), pools, rng, file, compression));
  }
  writeFileSync(manifest, JSON.stringify(out, null, 2));
  return out;
}
