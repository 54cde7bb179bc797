// The daemon-side pull's streamed overlay unpack (src/core/pull, src/core/unpack/layers.ts, stage.ts): layers are
// extracted into staging directories while they download and moved into their snapshots in
// order. Checked against the sequential way (each layer applied by the differ onto a snapshot
// prepared on its committed parent), against a native-snapshotter pull (merged trees), with a
// tampered blob in the registry, and for the staging API of the local snapshotters. Uses the
// real docker-registry on loopback; needs root (overlay mounts, owners, device whiteouts).
import assert from "node:assert/strict";
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  statSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { isNotFound } from "../../src/base/errdefs.js";
import { nopLogger } from "../../src/base/log.js";
import { type Plugin, PluginSet } from "../../src/base/plugin.js";
import { chainIds } from "../../src/core/images/image.js";
import { withTempMount } from "../../src/core/mount/mount.js";
import { type ProgressEvent, type PullDeps, pull } from "../../src/core/pull/pull.js";
import { RegistryClient } from "../../src/core/remotes/client.js";
import { STAGING_PREFIX } from "../../src/core/snapshots/local.js";
import type { NamespacedSnapshotter } from "../../src/core/snapshots/metadata.js";
import { OverlaySnapshotter } from "../../src/core/snapshots/overlay.js";
import { ChunkPipe } from "../../src/core/unpack/stage.js";
import { stageTuning } from "../../src/core/unpack/stage-thread.js";
import { contentPlugin } from "../../src/plugins/content.js";
import { corePlugins } from "../../src/plugins/core.js";
import { differPlugin, diffServicePlugin } from "../../src/plugins/diff.js";
import { imagesServicePlugin } from "../../src/plugins/images.js";
import { snapshotPlugins, snapshotsServicePlugin } from "../../src/plugins/snapshots.js";
import { localTransferPlugin, streamingManagerPlugin } from "../../src/plugins/transfer.js";
import type { LocalTransfer } from "../../src/services/transfer.js";
import { startFaultProxy } from "../helpers/fault-proxy.js";
import { type Blob, blob, MediaType, manifestBlob, pushBlob, pushManifest } from "../helpers/images.js";
import { type Registry, startRegistry } from "../helpers/registry.js";
import { buildTar, gzip, sha256, type TarEntry, zstd } from "../helpers/tarbuild.js";
import { makeTempDir, removeTempDir, unmountAll } from "../helpers/tmp.js";
import { describeTree, type TreeEntry } from "../helpers/tree.js";

const REPO = "test/stream";
const T0 = 1600000000;

interface TestImage {
  ref: string;
  layers: Blob[];
  diffIds: string[];
  config: Blob;
  manifest: Blob;
}

/** Push an image of `tars` (compressed as each says) as `<REPO>:<tag>`. */
async function pushLayers(
  reg: Registry,
  tag: string,
  tars: { tar: Buffer; as: "gzip" | "zstd" | "" }[],
): Promise<TestImage> {
  const layers = tars.map(({ tar, as }) =>
    as === "gzip"
      ? blob(MediaType.layerGzip, gzip(tar))
      : as === "zstd"
        ? blob("application/vnd.oci.image.layer.v1.tar+zstd", zstd(tar))
        : blob("application/vnd.oci.image.layer.v1.tar", tar),
  );
  const diffIds = tars.map(({ tar }) => sha256(tar));
  const config = blob(
    MediaType.config,
    Buffer.from(
      JSON.stringify({ architecture: "amd64", os: "linux", rootfs: { type: "layers", diff_ids: diffIds } }),
    ),
  );
  const manifest = manifestBlob(config, layers);
  for (const l of layers) await pushBlob(reg.url, REPO, l);
  await pushBlob(reg.url, REPO, config);
  await pushManifest(reg.url, REPO, tag, manifest);
  return { ref: `${reg.host}/${REPO}:${tag}`, layers, diffIds, config, manifest };
}

const big = (n: number, seed: number) => {
  const b = Buffer.alloc(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    b[i] = 97 + ((x >> 16) % 26);
  }
  return b;
};

/** Layers with what makes overlay unpacking interesting. */
function layerTars(): { tar: Buffer; as: "gzip" | "zstd" | "" }[] {
  const l0: TarEntry[] = [
    { name: "etc/", type: "dir", mtime: T0 },
    { name: "etc/hosts", data: "127.0.0.1 localhost\n", mtime: T0 },
    { name: "etc/keep", data: "keep\n", mtime: T0 },
    { name: "usr/", type: "dir", mtime: T0 },
    { name: "usr/bin/", type: "dir", mode: 0o711, mtime: T0 + 1 },
    { name: "usr/bin/tool", data: big(300_000, 1), mode: 0o755, mtime: T0 },
    { name: "usr/bin/tool2", type: "link", linkname: "usr/bin/tool", mode: 0o755, mtime: T0 },
    { name: "bin", type: "symlink", linkname: "usr/bin", mtime: T0 },
    { name: "opt/", type: "dir", mode: 0o751, uid: 3, gid: 4, mtime: T0 + 2 },
    {
      name: "opt/app/",
      type: "dir",
      mode: 0o750,
      uid: 1000,
      gid: 1000,
      mtime: T0 + 3,
      xattrs: { "user.origin": "lower" },
    },
    { name: "opt/app/old", data: "old\n", uid: 1000, gid: 1000, mtime: T0 },
    { name: "srv/", type: "dir", mode: 0o2775, gid: 50, mtime: T0 + 4 },
    { name: "var/", type: "dir", mtime: T0 },
    { name: "var/cache/", type: "dir", mode: 0o700, mtime: T0 },
    { name: "var/cache/a", data: "a", mtime: T0 },
    { name: "var/cache/b", data: "b", mtime: T0 },
    { name: "run/fifo", type: "fifo", mode: 0o600, mtime: T0 },
  ];
  const l1: TarEntry[] = [
    { name: "etc/.wh.hosts", mtime: T0 },
    { name: "var/cache/.wh..wh..opq", mtime: T0 },
    { name: "var/cache/c", data: "c", mtime: T0 + 5 },
    // no entries for opt/, opt/app/, opt/app/sub/: their attributes come from the lower
    { name: "opt/app/sub/file", data: big(70_000, 2), uid: 1000, gid: 1000, mtime: T0 + 6 },
    // srv/ is setgid in the lower: srv/new/ (in no lower) takes its group
    { name: "srv/new/x", data: "x", mtime: T0 },
    // through a lower's symlink: overlay mode makes bin/ a directory in the upper
    { name: "bin/via-link", data: "v", mtime: T0 },
  ];
  const l2: TarEntry[] = [
    // a file before its own directory's entry: the entry's attributes win
    { name: "data/z/file", data: "z", mtime: T0 },
    { name: "data/z/", type: "dir", mode: 0o700, uid: 7, gid: 8, mtime: T0 + 7 },
    { name: "opt/app/sub/file2", data: "2", mtime: T0 },
    { name: "usr/bin/.wh.tool2", mtime: T0 },
    { name: "etc/keep", data: "changed\n", mtime: T0 + 8 },
  ];
  return [
    { tar: buildTar(l0), as: "gzip" },
    { tar: buildTar(l1), as: "zstd" },
    { tar: buildTar(l2), as: "" },
  ];
}

/** Directories the layers need but neither carry nor find in a lower: made "now", times differ. */
const MADE_NOW = new Set(["run", "opt/app/sub", "srv/new", "data"]);

/** A tree as describeTree gives it, without the times of MADE_NOW directories and whiteouts. */
function stableTree(root: string): Record<string, TreeEntry> {
  const t = describeTree(root);
  for (const [k, e] of Object.entries(t)) if (MADE_NOW.has(k) || e.type === "char") delete e.mtime;
  return t;
}

for (const threaded of [false, true])
  describe(`pull: streamed, parallel overlay unpack (${threaded ? "every layer on a worker thread" : "small layers on the event loop"})`, () => {
    let savedMin = stageTuning.workerMinLayer;
    let reg: Registry;
    let dir: string;
    let set: PluginSet;
    let deps: PullDeps;
    let client: RegistryClient;
    let img: TestImage;

    const overlay = () => deps.snapshots.get("overlayfs");
    const overlayBackend = () => overlay().backend as OverlaySnapshotter;
    const stagingDirs = () =>
      readdirSync(overlayBackend().snapshotsDir).filter((n) => n.startsWith(STAGING_PREFIX));

    const doPull = (ns: string, ref: string, snapshotter?: string, progress?: (e: ProgressEvent) => void) =>
      pull(deps, {
        namespace: ns,
        ref,
        client,
        platforms: [{ os: "linux", architecture: "amd64" }],
        unpacks: snapshotter ? [{ platform: { os: "linux", architecture: "amd64" }, snapshotter }] : [],
        maxConcurrentDownloads: 3,
        progress,
      });

    /** The upper directory of a committed overlay snapshot (through a view on it). */
    async function upperOf(sn: NamespacedSnapshotter, ns: string, name: string): Promise<string> {
      const key = `upper-of-${name}-${Math.random()}`;
      const mounts = await sn.view(ns, key, name);
      await sn.remove(ns, key);
      const m = mounts[0]!;
      if (m.type === "bind") return m.source;
      const lower = m.options.find((o) => o.startsWith("lowerdir="))!.slice("lowerdir=".length);
      return lower.split(":")[0]!;
    }

    const exists = (sn: NamespacedSnapshotter, ns: string, key: string) =>
      sn.stat(ns, key).then(
        () => true,
        (err: unknown) => {
          if (isNotFound(err)) return false;
          throw err;
        },
      );

    before(async () => {
      savedMin = stageTuning.workerMinLayer;
      stageTuning.workerMinLayer = threaded ? 0 : Number.MAX_SAFE_INTEGER;
      dir = await makeTempDir("pull-stream");
      reg = await startRegistry();
      set = new PluginSet();
      const plugins: Plugin[] = [
        contentPlugin,
        ...snapshotPlugins,
        ...corePlugins,
        snapshotsServicePlugin,
        imagesServicePlugin,
        differPlugin,
        diffServicePlugin,
        streamingManagerPlugin,
        localTransferPlugin,
      ];
      await set.init(plugins, {
        daemon: {
          root: join(dir, "root"),
          state: join(dir, "state"),
          address: join(dir, "sock"),
          ttrpcAddress: join(dir, "sock.ttrpc"),
          version: "test",
          revision: "test",
        },
        disabled: [],
        required: [],
        configFor: (p) => ({ ...(p.defaults?.() as object) }),
        log: nopLogger,
      });
      deps = set.instance<LocalTransfer>("io.containerd.transfer.v1", "local").deps;
      client = new RegistryClient({ hosts: { plainHttp: true } });
      img = await pushLayers(reg, "1", layerTars());
    });

    after(async () => {
      stageTuning.workerMinLayer = savedMin;
      await client?.close();
      if (dir) unmountAll(dir);
      await set?.close();
      await reg?.cleanup();
      if (dir) await removeTempDir(dir);
    });

    it("gives the chain-ID snapshots and upper trees the sequential way gives", async () => {
      const events: ProgressEvent[] = [];
      const r = await doPull("stream", img.ref, "overlayfs", (e) => events.push(e));
      const chain = chainIds(img.diffIds);
      assert.equal(r.unpacked["linux/amd64@overlayfs"], chain[chain.length - 1]);
      assert.deepEqual(stagingDirs(), []);

      // the reference: fetch only, then each layer applied by the differ on its committed parent
      await doPull("seq", img.ref);
      const sn = overlay();
      let parent = "";
      for (let i = 0; i < img.layers.length; i++) {
        const l = img.layers[i]!;
        const key = `seq-extract-${i}`;
        const mounts = await sn.prepare("seq", key, parent);
        const applied = await deps.differ.apply(
          "seq",
          { mediaType: l.mediaType, digest: l.digest, size: l.size },
          mounts,
        );
        assert.equal(applied.digest, img.diffIds[i]);
        await sn.commit("seq", chain[i]!, key);
        parent = chain[i]!;
      }

      const rows = async (ns: string) =>
        (await sn.list(ns)).map((s) => `${s.name} ${s.parent} ${s.kind}`).sort();
      assert.deepEqual(await rows("stream"), await rows("seq"), "snapshots: chain IDs, parents, kinds");
      for (let i = 0; i < chain.length; i++) {
        const [a, b] = [await upperOf(sn, "stream", chain[i]!), await upperOf(sn, "seq", chain[i]!)];
        assert.notEqual(a, b);
        assert.deepEqual(stableTree(a), stableTree(b), `layer ${i}: upper trees`);
        const root = (p: string) => {
          const t = describeTree(join(p, ".."), { noTimes: true });
          return t.fs;
        };
        assert.deepEqual(root(a), root(b), `layer ${i}: upper root`);
      }

      // implicit parents got the lower's attributes; an explicit entry after its children won
      const up1 = describeTree(await upperOf(sn, "stream", chain[1]!));
      const b64 = (v: string) => Buffer.from(v).toString("base64");
      assert.deepEqual(up1["opt/app"], {
        type: "dir",
        mode: "750",
        uid: 1000,
        gid: 1000,
        mtime: T0 + 3,
        xattrs: { "user.origin": b64("lower") },
      });
      assert.equal(up1.opt?.mode, "751");
      assert.equal(up1.opt?.uid, 3);
      assert.equal(up1.opt?.mtime, T0 + 2);
      assert.equal(up1["opt/app/sub"]?.mode, "755");
      assert.equal(up1["opt/app/sub"]?.uid, 0);
      assert.equal(up1.srv?.mode, "2775");
      assert.equal(up1["srv/new"]?.gid, 50);
      assert.equal(up1["etc/hosts"]?.type, "char");
      assert.equal(up1["var/cache"]?.xattrs?.["trusted.overlay.opaque"], b64("y"));
      const up2 = describeTree(await upperOf(sn, "stream", chain[2]!));
      assert.deepEqual([up2["data/z"]?.mode, up2["data/z"]?.uid, up2["data/z"]?.gid], ["700", 7, 8]);

      // labels as before: uncompressed on every layer, the snapshot ref on the config
      for (let i = 0; i < img.layers.length; i++) {
        const info = await deps.content.info("stream", img.layers[i]!.digest);
        assert.equal(info.labels["containerd.io/uncompressed"], img.diffIds[i]);
        assert.match(info.labels["containerd.io/distribution.source.127.0.0.1"] ?? "", /^test\/stream$/);
      }
      const cinfo = await deps.content.info("stream", img.config.digest);
      assert.equal(cinfo.labels["containerd.io/gc.ref.snapshot.overlayfs"], chain[chain.length - 1]);

      // progress: every layer downloaded and unpacked, unpacked in layer order, saved last
      const names = img.layers.map((l) => `layer-${l.digest}`);
      for (const n of names) {
        for (const ev of ["waiting", "unpacking", "unpacked"])
          assert.ok(
            events.some((e) => e.event === ev && e.name === n),
            `${ev} ${n}`,
          );
        assert.ok(
          events.some((e) => (e.event === "complete" || e.event === "already exists") && e.name === n),
        );
      }
      assert.deepEqual(
        events.filter((e) => e.event === "unpacked").map((e) => e.name),
        names,
      );
      assert.equal(events[events.length - 1]?.event, "saved");
    });

    it("merged overlay view equals the native snapshotter's tree", async () => {
      await doPull("native", img.ref, "native");
      const chain = chainIds(img.diffIds);
      const top = chain[chain.length - 1]!;
      const nat = deps.snapshots.get("native");
      const natMounts = await nat.view("native", "v", top);
      const ovMounts = await overlay().view("stream", "v", top);
      try {
        const native = describeTree(natMounts[0]!.source, { noDirTimes: true });
        const merged = await withTempMount(ovMounts, async (root) =>
          describeTree(root, { noDirTimes: true }),
        );
        // overlay mode turns bin/ (a lower's symlink) into a directory of the upper, as containerd's
        // applier does; plain mode writes through the symlink
        const norm = (t: Record<string, TreeEntry>) =>
          Object.fromEntries(Object.entries(t).filter(([k]) => k !== "bin" && !k.startsWith("bin/")));
        delete native["usr/bin/via-link"];
        assert.deepEqual(norm(merged), norm(native));
        assert.equal(merged["etc/hosts"], undefined);
        assert.deepEqual(
          Object.keys(merged)
            .filter((k) => k.startsWith("var/cache/"))
            .sort(),
          ["var/cache/c"],
        );
      } finally {
        await nat.remove("native", "v");
        await overlay().remove("stream", "v");
      }
    });

    it("extracts from the content store when the blobs are there, and not at all when the chain is", async () => {
      await doPull("store", img.ref); // fetch only
      const events: ProgressEvent[] = [];
      await doPull("store", img.ref, "overlayfs", (e) => events.push(e));
      assert.equal(events.filter((e) => e.event === "already exists").length, img.layers.length);
      const sn = overlay();
      const chain = chainIds(img.diffIds);
      for (let i = 0; i < chain.length; i++)
        assert.deepEqual(
          stableTree(await upperOf(sn, "store", chain[i]!)),
          stableTree(await upperOf(sn, "stream", chain[i]!)),
          `layer ${i}`,
        );
      const before = (await sn.list("store")).map((s) => s.name).sort();
      const again: ProgressEvent[] = [];
      await doPull("store", img.ref, "overlayfs", (e) => again.push(e));
      assert.deepEqual((await sn.list("store")).map((s) => s.name).sort(), before);
      assert.equal(again.filter((e) => e.event === "unpacking").length, 0);
      assert.deepEqual(stagingDirs(), []);
    });

    it("a first pull GETs the manifest once, by tag; a pull of an image it has asks with HEAD", async () => {
      const proxy = await startFaultProxy(reg.url);
      try {
        const ref = `${proxy.host}/${REPO}:1`;
        const ns = `gets-${threaded ? "threads" : "loop"}`;
        const manifestRequests = () =>
          proxy.hits
            .filter((h) => h.path.includes("/manifests/"))
            .map((h) => `${h.method} ${h.path.slice(h.path.indexOf("/manifests/") + 11)}`);
        proxy.clear();
        await doPull(ns, ref, "overlayfs");
        assert.deepEqual(manifestRequests(), ["GET 1"]);
        proxy.clear();
        await doPull(ns, ref, "overlayfs");
        assert.deepEqual(manifestRequests(), ["HEAD 1"]);
      } finally {
        await proxy.close();
      }
    });

    it("a layer listed twice feeds both extractions, even when they cannot run at once", async () => {
      // Above the pipe's 16 MiB high-water mark: the extraction left waiting for a thread stalls
      // the download that also feeds the running one, until it gives up waiting.
      const twice = buildTar([{ name: "twice/blob", data: big(17 << 20, 7), mtime: T0 }]);
      const other = buildTar([{ name: "other", data: "o", mtime: T0 }]);
      const dup = await pushLayers(reg, "dup", [
        { tar: twice, as: "" },
        { tar: other, as: "gzip" },
        { tar: twice, as: "" },
      ]);
      const saved = { ...stageTuning };
      stageTuning.maxBusy = 1;
      stageTuning.maxWaitMs = 300;
      try {
        await doPull("dup", dup.ref, "overlayfs");
      } finally {
        Object.assign(stageTuning, saved);
      }
      const chain = chainIds(dup.diffIds);
      const upper = await upperOf(overlay(), "dup", chain[2]!);
      assert.deepEqual(Object.keys(stableTree(upper)).sort(), ["twice", "twice/blob"]);
      assert.equal(statSync(join(upper, "twice/blob")).size, 17 << 20);
      assert.deepEqual(stagingDirs(), []);
    });

    it("a tampered blob whose tar still matches the diff ID: no snapshot, no staging dir, no image", async () => {
      // The gzip header's mtime field does not change what it inflates to: the extraction gives
      // the right diff ID, only the blob digest can tell. Bytes 4..7 of the registry's copy change.
      const tars = [
        { tar: buildTar([{ name: "a/one", data: big(50_000, 3), mtime: T0 }]), as: "gzip" as const },
        { tar: buildTar([{ name: "b/two", data: big(400_000, 4), mtime: T0 }]), as: "gzip" as const },
        { tar: buildTar([{ name: "c/three", data: big(50_000, 5), mtime: T0 }]), as: "gzip" as const },
      ];
      const bad = await pushLayers(reg, "tampered", tars);
      const victim = bad.layers[1]!;
      const hex = victim.digest.slice(7);
      const file = join(reg.dir, "storage/docker/registry/v2/blobs/sha256", hex.slice(0, 2), hex, "data");
      const fd = openSync(file, "r+");
      writeSync(fd, Buffer.from([1, 2, 3, 4]), 0, 4, 4);
      closeSync(fd);

      await assert.rejects(doPull("bad", bad.ref, "overlayfs"), /digest|data loss|verification/i);
      const sn = overlay();
      const chain = chainIds(bad.diffIds);
      assert.equal(await exists(sn, "bad", chain[1]!), false);
      assert.equal(await exists(sn, "bad", chain[2]!), false);
      const left = (await sn.list("bad")).filter((s) => s.kind !== "committed");
      assert.deepEqual(left, [], "no extraction snapshot left");
      assert.deepEqual(stagingDirs(), []);
      assert.equal(
        deps.images.list("bad").some((i) => i.name === bad.ref),
        false,
      );
    });

    it("a layer that fails to extract leaves nothing staged either", async () => {
      const good = buildTar([{ name: "ok", data: "ok", mtime: T0 }]);
      // a hard link to nothing: the applier refuses it
      const broken = buildTar([
        { name: "big", data: big(200_000, 6), mtime: T0 },
        { name: "dangling", type: "link", linkname: "missing", mtime: T0 },
      ]);
      const bad = await pushLayers(reg, "broken", [
        { tar: good, as: "gzip" },
        { tar: broken, as: "gzip" },
      ]);
      await assert.rejects(doPull("broken", bad.ref, "overlayfs"), /dangling|missing|ENOENT/);
      const chain = chainIds(bad.diffIds);
      assert.equal(await exists(overlay(), "broken", chain[1]!), false);
      assert.deepEqual(stagingDirs(), []);
    });
  });

describe("staging directories of the local snapshotters", () => {
  let dir: string;
  before(async () => {
    dir = await makeTempDir("pull-stage-dirs");
  });
  after(async () => {
    if (dir) await removeTempDir(dir);
  });

  it("survive cleanup() until released; a crash's leftovers go at the next start", async () => {
    const root = join(dir, "overlay");
    const s = new OverlaySnapshotter(root);
    const d = s.createStagingDir();
    mkdirSync(join(d, "x/y"), { recursive: true });
    writeFileSync(join(d, "x/y/f"), "f");
    await s.cleanup();
    assert.ok(existsSync(join(d, "x/y/f")));
    await s.releaseStagingDir(d);
    assert.ok(!existsSync(d));
    // as a crash leaves one
    const leftover = s.createStagingDir();
    writeFileSync(join(leftover, "f"), "f");
    await s.close();
    const again = new OverlaySnapshotter(root);
    await again.close();
    assert.ok(!existsSync(leftover));
  });
});

describe("ChunkPipe", () => {
  it("hands chunks over in order, holds the writer at the high-water mark, fails the reader", async () => {
    const pipe = new ChunkPipe(8);
    const got: string[] = [];
    let written = 0;
    const writer = (async () => {
      for (const s of ["aaaa", "bbbb", "cccc", "dddd"]) {
        await pipe.write(Buffer.from(s));
        written++;
      }
      pipe.end();
    })();
    await new Promise((r) => setImmediate(r));
    assert.ok(written < 4, "the writer waits for the reader");
    for await (const c of pipe) got.push(c.toString());
    await writer;
    assert.deepEqual(got, ["aaaa", "bbbb", "cccc", "dddd"]);

    const failing = new ChunkPipe();
    await failing.write(Buffer.from("x"));
    failing.fail(new Error("boom"));
    await assert.rejects(
      (async () => {
        for await (const _ of failing);
      })(),
      /boom/,
    );

    // a reader that went away never holds the writer
    const gone = new ChunkPipe(1);
    const held = gone.write(Buffer.from("xx"));
    gone.close();
    await held;
    await gone.write(Buffer.from("yy"));
  });
});
