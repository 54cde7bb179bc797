// Issue 4 items 6/7/9: berth's own `images pull` runs in the daemon (Transfer service, progress on
// a Streaming stream). Its results are compared with what the real ctr's pull leaves in the real
// containerd: the image record, the content (digests and labels) and the snapshots (chain IDs).
import assert from "node:assert/strict";
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, writeSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type Image, Images } from "../../src/gen/containerd/services/images/v1/images_pb.js";
import { Leases } from "../../src/gen/containerd/services/leases/v1/leases_pb.js";
import { Connection } from "../../src/grpc/client.js";
import { berth, ctr, ok } from "../helpers/ctr.js";
import { type Daemon, startBerthd, startContainerd } from "../helpers/daemons.js";
import { registryWithBusybox } from "../helpers/fixtures.js";
import { type BuiltImage, blob, MediaType, manifestBlob, pushBlob, pushManifest } from "../helpers/images.js";
import type { Registry } from "../helpers/registry.js";
import { buildTar, gzip, sha256 } from "../helpers/tarbuild.js";
import { makeTempDir, removeTempDir, unmountAll } from "../helpers/tmp.js";

const GC_SCHEDULER = `[plugins."io.containerd.gc.v1.scheduler"]
  startup_delay = "0s"
  mutation_threshold = 0
`;
const REPO = "test/busybox";

/** `ctr content ls` rows (digest, size, sorted labels) without the age column. */
function contentRows(out: string, dropLabel?: RegExp): string[] {
  return out
    .trim()
    .split("\n")
    .slice(1)
    .filter((l) => l.trim() !== "")
    .map((l) => {
      const f = l.split("\t").filter((x) => x !== "");
      const labels =
        f.length > 3
          ? f[f.length - 1]!.split(",")
              .filter((x) => !dropLabel?.test(x))
              .sort()
              .join(",")
          : "";
      return `${f[0]} ${f[1]} ${labels}`;
    })
    .sort();
}

/** `ctr snapshots ls` rows: KEY PARENT KIND (unpack keys of active snapshots made generic). */
const snapshotRows = (out: string) =>
  out
    .trim()
    .split("\n")
    .slice(1)
    .filter((l) => l.trim() !== "")
    .map((l) => l.trim().split(/\s+/).join(" "))
    .sort();

const normImage = (i: Image | undefined) =>
  i && {
    name: i.name,
    labels: i.labels,
    target: i.target && {
      mediaType: i.target.mediaType,
      digest: i.target.digest,
      size: String(i.target.size),
    },
  };

describe("berth images pull: daemon-side pull through the Transfer service", () => {
  let reg: Registry;
  let single: BuiltImage;
  let multi: BuiltImage;
  let b: Daemon;
  let c: Daemon;
  let bconn: Connection;
  let cconn: Connection;
  let tmp: string;
  let ref1: string;
  let refMulti: string;

  before(async () => {
    tmp = await makeTempDir("pull-berth");
    ({ reg, single, multi, ref1, refMulti } = await registryWithBusybox(REPO));
    [b, c] = await Promise.all([
      startBerthd({ config: `version = 2\n${GC_SCHEDULER}` }),
      startContainerd({ config: GC_SCHEDULER }),
    ]);
    bconn = new Connection(b.address);
    cconn = new Connection(c.address);
  });

  after(async () => {
    bconn?.close();
    cconn?.close();
    if (tmp) unmountAll(tmp);
    await Promise.all([b?.cleanup(), c?.cleanup()]);
    await reg?.cleanup();
    if (tmp) await removeTempDir(tmp);
  });

  const compare = async (dropLabel?: RegExp) => {
    const [cb, cc] = await Promise.all([b, c].map(async (d) => ok(await ctr(d.address, ["content", "ls"]))));
    assert.deepEqual(
      contentRows(cb!, dropLabel),
      contentRows(cc!, dropLabel),
      "content (digests, sizes, labels)",
    );
    const [sb, sc] = await Promise.all(
      [b, c].map(async (d) => ok(await ctr(d.address, ["snapshots", "ls"]))),
    );
    assert.deepEqual(snapshotRows(sb!), snapshotRows(sc!), "snapshots (chain IDs, parents, kinds)");
  };

  it("pulls a single-platform image as ctr pulls it into containerd", async () => {
    const out = ok(await berth(b.address, ["images", "pull", "--plain-http", ref1]), "berth images pull");
    assert.match(out, /layer-sha256:[0-9a-f]{64}: (complete|downloading)/);
    assert.match(out, /pulled in/);
    ok(await ctr(c.address, ["images", "pull", "--plain-http", ref1]), "ctr images pull");
    const [ib, ic] = await Promise.all(
      [bconn, cconn].map(async (conn) =>
        normImage((await conn.client(Images).get({ name: ref1 }, { namespace: "default" })).image),
      ),
    );
    assert.deepEqual(ib, ic, "image record");
    await compare();
    const cb = ok(await ctr(b.address, ["content", "ls"]));
    assert.match(cb, /containerd\.io\/gc\.ref\.snapshot\.overlayfs=sha256:/);
    assert.match(cb, /containerd\.io\/uncompressed=sha256:/);
    const snap = ok(await ctr(b.address, ["snapshots", "info", single.platforms[0]!.diffIds[0]!]));
    assert.match(snap, /containerd\.io\/snapshot\.ref/);

    // berth's own listing
    const ls = ok(await berth(b.address, ["images", "ls"]));
    const row = ls.split("\n").find((l) => l.startsWith(`${ref1} `));
    assert.ok(row, ls);
    assert.match(row, /linux\/amd64/);
    const check = ok(await berth(b.address, ["images", "check"]));
    assert.match(check, /complete \(3\/3\).*true/);
  });

  it("ctr images mount on berthd shows busybox", async () => {
    const dir = join(tmp, "mnt");
    mkdirSync(dir);
    ok(await ctr(b.address, ["images", "mount", ref1, dir]), "ctr images mount");
    try {
      assert.ok(existsSync(join(dir, "bin", "busybox")), readdirSync(dir).join(","));
    } finally {
      ok(await ctr(b.address, ["images", "unmount", "--rm", dir]), "ctr images unmount");
    }
  });

  it("--platform picks one manifest of an index, as ctr does", async () => {
    ok(await berth(b.address, ["images", "pull", "--plain-http", "--platform", "linux/arm64", refMulti]));
    ok(await ctr(c.address, ["images", "pull", "--plain-http", "--platform", "linux/arm64", refMulti]));
    await compare();
    const arm = multi.platforms.find((p) => p.platform.architecture === "arm64")!;
    const have = contentRows(ok(await ctr(b.address, ["content", "ls"]))).map((r) => r.split(" ")[0]);
    assert.ok(have.includes(arm.manifest.digest));
    // (the amd64 manifest is the single-platform image's, pulled before: compare() covers the rest)
  });

  it("--all-platforms fetches every manifest, as ctr does", async () => {
    ok(await berth(b.address, ["images", "pull", "--plain-http", "--all-platforms", refMulti]));
    ok(await ctr(c.address, ["images", "pull", "--plain-http", "--all-platforms", refMulti]));
    // ctr 1.6 also unpacks every platform; berth (like ctr 2.x) unpacks none with --all-platforms
    await compare(/^containerd\.io\/gc\.ref\.snapshot\./);
    const have = contentRows(ok(await ctr(b.address, ["content", "ls"]))).map((r) => r.split(" ")[0]);
    for (const p of multi.platforms) assert.ok(have.includes(p.manifest.digest));
  });

  it("a corrupt layer fails the pull: no image record, nothing left after a collection", async () => {
    // an image with a layer of its own, whose bytes are damaged in the registry's storage
    const tar = buildTar([{ name: "hello.txt", data: "x".repeat(200_000) }]);
    const layer = blob(MediaType.layerGzip, gzip(tar));
    const cfg = blob(
      MediaType.config,
      Buffer.from(
        JSON.stringify({
          architecture: "amd64",
          os: "linux",
          rootfs: { type: "layers", diff_ids: [sha256(tar)] },
        }),
      ),
    );
    const man = manifestBlob(cfg, [layer]);
    await pushBlob(reg.url, REPO, layer);
    await pushBlob(reg.url, REPO, cfg);
    await pushManifest(reg.url, REPO, "corrupt", man);
    const hex = layer.digest.slice(7);
    const file = join(reg.dir, "storage/docker/registry/v2/blobs/sha256", hex.slice(0, 2), hex, "data");
    const fd = openSync(file, "r+");
    writeSync(fd, Buffer.from("garbage!"), 0, 8, Math.floor(layer.size / 2));
    closeSync(fd);

    const ref = `${reg.host}/${REPO}:corrupt`;
    const r = await berth(b.address, ["images", "pull", "--plain-http", ref]);
    assert.notEqual(r.code, 0, r.stdout);
    assert.match(r.stderr, /digest|data loss|verification/i);
    await assert.rejects(bconn.client(Images).get({ name: ref }, { namespace: "default" }), /not found/);
    // a collection (a synchronous lease delete waits for one) leaves none of its content
    const leases = bconn.client(Leases);
    await leases.create({ id: "trigger-gc" }, { namespace: "default" });
    await leases.delete({ id: "trigger-gc", sync: true }, { namespace: "default" });
    const cb = ok(await ctr(b.address, ["content", "ls"]));
    for (const d of [layer.digest, cfg.digest, man.digest]) assert.ok(!cb.includes(d), `${d} left behind`);
    const active = ok(await ctr(b.address, ["content", "active"]));
    assert.ok(!active.includes(hex), active);
  });

  it("berth images rm --sync frees every blob and snapshot", async () => {
    const names = ok(await berth(b.address, ["images", "ls", "-q"]))
      .trim()
      .split("\n");
    assert.ok(names.length >= 2, names.join(","));
    ok(await berth(b.address, ["images", "rm", "--sync", ...names]));
    assert.equal(ok(await berth(b.address, ["images", "ls", "-q"])).trim(), "");
    assert.deepEqual(contentRows(ok(await ctr(b.address, ["content", "ls"]))), []);
    assert.deepEqual(snapshotRows(ok(await ctr(b.address, ["snapshots", "ls"]))), []);
  });
});
