// Seccomp for CRI containers: `runtime/default` (and the deprecated `docker/default`), `unconfined`,
// and `localhost/<path>` profiles read from the node.
//
// berth's runtime/default profile is written as a deny list: every system call is allowed except
// the ones the usual default profile (Docker's, which containerd ships) leaves out for an
// unprivileged container: kernel keyring, module loading, clock setting, mounts and namespace
// changes, tracing other processes, reboot, swap, and obsolete calls. Calls the usual profile
// grants along with a capability are let through when the container has that capability.
import { readFileSync } from "node:fs";
import type { SecurityProfile } from "../gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";
import { SecurityProfile_ProfileType } from "../gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";

const EPERM = 1;

/** Denied unless the container holds the capability named. */
const DENIED: Record<string, string | undefined> = {
  acct: "CAP_SYS_PACCT",
  add_key: undefined,
  bpf: "CAP_SYS_ADMIN",
  clock_adjtime: "CAP_SYS_TIME",
  clock_settime: "CAP_SYS_TIME",
  create_module: undefined,
  delete_module: "CAP_SYS_MODULE",
  finit_module: "CAP_SYS_MODULE",
  fsconfig: "CAP_SYS_ADMIN",
  fsmount: "CAP_SYS_ADMIN",
  fsopen: "CAP_SYS_ADMIN",
  fspick: "CAP_SYS_ADMIN",
  get_kernel_syms: undefined,
  get_mempolicy: "CAP_SYS_NICE",
  init_module: "CAP_SYS_MODULE",
  ioperm: "CAP_SYS_RAWIO",
  iopl: "CAP_SYS_RAWIO",
  kcmp: "CAP_SYS_PTRACE",
  kexec_file_load: "CAP_SYS_BOOT",
  kexec_load: "CAP_SYS_BOOT",
  keyctl: undefined,
  lookup_dcookie: "CAP_SYS_ADMIN",
  mbind: "CAP_SYS_NICE",
  mount: "CAP_SYS_ADMIN",
  mount_setattr: "CAP_SYS_ADMIN",
  move_mount: "CAP_SYS_ADMIN",
  move_pages: "CAP_SYS_NICE",
  name_to_handle_at: "CAP_SYS_ADMIN",
  nfsservctl: undefined,
  open_by_handle_at: "CAP_DAC_READ_SEARCH",
  open_tree: "CAP_SYS_ADMIN",
  perf_event_open: "CAP_SYS_ADMIN",
  pivot_root: "CAP_SYS_ADMIN",
  process_vm_readv: "CAP_SYS_PTRACE",
  process_vm_writev: "CAP_SYS_PTRACE",
  ptrace: "CAP_SYS_PTRACE",
  query_module: undefined,
  quotactl: "CAP_SYS_ADMIN",
  reboot: "CAP_SYS_BOOT",
  request_key: undefined,
  set_mempolicy: "CAP_SYS_NICE",
  setns: "CAP_SYS_ADMIN",
  settimeofday: "CAP_SYS_TIME",
  stime: "CAP_SYS_TIME",
  swapoff: "CAP_SYS_ADMIN",
  swapon: "CAP_SYS_ADMIN",
  sysfs: undefined,
  _sysctl: undefined,
  umount: "CAP_SYS_ADMIN",
  umount2: "CAP_SYS_ADMIN",
  unshare: "CAP_SYS_ADMIN",
  uselib: undefined,
  userfaultfd: undefined,
  ustat: undefined,
  vm86: undefined,
  vm86old: undefined,
};

const ARCHES: Record<string, string[]> = {
  x64: ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
  arm64: ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
};

/** berth's runtime/default profile for a container holding `caps`. */
export function defaultSeccompProfile(caps: readonly string[] = []): Record<string, unknown> {
  const denied = Object.entries(DENIED)
    .filter(([, cap]) => cap === undefined || !caps.includes(cap))
    .map(([name]) => name)
    .sort();
  return {
    defaultAction: "SCMP_ACT_ALLOW",
    architectures: ARCHES[process.arch] ?? [],
    syscalls: [{ names: denied, action: "SCMP_ACT_ERRNO", errnoRet: EPERM }],
  };
}

const readJsonFile = (p: string): unknown => JSON.parse(readFileSync(p, "utf8"));

/**
 * The seccomp section for a container, from the CRI SecurityProfile (or the deprecated
 * `seccomp_profile_path` string); undefined means unconfined.
 */
export function seccompFor(
  profile: SecurityProfile | undefined,
  legacyPath: string,
  readLocal: (path: string) => unknown = readJsonFile,
  caps: readonly string[] = [],
  unsetDefault = "",
): unknown {
  if (profile) {
    switch (profile.profileType) {
      case SecurityProfile_ProfileType.RuntimeDefault:
        return defaultSeccompProfile(caps);
      case SecurityProfile_ProfileType.Unconfined:
        return undefined;
      case SecurityProfile_ProfileType.Localhost:
        return readLocal(profile.localhostRef);
    }
  }
  const p = legacyPath || unsetDefault;
  if (p === "" || p === "unconfined") return undefined;
  if (p === "runtime/default" || p === "docker/default") return defaultSeccompProfile(caps);
  if (p.startsWith("localhost/")) return readLocal(p.slice("localhost/".length));
  throw new Error(`unsupported seccomp profile ${JSON.stringify(p)}`);
}
