// The zstd filter program (src/core/diff/compression.ts): started with posix_spawn, its output
// streamed back, its failures reported with what it printed, and a missing binary named with the
// Debian package that provides it.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { BerthError } from "../../src/base/errdefs.js";
import { compress, decompress, openLayer } from "../../src/core/diff/compression.js";

async function* pieces(b: Buffer, size: number): AsyncGenerator<Buffer> {
  for (let o = 0; o < b.length; o += size) yield b.subarray(o, o + size);
}

async function collect(src: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of src) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

describe("zstd filter", () => {
  // ~6 MiB of mixed data: compressible halves and random ones, more than a pipe holds
  const data = Buffer.concat(
    Array.from({ length: 12 }, (_, i) => (i % 2 ? randomBytes(256 << 10) : Buffer.alloc(256 << 10, i))),
  );

  // first: lookPath caches the programs it found, and no test has looked for zstd yet
  it("names the Debian package when the binary is missing", async () => {
    const path = process.env.PATH;
    process.env.PATH = "/nonexistent-berth-test";
    try {
      const z = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0]);
      await assert.rejects(collect(decompress(pieces(z, 8), "zstd")), (err: Error) => {
        assert.ok(err instanceof BerthError);
        assert.equal(err.kind, "not implemented");
        assert.match(err.message, /zstd binary not found \(install the Debian package "zstd"\)/);
        return true;
      });
    } finally {
      process.env.PATH = path;
    }
  });

  it("decompresses what the zstd binary compressed, fed in small pieces", async () => {
    const z = execFileSync("zstd", ["-c", "-q", "-3"], { input: data, maxBuffer: 64 << 20 });
    const out = await collect(decompress(pieces(z, 4096), "zstd"));
    assert.equal(out.length, data.length);
    assert.ok(out.equals(data));
  });

  it("round-trips through compress, and openLayer hashes the tar bytes", async () => {
    const z = await collect(compress(pieces(data, 65536), "zstd"));
    assert.notEqual(z.length, data.length);
    const layer = openLayer(pieces(z, 100_000), "zstd");
    const out = await collect(layer);
    assert.ok(out.equals(data));
    const d = await layer.tarDigest();
    assert.equal(d.digest, `sha256:${createHash("sha256").update(data).digest("hex")}`);
    assert.equal(d.size, data.length);
  });

  it("decompress hands out chunks that stay valid (openLayer's may be reused)", async () => {
    const z = execFileSync("zstd", ["-c", "-q", "-3"], { input: data, maxBuffer: 64 << 20 });
    const kept: Buffer[] = [];
    for await (const c of decompress(pieces(z, 65536), "zstd")) kept.push(c); // no copy
    assert.ok(kept.length > 1);
    assert.ok(Buffer.concat(kept).equals(data));
  });

  it("fails with what zstd printed when the stream is cut short", async () => {
    const z = execFileSync("zstd", ["-c", "-q", "-3"], { input: data, maxBuffer: 64 << 20 });
    await assert.rejects(
      collect(decompress(pieces(z.subarray(0, z.length >> 1), 8192), "zstd")),
      (err: Error) => {
        assert.match(err.message, /zstd -d -c -q failed \(exit \d+\): .+/);
        return true;
      },
    );
  });

  it("stops the program when the reader stops early", async () => {
    const z = execFileSync("zstd", ["-c", "-q", "-3"], { input: data, maxBuffer: 64 << 20 });
    for await (const c of decompress(pieces(z, 4096), "zstd")) {
      assert.ok(c.length > 0);
      break;
    }
    // a second run after the abandoned one still works (nothing is left holding the pipes)
    const out = await collect(decompress(pieces(z, 1 << 20), "zstd"));
    assert.ok(out.equals(data));
  });
});
