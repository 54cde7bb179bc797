// `berth images export` → `docker load`: an image pulled into berthd from the local registry is
// exported to an OCI layout archive (with Docker's manifest.json) and loaded into Debian's dockerd
// 20.10, which itself runs on that berthd (`--containerd`). The loaded image must keep its ID (the
// config digest), carry the exported tag, and run. dockerd gets its own data-root, exec-root,
// pidfile and socket under a temp dir, no firewall/bridge changes, and containers use
// `--network none`. (Images with zstd layers are left out: dockerd 20.10's load cannot decompress
// zstd, for archives of ctr 1.6's `images export` just the same; berth's archive matches those.)
import assert from "node:assert/strict";
import { rmdirSync } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { setChildSubreaper } from "../../src/sys/reaper.js";
import { berth, ok, run } from "../helpers/ctr.js";
import { type Daemon, killShimsOf, startBerthd } from "../helpers/daemons.js";
import { type Dockerd, dockerSkipReason, startDockerd } from "../helpers/dockerd.js";
import { registryWithBusybox } from "../helpers/fixtures.js";
import type { BuiltImage } from "../helpers/images.js";
import type { Registry } from "../helpers/registry.js";
import { mountsUnder } from "../helpers/tmp.js";

const REPO = "test/docker-load";

interface DockerManifestEntry {
  Config: string;
  RepoTags: string[];
  Layers: string[];
}

describe("berth images export → docker load (dockerd 20.10 on berthd)", { skip: dockerSkipReason }, () => {
  let d: Daemon;
  let reg: Registry;
  let single: BuiltImage;
  let multi: BuiltImage;
  let ref1 = "";
  let refMulti = "";
  let dir = "";
  let dockerd: Dockerd;
  const docker = (args: string[], timeoutMs?: number) => dockerd.docker(args, timeoutMs);

  const exportImage = async (ref: string, file: string): Promise<DockerManifestEntry[]> => {
    const out = path.join(dir, file);
    ok(await berth(d.address, ["images", "export", out, ref]), `berth images export ${ref}`);
    return JSON.parse(ok(await run("tar", ["-xOf", out, "manifest.json"]), "tar -xOf manifest.json"));
  };

  const loadAndCheck = async (file: string, ref: string, configDigest: string, diffIds: string[]) => {
    const load = await docker(["load", "-i", path.join(dir, file)], 120_000);
    assert.equal(load.code, 0, `docker load: ${load.stderr}${dockerd.diag()}`);
    assert.match(load.stdout, new RegExp(`Loaded image: ${ref.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\n`));
    const inspect = await docker([
      "image",
      "inspect",
      "--format",
      "{{.Id}} {{json .RepoTags}} {{json .RootFS.Layers}}",
      ref,
    ]);
    assert.equal(inspect.code, 0, inspect.stderr + dockerd.diag());
    const [id, tags, layers] = inspect.stdout.trim().split(" ");
    assert.equal(id, configDigest, "docker's image ID is the exported config's digest");
    assert.deepEqual(JSON.parse(tags!), [ref]);
    assert.deepEqual(JSON.parse(layers!), diffIds, "docker's layers are the config's diff IDs");
    const r = await docker(["run", "--rm", "--network", "none", ref, "echo", "hi"]);
    assert.equal(r.code, 0, r.stderr + dockerd.diag());
    assert.equal(r.stdout, "hi\n");
  };

  before(async () => {
    setChildSubreaper(true);
    ({ reg, single, multi, ref1, refMulti } = await registryWithBusybox(REPO));
    d = await startBerthd({
      config: "version = 2\n",
      logLevel: process.env.BERTH_TEST_LOG_DIR ? "debug" : "info",
    });
    dockerd = await startDockerd(d, "docker-load");
    dir = dockerd.dir;
  });

  after(async () => {
    await dockerd?.cleanup();
    if (d) {
      killShimsOf(d.address);
      await d.cleanup();
    }
    await reg?.cleanup();
    try {
      rmdirSync("/run/containerd/runc/moby");
    } catch {
      // not empty (someone else's) or never made
    }
  });

  it("a single-manifest image: same ID (config digest), tag kept, runs", async () => {
    ok(await berth(d.address, ["images", "pull", "--plain-http", ref1]), "berth pull");
    const config = single.platforms[0]!.config.digest;
    const dm = await exportImage(ref1, "single.tar");
    assert.equal(dm.length, 1);
    assert.equal(dm[0]!.Config, `blobs/sha256/${config.slice(7)}`);
    assert.deepEqual(dm[0]!.RepoTags, [ref1]);
    assert.deepEqual(
      dm[0]!.Layers,
      single.platforms[0]!.layers.map((l) => `blobs/sha256/${l.digest.slice(7)}`),
    );
    await loadAndCheck("single.tar", ref1, config, single.platforms[0]!.diffIds);
  });

  it("an index image: docker loads the host platform's (linux/amd64) manifest", async () => {
    ok(await berth(d.address, ["images", "pull", "--plain-http", refMulti]), "berth pull");
    const amd64 = multi.platforms.find((p) => p.platform.architecture === "amd64")!;
    // its amd64 config is byte for byte the single image's: drop that one so this load starts afresh
    ok(await docker(["rmi", ref1]), "docker rmi");
    const dm = await exportImage(refMulti, "multi.tar");
    assert.equal(dm.length, 1);
    assert.equal(dm[0]!.Config, `blobs/sha256/${amd64.config.digest.slice(7)}`);
    await loadAndCheck("multi.tar", refMulti, amd64.config.digest, amd64.diffIds);
  });

  it("leaves no containers or mounts behind", async () => {
    const ps = ok(await docker(["ps", "-aq"]), "docker ps");
    assert.equal(ps.trim(), "");
    const left = mountsUnder(path.join(dir, "docker")).filter((m) => m.includes("/merged"));
    assert.deepEqual(left, []);
  });
});
