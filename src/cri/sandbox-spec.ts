// The pause container's OCI spec: the image's process, the pod's namespaces (a network namespace
// made for it unless it uses the host's), hostname, sysctls, run-as user, seccomp, cgroup parent,
// a small OOM score and CPU share, and the CRI annotations the shim groups a pod's containers by.
import type { ImageConfig } from "../core/images/media.js";
import { defaultSpec } from "../core/oci/defaults.js";
import type { PodSandboxConfig } from "../gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";
import { NamespaceMode } from "../gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";
import { Annotations, ContainerTypeSandbox, passthrough } from "./annotations.js";
import { cgroupsPath, makePrivileged, removeMount, type Spec, setMount, setNamespace } from "./oci.js";
import { seccompFor } from "./seccomp.js";

/** containerd's OOM score for pause containers: the last process the kernel should pick. */
export const SANDBOX_OOM_SCORE_ADJ = -998;
/** The CPU shares of a pause container (it does nothing). */
export const SANDBOX_CPU_SHARES = 2;

export interface SandboxSpecInput {
  id: string;
  namespace: string;
  config: PodSandboxConfig;
  image: ImageConfig;
  imageName: string;
  /** The pod's network namespace file; "" with host networking. */
  netnsPath: string;
  /** The pod's /dev/shm (a tmpfs under its state dir, or the host's with host IPC). */
  shmPath: string;
  restrictOomScoreAdj: boolean;
  enableUnprivilegedPorts: boolean;
  enableUnprivilegedIcmp: boolean;
  podAnnotations: readonly string[];
  /** `/path/to/profile.json` contents for `localhost/…` seccomp profiles, read by the caller. */
  readLocalProfile: (path: string) => unknown;
}

/** The OOM score the pod asked for, raised to this process's own when restricted. */
export function clampOomScoreAdj(want: number, restrict: boolean, current: number): number {
  if (!restrict) return want;
  return Math.max(want, current);
}

export function currentOomScoreAdj(read: () => string): number {
  try {
    return Number(read().trim()) || 0;
  } catch {
    return 0;
  }
}

export function sandboxSpec(i: SandboxSpecInput, ownOomScoreAdj: number): Spec {
  const cfg = i.config;
  const sc = cfg.linux?.securityContext;
  const nsOpts = sc?.namespaceOptions;
  const spec = defaultSpec(i.namespace, i.id);
  removeMount(spec, "/run");
  const ic = i.image.config ?? {};
  const args = [...(ic.Entrypoint ?? []), ...(ic.Cmd ?? [])];
  if (args.length === 0) throw new Error(`no command specified in sandbox image ${i.imageName}`);
  spec.process.args = args;
  spec.process.env = [...(ic.Env ?? spec.process.env ?? [])];
  spec.process.cwd = ic.WorkingDir || "/";
  spec.process.noNewPrivileges = true;
  spec.root.readonly = sc?.readonlyRootfs ?? false;
  spec.hostname = cfg.hostname;

  // network: the pod's own namespace, or the host's (which also means the host's UTS)
  if (nsOpts?.network === NamespaceMode.NODE) {
    setNamespace(spec, "network", null);
    setNamespace(spec, "uts", null);
  } else {
    setNamespace(spec, "network", i.netnsPath);
  }
  if (nsOpts?.pid === NamespaceMode.NODE) setNamespace(spec, "pid", null);
  if (nsOpts?.ipc === NamespaceMode.NODE) setNamespace(spec, "ipc", null);
  setMount(spec, {
    destination: "/dev/shm",
    type: "bind",
    source: i.shmPath,
    options: ["rbind", "ro", "nosuid", "nodev", "noexec"],
  });

  // sysctls the pod asks for, plus the unprivileged port/ping switches for its own network
  const sysctl: Record<string, string> = {};
  if (nsOpts?.network !== NamespaceMode.NODE) {
    if (i.enableUnprivilegedPorts) sysctl["net.ipv4.ip_unprivileged_port_start"] = "0";
    if (i.enableUnprivilegedIcmp) sysctl["net.ipv4.ping_group_range"] = "0 2147483647";
  }
  Object.assign(sysctl, cfg.linux?.sysctls ?? {});
  if (Object.keys(sysctl).length > 0) spec.linux.sysctl = sysctl;

  // user: the pod's run-as user/group, else uid 0
  if (sc?.runAsUser) spec.process.user.uid = Number(sc.runAsUser.value);
  if (sc?.runAsGroup) spec.process.user.gid = Number(sc.runAsGroup.value);
  const groups = (sc?.supplementalGroups ?? []).map(Number);
  if (groups.length > 0) spec.process.user.additionalGids = groups;

  if (sc?.privileged) makePrivileged(spec);
  else {
    const seccomp = seccompFor(sc?.seccomp, sc?.seccompProfilePath ?? "", i.readLocalProfile);
    if (seccomp) spec.linux.seccomp = seccomp as Record<string, unknown>;
  }

  const parent = cfg.linux?.cgroupParent ?? "";
  // No parent (not a kubelet): runc's default place, as containerd leaves it.
  if (parent) spec.linux.cgroupsPath = cgroupsPath(parent, i.id);
  spec.linux.resources = {
    ...spec.linux.resources,
    cpu: { shares: SANDBOX_CPU_SHARES },
  };
  spec.process.oomScoreAdj = clampOomScoreAdj(SANDBOX_OOM_SCORE_ADJ, i.restrictOomScoreAdj, ownOomScoreAdj);

  const meta = cfg.metadata;
  spec.annotations = {
    ...passthrough(cfg.annotations, i.podAnnotations),
    [Annotations.ContainerType]: ContainerTypeSandbox,
    [Annotations.SandboxId]: i.id,
    [Annotations.SandboxNamespace]: meta?.namespace ?? "",
    [Annotations.SandboxUid]: meta?.uid ?? "",
    [Annotations.SandboxName]: meta?.name ?? "",
    [Annotations.SandboxLogDir]: cfg.logDirectory,
    [Annotations.ImageName]: i.imageName,
  };
  return spec;
}
