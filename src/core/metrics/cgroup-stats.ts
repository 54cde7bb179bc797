// A task's cgroup statistics, as the runc shim returns them from Stats (an Any holding
// io.containerd.cgroups.v1.Metrics or io.containerd.cgroups.v2.Metrics), turned into the
// `container_*` samples containerd's cgroups monitor exports: the same family names and the
// `container_id`/`namespace` labels, so dashboards written for containerd read them. Which set
// comes back depends on how runc manages the container (v1 controllers on a legacy or hybrid
// host such as this one, the unified hierarchy on a v2 host); both are decoded here.
//
// The messages are decoded by field number with a small wire-format reader: berth has no
// generated code for the cgroups protos, and only unsigned integers, strings, nested messages
// and packed uint64 lists occur in them.

/** Fields of one message: varints as numbers (metrics are floats anyway), length-delimited as bytes. */
type Fields = Map<number, (number | Uint8Array)[]>;

function readVarint(b: Uint8Array, pos: { i: number }): number {
  let result = 0;
  let mul = 1;
  for (;;) {
    if (pos.i >= b.length) throw new Error("truncated varint");
    const x = b[pos.i++]!;
    result += (x & 0x7f) * mul;
    if ((x & 0x80) === 0) return result;
    mul *= 128;
  }
}

function fields(b: Uint8Array): Fields {
  const out: Fields = new Map();
  const pos = { i: 0 };
  while (pos.i < b.length) {
    const tag = readVarint(b, pos);
    const no = Math.floor(tag / 8);
    let v: number | Uint8Array;
    switch (tag & 7) {
      case 0:
        v = readVarint(b, pos);
        break;
      case 1:
        pos.i += 8;
        continue;
      case 2: {
        const n = readVarint(b, pos);
        v = b.subarray(pos.i, pos.i + n);
        pos.i += n;
        break;
      }
      case 5:
        pos.i += 4;
        continue;
      default:
        throw new Error(`unsupported wire type ${tag & 7}`);
    }
    let list = out.get(no);
    if (!list) {
      list = [];
      out.set(no, list);
    }
    list.push(v);
  }
  return out;
}

const EMPTY = new Uint8Array();
const msg = (f: Fields | undefined, no: number): Fields | undefined => {
  const v = f?.get(no)?.[0];
  return v === undefined ? undefined : fields(v instanceof Uint8Array ? v : EMPTY);
};
const msgs = (f: Fields | undefined, no: number): Fields[] =>
  (f?.get(no) ?? []).flatMap((v) => (v instanceof Uint8Array ? [fields(v)] : []));
const num = (f: Fields, no: number): number => {
  const v = f.get(no)?.[0];
  return typeof v === "number" ? v : 0;
};
const str = (f: Fields, no: number): string => {
  const v = f.get(no)?.[0];
  return v instanceof Uint8Array ? Buffer.from(v).toString("utf8") : "";
};
/** A repeated uint64, packed (proto3's default) or not. */
function nums(f: Fields, no: number): number[] {
  const out: number[] = [];
  for (const v of f.get(no) ?? []) {
    if (typeof v === "number") out.push(v);
    else {
      const pos = { i: 0 };
      while (pos.i < v.length) out.push(readVarint(v, pos));
    }
  }
  return out;
}

/** One sample: family name, its help text, the labels beyond container_id/namespace, value. */
export interface CgroupSample {
  name: string;
  help: string;
  labels?: Record<string, string>;
  value: number;
}

export const CGROUPS_V1_TYPE = "io.containerd.cgroups.v1.Metrics";
export const CGROUPS_V2_TYPE = "io.containerd.cgroups.v2.Metrics";

// v1 MemoryStat scalar fields 1..32, in field order, by the name containerd gives the family.
const V1_MEMORY_FIELDS = [
  "cache",
  "rss",
  "rss_huge",
  "mapped_file",
  "dirty",
  "writeback",
  "pgpgin",
  "pgpgout",
  "pgfault",
  "pgmajfault",
  "inactive_anon",
  "active_anon",
  "inactive_file",
  "active_file",
  "unevictable",
  "hierarchical_memory_limit",
  "hierarchical_memsw_limit",
  "total_cache",
  "total_rss",
  "total_rss_huge",
  "total_mapped_file",
  "total_dirty",
  "total_writeback",
  "total_pgpgin",
  "total_pgpgout",
  "total_pgfault",
  "total_pgmajfault",
  "total_inactive_anon",
  "total_active_anon",
  "total_inactive_file",
  "total_active_file",
  "total_unevictable",
];
// v1 MemoryEntry fields 33..36 of MemoryStat.
const V1_MEMORY_ENTRIES: [number, string][] = [
  [33, "usage"],
  [34, "swap"],
  [35, "kernel"],
  [36, "kerneltcp"],
];
// v1 BlkIOStat lists: field, family name (without the container_ prefix); wait time is not exported.
const V1_BLKIO: [number, string][] = [
  [1, "blkio_io_service_bytes_recursive_bytes"],
  [2, "blkio_io_serviced_recursive_total"],
  [3, "blkio_io_queued_recursive_total"],
  [4, "blkio_io_service_time_recursive_total"],
  [6, "blkio_io_merged_recursive_total"],
  [7, "blkio_io_time_recursive_total"],
  [8, "blkio_sectors_recursive_total"],
];

type AddSample = (name: string, help: string, value: number, labels?: Record<string, string>) => void;

/** Samples collected by `add`, each family named `container_<name>`. */
function sampler(): { out: CgroupSample[]; add: AddSample } {
  const out: CgroupSample[] = [];
  const add: AddSample = (name, help, value, labels) =>
    out.push(
      labels
        ? { name: `container_${name}`, help, value, labels }
        : { name: `container_${name}`, help, value },
    );
  return { out, add };
}

/** PidsStat has the same fields (current = 1, limit = 2) in the v1 and v2 messages. */
function addPids(add: AddSample, pids: Fields | undefined): void {
  if (!pids) return;
  add("pids_current", "Processes in the container's cgroup", num(pids, 1));
  add("pids_limit", "Maximum processes allowed in the container's cgroup", num(pids, 2));
}

function v1Samples(m: Fields): CgroupSample[] {
  const { out, add } = sampler();
  addPids(add, msg(m, 2));
  const cpu = msg(m, 3);
  if (cpu) {
    const u = msg(cpu, 1) ?? new Map();
    add("cpu_total_nanoseconds", "CPU time used by the container", num(u, 1));
    add("cpu_kernel_nanoseconds", "CPU time the container spent in the kernel", num(u, 2));
    add("cpu_user_nanoseconds", "CPU time the container spent in user space", num(u, 3));
    nums(u, 4).forEach((v, i) => {
      add("per_cpu_nanoseconds", "CPU time used by the container per CPU", v, { cpu: String(i) });
    });
    const t = msg(cpu, 2) ?? new Map();
    add("cpu_throttle_periods_total", "CFS enforcement periods elapsed", num(t, 1));
    add("cpu_throttled_periods_total", "CFS periods in which the container was throttled", num(t, 2));
    add("cpu_throttled_time_nanoseconds", "Time the container was throttled", num(t, 3));
  }
  const mem = msg(m, 4);
  if (mem) {
    V1_MEMORY_FIELDS.forEach((f, i) => {
      add(`memory_${f}_bytes`, `memory.stat ${f}`, num(mem, i + 1));
    });
    for (const [no, e] of V1_MEMORY_ENTRIES) {
      const entry = msg(mem, no);
      if (!entry) continue;
      add(`memory_${e}_failcnt_total`, `Times the ${e} limit was hit`, num(entry, 4));
      add(`memory_${e}_limit_bytes`, `The ${e} limit`, num(entry, 1));
      add(`memory_${e}_max_bytes`, `Highest ${e} usage recorded`, num(entry, 3));
      add(`memory_${e}_usage_bytes`, `Current ${e} usage`, num(entry, 2));
    }
  }
  const blkio = msg(m, 5);
  if (blkio) {
    for (const [no, name] of V1_BLKIO) {
      for (const e of msgs(blkio, no)) {
        add(name, `blkio ${name.replace(/^blkio_|_(bytes|total)$/g, "")}`, num(e, 5), {
          op: str(e, 1),
          device: str(e, 2),
          major: String(num(e, 3)),
          minor: String(num(e, 4)),
        });
      }
    }
  }
  return out;
}

// v2 MemoryStat fields by the name containerd gives the family (all in bytes, as containerd labels them).
const V2_MEMORY: [number, string][] = [
  [32, "usage"],
  [33, "usage_limit"],
  [34, "swap_usage"],
  // containerd's family name has the capital L
  [35, "swap_Limit"],
  [7, "file_mapped"],
  [8, "file_dirty"],
  [9, "file_writeback"],
  [26, "pgactivate"],
  [27, "pgdeactivate"],
  [18, "pgfault"],
  [19, "pgmajfault"],
  [28, "pglazyfree"],
  [23, "pgrefill"],
  [29, "pglazyfreed"],
  [24, "pgscan"],
  [25, "pgsteal"],
  [11, "inactive_anon"],
  [12, "active_anon"],
  [13, "inactive_file"],
  [14, "active_file"],
  [15, "unevictable"],
  [1, "anon"],
  [2, "file"],
  [3, "kernel_stack"],
  [4, "slab"],
  [5, "sock"],
  [6, "shmem"],
  [10, "anon_thp"],
  [16, "slab_reclaimable"],
  [17, "slab_unreclaimable"],
  [20, "workingset_refault"],
  [21, "workingset_activate"],
  [22, "workingset_nodereclaim"],
  [30, "thp_fault_alloc"],
  [31, "thp_collapse_alloc"],
];

function v2Samples(m: Fields): CgroupSample[] {
  const { out, add } = sampler();
  addPids(add, msg(m, 1));
  const cpu = msg(m, 2);
  if (cpu) {
    add("cpu_usage_microseconds", "CPU time used by the container (cgroup v2)", num(cpu, 1));
    add("cpu_user_usage_microseconds", "CPU time in user space (cgroup v2)", num(cpu, 2));
    add("cpu_kernel_usage_microseconds", "CPU time in the kernel (cgroup v2)", num(cpu, 3));
    add("cpu_nr_periods_total", "CFS enforcement periods elapsed (cgroup v2)", num(cpu, 4));
    add(
      "cpu_nr_throttled_total",
      "CFS periods in which the container was throttled (cgroup v2)",
      num(cpu, 5),
    );
    add("cpu_throttled_usec_microseconds", "Time the container was throttled (cgroup v2)", num(cpu, 6));
  }
  const mem = msg(m, 4);
  if (mem) for (const [no, f] of V2_MEMORY) add(`memory_${f}_bytes`, `memory ${f} (cgroup v2)`, num(mem, no));
  const io = msg(m, 6);
  if (io) {
    for (const e of msgs(io, 1)) {
      const labels = { major: String(num(e, 1)), minor: String(num(e, 2)) };
      add("io_rbytes_bytes", "Bytes read (cgroup v2)", num(e, 3), labels);
      add("io_wbytes_bytes", "Bytes written (cgroup v2)", num(e, 4), labels);
      add("io_rios_total", "Read operations (cgroup v2)", num(e, 5), labels);
      add("io_wios_total", "Write operations (cgroup v2)", num(e, 6), labels);
    }
  }
  return out;
}

/**
 * The samples for one task's stats Any (type URL and bytes); [] for a type this does not know
 * (another runtime's stats).
 */
export function cgroupSamples(typeUrl: string, value: Uint8Array): CgroupSample[] {
  const name = typeUrl.slice(typeUrl.lastIndexOf("/") + 1);
  if (name === CGROUPS_V1_TYPE) return v1Samples(fields(value));
  if (name === CGROUPS_V2_TYPE) return v2Samples(fields(value));
  return [];
}
