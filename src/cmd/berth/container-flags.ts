// ctr's container flags, shared by `berth run` and `berth containers create`: their definitions,
// their values read back, and their translation into OCI spec options in ctr's order.
import { readFileSync } from "node:fs";
import { create, toBinary } from "@bufbuild/protobuf";
import { type Command, Option } from "commander";
import {
  type ImageRunConfig,
  type SpecMount,
  type SpecOpt,
  withAdditionalGids,
  withAllDevicesAllowed,
  withAnnotations,
  withCPUCFS,
  withCPUShares,
  withEnv,
  withHostDevices,
  withHostNetwork,
  withImageConfigArgs,
  withLinuxNamespace,
  withMemoryLimit,
  withMounts,
  withPrivileged,
  withProcessCwd,
  withRootfsReadonly,
  withTTY,
  withUser,
} from "../../core/oci/index.js";
import { OptionsSchema } from "../../gen/containerd/runc/v1/oci_pb.js";
import { collect } from "./image-common.js";
import { parseLabelArgs } from "./table.js";

export const RUNC_OPTIONS_TYPE_URL = "containerd.runc.v1.Options";
export const DEFAULT_RUNTIME = "io.containerd.runc.v2";

export interface ContainerFlags {
  env: string[];
  envFile?: string;
  cwd?: string;
  user?: string;
  mount: string[];
  netHost?: boolean;
  withNs: string[];
  memoryLimit?: string;
  cpus?: string;
  cpuShares?: string;
  cpuQuota?: string;
  cpuPeriod?: string;
  privileged?: boolean;
  readOnly?: boolean;
  snapshotter?: string;
  runtime: string;
  runcBinary?: string;
  label: string[];
  tty?: boolean;
  config?: string;
}

/** Adds ctr's container flags (shared by `run` and `containers create`). */
export function addContainerFlags(cmd: Command): Command {
  return cmd
    .option("-t, --tty", "allocate a TTY for the container")
    .option("--env <K=V>", "environment variable to set in the container", collect, [])
    .option("--env-file <file>", "read environment variables from a file (K=V, one per line)")
    .option("--cwd <dir>", "working directory of the process")
    .option("-u, --user <user>", "username or user id, group optional (<name|uid>[:<group|gid>])")
    .option("--mount <spec>", "mount: type=bind,src=/host,dst=/ctr,options=rbind:ro", collect, [])
    .option("--net-host", "use the host's network namespace")
    .option("--with-ns <type:path>", "join the namespace at path (e.g. network:/proc/1/ns/net)", collect, [])
    .option("--memory-limit <bytes>", "memory limit in bytes")
    .option("--cpus <n>", "CPU limit (CFS quota)")
    .option("--cpu-shares <n>", "CPU shares", "1024")
    .option("--cpu-quota <n>", "CFS CPU quota", "-1")
    .option("--cpu-period <n>", "CFS CPU period", "0")
    .option("--privileged", "run privileged: all capabilities, all host devices, no masked paths")
    .option("--read-only", "mount the root filesystem read-only")
    .option("--snapshotter <name>", "snapshotter [$CONTAINERD_SNAPSHOTTER]")
    .addOption(new Option("--runtime <name>", "runtime name").default(DEFAULT_RUNTIME))
    .option("--runc-binary <path>", "runc-compatible binary for the runc shim (e.g. /usr/bin/crun)")
    .option("--label <K=V>", "container label (also an OCI annotation)", collect, [])
    .option("--config <file>", "use this OCI spec (JSON) instead of building one");
}

export function readContainerFlags(o: Record<string, unknown>): ContainerFlags {
  return {
    tty: o.tty as boolean | undefined,
    env: (o.env as string[]) ?? [],
    envFile: o.envFile as string | undefined,
    cwd: o.cwd as string | undefined,
    user: o.user as string | undefined,
    mount: (o.mount as string[]) ?? [],
    netHost: o.netHost as boolean | undefined,
    withNs: (o.withNs as string[]) ?? [],
    memoryLimit: o.memoryLimit as string | undefined,
    cpus: o.cpus as string | undefined,
    cpuShares: o.cpuShares as string | undefined,
    cpuQuota: o.cpuQuota as string | undefined,
    cpuPeriod: o.cpuPeriod as string | undefined,
    privileged: o.privileged as boolean | undefined,
    readOnly: o.readOnly as boolean | undefined,
    snapshotter: o.snapshotter as string | undefined,
    runtime: (o.runtime as string) ?? DEFAULT_RUNTIME,
    runcBinary: o.runcBinary as string | undefined,
    label: (o.label as string[]) ?? [],
    config: o.config as string | undefined,
  };
}

/** `type=bind,src=/a,dst=/b,options=rbind:ro` (ctr's --mount syntax). */
export function parseMountFlag(s: string): SpecMount {
  const m: SpecMount = { destination: "" };
  for (const part of s.split(",")) {
    const i = part.indexOf("=");
    if (i < 0)
      throw new Error(`invalid mount ${JSON.stringify(s)}: ${JSON.stringify(part)} is not key=value`);
    const k = part.slice(0, i);
    const v = part.slice(i + 1);
    if (k === "type") m.type = v;
    else if (k === "source" || k === "src") m.source = v;
    else if (k === "destination" || k === "dst" || k === "target") m.destination = v;
    else if (k === "options") m.options = v.split(":").filter(Boolean);
    else throw new Error(`invalid mount ${JSON.stringify(s)}: unknown key ${JSON.stringify(k)}`);
  }
  if (!m.destination) throw new Error(`invalid mount ${JSON.stringify(s)}: no destination`);
  return m;
}

const NAMESPACE_TYPES = new Set(["pid", "network", "uts", "mount", "user", "ipc", "cgroup"]);

/** An unsigned decimal (or 0x hex, 0 octal) integer flag value, as Go's ParseUint(s, 0, 64) reads it. */
function parseUintFlag(name: string, v: string): number {
  let n: bigint;
  try {
    if (!/^(0[xX][0-9a-fA-F_]+|0[oO]?[0-7_]*|[1-9][0-9_]*)$/.test(v)) throw new Error();
    const t = v.replace(/_/g, "");
    n = /^0[0-7]+$/.test(t) ? BigInt(`0o${t.slice(1)}`) : BigInt(t);
  } catch {
    throw new Error(`invalid value "${v}" for flag --${name}: parse error`);
  }
  if (n > BigInt(Number.MAX_SAFE_INTEGER))
    throw new Error(`invalid value "${v}" for flag --${name}: too large`);
  return Number(n);
}

function parseIntFlag(name: string, v: string): number {
  if (!/^[+-]?\d+$/.test(v)) throw new Error(`invalid value "${v}" for flag --${name}: parse error`);
  return Number(v);
}

/** Lines of an --env-file, each taken as written (a line without `=` unsets that variable). */
function envFileLines(file: string): string[] {
  const text = readFileSync(file, "utf8");
  const lines = text.split("\n");
  if (lines[lines.length - 1] === "") lines.pop();
  return lines.map((l) => (l.endsWith("\r") ? l.slice(0, -1) : l));
}

/** An option decided when it applies (so flag errors surface in ctr's order among the others). */
const lazy =
  (make: () => SpecOpt[]): SpecOpt =>
  async (s, ctx) => {
    for (const o of make()) await o(s, ctx);
  };

/** CPU flags: --cpus as a CFS quota over a 100ms period, shares, or an explicit quota/period. */
function cpuOpts(f: ContainerFlags): SpecOpt[] {
  const out: SpecOpt[] = [];
  const cpus = f.cpus === undefined ? 0 : Number(f.cpus);
  if (!Number.isFinite(cpus)) throw new Error(`invalid value "${f.cpus}" for flag --cpus: parse error`);
  if (cpus > 0) out.push(withCPUCFS(Math.trunc(cpus * 100_000), 100_000));
  const shares = f.cpuShares === undefined ? 1024 : parseIntFlag("cpu-shares", f.cpuShares);
  if (shares > 0) out.push(withCPUShares(shares));
  const quota = f.cpuQuota === undefined ? -1 : parseIntFlag("cpu-quota", f.cpuQuota);
  const period = f.cpuPeriod === undefined ? 0 : parseUintFlag("cpu-period", f.cpuPeriod);
  if (quota !== -1 || period !== 0) {
    if (cpus > 0) throw new Error("cpus and quota/period should be used separately");
    out.push(withCPUCFS(quota, period));
  }
  return out;
}

function withNsOpts(f: ContainerFlags): SpecOpt[] {
  return f.withNs.map((w) => {
    const parts = w.split(":");
    if (parts.length !== 2)
      throw new Error("joining a Linux namespace using --with-ns requires the format 'nstype:path'");
    const [type, path] = parts as [string, string];
    if (!NAMESPACE_TYPES.has(type))
      throw new Error(`the Linux namespace type specified in --with-ns is not valid: ${type}`);
    return withLinuxNamespace({ type, path });
  });
}

/**
 * The spec options for a container from the image config, the command line and the flags, in
 * ctr's order (the env flags first so the image's env goes under them).
 */
export function containerSpecOpts(image: ImageRunConfig, args: string[], f: ContainerFlags): SpecOpt[] {
  const opts: SpecOpt[] = [];
  if (f.envFile) opts.push(withEnv(envFileLines(f.envFile)));
  opts.push(withEnv(f.env), withMounts(f.mount.map(parseMountFlag)), withImageConfigArgs(image, args));
  if (f.readOnly) opts.push(withRootfsReadonly());
  if (f.cwd) opts.push(withProcessCwd(f.cwd));
  if (f.user) opts.push(withUser(f.user), withAdditionalGids(f.user));
  if (f.tty) opts.push(withTTY);
  if (f.privileged) opts.push(withPrivileged, withAllDevicesAllowed, withHostDevices);
  if (f.netHost) opts.push(withHostNetwork);
  opts.push(
    lazy(() => cpuOpts(f)),
    lazy(() => withNsOpts(f)),
    lazy(() => {
      const limit = f.memoryLimit === undefined ? 0 : parseUintFlag("memory-limit", f.memoryLimit);
      return limit !== 0 ? [withMemoryLimit(limit)] : [];
    }),
    withAnnotations(parseLabelArgs(f.label)),
  );
  return opts;
}

/** The runtime options ctr sends: runc's Options (binary name) for the runc v2 runtime, else none. */
export function runtimeOptions(f: ContainerFlags): { typeUrl: string; value: Uint8Array } | undefined {
  if (f.runcBinary && f.runtime !== DEFAULT_RUNTIME) {
    throw new Error(
      `specifying runc-binary and runc-systemd-cgroup is only supported for "${DEFAULT_RUNTIME}" runtime`,
    );
  }
  if (f.runtime !== DEFAULT_RUNTIME) return undefined;
  return {
    typeUrl: RUNC_OPTIONS_TYPE_URL,
    value: toBinary(OptionsSchema, create(OptionsSchema, { binaryName: f.runcBinary ?? "" })),
  };
}
