// Containers of a pod: CreateContainer (spec, snapshot and metadata record; the task is made at
// start, as containerd does), StartContainer (stdio FIFOs into the CRI log, the task in the
// pod's shim), StopContainer, RemoveContainer, ListContainers, ContainerStatus,
// UpdateContainerResources, ReopenContainerLog, ExecSync and the container stats calls.
import { randomBytes } from "node:crypto";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import {
  BerthError,
  errFailedPrecondition,
  errInvalidArgument,
  errNotFound,
  isNotFound,
} from "../base/errdefs.js";
import { FifoReader, newFifoSet, removeFifoSet } from "../core/cio/fifo.js";
import { withTempMount } from "../core/mount/mount.js";
import { additionalGids, type ProcessUser, resolveUser } from "../core/oci/user.js";
import { PROCESS_SPEC_TYPE_URL } from "../core/runtime/task.js";
import {
  ContainerSchema,
  ContainerState,
  type Container as CriContainer,
  NamespaceMode,
} from "../gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";
import { CONTAINER_METADATA_EXT, KIND_LABEL } from "./annotations.js";
import { attachOutput } from "./container-io.js";
import {
  applyCgroupConfig,
  containerSpec,
  imageVolumes,
  resourcesFrom,
  userString,
} from "./container-spec.js";
import type { CriDeps, RuntimeMethods } from "./context.js";
import { EncodedItems } from "./encoded-list.js";
import { collectCapped } from "./logs.js";
import { containerName, containerRequest } from "./naming.js";
import type { Spec } from "./oci.js";
import { sandboxFiles, shmPathFor } from "./pods.js";
import { locked, matchLabels } from "./records.js";
import {
  type CriState,
  criState,
  removeContainer,
  removeSnapshot,
  runtimeFor,
  specAny,
  stopContainer,
  taskOf,
  watchContainer,
  writeContainerStatus,
} from "./state.js";
import { containerStats } from "./stats.js";
import { CONTAINER_METADATA_TYPE, type ContainerRecord, encodeContainer, nowNs } from "./store.js";

/** ExecSync output kept per stream; beyond it the output is dropped. */
export const EXEC_SYNC_MAX_OUTPUT = 16 * 1024 * 1024;

const newId = () => randomBytes(32).toString("hex");

const stateOf = (c: ContainerRecord): ContainerState => {
  switch (c.status.state) {
    case "created":
      return ContainerState.CONTAINER_CREATED;
    case "running":
      return ContainerState.CONTAINER_RUNNING;
    case "exited":
      return ContainerState.CONTAINER_EXITED;
    default:
      return ContainerState.CONTAINER_UNKNOWN;
  }
};

/** The user a container runs as, resolved against its rootfs when names or groups matter. */
async function resolveProcessUser(
  user: string,
  mounts: Parameters<typeof withTempMount>[0],
): Promise<ProcessUser> {
  if (user === "") return { uid: 0, gid: 0 };
  return withTempMount(
    mounts.map((m) => ({ ...m, options: [...m.options] })),
    async (root) => {
      const u = resolveUser(user, root);
      // groups the image lists the user in, unless a group was given explicitly
      if (user.includes(":")) return u;
      return additionalGids(user, root, u);
    },
  );
}

function specOf(st: CriState, id: string): Spec {
  const c = st.deps.containers.get(st.deps.namespace, id);
  if (!c.spec) throw errNotFound(`spec of container ${id}`);
  return JSON.parse(Buffer.from(c.spec.value).toString("utf8")) as Spec;
}

async function createContainer(
  st: CriState,
  id: string,
  name: string,
  sandboxId: string,
  cfg: NonNullable<Parameters<NonNullable<RuntimeMethods["createContainer"]>>[0]["config"]>,
): Promise<void> {
  const { deps } = st;
  const ns = deps.namespace;
  const s = st.store.sandbox(sandboxId);
  if (s.status.state !== "ready" || s.status.pid === 0)
    throw errFailedPrecondition(`sandbox container ${JSON.stringify(s.id)} is not running`);
  const imageRef = cfg.image?.image ?? "";
  const image = await deps.criImages.resolve(imageRef);
  if (!image) throw errNotFound(`failed to resolve image ${JSON.stringify(imageRef)}`);
  const runtime = runtimeFor(deps, s.runtimeHandler);
  const undo: (() => Promise<void> | void)[] = [];
  try {
    st.dirs.makeContainerDirs(id);
    undo.push(() => st.dirs.removeContainerDirs(id));
    const volumes = imageVolumes(
      image.config,
      st.dirs.containerRoot(id),
      deps.config.ignore_image_defined_volumes,
    );
    for (const dir of Object.values(volumes)) await mkdir(dir, { recursive: true, mode: 0o755 });

    const snapshotter = deps.config.containerd.snapshotter;
    const mounts = await deps.snapshots.get(snapshotter).prepare(ns, id, image.chainId);
    undo.push(() => removeSnapshot(st, id));

    const user = await resolveProcessUser(userString(cfg, image.config), mounts);
    let targetPid: number | undefined;
    const nsOpts = cfg.linux?.securityContext?.namespaceOptions;
    if (nsOpts?.pid === NamespaceMode.TARGET) {
      const target = st.store.findContainer(nsOpts.targetId);
      targetPid = target?.status.state === "running" ? target.status.pid : undefined;
    }
    const files = sandboxFiles(st, s.id);
    const spec = containerSpec({
      id,
      namespace: ns,
      config: cfg,
      sandbox: {
        id: s.id,
        config: s.config,
        pid: s.status.pid,
        hostsPath: files.hosts,
        resolvPath: files.resolv,
        hostnamePath: files.hostname,
        shmPath: shmPathFor(st, s),
      },
      image: image.config,
      imageName: imageRef,
      user,
      volumes,
      targetPid,
      restrictOomScoreAdj: deps.config.restrict_oom_score_adj,
      ownOomScoreAdj: st.ownOomScoreAdj,
      containerAnnotations: runtime.containerAnnotations,
      privilegedWithoutHostDevices: runtime.privilegedWithoutHostDevices,
      deviceOwnershipFromSecurityContext: deps.config.device_ownership_from_security_context,
      unsetSeccompProfile: deps.config.unset_seccomp_profile,
    });

    applyCgroupConfig(spec, {
      disableCgroup: deps.config.disable_cgroup,
      disableHugetlb: deps.config.disable_hugetlb_controller,
      tolerateMissingHugetlb: deps.config.tolerate_missing_hugetlb_controller,
    });
    const logPath = s.config.logDirectory && cfg.logPath ? join(s.config.logDirectory, cfg.logPath) : "";
    const rec: ContainerRecord = {
      id,
      name,
      sandboxId: s.id,
      config: cfg,
      image: imageRef,
      imageRef: image.id,
      logPath,
      stopSignal: image.config.config?.StopSignal ?? "",
      status: {
        state: "created",
        pid: 0,
        createdAt: nowNs(),
        startedAt: 0n,
        finishedAt: 0n,
        exitCode: 0,
        reason: "",
        message: "",
      },
    };
    deps.containers.create(ns, {
      id,
      labels: { ...cfg.labels, [KIND_LABEL]: "container" },
      image: image.repoTags[0] ?? imageRef,
      runtime: { name: runtime.type, options: runtime.options },
      spec: specAny(spec),
      snapshotter,
      snapshotKey: id,
      extensions: {
        [CONTAINER_METADATA_EXT]: { typeUrl: CONTAINER_METADATA_TYPE, value: encodeContainer(rec) },
      },
    });
    undo.push(() => {
      try {
        deps.containers.delete(ns, id);
      } catch (err) {
        if (!isNotFound(err)) throw err;
      }
    });
    writeContainerStatus(st, rec);
    st.store.containers.set(id, rec);
    s.containers.add(id);
  } catch (err) {
    for (const u of undo.reverse()) {
      try {
        await u();
      } catch (e) {
        deps.log.warn("CRI: cleanup after failed CreateContainer", { id, error: String(e) });
      }
    }
    throw err;
  }
}

async function startContainer(st: CriState, c: ContainerRecord): Promise<void> {
  const { deps } = st;
  const ns = deps.namespace;
  if (c.status.state !== "created")
    throw errFailedPrecondition(`container ${JSON.stringify(c.id)} is in ${c.status.state} state`);
  const s = st.store.sandbox(c.sandboxId);
  if (s.status.state !== "ready")
    throw errFailedPrecondition(`sandbox container ${JSON.stringify(s.id)} is not running`);
  const runtime = runtimeFor(deps, s.runtimeHandler);
  const spec = specOf(st, c.id);
  const mounts = await deps.snapshots.get(deps.config.containerd.snapshotter).mounts(ns, c.id);
  const fifos = newFifoSet(join(st.dirs.containerState(c.id), "io"), c.id, {
    terminal: c.config.tty,
    stdin: c.config.stdin,
  });
  const io = await attachOutput(st, c, fifos);
  try {
    const task = await deps.taskManager.create(ns, c.id, {
      spec,
      runtime: runtime.type,
      runtimeOptions: runtime.options,
      rootfs: mounts,
      stdin: fifos.stdin,
      stdout: fifos.stdout,
      stderr: fifos.stderr,
      terminal: c.config.tty,
    });
    for (const r of io.readers) r.release();
    try {
      const pid = await task.start();
      c.status = { ...c.status, state: "running", pid, startedAt: nowNs() };
      writeContainerStatus(st, c);
      watchContainer(st, c, task);
    } catch (err) {
      await task.delete().catch(() => {});
      throw err;
    }
  } catch (err) {
    for (const r of io.readers) r.close();
    io.stdin?.destroy();
    io.log?.close();
    st.io.delete(c.id);
    removeFifoSet(fifos);
    c.status = {
      ...c.status,
      state: "exited",
      exitCode: 128,
      finishedAt: nowNs(),
      reason: "StartError",
      message: (err as Error).message,
    };
    writeContainerStatus(st, c);
    throw err;
  }
}

/** Run a command in a container, collecting its output; kill it once `timeoutSec` passed. */
async function execSync(
  st: CriState,
  c: ContainerRecord,
  cmd: string[],
  timeoutSec: number,
): Promise<{ stdout: Uint8Array; stderr: Uint8Array; exitCode: number }> {
  if (c.status.state !== "running")
    throw errFailedPrecondition(`container ${JSON.stringify(c.id)} is in ${c.status.state} state`);
  if (cmd.length === 0) throw errInvalidArgument("cmd must not be empty");
  const task = taskOf(st, c.id);
  if (!task) throw errNotFound(`task ${c.id}`);
  const spec = specOf(st, c.id);
  const execId = randomBytes(16).toString("hex");
  const fifos = newFifoSet(join(st.dirs.containerState(c.id), "io"), execId, { stdin: false });
  const out = new FifoReader(fifos.stdout);
  const errR = new FifoReader(fifos.stderr);
  const outBuf = collectCapped(out.socket, EXEC_SYNC_MAX_OUTPUT);
  const errBuf = collectCapped(errR.socket, EXEC_SYNC_MAX_OUTPUT);
  try {
    const proc = await task.exec(execId, {
      spec: {
        typeUrl: PROCESS_SPEC_TYPE_URL,
        value: new Uint8Array(Buffer.from(JSON.stringify({ ...spec.process, args: cmd, terminal: false }))),
      },
      stdout: fifos.stdout,
      stderr: fifos.stderr,
    });
    try {
      // the shim opens an exec's FIFOs when it starts the process: until then the placeholder
      // writers keep the readers from seeing end-of-file
      await proc.start();
      out.release();
      errR.release();
      const ac = new AbortController();
      let timedOut = false;
      const timer =
        timeoutSec > 0
          ? setTimeout(() => {
              timedOut = true;
              void proc.kill(9).catch(() => {});
            }, timeoutSec * 1000)
          : undefined;
      let exit: { exitStatus: number };
      try {
        exit = await proc.wait({ signal: ac.signal });
      } finally {
        if (timer) clearTimeout(timer);
      }
      const drained = Promise.all([outBuf.done, errBuf.done]);
      await Promise.race([drained, new Promise((r) => setTimeout(r, 2000).unref())]);
      if (timedOut) throw new BerthError("deadline exceeded", `timeout ${timeoutSec}s exceeded`);
      out.close();
      errR.close();
      return { stdout: await outBuf.done, stderr: await errBuf.done, exitCode: exit.exitStatus };
    } finally {
      await proc.delete().catch(() => {});
    }
  } finally {
    out.close();
    errR.close();
    removeFifoSet(fifos);
  }
}

/** ListContainers' items, each encoded once per state. */
const containerItems = new EncodedItems(
  ContainerSchema,
  (c: ContainerRecord) => criContainerOf(c),
  (c) => String(stateOf(c)),
);

function criContainerOf(c: ContainerRecord): CriContainer {
  return {
    $typeName: "runtime.v1.Container",
    id: c.id,
    podSandboxId: c.sandboxId,
    metadata: c.config.metadata,
    image: c.config.image,
    imageRef: c.imageRef,
    state: stateOf(c),
    createdAt: c.status.createdAt,
    labels: c.config.labels,
    annotations: c.config.annotations,
  };
}

export function containerMethods(deps: CriDeps): RuntimeMethods {
  const st = criState(deps);
  return {
    async createContainer(req) {
      await st.ready;
      const cfg = req.config;
      if (!cfg?.metadata) throw errInvalidArgument("container config must include metadata");
      const s = st.store.sandbox(req.podSandboxId);
      const meta = s.config.metadata;
      if (!meta) throw errInvalidArgument("sandbox has no metadata");
      const name = containerName(cfg.metadata, meta);
      const id = await st.containerNames.create(name, newId(), containerRequest(cfg, s.id), (id) =>
        createContainer(st, id, name, s.id, cfg),
      );
      return { containerId: id };
    },

    async startContainer(req) {
      await st.ready;
      const c = st.store.container(req.containerId);
      await locked(c, () => startContainer(st, c));
      return {};
    },

    async stopContainer(req) {
      await st.ready;
      const c = st.store.container(req.containerId);
      await locked(c, () => stopContainer(st, c, Number(req.timeout)));
      return {};
    },

    async removeContainer(req) {
      await st.ready;
      const c = st.store.findContainer(req.containerId);
      if (!c) return {};
      await locked(c, () => removeContainer(st, c));
      return {};
    },

    async listContainers(req) {
      await st.ready;
      const f = req.filter;
      const containers: ContainerRecord[] = [];
      for (const c of st.store.containers.values()) {
        if (f?.id && !c.id.startsWith(f.id)) continue;
        if (f?.podSandboxId && !c.sandboxId.startsWith(f.podSandboxId)) continue;
        if (f?.state && stateOf(c) !== f.state.state) continue;
        if (f && !matchLabels(c.config.labels, f.labelSelector)) continue;
        containers.push(c);
      }
      return containerItems.response(containers);
    },

    async containerStatus(req) {
      await st.ready;
      const c = st.store.container(req.containerId);
      const info: Record<string, string> = {};
      if (req.verbose) {
        let spec: unknown;
        try {
          spec = specOf(st, c.id);
        } catch {
          spec = undefined;
        }
        info.info = JSON.stringify({
          sandboxID: c.sandboxId,
          pid: c.status.pid,
          removing: false,
          snapshotKey: c.id,
          snapshotter: deps.config.containerd.snapshotter,
          runtimeType: runtimeFor(deps, st.store.findSandbox(c.sandboxId)?.runtimeHandler ?? "").type,
          config: c.config.metadata,
          runtimeSpec: spec,
        });
      }
      return {
        status: {
          id: c.id,
          metadata: c.config.metadata,
          state: stateOf(c),
          createdAt: c.status.createdAt,
          startedAt: c.status.startedAt,
          finishedAt: c.status.finishedAt,
          exitCode: c.status.exitCode,
          image: c.config.image,
          imageRef: c.imageRef,
          reason: c.status.reason,
          message: c.status.message,
          labels: c.config.labels,
          annotations: c.config.annotations,
          mounts: c.config.mounts,
          logPath: c.logPath,
          resources: c.config.linux?.resources ? { linux: c.config.linux.resources } : undefined,
        },
        info,
      };
    },

    async updateContainerResources(req) {
      await st.ready;
      const c = st.store.container(req.containerId);
      const r = req.linux;
      if (!r) return {};
      await locked(c, async () => {
        const spec = specOf(st, c.id);
        spec.linux.resources = {
          ...spec.linux.resources,
          ...resourcesFrom(r),
        } as typeof spec.linux.resources;
        const task = taskOf(st, c.id);
        if (task && c.status.state === "running")
          await task.update({ resources: spec.linux.resources ?? {} });
        if (c.config.linux) c.config.linux.resources = r;
        const mc = deps.containers.get(deps.namespace, c.id);
        deps.containers.update(
          deps.namespace,
          {
            ...mc,
            spec: specAny(spec),
            extensions: {
              [CONTAINER_METADATA_EXT]: { typeUrl: CONTAINER_METADATA_TYPE, value: encodeContainer(c) },
            },
          },
          ["spec", `extensions.${CONTAINER_METADATA_EXT}`],
        );
      });
      return {};
    },

    async reopenContainerLog(req) {
      await st.ready;
      const c = st.store.container(req.containerId);
      if (c.status.state !== "running")
        throw errFailedPrecondition("can't reopen log for a non-running container");
      st.io.get(c.id)?.log?.reopen();
      return {};
    },

    async execSync(req) {
      await st.ready;
      const c = st.store.container(req.containerId);
      return execSync(st, c, req.cmd, Number(req.timeout));
    },

    async containerStats(req) {
      await st.ready;
      const c = st.store.container(req.containerId);
      return { stats: await containerStats(st, c) };
    },

    async listContainerStats(req) {
      await st.ready;
      const f = req.filter;
      const stats = [];
      for (const c of st.store.containers.values()) {
        if (c.status.state !== "running") continue;
        if (f?.id && !c.id.startsWith(f.id)) continue;
        if (f?.podSandboxId && !c.sandboxId.startsWith(f.podSandboxId)) continue;
        if (f && !matchLabels(c.config.labels, f.labelSelector)) continue;
        stats.push(await containerStats(st, c));
      }
      return { stats };
    },
  };
}
