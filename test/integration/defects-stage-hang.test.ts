// Issue 14 defect 4, the cause of the hung full-disk pulls: a layer extracted on a worker thread
// that fails (out of space, a bad tar) while more than the in-flight limit of its bytes were sent
// to it. The feeder waited for an acknowledgement the failed worker never sent, the extraction
// never settled, the download feeding it stalled on the full pipe, and the pull hung. Here the
// worker fails on its first bytes, with 24 MiB already queued for it and the download stalled (the
// pipe stays open): the extraction must fail at once with the worker's error.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { ChunkPipe } from "../../src/core/unpack/stage.js";
import { stageLayerThreaded } from "../../src/core/unpack/stage-thread.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

describe("a layer extraction thread that fails with bytes in flight", () => {
  let dir: string;
  before(async () => {
    dir = await makeTempDir("stage-hang");
  });
  after(async () => {
    await removeTempDir(dir);
  });

  it("fails promptly instead of waiting for acknowledgements that never come", async () => {
    // a tar header that does not parse (bad checksum), then plenty of bytes behind it
    const bad = Buffer.alloc(512, 0x41);
    const rest = Buffer.alloc(24 << 20);
    const size = bad.length + rest.length + (8 << 20);
    const desc = {
      mediaType: "application/vnd.oci.image.layer.v1.tar",
      digest: `sha256:${createHash("sha256").update("never checked").digest("hex")}`,
      size,
    };
    // room for everything: the download side never waits here, it just stops sending
    const pipe = new ChunkPipe(64 << 20);
    await pipe.write(bad);
    for (let off = 0; off < rest.length; off += 1 << 20)
      await pipe.write(rest.subarray(off, off + (1 << 20)));
    // no end(): the download is stalled, as it was behind the full pipe

    const t0 = Date.now();
    let timer: NodeJS.Timeout | undefined;
    const hung = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error("the extraction never settled")), 15_000);
    });
    try {
      await assert.rejects(
        Promise.race([stageLayerThreaded(dir, pipe, desc, "plain", { verify: false }), hung]),
        (err: Error) => {
          assert.doesNotMatch(err.message, /never settled/);
          return true;
        },
      );
    } finally {
      clearTimeout(timer);
      pipe.close();
    }
    assert.ok(Date.now() - t0 < 10_000, `took ${Date.now() - t0} ms`);
  });
});
