// The OCI runtime spec (config.json) as berth writes it: the subset of runtime-spec 1.0.2 fields
// the spec options set, with the spec's JSON names. Fields berth passes through without looking
// inside (seccomp) are kept as plain JSON.
import type { LinuxDevice } from "./linux.js";
import type { ProcessUser } from "./user.js";

export type SpecUser = ProcessUser;

export interface SpecMount {
  destination: string;
  type?: string;
  source?: string;
  options?: string[];
}

export type CapabilitySet = "bounding" | "effective" | "permitted" | "inheritable" | "ambient";

export interface SpecRlimit {
  type: string;
  hard: number;
  soft: number;
}

export interface SpecProcess {
  terminal?: boolean;
  consoleSize?: { height: number; width: number };
  user: SpecUser;
  args: string[];
  env?: string[];
  cwd: string;
  capabilities?: Partial<Record<CapabilitySet, string[]>>;
  rlimits?: SpecRlimit[];
  noNewPrivileges?: boolean;
  apparmorProfile?: string;
  oomScoreAdj?: number;
  selinuxLabel?: string;
}

export interface LinuxDeviceRule {
  allow: boolean;
  type?: string;
  major?: number;
  minor?: number;
  access?: string;
}

export interface LinuxResources {
  devices?: LinuxDeviceRule[];
  memory?: { limit?: number; reservation?: number; swap?: number; swappiness?: number };
  cpu?: {
    shares?: number;
    quota?: number;
    period?: number;
    realtimeRuntime?: number;
    realtimePeriod?: number;
    cpus?: string;
    mems?: string;
  };
  pids?: { limit: number };
  unified?: Record<string, string>;
}

export interface LinuxNamespace {
  type: string;
  path?: string;
}

export interface Linux {
  devices?: LinuxDevice[];
  resources?: LinuxResources;
  cgroupsPath?: string;
  namespaces: LinuxNamespace[];
  maskedPaths?: string[];
  readonlyPaths?: string[];
  sysctl?: Record<string, string>;
  /** Passed through as given (a runtime-spec LinuxSeccomp object). */
  seccomp?: Record<string, unknown>;
  rootfsPropagation?: string;
  mountLabel?: string;
}

export interface Spec {
  ociVersion: string;
  process: SpecProcess;
  root: { path: string; readonly?: boolean };
  hostname?: string;
  mounts: SpecMount[];
  annotations?: Record<string, string>;
  linux: Linux;
}

/** The Any type URLs containerd stores a spec and a process spec under. */
export const SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
export const PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process";
