// Issue 5 item 7: Debian's dockerd 20.10 runs containers through berthd (`--containerd` pointing at
// berthd's socket), driven by the real docker CLI. dockerd gets its own data-root, exec-root,
// pidfile and socket under a temp dir, no firewall/bridge changes, and containers run with
// `--network none`. The image is built here from the host's busybox and `docker load`ed.
import assert from "node:assert/strict";
import { readdirSync, readFileSync, rmdirSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Leases } from "../../src/gen/containerd/services/leases/v1/leases_pb.js";
import { Namespaces } from "../../src/gen/containerd/services/namespaces/v1/namespace_pb.js";
import { Version } from "../../src/gen/containerd/services/version/v1/version_pb.js";
import { Connection } from "../../src/grpc/client.js";
import { setChildSubreaper } from "../../src/sys/reaper.js";
import { ctr, ok, run } from "../helpers/ctr.js";
import { type Daemon, killShimsOf, startBerthd } from "../helpers/daemons.js";
import { DOCKER_BIN, type Dockerd, dockerSkipReason, startDockerd } from "../helpers/dockerd.js";
import { BUSYBOX_BIN } from "../helpers/images.js";
import { buildTar, sha256, type TarEntry } from "../helpers/tarbuild.js";
import { mountsUnder } from "../helpers/tmp.js";

const IMAGE = "berth-test/busybox:latest";
const MTIME = 1700000000;
const APPLETS = ["sh", "ls", "echo", "cat", "sleep", "true", "false", "id", "hostname", "trap"];

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

describe("dockerd 20.10 on berthd", { skip: dockerSkipReason }, () => {
  let d: Daemon;
  let dockerd: Dockerd;
  let dir = "";
  const docker = (args: string[], timeoutMs?: number) => dockerd.docker(args, timeoutMs);
  const diag = () => dockerd?.diag() ?? "";

  before(async () => {
    setChildSubreaper(true);
    d = await startBerthd({
      config: "version = 2\n",
      logLevel: process.env.BERTH_TEST_LOG_DIR ? "debug" : "info",
    });
    dockerd = await startDockerd(d, "docker");
    dir = dockerd.dir;
    const archive = path.join(dir, "busybox.tar");
    await writeFile(archive, busyboxDockerArchive());
    ok(await docker(["load", "-i", archive]), "docker load");
  });

  after(async () => {
    await dockerd?.cleanup();
    if (d) {
      killShimsOf(d.address);
      await d.cleanup();
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

    const cat = await run(DOCKER_BIN, ["-H", `unix://${dockerd.socket}`, "exec", "-i", "berth-d2", "cat"], {
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
