// Issue 14 defects 4 and 5: a pull on a full disk. With berthd's root on a small tmpfs, pulling an
// image bigger than the space must end promptly with an error every time (it hung in 2 of 3 runs),
// the error must name the blob that failed and say what happened, berthd must log it at info or
// above, and nothing partial may stay behind (no ingest, no image record). After space is freed
// the same pull succeeds. A full metadata database (SQLITE_FULL) and ENOSPC map to gRPC
// ResourceExhausted, not Unknown.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import Database from "better-sqlite3";
import { GrpcCode, isKind, toGrpcStatus } from "../../src/base/errdefs.js";
import { Content, WriteAction } from "../../src/gen/containerd/services/content/v1/content_pb.js";
import { Connection } from "../../src/grpc/client.js";
import { kind } from "../helpers/assert.js";
import { berth, ok } from "../helpers/ctr.js";
import { type Daemon, startBerthd } from "../helpers/daemons.js";
import {
  type Blob,
  blob,
  linuxConfigBlob,
  MediaType,
  manifestBlob,
  pushBlob,
  pushManifest,
} from "../helpers/images.js";
import { type Registry, startRegistry } from "../helpers/registry.js";
import { buildTar, gzip, sha256 } from "../helpers/tarbuild.js";
import { makeTempDir, removeTempDir, unmountAll } from "../helpers/tmp.js";

const REPO = "test/big";
/** Four layers of 12 MiB that do not compress: far more than the 32 MiB filesystem holds. */
const LAYERS = 4;
const LAYER_BYTES = 12 << 20;
const SMALL_FS = "32m";
/** More than the small filesystem holds. */
const SIZE_PROBE = 48 << 20;
const BIG_FS = "400m";
/** Out of space, as the disk (ENOSPC) or SQLite (SQLITE_FULL) says it. */
const FULL = /no space left on device|database or disk is full/;

/** An image of `LAYERS` random-content layers (each big enough to be extracted on a thread). */
function bigImage(): { manifest: Blob; config: Blob; layers: Blob[] } {
  const layers: Blob[] = [];
  const diffIds: string[] = [];
  for (let i = 0; i < LAYERS; i++) {
    const tar = buildTar([{ name: `data-${i}.bin`, data: randomBytes(LAYER_BYTES), mtime: 1700000000 }]);
    diffIds.push(sha256(tar));
    layers.push(blob(MediaType.layerGzip, gzip(tar)));
  }
  const config = linuxConfigBlob(diffIds, { Cmd: ["sh"] });
  return { manifest: manifestBlob(config, layers), config, layers };
}

describe("a pull on a full disk", () => {
  let tmp: string;
  let fs: string;
  let reg: Registry;
  let d: Daemon;
  let ref: string;
  let img: ReturnType<typeof bigImage>;

  before(async () => {
    tmp = await makeTempDir("full-disk");
    fs = join(tmp, "fs");
    mkdirSync(fs);
    execFileSync("mount", ["-t", "tmpfs", "-o", `size=${SMALL_FS},mode=0711`, "tmpfs", fs]);
    reg = await startRegistry();
    img = bigImage();
    for (const b of [...img.layers, img.config]) await pushBlob(reg.url, REPO, b);
    await pushManifest(reg.url, REPO, "1", img.manifest);
    ref = `${reg.host}/${REPO}:1`;
    d = await startBerthd({ root: join(fs, "root"), config: "version = 2\n" });
  });

  after(async () => {
    await d?.cleanup();
    await reg?.cleanup();
    if (tmp) {
      unmountAll(tmp);
      await removeTempDir(tmp);
    }
  });

  const ingestDir = () => join(d.root, "io.containerd.content.v1.content", "ingest");
  const ingests = () => {
    try {
      return readdirSync(ingestDir());
    } catch {
      return [];
    }
  };

  it("ends promptly with an error naming the blob, every time, and leaves nothing partial", async () => {
    const digests = new Set([...img.layers, img.config, img.manifest].map((b) => b.digest));
    for (let run = 1; run <= 3; run++) {
      const logFrom = d.logs().length;
      const r = await berth(d.address, ["images", "pull", "--plain-http", ref], { timeoutMs: 60_000 });
      assert.equal(r.signal, null, `run ${run}: the pull hung (killed after ${r.ms} ms)\n${r.stderr}`);
      assert.notEqual(r.code, 0, `run ${run}: the pull succeeded on a full disk`);
      assert.ok(r.ms < 20_000, `run ${run}: the pull took ${r.ms} ms to fail`);
      // what failed and why: a blob of this image, and the disk being full
      assert.match(r.stderr, FULL, `run ${run}: ${r.stderr}`);
      const named = [...r.stderr.matchAll(/sha256:[0-9a-f]{64}/g)].map((m) => m[0]);
      assert.ok(
        named.some((x) => digests.has(x)),
        `run ${run}: the error names no blob of the image: ${r.stderr}`,
      );
      // berthd says so too, at info or above
      const log = d.logs().slice(logFrom);
      assert.match(
        log,
        new RegExp(`level=(info|warning|error) msg="[^"]*" .*(${FULL.source})`),
        `run ${run}: berthd logged nothing about it:\n${log}`,
      );
      assert.deepEqual(ingests(), [], `run ${run}: ingests left behind`);
      const images = ok(await berth(d.address, ["images", "ls", "-q"]));
      assert.equal(images.trim(), "", `run ${run}: an image record was created`);
    }

    // a client writing content on the full disk gets ResourceExhausted, not Unknown
    const conn = new Connection(d.address);
    try {
      const call = conn.client(Content).write({ namespace: "default" });
      const responses = call.responses[Symbol.asyncIterator]();
      const data = randomBytes(4 << 20);
      const tryWrite = async () => {
        await call.send({ action: WriteAction.STAT, ref: "full-disk-probe", total: BigInt(SIZE_PROBE) });
        await responses.next();
        for (let off = 0; off < SIZE_PROBE; off += data.length) {
          await call.send({ action: WriteAction.WRITE, ref: "full-disk-probe", offset: BigInt(off), data });
          const r = await responses.next();
          if (r.done) throw new Error("the Write stream ended early");
        }
      };
      await assert.rejects(tryWrite(), kind("resource exhausted"));
      call.cancel();
      // A failed Write keeps its ingest for a resume, as containerd's does: the client drops it.
      // The database may be too full to drop the row; the data goes anyway, freeing the space.
      await conn
        .client(Content)
        .abort({ ref: "full-disk-probe" }, { namespace: "default" })
        .catch((err: unknown) => assert.ok(isKind(err, "resource exhausted"), String(err)));
      assert.deepEqual(ingests(), [], "the aborted ingest's data stayed");
    } finally {
      conn.close();
    }

    // space freed: the same pull works, and left nothing in the ingest area
    execFileSync("mount", ["-o", `remount,size=${BIG_FS}`, fs]);
    ok(await berth(d.address, ["images", "pull", "--plain-http", ref], { timeoutMs: 120_000 }), "pull after");
    assert.deepEqual(ingests(), []);
    assert.equal(ok(await berth(d.address, ["images", "ls", "-q"])).trim(), ref);
    // and the daemon kept serving throughout
    ok(await berth(d.address, ["version"]));
  });

  it("maps a full database (SQLITE_FULL) and ENOSPC to ResourceExhausted", () => {
    const db = new Database(":memory:");
    try {
      db.exec("CREATE TABLE t (v BLOB)");
      // a real "database or disk is full": the page limit stands in for the disk
      db.pragma("max_page_count = 8");
      let full: unknown;
      try {
        for (let i = 0; i < 100; i++) db.prepare("INSERT INTO t VALUES (?)").run(randomBytes(4096));
      } catch (err) {
        full = err;
      }
      assert.equal((full as { code?: string } | undefined)?.code, "SQLITE_FULL");
      assert.equal(toGrpcStatus(full).code, GrpcCode.ResourceExhausted);
    } finally {
      db.close();
    }
    const enospc = Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" });
    assert.equal(toGrpcStatus(enospc).code, GrpcCode.ResourceExhausted);
  });
});
