// Scale benchmark: how berthd's costs grow with the size of the node, next to the real containerd
// 1.6 in the same run. Each section fills one daemon at a time (the other is stopped) and times
// the calls at each size; daemon order alternates between sections.
//
//   containers  Containers/List (decoded, and as bytes), `ctr c ls` and a GC pass with 100, 1,000
//               and 5,000 container records (each with a ~4 KiB OCI spec, as `ctr c create`
//               writes one)
//   images      Images/List with 100 and 2,000 image records
//   content     Content/List and one GC pass (Leases/Delete of an empty lease, synchronous) with
//               10,000 and 50,000 small blobs, all held by one lease
//   snapshots   Snapshots/List and a GC pass with 5,000 active overlayfs snapshots (held by a lease)
//   restart     daemon start-up and recovery with 0, 100 and 300 running tasks: kill -9, start
//               again, time until Version answers (start-up) and until every task answers
//               Tasks/Get as RUNNING (recovery)
//   cri         CRI ListPodSandbox and ListContainers with 50 and 500 pods (host network, one
//               running container each)
//
// The restart and cri sections also measure each daemon's idle CPU at each size: its CPU (all
// threads) per second over 5 s in which nothing calls it, 1 s after the last call, and its RSS
// at the end of that span. Those rows' table columns are ms of CPU per second and MiB, not a
// call's ms.
//
// Every list is called twice untimed, then timed at least 9 times (more, up to 50, within 300 ms)
// at each size; the median is shown (`ctr c ls` at least 3 times). The "growth" column
// compares the largest size with the smallest: time ratio divided by size ratio, so 1.0 is linear
// and well above 1 is super-linear. berthd/containerd ≤ 1 means berthd is as fast or faster.
//
//   node dist/bench/scale.js [--quick] [--sections containers,images,…] [--only containerd|berthd]
//                            [--tmpfs] [--json FILE]
//
// --quick uses a fifth of each size (and 0/20/50 tasks, 20/100 pods). --tmpfs puts both daemons'
// roots and states on a tmpfs (the disk here swings several-fold within minutes).
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";
import { create, fromBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { AnySchema } from "@bufbuild/protobuf/wkt";
import { defaultSpec } from "../src/core/oci/index.js";
import {
  Containers,
  ListContainersResponseSchema,
} from "../src/gen/containerd/services/containers/v1/containers_pb.js";
import { Content, WriteAction } from "../src/gen/containerd/services/content/v1/content_pb.js";
import { Images } from "../src/gen/containerd/services/images/v1/images_pb.js";
import { Leases } from "../src/gen/containerd/services/leases/v1/leases_pb.js";
import { Snapshots } from "../src/gen/containerd/services/snapshots/v1/snapshots_pb.js";
import { Tasks } from "../src/gen/containerd/services/tasks/v1/tasks_pb.js";
import { Status } from "../src/gen/containerd/types/task/task_pb.js";
import {
  NamespaceMode,
  type PodSandboxConfigSchema,
} from "../src/gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";
import { type Client, Connection } from "../src/grpc/client.js";
import { NAMESPACE_HEADER } from "../src/grpc/handlers.js";
import { setChildSubreaper } from "../src/sys/reaper.js";
import { criClient, rawUnaryClient } from "../test/helpers/cri.js";
import { ctr, ok } from "../test/helpers/ctr.js";
import {
  CRI_PLUGIN,
  type Daemon,
  killShimsOf,
  restartDaemon,
  startBerthd,
  startContainerd,
} from "../test/helpers/daemons.js";
import { buildBusyboxImage, pushImage } from "../test/helpers/images.js";
import { type Registry, startRegistry } from "../test/helpers/registry.js";
import { makeTempDir, removeTempDir } from "../test/helpers/tmp.js";
import {
  criConfig,
  freeBridges,
  freeSubnets,
  pushBenchImages,
  removeNetwork,
  writeNetwork,
} from "./cri-env.js";
import {
  benchContainer,
  DAEMONS,
  type DaemonName,
  fmt,
  fmtRatio,
  median,
  nowMs,
  procStatus,
  renderTable,
  threadsCpuSeconds,
} from "./lib.js";

const SECTIONS = ["containers", "images", "content", "snapshots", "restart", "cri"] as const;
type Section = (typeof SECTIONS)[number];

const { values: opt } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    sections: { type: "string" },
    only: { type: "string" },
    tmpfs: { type: "boolean", default: false },
    json: { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (opt.help) {
  console.log(
    "usage: node dist/bench/scale.js [--quick] [--sections containers,images,content,snapshots,restart,cri]\n" +
      "                                [--only containerd|berthd] [--tmpfs] [--json FILE]",
  );
  process.exit(0);
}
const WANTED: DaemonName[] = opt.only ? [opt.only as DaemonName] : [...DAEMONS];
if (!WANTED.every((d) => DAEMONS.includes(d))) throw new Error(`--only wants containerd or berthd`);
const CHOSEN: Section[] = opt.sections ? (opt.sections.split(",") as Section[]) : [...SECTIONS];
for (const s of CHOSEN) if (!SECTIONS.includes(s)) throw new Error(`unknown section ${s}`);

const Q = opt.quick;
const SIZES = {
  containers: Q ? [20, 200, 1000] : [100, 1000, 5000],
  images: Q ? [20, 400] : [100, 2000],
  content: Q ? [2000, 10000] : [10000, 50000],
  snapshots: Q ? [1000] : [5000],
  restart: Q ? [0, 20, 50] : [0, 100, 300],
  cri: Q ? [20, 100] : [50, 500],
};
const NS = "scale";
const INFLIGHT = 16;
const log = (msg: string) => process.stderr.write(`[bench] ${msg}\n`);

/** One measured row: a call at a size, per daemon (ms). */
interface Row {
  section: Section;
  what: string;
  size: number;
  ms: Partial<Record<DaemonName, number>>;
}
const rows: Row[] = [];
function record(section: Section, what: string, size: number, daemon: DaemonName, ms: number): void {
  let r = rows.find((x) => x.section === section && x.what === what && x.size === size);
  if (!r) {
    r = { section, what, size, ms: {} };
    rows.push(r);
  }
  r.ms[daemon] = ms;
}
const failures: string[] = [];

async function pool(total: number, job: (i: number) => Promise<void>, inflight = INFLIGHT): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(inflight, total) }, async () => {
      while (next < total) await job(next++);
    }),
  );
}

/**
 * Median wall time of `fn`: two untimed calls first (Node compiles a code path on its first
 * calls), then at least `reps` timed calls, more (up to 50) while less than 300 ms has passed.
 */
async function timeMedian(reps: number, fn: () => Promise<unknown>): Promise<number> {
  await fn();
  await fn();
  const xs: number[] = [];
  const start = nowMs();
  while (xs.length < reps || (xs.length < 50 && nowMs() - start < 300)) {
    const t = nowMs();
    await fn();
    xs.push(nowMs() - t);
  }
  return median(xs);
}

/** The idle rows: the daemon's CPU over a span when no one calls it, after a moment to settle. */
const IDLE_SETTLE_MS = 1000;
const IDLE_SPAN_MS = 5000;
const IDLE_ROW = "idle CPU (ms per s, nothing calling)";
/** The memory row, read at the end of the idle span: what holding the tasks or pods costs. */
const RSS_ROW = "RSS after the idle span (MiB)";
const MiB = 1024 * 1024;

/**
 * CPU (all threads, user and system) per second of wall time while the daemon has nothing to
 * do. What a daemon does in the background for each task (watching shims, reaping) shows here
 * as a cost that grows with the node.
 */
async function idleCpuMsPerSec(pid: number): Promise<number> {
  await sleep(IDLE_SETTLE_MS);
  const cpu0 = threadsCpuSeconds(pid);
  const t0 = nowMs();
  await sleep(IDLE_SPAN_MS);
  return ((threadsCpuSeconds(pid) - cpu0) * 1000) / ((nowMs() - t0) / 1000);
}

/** Items in a list stream whose messages each carry a batch in `info`. */
async function drain(it: AsyncIterable<{ info: unknown[] }>): Promise<number> {
  let n = 0;
  for await (const m of it) n += m.info.length;
  return n;
}

function tmpfsDirs(fast: string | undefined, name: string, section: string) {
  if (!fast) return {};
  const base = path.join(fast, `${name}-${section}`);
  return { root: path.join(base, "root"), state: path.join(base, "state") };
}

async function startPlain(name: DaemonName, fast: string | undefined, section: string): Promise<Daemon> {
  const dirs = tmpfsDirs(fast, name, section);
  return name === "berthd"
    ? startBerthd({ config: "version = 2\n", disabledPlugins: [CRI_PLUGIN], ...dirs })
    : startContainerd({ disabledPlugins: [CRI_PLUGIN], ...dirs });
}

// ---- sections -------------------------------------------------------------------------------

/** A ~4 KiB OCI spec, the size `ctr c create` stores. */
const SPEC = create(AnySchema, {
  typeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec",
  value: Buffer.from(JSON.stringify(defaultSpec(NS, "scale"))),
});

/**
 * Containers/List answers as bytes, undecoded: both daemons send the same bytes, so decoding
 * 5,000 containers in this process (most of the decoded row's time) costs the same for either;
 * the bytes row times what differs, the daemons.
 */
function rawContainersList(address: string): { list: () => Promise<Buffer>; close: () => void } {
  const raw = rawUnaryClient(address, { [NAMESPACE_HEADER]: NS });
  const list = async () => {
    const r = await raw.call("/containerd.services.containers.v1.Containers/List");
    if (r.code !== 0 || !r.response) throw new Error(`Containers/List: status ${r.code} ${r.details}`);
    return r.response;
  };
  return { list, close: raw.close };
}

async function containersSection(name: DaemonName, d: Daemon): Promise<void> {
  const conn = new Connection(d.address);
  const c = conn.client(Containers);
  const leases = conn.client(Leases);
  const raw = rawContainersList(d.address);
  let have = 0;
  try {
    for (const size of SIZES.containers) {
      await pool(size - have, async (i) => {
        const id = `scale-${have + i}`;
        await c.create({ container: benchContainer(id, SPEC, { "bench.scale": "1" }) }, { namespace: NS });
      });
      have = size;
      record(
        "containers",
        "Containers/List",
        size,
        name,
        await timeMedian(9, () => c.list({}, { namespace: NS })),
      );
      const answers: Buffer[] = [];
      record(
        "containers",
        "Containers/List, bytes",
        size,
        name,
        await timeMedian(9, async () => answers.push(await raw.list())),
      );
      // an answer that came fast with less in it must not count: decode the last one
      const got = fromBinary(ListContainersResponseSchema, answers.at(-1)!).containers.length;
      if (got !== size)
        throw new Error(`${name}: Containers/List as bytes held ${got} containers, want ${size}`);
      answers.length = 0;
      record(
        "containers",
        "ctr c ls",
        size,
        name,
        await timeMedian(3, async () => ok(await ctr(d.address, ["-n", NS, "c", "ls", "-q"]), "ctr c ls")),
      );
      // every container is a root of a collection
      record("containers", "GC pass (Leases/Delete sync)", size, name, await timeGcPass(leases));
      log(`${name}: ${size} containers listed and collected`);
    }
  } finally {
    raw.close();
    conn.close();
  }
}

async function imagesSection(name: DaemonName, d: Daemon): Promise<void> {
  const conn = new Connection(d.address);
  const c = conn.client(Images);
  let have = 0;
  try {
    for (const size of SIZES.images) {
      await pool(size - have, async (i) => {
        const n = have + i;
        await c.create(
          {
            image: {
              name: `bench.invalid/scale/img-${n}:latest`,
              labels: { "bench.scale": "1" },
              target: {
                mediaType: "application/vnd.oci.image.manifest.v1+json",
                digest: `sha256:${createHash("sha256").update(`manifest-${n}`).digest("hex")}`,
                size: 1000n,
              },
            },
          },
          { namespace: NS },
        );
      });
      have = size;
      record("images", "Images/List", size, name, await timeMedian(9, () => c.list({}, { namespace: NS })));
      log(`${name}: ${size} images listed`);
    }
  } finally {
    conn.close();
  }
}

async function writeBlob(content: Client<typeof Content>, data: Buffer, ref: string, lease: string) {
  const call = content.write({ namespace: NS, lease });
  const it = call.responses[Symbol.asyncIterator]();
  const digest = `sha256:${createHash("sha256").update(data).digest("hex")}`;
  const total = BigInt(data.length);
  await call.send({ action: WriteAction.WRITE, ref, offset: 0n, total, data });
  await it.next();
  await call.send({ action: WriteAction.COMMIT, ref, offset: total, total, expected: digest });
  await it.next();
  call.end();
  await it.return?.();
}

/**
 * A GC pass as a client can time one: a synchronous Leases/Delete of an empty lease runs a whole
 * collection before it answers, in berthd as in containerd.
 */
let gcProbes = 0;
function timeGcPass(leases: Client<typeof Leases>): Promise<number> {
  return timeMedian(3, async () => {
    const id = `gc-probe-${gcProbes++}`;
    await leases.create({ id }, { namespace: NS });
    await leases.delete({ id, sync: true }, { namespace: NS });
  });
}

async function contentSection(name: DaemonName, d: Daemon): Promise<void> {
  const conn = new Connection(d.address);
  const content = conn.client(Content);
  const leases = conn.client(Leases);
  let have = 0;
  try {
    await leases.create({ id: "scale-hold" }, { namespace: NS });
    const seed = randomBytes(48);
    for (const size of SIZES.content) {
      await pool(size - have, async (i) => {
        const n = have + i;
        const data = Buffer.concat([seed, Buffer.from(`blob-${n}`)]);
        await writeBlob(content, data, `scale-${n}`, "scale-hold");
      });
      have = size;
      record(
        "content",
        "Content/List",
        size,
        name,
        await timeMedian(9, async () => {
          const n = await drain(content.list({}, { namespace: NS }));
          if (n < size) throw new Error(`${name}: Content/List returned ${n} blobs, want ${size}`);
        }),
      );
      record("content", "GC pass (Leases/Delete sync)", size, name, await timeGcPass(leases));
      log(`${name}: ${size} blobs listed and collected`);
    }
  } finally {
    conn.close();
  }
}

async function snapshotsSection(name: DaemonName, d: Daemon): Promise<void> {
  const conn = new Connection(d.address);
  const sn = conn.client(Snapshots);
  const leases = conn.client(Leases);
  let have = 0;
  try {
    await leases.create({ id: "scale-snap" }, { namespace: NS });
    for (const size of SIZES.snapshots) {
      await pool(size - have, async (i) => {
        await sn.prepare(
          { snapshotter: "overlayfs", key: `scale-${have + i}`, parent: "" },
          { namespace: NS, lease: "scale-snap" },
        );
      });
      have = size;
      record(
        "snapshots",
        "Snapshots/List",
        size,
        name,
        await timeMedian(9, async () => {
          const n = await drain(sn.list({ snapshotter: "overlayfs" }, { namespace: NS }));
          if (n < size) throw new Error(`${name}: Snapshots/List returned ${n}, want ${size}`);
        }),
      );
      // a collection reads every snapshot record too
      record("snapshots", "GC pass (Leases/Delete sync)", size, name, await timeGcPass(leases));
      log(`${name}: ${size} snapshots listed and collected`);
    }
  } finally {
    conn.close();
  }
}

async function restartSection(name: DaemonName, first: Daemon, ref: string): Promise<Daemon> {
  let d = first;
  ok(await ctr(d.address, ["-n", NS, "images", "pull", "--plain-http", ref], { timeoutMs: 120_000 }), "pull");
  let have = 0;
  for (const size of SIZES.restart) {
    await pool(
      size - have,
      async (i) => {
        const id = `task-${have + i}`;
        ok(
          await ctr(d.address, ["-n", NS, "run", "-d", "--null-io", ref, id, "busybox", "sleep", "3600"], {
            timeoutMs: 60_000,
          }),
          `ctr run ${id}`,
        );
      },
      4,
    );
    have = size;
    await d.kill9();
    const t0 = nowMs();
    d = await restartDaemon(d, { timeoutMs: 120_000 });
    const startup = nowMs() - t0;
    const conn = new Connection(d.address);
    try {
      const tasks = conn.client(Tasks);
      for (;;) {
        let running = 0;
        await pool(size, async (i) => {
          try {
            const r = await tasks.get({ containerId: `task-${i}` }, { namespace: NS, timeoutMs: 10_000 });
            if (r.process?.status === Status.RUNNING) running++;
          } catch {
            // not answering yet
          }
        });
        if (running === size) break;
        if (nowMs() - t0 > 300_000)
          throw new Error(`${name}: only ${running}/${size} tasks answered after 300 s`);
      }
    } finally {
      conn.close();
    }
    record("restart", "start-up (until Version answers)", size, name, startup);
    const recovered = nowMs() - t0;
    record("restart", "recovery (until every task answers)", size, name, recovered);
    record("restart", IDLE_ROW, size, name, await idleCpuMsPerSec(d.pid));
    record("restart", RSS_ROW, size, name, procStatus(d.pid, "VmRSS") / MiB);
    log(`${name}: restart with ${size} tasks: ${fmt(startup)} ms up, ${fmt(recovered)} ms recovered`);
  }
  return d;
}

async function criSection(
  name: DaemonName,
  fast: string | undefined,
  reg: Registry,
  tmp: string,
): Promise<void> {
  const images = await pushBenchImages(reg, 0);
  const dir = path.join(tmp, `cri-${name}`);
  mkdirSync(dir, { recursive: true });
  const net = writeNetwork(dir, `berthscale-${name}`, freeBridges(1)[0]!, freeSubnets(1)[0]!);
  const cfg = criConfig(reg, images, net);
  const dirs = tmpfsDirs(fast, name, "cri");
  const d =
    name === "containerd"
      ? await startContainerd({ config: cfg, disabledPlugins: [], ...dirs })
      : await startBerthd({ config: `version = 2\n\n${cfg}`, ...dirs });
  const cri = criClient(d.address);
  try {
    for (const image of [images.pause, images.workload])
      await cri.image.pullImage({ image: { image } }, { timeoutMs: 120_000 });
    let have = 0;
    for (const size of SIZES.cri) {
      await pool(
        size - have,
        async (i) => {
          const n = have + i;
          const config: MessageInitShape<typeof PodSandboxConfigSchema> = {
            metadata: { name: `scale-${n}`, uid: `uid-scale-${n}`, namespace: "bench", attempt: 0 },
            logDirectory: path.join(dir, "logs", `scale-${n}`),
            linux: { securityContext: { namespaceOptions: { network: NamespaceMode.NODE } } },
          };
          const pod = await cri.runtime.runPodSandbox({ config }, { timeoutMs: 120_000 });
          const c = await cri.runtime.createContainer(
            {
              podSandboxId: pod.podSandboxId,
              sandboxConfig: config,
              config: {
                metadata: { name: "app", attempt: 0 },
                image: { image: images.workload },
                logPath: "app.log",
                linux: { securityContext: { namespaceOptions: { network: NamespaceMode.NODE } } },
              },
            },
            { timeoutMs: 120_000 },
          );
          await cri.runtime.startContainer({ containerId: c.containerId }, { timeoutMs: 120_000 });
        },
        8,
      );
      have = size;
      record(
        "cri",
        "ListPodSandbox",
        size,
        name,
        await timeMedian(9, () => cri.runtime.listPodSandbox({}, { timeoutMs: 60_000 })),
      );
      record(
        "cri",
        "ListContainers",
        size,
        name,
        await timeMedian(9, () => cri.runtime.listContainers({}, { timeoutMs: 60_000 })),
      );
      record("cri", IDLE_ROW, size, name, await idleCpuMsPerSec(d.pid));
      record("cri", RSS_ROW, size, name, procStatus(d.pid, "VmRSS") / MiB);
      log(`${name}: ${size} pods listed`);
    }
  } finally {
    cri.close();
    killShimsOf(d.address);
    await d.cleanup();
    removeNetwork(net);
  }
}

// ---- main -----------------------------------------------------------------------------------

async function main(): Promise<void> {
  setChildSubreaper(true);
  const tmp = await makeTempDir("bench-scale");
  let fast: string | undefined;
  if (opt.tmpfs) {
    fast = path.join(tmp, "fast");
    mkdirSync(fast);
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=8g,mode=0711", "tmpfs", fast]);
  }
  const reg = await startRegistry();
  const t0 = nowMs();
  try {
    await pushImage(reg.url, "bench/busybox", "1", buildBusyboxImage());
    const ref = `${reg.host}/bench/busybox:1`;
    for (const [si, section] of CHOSEN.entries()) {
      const order = si % 2 === 0 ? WANTED : [...WANTED].reverse();
      for (const name of order) {
        log(`${section}: ${name}`);
        try {
          if (section === "cri") {
            await criSection(name, fast, reg, tmp);
            continue;
          }
          let d = await startPlain(name, fast, section);
          try {
            if (section === "containers") await containersSection(name, d);
            else if (section === "images") await imagesSection(name, d);
            else if (section === "content") await contentSection(name, d);
            else if (section === "snapshots") await snapshotsSection(name, d);
            else d = await restartSection(name, d, ref);
          } finally {
            killShimsOf(d.address);
            await d.cleanup();
          }
        } catch (err) {
          failures.push(`${section}/${name}: ${(err as Error).message.split("\n")[0]}`);
          log(`${section}/${name} failed: ${(err as Error).message}`);
        }
      }
    }
  } finally {
    await reg.cleanup();
    if (fast) execFileSync("umount", ["-l", fast]);
    await removeTempDir(tmp);
  }

  // ---- report: per row, the ms of each daemon and the ratio; per (section, what), the growth
  const header = ["section", "call", "size", ...WANTED.map((d) => `${d} ms`)];
  if (WANTED.length === 2) header.push("berthd/containerd");
  const out: string[][] = [];
  for (const r of rows) {
    const line = [r.section, r.what, String(r.size), ...WANTED.map((d) => fmt(r.ms[d] ?? Number.NaN))];
    if (WANTED.length === 2) line.push(fmtRatio(r.ms.berthd ?? Number.NaN, r.ms.containerd ?? Number.NaN));
    out.push(line);
  }
  console.log(
    `\nscale bench: ${opt.quick ? "quick sizes" : "full sizes"}, roots ${fast ? "on tmpfs" : "on disk"}, ${fmt((nowMs() - t0) / 1000)} s in all\n`,
  );
  console.log(renderTable(header, out));
  const growth: string[][] = [];
  for (const key of new Set(rows.map((r) => `${r.section}\u0000${r.what}`))) {
    const [section, what] = key.split("\u0000") as [Section, string];
    if (what === RSS_ROW) continue; // a base of tens of MiB: a ratio of sizes says nothing here
    const xs = rows.filter((r) => r.section === section && r.what === what && r.size > 0);
    if (xs.length < 2) continue;
    const lo = xs[0]!;
    const hi = xs[xs.length - 1]!;
    growth.push([
      `${section}: ${what}`,
      `${lo.size}→${hi.size}`,
      ...WANTED.map((d) => fmt((hi.ms[d] ?? Number.NaN) / (lo.ms[d] ?? Number.NaN) / (hi.size / lo.size))),
    ]);
  }
  if (growth.length > 0) {
    console.log("\ngrowth (time ratio / size ratio, largest vs smallest size; 1.0 = linear)\n");
    console.log(renderTable(["call", "sizes", ...WANTED], growth));
  }
  if (failures.length > 0) console.log(`\nfailures:\n  ${failures.join("\n  ")}`);
  if (opt.json) await writeFile(opt.json, JSON.stringify({ rows, failures }, null, 2));
  if (failures.length > 0) process.exitCode = 1;
}

await main();
