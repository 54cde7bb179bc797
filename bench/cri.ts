// CRI benchmark: the calls a kubelet makes, against berthd and the real containerd 1.6 (Debian's
// /usr/bin/containerd with its CRI plugin enabled) in the same run, with the same CRI config, the
// same CNI conflist (bridge + host-local + portmap + loopback, one bench-owned bridge and 10.x /24
// per daemon) and the same images from a local docker-registry (bench/cri-env.ts).
//
// Per concurrency level (default 1 and 8; each daemon in turn, the first one alternating), N pods
// (default 50) go through the lifecycle phase by phase, each phase's N calls issued by that many
// workers over one connection (as the kubelet has one):
//
//   RunPodSandbox → CreateContainer → StartContainer → ListPodSandbox / ListContainers (repeated,
//   with all N pods and containers running) → StopContainer (timeout 10 s; the workload exits on
//   SIGTERM) → RemoveContainer → StopPodSandbox → RemovePodSandbox
//
// The lists are timed twice: decoded, as a kubelet gets them, and as bytes (", bytes" rows). Both
// daemons' answers are the same size, so the decoding in this process costs the same for either;
// the bytes rows time what differs between the daemons.
//
// then PullImage of M distinct ~1 MB images (default 24), each removed again after the level so
// the next level pulls cold too. Shown: median and p95 per call and level, the berthd/containerd
// ratio, each daemon's peak RSS (VmHWM), RSS at the end and CPU seconds (utime+stime) over all
// measured work, and its CPU per pull over the PullImage phases alone (at every level: the
// removals between them are not counted). A daemon that fails (not started, CRI not served,
// calls failing) gets "—" and its failures are listed; the other daemon's rows still run.
//
//   node dist/bench/cri.js [--quick] [--pods N] [--pulls M] [--list-reps R] [--concurrency 1,8]
//                          [--reps K] [--only containerd|berthd] [--tmpfs] [--json FILE]
//
// --reps K repeats every level K times (samples pooled, daemon order alternating): on a loaded
// machine single runs swing by 2x either way.
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdirSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { fromBinary } from "@bufbuild/protobuf";
import {
  type ContainerConfig,
  ContainerState,
  ListContainersResponseSchema,
  ListPodSandboxResponseSchema,
  type PodSandboxConfig,
} from "../src/gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";
import { type CriClient, criClient } from "../test/helpers/cri.js";
import { type Daemon, startBerthd, startContainerd } from "../test/helpers/daemons.js";
import { shimsOf } from "../test/helpers/procs.js";
import { type Registry, startRegistry } from "../test/helpers/registry.js";
import { makeTempDir, mountsUnder, removeTempDir } from "../test/helpers/tmp.js";
import {
  type BenchImages,
  type BenchNetwork,
  criConfig,
  freeBridges,
  freeSubnets,
  ipamLeases,
  iptablesChains,
  pushBenchImages,
  removeNetwork,
  writeNetwork,
} from "./cri-env.js";
import {
  cpuSeconds,
  DAEMONS,
  type DaemonName,
  fmt,
  fmtBytes,
  fmtRatio,
  median,
  nowMs,
  p95,
  procStatus,
  renderTable,
} from "./lib.js";

const { values: opt } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    pods: { type: "string" },
    pulls: { type: "string" },
    "list-reps": { type: "string" },
    concurrency: { type: "string", default: "1,8" },
    reps: { type: "string" },
    only: { type: "string" },
    tmpfs: { type: "boolean", default: false },
    json: { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  },
});

if (opt.help) {
  console.log(
    "usage: node dist/bench/cri.js [--quick] [--pods N] [--pulls M] [--list-reps R] [--concurrency 1,8]\n" +
      "                              [--reps K] [--only containerd|berthd] [--tmpfs] [--json FILE]\n" +
      "  --quick   16 pods, 8 pulls, 10 list calls per level (default 50, 24, 100)\n" +
      "  --reps K  run every concurrency level K times, samples pooled (default 1)\n" +
      "  --tmpfs   daemon roots and states on a tmpfs mounted for the run",
  );
  process.exit(0);
}

const posInt = (v: string | undefined, dflt: number, what: string) => {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${what} wants a positive integer, got ${v}`);
  return n;
};
const PODS = posInt(opt.pods, opt.quick ? 16 : 50, "--pods");
const PULLS = posInt(opt.pulls, opt.quick ? 8 : 24, "--pulls");
const LIST_REPS = posInt(opt["list-reps"], opt.quick ? 10 : 100, "--list-reps");
const LIST_WARM_UP = 10;

/** A full GC of this (the client's) process: --expose-gc set at run time, gc taken from a fresh context. */
const collectGarbage: () => void = (() => {
  setFlagsFromString("--expose-gc");
  return runInNewContext("gc") as () => void;
})();
const LEVELS = opt.concurrency.split(",").map((c) => posInt(c, 1, "--concurrency"));
const REPS = posInt(opt.reps, 1, "--reps");
if (opt.only !== undefined && !DAEMONS.includes(opt.only as DaemonName))
  throw new Error(`--only wants containerd or berthd, got ${opt.only}`);
const WANTED: DaemonName[] = opt.only ? [opt.only as DaemonName] : [...DAEMONS];

/** Deadline of one CRI call; StopContainer's own timeout (10 s) fits well inside. */
const CALL_TIMEOUT_MS = 60_000;
const PULL_TIMEOUT_MS = 120_000;
const STOP_TIMEOUT_S = 10n;
/** A phase gives up once this many calls failed and none succeeded (a daemon that cannot serve)… */
const GIVE_UP_AFTER = 4;
/** …or after this many failures in a row (a daemon that died or hangs midway). */
const GIVE_UP_IN_A_ROW = 8;
/** The whole run stops measuring after this (bounded even when a daemon hangs on every call). */
const RUN_BUDGET_MS = (opt.quick ? 15 : 45) * 60_000;

const CALLS = [
  "RunPodSandbox",
  "CreateContainer",
  "StartContainer",
  "ListPodSandbox",
  "ListContainers",
  "ListPodSandbox, bytes",
  "ListContainers, bytes",
  "StopContainer",
  "RemoveContainer",
  "StopPodSandbox",
  "RemovePodSandbox",
  "PullImage",
] as const;
type Call = (typeof CALLS)[number];

const log = (msg: string) => process.stderr.write(`[bench] ${msg}\n`);
const firstLine = (e: unknown) => String((e as Error)?.message ?? e).split("\n")[0]!;
const runStart = nowMs();

// ------------------------------------------------------------------------------------------------
// Results

interface CallStats {
  ms: number[];
  errors: string[];
}
interface Usage {
  peakRss: number;
  endRss: number;
  cpu: number;
  /** CPU during the PullImage phases only (not the removals after them), and how many pulls. */
  pullCpu: number;
  pulls: number;
}

const stats = new Map<string, CallStats>(); // `${daemon}/${level}/${call}`
const usage: Partial<Record<DaemonName, Usage>> = {};
const failures: Record<DaemonName, string[]> = { containerd: [], berthd: [] };
const leftovers: string[] = [];

function statsOf(d: DaemonName, level: number, call: Call): CallStats {
  const k = `${d}/${level}/${call}`;
  let s = stats.get(k);
  if (!s) {
    s = { ms: [], errors: [] };
    stats.set(k, s);
  }
  return s;
}

/**
 * Runs `fn` on each item with `level` workers, timing every call. Returns each item's result
 * (undefined where the call failed or was skipped). Gives up on the rest after GIVE_UP_AFTER
 * failures without a success, or when the run's budget is spent.
 */
async function phase<T, R>(
  d: DaemonName,
  level: number,
  call: Call,
  items: readonly T[],
  fn: (item: T) => Promise<R>,
): Promise<(R | undefined)[]> {
  const s = statsOf(d, level, call);
  const out = new Array<R | undefined>(items.length).fill(undefined);
  let next = 0;
  let ok = 0;
  let failed = 0;
  let inARow = 0;
  let skipped = 0;
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= items.length) return;
      if (
        (failed >= GIVE_UP_AFTER && ok === 0) ||
        inARow >= GIVE_UP_IN_A_ROW ||
        nowMs() - runStart > RUN_BUDGET_MS
      ) {
        skipped++;
        continue;
      }
      const t = nowMs();
      try {
        out[i] = await fn(items[i]!);
        s.ms.push(nowMs() - t);
        ok++;
        inARow = 0;
      } catch (err) {
        failed++;
        inARow++;
        s.errors.push(firstLine(err));
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(level, items.length) }, worker));
  if (skipped > 0) s.errors.push(`${skipped} calls skipped after repeated failures or the run budget`);
  if (s.errors.length > 0 && failed > 0)
    log(`${d} c=${level} ${call}: ${failed} of ${items.length} failed, first: ${s.errors[0]}`);
  return out;
}

// ------------------------------------------------------------------------------------------------
// One daemon under test

interface Subject {
  name: DaemonName;
  daemon: Daemon;
  cri: CriClient;
  net: BenchNetwork;
  dir: string;
  logDir: string;
  /** Set once the daemon answered CRI calls (a daemon that never did has no pods to clean up). */
  served: boolean;
}

const call = { timeoutMs: CALL_TIMEOUT_MS };

/** Runs a setup step; its failure names the step (the report shows what failed where). */
async function step<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw new Error(`${what}: ${(err as Error).message}`);
  }
}

function podConfig(s: Subject, name: string): PodSandboxConfig {
  const uid = randomUUID();
  const logDirectory = path.join(s.logDir, `bench_${name}_${uid}`);
  // the kubelet makes the pod's and the container's log directories
  mkdirSync(path.join(logDirectory, "work"), { recursive: true });
  return {
    metadata: { name, uid, namespace: "bench", attempt: 0 },
    hostname: name,
    logDirectory,
    labels: {
      "io.kubernetes.pod.name": name,
      "io.kubernetes.pod.namespace": "bench",
      "io.kubernetes.pod.uid": uid,
    },
    annotations: { "kubernetes.io/config.source": "api" },
    linux: { securityContext: { namespaceOptions: {} } },
  } as unknown as PodSandboxConfig;
}

function containerConfig(images: BenchImages, pod: PodSandboxConfig): ContainerConfig {
  return {
    metadata: { name: "work", attempt: 0 },
    image: { image: images.workload },
    logPath: "work/0.log",
    labels: {
      "io.kubernetes.container.name": "work",
      "io.kubernetes.pod.name": pod.metadata!.name,
      "io.kubernetes.pod.namespace": "bench",
    },
    linux: { resources: {}, securityContext: { namespaceOptions: {} } },
  } as unknown as ContainerConfig;
}

/** Waits for RuntimeReady and NetworkReady (CNI config loaded), or throws what Status says. */
async function waitCriReady(cri: CriClient, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  let last = "";
  while (Date.now() < end) {
    const st = await cri.runtime.status({}, { timeoutMs: 5000 });
    const conds = st.status?.conditions ?? [];
    const notReady = conds.filter((c) => !c.status);
    if (conds.length > 0 && notReady.length === 0) return;
    last = notReady.map((c) => `${c.type}=false (${c.reason}: ${c.message})`).join("; ") || "no conditions";
    await sleep(200);
  }
  throw new Error(`CRI not ready after ${timeoutMs} ms: ${last}`);
}

async function startSubject(
  name: DaemonName,
  tmp: string,
  fast: string | undefined,
  reg: Registry,
  images: BenchImages,
  subnet: string,
  bridge: string,
): Promise<Subject> {
  const dir = path.join(tmp, name);
  mkdirSync(dir);
  const net = writeNetwork(dir, `berthbench-${name}`, bridge, subnet);
  const cfg = criConfig(reg, images, net);
  const dirs = fast ? { root: path.join(fast, name, "root"), state: path.join(fast, name, "state") } : {};
  const daemon =
    name === "containerd"
      ? await startContainerd({ config: cfg, disabledPlugins: [], ...dirs })
      : await startBerthd({ config: `version = 2\n\n${cfg}`, ...dirs });
  const cri = criClient(daemon.address);
  const s: Subject = { name, daemon, cri, net, dir, logDir: path.join(dir, "pod-logs"), served: false };
  try {
    const v = await step("RuntimeService/Version", () =>
      cri.runtime.version({ version: "v1" }, { timeoutMs: 10_000 }),
    );
    s.served = true;
    log(`${name}: pid ${daemon.pid}, ${v.runtimeName} ${v.runtimeVersion}, CRI ${v.runtimeApiVersion}`);
    await step("RuntimeService/Status", () => waitCriReady(cri));
    // the images every pod uses, pulled before anything is measured
    for (const image of [images.pause, images.workload])
      await step(`ImageService/PullImage ${image}`, () =>
        cri.image.pullImage({ image: { image } }, { timeoutMs: PULL_TIMEOUT_MS }),
      );
  } catch (err) {
    await stopSubject(s);
    throw err;
  }
  return s;
}

/** Stops and removes every pod the daemon still has (bounded), then the daemon, then the bridge. */
async function stopSubject(s: Subject): Promise<void> {
  try {
    if (s.served) await removeAllPods(s);
  } catch (err) {
    leftovers.push(`${s.name}: listing pods at cleanup: ${firstLine(err)}`);
  }
  s.cri.close();
  // with every pod removed, nothing (netns files, /dev/shm) stays mounted in the CRI state dir
  const criState = path.join(s.daemon.state, "io.containerd.grpc.v1.cri");
  // (the netns directory itself may be a bind mount of its own, as iproute2 makes /run/netns)
  const mounts = mountsUnder(criState).filter((m) => m !== path.join(criState, "netns"));
  if (mounts.length > 0)
    leftovers.push(
      `${s.name}: ${mounts.length} mounts left under ${criState}: ${mounts.slice(0, 3).join(", ")}`,
    );
  const shims = shimsOf(s.daemon.address);
  if (shims.length > 0)
    leftovers.push(`${s.name}: ${shims.length} shims running after every pod was removed`);
  await s.daemon.cleanup();
  for (const f of removeNetwork(s.net)) leftovers.push(`${s.name}: ${f}`);
}

async function removeAllPods(s: Subject): Promise<void> {
  const pods = (await s.cri.runtime.listPodSandbox({}, call)).items;
  if (pods.length > 0) log(`${s.name}: removing ${pods.length} pods left over`);
  for (const p of pods) {
    await s.cri.runtime.stopPodSandbox({ podSandboxId: p.id }, call).catch(() => {});
    await s.cri.runtime
      .removePodSandbox({ podSandboxId: p.id }, call)
      .catch((e) => leftovers.push(`${s.name}: pod ${p.id.slice(0, 12)} not removed: ${firstLine(e)}`));
  }
}

// ------------------------------------------------------------------------------------------------
// The measured work

async function podLifecycle(s: Subject, images: BenchImages, level: number, rep: number): Promise<void> {
  const rt = s.cri.runtime;
  const d = s.name;
  const configs = Array.from({ length: PODS }, (_, i) => podConfig(s, `r${rep}-c${level}-pod-${i}`));
  const podIds = await phase(d, level, "RunPodSandbox", configs, async (config) => {
    const r = await rt.runPodSandbox({ config }, call);
    return r.podSandboxId;
  });
  const live = configs.map((config, i) => ({ config, pod: podIds[i], ctr: undefined as string | undefined }));
  const withPod = live.filter((x) => x.pod !== undefined);
  const ctrIds = await phase(d, level, "CreateContainer", withPod, async (x) => {
    const r = await rt.createContainer(
      { podSandboxId: x.pod!, config: containerConfig(images, x.config), sandboxConfig: x.config },
      call,
    );
    return r.containerId;
  });
  withPod.forEach((x, i) => {
    x.ctr = ctrIds[i];
  });
  const created = withPod.filter((x) => x.ctr !== undefined);
  await phase(d, level, "StartContainer", created, (x) => rt.startContainer({ containerId: x.ctr! }, call));

  // Listing with every pod and container in place; the counts are checked so a daemon that
  // answers fast with nothing in it does not look good.
  const reps = Array.from({ length: LIST_REPS }, (_, i) => i);
  // The lists' times are mostly this process decoding 50 items: its JIT state and the garbage
  // left by the phases before would otherwise decide the row. Both daemons get the same start:
  // a few untimed calls, then a full collection of this process's heap.
  for (let i = 0; i < LIST_WARM_UP; i++) {
    await rt.listPodSandbox({}, call);
    await rt.listContainers({}, call);
  }
  collectGarbage();
  await phase(d, level, "ListPodSandbox", reps, async () => {
    const n = (await rt.listPodSandbox({}, call)).items.length;
    if (n < withPod.length) throw new Error(`ListPodSandbox returned ${n} pods, want ${withPod.length}`);
  });
  await phase(d, level, "ListContainers", reps, async () => {
    const n = (await rt.listContainers({}, call)).containers.length;
    if (n < created.length)
      throw new Error(`ListContainers returned ${n} containers, want ${created.length}`);
  });
  // The same answers as bytes, undecoded: both daemons' answers are the same size, so decoding
  // costs this process the same for either; these rows time what differs, the daemons.
  for (const [row, method, schema, want] of [
    ["ListPodSandbox, bytes", "ListPodSandbox", ListPodSandboxResponseSchema, withPod.length],
    ["ListContainers, bytes", "ListContainers", ListContainersResponseSchema, created.length],
  ] as const) {
    collectGarbage();
    const answers: Buffer[] = [];
    await phase(d, level, row, reps, async () => {
      const r = await s.cri.raw(`/runtime.v1.RuntimeService/${method}`);
      if (r.code !== 0 || !r.response) throw new Error(`${method}: status ${r.code} ${r.details}`);
      answers.push(r.response);
    });
    // a daemon answering fast with nothing in it must not look good: count the items of a few
    for (const a of answers.slice(0, 3)) {
      const m = fromBinary(schema, a) as { items?: unknown[]; containers?: unknown[] };
      const n = (m.items ?? m.containers ?? []).length;
      if (n < want) throw new Error(`${method} returned ${n} items, want ${want}`);
    }
  }

  await phase(d, level, "StopContainer", created, (x) =>
    rt.stopContainer({ containerId: x.ctr!, timeout: STOP_TIMEOUT_S }, call),
  );
  await phase(d, level, "RemoveContainer", created, (x) => rt.removeContainer({ containerId: x.ctr! }, call));
  await phase(d, level, "StopPodSandbox", withPod, (x) => rt.stopPodSandbox({ podSandboxId: x.pod! }, call));
  await phase(d, level, "RemovePodSandbox", withPod, (x) =>
    rt.removePodSandbox({ podSandboxId: x.pod! }, call),
  );
  // whatever a failed call left behind goes before the next level
  await removeAllPods(s);
  const leases = ipamLeases(s.net);
  if (leases.length > 0)
    failures[d].push(`c=${level}: ${leases.length} IPAM leases left after RemovePodSandbox`);
}

async function pullImages(s: Subject, images: BenchImages, level: number): Promise<void> {
  const img = s.cri.image;
  const cpu0 = cpuSeconds(s.daemon.pid);
  await phase(s.name, level, "PullImage", images.pulls, (image) =>
    img.pullImage({ image: { image } }, { timeoutMs: PULL_TIMEOUT_MS }),
  );
  const u = usageOf(s.name);
  u.pullCpu += cpuSeconds(s.daemon.pid) - cpu0;
  u.pulls += images.pulls.length;
  // cold again for the next level (CRI removes with a synchronous GC)
  for (const image of images.pulls)
    await img
      .removeImage({ image: { image } }, call)
      .catch((e) => failures[s.name].push(`RemoveImage ${image}: ${firstLine(e)}`));
}

async function measure(s: Subject, images: BenchImages, level: number, rep: number): Promise<void> {
  const pid = s.daemon.pid;
  const cpu0 = cpuSeconds(pid);
  log(`${s.name}: c=${level}${REPS > 1 ? ` rep ${rep + 1}/${REPS}` : ""}: ${PODS} pods, ${PULLS} pulls`);
  const t = nowMs();
  await podLifecycle(s, images, level, rep);
  await pullImages(s, images, level);
  log(`${s.name}: c=${level} done in ${fmt((nowMs() - t) / 1000)} s`);
  const u = usageOf(s.name);
  u.cpu += cpuSeconds(pid) - cpu0;
  u.peakRss = procStatus(pid, "VmHWM");
  u.endRss = procStatus(pid, "VmRSS");
}

function usageOf(d: DaemonName): Usage {
  let u = usage[d];
  if (!u) {
    u = { peakRss: 0, endRss: 0, cpu: 0, pullCpu: 0, pulls: 0 };
    usage[d] = u;
  }
  return u;
}

/** One pod and container through the whole cycle, untimed (first-use costs out of the way). */
async function warmUp(s: Subject, images: BenchImages): Promise<void> {
  const rt = s.cri.runtime;
  const config = podConfig(s, "warm-up");
  const { podSandboxId } = await step("warm-up RunPodSandbox", () => rt.runPodSandbox({ config }, call));
  const { containerId } = await step("warm-up CreateContainer", () =>
    rt.createContainer(
      { podSandboxId, config: containerConfig(images, config), sandboxConfig: config },
      call,
    ),
  );
  await step("warm-up StartContainer", () => rt.startContainer({ containerId }, call));
  // the same network on both sides: the pod got its address from the bench's conflist
  const st = await step("warm-up PodSandboxStatus", () => rt.podSandboxStatus({ podSandboxId }, call));
  const ip = st.status?.network?.ip ?? "";
  const prefix = s.net.subnet.replace(/0\/24$/, "");
  if (!ip.startsWith(prefix))
    throw new Error(`warm-up pod has IP ${JSON.stringify(ip)}, want one in ${s.net.subnet}`);
  const cs = await step("warm-up ContainerStatus", () => rt.containerStatus({ containerId }, call));
  if (cs.status?.state !== ContainerState.CONTAINER_RUNNING)
    throw new Error(`warm-up container is ${ContainerState[cs.status?.state ?? 0]}, want CONTAINER_RUNNING`);
  await step("warm-up StopContainer", () => rt.stopContainer({ containerId, timeout: STOP_TIMEOUT_S }, call));
  await step("warm-up RemoveContainer", () => rt.removeContainer({ containerId }, call));
  await step("warm-up StopPodSandbox", () => rt.stopPodSandbox({ podSandboxId }, call));
  await step("warm-up RemovePodSandbox", () => rt.removePodSandbox({ podSandboxId }, call));
}

// ------------------------------------------------------------------------------------------------

function report(subjects: DaemonName[]): string {
  const both = WANTED.length === 2;
  const header = ["call", "c", "stat", ...WANTED, ...(both ? ["berthd/containerd"] : []), "errors"];
  const rows: string[][] = [];
  for (const level of LEVELS) {
    for (const c of CALLS) {
      for (const [label, f] of [
        ["median", median],
        ["p95", p95],
      ] as const) {
        const vals = WANTED.map((d) => (subjects.includes(d) ? f(statsOf(d, level, c).ms) : Number.NaN));
        const row = [c, String(level), `${label} ms`, ...vals.map(fmt)];
        if (both) row.push(fmtRatio(vals[WANTED.indexOf("berthd")]!, vals[WANTED.indexOf("containerd")]!));
        row.push(
          label === "median"
            ? WANTED.map((d) => {
                const n = statsOf(d, level, c).errors.length;
                return n > 0 ? `${d}:${n}` : "";
              })
                .filter(Boolean)
                .join(" ")
            : "",
        );
        rows.push(row);
      }
    }
  }
  const res = (label: string, f: (u: Usage) => number, show: (x: number) => string) => {
    const vals = WANTED.map((d) => (usage[d] ? f(usage[d]!) : Number.NaN));
    const row = [label, "all", "", ...vals.map((v) => (Number.isFinite(v) ? show(v) : "—"))];
    if (both) row.push(fmtRatio(vals[WANTED.indexOf("berthd")]!, vals[WANTED.indexOf("containerd")]!));
    row.push("");
    rows.push(row);
  };
  res("daemon peak RSS (VmHWM)", (u) => u.peakRss, fmtBytes);
  res("daemon RSS at end", (u) => u.endRss, fmtBytes);
  res("daemon CPU (s)", (u) => u.cpu, fmt);
  res("daemon CPU per pull (ms)", (u) => (u.pulls > 0 ? (u.pullCpu / u.pulls) * 1000 : Number.NaN), fmt);
  return renderTable(header, rows);
}

async function main(): Promise<void> {
  const t0 = nowMs();
  const chainsBefore = iptablesChains();
  const tmp = await makeTempDir("bench-cri");
  let fast: string | undefined;
  let reg: Registry | undefined;
  const subjects: Subject[] = [];
  try {
    if (opt.tmpfs) {
      fast = path.join(tmp, "tmpfs");
      mkdirSync(fast);
      execFileSync("mount", ["-t", "tmpfs", "-o", "size=4g,mode=0711", "tmpfs", fast]);
    }
    reg = await startRegistry();
    const images = await pushBenchImages(reg, PULLS);
    const subnets = freeSubnets(WANTED.length);
    const bridges = freeBridges(WANTED.length);
    for (const [i, name] of WANTED.entries()) {
      log(`starting ${name} (bridge ${bridges[i]}, ${subnets[i]})`);
      try {
        const s = await startSubject(name, tmp, fast, reg, images, subnets[i]!, bridges[i]!);
        subjects.push(s);
        await warmUp(s, images);
      } catch (err) {
        const msg = (err as Error).message;
        failures[name].push(`setup: ${msg.split("\n").slice(0, 6).join(" | ")}`);
        log(`${name}: FAILED at setup, no rows for it: ${firstLine(err)}`);
        const s = subjects.find((x) => x.name === name);
        if (s) {
          subjects.splice(subjects.indexOf(s), 1);
          await stopSubject(s).catch(() => {});
        }
      }
    }
    // every (rep, level) pair runs each daemon in turn. Which goes first alternates from one rep
    // to the next within each level (and between neighbouring levels): alternating over the
    // flat list of pairs gave, with two levels, the same order at every rep of a level.
    const rounds = Array.from({ length: REPS }, (_, rep) =>
      LEVELS.map((level, li) => ({ rep, level, flip: (rep + li) % 2 === 1 })),
    ).flat();
    for (const { rep, level, flip } of rounds) {
      const order = flip ? [...subjects].reverse() : [...subjects];
      for (const s of order) {
        try {
          await measure(s, images, level, rep);
        } catch (err) {
          failures[s.name].push(`c=${level}: ${firstLine(err)}`);
          log(`${s.name}: c=${level} FAILED: ${firstLine(err)}`);
        }
      }
    }
  } finally {
    for (const s of subjects) await stopSubject(s).catch((e) => leftovers.push(`${s.name}: ${firstLine(e)}`));
    await reg?.cleanup();
    await removeTempDir(tmp); // unmounts the tmpfs (and anything else) below it first
  }
  const newChains = [...iptablesChains()].filter((c) => !chainsBefore.has(c) && /berthbench|CNI-/.test(c));

  const measured = subjects.map((s) => s.name);
  console.log(
    `\nCRI bench: ${REPS} rep(s), ${PODS} pods per level (lists with all ${PODS} running, ${LIST_REPS} calls each), ` +
      `${PULLS} image pulls per level, concurrency ${LEVELS.join(",")}, roots on ${opt.tmpfs ? "tmpfs" : "disk"}, ` +
      `${fmt((nowMs() - t0) / 1000)} s in all`,
  );
  console.log(report(measured));
  for (const d of WANTED) {
    const errs = [...stats.entries()].filter(([k, v]) => k.startsWith(`${d}/`) && v.errors.length > 0);
    for (const [k, v] of errs) console.log(`errors ${k}: ${v.errors.length} (first: ${v.errors[0]})`);
    for (const f of failures[d]) console.log(`${d} FAILED: ${f}`);
  }
  for (const l of leftovers) console.log(`leftover: ${l}`);
  if (newChains.length > 0) console.log(`iptables chains added during the run: ${newChains.join(", ")}`);
  if (opt.json) {
    await writeFile(
      opt.json,
      JSON.stringify(
        {
          pods: PODS,
          pulls: PULLS,
          listReps: LIST_REPS,
          levels: LEVELS,
          reps: REPS,
          stats: Object.fromEntries(stats),
          usage,
          failures,
          leftovers,
        },
        null,
        2,
      ),
    );
  }
}

await main();
