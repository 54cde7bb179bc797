// Issue 14 defects 2 and 3: content that is already there when an import or a pull meets it must
// be held by that operation's lease, or a collection before the image record exists removes it.
//   import: `images rm` leaves the image's blobs unreferenced; importing the same image again
//           only relabelled them (no lease), so a GC during the import deleted them
//           (`content digest sha256:…: not found`).
//   pull:   berthd killed mid-pull leaves committed blobs (the config) that nothing references;
//           the next pull read them from the store without leasing them, and the GC that
//           removing the leftover leases triggers deleted them underneath it.
import assert from "node:assert/strict";
import { existsSync, writeFileSync } from "node:fs";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Leases } from "../../src/gen/containerd/services/leases/v1/leases_pb.js";
import { Connection } from "../../src/grpc/client.js";
import { berth, ctr, ok } from "../helpers/ctr.js";
import { type Daemon, GC_OFF_CONFIG, restartDaemon, startBerthd } from "../helpers/daemons.js";
import {
  type Blob,
  blob,
  buildBusyboxImage,
  linuxConfigBlob,
  MediaType,
  manifestBlob,
  pushBlob,
  pushManifest,
} from "../helpers/images.js";
import { type Registry, startRegistry } from "../helpers/registry.js";
import { buildTar, gzip, sha256 } from "../helpers/tarbuild.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Img {
  manifest: Blob;
  config: Blob;
  layers: Blob[];
}

/** An image whose one layer is `bytes` of a deterministic, incompressible-enough file. */
function imageWithLayer(name: string, bytes: number, seed: number): Img {
  const data = Buffer.alloc(bytes);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < bytes; i += 4) {
    // xorshift32: cheap pseudo-random bytes that gzip cannot shrink much
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    data.writeUInt32LE(x >>> 0, i);
  }
  const tar = buildTar([{ name, data, mtime: 1700000000 }]);
  const layer = blob(MediaType.layerGzip, gzip(tar));
  const config = linuxConfigBlob([sha256(tar)], { Cmd: ["sh"] });
  return { manifest: manifestBlob(config, [layer]), config, layers: [layer] };
}

/** An OCI layout archive holding `images` (in this order) under their names. */
function ociArchive(path: string, images: { name: string; img: Img }[]): void {
  const blobs = new Map<string, Blob>();
  for (const { img } of images)
    for (const b of [...img.layers, img.config, img.manifest]) blobs.set(b.digest, b);
  const index = {
    schemaVersion: 2,
    mediaType: MediaType.index,
    manifests: images.map(({ name, img }) => ({
      mediaType: img.manifest.mediaType,
      digest: img.manifest.digest,
      size: img.manifest.size,
      annotations: { "io.containerd.image.name": name },
    })),
  };
  writeFileSync(
    path,
    buildTar([
      { name: "oci-layout", data: JSON.stringify({ imageLayoutVersion: "1.0.0" }) },
      { name: "index.json", data: JSON.stringify(index) },
      ...[...blobs.values()].map((b) => ({ name: `blobs/sha256/${b.digest.slice(7)}`, data: b.data })),
    ]),
  );
}

/** One collection, now, as `ctr leases rm --sync` triggers it. */
async function collectNow(conn: Connection, ns = "default"): Promise<void> {
  const leases = conn.client(Leases);
  const id = `gc-trigger-${Date.now()}-${Math.random().toString(36).slice(2)}`;
  await leases.create({ id }, { namespace: ns });
  await leases.delete({ id, sync: true }, { namespace: ns });
}

const ingestDir = (d: Daemon) => join(d.root, "io.containerd.content.v1.content", "ingest");
const ingests = async (d: Daemon) => readdir(ingestDir(d)).catch(() => [] as string[]);

describe("already-present content is held by the lease of the operation that meets it", () => {
  let tmp: string;
  before(async () => {
    tmp = await makeTempDir("defects-leases");
  });
  after(async () => {
    if (tmp) await removeTempDir(tmp);
  });

  it("berth images import right after images rm keeps the blobs through a GC mid-import", async () => {
    const d = await startBerthd({ config: `version = 2\n${GC_OFF_CONFIG}` });
    const conn = new Connection(d.address);
    try {
      const bb = buildBusyboxImage();
      const a: Img = {
        manifest: bb.target,
        config: bb.platforms[0]!.config,
        layers: bb.platforms[0]!.layers,
      };
      // B is big, so the import is still writing it when the collection runs
      const b = imageWithLayer("big.bin", 48 << 20, 7);
      const nameA = "docker.io/library/defects-a:1";
      const nameB = "docker.io/library/defects-b:1";
      const archA = join(tmp, "a.tar");
      const archAB = join(tmp, "ab.tar");
      ociArchive(archA, [{ name: nameA, img: a }]);
      ociArchive(archAB, [
        { name: nameA, img: a },
        { name: nameB, img: b },
      ]);

      ok(await berth(d.address, ["images", "import", archA]), "first import");
      ok(await berth(d.address, ["images", "rm", nameA]), "images rm");
      // A's blobs are still there, unreferenced (the scheduler is off: only triggered GCs run)
      const aDigests = [...a.layers, a.config, a.manifest].map((x) => x.digest);
      const listed = ok(await ctr(d.address, ["content", "ls", "-q"]));
      for (const dg of aDigests) assert.ok(listed.includes(dg), `${dg} should still be stored`);

      // Import A and B; once B's layer is being written (A's blobs were met before it), collect.
      const importing = berth(d.address, ["images", "import", archAB]);
      let done = false;
      void importing.finally(() => {
        done = true;
      });
      while (!done && (await ingests(d)).length === 0) await sleep(5);
      assert.equal(done, false, "the import ended before B's layer was written: nothing was tested");
      await collectNow(conn);
      assert.equal(done, false, "the import ended before the collection: nothing was tested");

      const r = await importing;
      ok(r, "import after images rm");
      const after = ok(await ctr(d.address, ["content", "ls", "-q"]));
      for (const dg of aDigests) assert.ok(after.includes(dg), `${dg} was collected during the import`);
      const names = ok(await berth(d.address, ["images", "ls", "-q"]));
      assert.ok(names.includes(nameA) && names.includes(nameB), names);
      // and they read back: the image is whole
      for (const dg of aDigests) ok(await ctr(d.address, ["content", "get", dg], { output: "ignore" }));
    } finally {
      conn.close();
      await d.cleanup();
    }
  });

  describe("pull after a crash", () => {
    let reg: Registry;
    let ref: string;
    let img: Img;
    before(async () => {
      reg = await startRegistry();
      img = imageWithLayer("layer.bin", 24 << 20, 11);
      for (const x of [...img.layers, img.config]) await pushBlob(reg.url, "test/crash", x);
      await pushManifest(reg.url, "test/crash", "1", img.manifest);
      ref = `${reg.host}/test/crash:1`;
    });
    after(async () => {
      await reg?.cleanup();
    });

    it("kill -9 after the config blob is committed, restart, remove the leases (GC), pull again: works the first time", async () => {
      // only the collections the test triggers run, so it decides when they happen
      const first = await startBerthd({ config: `version = 2\n${GC_OFF_CONFIG}` });
      let d: Daemon = first;
      const daemons: Daemon[] = [first];
      try {
        // Pull, and kill berthd once the config is committed (the layer is still downloading).
        const pulling = berth(d.address, ["images", "pull", "--plain-http", ref]);
        const blobFile = join(
          d.root,
          "io.containerd.content.v1.content",
          "blobs",
          "sha256",
          img.config.digest.slice(7),
        );
        const t0 = Date.now();
        while (!existsSync(blobFile) && Date.now() - t0 < 30_000) await sleep(2);
        assert.ok(existsSync(blobFile), "the config blob was never committed");
        await d.kill9();
        const killed = await pulling;
        assert.notEqual(killed.code, 0, "the pull finished before the kill: nothing was tested");

        d = await restartDaemon(d);
        daemons.push(d);
        const conn = new Connection(d.address);
        try {
          // The killed pull's lease is left over; removing it leaves the committed config
          // unreferenced, stored until the next collection: the case the defect is about.
          const leases = conn.client(Leases);
          const { leases: left } = await leases.list({}, { namespace: "default" });
          assert.ok(left.length > 0, "the killed pull left no lease");
          for (const l of left) await leases.delete({ id: l.id }, { namespace: "default" });
          assert.ok(existsSync(blobFile), "the leftover config blob is gone before the pull");

          // The pull meets the config already stored and reads it; collections run once it is
          // downloading the layer (as when other clients' leases come and go): the config must
          // stay held by the pull's lease.
          const pulling2 = berth(d.address, ["images", "pull", "--plain-http", ref]);
          let done = false;
          void pulling2.finally(() => {
            done = true;
          });
          const downloading = async () => {
            const { leases: now } = await leases.list({}, { namespace: "default" });
            for (const l of now) {
              const { resources } = await leases.listResources({ id: l.id }, { namespace: "default" });
              if (resources.some((x) => x.type === "ingests")) return true;
            }
            return false;
          };
          while (!done && !(await downloading())) await sleep(5);
          assert.equal(done, false, "the pull ended before its layer download: nothing was tested");
          let collections = 0;
          while (!done) {
            await collectNow(conn);
            collections++;
            await sleep(20);
          }
          assert.ok(collections > 0);
          const r = await pulling2;
          ok(r, "the first pull after the crash");
          assert.ok(ok(await berth(d.address, ["images", "ls", "-q"])).includes(ref));
          ok(await ctr(d.address, ["content", "get", img.config.digest], { output: "ignore" }));
        } finally {
          conn.close();
        }
      } finally {
        for (const x of daemons.reverse()) await x.cleanup();
      }
    });
  });
});
