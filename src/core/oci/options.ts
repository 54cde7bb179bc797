// Spec options: small functions that each change one aspect of a spec, applied in order over
// containerd's default Linux spec (the shape of containerd's pkg/oci With... options). The CLI
// turns its flags into a list of them; the CRI plugin calls them directly.
import os from "node:os";
import path from "node:path";
import { DEFAULT_PATH_ENV, defaultSpec } from "./defaults.js";
import {
  CAPABILITY_NAMES,
  currentCapabilities,
  deviceAt,
  hostDevices,
  type LinuxDevice,
  replaceOrAppendEnv,
} from "./linux.js";
import type {
  CapabilitySet,
  LinuxDeviceRule,
  LinuxNamespace,
  LinuxResources,
  Spec,
  SpecMount,
} from "./spec.js";
import { additionalGids, numericUser, resolveUser } from "./user.js";

export interface SpecContext {
  /** containerd namespace and container id (the default cgroups path is made of them). */
  namespace: string;
  id: string;
  /**
   * Host path where the container's root filesystem is mounted, for resolving user and group
   * names and supplementary groups; without it only numeric users are accepted.
   */
  rootfs?: string;
}

export type SpecOpt = (spec: Spec, ctx: SpecContext) => void | Promise<void>;

/** The image config's execution parameters the process options read (its `config` object). */
export interface ImageRunConfig {
  Env?: string[];
  Cmd?: string[] | null;
  Entrypoint?: string[] | null;
  WorkingDir?: string;
  User?: string;
  Labels?: Record<string, string>;
  StopSignal?: string;
}

/** Applies `opts` to `spec` in order. */
export async function applySpecOpts(spec: Spec, ctx: SpecContext, opts: readonly SpecOpt[]): Promise<Spec> {
  for (const o of opts) await o(spec, ctx);
  return spec;
}

/** containerd's default Linux spec for `id` in namespace `ns`, with `opts` applied in order. */
export function generateSpec(
  ns: string,
  id: string,
  opts: readonly SpecOpt[],
  ctx: { rootfs?: string } = {},
): Promise<Spec> {
  return applySpecOpts(defaultSpec(ns, id), { namespace: ns, id, rootfs: ctx.rootfs }, opts);
}

/** Options applied one after the other, as one. */
export const compose =
  (...opts: SpecOpt[]): SpecOpt =>
  async (s, ctx) => {
    await applySpecOpts(s, ctx, opts);
  };

const resources = (s: Spec): LinuxResources => {
  s.linux.resources ??= {};
  return s.linux.resources;
};

// ---------------------------------------------------------------------------------------------
// Process

export const withProcessArgs =
  (...args: string[]): SpecOpt =>
  (s) => {
    s.process.args = [...args];
  };

export const withProcessCwd =
  (cwd: string): SpecOpt =>
  (s) => {
    s.process.cwd = cwd;
  };

/** `K=V` entries set (replacing the same key) and bare `K` entries removed, over the current env. */
export const withEnv =
  (vars: readonly string[]): SpecOpt =>
  (s) => {
    s.process.env = replaceOrAppendEnv(s.process.env ?? [], vars);
  };

/**
 * The image config's process: its env (or the default PATH when it has none) under the env
 * already set, entrypoint followed by `args` (the image's cmd when `args` is empty), its working
 * directory (or `/`), and its user with that user's supplementary groups (root's when none).
 */
export const withImageConfigArgs =
  (config: ImageRunConfig, args: readonly string[] = []): SpecOpt =>
  async (s, ctx) => {
    const p = s.process;
    const base = config.Env && config.Env.length > 0 ? config.Env : [DEFAULT_PATH_ENV];
    p.env = replaceOrAppendEnv(base, p.env ?? []);
    p.args = [...(config.Entrypoint ?? []), ...(args.length > 0 ? args : (config.Cmd ?? []))];
    p.cwd = config.WorkingDir || "/";
    if (config.User) {
      await withUser(config.User)(s, ctx);
      await withAdditionalGids(String(p.user.uid))(s, ctx);
    } else await withAdditionalGids("root")(s, ctx);
  };

export const withImageConfig = (config: ImageRunConfig): SpecOpt => withImageConfigArgs(config, []);

/**
 * The user from `user[:group]` (names or numbers) looked up in the rootfs's /etc/passwd and
 * /etc/group; without a rootfs in the context, numbers only. Additional gids become the primary
 * gid alone (follow with withAdditionalGids for the user's groups).
 */
export const withUser =
  (user: string): SpecOpt =>
  (s, ctx) => {
    if (ctx.rootfs !== undefined) {
      s.process.user = resolveUser(user, ctx.rootfs);
      return;
    }
    const u = numericUser(user);
    if (!u) throw new Error(`user ${JSON.stringify(user)}: names need the container's /etc/passwd`);
    s.process.user = u;
  };

/** The uid, its gid from the rootfs's /etc/passwd (0 when not listed). */
export const withUserId = (uid: number): SpecOpt => withUser(String(uid));

/** An explicit uid and gid (no lookup); supplementary groups are kept. */
export const withUidGid =
  (uid: number, gid: number): SpecOpt =>
  (s) => {
    s.process.user = { ...s.process.user, uid, gid };
  };

/**
 * The supplementary groups of `user` (a name or uid) from the rootfs's /etc/group, with the
 * primary gid first; without a rootfs only the primary gid is added (when missing).
 */
export const withAdditionalGids =
  (user: string): SpecOpt =>
  (s, ctx) => {
    const u = s.process.user;
    if (ctx.rootfs !== undefined) s.process.user = additionalGids(user, ctx.rootfs, u);
    else if (!(u.additionalGids ?? []).includes(u.gid))
      s.process.user = { ...u, additionalGids: [u.gid, ...(u.additionalGids ?? [])] };
  };

/** Extra supplementary gids appended (each once). */
export const withExtraGids =
  (gids: readonly number[]): SpecOpt =>
  (s) => {
    const out = [...(s.process.user.additionalGids ?? [])];
    for (const g of gids) if (!out.includes(g)) out.push(g);
    s.process.user = { ...s.process.user, additionalGids: out };
  };

/** A terminal for the process, with TERM=xterm added to its env. */
export const withTTY: SpecOpt = (s) => {
  s.process.terminal = true;
  s.process.env = [...(s.process.env ?? []), "TERM=xterm"];
};

export const withNoNewPrivileges =
  (on = true): SpecOpt =>
  (s) => {
    s.process.noNewPrivileges = on;
  };

export const withOOMScoreAdj =
  (score: number): SpecOpt =>
  (s) => {
    s.process.oomScoreAdj = score;
  };

/** The rlimit of `type` (e.g. RLIMIT_NOFILE) set, replacing one of the same type. */
export const withRlimit =
  (type: string, hard: number, soft: number): SpecOpt =>
  (s) => {
    const list = (s.process.rlimits ?? []).filter((r) => r.type !== type);
    s.process.rlimits = [...list, { type, hard, soft }];
  };

// ---------------------------------------------------------------------------------------------
// Capabilities

const CAP_SETS: readonly CapabilitySet[] = ["bounding", "effective", "permitted"];
const capName = (c: string) =>
  c.toUpperCase().startsWith("CAP_") ? c.toUpperCase() : `CAP_${c.toUpperCase()}`;

/** Exactly `caps` in the bounding, effective and permitted sets. */
export const withCapabilities =
  (caps: readonly string[]): SpecOpt =>
  (s) => {
    const c = caps.map(capName);
    s.process.capabilities = { bounding: [...c], effective: [...c], permitted: [...c] };
  };

/** `caps` added to each capability set ("ALL" adds every known capability). */
export const withAddedCapabilities =
  (caps: readonly string[]): SpecOpt =>
  (s) => {
    const add = caps.some((c) => c.toUpperCase() === "ALL") ? [...CAPABILITY_NAMES] : caps.map(capName);
    const cur = s.process.capabilities ?? {};
    for (const set of CAP_SETS) {
      const have = cur[set] ?? [];
      cur[set] = [...have, ...add.filter((c) => !have.includes(c))];
    }
    s.process.capabilities = cur;
  };

/** `caps` removed from every capability set ("ALL" empties them). */
export const withDroppedCapabilities =
  (caps: readonly string[]): SpecOpt =>
  (s) => {
    const all = caps.some((c) => c.toUpperCase() === "ALL");
    const drop = new Set(caps.map(capName));
    const cur = s.process.capabilities;
    if (!cur) return;
    for (const set of Object.keys(cur) as CapabilitySet[]) {
      cur[set] = all ? [] : (cur[set] ?? []).filter((c) => !drop.has(c));
    }
  };

/** Every capability this process holds, in the bounding, effective and permitted sets. */
export const withAllCurrentCapabilities: SpecOpt = (s) => {
  const caps = currentCapabilities();
  s.process.capabilities = { bounding: caps, effective: [...caps], permitted: [...caps] };
};

// ---------------------------------------------------------------------------------------------
// Root filesystem and mounts

export const withRootfsReadonly =
  (on = true): SpecOpt =>
  (s) => {
    if (on) s.root.readonly = true;
    else delete s.root.readonly;
  };

export const withRootfsPropagation =
  (propagation: string): SpecOpt =>
  (s) => {
    s.linux.rootfsPropagation = propagation;
  };

/** Mounts appended after the existing ones (the same destination twice mounts over it). */
export const withMounts =
  (mounts: readonly SpecMount[]): SpecOpt =>
  (s) => {
    for (const m of mounts) s.mounts.push({ ...m });
  };

/** A destination cleaned as Go's filepath.Clean would (no trailing slash, no `.`/`..`). */
const cleanDest = (p: string) => {
  const c = path.posix.normalize(p);
  return c.length > 1 && c.endsWith("/") ? c.slice(0, -1) : c;
};
const sameDest = (a: string, b: string) => cleanDest(a) === cleanDest(b);

/** Each mount replaces one at the same destination (in its place) or is appended. */
export const withMountsReplacing =
  (mounts: readonly SpecMount[]): SpecOpt =>
  (s) => {
    for (const m of mounts) {
      const i = s.mounts.findIndex((x) => sameDest(x.destination, m.destination));
      if (i >= 0) s.mounts[i] = { ...m };
      else s.mounts.push({ ...m });
    }
  };

/** The mount at `destination` removed. */
export const withoutMount =
  (destination: string): SpecOpt =>
  (s) => {
    s.mounts = s.mounts.filter((m) => !sameDest(m.destination, destination));
  };

export interface BindOptions {
  readonly?: boolean;
  /** rbind (default) or bind. */
  recursive?: boolean;
  /** e.g. rprivate, rslave, rshared. */
  propagation?: string;
}

/** A bind mount of host `source` at `destination`, replacing any mount there. */
export const withBindMount = (source: string, destination: string, o: BindOptions = {}): SpecOpt => {
  const options = [o.recursive === false ? "bind" : "rbind", o.readonly ? "ro" : "rw"];
  if (o.propagation) options.push(o.propagation);
  return withMountsReplacing([{ destination, type: "bind", source, options }]);
};

/** The host's /etc/hosts bound read-only (as for host networking). */
export const withHostHostsFile: SpecOpt = (s) => {
  s.mounts.push({ destination: "/etc/hosts", type: "bind", source: "/etc/hosts", options: ["rbind", "ro"] });
};

/** The host's /etc/resolv.conf bound read-only (as for host networking). */
export const withHostResolvconf: SpecOpt = (s) => {
  s.mounts.push({
    destination: "/etc/resolv.conf",
    type: "bind",
    source: "/etc/resolv.conf",
    options: ["rbind", "ro"],
  });
};

const writeable =
  (type: string): SpecOpt =>
  (s) => {
    for (const m of s.mounts) {
      if (m.type === type) m.options = (m.options ?? []).map((o) => (o === "ro" ? "rw" : o));
    }
  };

/** /sys mounted read-write. */
export const withWriteableSysfs: SpecOpt = writeable("sysfs");
/** /sys/fs/cgroup mounted read-write. */
export const withWriteableCgroupfs: SpecOpt = writeable("cgroup");

// ---------------------------------------------------------------------------------------------
// Namespaces, hostname

/** The host's namespace of `type` used (the container gets none of its own). */
export const withHostNamespace =
  (type: string): SpecOpt =>
  (s) => {
    s.linux.namespaces = s.linux.namespaces.filter((n) => n.type !== type);
  };

/** The namespace of `ns.type` set (joined at `ns.path` when given), replacing one of that type. */
export const withLinuxNamespace =
  (ns: LinuxNamespace): SpecOpt =>
  (s) => {
    const i = s.linux.namespaces.findIndex((n) => n.type === ns.type);
    if (i >= 0) s.linux.namespaces[i] = { ...ns };
    else s.linux.namespaces.push({ ...ns });
  };

/**
 * Host networking as ctr does it: no network namespace, the host's hosts and resolv.conf files,
 * and HOSTNAME set to the host's name.
 */
export const withHostNetwork: SpecOpt = compose(
  withHostNamespace("network"),
  withHostHostsFile,
  withHostResolvconf,
  (s, ctx) => withEnv([`HOSTNAME=${os.hostname()}`])(s, ctx),
);

export const withHostname =
  (hostname: string): SpecOpt =>
  (s) => {
    s.hostname = hostname;
  };

// ---------------------------------------------------------------------------------------------
// Privileges, devices, paths

export const withMaskedPaths =
  (paths: readonly string[] | undefined): SpecOpt =>
  (s) => {
    if (paths) s.linux.maskedPaths = [...paths];
    else delete s.linux.maskedPaths;
  };

export const withReadonlyPaths =
  (paths: readonly string[] | undefined): SpecOpt =>
  (s) => {
    if (paths) s.linux.readonlyPaths = [...paths];
    else delete s.linux.readonlyPaths;
  };

/**
 * containerd's privileged set: all current capabilities, no masked or read-only paths, writable
 * sysfs and cgroupfs. Devices are separate (withAllDevicesAllowed, withHostDevices).
 */
export const withPrivileged: SpecOpt = compose(
  withAllCurrentCapabilities,
  withMaskedPaths(undefined),
  withReadonlyPaths(undefined),
  withWriteableSysfs,
  withWriteableCgroupfs,
);

/** The device cgroup allows every device. */
export const withAllDevicesAllowed: SpecOpt = (s) => {
  resources(s).devices = [{ allow: true, access: "rwm" }];
};

/** Every host device node under /dev created in the container. */
export const withHostDevices: SpecOpt = (s) => {
  s.linux.devices = [...(s.linux.devices ?? []), ...hostDevices()];
};

/** Device nodes added (no cgroup rule: add one with withDeviceRules). */
export const withDevices =
  (devices: readonly LinuxDevice[]): SpecOpt =>
  (s) => {
    s.linux.devices = [...(s.linux.devices ?? []), ...devices.map((d) => ({ ...d }))];
  };

/** Device cgroup rules appended. */
export const withDeviceRules =
  (rules: readonly LinuxDeviceRule[]): SpecOpt =>
  (s) => {
    const r = resources(s);
    r.devices = [...(r.devices ?? []), ...rules.map((x) => ({ ...x }))];
  };

/**
 * The host device at `hostPath` made at `containerPath` (default: the same path) and allowed with
 * `permissions` (r, w, m) in the device cgroup.
 */
export const withLinuxDevice =
  (hostPath: string, permissions = "rwm", containerPath = hostPath): SpecOpt =>
  (s, ctx) => {
    const d = deviceAt(hostPath);
    if (!d) throw new Error(`${hostPath}: not a device node`);
    withDevices([{ ...d, path: containerPath }])(s, ctx);
    withDeviceRules([{ allow: true, type: d.type, major: d.major, minor: d.minor, access: permissions }])(
      s,
      ctx,
    );
  };

export const withAnnotations =
  (annotations: Record<string, string>): SpecOpt =>
  (s) => {
    if (Object.keys(annotations).length === 0) return;
    s.annotations = { ...s.annotations, ...annotations };
  };

/** A seccomp profile (runtime-spec LinuxSeccomp JSON), passed through; undefined removes it. */
export const withSeccompProfile =
  (profile: Record<string, unknown> | undefined): SpecOpt =>
  (s) => {
    if (profile) s.linux.seccomp = structuredClone(profile);
    else delete s.linux.seccomp;
  };

export const withSysctls =
  (sysctls: Record<string, string>): SpecOpt =>
  (s) => {
    if (Object.keys(sysctls).length === 0) return;
    s.linux.sysctl = { ...s.linux.sysctl, ...sysctls };
  };

// ---------------------------------------------------------------------------------------------
// Cgroup resources

export const withCgroupsPath =
  (cgroupsPath: string): SpecOpt =>
  (s) => {
    s.linux.cgroupsPath = cgroupsPath;
  };

export const withCPUShares =
  (shares: number): SpecOpt =>
  (s) => {
    const r = resources(s);
    r.cpu = { ...r.cpu, shares };
  };

/** CFS quota and period (microseconds). */
export const withCPUCFS =
  (quota: number, period: number): SpecOpt =>
  (s) => {
    const r = resources(s);
    r.cpu = { ...r.cpu, quota, period };
  };

/** The cpuset's CPUs (e.g. "0-2,4"). */
export const withCPUs =
  (cpus: string): SpecOpt =>
  (s) => {
    const r = resources(s);
    r.cpu = { ...r.cpu, cpus };
  };

/** The cpuset's memory nodes. */
export const withCPUsMems =
  (mems: string): SpecOpt =>
  (s) => {
    const r = resources(s);
    r.cpu = { ...r.cpu, mems };
  };

export const withMemoryLimit =
  (limit: number): SpecOpt =>
  (s) => {
    const r = resources(s);
    r.memory = { ...r.memory, limit };
  };

/** Memory plus swap limit (runtime-spec `memory.swap`). */
export const withMemorySwap =
  (swap: number): SpecOpt =>
  (s) => {
    const r = resources(s);
    r.memory = { ...r.memory, swap };
  };

export const withPidsLimit =
  (limit: number): SpecOpt =>
  (s) => {
    resources(s).pids = { limit };
  };
