// The pool of layer-staging threads (src/core/unpack/stage-thread.ts): a thread that finished a
// layer extracts the next one; a thread whose layer failed is never reused; a layer whose bytes
// run on past the tar's end is read (and hashed) to its end before its thread takes the next; a
// layer builds the same tree on a thread as on the event loop.
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { diskUsage } from "../../src/core/snapshots/fsutil.js";
import { stageLayer } from "../../src/core/unpack/stage.js";
import { stageLayerThreaded, stageThreadStats, stageTuning } from "../../src/core/unpack/stage-thread.js";
import { buildTar, chunks, gzip, sha256, type TarEntry } from "../helpers/tarbuild.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const GZ = "application/vnd.oci.image.layer.v1.tar+gzip";

function layer(
  seed: number,
  files = 40,
): { tar: Buffer; blob: Buffer; desc: { mediaType: string; digest: string; size: number } } {
  const entries: TarEntry[] = [{ name: `d${seed}/`, type: "dir", mode: 0o755 }];
  for (let i = 0; i < files; i++)
    entries.push({
      name: `d${seed}/f${i}`,
      data: Buffer.alloc(1000 + i * 300, 97 + ((seed + i) % 26)),
      mode: 0o644,
    });
  entries.push({ name: `d${seed}/hard`, type: "link", linkname: `d${seed}/f0` });
  entries.push({ name: `d${seed}/sym`, type: "symlink", linkname: "f1" });
  const tar = buildTar(entries);
  const blob = gzip(tar);
  return { tar, blob, desc: { mediaType: GZ, digest: sha256(blob), size: blob.length } };
}

describe("layer staging threads", () => {
  let dir: string;
  let n = 0;
  const saved = { ...stageTuning };
  const fresh = () => {
    const d = join(dir, `stage-${n++}`);
    mkdirSync(d);
    return d;
  };
  before(async () => {
    dir = await makeTempDir("stage-pool");
    stageTuning.workerMinLayer = 0; // every layer on a thread
    stageTuning.idleWorkers = 1;
    stageTuning.idleMs = 30_000;
  });
  after(async () => {
    Object.assign(stageTuning, saved);
    await removeTempDir(dir);
  });

  it("extracts consecutive layers on one thread, each into its tree", async () => {
    const before = stageThreadStats().started;
    for (const seed of [1, 2, 3]) {
      const l = layer(seed);
      const d = fresh();
      const staged = await stageLayerThreaded(d, chunks(l.blob, 4096), l.desc, "plain");
      assert.equal(staged.diffId, sha256(l.tar));
      const u = await diskUsage(d);
      assert.ok(u.inodes >= 42, `inodes ${u.inodes}`); // dir, 40 files, symlink
    }
    // the first layer may have found a thread an earlier test left idle
    assert.ok(
      stageThreadStats().started - before <= 1,
      `threads started: ${stageThreadStats().started - before}`,
    );
    assert.equal(stageThreadStats().idle, 1);
  });

  it("builds the same tree on a thread and on the event loop", async () => {
    const l = layer(7, 120);
    const a = await stageLayerThreaded(fresh(), chunks(l.blob), l.desc, "plain");
    const b = await stageLayer(fresh(), chunks(l.blob), l.desc, "plain");
    assert.deepEqual(await diskUsage(a.dir), await diskUsage(b.dir));
    assert.equal(a.diffId, b.diffId);
  });

  it("retires a thread whose layer failed, and the next layer gets a working one", async () => {
    const bad = Buffer.alloc(4096, 0x41); // not a tar, not compressed
    const badDesc = {
      mediaType: "application/vnd.oci.image.layer.v1.tar",
      digest: sha256(bad),
      size: bad.length,
    };
    const startedBefore = stageThreadStats().started;
    await assert.rejects(stageLayerThreaded(fresh(), chunks(bad, 512), badDesc, "plain"));
    // the idle thread took the bad layer and was terminated: the pool is empty
    assert.equal(stageThreadStats().idle, 0);
    const l = layer(4);
    const staged = await stageLayerThreaded(fresh(), chunks(l.blob), l.desc, "plain");
    assert.equal(staged.diffId, sha256(l.tar));
    assert.equal(stageThreadStats().started - startedBefore, 1);
  });

  it("reads a layer past its tar's end before the thread takes the next layer", async () => {
    // A tar whose end (two zero blocks) comes 4 MiB before its stream's: the diff ID covers the
    // whole stream, and the thread is handed the next layer only after all of it.
    const l = layer(5);
    const padded = Buffer.concat([l.tar, Buffer.alloc(4 << 20)]);
    const desc = {
      mediaType: "application/vnd.oci.image.layer.v1.tar",
      digest: sha256(padded),
      size: padded.length,
    };
    const first = await stageLayerThreaded(fresh(), chunks(padded, 1 << 16), desc, "plain", {
      verify: false,
    });
    assert.equal(first.diffId, sha256(padded));
    const next = layer(6);
    const d = fresh();
    const staged = await stageLayerThreaded(d, chunks(next.blob, 1 << 10), next.desc, "plain");
    assert.equal(staged.diffId, sha256(next.tar));
    assert.ok((await diskUsage(d)).inodes >= 42);
  });
});
