// A pull whose layers are large enough for berthd's extraction threads (4 MiB compressed and
// more), through the daemon as it runs in production: from its bundle, where the threads run
// dist/bundle/stage-worker.js (CommonJS, scripts/bundle.ts) and the registry client is loaded
// with require() (a code-cached bundle has no import()). The other pull tests use small layers,
// which are extracted on the event loop, or call the staging code in-process from dist/src.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { berth, ok } from "../helpers/ctr.js";
import { type Daemon, startBerthd } from "../helpers/daemons.js";
import { blob, linuxConfigBlob, MediaType, manifestBlob, pushBlob, pushManifest } from "../helpers/images.js";
import { type Registry, startRegistry } from "../helpers/registry.js";
import { buildTar, gzip, sha256, zstd } from "../helpers/tarbuild.js";
import { makeTempDir, removeTempDir, unmountAll } from "../helpers/tmp.js";

describe("a pull of large layers through berthd's extraction threads", () => {
  let tmp: string;
  let reg: Registry;
  let d: Daemon;
  // incompressible, so that each compressed layer stays above the threads' 4 MiB threshold
  const big = [randomBytes(6 << 20), randomBytes(5 << 20)];
  const layers = [
    {
      tar: buildTar([
        { name: "a/", type: "dir" },
        { name: "a/big", data: big[0]! },
      ]),
      compress: gzip,
    },
    {
      tar: buildTar([
        { name: "b/", type: "dir" },
        { name: "b/big", data: big[1]! },
        { name: "b/link", type: "symlink", linkname: "big" },
      ]),
      compress: zstd,
    },
  ];

  before(async () => {
    tmp = await makeTempDir("pull-threads");
    reg = await startRegistry();
    d = await startBerthd({ disabledPlugins: ["io.containerd.grpc.v1.cri"] });
  });
  after(async () => {
    if (tmp) unmountAll(tmp);
    await d?.cleanup();
    await reg?.cleanup();
    if (tmp) await removeTempDir(tmp);
  });

  it("unpacks a gzip and a zstd layer of several MiB each", async () => {
    const blobs = [
      blob(MediaType.layerGzip, layers[0]!.compress(layers[0]!.tar)),
      blob("application/vnd.oci.image.layer.v1.tar+zstd", layers[1]!.compress(layers[1]!.tar)),
    ];
    for (const b of blobs) assert.ok(b.size >= 4 << 20, `a layer of ${b.size} bytes`);
    const config = linuxConfigBlob(layers.map((l) => sha256(l.tar)));
    const manifest = manifestBlob(config, blobs);
    for (const b of [...blobs, config]) await pushBlob(reg.url, "test/large", b);
    await pushManifest(reg.url, "test/large", "1", manifest);
    const ref = `${reg.host}/test/large:1`;

    ok(await berth(d.address, ["images", "pull", "--plain-http", ref]), "berth images pull");

    const dir = join(tmp, "mnt");
    mkdirSync(dir);
    ok(await berth(d.address, ["images", "mount", ref, dir]), "berth images mount");
    try {
      assert.equal(sha256(readFileSync(join(dir, "a/big"))), sha256(big[0]!));
      assert.equal(sha256(readFileSync(join(dir, "b/link"))), sha256(big[1]!));
      assert.equal(statSync(join(dir, "b/big")).size, 5 << 20);
    } finally {
      ok(await berth(d.address, ["images", "unmount", "--rm", dir]), "berth images unmount");
    }
  });
});
