// `berth images export` → `docker load`: an image pulled into berthd from the local registry is
// exported to an OCI layout archive (with Docker's manifest.json) and loaded into Debian's dockerd
// 20.10, which itself runs on that berthd (`--containerd`). The loaded image must keep its ID (the
// config digest), carry the exported tag, and run. dockerd gets its own data-root, exec-root,
// pidfile and socket under a temp dir, no firewall/bridge changes, and containers use
// `--network none`. (Images with zstd layers are left out: dockerd 20.10's load cannot decompress
// zstd, for archives of ctr 1.6's `images export` just the same; berth's archive matches those.)
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, openSync, readFileSync, rmdirSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { setChildSubreaper } from "../../src/sys/reaper.js";
import { berth, ok, type RunResult, run } from "../helpers/ctr.js";
import { type Daemon, killShimsOf, startBerthd } from "../helpers/daemons.js";
import { registryWithBusybox } from "../helpers/fixtures.js";
import type { BuiltImage } from "../helpers/images.js";
import type { Registry } from "../helpers/registry.js";
import { makeTempDir, mountsUnder, onExitBeforeRemoval, removeTempDir } from "../helpers/tmp.js";

const DOCKER_BIN = "/usr/bin/docker";
const DOCKERD_BIN = "/usr/sbin/dockerd";
const REPO = "test/docker-load";

const haveDocker = existsSync(DOCKER_BIN) && existsSync(DOCKERD_BIN);
const skipReason = haveDocker
  ? false
  : `docker.io is not installed (${DOCKERD_BIN} or ${DOCKER_BIN} missing): run \`make debs\``;

function pidAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return !stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
  } catch {
    return false;
  }
}

interface DockerManifestEntry {
  Config: string;
  RepoTags: string[];
  Layers: string[];
}

describe("berth images export → docker load (dockerd 20.10 on berthd)", { skip: skipReason }, () => {
  let d: Daemon;
  let reg: Registry;
  let single: BuiltImage;
  let multi: BuiltImage;
  let ref1 = "";
  let refMulti = "";
  let dir = "";
  let dockerd: ChildProcess | undefined;
  let dockerdPid = 0;
  let dockerSock = "";
  const dockerdLog = () => {
    try {
      return readFileSync(path.join(dir, "dockerd.log"), "utf8");
    } catch {
      return "";
    }
  };
  const docker = (args: string[], timeoutMs = 60_000): Promise<RunResult> =>
    run(DOCKER_BIN, ["-H", `unix://${dockerSock}`, ...args], {
      timeoutMs,
      env: { ...process.env, DOCKER_CONFIG: path.join(dir, "cli") },
    });
  const diag = () =>
    `\n--- berthd ---\n${d?.logs().slice(-4000)}\n--- dockerd ---\n${dockerdLog().slice(-4000)}`;

  /** `berth images export` of `ref` into `<dir>/<file>`; returns the archive's manifest.json. */
  const exportImage = async (ref: string, file: string): Promise<DockerManifestEntry[]> => {
    const out = path.join(dir, file);
    ok(await berth(d.address, ["images", "export", out, ref]), `berth images export ${ref}`);
    return JSON.parse(ok(await run("tar", ["-xOf", out, "manifest.json"]), "tar -xOf manifest.json"));
  };

  const loadAndCheck = async (file: string, ref: string, configDigest: string, diffIds: string[]) => {
    const load = await docker(["load", "-i", path.join(dir, file)], 120_000);
    assert.equal(load.code, 0, `docker load: ${load.stderr}${diag()}`);
    assert.match(load.stdout, new RegExp(`Loaded image: ${ref.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\n`));
    const inspect = await docker([
      "image",
      "inspect",
      "--format",
      "{{.Id}} {{json .RepoTags}} {{json .RootFS.Layers}}",
      ref,
    ]);
    assert.equal(inspect.code, 0, inspect.stderr + diag());
    const [id, tags, layers] = inspect.stdout.trim().split(" ");
    assert.equal(id, configDigest, "docker's image ID is the exported config's digest");
    assert.deepEqual(JSON.parse(tags!), [ref]);
    assert.deepEqual(JSON.parse(layers!), diffIds, "docker's layers are the config's diff IDs");
    const r = await docker(["run", "--rm", "--network", "none", ref, "echo", "hi"]);
    assert.equal(r.code, 0, r.stderr + diag());
    assert.equal(r.stdout, "hi\n");
  };

  const stopDockerd = async () => {
    if (!dockerd || dockerdPid === 0) return;
    const exited = new Promise<void>((r) => {
      if (dockerd!.exitCode !== null || dockerd!.signalCode !== null) r();
      else dockerd!.once("exit", () => r());
    });
    try {
      process.kill(dockerdPid, "SIGTERM");
    } catch {
      // gone
    }
    const t = setTimeout(() => {
      try {
        process.kill(dockerdPid, "SIGKILL");
      } catch {
        // gone
      }
    }, 20_000);
    await exited;
    clearTimeout(t);
    dockerd = undefined;
    dockerdPid = 0;
  };

  onExitBeforeRemoval(() => {
    if (dockerdPid > 0 && pidAlive(dockerdPid)) {
      try {
        process.kill(dockerdPid, "SIGKILL");
      } catch {
        // gone
      }
    }
  });

  /** dockerd always makes /run/docker/plugins (plugin discovery is not under --exec-root). */
  const runDockerExisted = existsSync("/run/docker");

  before(async () => {
    setChildSubreaper(true);
    ({ reg, single, multi, ref1, refMulti } = await registryWithBusybox(REPO));
    d = await startBerthd({
      config: "version = 2\n",
      logLevel: process.env.BERTH_TEST_LOG_DIR ? "debug" : "info",
    });
    dir = await makeTempDir("docker-load");
    dockerSock = path.join(dir, "docker.sock");
    await mkdir(path.join(dir, "cli"), { recursive: true });
    // the trust key would go to /etc/docker/key.json otherwise (settable only in the config file)
    await writeFile(
      path.join(dir, "daemon.json"),
      JSON.stringify({ "deprecated-key-path": path.join(dir, "key.json") }),
    );
    const logFd = openSync(path.join(dir, "dockerd.log"), "a");
    const args = [
      `--containerd=${d.address}`,
      "--config-file",
      path.join(dir, "daemon.json"),
      "--data-root",
      path.join(dir, "docker"),
      "--exec-root",
      path.join(dir, "exec"),
      "--pidfile",
      path.join(dir, "docker.pid"),
      "-H",
      `unix://${dockerSock}`,
      "--iptables=false",
      "--ip6tables=false",
      "--bridge=none",
      "--ip-forward=false",
      "--ip-masq=false",
      "--userland-proxy=false",
      "--storage-driver=overlay2",
      "--log-level=debug",
    ];
    dockerd = spawn(DOCKERD_BIN, args, { stdio: ["ignore", logFd, logFd] });
    dockerdPid = dockerd.pid ?? 0;
    const end = Date.now() + 60_000;
    for (;;) {
      if (dockerd.exitCode !== null) throw new Error(`dockerd exited (${dockerd.exitCode}):${diag()}`);
      if (existsSync(dockerSock)) {
        const r = await docker(["version", "--format", "{{.Server.Version}}"], 10_000);
        if (r.code === 0) break;
      }
      if (Date.now() > end) throw new Error(`dockerd did not come up:${diag()}`);
      await sleep(200);
    }
  });

  after(async () => {
    if (dockerd) {
      const ps = await docker(["ps", "-aq"], 20_000).catch(() => undefined);
      for (const id of ps?.stdout.split("\n").filter(Boolean) ?? []) {
        await docker(["rm", "-f", id], 30_000).catch(() => {});
      }
    }
    await stopDockerd();
    const keep = process.env.BERTH_TEST_LOG_DIR;
    if (keep && d) {
      await mkdir(keep, { recursive: true });
      await writeFile(path.join(keep, "berthd.log"), d.logs());
      await writeFile(path.join(keep, "dockerd.log"), dockerdLog());
    }
    if (d) {
      killShimsOf(d.address);
      await d.cleanup();
    }
    await reg?.cleanup();
    if (dir) await removeTempDir(dir);
    if (!runDockerExisted) {
      for (const p of ["/run/docker/plugins", "/run/docker"]) {
        try {
          rmdirSync(p);
        } catch {
          // not empty: something else uses it now
        }
      }
    }
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
