// Issue 4: `berth images export` / `import`. Export from berthd and `ctr images import` into the
// real containerd; `ctr images export` from containerd and `berth images import` into berthd; a
// `docker save` style archive (manifest.json + layer tars) built here. Digests must match.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Images } from "../../src/gen/containerd/services/images/v1/images_pb.js";
import { Connection } from "../../src/grpc/client.js";
import { berth, ctr, ok, run } from "../helpers/ctr.js";
import { type Daemon, startBerthd, startContainerd } from "../helpers/daemons.js";
import { registryWithBusybox } from "../helpers/fixtures.js";
import { type BuiltImage, busyboxLayerTar, pushImage } from "../helpers/images.js";
import type { Registry } from "../helpers/registry.js";
import { buildTar, gzip, sha256 } from "../helpers/tarbuild.js";
import { makeTempDir, removeTempDir, unmountAll } from "../helpers/tmp.js";

const REPO = "test/busybox";

describe("berth images export/import: archives ctr and docker understand", () => {
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
    tmp = await makeTempDir("archive-berth");
    ({ reg, single, multi, ref1, refMulti } = await registryWithBusybox(REPO));
    [b, c] = await Promise.all([startBerthd(), startContainerd()]);
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

  const target = async (conn: Connection, name: string, namespace = "default") =>
    (await conn.client(Images).get({ name }, { namespace })).image?.target?.digest;

  const showsBusybox = async (d: Daemon, ref: string) => {
    const dir = join(tmp, `mnt-${Date.now()}`);
    mkdirSync(dir);
    ok(await ctr(d.address, ["images", "mount", ref, dir]), "ctr images mount");
    try {
      assert.ok(existsSync(join(dir, "bin", "busybox")), readdirSync(dir).join(","));
    } finally {
      ok(await ctr(d.address, ["images", "unmount", "--rm", dir]), "ctr images unmount");
    }
  };

  it("berth export → ctr import into containerd: same image, OCI layout with docker's manifest.json", async () => {
    ok(await berth(b.address, ["images", "pull", "--plain-http", ref1]), "berth pull");
    const out = join(tmp, "berth.tar");
    ok(await berth(b.address, ["images", "export", out, ref1]), "berth export");
    const list = ok(await run("tar", ["-tf", out]));
    for (const f of [
      "oci-layout",
      "index.json",
      "manifest.json",
      `blobs/sha256/${single.target.digest.slice(7)}`,
    ])
      assert.ok(list.split("\n").includes(f), `${f} in ${list}`);
    const index = JSON.parse(ok(await run("tar", ["-xOf", out, "index.json"]))) as {
      manifests: { digest: string; annotations: Record<string, string> }[];
    };
    assert.equal(index.manifests[0]!.digest, single.target.digest);
    assert.equal(index.manifests[0]!.annotations["io.containerd.image.name"], ref1);
    assert.equal(index.manifests[0]!.annotations["org.opencontainers.image.ref.name"], "1");
    const dm = JSON.parse(ok(await run("tar", ["-xOf", out, "manifest.json"]))) as { RepoTags: string[] }[];
    assert.deepEqual(dm[0]!.RepoTags, [ref1]);

    ok(await ctr(c.address, ["images", "import", out]), "ctr import");
    assert.equal(await target(cconn, ref1), single.target.digest);
    await showsBusybox(c, ref1);
  });

  it("ctr export from containerd → berth import into berthd: same image, unpacked", async () => {
    ok(await ctr(c.address, ["images", "pull", "--plain-http", "--all-platforms", refMulti]), "ctr pull");
    const out = join(tmp, "ctr.tar");
    ok(await ctr(c.address, ["images", "export", "--all-platforms", out, refMulti]), "ctr export");
    const imported = ok(await berth(b.address, ["images", "import", "--all-platforms", out]), "berth import");
    assert.match(imported, new RegExp(multi.target.digest));
    assert.equal(await target(bconn, refMulti), multi.target.digest);
    const check = ok(await berth(b.address, ["images", "check"]));
    const row = check.split("\n").find((l) => l.startsWith(`${refMulti} `));
    assert.ok(row, check);
    assert.match(row, /\scomplete \(\d+\/\d+\).*true/);
    await showsBusybox(b, refMulti);

    // and back again: berth export --all-platforms → ctr import
    ok(await ctr(c.address, ["images", "rm", refMulti]));
    const again = join(tmp, "again.tar");
    ok(await berth(b.address, ["images", "export", "--all-platforms", again, refMulti]), "berth export all");
    ok(await ctr(c.address, ["images", "import", "--all-platforms", again]), "ctr import again");
    assert.equal(await target(cconn, refMulti), multi.target.digest);
  });

  it("--index-name keeps the archive's index, --skip-unpack leaves the snapshots alone", async () => {
    const out = join(tmp, "berth.tar");
    // a namespace of its own, so any snapshot there would be this import's
    ok(
      await berth(b.address, [
        "-n",
        "skip-unpack",
        "images",
        "import",
        "--skip-unpack",
        "--index-name",
        "example.com/idx:1",
        out,
      ]),
    );
    const snaps = ok(await ctr(b.address, ["-n", "skip-unpack", "snapshots", "ls"]));
    assert.deepEqual(snaps.trim().split("\n").slice(1).filter(Boolean), [], snaps);
    const t = await target(bconn, "example.com/idx:1", "skip-unpack");
    assert.match(t ?? "", /^sha256:/);
    assert.notEqual(t, single.target.digest);
  });

  it("imports a docker save archive (manifest.json and layer tars) and unpacks it", async () => {
    const layer = busyboxLayerTar();
    const diffId = sha256(layer);
    const cfg = Buffer.from(
      JSON.stringify({ architecture: "amd64", os: "linux", rootfs: { type: "layers", diff_ids: [diffId] } }),
    );
    const zipped = gzip(buildTar([{ name: "hello.txt", data: "hi\n" }]));
    const cfg2 = Buffer.from(
      JSON.stringify({
        architecture: "amd64",
        os: "linux",
        rootfs: {
          type: "layers",
          diff_ids: [diffId, sha256(buildTar([{ name: "hello.txt", data: "hi\n" }]))],
        },
      }),
    );
    const name = "example.com/docker/save:1";
    const archive = buildTar([
      {
        name: "manifest.json",
        data: JSON.stringify([
          { Config: `${sha256(cfg).slice(7)}.json`, RepoTags: [name], Layers: ["aaa/layer.tar"] },
          {
            Config: `${sha256(cfg2).slice(7)}.json`,
            RepoTags: ["saved:two"],
            Layers: ["aaa/layer.tar", "bbb/layer.tar"],
          },
        ]),
      },
      { name: `${sha256(cfg).slice(7)}.json`, data: cfg },
      { name: `${sha256(cfg2).slice(7)}.json`, data: cfg2 },
      { name: "aaa/", type: "dir" },
      { name: "aaa/layer.tar", data: layer },
      { name: "bbb/", type: "dir" },
      { name: "bbb/layer.tar", data: zipped },
    ]);
    const file = join(tmp, "docker-save.tar");
    writeFileSync(file, archive);
    ok(await berth(b.address, ["images", "import", file]), "berth import docker archive");
    const img = (await bconn.client(Images).get({ name }, { namespace: "default" })).image!;
    assert.equal(img.target?.mediaType, "application/vnd.docker.distribution.manifest.v2+json");
    await assert.doesNotReject(
      bconn.client(Images).get({ name: "docker.io/library/saved:two" }, { namespace: "default" }),
    );
    const snaps = ok(await ctr(b.address, ["snapshots", "ls"]));
    assert.ok(snaps.includes(diffId), snaps);
    await showsBusybox(b, name);
    await showsBusybox(b, "docker.io/library/saved:two");
    // containerd takes the same archive and names the same config
    ok(await ctr(c.address, ["images", "import", file]), "ctr import docker archive");
    assert.ok((await target(cconn, name))?.startsWith("sha256:"));
  });

  it("berth images mount/usage/unmount and berth content fetch", async () => {
    const dir = join(tmp, "bmnt");
    mkdirSync(dir);
    ok(await berth(b.address, ["images", "mount", ref1, dir]), "berth images mount");
    try {
      assert.ok(existsSync(join(dir, "bin", "busybox")), readdirSync(dir).join(","));
      assert.match(ok(await ctr(b.address, ["leases", "ls"])), new RegExp(dir));
      assert.match(
        ok(await ctr(b.address, ["snapshots", "ls"])),
        new RegExp(`${dir}\\s+sha256:\\w+\\s+View`),
      );
    } finally {
      ok(await berth(b.address, ["images", "unmount", "--rm", dir]), "berth images unmount");
    }
    assert.ok(!ok(await ctr(b.address, ["leases", "ls"])).includes(dir));
    assert.ok(!ok(await ctr(b.address, ["snapshots", "ls"])).includes(dir));
    assert.equal(readdirSync(dir).length, 0);

    const usage = ok(await berth(b.address, ["images", "usage", ref1]), "berth images usage");
    assert.ok(usage.includes(single.platforms[0]!.diffIds[0]!), usage);
    assert.match(usage, /TOTAL/);

    await pushImage(reg.url, "fetch/me", "1", single);
    const fetched = `${reg.host}/fetch/me:1`;
    ok(await berth(b.address, ["content", "fetch", "--plain-http", fetched]), "berth content fetch");
    assert.equal(await target(bconn, fetched), single.target.digest);
  });
});
