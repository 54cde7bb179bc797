// Issue 10 items 1–3: the CRI RuntimeService (Version, Status, UpdateRuntimeConfig) and
// ImageService on berthd's main socket, driven as kubelet and crictl drive them, with images from
// the real docker-registry (one of them behind htpasswd auth), checked against `ctr -n k8s.io`.
// Unknown services and methods answer UNIMPLEMENTED (crictl's v1 → v1alpha2 fallback needs that).
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { GrpcCode } from "../../src/base/errdefs.js";
import { VERSION } from "../../src/version.js";
import { type CriClient, criClient, crictl, crictlBin } from "../helpers/cri.js";
import { berth, ctr, ok } from "../helpers/ctr.js";
import { type Daemon, startBerthd } from "../helpers/daemons.js";
import { registryWithBusybox } from "../helpers/fixtures.js";
import {
  type Blob,
  type BuiltImage,
  blob,
  MediaType,
  manifestBlob,
  pushBlob,
  pushManifest,
} from "../helpers/images.js";
import { htpasswdLine, type Registry, startRegistry } from "../helpers/registry.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const REPO = "cri/busybox";
const NS = "k8s.io";
// A name under .invalid never resolves: pulls of it can only go through the configured mirror.
const FAKE = "registry.invalid";
const CRI_KEY = 'plugins."io.containerd.grpc.v1.cri"';

const TEMPLATE = `{
  "cniVersion": "1.0.0",
  "name": "berth-test",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "berthtest0",
      "ipam": {
        "type": "host-local",
        "ranges": [{{range $i, $r := .PodCIDRRanges}}{{if $i}}, {{end}}[{"subnet": "{{$r}}"}]{{end}}],
        "routes": [{{range $i, $r := .Routes}}{{if $i}}, {{end}}{"dst": "{{$r}}"}{{end}}]
      }
    }
  ]
}
`;

const CONFLIST = JSON.stringify({
  cniVersion: "1.0.0",
  name: "placed",
  plugins: [{ type: "loopback" }],
});

/** ctr's `images ls` rows in k8s.io: name → the rest of the columns. */
async function ctrImages(address: string): Promise<Map<string, string>> {
  const out = ok(await ctr(address, ["images", "ls"], { namespace: NS }));
  const rows = new Map<string, string>();
  for (const line of out.split("\n").slice(1)) {
    const t = line.trim();
    if (t === "") continue;
    const [name, ...rest] = t.split(/\s+/);
    rows.set(name!, rest.join(" "));
  }
  return rows;
}

describe("CRI RuntimeService info and ImageService on berthd", () => {
  let tmp: string;
  let open: Registry;
  let locked: Registry;
  let single: BuiltImage;
  let multi: BuiltImage;
  let multiIndex: Blob;
  let multiAmd64: { manifest: Blob; config: Blob; layers: Blob[] };
  let ref1: string;
  let refMulti: string;
  let confDir: string;
  let d: Daemon;
  let cri: CriClient;
  const lockedRef = () => `${locked.host}/private/busybox:1`;
  const userRef = () => `${open.host}/${REPO}:user`;
  const namedUserRef = () => `${open.host}/${REPO}:nobody`;
  let userConfigDigest = "";

  before(async () => {
    tmp = await makeTempDir("cri-images");
    ({ reg: open, single, multi, ref1 } = await registryWithBusybox(REPO));
    const pw = join(tmp, "htpasswd");
    writeFileSync(pw, `${htpasswdLine("dave", "cri-pa55")}\n`);
    locked = await startRegistry({ htpasswd: pw });

    // Images whose config names a user: numeric uid:gid, and a user name.
    const base = single.platforms[0]!;
    const baseConfig = JSON.parse(base.config.data.toString()) as { config: Record<string, unknown> };
    for (const [tag, user] of [
      ["user", "1234:5678"],
      ["nobody", "nobody"],
    ] as const) {
      const config = blob(
        MediaType.config,
        Buffer.from(JSON.stringify({ ...baseConfig, config: { ...baseConfig.config, User: user } })),
      );
      if (tag === "user") userConfigDigest = config.digest;
      await pushBlob(open.url, REPO, config);
      await pushManifest(open.url, REPO, tag, manifestBlob(config, base.layers));
    }

    // An index whose amd64 config differs from the single image's (so it is an image of its own).
    const manifests: { mediaType: string; digest: string; size: number; platform: object }[] = [];
    for (const p of multi.platforms) {
      const c = JSON.parse(p.config.data.toString()) as { config: Record<string, unknown> };
      const config = blob(
        MediaType.config,
        Buffer.from(JSON.stringify({ ...c, config: { ...c.config, Env: ["MULTI=1"] } })),
      );
      const manifest = manifestBlob(config, p.layers);
      await pushBlob(open.url, REPO, config);
      await pushManifest(open.url, REPO, manifest.digest, manifest);
      if (p.platform.architecture === "amd64") multiAmd64 = { manifest, config, layers: p.layers };
      manifests.push({
        mediaType: manifest.mediaType,
        digest: manifest.digest,
        size: manifest.size,
        platform: p.platform,
      });
    }
    multiIndex = blob(
      MediaType.index,
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: MediaType.index,
          manifests,
        }),
      ),
    );
    await pushManifest(open.url, REPO, "multi2", multiIndex);
    refMulti = `${open.host}/${REPO}:multi2`;

    confDir = join(tmp, "net.d");
    writeFileSync(join(tmp, "template.json"), TEMPLATE);
    d = await startBerthd({
      config: [
        "version = 2",
        `[${CRI_KEY}]`,
        `  sandbox_image = ${JSON.stringify(ref1)}`,
        `  [${CRI_KEY}.cni]`,
        '    bin_dir = "/usr/lib/cni"',
        `    conf_dir = ${JSON.stringify(confDir)}`,
        `    conf_template = ${JSON.stringify(join(tmp, "template.json"))}`,
        `  [${CRI_KEY}.image_decryption]`,
        '    key_model = "cluster"',
        `  [${CRI_KEY}.registry.mirrors."${FAKE}"]`,
        `    endpoint = ["http://${open.host}"]`,
        "",
      ].join("\n"),
    });
    cri = criClient(d.address);
    // The locked registry's image, pushed with credentials through berth (another namespace).
    ok(await berth(d.address, ["-n", "setup", "images", "pull", "--plain-http", ref1]), "setup pull");
    ok(
      await berth(d.address, [
        "-n",
        "setup",
        "images",
        "push",
        "--plain-http",
        "--user",
        "dave:cri-pa55",
        lockedRef(),
        ref1,
      ]),
      "push to the locked registry",
    );
  });

  after(async () => {
    cri?.close();
    await d?.cleanup();
    await Promise.all([open?.cleanup(), locked?.cleanup()]);
    if (tmp) await removeTempDir(tmp);
  });

  it("serves the cri plugin: ctr plugins ls shows it ok", async () => {
    const out = ok(await ctr(d.address, ["plugins", "ls"]));
    const line = out.split("\n").find((l) => /^io\.containerd\.grpc\.v1\s+cri\s/.test(l));
    assert.ok(line, out);
    assert.deepEqual(line.trim().split(/\s+/).slice(1, 4), ["cri", "linux/amd64", "ok"]);
    // a key berth does not act on is named in the log, once
    const notices = d
      .logs()
      .split("\n")
      .filter((l) => l.includes("CRI config key image_decryption.key_model"));
    assert.equal(notices.length, 1, d.logs());
  });

  it("Version names berth, its version and CRI v1", async () => {
    const v = await cri.runtime.version({ version: "0.1.0" });
    assert.equal(v.version, "0.1.0");
    assert.equal(v.runtimeName, "berth");
    assert.equal(v.runtimeApiVersion, "v1");
    assert.equal(v.runtimeVersion, VERSION);
    // nothing in k8s.io yet (the namespace does not even exist): empty answers, not errors
    assert.deepEqual((await cri.image.listImages({})).images, []);
    const fs = (await cri.image.imageFsInfo({})).imageFilesystems[0]!;
    assert.equal(fs.usedBytes?.value, 0n);
    assert.equal((await cri.image.imageStatus({ image: { image: ref1 } })).image, undefined);
    await cri.image.removeImage({ image: { image: ref1 } });
  });

  it("answers UNIMPLEMENTED for unknown services and methods (not a reset stream)", async () => {
    const alpha = await cri.raw("/runtime.v1alpha2.RuntimeService/Version");
    assert.equal(alpha.code, GrpcCode.Unimplemented);
    assert.equal(alpha.details, "unknown service runtime.v1alpha2.RuntimeService");
    const method = await cri.raw("/runtime.v1.RuntimeService/MadeUp");
    assert.equal(method.code, GrpcCode.Unimplemented);
    assert.equal(method.details, "unknown method MadeUp for service runtime.v1.RuntimeService");
    const known = await cri.raw("/runtime.v1.ImageService/MadeUp");
    assert.equal(known.details, "unknown method MadeUp for service runtime.v1.ImageService");
    // the connection still serves after those
    assert.equal((await cri.runtime.version({})).runtimeName, "berth");
  });

  it("answers a Go gRPC client (ctr) UNIMPLEMENTED for a service berthd does not serve", async () => {
    const other = await startBerthd({
      config: 'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.leases"]\n',
    });
    try {
      const r = await ctr(other.address, ["leases", "ls"]);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /unknown service containerd\.services\.leases\.v1\.Leases: not implemented/);
      ok(await ctr(other.address, ["namespaces", "ls"]), "the daemon still serves");
    } finally {
      await other.cleanup();
    }
  });

  it("Status: NetworkReady follows the CNI config in conf_dir; UpdateRuntimeConfig renders conf_template", async () => {
    const cond = async () => {
      const s = await cri.runtime.status({ verbose: true });
      const by = new Map(s.status!.conditions.map((c) => [c.type, c]));
      return { s, runtime: by.get("RuntimeReady")!, network: by.get("NetworkReady")! };
    };
    let c = await cond();
    assert.equal(c.runtime.status, true);
    assert.equal(c.network.status, false);
    assert.equal(c.network.reason, "NetworkPluginNotReady");
    assert.ok(c.network.message.includes(confDir), c.network.message);
    const cfg = JSON.parse(c.s.info["config"]!) as {
      sandbox_image: string;
      cni: { conf_dir: string };
      containerd: { snapshotter: string };
    };
    assert.equal(cfg.sandbox_image, ref1);
    assert.equal(cfg.cni.conf_dir, confDir);
    assert.equal(cfg.containerd.snapshotter, "overlayfs");

    // A conflist placed by hand makes the network ready; taking it away makes it not ready.
    mkdirSync(confDir, { recursive: true });
    writeFileSync(join(confDir, "05-placed.conflist"), CONFLIST);
    c = await cond();
    assert.equal(c.network.status, true, c.network.message);
    assert.equal(c.network.reason, "");
    rmSync(join(confDir, "05-placed.conflist"));
    assert.equal((await cond()).network.status, false);

    // The pod CIDR from kubelet fills the template.
    await assert.rejects(
      cri.runtime.updateRuntimeConfig({ runtimeConfig: { networkConfig: { podCidr: "10.77.0.0/99" } } }),
      /invalid pod CIDR/,
    );
    await cri.runtime.updateRuntimeConfig({ runtimeConfig: { networkConfig: { podCidr: "10.77.0.0/24" } } });
    const rendered = join(confDir, "10-containerd-net.conflist");
    assert.ok(existsSync(rendered));
    const net = JSON.parse(readFileSync(rendered, "utf8")) as {
      plugins: { ipam: { ranges: { subnet: string }[][]; routes: { dst: string }[] } }[];
    };
    assert.deepEqual(net.plugins[0]!.ipam.ranges, [[{ subnet: "10.77.0.0/24" }]]);
    assert.deepEqual(net.plugins[0]!.ipam.routes, [{ dst: "0.0.0.0/0" }]);
    c = await cond();
    assert.equal(c.network.status, true, c.network.message);
    assert.equal((JSON.parse(c.s.info["config"]!) as { podCIDR: string }).podCIDR, "10.77.0.0/24");
  });

  it("PullImage records tag, repo digest and ID, labelled as containerd's CRI labels them", async () => {
    const p = single.platforms[0]!;
    const id = p.config.digest;
    const res = await cri.image.pullImage({ image: { image: ref1 } });
    assert.equal(res.imageRef, id);
    const repoDigest = `${open.host}/${REPO}@${single.target.digest}`;
    const rows = await ctrImages(d.address);
    for (const name of [ref1, repoDigest, id]) {
      assert.ok(rows.has(name), `${name} in ctr images ls:\n${[...rows.keys()].join("\n")}`);
      assert.match(rows.get(name)!, /io\.cri-containerd\.image=managed/);
    }
    // unpacked into the configured snapshotter
    const check = ok(await ctr(d.address, ["images", "check", `name==${ref1}`], { namespace: NS }));
    assert.match(check, /\scomplete \(\d+\/\d+\)/);
    const snaps = ok(
      await ctr(d.address, ["snapshots", "--snapshotter", "overlayfs", "ls"], { namespace: NS }),
    );
    assert.ok(snaps.includes("Committed"), snaps);

    const st = await cri.image.imageStatus({ image: { image: ref1 }, verbose: true });
    assert.equal(st.image?.id, id);
    assert.deepEqual(st.image?.repoTags, [ref1]);
    assert.deepEqual(st.image?.repoDigests, [repoDigest]);
    const size = p.manifest.size + p.config.size + p.layers.reduce((n, l) => n + l.size, 0);
    assert.equal(st.image?.size, BigInt(size));
    assert.equal(st.image?.uid, undefined);
    assert.equal(st.image?.username, "");
    // the sandbox image is pinned against kubelet's image GC
    assert.equal(st.image?.pinned, true);
    const info = JSON.parse(st.info["info"]!) as {
      chainID: string;
      imageSpec: { rootfs: { diff_ids: string[] } };
    };
    assert.deepEqual(info.imageSpec.rootfs.diff_ids, p.diffIds);
    assert.match(info.chainID, /^sha256:[0-9a-f]{64}$/);

    // the same image by ID, ID prefix (with and without sha256:), repo digest and short name
    for (const ref of [id, id.slice(7, 19), id.slice(0, 19), repoDigest]) {
      const s = await cri.image.imageStatus({ image: { image: ref } });
      assert.equal(s.image?.id, id, ref);
    }
    const missing = await cri.image.imageStatus({ image: { image: `${open.host}/${REPO}:absent` } });
    assert.equal(missing.image, undefined);
  });

  it("ListImages lists every image once and filters by reference", async () => {
    await cri.image.pullImage({ image: { image: refMulti } });
    const amd64 = multiAmd64;
    const list = await cri.image.listImages({});
    const ids = list.images.map((i) => i.id);
    assert.equal(new Set(ids).size, ids.length, "one entry per image");
    const m = list.images.find((i) => i.id === amd64.config.digest);
    assert.ok(m, JSON.stringify(ids));
    assert.deepEqual(m.repoTags, [refMulti]);
    assert.deepEqual(m.repoDigests, [`${open.host}/${REPO}@${multiIndex.digest}`]);
    // the index, the chosen manifest, its config and layers
    const size = multiIndex.size + amd64.manifest.size + amd64.config.size + amd64.layers[0]!.size;
    assert.equal(m.size, BigInt(size));
    const filtered = await cri.image.listImages({ filter: { image: { image: refMulti } } });
    assert.deepEqual(
      filtered.images.map((i) => i.id),
      [amd64.config.digest],
    );
    const none = await cri.image.listImages({ filter: { image: { image: `${open.host}/nothing:1` } } });
    assert.deepEqual(none.images, []);
  });

  it("ImageStatus reports the image config's user as uid or username", async () => {
    await cri.image.pullImage({ image: { image: userRef() } });
    await cri.image.pullImage({ image: { image: namedUserRef() } });
    const u = await cri.image.imageStatus({ image: { image: userRef() } });
    assert.equal(u.image?.id, userConfigDigest);
    assert.equal(u.image?.uid?.value, 1234n);
    assert.equal(u.image?.username, "");
    assert.equal(u.image?.pinned, false);
    const n = await cri.image.imageStatus({ image: { image: namedUserRef() } });
    assert.equal(n.image?.uid, undefined);
    assert.equal(n.image?.username, "nobody");
  });

  it("PullImage takes credentials from the request's AuthConfig", async () => {
    const ref = lockedRef();
    await assert.rejects(cri.image.pullImage({ image: { image: ref } }), /401|unauthorized|authenticat/i);
    await assert.rejects(
      cri.image.pullImage({
        image: { image: ref },
        auth: { username: "dave", password: "cri-pa55", serverAddress: "other.example:5000" },
      }),
      /401|unauthorized|authenticat/i,
      "credentials for another server are not sent",
    );
    const res = await cri.image.pullImage({
      image: { image: ref },
      auth: { username: "dave", password: "cri-pa55", serverAddress: locked.host },
    });
    assert.equal(res.imageRef, single.platforms[0]!.config.digest);
    assert.ok(!d.logs().includes("cri-pa55"), "the password is never logged");
    const st = await cri.image.imageStatus({ image: { image: ref } });
    assert.ok(st.image?.repoTags.includes(ref), JSON.stringify(st.image?.repoTags));
    assert.ok(st.image?.repoTags.includes(ref1), "one image, two tags");

    // the `auth` field (base64 user:password), after removing the image
    await cri.image.removeImage({ image: { image: ref } });
    await cri.image.pullImage({
      image: { image: ref },
      auth: { auth: Buffer.from("dave:cri-pa55").toString("base64") },
    });
    assert.ok((await cri.image.imageStatus({ image: { image: ref } })).image);
  });

  it("PullImage goes through the plugin's registry mirrors", async () => {
    const ref = `${FAKE}/${REPO}:nobody`;
    const res = await cri.image.pullImage({ image: { image: ref } });
    const st = await cri.image.imageStatus({ image: { image: ref } });
    assert.equal(st.image?.id, res.imageRef);
    assert.ok(st.image?.repoTags.includes(ref), JSON.stringify(st.image?.repoTags));
    assert.equal(st.image?.username, "nobody");
  });

  it("RemoveImage by tag, ID or repo digest removes every record of the image; a missing one is fine", async () => {
    const ref = userRef();
    const id = userConfigDigest;
    const digestOf = async () =>
      (await cri.image.imageStatus({ image: { image: ref } })).image!.repoDigests[0]!;
    const recordsOf = async () =>
      [...(await ctrImages(d.address)).keys()].filter((n) => n.includes(REPO) || n === id);
    for (const how of ["tag", "id", "digest"] as const) {
      await cri.image.pullImage({ image: { image: ref } });
      const repoDigest = await digestOf();
      const before = await recordsOf();
      assert.ok(
        before.includes(ref) && before.includes(id) && before.includes(repoDigest),
        `${how}: ${before.join("\n")}`,
      );
      const target = how === "tag" ? ref : how === "id" ? id : repoDigest;
      await cri.image.removeImage({ image: { image: target } });
      const left = await recordsOf();
      for (const name of [ref, id, repoDigest]) assert.ok(!left.includes(name), `${how}: ${name} left`);
      assert.equal((await cri.image.imageStatus({ image: { image: ref } })).image, undefined);
      // other images are untouched
      assert.ok(left.includes(namedUserRef()), left.join("\n"));
      // idempotent
      await cri.image.removeImage({ image: { image: target } });
    }
  });

  it("ImageFsInfo reports the snapshotter's usage", async () => {
    const r = await cri.image.imageFsInfo({});
    assert.equal(r.imageFilesystems.length, 1);
    const fs = r.imageFilesystems[0]!;
    assert.equal(fs.fsId?.mountpoint, join(d.root, "io.containerd.snapshotter.v1.overlayfs"));
    assert.ok((fs.usedBytes?.value ?? 0n) > 100_000n, `used ${fs.usedBytes?.value}`);
    assert.ok((fs.inodesUsed?.value ?? 0n) > 3n, `inodes ${fs.inodesUsed?.value}`);
    const now = BigInt(Date.now()) * 1_000_000n;
    assert.ok(fs.timestamp <= now && fs.timestamp > now - 60_000_000_000n);
  });

  it("crictl images/pull/rmi agree (when crictl is installed)", async (t) => {
    if (!crictlBin()) {
      t.skip("crictl is not on PATH");
      return;
    }
    const ref = namedUserRef();
    ok(await crictl(d.address, ["pull", ref]), "crictl pull");
    const imgs = ok(await crictl(d.address, ["images"]));
    assert.ok(imgs.includes(`${open.host}/${REPO}`), imgs);
    ok(await crictl(d.address, ["rmi", ref]), "crictl rmi");
    assert.equal((await cri.image.imageStatus({ image: { image: ref } })).image, undefined);
    const v = ok(await crictl(d.address, ["version"]));
    assert.match(v, /RuntimeName:\s+berth/);
  });
});
