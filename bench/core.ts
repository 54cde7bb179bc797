// Core side-by-side benchmark: the real containerd and berthd on the same machine, temp roots, the
// same config (GC off: content ingested by ctr has no lease), driven by the same clients.
//
//   (a) content: `ctr content ingest` of a large random blob, then `ctr content get` to /dev/null
//       (its sha256 is checked in a separate, untimed read); every repeat ingests a new blob (the
//       store is content-addressed, so a repeated blob would be a no-op), all blobs made up front
//       from one random file, on tmpfs so reading the input costs the same for both daemons.
//   (b) API: small unary calls (Namespaces/List, Namespaces/Get, Version in turn) over one gRPC
//       connection per daemon: N sequential, then N with 16 in flight; then, one call at a time,
//       the median of each method of a container's metadata life without a task (lease, snapshot
//       prepare, container create with ctr's default spec, get, stat, delete, remove): N/10 of each.
//       The client is grpc-js (an implementation independent of berthd's server) unless --client h2
//       picks the berth CLI's own client on node:http2; its CPU per call is shown next to the
//       daemon's, since on two cores the client's share decides much of these rows. Between the
//       daemons, the same calls go to bench/null-server.ts, a server that only answers: a daemon
//       on berthd's transport whose handlers took no time, so null/containerd is the rows' floor
//       for that transport and this client, in that run (within the run's noise).
//
// Repeats alternate which daemon goes first. Shown: medians over repeats and berthd/containerd.
//
//   node dist/bench/core.js [--quick] [--reps N] [--calls N] [--inflight N] [--size MiB]
//                           [--tmpfs] [--only containerd|berthd] [--skip-content] [--skip-api]
//                           [--client grpc-js|h2] [--json FILE]
import { execFileSync, spawn } from "node:child_process";
import { createHash, randomFillSync } from "node:crypto";
import { closeSync, openSync, writeSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import type { DescService } from "@bufbuild/protobuf";
import { isAlreadyExists } from "../src/base/errdefs.js";
import { defaultSpec } from "../src/core/oci/index.js";
import { Containers } from "../src/gen/containerd/services/containers/v1/containers_pb.js";
import { Leases } from "../src/gen/containerd/services/leases/v1/leases_pb.js";
import { Namespaces } from "../src/gen/containerd/services/namespaces/v1/namespace_pb.js";
import { Snapshots } from "../src/gen/containerd/services/snapshots/v1/snapshots_pb.js";
import { Version } from "../src/gen/containerd/services/version/v1/version_pb.js";
import { type Client, Connection } from "../src/grpc/client.js";
import { H2Connection } from "../src/grpc/h2client.js";
import { ctr } from "../test/helpers/ctr.js";
import {
  CRI_PLUGIN,
  type Daemon,
  GC_OFF_CONFIG,
  startBerthd,
  startContainerd,
} from "../test/helpers/daemons.js";
import { makeTempDir, removeTempDir } from "../test/helpers/tmp.js";
import {
  benchContainer,
  cpuSeconds,
  DAEMONS,
  type DaemonName,
  fmt,
  fmtBytes,
  fmtRatio,
  type MetricSpec,
  mbPerSec,
  median,
  nowMs,
  orderFor,
  p95,
  Results,
  renderTable,
  runConcurrent,
} from "./lib.js";

const { values: opt } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    reps: { type: "string" },
    calls: { type: "string" },
    inflight: { type: "string", default: "16" },
    size: { type: "string" },
    tmpfs: { type: "boolean", default: false },
    only: { type: "string" },
    "skip-content": { type: "boolean", default: false },
    "skip-api": { type: "boolean", default: false },
    client: { type: "string", default: "grpc-js" },
    json: { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  },
});

if (opt.help) {
  console.log(
    "usage: node dist/bench/core.js [--quick] [--reps N] [--calls N] [--inflight N] [--size MiB]\n" +
      "                               [--tmpfs] [--only containerd|berthd] [--skip-content] [--skip-api]\n" +
      "                               [--client grpc-js|h2] [--json FILE]\n" +
      "  --quick   2 repeats, 200 calls, 64 MiB (defaults: 5 repeats, 1000 calls, 256 MiB)\n" +
      "  --tmpfs   put both daemons' roots and states on a tmpfs (default: the disk under /tmp)\n" +
      "  --client  the API calls' client: grpc-js (default) or h2, the berth CLI's own on node:http2",
  );
  process.exit(0);
}

const positiveInt = (name: string, v: string | undefined, dflt: number): number => {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`--${name} wants a positive integer, got ${v}`);
  return n;
};

const REPS = positiveInt("reps", opt.reps, opt.quick ? 2 : 5);
const CALLS = positiveInt("calls", opt.calls, opt.quick ? 200 : 1000);
const INFLIGHT = positiveInt("inflight", opt.inflight, 16);
const SIZE = positiveInt("size", opt.size, opt.quick ? 64 : 256) * 1024 * 1024;
if (opt.only !== undefined && !DAEMONS.includes(opt.only as DaemonName)) {
  throw new Error(`--only wants containerd or berthd, got ${opt.only}`);
}
const WANTED: DaemonName[] = opt.only ? [opt.only as DaemonName] : [...DAEMONS];
if (opt.client !== "grpc-js" && opt.client !== "h2")
  throw new Error(`--client wants grpc-js or h2, got ${opt.client}`);
const CLIENT = opt.client;

/** What the API part needs of a connection: both clients give the same typed stubs. */
interface ApiConnection {
  client<S extends DescService>(service: S): Client<S>;
  close(): void;
}
const connect = (address: string): ApiConnection =>
  CLIENT === "h2" ? new H2Connection(address) : new Connection(address);

const log = (msg: string) => process.stderr.write(`[bench] ${msg}\n`);

function firstLines(s: string, n: number): string {
  const lines = s.trim().split("\n");
  return lines.length <= n ? lines.join("\n") : `${lines.slice(0, n).join("\n")}\n…`;
}

function tryMountTmpfs(dir: string, sizeBytes: number): boolean {
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", `size=${sizeBytes},mode=0711`, "tmpfs", dir], {
      stdio: "pipe",
    });
    return true;
  } catch (err) {
    log(`cannot mount a tmpfs at ${dir} (${(err as Error).message.split("\n")[0]}); using the disk`);
    return false;
  }
}

interface Blob {
  file: string;
  digest: string;
}

/**
 * One random file of `size` bytes, then `count` variants of it that differ in their first 16 bytes
 * (so each has its own digest), each written with its sha256.
 */
async function makeBlobs(dir: string, size: number, count: number): Promise<Blob[]> {
  const chunk = 4 << 20;
  const base = Buffer.allocUnsafe(size);
  for (let off = 0; off < size; off += chunk) randomFillSync(base, off, Math.min(chunk, size - off));
  const blobs: Blob[] = [];
  for (let i = 0; i < count; i++) {
    const tag = Buffer.alloc(16);
    tag.write(`berth-bench-${i}`.padEnd(16, "."), "latin1");
    tag.copy(base, 0, 0, Math.min(16, size));
    const file = path.join(dir, `blob-${i}`);
    const fd = openSync(file, "w");
    try {
      for (let off = 0; off < size; off += chunk) writeSync(fd, base, off, Math.min(chunk, size - off));
    } finally {
      closeSync(fd);
    }
    blobs.push({ file, digest: `sha256:${createHash("sha256").update(base).digest("hex")}` });
  }
  return blobs;
}

// ---------------------------------------------------------------------------------------------

const results = new Results();
// Rows appear in the order they first get a sample. Time samples are in ms.
const M = {
  ingest: { name: `content ingest ${fmtBytes(SIZE)} (ctr)`, unit: "s", derive: (ms) => ms / 1000 },
  ingestRate: {
    name: "  ingest throughput",
    unit: "MB/s",
    derive: (ms) => mbPerSec(SIZE, ms),
    higherIsBetter: true,
  },
  get: { name: `content get ${fmtBytes(SIZE)} (ctr)`, unit: "s", derive: (ms) => ms / 1000 },
  getRate: {
    name: "  get throughput",
    unit: "MB/s",
    derive: (ms) => mbPerSec(SIZE, ms),
    higherIsBetter: true,
  },
  seq: { name: `API ${CALLS} sequential calls`, unit: "ms" },
  seqP50: { name: "  per call p50", unit: "µs" },
  seqP95: { name: "  per call p95", unit: "µs" },
  // the client (one Node process, the same for both daemons) is most of the wall time of these
  // calls; the daemon's own CPU per call is what the server side costs
  seqCpu: { name: "  daemon CPU per call", unit: "µs" },
  seqClientCpu: { name: `  client CPU per call (${CLIENT})`, unit: "µs" },
  conc: { name: `API ${CALLS} calls, ${INFLIGHT} in flight`, unit: "ms" },
  concRate: {
    name: "  throughput",
    unit: "calls/s",
    derive: (ms) => CALLS / (ms / 1000),
    higherIsBetter: true,
  },
  concP50: { name: "  per call p50", unit: "µs" },
  concP95: { name: "  per call p95", unit: "µs" },
  concCpu: { name: "  daemon CPU per call", unit: "µs" },
  concClientCpu: { name: `  client CPU per call (${CLIENT})`, unit: "µs" },
} satisfies Record<string, MetricSpec>;

async function contentRep(name: DaemonName, d: Daemon, blob: Blob, rep: number): Promise<void> {
  const ingest = await ctr(
    d.address,
    ["content", "ingest", "--expected-size", String(SIZE), "--expected-digest", blob.digest, `bench-${rep}`],
    { input: { file: blob.file }, output: "ignore", timeoutMs: 600_000 },
  );
  if (ingest.code !== 0) throw new Error(`ctr content ingest: ${firstLines(ingest.stderr, 3)}`);
  const get = await ctr(d.address, ["content", "get", blob.digest], {
    output: { file: "/dev/null" },
    timeoutMs: 600_000,
  });
  if (get.code !== 0) throw new Error(`ctr content get: ${firstLines(get.stderr, 3)}`);
  // Untimed: read it again and check what comes back.
  const h = createHash("sha256");
  let n = 0;
  const check = await ctr(d.address, ["content", "get", blob.digest], {
    output: (c) => {
      h.update(c);
      n += c.length;
    },
    timeoutMs: 600_000,
  });
  const got = `sha256:${h.digest("hex")}`;
  if (check.code !== 0 || got !== blob.digest || n !== SIZE) {
    throw new Error(
      `ctr content get returned ${n} bytes with digest ${got}, want ${SIZE} bytes ${blob.digest}`,
    );
  }
  results.add(M.ingest, name, ingest.ms);
  results.add(M.ingestRate, name, ingest.ms);
  results.add(M.get, name, get.ms);
  results.add(M.getRate, name, get.ms);
  log(`rep ${rep + 1} ${name}: ingest ${ingest.ms.toFixed(0)} ms, get ${get.ms.toFixed(0)} ms`);
}

/** The methods timed one by one (methodsRep), in the order a container's metadata life calls them. */
const METHODS = [
  "Leases/Create",
  "Snapshots/Prepare",
  "Containers/Create",
  "Containers/Get",
  "Snapshots/Stat",
  "Containers/Delete",
  "Snapshots/Remove",
  "Leases/Delete",
] as const;
type Method = (typeof METHODS)[number];
const PER_METHOD = Object.fromEntries(
  METHODS.map((m) => [m, { name: `${m}, one at a time, p50`, unit: "µs" }]),
) as Record<Method, MetricSpec>;

/** The spec `ctr run` would send (the client layer's default spec), as the scale benchmark uses it. */
const SPEC = {
  typeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec",
  value: Buffer.from(JSON.stringify(defaultSpec("bench", "bench"))),
};

async function methodsRep(name: DaemonName, conn: ApiConnection, rep: number): Promise<void> {
  const o = { namespace: "bench" };
  const leases = conn.client(Leases);
  const snaps = conn.client(Snapshots);
  const ctrs = conn.client(Containers);
  const lat = new Map<Method, number[]>(METHODS.map((m) => [m, []]));
  const n = Math.max(20, Math.round(CALLS / 10));
  const warm = 20;
  for (let i = 0; i < warm + n; i++) {
    const id = `m${rep}-${i}`;
    const time = async (m: Method, fn: () => Promise<unknown>) => {
      const t = nowMs();
      await fn();
      if (i >= warm) lat.get(m)!.push(nowMs() - t);
    };
    await time("Leases/Create", () => leases.create({ id, labels: {} }, o));
    await time("Snapshots/Prepare", () =>
      snaps.prepare({ snapshotter: "overlayfs", key: id, parent: "", labels: {} }, o),
    );
    await time("Containers/Create", () =>
      ctrs.create({ container: benchContainer(id, SPEC, { purpose: "bench" }) }, o),
    );
    await time("Containers/Get", () => ctrs.get({ id }, o));
    await time("Snapshots/Stat", () => snaps.stat({ snapshotter: "overlayfs", key: id }, o));
    await time("Containers/Delete", () => ctrs.delete({ id }, o));
    await time("Snapshots/Remove", () => snaps.remove({ snapshotter: "overlayfs", key: id }, o));
    await time("Leases/Delete", () => leases.delete({ id, sync: false }, o));
  }
  for (const m of METHODS) results.add(PER_METHOD[m], name, median(lat.get(m)!) * 1000);
  log(`rep ${rep + 1} ${name}: ${n} of each container metadata call`);
}

type Call = () => Promise<unknown>;

function apiCalls(conn: ApiConnection): Call[] {
  const ns = conn.client(Namespaces);
  const ver = conn.client(Version);
  return [() => ns.list({}), () => ns.get({ name: "bench" }), () => ver.version({})];
}

async function apiSetup(conn: ApiConnection): Promise<Call[]> {
  try {
    // containerd publishes a namespace event, which needs a namespace in the request context.
    await conn
      .client(Namespaces)
      .create({ namespace: { name: "bench", labels: { purpose: "bench" } } }, { namespace: "bench" });
  } catch (err) {
    if (!isAlreadyExists(err)) throw err;
  }
  const calls = apiCalls(conn);
  // Warm-up: connection, JIT on both sides.
  for (let i = 0; i < 150; i++) await calls[i % calls.length]!();
  return calls;
}

interface ApiSample {
  seqMs: number;
  seqLat: number[];
  /** the server's CPU seconds over the sequential calls */
  seqCpu: number;
  /** the client's (this process's) CPU µs over the sequential calls */
  seqClient: number;
  concMs: number;
  concLat: number[];
  concCpu: number;
  concClient: number;
}

/** The sequential calls, then the same number with INFLIGHT at once, on server process `pid`. */
async function measureApi(pid: number, calls: Call[]): Promise<ApiSample> {
  const seqLat: number[] = [];
  const seqCpu0 = cpuSeconds(pid);
  const seqClient0 = process.cpuUsage();
  const seqStart = nowMs();
  for (let i = 0; i < CALLS; i++) {
    const t = nowMs();
    await calls[i % calls.length]!();
    seqLat.push(nowMs() - t);
  }
  const seqMs = nowMs() - seqStart;
  const seqCpu = cpuSeconds(pid) - seqCpu0;
  const seqClient = process.cpuUsage(seqClient0);

  const concCpu0 = cpuSeconds(pid);
  const concClient0 = process.cpuUsage();
  const concStart = nowMs();
  const concLat = await runConcurrent(CALLS, INFLIGHT, (i) => calls[i % calls.length]!());
  const concMs = nowMs() - concStart;
  const concCpu = cpuSeconds(pid) - concCpu0;
  const concClient = process.cpuUsage(concClient0);
  return {
    seqMs,
    seqLat,
    seqCpu,
    seqClient: seqClient.user + seqClient.system,
    concMs,
    concLat,
    concCpu,
    concClient: concClient.user + concClient.system,
  };
}

/** What a sample gives each row it feeds, in the rows' units. */
function apiRows(s: ApiSample): Map<MetricSpec, number> {
  return new Map<MetricSpec, number>([
    [M.seq, s.seqMs],
    [M.seqP50, median(s.seqLat) * 1000],
    [M.seqP95, p95(s.seqLat) * 1000],
    [M.seqCpu, (s.seqCpu * 1e6) / CALLS],
    [M.seqClientCpu, s.seqClient / CALLS],
    [M.conc, s.concMs],
    [M.concRate, s.concMs],
    [M.concP50, median(s.concLat) * 1000],
    [M.concP95, p95(s.concLat) * 1000],
    [M.concCpu, (s.concCpu * 1e6) / CALLS],
    [M.concClientCpu, s.concClient / CALLS],
  ]);
}

async function apiRep(name: DaemonName, pid: number, calls: Call[], rep: number): Promise<void> {
  const s = await measureApi(pid, calls);
  for (const [spec, v] of apiRows(s)) results.add(spec, name, v);
  log(
    `rep ${rep + 1} ${name}: ${CALLS} sequential ${s.seqMs.toFixed(0)} ms, ${INFLIGHT} in flight ${s.concMs.toFixed(0)} ms`,
  );
}

// ---------------------------------------------------------------------------------------------
// The floor of the small-call rows: bench/null-server.ts, a server that only answers

interface NullServer {
  pid: number;
  address: string;
  stop(): Promise<void>;
}

async function startNullServer(dir: string): Promise<NullServer> {
  const address = path.join(dir, "null.sock");
  const script = fileURLToPath(new URL("./null-server.js", import.meta.url));
  const child = spawn(process.execPath, [script, address], { stdio: ["ignore", "pipe", "inherit"] });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGTERM"); // ours, started above: not left behind
      reject(new Error("the null server did not listen within 10 s"));
    }, 10_000);
    child.stdout!.on("data", (b: Buffer) => {
      if (b.toString().includes("listening")) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`the null server exited (code ${code}) before listening`));
    });
  });
  return {
    pid: child.pid!,
    address,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      await exited;
    },
  };
}

const floorSamples: ApiSample[] = [];

/** The API rows with the null server beside the daemons: its ratio is the rows' floor. */
function floorTable(): string {
  const specs = [M.seq, M.seqCpu, M.seqClientCpu, M.conc, M.concCpu, M.concClientCpu];
  const samples = floorSamples.map(apiRows);
  return renderTable(
    ["metric", "unit", "containerd", "berthd", "null server", "berthd/containerd", "null/containerd"],
    specs.map((spec) => {
      const c = results.value(spec, "containerd");
      const b = results.value(spec, "berthd");
      const floor = median(samples.map((m) => m.get(spec)!));
      // the null server is no daemon: its CPU rows are the server's
      const label = spec.name.replace("daemon", "server");
      return [label, spec.unit, fmt(c), fmt(b), fmt(floor), fmtRatio(b, c), fmtRatio(floor, c)];
    }),
  );
}

function containerdVersion(): string {
  try {
    return execFileSync("/usr/bin/containerd", ["--version"], { encoding: "utf8" }).trim();
  } catch {
    return "containerd: unknown version";
  }
}

async function main(): Promise<number> {
  const work = await makeTempDir("bench");
  const daemons = new Map<DaemonName, Daemon>();
  const conns = new Map<DaemonName | "null", ApiConnection>();
  let nullServer: NullServer | undefined;
  let floorCalls: Call[] | undefined;
  const notStarted = new Map<DaemonName, string>();
  try {
    log(`${containerdVersion()}; node ${process.version}; ${os.cpus().length} CPUs`);
    log(`${REPS} repeats, ${fmtBytes(SIZE)} blob, ${CALLS} calls (${INFLIGHT} in flight), client ${CLIENT}`);

    const roots = path.join(work, "roots");
    await mkdir(roots);
    const onTmpfs = opt.tmpfs && tryMountTmpfs(roots, Math.max(2 * SIZE * (REPS + 1), 1 << 30));
    log(`daemon roots on ${onTmpfs ? "tmpfs" : "the disk (/tmp)"}`);

    for (const name of WANTED) {
      const dirs = { root: path.join(roots, name, "root"), state: path.join(roots, name, "state") };
      try {
        const start = nowMs();
        const d =
          name === "containerd"
            ? await startContainerd({ ...dirs, config: GC_OFF_CONFIG, disabledPlugins: [CRI_PLUGIN] })
            : await startBerthd({ ...dirs, config: GC_OFF_CONFIG, disabledPlugins: [CRI_PLUGIN] });
        daemons.set(name, d);
        log(`${name} ready in ${(nowMs() - start).toFixed(0)} ms (pid ${d.pid}, ${d.address})`);
      } catch (err) {
        notStarted.set(name, (err as Error).message);
        log(`${name} could not start:\n${firstLines((err as Error).message, 30)}`);
      }
    }
    const running = WANTED.filter((n) => daemons.has(n));
    if (running.length === 0) throw new Error("no daemon could start");

    if (!opt["skip-content"]) {
      const input = path.join(work, "input");
      await mkdir(input);
      tryMountTmpfs(input, SIZE * REPS + (64 << 20));
      const t = nowMs();
      const blobs = await makeBlobs(input, SIZE, REPS);
      log(`made ${REPS} blobs of ${fmtBytes(SIZE)} in ${(nowMs() - t).toFixed(0)} ms`);
      const failed = new Set<DaemonName>();
      for (let rep = 0; rep < REPS; rep++) {
        for (const name of orderFor(rep, running)) {
          if (failed.has(name)) continue;
          try {
            await contentRep(name, daemons.get(name)!, blobs[rep]!, rep);
          } catch (err) {
            failed.add(name);
            results.fail(name, `content: ${(err as Error).message}`);
            log(`${name} content benchmark failed: ${(err as Error).message}`);
          }
        }
      }
    }

    if (!opt["skip-api"]) {
      // the floor runs only beside both daemons, whose ratio it bounds
      if (running.length === DAEMONS.length) {
        try {
          nullServer = await startNullServer(work);
          const conn = connect(nullServer.address);
          conns.set("null", conn);
          floorCalls = apiCalls(conn);
          for (let i = 0; i < 150; i++) await floorCalls[i % floorCalls.length]!();
        } catch (err) {
          floorCalls = undefined;
          log(`the null server (the small calls' floor) failed: ${(err as Error).message}`);
        }
      }
      const ready = new Map<DaemonName, Call[]>();
      for (const name of running) {
        const conn = connect(daemons.get(name)!.address);
        conns.set(name, conn);
        try {
          ready.set(name, await apiSetup(conn));
        } catch (err) {
          results.fail(name, `api: ${(err as Error).message}`);
          log(`${name} API benchmark setup failed: ${(err as Error).message}`);
        }
      }
      const runDaemonRep = async (name: DaemonName, rep: number): Promise<void> => {
        const calls = ready.get(name);
        if (!calls) return;
        try {
          await apiRep(name, daemons.get(name)!.pid, calls, rep);
          await methodsRep(name, conns.get(name)!, rep);
        } catch (err) {
          ready.delete(name);
          results.fail(name, `api: ${(err as Error).message}`);
          log(`${name} API benchmark failed: ${(err as Error).message}`);
        }
      };
      for (let rep = 0; rep < REPS; rep++) {
        const order = orderFor(rep, running);
        // the floor goes between the two daemons, so that neither always runs right after it
        await runDaemonRep(order[0]!, rep);
        if (floorCalls && nullServer) {
          floorSamples.push(await measureApi(nullServer.pid, floorCalls));
          log(`rep ${rep + 1} null server: ${CALLS} sequential ${floorSamples.at(-1)!.seqMs.toFixed(0)} ms`);
        }
        for (const name of order.slice(1)) await runDaemonRep(name, rep);
      }
    }

    console.log("");
    console.log(`berth core benchmark — medians of ${REPS} repeats; ratio > 1 means berthd takes longer`);
    console.log(`(for MB/s and calls/s rows a ratio > 1 means berthd is faster)`);
    console.log("");
    console.log(results.table());
    console.log("");
    if (floorSamples.length > 0) {
      console.log(
        "the small calls' floor: bench/null-server.ts answers the same calls with constants, on berthd's\n" +
          "HTTP/2 layer in a Node process of its own, through the same client (null/containerd is the\n" +
          "ratio of a daemon whose handlers take no time, in this run)",
      );
      console.log("");
      console.log(floorTable());
      console.log("");
    }
    let status = 0;
    for (const name of WANTED) {
      const why = notStarted.get(name);
      if (why) {
        console.log(`${name}: NOT MEASURED — it could not start: ${firstLines(why, 1)}`);
        status = 2;
      }
      for (const f of results.failuresOf(name)) {
        console.log(`${name}: FAILED — ${firstLines(f, 3)}`);
        status = 2;
      }
    }
    if (opt.json) {
      await writeFile(
        opt.json,
        JSON.stringify(
          {
            date: new Date().toISOString(),
            containerd: containerdVersion(),
            node: process.version,
            cpus: os.cpus().length,
            params: {
              reps: REPS,
              calls: CALLS,
              inflight: INFLIGHT,
              size: SIZE,
              tmpfs: onTmpfs,
              client: CLIENT,
            },
            notStarted: Object.fromEntries(notStarted),
            nullServer: floorSamples.map(apiRows).map((r) => ({
              seqMs: r.get(M.seq),
              concMs: r.get(M.conc),
              seqCpuUs: r.get(M.seqCpu),
              concCpuUs: r.get(M.concCpu),
            })),
            ...(results.toJSON() as object),
          },
          null,
          2,
        ),
      );
      log(`wrote ${opt.json}`);
    }
    return status;
  } finally {
    for (const c of conns.values()) c.close();
    await nullServer?.stop();
    for (const d of daemons.values()) await d.cleanup().catch((e) => log(`cleanup: ${(e as Error).message}`));
    await removeTempDir(work);
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    log(`error: ${(err as Error).stack ?? err}`);
    process.exitCode = 1;
  },
);
