// Scale benchmark: how berthd's costs grow with the size of the node, next to the real containerd
// 1.6 in the same run. The list sections (containers, images, content, pulled, snapshots) fill
// both daemons and call them in turn, so that both are timed in the same seconds (a list of
// ~15 MB moved by a third from one few-second spell of this machine to the next; docs/performance.md,
// finding 69); so does the cri section. The restart section runs one daemon at a time (the
// other is stopped); daemon order alternates between sections.
//
//   containers  Containers/List (decoded, and as bytes), `ctr c ls` and a GC pass with 100, 1,000
//               and 5,000 container records (each with a ~4 KiB OCI spec, as `ctr c create`
//               writes one)
//   images      Images/List with 100 and 2,000 image records
//   content     Content/List and one GC pass (Leases/Delete of an empty lease, synchronous) with
//               10,000 and 50,000 small blobs, all held by one lease
//   pulled      a GC pass over images shaped as pulled ones, 200 and 1,000 of them: each a manifest
//               blob whose gc.ref.content labels name its config and 50 layers, the layers
//               labelled as a pull labels them (uncompressed digest, distribution source), and an
//               image record naming the manifest; nothing else holds them (10,200 and 51,000
//               blobs); and Images/Delete with a synchronous collection of one more such image
//               (written untimed before each call), which takes 52 blobs off the disk
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
// Every list is called twice untimed, then timed at least 9 times (more, up to 50, within 300 ms
// per daemon) at each size, on each daemon in turn where both run at once; the median is shown
// (`ctr c ls` and the GC passes at least 3 times). The "growth" column compares the largest size
// with the smallest: time ratio divided by size ratio, so 1.0 is linear and well above 1 is
// super-linear. berthd/containerd ≤ 1 means berthd is as fast or faster.
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

const SECTIONS = ["containers", "images", "content", "pulled", "snapshots", "restart", "cri"] as const;
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
    "usage: node dist/bench/scale.js [--quick] [--sections containers,images,content,pulled,snapshots,restart,cri]\n" +
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
  pulled: Q ? [40, 200] : [200, 1000],
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
 * What a call that needs untimed work before it (records to remove, say) returns: the ms of its
 * timed part alone.
 */
interface SelfTimed {
  timedMs: number;
}
const isSelfTimed = (r: unknown): r is SelfTimed =>
  typeof r === "object" && r !== null && typeof (r as SelfTimed).timedMs === "number";

/**
 * Medians per daemon of calls made on each in turn, the first one alternating: two untimed calls
 * each, then at least `reps` timed rounds, more (up to 50) while less than 300 ms per daemon has
 * passed. A call takes the machine's slow and fast spells with the other daemon's next to it.
 * A call that returns a SelfTimed counts its own timed part.
 */
async function timeMediansInTurn(
  reps: number,
  fns: Map<DaemonName, () => Promise<unknown>>,
): Promise<Map<DaemonName, number>> {
  const names = [...fns.keys()];
  for (const n of names) {
    await fns.get(n)!();
    await fns.get(n)!();
  }
  const xs = new Map(names.map((n) => [n, [] as number[]]));
  const start = nowMs();
  for (let i = 0; i < reps || (i < 50 && nowMs() - start < 300 * names.length); i++) {
    for (const n of i % 2 === 0 ? names : [...names].reverse()) {
      const t = nowMs();
      const r = await fns.get(n)!();
      xs.get(n)!.push(isSelfTimed(r) ? r.timedMs : nowMs() - t);
    }
  }
  return new Map(names.map((n) => [n, median(xs.get(n)!)]));
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

/**
 * A section whose daemons are filled side by side and called in turn: for one daemon, how to
 * add records up to a size, and the calls timed at each size.
 */
interface Filled {
  fill(from: number, to: number): Promise<void>;
  calls: { what: string; reps: number; call: (size: number) => Promise<unknown> }[];
  /** Checks after a size's calls (an answer that came fast with less in it must not count). */
  check?(size: number): void | Promise<void>;
  close(): void;
}

type ListSection = "containers" | "images" | "content" | "pulled" | "snapshots";

/** Every daemon wanted, started, filled and timed side by side (see timeMediansInTurn). */
async function sideBySide(
  section: ListSection,
  order: DaemonName[],
  fast: string | undefined,
  open: (name: DaemonName, d: Daemon) => Promise<Filled>,
): Promise<void> {
  log(`${section}: ${order.join(" and ")}`);
  const ds = new Map<DaemonName, Daemon>();
  const filled = new Map<DaemonName, Filled>();
  try {
    for (const name of order) ds.set(name, await startPlain(name, fast, section));
    for (const [name, d] of ds) filled.set(name, await open(name, d));
    const kinds = filled.values().next().value?.calls ?? [];
    let have = 0;
    for (const size of SIZES[section]) {
      for (const f of filled.values()) await f.fill(have, size);
      have = size;
      for (const [i, { what, reps }] of kinds.entries()) {
        const fns = new Map([...filled].map(([name, f]) => [name, () => f.calls[i]!.call(size)] as const));
        for (const [name, ms] of await timeMediansInTurn(reps, fns)) record(section, what, size, name, ms);
      }
      for (const f of filled.values()) await f.check?.(size);
      log(`${order.join(" and ")}: ${section} at ${size} timed`);
    }
  } catch (err) {
    failures.push(`${section}: ${(err as Error).message.split("\n")[0]}`);
    log(`${section} failed: ${(err as Error).message}`);
  } finally {
    for (const f of filled.values()) f.close();
    for (const d of ds.values()) await d.cleanup();
  }
}

/**
 * A GC pass as a client can time one: a synchronous Leases/Delete of an empty lease runs a whole
 * collection before it answers, in berthd as in containerd.
 */
let gcProbes = 0;
function gcPass(leases: Client<typeof Leases>): { what: string; reps: number; call: () => Promise<unknown> } {
  return {
    what: "GC pass (Leases/Delete sync)",
    reps: 3,
    call: async () => {
      const id = `gc-probe-${gcProbes++}`;
      await leases.create({ id }, { namespace: NS });
      await leases.delete({ id, sync: true }, { namespace: NS });
    },
  };
}

async function containersSection(name: DaemonName, d: Daemon): Promise<Filled> {
  const conn = new Connection(d.address);
  const c = conn.client(Containers);
  const raw = rawContainersList(d.address);
  let last: Buffer | undefined;
  return {
    fill: (from, to) =>
      pool(to - from, async (i) => {
        const id = `scale-${from + i}`;
        await c.create({ container: benchContainer(id, SPEC, { "bench.scale": "1" }) }, { namespace: NS });
      }),
    calls: [
      { what: "Containers/List", reps: 9, call: () => c.list({}, { namespace: NS }) },
      {
        what: "Containers/List, bytes",
        reps: 9,
        call: async () => {
          last = await raw.list();
        },
      },
      {
        what: "ctr c ls",
        reps: 3,
        call: async () => ok(await ctr(d.address, ["-n", NS, "c", "ls", "-q"]), "ctr c ls"),
      },
      // every container is a root of a collection
      gcPass(conn.client(Leases)),
    ],
    check(size) {
      const got = last ? fromBinary(ListContainersResponseSchema, last).containers.length : 0;
      if (got !== size)
        throw new Error(`${name}: Containers/List as bytes held ${got} containers, want ${size}`);
      last = undefined;
    },
    close() {
      raw.close();
      conn.close();
    },
  };
}

async function imagesSection(_name: DaemonName, d: Daemon): Promise<Filled> {
  const conn = new Connection(d.address);
  const c = conn.client(Images);
  return {
    fill: (from, to) =>
      pool(to - from, async (i) => {
        const n = from + i;
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
      }),
    calls: [{ what: "Images/List", reps: 9, call: () => c.list({}, { namespace: NS }) }],
    close: () => conn.close(),
  };
}

/** Writes one blob under a lease, with labels set at its commit; its digest. */
async function writeBlob(
  content: Client<typeof Content>,
  data: Buffer,
  ref: string,
  lease: string,
  labels: Record<string, string> = {},
): Promise<string> {
  const call = content.write({ namespace: NS, lease });
  const it = call.responses[Symbol.asyncIterator]();
  const digest = `sha256:${createHash("sha256").update(data).digest("hex")}`;
  const total = BigInt(data.length);
  await call.send({ action: WriteAction.WRITE, ref, offset: 0n, total, data });
  await it.next();
  await call.send({ action: WriteAction.COMMIT, ref, offset: total, total, expected: digest, labels });
  await it.next();
  call.end();
  await it.return?.();
  return digest;
}

async function contentSection(name: DaemonName, d: Daemon): Promise<Filled> {
  const conn = new Connection(d.address);
  const content = conn.client(Content);
  const leases = conn.client(Leases);
  await leases.create({ id: "scale-hold" }, { namespace: NS });
  const seed = randomBytes(48);
  return {
    fill: (from, to) =>
      pool(to - from, async (i) => {
        const n = from + i;
        const data = Buffer.concat([seed, Buffer.from(`blob-${n}`)]);
        await writeBlob(content, data, `scale-${n}`, "scale-hold");
      }),
    calls: [
      {
        what: "Content/List",
        reps: 9,
        call: async (size) => {
          const n = await drain(content.list({}, { namespace: NS }));
          if (n < size) throw new Error(`${name}: Content/List returned ${n} blobs, want ${size}`);
        },
      },
      gcPass(leases),
    ],
    close: () => conn.close(),
  };
}

const PULLED_LAYERS = 50;

/**
 * Images as a pull leaves them, for the GC: what holds the blobs is each image's record, through
 * the labels of its manifest. Written under a lease that is deleted once each size is filled, so
 * that the timed passes find every blob held by an image alone. Then the call an operator makes
 * on such a node, `crictl rmi` or `ctr i rm --sync`: one more image of the same shape, written
 * untimed, then removed with a synchronous collection, which takes its 52 blobs off the disk
 * among all the others.
 */
async function pulledSection(name: DaemonName, d: Daemon): Promise<Filled> {
  const conn = new Connection(d.address);
  const content = conn.client(Content);
  const images = conn.client(Images);
  const leases = conn.client(Leases);
  const seed = randomBytes(48);
  const blob = (what: string) => Buffer.concat([seed, Buffer.from(what)]);
  let fills = 0;
  /** One image's blobs and record; `n` keeps its blobs apart from every other image's. */
  const writeImage = async (n: string, lease: string, image: string) => {
    const refs: Record<string, string> = {};
    refs["containerd.io/gc.ref.content.config"] = await writeBlob(
      content,
      blob(`config-${n}`),
      `scale-config-${n}`,
      lease,
    );
    for (let l = 0; l < PULLED_LAYERS; l++) {
      const layer = blob(`layer-${n}-${l}`);
      refs[`containerd.io/gc.ref.content.l.${l}`] = await writeBlob(
        content,
        layer,
        `scale-l-${n}-${l}`,
        lease,
        {
          "containerd.io/uncompressed": `sha256:${createHash("sha256").update(`tar-${n}-${l}`).digest("hex")}`,
          "containerd.io/distribution.source.bench.invalid": "scale/pulled",
        },
      );
    }
    const manifest = blob(`manifest-${n}`);
    const digest = await writeBlob(content, manifest, `scale-m-${n}`, lease, refs);
    await images.create(
      {
        image: {
          name: image,
          target: {
            mediaType: "application/vnd.oci.image.manifest.v1+json",
            digest,
            size: BigInt(manifest.length),
          },
        },
      },
      { namespace: NS },
    );
  };
  let victims = 0;
  return {
    fill: async (from, to) => {
      const lease = `scale-pull-${fills++}`;
      await leases.create({ id: lease }, { namespace: NS });
      await pool(to - from, (i) =>
        writeImage(String(from + i), lease, `bench.invalid/scale/pulled-${from + i}:latest`),
      );
      await leases.delete({ id: lease, sync: true }, { namespace: NS });
    },
    calls: [
      gcPass(leases),
      {
        what: "Images/Delete sync, one image of 52 blobs",
        reps: 3,
        call: async (): Promise<SelfTimed> => {
          const k = victims++;
          const lease = `scale-victim-${k}`;
          const image = `bench.invalid/scale/victim-${k}:latest`;
          await leases.create({ id: lease }, { namespace: NS });
          await writeImage(`victim-${k}`, lease, image);
          await leases.delete({ id: lease, sync: true }, { namespace: NS });
          const t = nowMs();
          await images.delete({ name: image, sync: true }, { namespace: NS });
          return { timedMs: nowMs() - t };
        },
      },
    ],
    async check(size) {
      // every blob must still be there, held by its image, and every removed image's blobs gone:
      // a pass that took the others would be fast, a removal that left its blobs faster
      const n = await drain(content.list({}, { namespace: NS }));
      const want = size * (PULLED_LAYERS + 2);
      if (n !== want) throw new Error(`${name}: ${n} blobs after the GC passes and removals, want ${want}`);
    },
    close: () => conn.close(),
  };
}

async function snapshotsSection(name: DaemonName, d: Daemon): Promise<Filled> {
  const conn = new Connection(d.address);
  const sn = conn.client(Snapshots);
  const leases = conn.client(Leases);
  await leases.create({ id: "scale-snap" }, { namespace: NS });
  return {
    fill: (from, to) =>
      pool(to - from, async (i) => {
        await sn.prepare(
          { snapshotter: "overlayfs", key: `scale-${from + i}`, parent: "" },
          { namespace: NS, lease: "scale-snap" },
        );
      }),
    calls: [
      {
        what: "Snapshots/List",
        reps: 9,
        call: async (size) => {
          const n = await drain(sn.list({ snapshotter: "overlayfs" }, { namespace: NS }));
          if (n < size) throw new Error(`${name}: Snapshots/List returned ${n}, want ${size}`);
        },
      },
      // a collection reads every snapshot record too
      gcPass(leases),
    ],
    close: () => conn.close(),
  };
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

/** A daemon with the CRI plugin, its pod network and the images pulled, ready to run pods. */
interface CriNode {
  name: DaemonName;
  d: Daemon;
  cri: ReturnType<typeof criClient>;
  /** Pods running, each with one started container. */
  pods: number;
  /** Runs more pods until `size` are running. */
  fillTo: (size: number) => Promise<void>;
  close: () => Promise<void>;
}

async function startCriNode(
  name: DaemonName,
  fast: string | undefined,
  reg: Registry,
  tmp: string,
  images: Awaited<ReturnType<typeof pushBenchImages>>,
): Promise<CriNode> {
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
  const close = async () => {
    cri.close();
    killShimsOf(d.address);
    await d.cleanup();
    removeNetwork(net);
  };
  try {
    for (const image of [images.pause, images.workload])
      await cri.image.pullImage({ image: { image } }, { timeoutMs: 120_000 });
  } catch (err) {
    await close();
    throw err;
  }
  const logs = path.join(dir, "logs");
  const workload = images.workload;
  const node: CriNode = {
    name,
    d,
    cri,
    pods: 0,
    close,
    fillTo: async (size: number) => {
      const have = node.pods;
      await pool(
        size - have,
        async (i) => {
          const n = have + i;
          const config: MessageInitShape<typeof PodSandboxConfigSchema> = {
            metadata: { name: `scale-${n}`, uid: `uid-scale-${n}`, namespace: "bench", attempt: 0 },
            logDirectory: path.join(logs, `scale-${n}`),
            linux: { securityContext: { namespaceOptions: { network: NamespaceMode.NODE } } },
          };
          const pod = await cri.runtime.runPodSandbox({ config }, { timeoutMs: 120_000 });
          const c = await cri.runtime.createContainer(
            {
              podSandboxId: pod.podSandboxId,
              sandboxConfig: config,
              config: {
                metadata: { name: "app", attempt: 0 },
                image: { image: workload },
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
      node.pods = size;
    },
  };
  return node;
}

const CRI_LISTS = [
  { what: "ListPodSandbox", call: (n: CriNode) => n.cri.runtime.listPodSandbox({}, { timeoutMs: 60_000 }) },
  { what: "ListContainers", call: (n: CriNode) => n.cri.runtime.listContainers({}, { timeoutMs: 60_000 }) },
];

/** The list rows of `nodes` at their size, called in turn, then each one's idle rows. */
async function timeCriLists(nodes: CriNode[], size: number): Promise<void> {
  for (const { what, call } of CRI_LISTS) {
    const fns = new Map(nodes.map((n) => [n.name, () => call(n)] as const));
    for (const [name, ms] of await timeMediansInTurn(9, fns)) record("cri", what, size, name, ms);
  }
  for (const n of nodes) {
    record("cri", IDLE_ROW, size, n.name, await idleCpuMsPerSec(n.d.pid));
    record("cri", RSS_ROW, size, n.name, procStatus(n.d.pid, "VmRSS") / MiB);
    log(`${n.name}: ${size} pods listed`);
  }
}

/**
 * The CRI rows: both daemons run their pods at once and the lists are called in turn, as in the
 * other list sections. Timed one daemon after the other, the lists at 500 pods moved from 0.39 to
 * 1.47 of containerd's between runs (answers of a few ms, a slow spell of the machine falling on
 * one daemon). 500 pods on each is ~1,000 shims, ~6 GiB of memory in all.
 */
async function criSection(order: DaemonName[], fast: string | undefined, reg: Registry, tmp: string) {
  log(`cri: ${order.join(" and ")}`);
  const images = await pushBenchImages(reg, 0);
  const nodes: CriNode[] = [];
  try {
    for (const name of order) nodes.push(await startCriNode(name, fast, reg, tmp, images));
    for (const size of SIZES.cri) {
      for (const n of nodes) await n.fillTo(size);
      await timeCriLists(nodes, size);
    }
  } catch (err) {
    failures.push(`cri: ${(err as Error).message.split("\n")[0]}`);
    log(`cri failed: ${(err as Error).message}`);
  } finally {
    for (const n of nodes) await n.close();
  }
}

// ---- main -----------------------------------------------------------------------------------

const LIST_SECTIONS: Partial<Record<Section, (name: DaemonName, d: Daemon) => Promise<Filled>>> = {
  containers: containersSection,
  images: imagesSection,
  content: contentSection,
  pulled: pulledSection,
  snapshots: snapshotsSection,
};

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
      const opener = LIST_SECTIONS[section as ListSection];
      if (opener) {
        await sideBySide(section as ListSection, order, fast, opener);
        continue;
      }
      if (section === "cri") {
        await criSection(order, fast, reg, tmp);
        continue;
      }
      for (const name of order) {
        log(`${section}: ${name}`);
        try {
          let d = await startPlain(name, fast, section);
          try {
            d = await restartSection(name, d, ref);
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
