// berth's ttrpc client against a real Go ttrpc peer: Debian's containerd-shim-runc-v2, started
// the way containerd starts it (`start` in a bundle dir prints the shim's socket address and
// leaves a daemonized shim behind). This process becomes a child subreaper first so that the
// daemonized shim is reparented here and can be reaped by PID (PID 1 on these machines never
// reaps); the test checks that no zombie is left.
import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn as spawnChild } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { BerthError } from "../../src/base/errdefs.js";
import { Task } from "../../src/gen/containerd/runtime/v2/task/shim_pb.js";
import { isChildSubreaper, reap, setChildSubreaper } from "../../src/sys/reaper.js";
import { TtrpcClient } from "../../src/ttrpc/client.js";
import { TtrpcServer } from "../../src/ttrpc/server.js";
import { makeTempDir, removeTempDir } from "../helpers/tmp.js";

const SHIM = "/usr/bin/containerd-shim-runc-v2";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function procState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0];
  } catch {
    return undefined;
  }
}

function ppidOf(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
  } catch {
    return undefined;
  }
}

/** Run the shim's `start` in the bundle dir, stdin empty (no runtime options), as containerd does. */
function shimStart(
  args: string[],
  cwd: string,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawnChild(SHIM, args, { cwd, stdio: ["ignore", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (c: Buffer) => out.push(c));
    child.stderr.on("data", (c: Buffer) => err.push(c));
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    child.once("error", reject);
    child.once("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() });
    });
  });
}

/** The daemonized shim for `id`: its argv carries `-id <id>` and no `start`. */
function findShim(id: string): number | undefined {
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const argv = readFileSync(`/proc/${name}/cmdline`, "utf8").split("\0");
      const i = argv.indexOf("-id");
      if (i >= 0 && argv[i + 1] === id && !argv.includes("start")) return Number(name);
    } catch {
      // gone meanwhile
    }
  }
  return undefined;
}

/** Reap pid (our child by subreaping) within ms; true once it is gone for good. */
async function reapWithin(pid: number, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const r = reap(pid);
    if (r === "reaped" || (r === "not-child" && procState(pid) === undefined)) return true;
    await sleep(20);
  }
  return false;
}

describe("ttrpc interop with containerd-shim-runc-v2 (Go ttrpc)", { skip: !existsSync(SHIM) }, () => {
  let dir: string;
  let bundle: string;
  let address: string;
  let events: TtrpcServer;
  let shimPid = 0;
  let shimSocket = "";
  let logReader: ChildProcess | undefined;
  const id = `berth-ttrpc-${process.pid}`;

  before(async () => {
    setChildSubreaper();
    assert.equal(isChildSubreaper(), true);
    dir = await makeTempDir("ttrpc-shim");
    bundle = join(dir, "bundle");
    mkdirSync(bundle);
    writeFileSync(
      join(bundle, "config.json"),
      JSON.stringify({
        ociVersion: "1.0.2",
        process: { args: ["/bin/true"], cwd: "/" },
        root: { path: "rootfs" },
      }),
    );
    // the shim daemon writes its log to the FIFO "log" in its bundle, which containerd creates
    // and reads; without it the daemon exits at once
    execFileSync("mkfifo", ["-m", "0700", join(bundle, "log")]);
    logReader = spawnChild("sh", ["-c", `exec cat log > shim.log`], { cwd: bundle, stdio: "ignore" });
    // what the shim takes as the daemon's address; it would publish events to <address>.ttrpc
    address = join(dir, "berth.sock");
    events = new TtrpcServer();
    await events.listen(`${address}.ttrpc`);
  });

  after(async () => {
    if (shimPid > 0 && procState(shimPid) !== undefined && procState(shimPid) !== "Z") {
      try {
        process.kill(shimPid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    if (shimPid > 0) await reapWithin(shimPid, 5000);
    if (shimSocket) rmSync(shimSocket, { force: true });
    if (logReader && logReader.exitCode === null && logReader.signalCode === null) logReader.kill("SIGKILL");
    await events?.close();
    if (dir) await removeTempDir(dir);
  });

  it("start prints the socket; Connect and Shutdown over our client; nothing is left behind", async () => {
    const r = await shimStart(
      ["-namespace", "default", "-id", id, "-address", address, "-publish-binary", "/bin/true", "start"],
      bundle,
    );
    assert.equal(r.code, 0, `shim start failed: ${r.stderr}`);
    const sockAddr = r.stdout.trim();
    assert.match(sockAddr, /^unix:\/\/\/run\/containerd\/s\/[0-9a-f]{64}$/);
    shimSocket = sockAddr.slice("unix://".length);
    shimPid = findShim(id) ?? 0;
    assert.ok(
      shimPid > 0,
      `the shim daemon runs; its log: ${readFileSync(join(bundle, "shim.log"), "utf8")}`,
    );
    assert.equal(ppidOf(shimPid), process.pid, "the daemonized shim was reparented to this subreaper");

    const client = await TtrpcClient.connect(sockAddr);
    const closed = new Promise<void>((res) => client.once("closed", () => res()));
    try {
      const task = client.service(Task);
      const c = await task.connect({ id }, { namespace: "default", timeoutMs: 10_000 });
      assert.equal(c.shimPid, shimPid, "the shim reports its own pid");
      assert.equal(c.taskPid, 0, "no task yet");
      // errors come back as statuses through errdefs
      await assert.rejects(
        client.call(Task.method.connect, { id }, { namespace: "default", metadata: {} }).then(async () => {
          const { Content } = await import("../../src/gen/containerd/services/content/v1/content_pb.js");
          return client.service(Content).info({ digest: "x" }, { namespace: "default" });
        }),
        (err: unknown) => err instanceof BerthError && err.kind === "not implemented",
      );
      // many in flight on one connection to the Go server
      const many = await Promise.all(
        Array.from({ length: 50 }, () => task.connect({ id }, { namespace: "default" })),
      );
      assert.ok(many.every((m) => m.shimPid === shimPid));
      // Shutdown: the shim answers, then exits and drops the connection
      await task.shutdown({ id, now: true }, { namespace: "default", timeoutMs: 10_000 }).catch((err) => {
        // the shim may exit before its reply leaves; that reads as a closed connection
        assert.ok(err instanceof BerthError && err.kind === "unavailable", String(err));
      });
      await Promise.race([closed, sleep(10_000)]);
      assert.equal(client.closed, true, "the shim closed the connection on shutdown");
    } finally {
      client.close();
    }
    assert.equal(await reapWithin(shimPid, 10_000), true, "the shim exited and was reaped");
    assert.equal(procState(shimPid), undefined, "no zombie left in /proc");
    assert.equal(existsSync(shimSocket), false, "the shim removed its socket");
  });
});
