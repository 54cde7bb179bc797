// Reliability group 6: wedged and dying shims (issue 14). berthd runs a few tasks with the real
// ctr; one shim per case misbehaves while two bystander tasks keep running:
//   stopped       the shim gets SIGSTOP: calls to its task end in bounded time (Kill with
//                 DeadlineExceeded, List/Get with status UNKNOWN after the 2 s state timeout, as
//                 containerd answers), then berthd is killed with -9 and restarted: start-up does not
//                 wait for ever on the stopped shim (containerd #13848, #5597), it gives up after the
//                 load timeout and cleans the task up; the stopped shim is then killed.
//   silent        berthd is down, the shim is killed and a fake one listens on its socket, accepting
//                 connections and answering nothing; berthd restarts in bounded time and cleans up.
//   connect-only  the same with a fake that answers Connect (so the task loads) and nothing else:
//                 calls fail with DeadlineExceeded; once the fake goes away the task is cleaned up.
//   mid-call      the shim is stopped, a Kill or Delete is sent, and the shim is SIGKILLed while the
//                 call waits (seeded delay): the call ends at once with an error, not a hang, and the
//                 task is cleaned up (before the fix a Delete interrupted this way left a task that
//                 no call could remove: "ttrpc: closed" for ever).
//   deaf-to-shutdown  a fake shim (test/helpers/fake-shim.ts) runs a task created and started over
//                 gRPC; its Shutdown answers and then nothing happens. Once the task is deleted,
//                 berthd kills the shim after the shutdown timeout and logs it by PID (before the fix
//                 it stayed running with no task for ever: the load-leaks run once left 2 such shims).
//   unreachable   a fake shim whose `start` prints an address nothing listens on: Tasks.Create fails,
//                 and the server it spawned (its shim.pid) is killed and logged; nothing of the task
//                 is left (before the fix the server stayed running, unknown to berthd).
// Every case then checks the bystanders (listed RUNNING, exec works) and that nothing of the victim
// is left: no task, no bundle or work dir, no mount, no runc state, the container removable.
// The per-call, load and shutdown bounds are shortened in this berthd's [timeouts] to keep the run short.
import assert from "node:assert/strict";
import { readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Task } from "../../src/gen/containerd/runtime/v2/task/shim_pb.js";
import { Containers } from "../../src/gen/containerd/services/containers/v1/containers_pb.js";
import { Tasks } from "../../src/gen/containerd/services/tasks/v1/tasks_pb.js";
import { Status } from "../../src/gen/containerd/types/task/task_pb.js";
import { Connection } from "../../src/grpc/client.js";
import { reap, setChildSubreaper } from "../../src/sys/reaper.js";
import { TtrpcServer } from "../../src/ttrpc/server.js";
import { ctr, ok } from "../helpers/ctr.js";
import { type Daemon, killShimsOf, restartDaemon, startBerthd } from "../helpers/daemons.js";
import {
  FAKE_SHIM_ARGV0,
  FAKE_SHIM_DIR,
  FAKE_SHIM_MODE,
  type FakeShimMode,
  fakeShimPid,
  fakeShimWrapper,
} from "../helpers/fake-shim.js";
import { type RegistryWithBusybox, registryWithBusybox } from "../helpers/fixtures.js";
import { descendants, isGone, type Proc, shimsOf, until } from "../helpers/procs.js";
import { makeTempDir, mountsUnder, removeTempDir } from "../helpers/tmp.js";
import { cases, randInt, report, rng, SEED } from "./report.js";

// per run: runc keeps state per namespace under /run/containerd/runc, shared by every daemon
const NS = `wedged-shims-${process.pid}`;
const RUNTIME_DIR = "io.containerd.runtime.v2.task";
const CALL_TIMEOUT_MS = 2000;
const LOAD_TIMEOUT_MS = 2000;
/** `io.containerd.timeout.shim.shutdown`: how long berthd waits for a shim to go after Shutdown. */
const SHUTDOWN_TIMEOUT_MS = 1000;
/** The bound on a fake shim's going once berthd has given up on it (kill, reap, a loaded machine). */
const KILLED_BOUND_MS = 4000;
const SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/**
 * The bound on a restart with one wedged shim: the 15 s, and tighter, the load timeout
 * plus a few seconds of start-up (before the fix a silent shim cost the load timeout, then a
 * Shutdown call of 5 s and a 3 s wait for it to go: 10 s more here, 13 s with the defaults).
 */
const RESTART_BOUND_MS = Math.min(15_000, LOAD_TIMEOUT_MS + 6000);
const CONFIG = [
  "version = 2",
  "[timeouts]",
  `  "io.containerd.timeout.shim.load" = "${LOAD_TIMEOUT_MS}ms"`,
  `  "berth.timeout.shim.call" = "${CALL_TIMEOUT_MS}ms"`,
  `  "io.containerd.timeout.shim.shutdown" = "${SHUTDOWN_TIMEOUT_MS}ms"`,
  "",
].join("\n");

type Kind = "stopped" | "silent" | "connect-only" | "mid-call" | "deaf-to-shutdown" | "unreachable";
const KINDS: Kind[] = ["stopped", "silent", "connect-only", "mid-call", "deaf-to-shutdown", "unreachable"];
const BYSTANDERS = ["by-a", "by-b"];

const argAfter = (argv: string[], flag: string) => {
  const i = argv.indexOf(flag);
  return i >= 0 ? argv[i + 1] : undefined;
};

describe("reliability: wedged and dying shims", () => {
  let fx: RegistryWithBusybox;
  let d: Daemon;
  const crashed: Daemon[] = [];
  /** Processes reparented to this process (a subreaper) when berthd or a shim died: reaped here. */
  let orphans: number[] = [];
  const fakes: { close(): Promise<void> }[] = [];
  const made = new Set<string>();
  const total = cases(KINDS.length, 30);
  /** The fake shims' dir (wrapper, sockets, server PIDs) and the server PIDs they recorded. */
  let fakeDir = "";
  let fakeRuntime = "";
  const fakePids: number[] = [];
  let tried = 0;
  const failed: string[] = [];

  const c = (args: string[], timeoutMs = 60_000) => ctr(d.address, args, { namespace: NS, timeoutMs });
  const bundleOf = (id: string) => `${d.state}/${RUNTIME_DIR}/${NS}/${id}`;
  const workOf = (id: string) => `${d.root}/${RUNTIME_DIR}/${NS}/${id}`;
  const shimOf = (id: string): Proc | undefined =>
    shimsOf(d.address).find((p) => argAfter(p.argv, "-id") === id);
  const reapOrphans = () => {
    orphans = orphans.filter((pid) => {
      try {
        return reap(pid) === "running";
      } catch {
        return false;
      }
    });
  };

  /** Kill -9 berthd (its live shims become ours) and start it again; returns the restart's time. */
  async function restart(): Promise<number> {
    orphans.push(...shimsOf(d.address).map((p) => p.pid));
    crashed.push(d);
    await d.kill9();
    return restartAfterKill();
  }

  async function restartAfterKill(): Promise<number> {
    const t0 = Date.now();
    d = await restartDaemon(crashed[crashed.length - 1]!, { timeoutMs: 60_000 });
    return Date.now() - t0;
  }

  async function runVictim(id: string): Promise<{ shim: Proc; initPid: number }> {
    made.add(id);
    ok(await c(["run", "-d", fx.ref1, id, "busybox", "sleep", "1000"]), `run -d ${id}`);
    const shim = shimOf(id);
    assert.ok(shim, `shim of ${id}`);
    const initPid = Number(readFileSync(`${bundleOf(id)}/init.pid`, "utf8"));
    return { shim, initPid };
  }

  /** The task's shim address (its bundle's `address` file), as a socket path. */
  const shimSocket = (id: string) =>
    readFileSync(`${bundleOf(id)}/address`, "utf8")
      .trim()
      .replace(/^unix:\/\//, "");

  /** (c): the bystanders are RUNNING and exec works in them. */
  async function checkBystanders(k: number): Promise<void> {
    const ls = ok(await c(["tasks", "ls"], 20_000), "tasks ls");
    for (const id of BYSTANDERS) assert.match(ls, new RegExp(`^${id}\\s+\\d+\\s+RUNNING`, "m"), ls);
    for (const id of BYSTANDERS) {
      const r = await c(["tasks", "exec", "--exec-id", `probe-${k}`, id, "busybox", "true"], 20_000);
      ok(r, `exec in ${id}`);
    }
  }

  /**
   * (b): calls to the wedged task end in bounded time, all at once: Kill (ctr and gRPC) with
   * DeadlineExceeded (code 4), Get and `ctr tasks ls` with status UNKNOWN after the state timeout
   * (containerd's answer for a task whose shim does not report its state).
   */
  async function checkBounded(id: string): Promise<void> {
    const t0 = Date.now();
    const conn = new Connection(d.address);
    try {
      const client = conn.client(Tasks);
      const [r, grpcKill, g, ls] = await Promise.all([
        c(["tasks", "kill", "-s", "SIGTERM", id], 30_000),
        client.kill({ containerId: id, signal: 15 }, { namespace: NS, timeoutMs: 30_000 }).then(
          () => undefined,
          (e: Error & { kind?: string }) => e,
        ),
        client.get({ containerId: id }, { namespace: NS, timeoutMs: 30_000 }),
        c(["tasks", "ls"], 30_000),
      ]);
      assert.equal(r.signal, null, "ctr tasks kill hung");
      assert.notEqual(r.code, 0, "kill of a wedged task succeeded");
      assert.match(r.stderr, /deadline exceeded/, r.stderr);
      assert.ok(grpcKill, "Tasks/Kill of a wedged task succeeded");
      assert.equal((grpcKill as { kind?: string }).kind, "deadline exceeded", grpcKill.message);
      assert.equal(g.process?.status, Status.UNKNOWN);
      assert.match(ok(ls, "tasks ls"), new RegExp(`^${id}\\s+\\d+\\s+UNKNOWN`, "m"), ls.stdout);
    } finally {
      conn.close();
    }
    const ms = Date.now() - t0;
    assert.ok(ms < CALL_TIMEOUT_MS + 4000, `Kill, Get and ls took ${ms} ms`);
  }

  /** (d): nothing of the victim is left, and its container goes. */
  async function checkGone(id: string, initPid: number | undefined): Promise<void> {
    await until(
      `task ${id} gone`,
      () => {
        reapOrphans();
        return !shimOf(id) && (initPid === undefined || isGone(initPid));
      },
      20_000,
    );
    for (let i = 0; ; i++) {
      const ls = ok(await c(["tasks", "ls"], 20_000), "tasks ls");
      if (!new RegExp(`^${id}\\s`, "m").test(ls)) break;
      if (i > 100) assert.fail(`task ${id} still listed: ${ls}`);
      await sleep(100);
    }
    await until(`bundle of ${id} removed`, () => !exists(bundleOf(id)) && !exists(workOf(id)), 10_000);
    const mine = (m: string) => m.includes(`/${id}/`) || m.endsWith(`/${id}`);
    assert.deepEqual([...mountsUnder(d.state), ...mountsUnder(d.root)].filter(mine), []);
    assert.ok(!exists(`/run/containerd/runc/${NS}/${id}`), "runc state left");
    ok(await c(["containers", "rm", id]), `containers rm ${id}`);
    made.delete(id);
    await until("no zombies below berthd", () => descendants(d.pid).every((p) => p.state !== "Z"), 5000);
  }

  const exists = (p: string) => {
    try {
      readdirSync(p);
      return true;
    } catch {
      return false;
    }
  };

  /** A fake shim on `path`: accepts connections and never answers. */
  async function silentShim(path: string): Promise<void> {
    rmSync(path, { force: true });
    const held = new Set<Socket>();
    const srv: Server = createServer((s) => {
      held.add(s);
      s.on("error", () => {});
      s.on("close", () => held.delete(s));
    });
    await new Promise<void>((r) => srv.listen(path, r));
    fakes.push({
      close: async () => {
        for (const s of held) s.destroy();
        await new Promise<void>((r) => srv.close(() => r()));
        rmSync(path, { force: true });
      },
    });
  }

  /** A fake shim on `path` that answers Connect (with the task's PID) and nothing else. */
  async function connectOnlyShim(path: string, taskPid: number): Promise<() => Promise<void>> {
    const srv = new TtrpcServer();
    const never = () => new Promise<never>(() => {});
    srv.register(Task, {
      connect: async () => ({ shimPid: 0, taskPid, version: "fake" }),
      state: never,
      kill: never,
      delete: never,
      pids: never,
      shutdown: never,
    });
    await srv.listen(path);
    const close = () => srv.close();
    fakes.push({ close });
    return close;
  }

  /** A container whose runtime is the fake shim in `mode` (no snapshot: the task gets no rootfs). */
  async function fakeContainer(conn: Connection, id: string, mode: FakeShimMode): Promise<void> {
    const spec = {
      ociVersion: "1.0.2",
      process: { args: ["sleep", "100000"], cwd: "/" },
      root: { path: "rootfs" },
      annotations: { [FAKE_SHIM_MODE]: mode, [FAKE_SHIM_DIR]: fakeDir },
    };
    made.add(id);
    await conn.client(Containers).create(
      {
        container: {
          id,
          runtime: { name: fakeRuntime },
          spec: { typeUrl: SPEC_URL, value: Buffer.from(JSON.stringify(spec)) },
        },
      },
      { namespace: NS, timeoutMs: 10_000 },
    );
  }

  /** berthd's log names the shim it killed, by PID. */
  function assertKillLogged(what: string, pid: number): void {
    const line = d
      .logs()
      .split("\n")
      .find((l) => l.includes(what) && new RegExp(`\\bpid=${pid}\\b`).test(l));
    assert.ok(line, `berthd's log has no "${what}" for PID ${pid}`);
  }

  /**
   * deaf-to-shutdown: create, start, kill and delete a task on a shim that ignores Shutdown. The
   * shim must be gone within the shutdown timeout and a few seconds of the Delete. Returns the
   * task's init PID.
   */
  async function deafToShutdown(id: string): Promise<number> {
    const conn = new Connection(d.address);
    const tasks = conn.client(Tasks);
    const o = { namespace: NS, timeoutMs: 20_000 };
    try {
      await fakeContainer(conn, id, "deaf");
      const { pid: initPid } = await tasks.create({ containerId: id }, o);
      const shimPid = fakeShimPid(fakeDir, id);
      assert.ok(shimPid, "the fake shim recorded its server's PID");
      fakePids.push(shimPid);
      await tasks.start({ containerId: id }, o);
      assert.equal((await tasks.get({ containerId: id }, o)).process?.status, Status.RUNNING);
      await tasks.kill({ containerId: id, signal: 9 }, o);
      for (let i = 0; (await tasks.get({ containerId: id }, o)).process?.status !== Status.STOPPED; i++) {
        if (i > 100) assert.fail(`task ${id} not STOPPED after SIGKILL`);
        await sleep(50);
      }
      const t0 = Date.now();
      await tasks.delete({ containerId: id }, o);
      await until(
        `the deaf shim ${shimPid} to be killed`,
        () => {
          reapOrphans();
          return isGone(shimPid);
        },
        SHUTDOWN_TIMEOUT_MS + KILLED_BOUND_MS - (Date.now() - t0),
      );
      assertKillLogged("shim still running after shutdown; killed it", shimPid);
      return initPid;
    } finally {
      conn.close();
    }
  }

  /**
   * unreachable: Tasks.Create on a shim whose printed address leads nowhere fails, and the server
   * that `start` spawned is killed; no task and no bundle are left.
   */
  async function unreachable(id: string): Promise<undefined> {
    const conn = new Connection(d.address);
    const tasks = conn.client(Tasks);
    const o = { namespace: NS, timeoutMs: 20_000 };
    try {
      await fakeContainer(conn, id, "unreachable");
      const err = await tasks.create({ containerId: id }, o).then(
        () => undefined,
        (e: Error) => e,
      );
      assert.ok(err, "Tasks.Create succeeded on a shim nothing can reach");
      assert.match(err.message, /\.nobody/, err.message);
      const shimPid = fakeShimPid(fakeDir, id);
      assert.ok(shimPid, "the fake shim recorded its server's PID");
      fakePids.push(shimPid);
      await until(
        `the unreachable shim ${shimPid} to be killed`,
        () => {
          reapOrphans();
          return isGone(shimPid);
        },
        KILLED_BOUND_MS,
      );
      assertKillLogged("shim started but unreachable; killed it", shimPid);
      const g = await tasks.get({ containerId: id }, o).then(
        () => undefined,
        (e: Error & { kind?: string }) => e,
      );
      assert.equal(g?.kind, "not found", `Tasks.Get after the failed create: ${g?.message ?? "a task"}`);
      assert.ok(!exists(bundleOf(id)) && !exists(workOf(id)), "bundle or work dir left");
      return undefined;
    } finally {
      conn.close();
    }
  }

  /** Fake shim servers left running (a failed case): killed by PID, below them first. */
  function killFakeShims(): void {
    for (const pid of fakePids) {
      let argv0 = "";
      try {
        argv0 = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0")[0] ?? "";
      } catch {
        continue; // gone
      }
      if (argv0 !== FAKE_SHIM_ARGV0) continue; // the PID was reused
      const below = descendants(pid).map((p) => p.pid);
      for (const p of [...below.reverse(), pid]) {
        try {
          process.kill(p, "SIGKILL");
          orphans.push(p); // reparented here once berthd is gone
        } catch {
          // gone meanwhile
        }
      }
    }
  }

  before(async () => {
    setChildSubreaper(true);
    fakeDir = await makeTempDir("fake-shims");
    fakeRuntime = join(fakeDir, FAKE_SHIM_ARGV0);
    writeFileSync(fakeRuntime, fakeShimWrapper(), { mode: 0o755 });
    fx = await registryWithBusybox("test/wedged");
    d = await startBerthd({ config: CONFIG });
    ok(await c(["images", "pull", "--plain-http", fx.ref1]), "pull");
    await Promise.all(
      BYSTANDERS.map(async (id) => {
        made.add(id);
        ok(await c(["run", "-d", fx.ref1, id, "busybox", "sleep", "1000"]), `run -d ${id}`);
      }),
    );
  });

  after(async () => {
    for (const f of fakes) await f.close().catch(() => {});
    killFakeShims();
    if (d) {
      for (const id of made) {
        await c(["tasks", "kill", "-s", "SIGKILL", id], 10_000).catch(() => {});
        await c(["tasks", "delete", "-f", id], 10_000).catch(() => {});
        await c(["containers", "rm", id], 10_000).catch(() => {});
      }
      killShimsOf(d.address);
      await d.cleanup();
    }
    for (const x of crashed) await x.cleanup();
    await sleep(100);
    reapOrphans();
    try {
      rmdirSync(`/run/containerd/runc/${NS}`);
    } catch {
      // not empty, or never made
    }
    await fx?.reg.cleanup();
    if (fakeDir) await removeTempDir(fakeDir);
    report({
      group: "wedged-shims",
      cases: tried,
      failures: failed.length,
      checked:
        "SIGSTOPped, silent, connect-only, mid-call-killed, deaf-to-shutdown and unreachable shims: restart < 15 s, DeadlineExceeded, lingering shims killed, bystanders work, victim cleaned up",
      notes: [
        "fixed: shim calls had no bound (a stopped shim hung Kill/Delete/Exec for ever): berth.timeout.shim.call (30 s default)",
        "fixed: a Delete whose shim died mid-call left a task nothing could remove (mid-call case)",
        "fixed: start-up waited load + shutdown timeouts (5 s + 5 s + 3 s) per silent shim, and the shim's delete had no bound",
        "fixed: a container process reparented to berthd when its shim was killed stayed a zombie (mid-call case)",
        "fixed: a shim whose Shutdown was lost stayed running with no task (deaf-to-shutdown)",
        "fixed: a shim started but unreachable (its address leading nowhere) stayed running (unreachable)",
        ...failed,
      ],
    });
  });

  for (let k = 0; k < total; k++) {
    const kind = KINDS[k % KINDS.length]!;
    it(`case ${k}: ${kind}`, async () => {
      tried++;
      const r = rng(SEED + k);
      const id = `victim-${k}`;
      try {
        if (kind === "deaf-to-shutdown" || kind === "unreachable") {
          const initPid = kind === "deaf-to-shutdown" ? await deafToShutdown(id) : await unreachable(id);
          await checkBystanders(k);
          await checkGone(id, initPid);
          return;
        }
        const { shim, initPid } = await runVictim(id);
        switch (kind) {
          case "stopped": {
            const sock = shimSocket(id);
            process.kill(shim.pid, "SIGSTOP");
            orphans.push(initPid); // ours once its stopped shim is killed after the restart
            try {
              await checkBounded(id);
              await checkBystanders(k);
              const ms = await restart();
              assert.ok(ms < RESTART_BOUND_MS, `restart with a stopped shim took ${ms} ms`);
              // the load gave up on it and cleaned the task up: not listed, nothing left
              const ls = ok(await c(["tasks", "ls"]), "tasks ls");
              assert.doesNotMatch(ls, new RegExp(`^${id}\\s`, "m"), ls);
            } finally {
              process.kill(shim.pid, "SIGKILL");
              // its socket outlives it (a killed shim cannot remove it)
              rmSync(sock, { force: true });
            }
            break;
          }
          case "silent":
          case "connect-only": {
            const sock = shimSocket(id);
            orphans.push(...shimsOf(d.address).map((p) => p.pid), initPid);
            crashed.push(d);
            await d.kill9();
            process.kill(shim.pid, "SIGKILL"); // the container stays, its shim does not
            await until("the real shim exits", () => {
              reapOrphans();
              return isGone(shim.pid);
            });
            if (kind === "silent") {
              await silentShim(sock);
              const ms = await restartAfterKill();
              assert.ok(ms < RESTART_BOUND_MS, `restart with a silent shim took ${ms} ms`);
            } else {
              const close = await connectOnlyShim(sock, initPid);
              const ms = await restartAfterKill();
              assert.ok(ms < RESTART_BOUND_MS, `restart with a connect-only shim took ${ms} ms`);
              await checkBounded(id);
              await checkBystanders(k);
              await close();
            }
            break;
          }
          case "mid-call": {
            process.kill(shim.pid, "SIGSTOP");
            // Tasks/Delete straight over gRPC (ctr's delete asks for the state first, and its -f
            // sends a Kill): case 3 is the regression case of the Delete fix; later ones pick
            const viaDelete = k === 3 || randInt(r, 2) === 0;
            const delay = 100 + randInt(r, 1100);
            const conn = new Connection(d.address);
            const t0 = Date.now();
            try {
              const pending = viaDelete
                ? conn.client(Tasks).delete({ containerId: id }, { namespace: NS, timeoutMs: 30_000 })
                : conn
                    .client(Tasks)
                    .kill({ containerId: id, signal: 9 }, { namespace: NS, timeoutMs: 30_000 });
              const outcome = (pending as Promise<unknown>).then(
                () => undefined,
                (e: Error & { kind?: string }) => e,
              );
              await sleep(delay);
              process.kill(shim.pid, "SIGKILL");
              const err = await outcome;
              const what = viaDelete ? "Delete" : "Kill";
              assert.ok(err, `${what} succeeded on a shim killed under it`);
              assert.notEqual(
                err.kind,
                "deadline exceeded",
                `${what} waited for the timeout: ${err.message}`,
              );
              assert.ok(Date.now() - t0 < delay + 1500, `${what} took ${Date.now() - t0} ms`);
            } finally {
              conn.close();
            }
            break;
          }
        }
        await checkBystanders(k);
        await checkGone(id, initPid);
      } catch (err) {
        failed.push(`case ${k} (${kind}, seed ${SEED + k}): ${(err as Error).message.split("\n")[0]}`);
        throw err;
      }
    });
  }
});
