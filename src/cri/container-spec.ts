// An application container's OCI spec from the kubelet's ContainerConfig and the image config:
// process (command/args over entrypoint/cmd, env, cwd, user), the pod's files (/etc/hosts,
// /etc/resolv.conf, /etc/hostname, /dev/shm), CRI mounts and devices, the image's volumes,
// security context (privileged, capabilities, read-only rootfs, masked/read-only paths, seccomp,
// no_new_privs), resources, the pod's namespaces joined through the pause process, and the CRI
// annotations.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { ImageConfig } from "../core/images/media.js";
import { defaultSpec } from "../core/oci/defaults.js";
import { deviceAt, hostDevices, replaceOrAppendEnv } from "../core/oci/linux.js";
import type { ProcessUser } from "../core/oci/user.js";
import type {
  ContainerConfig,
  LinuxContainerResources,
  PodSandboxConfig,
} from "../gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";
import { MountPropagation, NamespaceMode } from "../gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";
import { Annotations, ContainerTypeContainer, passthrough } from "./annotations.js";
import {
  adjustCapabilities,
  cgroupsPath,
  makePrivileged,
  removeMount,
  type Spec,
  setCapabilities,
  setMount,
  setNamespace,
} from "./oci.js";
import { clampOomScoreAdj } from "./sandbox-spec.js";
import { seccompFor } from "./seccomp.js";

export interface SandboxView {
  id: string;
  config: PodSandboxConfig;
  /** The pause process, whose namespaces the container joins. */
  pid: number;
  /** The pod's /etc/hosts, /etc/resolv.conf, /etc/hostname. */
  hostsPath: string;
  resolvPath: string;
  hostnamePath: string;
  shmPath: string;
}

export interface ContainerSpecInput {
  id: string;
  namespace: string;
  config: ContainerConfig;
  sandbox: SandboxView;
  image: ImageConfig;
  imageName: string;
  /** The user the process runs as, resolved by the caller (it needs the rootfs). */
  user: ProcessUser;
  /** Host dirs for the image's volumes, by container path (empty with ignore_image_defined_volumes). */
  volumes: Record<string, string>;
  /** A target container's pause-like pid for NamespaceMode.TARGET. */
  targetPid?: number;
  restrictOomScoreAdj: boolean;
  ownOomScoreAdj: number;
  /** The runtime's `privileged_without_host_devices`. */
  privilegedWithoutHostDevices?: boolean;
  /** `device_ownership_from_security_context`: devices belong to the process's user. */
  deviceOwnershipFromSecurityContext?: boolean;
  containerAnnotations: readonly string[];
  unsetSeccompProfile: string;
  readLocalProfile?: (path: string) => unknown;
}

/** The process args: the kubelet's command/args over the image's entrypoint/cmd, as Docker does. */
export function processArgs(cfg: ContainerConfig, image: ImageConfig): string[] {
  const ic = image.config ?? {};
  const entrypoint = ic.Entrypoint ?? [];
  const cmd = ic.Cmd ?? [];
  if (cfg.command.length > 0) return [...cfg.command, ...cfg.args];
  if (cfg.args.length > 0) return [...entrypoint, ...cfg.args];
  return [...entrypoint, ...cmd];
}

/** The user string to resolve against the image rootfs ("" means the image's default). */
export function userString(cfg: ContainerConfig, image: ImageConfig): string {
  const sc = cfg.linux?.securityContext;
  if (sc?.runAsUser) {
    const uid = String(sc.runAsUser.value);
    return sc.runAsGroup ? `${uid}:${sc.runAsGroup.value}` : uid;
  }
  if (sc?.runAsUsername)
    return sc.runAsGroup ? `${sc.runAsUsername}:${sc.runAsGroup.value}` : sc.runAsUsername;
  const u = image.config?.User ?? "";
  if (u && sc?.runAsGroup) return `${u.split(":")[0]}:${sc.runAsGroup.value}`;
  return u;
}

const nsPath = (pid: number, type: string) => `/proc/${pid}/ns/${type}`;

const propagationOption = (p: MountPropagation): string => {
  switch (p) {
    case MountPropagation.PROPAGATION_HOST_TO_CONTAINER:
      return "rslave";
    case MountPropagation.PROPAGATION_BIDIRECTIONAL:
      return "rshared";
    default:
      return "rprivate";
  }
};

/** Linux resources from the CRI's LinuxContainerResources (a zero value means unset). */
export function resourcesFrom(r: LinuxContainerResources | undefined): {
  cpu?: { shares?: number; quota?: number; period?: number; cpus?: string; mems?: string };
  memory?: { limit?: number; swap?: number };
  hugepageLimits?: { pageSize: string; limit: number }[];
  unified?: Record<string, string>;
} {
  if (!r) return {};
  const cpu: { shares?: number; quota?: number; period?: number; cpus?: string; mems?: string } = {};
  if (r.cpuShares) cpu.shares = Number(r.cpuShares);
  if (r.cpuQuota) cpu.quota = Number(r.cpuQuota);
  if (r.cpuPeriod) cpu.period = Number(r.cpuPeriod);
  if (r.cpusetCpus) cpu.cpus = r.cpusetCpus;
  if (r.cpusetMems) cpu.mems = r.cpusetMems;
  const out: ReturnType<typeof resourcesFrom> = {};
  if (Object.keys(cpu).length > 0) out.cpu = cpu;
  if (r.memoryLimitInBytes) {
    out.memory = { limit: Number(r.memoryLimitInBytes) };
    if (r.memorySwapLimitInBytes) out.memory.swap = Number(r.memorySwapLimitInBytes);
  }
  if (r.hugepageLimits.length > 0)
    out.hugepageLimits = r.hugepageLimits.map((h) => ({ pageSize: h.pageSize, limit: Number(h.limit) }));
  if (Object.keys(r.unified).length > 0) out.unified = { ...r.unified };
  return out;
}

export function containerSpec(i: ContainerSpecInput): Spec {
  const cfg = i.config;
  const sc = cfg.linux?.securityContext;
  const podCfg = i.sandbox.config;
  const podNs = podCfg.linux?.securityContext?.namespaceOptions;
  const spec = defaultSpec(i.namespace, i.id);
  removeMount(spec, "/run");
  const ic = i.image.config ?? {};

  const args = processArgs(cfg, i.image);
  if (args.length === 0) throw new Error(`no command specified`);
  spec.process.args = args;
  spec.process.terminal = cfg.tty;
  spec.process.cwd = cfg.workingDir || ic.WorkingDir || "/";
  let env = replaceOrAppendEnv(spec.process.env ?? [], ic.Env ?? []);
  // the pod's hostname: the container shares the pause container's UTS namespace, so it cannot
  // set one of its own; HOSTNAME tells programs that look
  const hostname = podCfg.hostname;
  if (hostname) env = replaceOrAppendEnv(env, [`HOSTNAME=${hostname}`]);
  env = replaceOrAppendEnv(
    env,
    cfg.envs.map((e) => `${e.key}=${e.value}`),
  );
  spec.process.env = env;
  spec.process.user = { ...i.user };
  const extra = (sc?.supplementalGroups ?? []).map(Number);
  if (extra.length > 0) {
    const gids = new Set([...(spec.process.user.additionalGids ?? []), ...extra]);
    spec.process.user.additionalGids = [...gids];
  }
  spec.root.readonly = sc?.readonlyRootfs ?? false;

  // the pod's files, then the kubelet's mounts (which win on the same destination)
  const hostIpc = podNs?.ipc === NamespaceMode.NODE;
  setMount(spec, {
    destination: "/etc/hostname",
    type: "bind",
    source: i.sandbox.hostnamePath,
    options: ["rbind", "rprivate", "rw"],
  });
  setMount(spec, {
    destination: "/etc/hosts",
    type: "bind",
    source: i.sandbox.hostsPath,
    options: ["rbind", "rprivate", "rw"],
  });
  setMount(spec, {
    destination: "/etc/resolv.conf",
    type: "bind",
    source: i.sandbox.resolvPath,
    options: ["rbind", "rprivate", "rw"],
  });
  setMount(spec, {
    destination: "/dev/shm",
    type: "bind",
    source: hostIpc ? "/dev/shm" : i.sandbox.shmPath,
    options: ["rbind", "rprivate", "rw"],
  });
  for (const [dest, src] of Object.entries(i.volumes))
    setMount(spec, { destination: dest, type: "bind", source: src, options: ["rbind", "rprivate", "rw"] });
  for (const m of cfg.mounts) {
    const opts = ["rbind", propagationOption(m.propagation), m.readonly ? "ro" : "rw"];
    setMount(spec, { destination: m.containerPath, type: "bind", source: m.hostPath, options: opts });
  }
  if (cfg.mounts.some((m) => m.propagation !== MountPropagation.PROPAGATION_PRIVATE))
    spec.linux.rootfsPropagation = cfg.mounts.some(
      (m) => m.propagation === MountPropagation.PROPAGATION_BIDIRECTIONAL,
    )
      ? "rshared"
      : "rslave";

  // namespaces: the pod's network, IPC and UTS through the pause process; PID per mode
  const pausePid = i.sandbox.pid;
  const nsOpts = sc?.namespaceOptions;
  if (podNs?.network === NamespaceMode.NODE) {
    setNamespace(spec, "network", null);
    setNamespace(spec, "uts", null);
  } else {
    setNamespace(spec, "network", nsPath(pausePid, "net"));
    setNamespace(spec, "uts", nsPath(pausePid, "uts"));
  }
  if (hostIpc) setNamespace(spec, "ipc", null);
  else setNamespace(spec, "ipc", nsPath(pausePid, "ipc"));
  switch (nsOpts?.pid ?? NamespaceMode.POD) {
    case NamespaceMode.NODE:
      setNamespace(spec, "pid", null);
      break;
    case NamespaceMode.POD:
      setNamespace(spec, "pid", nsPath(pausePid, "pid"));
      break;
    case NamespaceMode.TARGET:
      if (!i.targetPid)
        throw new Error(`target container ${JSON.stringify(nsOpts?.targetId)} is not running`);
      setNamespace(spec, "pid", nsPath(i.targetPid, "pid"));
      break;
    default:
      setNamespace(spec, "pid");
  }

  // security
  if (sc?.privileged) {
    if (!podCfg.linux?.securityContext?.privileged)
      throw new Error("no privileged container allowed in sandbox");
    makePrivileged(spec);
    if (!i.privilegedWithoutHostDevices) spec.linux.devices = hostDevices();
  } else {
    const caps = adjustCapabilities(
      spec.process.capabilities?.bounding ?? [],
      sc?.capabilities?.addCapabilities ?? [],
      sc?.capabilities?.dropCapabilities ?? [],
    );
    setCapabilities(spec, caps);
    if ((sc?.maskedPaths ?? []).length > 0) spec.linux.maskedPaths = [...(sc?.maskedPaths ?? [])];
    if ((sc?.readonlyPaths ?? []).length > 0) spec.linux.readonlyPaths = [...(sc?.readonlyPaths ?? [])];
    const seccomp = seccompFor(
      sc?.seccomp,
      sc?.seccompProfilePath ?? "",
      i.readLocalProfile,
      caps,
      i.unsetSeccompProfile,
    );
    if (seccomp) spec.linux.seccomp = seccomp as Record<string, unknown>;
  }
  spec.process.noNewPrivileges = sc?.noNewPrivs ?? false;
  for (const d of cfg.devices) {
    const dev = deviceAt(d.hostPath);
    if (!dev) throw new Error(`failed to add device ${JSON.stringify(d.hostPath)}: not a device node`);
    spec.linux.devices = [
      ...(spec.linux.devices ?? []).filter((x) => x.path !== d.containerPath),
      {
        ...dev,
        path: d.containerPath,
        ...(i.deviceOwnershipFromSecurityContext ? { uid: i.user.uid, gid: i.user.gid } : {}),
      },
    ];
    spec.linux.resources?.devices?.push({
      allow: true,
      type: dev.type,
      major: dev.major,
      minor: dev.minor,
      access: d.permissions || "rwm",
    });
  }

  // resources and cgroup
  const res = resourcesFrom(cfg.linux?.resources);
  spec.linux.resources = { ...spec.linux.resources, ...res } as typeof spec.linux.resources;
  const oom = Number(cfg.linux?.resources?.oomScoreAdj ?? 0n);
  if (oom !== 0 || i.restrictOomScoreAdj)
    spec.process.oomScoreAdj = clampOomScoreAdj(oom, i.restrictOomScoreAdj, i.ownOomScoreAdj);
  const parent = podCfg.linux?.cgroupParent ?? "";
  if (parent) spec.linux.cgroupsPath = cgroupsPath(parent, i.id);

  const meta = podCfg.metadata;
  spec.annotations = {
    ...passthrough(cfg.annotations, i.containerAnnotations),
    ...passthrough(podCfg.annotations, i.containerAnnotations),
    [Annotations.ContainerType]: ContainerTypeContainer,
    [Annotations.SandboxId]: i.sandbox.id,
    [Annotations.SandboxNamespace]: meta?.namespace ?? "",
    [Annotations.SandboxUid]: meta?.uid ?? "",
    [Annotations.SandboxName]: meta?.name ?? "",
    [Annotations.ContainerName]: cfg.metadata?.name ?? "",
    [Annotations.ImageName]: i.imageName,
  };
  return spec;
}

/** Host dirs for the image's declared volumes, under the container's root dir. */
export function imageVolumes(
  image: ImageConfig,
  containerRoot: string,
  ignore: boolean,
): Record<string, string> {
  if (ignore) return {};
  const out: Record<string, string> = {};
  let n = 0;
  for (const dest of Object.keys(image.config?.Volumes ?? {}))
    out[dest] = join(containerRoot, "volumes", String(n++));
  return out;
}

/** Whether the hugetlb cgroup controller exists (v1 hierarchy, or listed in v2's controllers). */
function hugetlbAvailable(): boolean {
  if (existsSync("/sys/fs/cgroup/hugetlb")) return true;
  try {
    return readFileSync("/sys/fs/cgroup/cgroup.controllers", "utf8").split(/\s+/).includes("hugetlb");
  } catch {
    return false;
  }
}

/**
 * The cgroup switches of the CRI config: `disable_cgroup` leaves cgroups to the runtime's default
 * (no path, no limits); hugepage limits are dropped when `disable_hugetlb_controller` is set, or
 * when the controller is missing and `tolerate_missing_hugetlb_controller` allows going on without it.
 */
export function applyCgroupConfig(
  spec: Spec,
  cfg: { disableCgroup: boolean; disableHugetlb: boolean; tolerateMissingHugetlb: boolean },
): void {
  if (cfg.disableCgroup) {
    spec.linux.cgroupsPath = "";
    spec.linux.resources = undefined;
    return;
  }
  const r = spec.linux.resources as { hugepageLimits?: unknown[] } | undefined;
  if (r?.hugepageLimits && (cfg.disableHugetlb || (cfg.tolerateMissingHugetlb && !hugetlbAvailable())))
    r.hugepageLimits = undefined;
}
