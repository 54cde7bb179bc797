// The annotations and labels containerd's CRI plugin puts on what it creates; tools (and the runc
// shim's grouping of a pod's containers into one shim) read them.
export const Annotations = {
  ContainerType: "io.kubernetes.cri.container-type",
  SandboxId: "io.kubernetes.cri.sandbox-id",
  SandboxName: "io.kubernetes.cri.sandbox-name",
  SandboxNamespace: "io.kubernetes.cri.sandbox-namespace",
  SandboxUid: "io.kubernetes.cri.sandbox-uid",
  SandboxLogDir: "io.kubernetes.cri.sandbox-log-directory",
  SandboxCpuPeriod: "io.kubernetes.cri.sandbox-cpu-period",
  SandboxCpuQuota: "io.kubernetes.cri.sandbox-cpu-quota",
  SandboxCpuShares: "io.kubernetes.cri.sandbox-cpu-shares",
  SandboxMemory: "io.kubernetes.cri.sandbox-memory",
  ContainerName: "io.kubernetes.cri.container-name",
  ImageName: "io.kubernetes.cri.image-name",
  PodAnnotations: "io.kubernetes.cri.pod-annotations",
} as const;

export const ContainerTypeSandbox = "sandbox";
export const ContainerTypeContainer = "container";

/** The label containerd's CRI plugin sets on its containers: `sandbox` or `container`. */
export const KIND_LABEL = "io.cri-containerd.kind";
/** Extensions holding the CRI record of a container in the metadata store. */
export const SANDBOX_METADATA_EXT = "io.cri-containerd.sandbox.metadata";
export const CONTAINER_METADATA_EXT = "io.cri-containerd.container.metadata";

/** CRI annotations the runtime handler lets through (`pod_annotations`/`container_annotations`). */
export function passthrough(
  annotations: Record<string, string>,
  patterns: readonly string[],
): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(annotations)) {
    for (const p of patterns) {
      if (p === k || (p.endsWith("*") && k.startsWith(p.slice(0, -1)))) {
        out[k] = v;
        break;
      }
    }
  }
  return out;
}
