// The pieces a download is copied into (src/core/unpack/pieces.ts): the same bytes in whole
// MiB-sized buffers, handed back by an extraction thread once its decompressor (zlib, or the
// zstd program) took them in, and reused for the next copy; the layer extracted from them is
// intact.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { givePieces, intoPieces, PIECE_SIZE, pooledPieces, takePiece } from "../../src/core/unpack/pieces.js";
import { stageLayerThreaded, stageTuning } from "../../src/core/unpack/stage-thread.js";
import { buildTar, chunks, gzip, sha256, zstd } from "../helpers/tarbuild.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

async function collect(src: AsyncIterable<Buffer>): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for await (const c of src) out.push(c);
  return out;
}

describe("download pieces", () => {
  let dir: string;
  const saved = { ...stageTuning };
  before(async () => {
    dir = await makeTempDir("pull-pieces");
    stageTuning.workerMinLayer = 0; // every layer on a thread
  });
  after(async () => {
    Object.assign(stageTuning, saved);
    await removeTempDir(dir);
  });

  it("carries the bytes in whole pieces, and a piece given back is the next one taken", async () => {
    const data = randomBytes(3 * PIECE_SIZE + 12_345);
    const sizes = [1, 70_000, 65_536, 2 * PIECE_SIZE, 5];
    async function* odd(): AsyncGenerator<Buffer> {
      let at = 0;
      for (let i = 0; at < data.length; i++) {
        const n = sizes[i % sizes.length]!;
        yield data.subarray(at, at + n);
        at += n;
      }
    }
    const pieces = await collect(intoPieces(odd()));
    assert.deepEqual(Buffer.concat(pieces), data);
    assert.deepEqual(
      pieces.map((p) => p.length),
      [PIECE_SIZE, PIECE_SIZE, PIECE_SIZE, 12_345],
    );
    for (const p of pieces.slice(0, 3)) {
      assert.equal(p.byteOffset, 0);
      assert.equal(p.buffer.byteLength, PIECE_SIZE);
    }
    const back = pieces[0]!.buffer as ArrayBuffer;
    givePieces([back]);
    assert.equal(takePiece(), back);
  });

  for (const [kind, mediaType, compress] of [
    ["gzip", "application/vnd.oci.image.layer.v1.tar+gzip", gzip],
    ["zstd", "application/vnd.oci.image.layer.v1.tar+zstd", zstd],
  ] as const) {
    it(`a thread extracting a ${kind} layer hands its pieces back, and the layer is intact`, async () => {
      // random contents: the blob stays as big as the tar, several pieces
      const tar = buildTar([
        { name: "big", data: randomBytes(4 * PIECE_SIZE), mode: 0o644 },
        { name: "small", data: Buffer.from("small"), mode: 0o644 },
      ]);
      const blob = compress(tar);
      const whole = Math.floor(blob.length / PIECE_SIZE);
      assert.ok(whole >= 3, `blob of ${blob.length} bytes`);
      while (pooledPieces() > 0) takePiece(); // an empty pool: what comes back is this layer's
      const d = join(dir, kind);
      mkdirSync(d);
      const staged = await stageLayerThreaded(
        d,
        intoPieces(chunks(blob, 65_536)),
        { mediaType, digest: sha256(blob), size: blob.length },
        "plain",
        { giveChunks: true },
      );
      assert.equal(staged.diffId, sha256(tar));
      // the last batch may still be on its way
      for (let i = 0; i < 100 && pooledPieces() < whole; i++) await sleep(10);
      assert.equal(pooledPieces(), whole);
    });
  }
});
