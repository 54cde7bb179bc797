// What the pod and container halves of the CRI RuntimeService share: the records, the name
// reservations, the CNI manager, the open log/stdio pipes of running containers, and the
// lifecycle steps both halves take (a container's exit, stop and removal; a pause container's
// exit). Built once per CriDeps; on first use it reloads what survived a restart.

import { readFileSync } from "node:fs";
import type { Socket } from "node:net";
import { join } from "node:path";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { BerthError, isNotFound } from "../base/errdefs.js";
import { type FifoReader, type FifoSet, removeFifoSet } from "../core/cio/fifo.js";
import { CniManager } from "../core/cni/manager.js";
import type { Container } from "../core/containers/store.js";
import { SPEC_TYPE_URL } from "../core/oci/spec.js";
import type { Task } from "../core/runtime/task.js";
import { TaskOOMSchema } from "../gen/containerd/events/task_pb.js";
import { OptionsSchema } from "../gen/containerd/runc/v1/oci_pb.js";
import { CONTAINER_METADATA_EXT, KIND_LABEL, SANDBOX_METADATA_EXT } from "./annotations.js";
import type { CriDeps } from "./context.js";
import type { CriLogFile } from "./logs.js";
import { containerRequest, NameIndex, sandboxRequest } from "./naming.js";
import { currentOomScoreAdj } from "./sandbox-spec.js";
import {
  type ContainerRecord,
  CriDirs,
  CriStore,
  decodeContainer,
  decodeSandbox,
  nowNs,
  type SandboxRecord,
} from "./store.js";

/** What a running container's stdio is wired to here. */
export interface ContainerIO {
  fifos: FifoSet;
  readers: FifoReader[];
  /**
   * The write end of a `stdin: true` container's stdin FIFO, held for the container's life so the
   * process never sees end-of-file between attachers; attach writes into it (and with
   * `stdin_once`, an attacher's end closes it).
   */
  stdin?: Socket;
  log?: CriLogFile;
  /** Resolves when both output streams reached their end. */
  drained: Promise<void>;
}

export interface RuntimeChoice {
  handler: string;
  type: string;
  options?: { typeUrl: string; value: Uint8Array };
  podAnnotations: string[];
  containerAnnotations: string[];
  privilegedWithoutHostDevices: boolean;
}

export interface CriState {
  deps: CriDeps;
  store: CriStore;
  dirs: CriDirs;
  sandboxNames: NameIndex;
  containerNames: NameIndex;
  cni: CniManager;
  io: Map<string, ContainerIO>;
  /** Containers the kernel OOM-killed a process of (from /tasks/oom). */
  oomKilled: Set<string>;
  /** Background exit handling per container/sandbox id, so stop can wait for it. */
  exits: Map<string, Promise<void>>;
  ownOomScoreAdj: number;
  /** Resolves once the records of a previous run are loaded. */
  ready: Promise<void>;
}

const states = new WeakMap<CriDeps, CriState>();

export function criState(deps: CriDeps): CriState {
  const st = states.get(deps);
  if (st) return st;
  const cfg = deps.config;
  const cni = new CniManager({
    binDirs: cfg.cni.bin_dir.split(":").filter((d) => d !== ""),
    confDir: cfg.cni.conf_dir,
    maxConfNum: cfg.cni.max_conf_num,
    cacheDir: join(deps.rootDir, "cni"),
    confTemplate: cfg.cni.conf_template,
    log: deps.log,
  });
  const s: CriState = {
    deps,
    store: new CriStore(),
    dirs: new CriDirs(deps.rootDir, deps.stateDir),
    sandboxNames: new NameIndex("sandbox"),
    containerNames: new NameIndex("container"),
    cni,
    io: new Map(),
    oomKilled: new Set(),
    exits: new Map(),
    ownOomScoreAdj: currentOomScoreAdj(() => readFileSync("/proc/self/oom_score_adj", "utf8")),
    ready: Promise.resolve(),
  };
  states.set(deps, s);
  // the network configs are loaded before recovery tears down or checks any pod network
  s.ready = cni
    .reload()
    .then(() => recover(s))
    .catch((err) => deps.log.error("CRI: cannot recover state", { error: String(err) }));
  watchOom(s);
  return s;
}

function watchOom(st: CriState): void {
  const ac = new AbortController();
  st.deps.onClose(() => ac.abort());
  void (async () => {
    const sub = st.deps.events.subscribe(
      [`topic=="/tasks/oom",namespace==${JSON.stringify(st.deps.namespace)}`],
      ac.signal,
    );
    for await (const env of sub) {
      try {
        if (!env.event) continue;
        const ev = fromBinary(TaskOOMSchema, env.event.value);
        st.oomKilled.add(ev.containerId);
      } catch {
        // an event we cannot read says nothing about OOM
      }
    }
  })();
}

/** The runtime for a handler: `runtimes.<handler>`, the default runtime for "". */
export function runtimeFor(deps: CriDeps, handler: string): RuntimeChoice {
  const c = deps.config.containerd;
  const name = handler || c.default_runtime_name;
  const r = c.runtimes[name];
  if (!r) throw new BerthError("not found", `no runtime for ${JSON.stringify(name)} is configured`);
  const type = r.runtime_type || "io.containerd.runc.v2";
  const o = (r.options ?? {}) as Record<string, unknown>;
  let options: RuntimeChoice["options"];
  const systemdCgroup = o.SystemdCgroup === true || deps.config.systemd_cgroup === true;
  if (type === "io.containerd.runc.v2" || type === "io.containerd.runc.v1") {
    const msg = create(OptionsSchema, {
      noPivotRoot: o.NoPivotRoot === true,
      noNewKeyring: o.NoNewKeyring === true,
      shimCgroup: String(o.ShimCgroup ?? ""),
      ioUid: Number(o.IoUid ?? 0),
      ioGid: Number(o.IoGid ?? 0),
      binaryName: String(o.BinaryName ?? ""),
      root: String(o.Root ?? ""),
      systemdCgroup,
      criuImagePath: String(o.CriuImagePath ?? ""),
      criuWorkPath: String(o.CriuWorkPath ?? ""),
    });
    options = { typeUrl: "containerd.runc.v1.Options", value: toBinary(OptionsSchema, msg) };
  }
  return {
    handler: name,
    type,
    options,
    podAnnotations: r.pod_annotations ?? [],
    containerAnnotations: r.container_annotations ?? [],
    privilegedWithoutHostDevices: r.privileged_without_host_devices === true,
  };
}

export const specAny = (spec: object) => ({
  typeUrl: SPEC_TYPE_URL,
  value: new Uint8Array(Buffer.from(JSON.stringify(spec))),
});

export function taskOf(st: CriState, id: string): Task | undefined {
  try {
    return st.deps.taskManager.get(st.deps.namespace, id);
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
}

/** cgroup v1's memory.oom_control says the kernel killed a process in the cgroup. */
function cgroupSawOom(cgroupsPath: string | undefined): boolean {
  if (!cgroupsPath || cgroupsPath.includes(":")) return false;
  for (const f of [
    join("/sys/fs/cgroup/memory", cgroupsPath, "memory.oom_control"),
    join("/sys/fs/cgroup", cgroupsPath, "memory.events"),
  ]) {
    try {
      const m = /oom_kill (\d+)/.exec(readFileSync(f, "utf8"));
      if (m && Number(m[1]) > 0) return true;
    } catch {
      // no such controller file
    }
  }
  return false;
}

function specOf(st: CriState, id: string): { linux?: { cgroupsPath?: string } } | undefined {
  try {
    const c = st.deps.containers.get(st.deps.namespace, id);
    return c.spec ? JSON.parse(Buffer.from(c.spec.value).toString("utf8")) : undefined;
  } catch {
    return undefined;
  }
}

/** Close a container's stdio pipes and log once its output drained (or after a grace period). */
async function closeIO(st: CriState, id: string): Promise<void> {
  const io = st.io.get(id);
  if (!io) return;
  st.io.delete(id);
  await Promise.race([io.drained, new Promise((r) => setTimeout(r, 2000).unref())]);
  for (const r of io.readers) r.close();
  io.stdin?.destroy();
  io.log?.close();
  removeFifoSet(io.fifos);
}

/**
 * A container's init process exited: record how, delete its task (the shim lets go of the
 * rootfs), close its pipes. Safe to call twice (the second finds no task).
 */
export async function containerExited(
  st: CriState,
  c: ContainerRecord,
  exitCode: number,
  finishedAt: bigint,
): Promise<void> {
  const task = taskOf(st, c.id);
  // the cgroup is read before the task's deletion removes it
  const oom = st.oomKilled.has(c.id) || cgroupSawOom(specOf(st, c.id)?.linux?.cgroupsPath);
  // what the container wrote last is in its log before anyone can see it exited
  const io = st.io.get(c.id);
  if (io) await Promise.race([io.drained, new Promise((r) => setTimeout(r, 2000).unref())]);
  if (c.status.state !== "exited") {
    c.status = {
      ...c.status,
      state: "exited",
      pid: 0,
      exitCode,
      finishedAt: finishedAt > 0n ? finishedAt : nowNs(),
      reason: oom ? "OOMKilled" : exitCode === 0 ? "Completed" : "Error",
    };
    st.oomKilled.delete(c.id);
    writeContainerStatus(st, c);
  }
  if (task) {
    try {
      await task.delete();
    } catch (err) {
      if (!isNotFound(err))
        st.deps.log.warn("CRI: cannot delete exited container's task", { id: c.id, error: String(err) });
    }
  }
  await closeIO(st, c.id);
}

export function writeContainerStatus(st: CriState, c: ContainerRecord): void {
  try {
    st.dirs.writeContainerStatus(c.id, c.status);
  } catch (err) {
    st.deps.log.warn("CRI: cannot write container status", { id: c.id, error: String(err) });
  }
}

export function writeSandboxStatus(st: CriState, s: SandboxRecord): void {
  try {
    st.dirs.writeSandboxStatus(s.id, s.status);
  } catch (err) {
    st.deps.log.warn("CRI: cannot write sandbox status", { id: s.id, error: String(err) });
  }
}

/** Follow a running container's init process until it exits. */
export function watchContainer(st: CriState, c: ContainerRecord, task: Task): void {
  const p = (async () => {
    try {
      const e = await task.wait();
      await containerExited(st, c, e.exitStatus, e.exitedAtNs ?? 0n);
    } catch (err) {
      if (isNotFound(err)) return;
      st.deps.log.warn("CRI: waiting for container failed", { id: c.id, error: String(err) });
      // the shim went away: the task manager reports that as an exit too; record it here
      await containerExited(st, c, 255, 0n).catch(() => {});
    }
  })();
  st.exits.set(c.id, p);
  void p.finally(() => {
    if (st.exits.get(c.id) === p) st.exits.delete(c.id);
  });
}

/** Follow a pause container: when it exits the pod is no longer ready. */
export function watchSandbox(st: CriState, s: SandboxRecord, task: Task): void {
  const p = (async () => {
    try {
      const e = await task.wait();
      s.status = {
        ...s.status,
        state: "notready",
        pid: 0,
        exitCode: e.exitStatus,
        exitedAt: String(e.exitedAtNs ?? nowNs()),
      };
      writeSandboxStatus(st, s);
    } catch (err) {
      if (isNotFound(err)) return;
      s.status = { ...s.status, state: "notready", pid: 0, exitCode: 255, exitedAt: String(nowNs()) };
      writeSandboxStatus(st, s);
    }
  })();
  st.exits.set(s.id, p);
  void p.finally(() => {
    if (st.exits.get(s.id) === p) st.exits.delete(s.id);
  });
}

const signalNumber = (name: string): number => {
  const n = name.toUpperCase().replace(/^SIG/, "");
  const table: Record<string, number> = {
    HUP: 1,
    INT: 2,
    QUIT: 3,
    KILL: 9,
    USR1: 10,
    USR2: 12,
    TERM: 15,
    STOP: 19,
    CONT: 18,
    WINCH: 28,
    PWR: 30,
  };
  if (/^\d+$/.test(n)) return Number(n);
  const v = table[n];
  if (v === undefined)
    throw new BerthError("invalid argument", `failed to parse signal ${JSON.stringify(name)}`);
  return v;
};

/**
 * Stop a running container: its stop signal, SIGKILL once `timeoutSec` passed (at once when 0),
 * then wait until its exit is recorded. A container that is not running is left as it is.
 */
export async function stopContainer(st: CriState, c: ContainerRecord, timeoutSec: number): Promise<void> {
  if (c.status.state !== "running" && c.status.state !== "unknown") return;
  const task = taskOf(st, c.id);
  if (!task) {
    // its exit is being recorded, or it was lost with its shim
    const pending = st.exits.get(c.id);
    if (pending) await pending;
    else await containerExited(st, c, 255, 0n);
    return;
  }
  const exited = st.exits.get(c.id) ?? task.wait().then(() => {});
  const ignoreGone = (err: unknown) => {
    if (!isNotFound(err) && !String(err).includes("process already finished")) throw err;
  };
  if (timeoutSec > 0) {
    const sig = signalNumber(c.stopSignal || "SIGTERM");
    await task.kill(sig).catch(ignoreGone);
    const done = await Promise.race([
      exited.then(() => true),
      new Promise<boolean>((r) => setTimeout(() => r(false), timeoutSec * 1000).unref()),
    ]);
    if (done) {
      await st.exits.get(c.id);
      return;
    }
  }
  await task.kill(9, { all: true }).catch(ignoreGone);
  await exited.catch(() => {});
  const pending = st.exits.get(c.id);
  if (pending) await pending;
  else if ((c.status.state as string) !== "exited") {
    const e = await task.wait().catch(() => ({ exitStatus: 137, exitedAtNs: nowNs() }));
    await containerExited(st, c, e.exitStatus, e.exitedAtNs ?? 0n);
  }
}

/** Remove a container (stopping it first): task, metadata record, snapshot, dirs, name. */
export async function removeContainer(st: CriState, c: ContainerRecord): Promise<void> {
  const { deps } = st;
  await stopContainer(st, c, 0);
  const task = taskOf(st, c.id);
  if (task)
    await task.delete().catch((err) => {
      if (!isNotFound(err)) throw err;
    });
  await closeIO(st, c.id);
  try {
    deps.containers.delete(deps.namespace, c.id);
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  await removeSnapshot(st, c.id);
  await st.dirs.removeContainerDirs(c.id);
  st.store.containers.delete(c.id);
  st.store.findSandbox(c.sandboxId)?.containers.delete(c.id);
  st.containerNames.release(c.name);
}

export async function removeSnapshot(st: CriState, key: string): Promise<void> {
  const sn = st.deps.snapshots.get(st.deps.config.containerd.snapshotter);
  try {
    await sn.remove(st.deps.namespace, key);
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
}

/** Reload sandboxes and containers from the metadata store and status files; follow the live ones. */
async function recover(st: CriState): Promise<void> {
  const { deps } = st;
  let all: Container[];
  try {
    all = deps.containers.list(deps.namespace);
  } catch {
    return;
  }
  for (const mc of all) {
    if (mc.labels[KIND_LABEL] !== "sandbox") continue;
    const ext = mc.extensions[SANDBOX_METADATA_EXT];
    if (!ext) continue;
    try {
      const status = st.dirs.readSandboxStatus(mc.id) ?? { state: "notready" as const, pid: 0 };
      const s = decodeSandbox(ext.value, status);
      const task = taskOf(st, s.id);
      if (task && s.status.state === "ready") {
        watchSandbox(st, s, task);
      } else if (!task && s.status.state === "ready") {
        s.status = { state: "notready", pid: 0, exitCode: 255, exitedAt: String(nowNs()) };
        writeSandboxStatus(st, s);
      }
      st.store.sandboxes.set(s.id, s);
      st.sandboxNames.reserve(s.name, s.id, sandboxRequest(s.config, s.runtimeHandler));
    } catch (err) {
      deps.log.warn("CRI: cannot load sandbox", { id: mc.id, error: String(err) });
    }
  }
  for (const mc of all) {
    if (mc.labels[KIND_LABEL] !== "container") continue;
    const ext = mc.extensions[CONTAINER_METADATA_EXT];
    if (!ext) continue;
    try {
      const status = st.dirs.readContainerStatus(mc.id) ?? {
        state: "unknown" as const,
        pid: 0,
        createdAt: 0n,
        startedAt: 0n,
        finishedAt: 0n,
        exitCode: 0,
        reason: "",
        message: "",
      };
      const c = decodeContainer(ext.value, status);
      st.store.containers.set(c.id, c);
      st.store.findSandbox(c.sandboxId)?.containers.add(c.id);
      st.containerNames.reserve(c.name, c.id, containerRequest(c.config, c.sandboxId));
      const task = taskOf(st, c.id);
      if (c.status.state === "running") {
        if (task) {
          // its output goes on being written by the shim into the FIFOs nobody reads now:
          // reattach a reader so the log keeps growing
          await reattachIO(st, c, task).catch((err) =>
            deps.log.warn("CRI: cannot reattach container output", { id: c.id, error: String(err) }),
          );
          watchContainer(st, c, task);
        } else {
          // exited while berthd was down and its shim is gone: the task manager's cleanup
          // reported the exit; what it was is no longer known here
          await containerExited(st, c, 255, 0n);
          c.status.reason = "Unknown";
          writeContainerStatus(st, c);
        }
      }
    } catch (err) {
      deps.log.warn("CRI: cannot load container", { id: mc.id, error: String(err) });
    }
  }
}

/** After a restart: read the FIFOs of a running container again into its log. */
async function reattachIO(st: CriState, c: ContainerRecord, task: Task): Promise<void> {
  const state = await task.state({ timeoutMs: 2000 });
  const { attachOutput } = await import("./container-io.js");
  await attachOutput(
    st,
    c,
    { dir: "", stdin: state.stdin, stdout: state.stdout, stderr: state.stderr },
    true,
  );
}
