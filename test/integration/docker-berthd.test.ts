// Issue 5 item 7: Debian's dockerd 20.10 runs containers through berthd (`--containerd` pointing at
// berthd's socket), driven by the real docker CLI. dockerd gets its own data-root, exec-root,
// pidfile and socket under a temp dir, no firewall/bridge changes, and containers run with
// `--network none`. The image is built here from the host's busybox and `docker load`ed.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, openSync, readdirSync, readFileSync, rmdirSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Leases } from "../../src/gen/containerd/services/leases/v1/leases_pb.js";
import { Namespaces } from "../../src/gen/containerd/services/namespaces/v1/namespace_pb.js";
import { Version } from "../../src/gen/containerd/services/version/v1/version_pb.js";
import { Connection } from "../../src/grpc/client.js";
import { setChildSubreaper } from "../../src/sys/reaper.js";
import { ctr, ok, type RunResult, run } from "../helpers/ctr.js";
import { type Daemon, killShimsOf, startBerthd } from "../helpers/daemons.js";
import { BUSYBOX_BIN } from "../helpers/images.js";
import { buildTar, sha256, type TarEntry } from "../helpers/tarbuild.js";
import { makeTempDir, mountsUnder, onExitBeforeRemoval, removeTempDir } from "../helpers/tmp.js";

const DOCKER_BIN = "/usr/bin/docker";
const DOCKERD_BIN = "/usr/sbin/dockerd";
const IMAGE = "berth-test/busybox:latest";
const MTIME = 1700000000;
const APPLETS = ["sh", "ls", "echo", "cat", "sleep", "true", "false", "id", "hostname", "trap"];

const haveDocker = existsSync(DOCKER_BIN) && existsSync(DOCKERD_BIN);
const skipReason = haveDocker
  ? false
  : `docker.io is not installed (${DOCKERD_BIN} or ${DOCKER_BIN} missing): run \`make debs\``;

/** A `docker save` style archive (manifest.json, config, one layer) of a busybox image. */
function busyboxDockerArchive(): Buffer {
  const layerEntries: TarEntry[] = [
    { name: "bin/", type: "dir", mtime: MTIME },
    { name: "bin/busybox", data: readFileSync(BUSYBOX_BIN), mode: 0o755, mtime: MTIME },
    ...APPLETS.map(
      (a): TarEntry => ({ name: `bin/${a}`, type: "symlink", linkname: "busybox", mtime: MTIME }),
    ),
    { name: "etc/", type: "dir", mtime: MTIME },
    { name: "etc/passwd", data: "root:x:0:0:root:/root:/bin/sh\n", mtime: MTIME },
    { name: "etc/group", data: "root:x:0:\n", mtime: MTIME },
    { name: "root/", type: "dir", mode: 0o700, mtime: MTIME },
    { name: "tmp/", type: "dir", mode: 0o1777, mtime: MTIME },
  ];
  const layer = buildTar(layerEntries);
  const diffId = sha256(layer);
  const config = Buffer.from(
    JSON.stringify({
      architecture: "amd64",
      os: "linux",
      created: new Date(MTIME * 1000).toISOString(),
      config: {
        Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        Cmd: ["sh"],
      },
      rootfs: { type: "layers", diff_ids: [diffId] },
      history: [{ created: new Date(MTIME * 1000).toISOString(), created_by: "berth test" }],
    }),
  );
  const configName = `${sha256(config).slice("sha256:".length)}.json`;
  const layerName = `${diffId.slice("sha256:".length)}/layer.tar`;
  const manifest = JSON.stringify([{ Config: configName, RepoTags: [IMAGE], Layers: [layerName] }]);
  return buildTar([
    { name: `${path.dirname(layerName)}/`, type: "dir", mtime: MTIME },
    { name: layerName, data: layer, mtime: MTIME },
    { name: configName, data: config, mtime: MTIME },
    { name: "manifest.json", data: manifest, mtime: MTIME },
  ]);
}

function pidAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return !stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
  } catch {
    return false;
  }
}

const shimsOf = (address: string) =>
  readdirSync("/proc")
    .filter((n) => /^\d+$/.test(n))
    .filter((n) => {
      try {
        const argv = readFileSync(`/proc/${n}/cmdline`, "utf8").split("\0");
        return argv.some((a) => a.includes("containerd-shim")) && argv.includes(address);
      } catch {
        return false;
      }
    });

describe("dockerd 20.10 on berthd", { skip: skipReason }, () => {
  let d: Daemon;
  let dir: string;
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
    `\n--- berthd ---\n${d.logs().slice(-4000)}\n--- dockerd ---\n${dockerdLog().slice(-4000)}`;

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
    d = await startBerthd({
      config: "version = 2\n",
      logLevel: process.env.BERTH_TEST_LOG_DIR ? "debug" : "info",
    });
    dir = await makeTempDir("docker");
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
    const archive = path.join(dir, "busybox.tar");
    await writeFile(archive, busyboxDockerArchive());
    ok(await docker(["load", "-i", archive]), "docker load");
  });

  after(async () => {
    if (dockerd) {
      const ps = await docker(["ps", "-aq"], 20_000).catch(() => undefined);
      for (const id of ps?.stdout.split("\n").filter(Boolean) ?? []) {
        await docker(["rm", "-f", id], 30_000).catch(() => {});
      }
    }
    await stopDockerd();
    // BERTH_TEST_LOG_DIR=<dir>: keep both daemons' logs for a look afterwards
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
    // runc state of the berthd shims lives under /run/containerd/runc/<ns> unless dockerd says
    // otherwise (it does: <exec-root>/runtime-runc); remove an empty leftover anyway
    try {
      rmdirSync("/run/containerd/runc/moby");
    } catch {
      // not empty (someone else's) or never made
    }
  });

  it("berthd answers dockerd's daemon-level calls like containerd 1.6", async () => {
    const conn = new Connection(d.address);
    try {
      const ns = await conn.client(Namespaces).get({ name: "never-created" }, { namespace: "default" });
      assert.equal(ns.namespace?.name, "never-created");
      await assert.rejects(
        conn.client(Leases).delete({ id: "no-such-lease" }, { namespace: "moby" }),
        (e: Error & { kind?: string }) => e.kind === "not found",
      );
      const v = await conn.client(Version).version({}, { namespace: "moby" });
      assert.ok(v.revision.length > 0, "Version/Version must carry a revision");
    } finally {
      conn.close();
    }
    const info = ok(await docker(["info", "--format", "{{.ContainerdCommit.ID}}"]), "docker info");
    assert.ok(info.trim().length > 0, "docker info shows the containerd revision");
  });

  it("docker run --rm --network none busybox echo hi prints hi", async () => {
    const r = await docker(["run", "--rm", "--network", "none", IMAGE, "echo", "hi"]);
    assert.equal(r.code, 0, r.stderr + diag());
    assert.equal(r.stdout, "hi\n");
  });

  it("docker run passes the exit code through", async () => {
    const r = await docker(["run", "--rm", "--network", "none", IMAGE, "sh", "-c", "exit 3"]);
    assert.equal(r.code, 3, r.stderr + diag());
  });

  it("docker run -d, exec, logs, stop, rm in the moby namespace", async () => {
    const started = await docker([
      "run",
      "-d",
      "--network",
      "none",
      "--name",
      "berth-d1",
      IMAGE,
      "sh",
      "-c",
      "echo started; exec sleep 300",
    ]);
    assert.equal(started.code, 0, started.stderr + diag());
    const id = started.stdout.trim();
    assert.match(id, /^[0-9a-f]{64}$/);

    const cls = ok(await ctr(d.address, ["containers", "ls", "-q"], { namespace: "moby" }), "ctr c ls");
    assert.ok(cls.split("\n").includes(id), `ctr -n moby c ls lists ${id}: ${cls}`);
    const tls = ok(await ctr(d.address, ["tasks", "ls"], { namespace: "moby" }), "ctr t ls");
    assert.match(tls, new RegExp(`${id}\\s+\\d+\\s+RUNNING`));

    const ex = await docker(["exec", "berth-d1", "echo", "from-exec"]);
    assert.equal(ex.code, 0, ex.stderr + diag());
    assert.equal(ex.stdout, "from-exec\n");
    const ex5 = await docker(["exec", "berth-d1", "sh", "-c", "exit 5"]);
    assert.equal(ex5.code, 5, ex5.stderr + diag());

    let logs = "";
    for (let i = 0; i < 50 && !logs.includes("started"); i++) {
      logs = ok(await docker(["logs", "berth-d1"]), "docker logs");
      if (!logs.includes("started")) await sleep(100);
    }
    assert.equal(logs, "started\n");

    const st = await docker(["stop", "-t", "1", "berth-d1"], 60_000);
    assert.equal(st.code, 0, st.stderr + diag());
    const state = ok(await docker(["inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "berth-d1"]));
    assert.equal(state.trim(), "exited 137");
    const t2 = ok(await ctr(d.address, ["tasks", "ls", "-q"], { namespace: "moby" }), "ctr t ls");
    assert.ok(!t2.includes(id), `task gone after stop: ${t2}`);

    const rm = await docker(["rm", "berth-d1"]);
    assert.equal(rm.code, 0, rm.stderr + diag());
    const c2 = ok(await ctr(d.address, ["containers", "ls", "-q"], { namespace: "moby" }), "ctr c ls");
    assert.ok(!c2.includes(id), `container gone after rm: ${c2}`);
    for (let i = 0; i < 50 && shimsOf(d.address).length > 0; i++) await sleep(100);
    assert.deepEqual(shimsOf(d.address), [], "no shims of berthd left");
  });

  it("docker exec -i (CloseIO), top, pause/unpause, stats, kill", async () => {
    const started = await docker([
      "run",
      "-d",
      "--network",
      "none",
      "--name",
      "berth-d2",
      IMAGE,
      "sleep",
      "300",
    ]);
    assert.equal(started.code, 0, started.stderr + diag());
    const id = started.stdout.trim();

    const cat = await run(DOCKER_BIN, ["-H", `unix://${dockerSock}`, "exec", "-i", "berth-d2", "cat"], {
      input: "through stdin\n",
      timeoutMs: 30_000,
      env: { ...process.env, DOCKER_CONFIG: path.join(dir, "cli") },
    });
    assert.equal(cat.code, 0, cat.stderr + diag());
    assert.equal(cat.stdout, "through stdin\n");

    const top = await docker(["top", "berth-d2"]);
    assert.equal(top.code, 0, top.stderr + diag());
    assert.match(top.stdout, /sleep 300/);

    assert.equal((await docker(["pause", "berth-d2"])).code, 0);
    assert.equal(ok(await docker(["inspect", "-f", "{{.State.Status}}", "berth-d2"])).trim(), "paused");
    assert.equal((await docker(["unpause", "berth-d2"])).code, 0);
    assert.equal(ok(await docker(["inspect", "-f", "{{.State.Status}}", "berth-d2"])).trim(), "running");

    const stats = await docker(["stats", "--no-stream", "--format", "{{.ID}} {{.MemUsage}}", "berth-d2"]);
    assert.equal(stats.code, 0, stats.stderr + diag());
    assert.ok(id.startsWith(stats.stdout.split(" ")[0]!), stats.stdout);
    assert.doesNotMatch(stats.stdout, /^\S+ 0B \/ 0B/, `stats carries memory usage: ${stats.stdout}`);

    const kill = await docker(["kill", "berth-d2"]);
    assert.equal(kill.code, 0, kill.stderr + diag());
    const w = await docker(["wait", "berth-d2"]);
    assert.equal(w.stdout.trim(), "137", w.stderr + diag());
    assert.equal((await docker(["rm", "berth-d2"])).code, 0);
  });

  it("leaves no mounts of containers behind", async () => {
    const ps = ok(await docker(["ps", "-aq"]), "docker ps");
    assert.equal(ps.trim(), "");
    const left = mountsUnder(path.join(dir, "docker")).filter((m) => m.includes("/merged"));
    assert.deepEqual(left, []);
  });
});
