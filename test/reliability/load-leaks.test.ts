// Reliability group 7: load and leaks (issue 14). One berthd with the CRI plugin and real CNI (the
// test's own bridge and 10.86.X.0/24 subnet, bridge + host-local as in the CRI pod tests):
//   lifecycles  N container lifecycles at once through the real ctr and the gRPC API: create and
//               start (`ctr run -d`), kill (Tasks.Kill), wait (Tasks.Wait), delete (`ctr tasks rm`,
//               `ctr containers rm`); every other one instead runs to its end (`ctr run --rm`).
//   pod churn   P pod slots cycled for D seconds through the CRI RuntimeService: RunPodSandbox,
//               CreateContainer, StartContainer, StopContainer, RemoveContainer, StopPodSandbox,
//               RemovePodSandbox; most pods on the host network, every fourth one with a CNI
//               network (a netns file and an address from host-local).
// Then the leak scan compares the daemon with what it was after a warm-up: berthd's open file
// descriptors (small slack), mounts under root and state, shims, zombie children of berthd, netns
// files, host-local reservations, FIFOs and task bundles under state, the metadata database's WAL
// (bounded), and berthd's heap (the lowest of a few [debug] /debug/vars readings) and RSS within
// slack. Everything must be back to the baseline once the work is gone.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, lstatSync, readdirSync, statSync } from "node:fs";
import { request } from "node:http";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { Tasks } from "../../src/gen/containerd/services/tasks/v1/tasks_pb.js";
import { Version } from "../../src/gen/containerd/services/version/v1/version_pb.js";
import { NamespaceMode } from "../../src/gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";
import { Connection } from "../../src/grpc/client.js";
import { type CriClient, criClient, criTestConfig, pushPauseImage } from "../helpers/cri.js";
import { ctr, ok } from "../helpers/ctr.js";
import { type Daemon, startBerthd } from "../helpers/daemons.js";
import { buildBusyboxImage, pushImage } from "../helpers/images.js";
import { freeSubnetOctets, writeBridgeConflist } from "../helpers/net.js";
import { procs, shimsOf, until } from "../helpers/procs.js";
import { type Registry, startRegistry } from "../helpers/registry.js";
import { makeTempDir, mountsUnder, removeTempDir } from "../helpers/tmp.js";
import { cases, MODE, randInt, report, rng, SEED } from "./report.js";

const execFileP = promisify(execFile);
const BB = "/bin/busybox";
const NS = `load-leaks-${process.pid}`;
const RUNTIME_DIR = "io.containerd.runtime.v2.task";
/** Concurrent container lifecycles. */
const LIFECYCLES = cases(20, 200);
/** Pod slots churned at once, and for how long. */
const POD_SLOTS = cases(5, 100);
const CHURN_MS = Number(process.env.BERTH_LEAKS_CHURN_MS ?? (MODE === "full" ? 10 * 60_000 : 20_000));
/** Slack on berthd's open descriptors (a connection or two still closing). */
const FD_SLACK = 8;
/** Slack on heap and RSS growth after all that work. */
const HEAP_SLACK = 48 << 20;
const RSS_SLACK = 96 << 20;
/** The WAL is checkpointed every ~1000 pages: it must stay near that, not grow with the work. */
const WAL_BOUND = 16 << 20;

interface Scan {
  fds: number;
  mounts: string[];
  shims: number;
  zombies: number[];
  netns: string[];
  ipam: string[];
  fifos: string[];
  bundles: string[];
  wal: number;
  heapUsed: number;
  rss: number;
}

describe("reliability: load and leaks", { timeout: 60 * 60_000 }, () => {
  let tmp: string;
  let reg: Registry;
  let d: Daemon;
  let cri: CriClient;
  let bridge: string;
  let subnet: number;
  let ipamDir: string;
  let netnsDir: string;
  let debugSock: string;
  let busyboxRef: string;
  let tried = 0;
  const failed: string[] = [];
  const notes: string[] = [];
  let base: Scan | undefined;

  before(async () => {
    tmp = await makeTempDir("load-leaks");
    reg = await startRegistry();
    await pushImage(reg.url, "test/busybox", "1", buildBusyboxImage());
    await pushPauseImage(reg.url);
    busyboxRef = `${reg.host}/test/busybox:1`;
    subnet = freeSubnetOctets("10.86")[0]!;
    bridge = `blk${randomBytes(3).toString("hex")}`;
    ipamDir = path.join(tmp, "ipam");
    netnsDir = path.join(tmp, "state", "io.containerd.grpc.v1.cri", "netns");
    debugSock = path.join(tmp, "debug.sock");
    const confDir = path.join(tmp, "net.d");
    writeBridgeConflist({
      confDir,
      file: "10-leaks.conflist",
      name: "leaks",
      bridge,
      subnet: `10.86.${subnet}.0/24`,
      ipamDir,
      defaultRoute: true,
    });
    const config = criTestConfig({
      registryHost: reg.host,
      confDir,
      head: ["[debug]", `  address = "${debugSock}"`],
      cri: ["  netns_mounts_under_state_dir = true"],
    });
    d = await startBerthd({ config, root: path.join(tmp, "root"), state: path.join(tmp, "state") });
    cri = criClient(d.address);
    await cri.image.pullImage({ image: { image: busyboxRef } });
    ok(await ctr(d.address, ["images", "pull", "--plain-http", busyboxRef], { namespace: NS }), "ctr pull");
    // warm-up: one of each kind, so lazily loaded code and caches are in the baseline
    await lifecycle(0, true);
    await lifecycle(1, false);
    await podCycle(0, 0, false);
    await podCycle(0, 1, true);
    base = await settledScan();
  });

  after(async () => {
    try {
      for (const p of (await cri.runtime.listPodSandbox({})).items) {
        await cri.runtime.stopPodSandbox({ podSandboxId: p.id }).catch(() => {});
        await cri.runtime.removePodSandbox({ podSandboxId: p.id }).catch(() => {});
      }
    } catch {
      // the daemon is gone: its cleanup below does what it can
    }
    cri?.close();
    await d?.cleanup();
    await reg?.cleanup();
    if (bridge) await execFileP("ip", ["link", "del", bridge]).catch(() => {});
    if (tmp) await removeTempDir(tmp);
    report({
      group: "load-leaks",
      cases: tried,
      failures: failed.length,
      checked: `${LIFECYCLES} concurrent container lifecycles, ${POD_SLOTS} pods churned ${Math.round(CHURN_MS / 1000)} s (CRI, host and CNI networks); then fds, mounts, shims, zombies, netns, IPAM, FIFOs, bundles, WAL, heap/RSS back to baseline`,
      notes: [...notes, ...failed],
    });
  });

  // ctr gives up on a connection after 10 s by default; with a few hundred clients starting at once
  // on a small, shared machine the handshake can wait longer than that (the probe below records
  // how long berthd takes to answer meanwhile)
  const c = (args: string[], timeoutMs = 180_000) =>
    ctr(d.address, ["--connect-timeout", "120s", ...args], { namespace: NS, timeoutMs });

  /** Calls Version every 250 ms until stopped; resolves with the slowest answer (ms). */
  function probeVersion(): { stop(): Promise<number> } {
    let running = true;
    let worst = 0;
    const done = (async () => {
      const conn = new Connection(d.address);
      try {
        while (running) {
          const t0 = Date.now();
          await conn.client(Version).version({}, { timeoutMs: 120_000 });
          worst = Math.max(worst, Date.now() - t0);
          await sleep(250);
        }
      } finally {
        conn.close();
      }
      return worst;
    })();
    return {
      stop: () => {
        running = false;
        return done;
      },
    };
  }

  /** create/start, then kill + wait + delete (gRPC and ctr), or run to the end with --rm. */
  async function lifecycle(n: number, killed: boolean): Promise<void> {
    const id = `lc-${n}-${randomBytes(2).toString("hex")}`;
    if (!killed) {
      ok(
        await c(["run", "--rm", busyboxRef, id, "busybox", "sh", "-c", "echo hi; sleep 0.2"]),
        `run --rm ${id}`,
      );
      return;
    }
    ok(await c(["run", "-d", busyboxRef, id, "busybox", "sleep", "1000"]), `run -d ${id}`);
    const conn = new Connection(d.address);
    try {
      const tasks = conn.client(Tasks);
      const waited = tasks.wait({ containerId: id }, { namespace: NS, timeoutMs: 180_000 });
      await tasks.kill({ containerId: id, signal: 9 }, { namespace: NS, timeoutMs: 60_000 });
      const w = await waited;
      assert.equal(w.exitStatus, 137, `${id} exit status`);
    } finally {
      conn.close();
    }
    ok(await c(["tasks", "rm", id]), `tasks rm ${id}`);
    ok(await c(["containers", "rm", id]), `containers rm ${id}`);
  }

  /** One pod through its whole life: sandbox, a container started, stopped and removed. */
  async function podCycle(slot: number, round: number, cni: boolean): Promise<void> {
    const name = `p${slot}-${round}`;
    const cfg = {
      metadata: {
        name,
        namespace: "leaks",
        uid: `uid-${name}-${randomBytes(3).toString("hex")}`,
        attempt: 0,
      },
      // a kubelet gives no hostname to a host-network pod (it has the node's)
      ...(cni ? { hostname: name } : {}),
      logDirectory: path.join(tmp, "logs", name),
      labels: { app: "leaks" },
      linux: cni ? {} : { securityContext: { namespaceOptions: { network: NamespaceMode.NODE } } },
    };
    let step = "RunPodSandbox";
    const { podSandboxId } = await cri.runtime
      .runPodSandbox({ config: cfg }, { timeoutMs: 300_000 })
      .catch((err: Error) => {
        err.message = `${name} (${cni ? "cni" : "host"} network) ${step}: ${err.message}`;
        throw err;
      });
    try {
      step = "CreateContainer";
      const { containerId } = await cri.runtime.createContainer(
        {
          podSandboxId,
          config: {
            metadata: { name: "c", attempt: 0 },
            image: { image: busyboxRef },
            command: [BB, "sleep", "1000"],
            logPath: "c.log",
            linux: { securityContext: { namespaceOptions: { pid: NamespaceMode.CONTAINER } } },
          },
          sandboxConfig: cfg,
        },
        { timeoutMs: 300_000 },
      );
      step = "StartContainer";
      await cri.runtime.startContainer({ containerId }, { timeoutMs: 300_000 });
      step = "StopContainer";
      await cri.runtime.stopContainer({ containerId, timeout: 0n }, { timeoutMs: 300_000 });
      step = "RemoveContainer";
      await cri.runtime.removeContainer({ containerId }, { timeoutMs: 300_000 });
      step = "StopPodSandbox";
    } catch (err) {
      (err as Error).message = `${name} (${cni ? "cni" : "host"} network) ${step}: ${(err as Error).message}`;
      throw err;
    } finally {
      await cri.runtime.stopPodSandbox({ podSandboxId }, { timeoutMs: 300_000 });
      await cri.runtime.removePodSandbox({ podSandboxId }, { timeoutMs: 300_000 });
    }
  }

  it(`${LIFECYCLES} concurrent container lifecycles`, async () => {
    const r = rng(SEED);
    const errors: string[] = [];
    const probe = probeVersion();
    const t0 = Date.now();
    await Promise.all(
      Array.from({ length: LIFECYCLES }, async (_, n) => {
        tried++;
        // staggered a little (seeded), as clients arrive
        await sleep(randInt(r, 500));
        try {
          await lifecycle(n + 10, n % 2 === 0);
        } catch (err) {
          errors.push(`lifecycle ${n}: ${(err as Error).message.split("\n")[0]}`);
        }
      }),
    );
    const worst = await probe.stop();
    notes.push(
      `${LIFECYCLES} lifecycles in ${Math.round((Date.now() - t0) / 1000)} s; slowest Version answer meanwhile ${worst} ms`,
    );
    failed.push(...errors);
    assert.deepEqual(errors, []);
    const left = ok(await c(["containers", "ls", "-q"])).trim();
    assert.equal(left, "", "containers left");
  });

  it(`${POD_SLOTS} pods churned for ${Math.round(CHURN_MS / 1000)} s`, async () => {
    const end = Date.now() + CHURN_MS;
    const errors: string[] = [];
    let cycles = 0;
    let cniCycles = 0;
    const probe = probeVersion();
    await Promise.all(
      Array.from({ length: POD_SLOTS }, async (_, slot) => {
        const r = rng(SEED + 1000 + slot);
        await sleep(randInt(r, 1000));
        for (let round = 0; Date.now() < end; round++) {
          const cni = (slot + round) % 4 === 0;
          try {
            await podCycle(slot, round, cni);
            cycles++;
            if (cni) cniCycles++;
          } catch (err) {
            errors.push(`pod slot ${slot} round ${round}: ${(err as Error).message.split("\n")[0]}`);
            if (errors.length > 20) return;
          }
        }
      }),
    );
    tried += cycles;
    const worst = await probe.stop();
    notes.push(
      `${cycles} pod cycles (${cniCycles} with CNI) in ${Math.round(CHURN_MS / 1000)} s; slowest Version answer meanwhile ${worst} ms`,
    );
    failed.push(...errors);
    assert.deepEqual(errors, []);
    assert.ok(cycles >= POD_SLOTS, `only ${cycles} pod cycles`);
    assert.equal((await cri.runtime.listPodSandbox({})).items.length, 0, "sandboxes left");
  });

  it("leaves nothing behind: the leak scan matches the baseline", async () => {
    assert.ok(base, "no baseline");
    tried++;
    const now = await settledScan();
    const b = base!;
    notes.push(
      `baseline → after: fds ${b.fds} → ${now.fds}, heap ${mib(b.heapUsed)} → ${mib(now.heapUsed)} MiB, rss ${mib(b.rss)} → ${mib(now.rss)} MiB, wal ${mib(b.wal)} → ${mib(now.wal)} MiB`,
    );
    const problems: string[] = [];
    const same = (what: string, was: unknown[], is: unknown[]) => {
      if (is.length > was.length)
        problems.push(`${what}: ${was.length} → ${is.length} (${is.slice(0, 5).join(", ")})`);
    };
    if (now.fds > b.fds + FD_SLACK) problems.push(`berthd fds: ${b.fds} → ${now.fds}`);
    same("mounts", b.mounts, now.mounts);
    if (now.shims > b.shims) {
      // which ones, and whether berthd still knows their task (a leaked shim has none)
      const ids = shimsOf(d.address).map(
        (p) => `${argAfter(p.argv, "-namespace")}/${argAfter(p.argv, "-id")}`,
      );
      const known =
        ok(await ctr(d.address, ["tasks", "ls"], { namespace: "k8s.io" }))
          .trim()
          .split("\n").length - 1;
      problems.push(`shims: ${b.shims} → ${now.shims} (${ids.join(", ")}; k8s.io tasks listed: ${known})`);
    }
    same("zombies", b.zombies, now.zombies);
    same("netns files", b.netns, now.netns);
    same("IPAM reservations", b.ipam, now.ipam);
    same("FIFOs", b.fifos, now.fifos);
    same("bundles", b.bundles, now.bundles);
    if (now.wal > Math.max(b.wal, WAL_BOUND)) problems.push(`WAL: ${b.wal} → ${now.wal} bytes`);
    if (now.heapUsed > b.heapUsed + HEAP_SLACK)
      problems.push(`heap: ${mib(b.heapUsed)} → ${mib(now.heapUsed)} MiB`);
    if (now.rss > b.rss + RSS_SLACK) problems.push(`rss: ${mib(b.rss)} → ${mib(now.rss)} MiB`);
    if (problems.length > 0) failed.push(`leak scan: ${problems.join("; ")}`);
    assert.deepEqual(problems, []);
  });

  /** The scan, once shims, bundles and zombies have had a moment to go (they go asynchronously). */
  async function settledScan(): Promise<Scan> {
    await until(
      "shims and bundles to go",
      () =>
        shimsOf(d.address).length === (base?.shims ?? 0) && bundles().length <= (base?.bundles.length ?? 0),
      60_000,
    ).catch(() => {});
    await sleep(1000);
    const heaps: { heapUsed: number; rss: number }[] = [];
    for (let i = 0; i < 5; i++) {
      heaps.push(await debugVars());
      await sleep(300);
    }
    return {
      fds: readdirSync(`/proc/${d.pid}/fd`).length,
      mounts: [...mountsUnder(d.root), ...mountsUnder(d.state)],
      shims: shimsOf(d.address).length,
      zombies: procs()
        .filter((p) => p.ppid === d.pid && p.state === "Z")
        .map((p) => p.pid),
      netns: list(netnsDir),
      ipam: ipamReservations(ipamDir),
      fifos: fifosUnder(d.state),
      bundles: bundles(),
      wal: walSize(),
      heapUsed: Math.min(...heaps.map((h) => h.heapUsed)),
      rss: Math.min(...heaps.map((h) => h.rss)),
    };
  }

  function bundles(): string[] {
    const dir = path.join(d.state, RUNTIME_DIR);
    return list(dir).flatMap((ns) => list(path.join(dir, ns)).map((id) => `${ns}/${id}`));
  }

  function walSize(): number {
    const p = path.join(d.root, "io.containerd.metadata.v1.bolt", "meta.db-wal");
    return existsSync(p) ? statSync(p).size : 0;
  }

  function debugVars(): Promise<{ heapUsed: number; rss: number }> {
    return new Promise((resolve, reject) => {
      const req = request({ socketPath: debugSock, path: "/debug/vars" }, (res) => {
        let body = "";
        res.on("data", (c: Buffer) => {
          body += c.toString();
        });
        res.on("end", () => {
          try {
            const v = JSON.parse(body) as { memstats: { heapUsed: number; rss: number } };
            resolve({ heapUsed: v.memstats.heapUsed, rss: v.memstats.rss });
          } catch (err) {
            reject(err);
          }
        });
      });
      req.on("error", reject);
      req.end();
    });
  }
});

const argAfter = (argv: string[], flag: string) => {
  const i = argv.indexOf(flag);
  return i >= 0 ? argv[i + 1] : undefined;
};

const mib = (n: number) => (n / (1 << 20)).toFixed(1);

function list(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

function ipamReservations(dir: string): string[] {
  return list(dir).flatMap((n) => list(path.join(dir, n)).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)));
}

function fifosUnder(dir: string): string[] {
  const out: string[] = [];
  const walk = (p: string, depth: number) => {
    if (depth > 8) return;
    for (const n of list(p)) {
      const f = path.join(p, n);
      try {
        const st = lstatSync(f);
        if (st.isFIFO()) out.push(f);
        else if (st.isDirectory() && n !== "rootfs") walk(f, depth + 1);
      } catch {
        // gone meanwhile
      }
    }
  };
  walk(dir, 0);
  return out;
}
