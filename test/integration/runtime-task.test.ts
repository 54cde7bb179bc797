// The in-process Task API (src/core/runtime) against the real containerd-shim-runc-v2 and runc, with
// no daemon: a TaskManager on temp state/root dirs, the shim events ttrpc server on a temp socket,
// and a busybox rootfs bind-mounted by the shim. Covers the lifecycle (create, start, exec, wait,
// pids, pause/resume, metrics, kill, delete), exit notification, the CRI's shim grouping (two tasks
// of one sandbox on one shim, the shim kept until the last task is deleted) and wait over a
// reconnected manager (what a berthd restart does).
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  copyFileSync,
  existsSync,
  linkSync,
  mkdirSync,
  readFileSync,
  renameSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { isKind } from "../../src/base/errdefs.js";
import { createLogger, stderrSink } from "../../src/base/log.js";
import { Exchange } from "../../src/core/events/exchange.js";
import { shimEventsServer } from "../../src/core/runtime/events.js";
import {
  type ExitStatus,
  SPEC_TYPE_URL,
  type Task,
  type TaskExitEvent,
  TaskManager,
} from "../../src/core/runtime/manager.js";
import type { ShimTask } from "../../src/core/runtime/process.js";
import type { ShimEnv } from "../../src/core/runtime/shim.js";
import { setChildSubreaper } from "../../src/sys/reaper.js";
import type { TtrpcServer } from "../../src/ttrpc/index.js";
import { killShimsOf, repoRoot } from "../helpers/daemons.js";
import { BUSYBOX_BIN } from "../helpers/images.js";
import { isGone, shimsOf, until } from "../helpers/procs.js";
import { makeTempDir, mountsUnder, removeTempDir } from "../helpers/tmp.js";

const SHIM = "/usr/bin/containerd-shim-runc-v2";
// runc keeps state per namespace under /run/containerd/runc, shared by every daemon on the host
const NS = `rt-${process.pid}`;
const SANDBOX_ANNOTATION = "io.kubernetes.cri.sandbox-id";

function spec(id: string, args: string[], annotations: Record<string, string> = {}) {
  return {
    ociVersion: "1.0.2",
    process: { user: { uid: 0, gid: 0 }, args, env: ["PATH=/bin"], cwd: "/" },
    root: { path: "rootfs" },
    hostname: id,
    mounts: [
      { destination: "/proc", type: "proc", source: "proc" },
      { destination: "/dev", type: "tmpfs", source: "tmpfs", options: ["nosuid", "mode=755"] },
    ],
    annotations,
    linux: {
      cgroupsPath: `/berth-rt-test/${NS}-${id}`,
      namespaces: [{ type: "pid" }, { type: "ipc" }, { type: "uts" }, { type: "mount" }],
    },
  };
}

describe("runtime Task API over containerd-shim-runc-v2", { skip: !existsSync(SHIM) }, () => {
  let dir: string;
  let rootfs: string;
  let env: ShimEnv;
  let server: TtrpcServer;
  let events: Exchange;
  let manager: TaskManager;
  const exits: TaskExitEvent[] = [];
  const log = createLogger(stderrSink(process.env.RT_LOG === "info" ? "info" : "warn"));

  const newManager = () => {
    const m = new TaskManager(join(dir, "state"), join(dir, "root"), env, events, log);
    m.startReaper(200);
    m.onExit((e) => exits.push(e));
    return m;
  };
  const createTask = (id: string, args: string[], annotations?: Record<string, string>) =>
    manager.create(NS, id, {
      spec: spec(id, args, annotations),
      rootfs: [{ type: "bind", source: rootfs, options: ["rbind", "ro"] }],
      stdout: `file://${join(dir, `${id}.out`)}`,
      stderr: `file://${join(dir, `${id}.err`)}`,
    });
  const exitOf = async (id: string, execId: string) => {
    await until(`exit event of ${id}/${execId}`, () => exits.some((e) => e.id === id && e.execId === execId));
    return exits.find((e) => e.id === id && e.execId === execId)!;
  };

  before(async () => {
    setChildSubreaper(true);
    dir = await makeTempDir("runtime-task");
    rootfs = join(dir, "rootfs");
    mkdirSync(join(rootfs, "bin"), { recursive: true });
    for (const d of ["proc", "dev", "tmp"]) mkdirSync(join(rootfs, d));
    copyFileSync(BUSYBOX_BIN, join(rootfs, "bin/busybox"));
    for (const a of ["sh", "sleep", "echo", "cat", "true"]) symlinkSync("busybox", join(rootfs, "bin", a));
    events = new Exchange();
    server = shimEventsServer(events, log);
    await server.listen(join(dir, "b.sock.ttrpc"));
    env = {
      address: join(dir, "b.sock"),
      ttrpcAddress: join(dir, "b.sock.ttrpc"),
      publishBinary: join(repoRoot, "bin/berth-publish.js"),
      debug: false,
      log,
      spawned: new Set(),
    };
    manager = newManager();
  });

  after(async () => {
    for (const t of manager?.list() ?? []) {
      await t.kill("SIGKILL", { all: true }).catch(() => {});
      await t.wait().catch(() => {});
      await t.delete().catch(() => {});
    }
    await manager?.close();
    if (env) killShimsOf(env.address);
    await server?.close();
    if (dir) {
      assert.deepEqual(mountsUnder(join(dir, "state")), [], "no rootfs mount left");
      await removeTempDir(dir);
    }
  });

  it("create, start, exec, wait, pids, pause/resume, metrics, kill, delete; exits reported", async () => {
    const task = await createTask("life", ["sh", "-c", "echo hello; exec sleep 1000"]);
    assert.ok(task.pid > 0, "create reports the init pid");
    assert.equal(task.execId, "");
    assert.equal(task.id, "life");
    assert.equal(manager.get(NS, "life"), task);
    assert.deepEqual(
      manager.list(NS).map((t) => t.id),
      ["life"],
    );
    await assert.rejects(createTask("life", ["true"]), (e) => isKind(e, "already exists"));
    assert.equal((await task.state()).status, "created");

    assert.equal(await task.start(), task.pid);
    const st = await task.state();
    assert.equal(st.status, "running");
    assert.equal(st.pid, task.pid);
    assert.equal(st.stdout, `file://${join(dir, "life.out")}`);
    assert.equal(st.bundle, task.bundle);
    await until("init output", () => readFileSync(join(dir, "life.out"), "utf8") === "hello\n");

    // an exec'd process: its own wait, exit event and delete
    const p = await task.exec("e1", {
      spec: {
        args: ["sh", "-c", "echo from-exec; exit 7"],
        env: ["PATH=/bin"],
        cwd: "/",
        user: { uid: 0, gid: 0 },
      },
      // both: containerd-shim-runc-v2 1.6 crashes on a file:// stdout without a stderr
      stdout: `file://${join(dir, "e1.out")}`,
      stderr: `file://${join(dir, "e1.err")}`,
    });
    assert.equal(p.id, "e1");
    const execPid = await p.start();
    assert.ok(execPid > 0 && execPid !== task.pid);
    const pexit = await p.wait();
    assert.equal(pexit.exitStatus, 7);
    assert.ok(pexit.exitedAt instanceof Date && pexit.exitedAtNs !== undefined);
    assert.equal(BigInt(pexit.exitedAt.getTime()), pexit.exitedAtNs / 1_000_000n);
    assert.equal(readFileSync(join(dir, "e1.out"), "utf8"), "from-exec\n");
    const ev = await exitOf("life", "e1");
    assert.equal(ev.namespace, NS);
    assert.equal(ev.pid, execPid);
    assert.equal(ev.exitStatus, 7);
    assert.equal(ev.exitedAtNs, pexit.exitedAtNs);
    const pdel = await task.process("e1").delete();
    assert.equal(pdel.exitStatus, 7);
    assert.equal(pdel.pid, execPid);
    await assert.rejects(task.process("e1").state(), (e) => isKind(e, "not found"));

    const pids = await task.pids();
    assert.deepEqual(
      pids.map((x) => x.pid),
      [task.pid],
    );

    await task.pause();
    assert.equal((await task.state()).status, "paused");
    await task.resume();
    assert.equal((await task.state()).status, "running");

    const m = await task.metrics();
    assert.ok(m, "the shim reports stats");
    assert.match(m.typeUrl, /^io\.containerd\.cgroups\.v[12]\.Metrics$/);
    assert.ok(m.value.length > 0);

    // wait before the exit, kill, then the same exit from wait, the event and delete
    const waiting = task.wait();
    await task.kill("SIGKILL");
    const exit: ExitStatus = await waiting;
    assert.equal(exit.exitStatus, 137);
    assert.equal((await task.state()).status, "stopped");
    const iev = await exitOf("life", "");
    assert.equal(iev.pid, task.pid);
    assert.equal(iev.exitStatus, 137);
    const shim = shimsOf(env.address);
    assert.equal(shim.length, 1, "one shim for the task");
    const del = await task.delete();
    assert.equal(del.pid, task.pid);
    assert.equal(del.exitStatus, 137);
    assert.equal(del.exitedAtNs, exit.exitedAtNs, "delete and wait report the same exit time, to the ns");
    assert.throws(
      () => manager.get(NS, "life"),
      (e) => isKind(e, "not found"),
    );
    assert.equal(existsSync(task.bundle), false, "bundle removed");
    await until("the shim exits", () => isGone(shim[0]!.pid));
  });

  it("two tasks of one sandbox share its shim until the last is deleted", async () => {
    const sb = await createTask("sb", ["sleep", "1000"], { [SANDBOX_ANNOTATION]: "sb" });
    const c1 = await createTask("c1", ["sh", "-c", "echo c1; exec sleep 1000"], {
      [SANDBOX_ANNOTATION]: "sb",
    });
    await sb.start();
    await c1.start();
    const shims = shimsOf(env.address);
    assert.equal(shims.length, 1, "one shim serves both tasks");
    assert.equal((sb as ShimTask).shim, (c1 as ShimTask).shim, "over one connection");
    assert.equal(
      readFileSync(join(sb.bundle, "address"), "utf8"),
      readFileSync(join(c1.bundle, "address"), "utf8"),
      "both bundles name the same shim address",
    );
    await until("c1 output", () => readFileSync(join(dir, "c1.out"), "utf8") === "c1\n");

    // the sandbox goes first: its shim stays for c1
    await sb.kill("SIGKILL");
    assert.equal((await sb.wait()).exitStatus, 137);
    await sb.delete();
    assert.equal(isGone(shims[0]!.pid), false, "the shim outlives the first deleted task");
    assert.equal((await c1.state()).status, "running");

    // a restart: a new manager reconnects to the shim; wait works on the reconnected task
    await manager.close();
    manager = newManager();
    await manager.loadExisting(() => true);
    assert.deepEqual(
      manager.list(NS).map((t) => t.id),
      ["c1"],
    );
    const again = manager.get(NS, "c1");
    assert.equal(again.pid, c1.pid);
    const waiting = again.wait();
    // a second task joins the running group shim after the reconnection
    const c2 = await createTask("c2", ["sleep", "1000"], { [SANDBOX_ANNOTATION]: "sb" });
    await c2.start();
    assert.equal(shimsOf(env.address).length, 1, "c2 joined the same shim");
    await again.kill(9);
    assert.equal((await waiting).exitStatus, 137);
    await again.delete();
    assert.equal(isGone(shims[0]!.pid), false, "c2 still uses the shim");
    await c2.kill("SIGKILL");
    await c2.wait();
    await c2.delete();
    await until("the shared shim exits after its last task", () => isGone(shims[0]!.pid));
    assert.deepEqual(manager.list(NS), []);
    assert.deepEqual(shimsOf(env.address), []);
  });

  /**
   * Runs `body` with a containerd-shim-runc-v2 first on PATH that logs each invocation's last
   * argument (`start`, `delete`, or the -address of a shim berthd launched itself), then runs
   * the real one. Returns how many shims were launched directly and how many `start`s ran.
   */
  const withShimWrapper = async (
    name: string,
    body: (count: () => { direct: number; starts: number }) => Promise<void>,
  ) => {
    const wrapDir = join(dir, `wrap-${name}`);
    const calls = join(dir, `shim-calls-${name}`);
    mkdirSync(wrapDir, { recursive: true });
    writeFileSync(
      join(wrapDir, "containerd-shim-runc-v2"),
      `#!/bin/sh\nfor a; do last="$a"; done\necho "$last" >> ${calls}\nexec ${SHIM} "$@"\n`,
      { mode: 0o755 },
    );
    const count = () => {
      const lines = existsSync(calls) ? readFileSync(calls, "utf8").split("\n") : [];
      return {
        direct: lines.filter((l) => l === env.address).length,
        starts: lines.filter((l) => l === "start").length,
      };
    };
    const savedPath = process.env.PATH;
    process.env.PATH = `${wrapDir}:${savedPath ?? "/usr/bin:/bin"}`;
    try {
      await body(count);
    } finally {
      process.env.PATH = savedPath;
    }
  };

  it("a task joining its group's running shim starts no shim process", async () => {
    await withShimWrapper("group", async (count) => {
      const g = { "io.containerd.runc.v2.group": "grp" };
      const a = await createTask("ga", ["sleep", "1000"], g);
      assert.deepEqual(count(), { direct: 1, starts: 0 }, "the group's first task starts its shim");
      const b = await createTask("gb", ["sleep", "1000"], g);
      const c = await createTask("gc", ["sleep", "1000"], {
        "io.containerd.runc.v2.group": "grp",
        [SANDBOX_ANNOTATION]: "other", // the runc v2 shim reads the group annotation first
      });
      assert.deepEqual(count(), { direct: 1, starts: 0 }, "the others join the running shim");
      for (const t of [a, b, c]) await t.start();
      assert.equal(shimsOf(env.address).length, 1, "one shim serves the group");
      for (const t of [b, c])
        assert.equal(
          readFileSync(join(t.bundle, "address"), "utf8").trim(),
          readFileSync(join(a.bundle, "address"), "utf8").trim(),
          "the joining bundle names the group's shim, as its start would have",
        );
      const own = await createTask("solo", ["sleep", "1000"]);
      assert.deepEqual(count(), { direct: 2, starts: 0 }, "a task without a group gets a shim of its own");
      assert.equal(shimsOf(env.address).length, 2);
      for (const t of [a, b, c, own]) {
        await t.kill("SIGKILL");
        await t.wait();
        await t.delete();
      }
      await until("no shim left", () => shimsOf(env.address).length === 0);
      // the group's shim is gone: a new task of the group starts a new one
      const again = await createTask("ga2", ["true"], g);
      assert.deepEqual(count(), { direct: 3, starts: 0 }, "a group whose shim went away gets a new one");
      await again.start();
      await again.wait();
      await again.delete();
      await until("no shim left", () => shimsOf(env.address).length === 0);
    });
  });

  it("berthd starts the runc v2 shim as its start would; start runs where that is not covered", async () => {
    await withShimWrapper("launch", async (count) => {
      const t = await createTask("direct", ["sleep", "1000"]);
      assert.deepEqual(count(), { direct: 1, starts: 0 });
      const address = readFileSync(join(t.bundle, "address"), "utf8").trim();
      // the runc v2 shim's own derivation: sha256 of <daemon address>/<namespace>/<group>
      const digest = createHash("sha256")
        .update(join(env.address, NS, "direct"))
        .digest("hex");
      assert.equal(address, `unix:///run/containerd/s/${digest}`);
      const sock = address.slice("unix://".length);
      assert.equal(statSync(sock).mode & 0o777, 0o600, "the shim's socket is root's only");
      const [shim] = shimsOf(env.address);
      assert.ok(shim, "the shim runs");
      assert.deepEqual(shim.argv.slice(1), ["-namespace", NS, "-id", "direct", "-address", env.address]);
      const stat = readFileSync(`/proc/${shim.pid}/stat`, "utf8");
      const pgrp = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[2]);
      assert.equal(pgrp, shim.pid, "the shim leads a process group of its own");
      const own = Number(readFileSync("/proc/self/oom_score_adj", "utf8"));
      assert.equal(
        Number(readFileSync(`/proc/${shim.pid}/oom_score_adj`, "utf8")),
        Math.min(own + 1, 1000),
        "the shim's OOM score is its starter's + 1",
      );
      const environ = readFileSync(`/proc/${shim.pid}/environ`, "utf8").split("\0");
      assert.ok(environ.includes(`TTRPC_ADDRESS=${env.ttrpcAddress}`));
      assert.ok(environ.includes("GOMAXPROCS=4"));
      await t.start();
      await t.kill("SIGKILL");
      assert.equal((await t.wait()).exitStatus, 137);
      await t.delete();
      await until("the shim gone", () => shimsOf(env.address).length === 0);
      assert.equal(existsSync(sock), false, "the shim removed its socket on shutdown");

      // a stale socket where the group's shim would listen: `start` replaces it
      const staleDigest = createHash("sha256")
        .update(join(env.address, NS, "stale"))
        .digest("hex");
      const stalePath = `/run/containerd/s/${staleDigest}`;
      const stale = createServer();
      await new Promise<void>((res) => stale.listen(stalePath, () => res()));
      // closing a net.Server unlinks its path: keep a link to leave the file behind, as a killed
      // shim does
      const dupPath = `${stalePath}.keep`;
      linkSync(stalePath, dupPath);
      await new Promise<void>((res) => stale.close(() => res()));
      renameSync(dupPath, stalePath);
      assert.ok(statSync(stalePath).isSocket(), "a socket file nobody listens on");
      const s = await createTask("stale", ["true"]);
      assert.deepEqual(count(), { direct: 1, starts: 1 }, "a taken socket path goes to start");
      await s.start();
      await s.wait();
      await s.delete();
      await until("no shim left", () => shimsOf(env.address).length === 0);
    });
  });

  it("create takes the spec as an Any too; a failed create leaves nothing", async () => {
    const t: Task = await manager.create(NS, "anyspec", {
      spec: { typeUrl: SPEC_TYPE_URL, value: Buffer.from(JSON.stringify(spec("anyspec", ["true"]))) },
      rootfs: [{ type: "bind", source: rootfs, options: ["rbind", "ro"] }],
    });
    await t.start();
    assert.equal((await t.wait()).exitStatus, 0);
    assert.equal((await t.delete()).exitStatus, 0);

    await assert.rejects(createTask("bad", ["/no/such/binary"]));
    assert.equal(manager.has(NS, "bad"), false);
    assert.equal(existsSync(join(dir, "state", NS, "bad")), false, "no bundle left");
    await until("no shim left", () => shimsOf(env.address).length === 0);
  });
});
