// Container and pod stats, read from the containers' cgroups (v1 or v2) and the snapshotter's
// usage of each writable layer. The CPU rate (usage_nano_cores) is derived from the previous
// sample of the same container, as containerd does between stats calls.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type {
  ContainerStatsSchema,
  CpuUsageSchema,
  MemoryUsageSchema,
  PodSandboxStatsSchema,
} from "../gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";
import type { CriState } from "./state.js";
import { type ContainerRecord, nowNs, type SandboxRecord } from "./store.js";

type ContainerStatsInit = MessageInitShape<typeof ContainerStatsSchema>;
type CpuInit = MessageInitShape<typeof CpuUsageSchema>;
type MemInit = MessageInitShape<typeof MemoryUsageSchema>;

const CGROUP_ROOT = "/sys/fs/cgroup";

const readText = (p: string): string | undefined => {
  try {
    return readFileSync(p, "utf8");
  } catch {
    return undefined;
  }
};

const readNum = (p: string): bigint | undefined => {
  const t = readText(p)?.trim();
  return t && /^\d+$/.test(t) ? BigInt(t) : undefined;
};

function statFile(text: string | undefined): Map<string, bigint> {
  const m = new Map<string, bigint>();
  for (const line of (text ?? "").split("\n")) {
    const [k, v] = line.split(" ");
    if (k && v && /^\d+$/.test(v)) m.set(k, BigInt(v));
  }
  return m;
}

const isV2 = () => readText(join(CGROUP_ROOT, "cgroup.controllers")) !== undefined;

interface Sample {
  cpuNs: bigint | undefined;
  mem: MemInit | undefined;
}

/** CPU time and memory of a cgroup by its spec path (`/k8s.io/<id>` or `parent/<id>`). */
export function cgroupSample(cgroupsPath: string, timestamp: bigint): Sample {
  if (!cgroupsPath || cgroupsPath.includes(":")) return { cpuNs: undefined, mem: undefined };
  if (isV2()) {
    const dir = join(CGROUP_ROOT, cgroupsPath);
    const cpu = statFile(readText(join(dir, "cpu.stat")));
    const usage = cpu.get("usage_usec");
    const memUsage = readNum(join(dir, "memory.current"));
    const mstat = statFile(readText(join(dir, "memory.stat")));
    const inactive = mstat.get("inactive_file") ?? 0n;
    const mem: MemInit | undefined =
      memUsage === undefined
        ? undefined
        : {
            timestamp,
            usageBytes: { value: memUsage },
            workingSetBytes: { value: memUsage > inactive ? memUsage - inactive : 0n },
            rssBytes: { value: mstat.get("anon") ?? 0n },
            pageFaults: { value: mstat.get("pgfault") ?? 0n },
            majorPageFaults: { value: mstat.get("pgmajfault") ?? 0n },
          };
    return { cpuNs: usage === undefined ? undefined : usage * 1000n, mem };
  }
  const cpuNs = readNum(join(CGROUP_ROOT, "cpuacct", cgroupsPath, "cpuacct.usage"));
  const mdir = join(CGROUP_ROOT, "memory", cgroupsPath);
  const memUsage = readNum(join(mdir, "memory.usage_in_bytes"));
  const mstat = statFile(readText(join(mdir, "memory.stat")));
  const inactive = mstat.get("total_inactive_file") ?? 0n;
  const limit = readNum(join(mdir, "memory.limit_in_bytes"));
  const mem: MemInit | undefined =
    memUsage === undefined
      ? undefined
      : {
          timestamp,
          usageBytes: { value: memUsage },
          workingSetBytes: { value: memUsage > inactive ? memUsage - inactive : 0n },
          rssBytes: { value: mstat.get("total_rss") ?? 0n },
          pageFaults: { value: mstat.get("total_pgfault") ?? 0n },
          majorPageFaults: { value: mstat.get("total_pgmajfault") ?? 0n },
          ...(limit !== undefined && limit < 1n << 62n
            ? { availableBytes: { value: limit > memUsage ? limit - memUsage : 0n } }
            : {}),
        };
  return { cpuNs, mem };
}

/** The previous CPU sample per id, for usage_nano_cores. */
const lastCpu = new Map<string, { at: bigint; ns: bigint }>();

function cpuUsage(id: string, cpuNs: bigint | undefined, timestamp: bigint): CpuInit | undefined {
  if (cpuNs === undefined) return undefined;
  const prev = lastCpu.get(id);
  lastCpu.set(id, { at: timestamp, ns: cpuNs });
  const out: CpuInit = { timestamp, usageCoreNanoSeconds: { value: cpuNs } };
  if (prev && timestamp > prev.at && cpuNs >= prev.ns)
    out.usageNanoCores = { value: ((cpuNs - prev.ns) * 1_000_000_000n) / (timestamp - prev.at) };
  return out;
}

function cgroupsPathOf(st: CriState, id: string): string {
  try {
    const c = st.deps.containers.get(st.deps.namespace, id);
    if (!c.spec) return "";
    const spec = JSON.parse(Buffer.from(c.spec.value).toString("utf8")) as {
      linux?: { cgroupsPath?: string };
    };
    return spec.linux?.cgroupsPath ?? "";
  } catch {
    return "";
  }
}

export async function containerStats(st: CriState, c: ContainerRecord): Promise<ContainerStatsInit> {
  const timestamp = nowNs();
  const out: ContainerStatsInit = {
    attributes: {
      id: c.id,
      metadata: c.config.metadata,
      labels: c.config.labels,
      annotations: c.config.annotations,
    },
  };
  if (c.status.state === "running") {
    const s = cgroupSample(cgroupsPathOf(st, c.id), timestamp);
    const cpu = cpuUsage(c.id, s.cpuNs, timestamp);
    if (cpu) out.cpu = cpu;
    if (s.mem) out.memory = s.mem;
  }
  const snapshotter = st.deps.config.containerd.snapshotter;
  try {
    const u = await st.deps.snapshots.get(snapshotter).usage(st.deps.namespace, c.id);
    out.writableLayer = {
      timestamp,
      fsId: { mountpoint: join(st.deps.daemon.root, `io.containerd.snapshotter.v1.${snapshotter}`) },
      usedBytes: { value: BigInt(u.size) },
      inodesUsed: { value: BigInt(u.inodes) },
    };
  } catch {
    // no snapshot (being removed): no writable layer figure
  }
  return out;
}

export async function podSandboxStats(
  st: CriState,
  s: SandboxRecord,
): Promise<MessageInitShape<typeof PodSandboxStatsSchema>> {
  const timestamp = nowNs();
  const containers: ContainerStatsInit[] = [];
  let cpuTotal: bigint | undefined;
  let wsTotal = 0n;
  let usageTotal = 0n;
  let any = false;
  for (const id of s.containers) {
    const c = st.store.findContainer(id);
    if (c?.status.state !== "running") continue;
    const cs = await containerStats(st, c);
    containers.push(cs);
    const cpuV = cs.cpu?.usageCoreNanoSeconds?.value;
    if (cpuV !== undefined) cpuTotal = (cpuTotal ?? 0n) + BigInt(cpuV);
    if (cs.memory) {
      any = true;
      wsTotal += BigInt(cs.memory.workingSetBytes?.value ?? 0n);
      usageTotal += BigInt(cs.memory.usageBytes?.value ?? 0n);
    }
  }
  const pause = cgroupSample(cgroupsPathOf(st, s.id), timestamp);
  if (pause.cpuNs !== undefined) cpuTotal = (cpuTotal ?? 0n) + pause.cpuNs;
  if (pause.mem) {
    any = true;
    wsTotal += BigInt(pause.mem.workingSetBytes?.value ?? 0n);
    usageTotal += BigInt(pause.mem.usageBytes?.value ?? 0n);
  }
  return {
    attributes: {
      id: s.id,
      metadata: s.config.metadata,
      labels: s.config.labels,
      annotations: s.config.annotations,
    },
    linux: {
      cpu: cpuUsage(`pod:${s.id}`, cpuTotal, timestamp),
      memory: any
        ? { timestamp, workingSetBytes: { value: wsTotal }, usageBytes: { value: usageTotal } }
        : undefined,
      process: { timestamp, processCount: { value: BigInt(s.containers.size + 1) } },
      containers,
    },
  };
}
