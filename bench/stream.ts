// CRI streaming, berthd beside containerd 1.6's own CRI stream server, in one run:
//   exec round trip  — Exec RPC, then `cat` fed one line over SPDY (no TTY) until its exit status
//   port-forward     — 64 MiB from busybox httpd in the pod through one SPDY port-forward stream
// Both daemons get the same images, the same CNI conflist (their own bridge and subnet) and the
// same CRI config (bench/cri-env.ts). The clients are the project's own SPDY clients, so this also
// runs them against containerd's stream server, the Kubernetes implementation.
//
//   node dist/bench/stream.js [--reps N] [--mib M] [--only containerd|berthd]
import { randomUUID } from "node:crypto";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import type {
  ContainerConfig,
  PodSandboxConfig,
} from "../src/gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";
import { type CriClient, criClient } from "../test/helpers/cri.js";
import { type Daemon, startBerthd, startContainerd } from "../test/helpers/daemons.js";
import { type Registry, startRegistry } from "../test/helpers/registry.js";
import { spdyExec, spdyPortForward } from "../test/helpers/spdy-client.js";
import { makeTempDir, removeTempDir } from "../test/helpers/tmp.js";
import {
  type BenchImages,
  type BenchNetwork,
  criConfig,
  freeBridges,
  freeSubnets,
  pushBenchImages,
  removeNetwork,
  writeNetwork,
} from "./cri-env.js";
import { DAEMONS, type DaemonName, fmt, fmtRatio, median, nowMs, renderTable } from "./lib.js";

const { values: opt } = parseArgs({
  options: {
    reps: { type: "string", default: "20" },
    mib: { type: "string", default: "64" },
    only: { type: "string" },
  },
});
const REPS = Number(opt.reps);
const MIB = Number(opt.mib);
if (!Number.isInteger(REPS) || REPS <= 0) throw new Error(`--reps wants a positive integer, got ${opt.reps}`);
if (!Number.isInteger(MIB) || MIB <= 0) throw new Error(`--mib wants a positive integer, got ${opt.mib}`);
const WANTED: DaemonName[] = opt.only ? [opt.only as DaemonName] : [...DAEMONS];
const BB = "/bin/busybox";
const PORT = 8080;
const log = (msg: string) => process.stderr.write(`[bench] ${msg}\n`);
const call = { timeoutMs: 60_000 };

interface Subject {
  name: DaemonName;
  daemon: Daemon;
  cri: CriClient;
  net: BenchNetwork;
  pod?: string;
  server?: string;
  cat?: string;
}

function pod(dir: string): PodSandboxConfig {
  const uid = randomUUID();
  const logDirectory = path.join(dir, "logs", uid);
  mkdirSync(logDirectory, { recursive: true });
  return {
    metadata: { name: "stream", uid, namespace: "bench", attempt: 0 },
    hostname: "stream",
    logDirectory,
    linux: {},
  } as unknown as PodSandboxConfig;
}

function container(images: BenchImages, name: string, command: string[], stdin = false): ContainerConfig {
  return {
    metadata: { name, attempt: 0 },
    image: { image: images.workload },
    command,
    stdin,
    logPath: `${name}.log`,
    linux: {},
  } as unknown as ContainerConfig;
}

async function start(
  name: DaemonName,
  tmp: string,
  reg: Registry,
  images: BenchImages,
  subnet: string,
  bridge: string,
): Promise<Subject> {
  const dir = path.join(tmp, name);
  mkdirSync(dir, { recursive: true });
  const net = writeNetwork(dir, `berthstream-${name}`, bridge, subnet);
  const cfg = criConfig(reg, images, net);
  const daemon =
    name === "containerd"
      ? await startContainerd({ config: cfg, disabledPlugins: [] })
      : await startBerthd({ config: `version = 2\n\n${cfg}` });
  const s: Subject = { name, daemon, cri: criClient(daemon.address), net };
  for (const image of [images.pause, images.workload])
    await s.cri.image.pullImage({ image: { image } }, call);
  const cfgPod = pod(dir);
  s.pod = (await s.cri.runtime.runPodSandbox({ config: cfgPod }, call)).podSandboxId;
  const run = async (c: ContainerConfig) => {
    const { containerId } = await s.cri.runtime.createContainer(
      { podSandboxId: s.pod!, config: c, sandboxConfig: cfgPod },
      call,
    );
    await s.cri.runtime.startContainer({ containerId }, call);
    return containerId;
  };
  const serve = `${BB} head -c ${MIB * 1024 * 1024} /dev/zero > /tmp/big && exec ${BB} httpd -f -p ${PORT} -h /tmp`;
  s.server = await run(container(images, "server", [BB, "sh", "-c", serve]));
  s.cat = await run(container(images, "cat", [BB, "sleep", "100000"]));
  return s;
}

async function stop(s: Subject): Promise<void> {
  if (s.pod) {
    await s.cri.runtime.stopPodSandbox({ podSandboxId: s.pod }, call).catch(() => {});
    await s.cri.runtime.removePodSandbox({ podSandboxId: s.pod }, call).catch(() => {});
  }
  await s.daemon.cleanup();
  removeNetwork(s.net);
}

/** Exec RPC plus the SPDY exchange: one line through `cat`, until the exit status came. */
async function execRoundTrip(s: Subject): Promise<number> {
  const t = nowMs();
  const { url } = await s.cri.runtime.exec(
    { containerId: s.cat!, cmd: [BB, "cat"], stdin: true, stdout: true, stderr: true },
    call,
  );
  const r = await spdyExec(url, { stdin: "hello\n", stderr: true });
  if (r.stdout !== "hello\n") throw new Error(`${s.name}: exec echoed ${JSON.stringify(r.stdout)}`);
  return nowMs() - t;
}

/** MiB/s of one GET of the pod's 64 MiB file through one port-forward stream. */
async function forwardThroughput(s: Subject): Promise<number> {
  const { url } = await s.cri.runtime.portForward({ podSandboxId: s.pod!, port: [PORT] }, call);
  const pf = await spdyPortForward(url);
  try {
    const t = nowMs();
    const conn = pf.connect(PORT);
    let bytes = 0;
    const done = new Promise<void>((resolve, reject) => {
      conn.data.on("data", (b: Buffer) => {
        bytes += b.length;
      });
      conn.data.once("end", () => resolve());
      conn.data.once("close", () => resolve());
      conn.data.once("error", reject);
    });
    conn.data.write("GET /big HTTP/1.0\r\n\r\n");
    await done;
    const ms = nowMs() - t;
    if (bytes < MIB * 1024 * 1024) throw new Error(`${s.name}: port-forward brought ${bytes} bytes`);
    return MIB / (ms / 1000);
  } finally {
    pf.close();
  }
}

async function main(): Promise<void> {
  const tmp = await makeTempDir("bench-stream");
  const reg = await startRegistry();
  const subjects: Subject[] = [];
  const results: Record<string, { exec: number[]; pf: number[] }> = {};
  try {
    const images = await pushBenchImages(reg, 0);
    const subnets = freeSubnets(2);
    const bridges = freeBridges(2);
    for (const [i, name] of WANTED.entries()) {
      subjects.push(await start(name, tmp, reg, images, subnets[i]!, bridges[i]!));
      results[name] = { exec: [], pf: [] };
      log(`${name}: pod and containers running`);
    }
    // warm-up, then alternate the daemons rep by rep
    for (const s of subjects) await execRoundTrip(s);
    for (let rep = 0; rep < REPS; rep++)
      for (const s of subjects) results[s.name]!.exec.push(await execRoundTrip(s));
    for (let rep = 0; rep < Math.max(3, Math.ceil(REPS / 5)); rep++)
      for (const s of subjects) results[s.name]!.pf.push(await forwardThroughput(s));
  } finally {
    for (const s of subjects) await stop(s).catch((e) => log(`cleanup ${s.name}: ${(e as Error).message}`));
    await reg.cleanup();
    await removeTempDir(tmp);
  }
  const m = (d: DaemonName, k: "exec" | "pf") => median(results[d]?.[k] ?? []);
  const rows = [
    ["exec round trip (ms, median)", "exec"],
    [`port-forward ${MIB} MiB (MiB/s, median)`, "pf"],
  ] as const;
  process.stdout.write(
    `\nCRI streaming — berthd vs containerd ${REPS} reps; exec: lower is better, port-forward: higher is better\n\n`,
  );
  process.stdout.write(
    renderTable(
      ["measure", "containerd", "berthd", "berthd/containerd"],
      rows.map(([label, k]) => [
        label,
        fmt(m("containerd", k)),
        fmt(m("berthd", k)),
        fmtRatio(m("berthd", k), m("containerd", k)),
      ]),
    ),
  );
}

await main();
