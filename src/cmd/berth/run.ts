// `berth run`: make a container from an image (OCI runtime spec with containerd's defaults plus
// the image config, a rootfs snapshot from the image's chain ID), create its task with FIFOs for
// standard I/O, start it, wait and exit with its status. Also the pieces `berth containers create`
// and `berth tasks` share: container flags, spec building, FIFO I/O, signal names.
import { randomBytes } from "node:crypto";
import {
  closeSync,
  constants as fsc,
  mkdirSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { type Command, Option } from "commander";
import { isNotFound } from "../../base/errdefs.js";
import type { Mount } from "../../base/mount.js";
import { hostPlatform, matchesAny, type Platform } from "../../base/platforms.js";
import {
  currentCapabilities,
  hostDevices,
  type LinuxDevice,
  replaceOrAppendEnv,
} from "../../core/oci/linux.js";
import { additionalGids, numericUser, resolveUser } from "../../core/oci/user.js";
import { chainIds } from "../../core/pull/pull.js";
import { formatReference, parseNormalized } from "../../core/reference.js";
import { isIndexType } from "../../core/remotes/media.js";
import { OptionsSchema } from "../../gen/containerd/runc/v1/oci_pb.js";
import { Containers } from "../../gen/containerd/services/containers/v1/containers_pb.js";
import { Content } from "../../gen/containerd/services/content/v1/content_pb.js";
import { Diff } from "../../gen/containerd/services/diff/v1/diff_pb.js";
import { Images } from "../../gen/containerd/services/images/v1/images_pb.js";
import { Leases } from "../../gen/containerd/services/leases/v1/leases_pb.js";
import { Snapshots } from "../../gen/containerd/services/snapshots/v1/snapshots_pb.js";
import { Tasks } from "../../gen/containerd/services/tasks/v1/tasks_pb.js";
import { mknod, S_IFIFO } from "../../sys/mknod.js";
import { withTempMount } from "../../sys/mount.js";
import { type Console, currentConsole } from "./console.js";
import type { CliContext, Wire } from "./context.js";
import { parseLabelArgs } from "./table.js";

export const SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
export const PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process";
export const RUNC_OPTIONS_TYPE_URL = "containerd.runc.v1.Options";
export const DEFAULT_RUNTIME = "io.containerd.runc.v2";
const DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
export const FIFO_ROOT = "/run/berth/fifo";

export const defaultSnapshotter = () => process.env.CONTAINERD_SNAPSHOTTER || "overlayfs";
const collect = (v: string, prev: string[]) => [...prev, v];

// ---------------------------------------------------------------------------------------------
// The OCI runtime spec (only the fields berth sets)

export interface SpecUser {
  uid: number;
  gid: number;
  additionalGids?: number[];
}
export interface SpecMount {
  destination: string;
  type?: string;
  source?: string;
  options?: string[];
}
export interface SpecProcess {
  terminal?: boolean;
  user: SpecUser;
  args: string[];
  env?: string[];
  cwd: string;
  capabilities?: Record<"bounding" | "effective" | "permitted", string[]>;
  rlimits?: { type: string; hard: number; soft: number }[];
  noNewPrivileges?: boolean;
}
export interface Spec {
  ociVersion: string;
  process: SpecProcess;
  root: { path: string; readonly?: boolean };
  hostname?: string;
  mounts: SpecMount[];
  annotations?: Record<string, string>;
  linux: {
    devices?: LinuxDevice[];
    resources?: {
      devices?: { allow: boolean; type?: string; major?: number; minor?: number; access?: string }[];
      memory?: { limit?: number };
      cpu?: { shares?: number; quota?: number; period?: number };
    };
    cgroupsPath?: string;
    namespaces: { type: string; path?: string }[];
    maskedPaths?: string[];
    readonlyPaths?: string[];
  };
}

const DEFAULT_CAPS = [
  "CAP_CHOWN",
  "CAP_DAC_OVERRIDE",
  "CAP_FSETID",
  "CAP_FOWNER",
  "CAP_MKNOD",
  "CAP_NET_RAW",
  "CAP_SETGID",
  "CAP_SETUID",
  "CAP_SETFCAP",
  "CAP_SETPCAP",
  "CAP_NET_BIND_SERVICE",
  "CAP_SYS_CHROOT",
  "CAP_KILL",
  "CAP_AUDIT_WRITE",
];

function defaultMounts(): SpecMount[] {
  const m = (destination: string, type: string, source: string, options: string[]): SpecMount => ({
    destination,
    type,
    source,
    options,
  });
  return [
    m("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
    m("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
    m("/dev/pts", "devpts", "devpts", [
      "nosuid",
      "noexec",
      "newinstance",
      "ptmxmode=0666",
      "mode=0620",
      "gid=5",
    ]),
    m("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
    m("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
    m("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
    m("/sys/fs/cgroup", "cgroup", "cgroup", ["nosuid", "noexec", "nodev", "relatime", "ro"]),
    m("/run", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
  ];
}

/** Device cgroup rules: deny all, then the usual character devices (null, zero, tty, pts, ...). */
function defaultDeviceRules(): NonNullable<NonNullable<Spec["linux"]["resources"]>["devices"]> {
  const c = (major: number, minor?: number) => ({ allow: true, type: "c", major, minor, access: "rwm" });
  return [
    { allow: false, access: "rwm" },
    c(1, 3),
    c(1, 8),
    c(1, 7),
    c(5, 0),
    c(1, 5),
    c(1, 9),
    c(5, 1),
    c(136),
    c(5, 2),
  ];
}

/** containerd's default Linux spec for container `id` in namespace `ns`. */
export function defaultSpec(ns: string, id: string): Spec {
  return {
    ociVersion: "1.0.2-dev",
    root: { path: "rootfs" },
    process: {
      cwd: "/",
      noNewPrivileges: true,
      user: { uid: 0, gid: 0 },
      args: [],
      capabilities: {
        bounding: [...DEFAULT_CAPS],
        permitted: [...DEFAULT_CAPS],
        effective: [...DEFAULT_CAPS],
      },
      rlimits: [{ type: "RLIMIT_NOFILE", hard: 1024, soft: 1024 }],
    },
    mounts: defaultMounts(),
    linux: {
      maskedPaths: [
        "/proc/acpi",
        "/proc/asound",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/sys/firmware",
        "/proc/scsi",
      ],
      readonlyPaths: ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
      cgroupsPath: `/${ns}/${id}`,
      resources: { devices: defaultDeviceRules() },
      namespaces: ["pid", "ipc", "uts", "mount", "network"].map((type) => ({ type })),
    },
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

export interface ImageConfig {
  Env?: string[];
  Cmd?: string[];
  Entrypoint?: string[];
  WorkingDir?: string;
  User?: string;
  Labels?: Record<string, string>;
}

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

/**
 * The spec for `id` from containerd's defaults, the image config, the command line and the flags,
 * in ctr's order. `root` is the container's root filesystem (mounted) for resolving user and group
 * names and supplementary groups; without it only numeric users are accepted.
 */
export function buildSpec(
  ns: string,
  id: string,
  image: ImageConfig,
  args: string[],
  f: ContainerFlags,
  root?: string,
): Spec {
  const s = defaultSpec(ns, id);
  const p = s.process;
  const lookup = (user: string) => {
    if (root !== undefined) return resolveUser(user, root);
    const u = numericUser(user);
    if (!u) throw new Error(`user ${JSON.stringify(user)}: names need the container's /etc/passwd`);
    return u;
  };
  const withGroups = (user: string) => {
    if (root !== undefined) p.user = additionalGids(user, root, p.user);
    else if (!(p.user.additionalGids ?? []).includes(p.user.gid))
      p.user = { ...p.user, additionalGids: [p.user.gid, ...(p.user.additionalGids ?? [])] };
  };
  // environment from the flags, then the image config under it
  let env: string[] = [];
  if (f.envFile) env = replaceOrAppendEnv(env, envFileLines(f.envFile));
  env = replaceOrAppendEnv(env, f.env);
  for (const m of f.mount) s.mounts.push(parseMountFlag(m));
  p.env = replaceOrAppendEnv(image.Env && image.Env.length > 0 ? image.Env : [DEFAULT_PATH_ENV], env);
  p.args = [...(image.Entrypoint ?? []), ...(args.length > 0 ? args : (image.Cmd ?? []))];
  p.cwd = image.WorkingDir || "/";
  if (image.User) {
    p.user = lookup(image.User);
    withGroups(String(p.user.uid));
  } else withGroups("root");
  if (f.readOnly) s.root.readonly = true;
  if (f.cwd) p.cwd = f.cwd;
  if (f.user) {
    p.user = lookup(f.user);
    withGroups(f.user);
  }
  if (f.tty) {
    p.terminal = true;
    p.env.push("TERM=xterm");
  }
  s.linux.resources = s.linux.resources ?? {};
  const res = s.linux.resources;
  if (f.privileged) {
    const caps = currentCapabilities();
    p.capabilities = { bounding: caps, effective: [...caps], permitted: [...caps] };
    delete s.linux.maskedPaths;
    delete s.linux.readonlyPaths;
    for (const m of s.mounts) {
      if (m.type === "sysfs" || m.type === "cgroup")
        m.options = (m.options ?? []).map((o) => (o === "ro" ? "rw" : o));
    }
    res.devices = [{ allow: true, access: "rwm" }];
    s.linux.devices = [...(s.linux.devices ?? []), ...hostDevices()];
  }
  if (f.netHost) {
    s.linux.namespaces = s.linux.namespaces.filter((n) => n.type !== "network");
    for (const file of ["/etc/hosts", "/etc/resolv.conf"]) {
      s.mounts.push({ destination: file, type: "bind", source: file, options: ["rbind", "ro"] });
    }
    p.env = replaceOrAppendEnv(p.env, [`HOSTNAME=${os.hostname()}`]);
  }
  const cpus = f.cpus === undefined ? 0 : Number(f.cpus);
  if (!Number.isFinite(cpus)) throw new Error(`invalid value "${f.cpus}" for flag --cpus: parse error`);
  if (cpus > 0) res.cpu = { ...res.cpu, quota: Math.trunc(cpus * 100_000), period: 100_000 };
  const shares = f.cpuShares === undefined ? 1024 : parseIntFlag("cpu-shares", f.cpuShares);
  if (shares > 0) res.cpu = { ...res.cpu, shares };
  const quota = f.cpuQuota === undefined ? -1 : parseIntFlag("cpu-quota", f.cpuQuota);
  const period = f.cpuPeriod === undefined ? 0 : parseUintFlag("cpu-period", f.cpuPeriod);
  if (quota !== -1 || period !== 0) {
    if (cpus > 0) throw new Error("cpus and quota/period should be used separately");
    res.cpu = { ...res.cpu, quota, period };
  }
  for (const w of f.withNs) {
    const parts = w.split(":");
    if (parts.length !== 2)
      throw new Error("joining a Linux namespace using --with-ns requires the format 'nstype:path'");
    const [type, nsPath] = parts as [string, string];
    if (!NAMESPACE_TYPES.has(type))
      throw new Error(`the Linux namespace type specified in --with-ns is not valid: ${type}`);
    const i = s.linux.namespaces.findIndex((n) => n.type === type);
    if (i >= 0) s.linux.namespaces[i] = { type, path: nsPath };
    else s.linux.namespaces.push({ type, path: nsPath });
  }
  const limit = f.memoryLimit === undefined ? 0 : parseUintFlag("memory-limit", f.memoryLimit);
  if (limit !== 0) res.memory = { ...res.memory, limit };
  const annotations = parseLabelArgs(f.label);
  if (Object.keys(annotations).length > 0) s.annotations = { ...s.annotations, ...annotations };
  return s;
}

// ---------------------------------------------------------------------------------------------
// Images

interface Json {
  mediaType?: string;
  manifests?: { mediaType: string; digest: string; size: number; platform?: Platform }[];
  config?: { digest: string; mediaType?: string };
  layers?: { mediaType: string; digest: string; size: number }[];
  rootfs?: { diff_ids?: string[] };
}

export interface ResolvedImage {
  name: string;
  config: ImageConfig;
  configDigest: string;
  chainId: string;
  chain: string[];
  layers: { mediaType: string; digest: string; size: number }[];
}

async function readJson<T>(ctx: CliContext, digest: string): Promise<T> {
  const content = await ctx.client(Content);
  const parts: Uint8Array[] = [];
  for await (const r of content.read({ digest }, ctx.call())) parts.push(r.data);
  return JSON.parse(Buffer.concat(parts).toString("utf8")) as T;
}

/** The host platform's image config and rootfs chain ID of a stored image. */
export async function resolveImage(ctx: CliContext, ref: string): Promise<ResolvedImage> {
  const images = await ctx.client(Images);
  let name = ref;
  let got: Awaited<ReturnType<typeof images.get>> | undefined;
  try {
    got = await images.get({ name }, ctx.call());
  } catch (err) {
    if (!isNotFound(err)) throw err;
    try {
      name = formatReference(parseNormalized(ref));
      got = await images.get({ name }, ctx.call());
    } catch (err2) {
      if (isNotFound(err2)) throw new Error(`image "${ref}": not found`);
      throw err2;
    }
  }
  const target = got.image?.target;
  if (!target) throw new Error(`image "${ref}" has no target`);
  let manifestDigest = target.digest;
  if (isIndexType(target.mediaType)) {
    const want = [hostPlatform()];
    const walk = async (digest: string): Promise<string | undefined> => {
      const idx = await readJson<Json>(ctx, digest);
      for (const m of idx.manifests ?? []) {
        if (isIndexType(m.mediaType)) {
          const r = await walk(m.digest);
          if (r) return r;
        } else if (!m.platform || matchesAny(want, m.platform)) return m.digest;
      }
      return undefined;
    };
    const found = await walk(target.digest);
    if (!found) throw new Error(`image "${ref}": no manifest for the host platform`);
    manifestDigest = found;
  }
  const manifest = await readJson<Json>(ctx, manifestDigest);
  if (!manifest.config) throw new Error(`image "${ref}": manifest has no config`);
  const cfg = await readJson<{ config?: ImageConfig; rootfs?: { diff_ids?: string[] } }>(
    ctx,
    manifest.config.digest,
  );
  const chain = chainIds(cfg.rootfs?.diff_ids ?? []);
  const chainId = chain[chain.length - 1];
  if (!chainId) throw new Error(`image "${ref}" has no layers`);
  const layers = manifest.layers ?? [];
  if (layers.length !== chain.length) throw new Error(`image "${ref}": layers and diff IDs do not match`);
  return { name, config: cfg.config ?? {}, configDigest: manifest.config.digest, chainId, chain, layers };
}

/**
 * Unpacks the image's layers into `snapshotter` where they are missing (as ctr does before it
 * creates a container): each missing chain ID is prepared on its parent, the layer applied through
 * the Diff service and committed under the chain ID; the config then references the top snapshot
 * for the garbage collector.
 */
async function ensureUnpacked(ctx: CliContext, img: ResolvedImage, snapshotter: string, lease: string) {
  const snaps = await ctx.client(Snapshots);
  const exists = (key: string) =>
    snaps.stat({ snapshotter, key }, ctx.call({ lease })).then(
      () => true,
      (err: unknown) => {
        if (isNotFound(err)) return false;
        throw err;
      },
    );
  if (await exists(img.chainId)) return;
  let parent = "";
  for (const [i, chainId] of img.chain.entries()) {
    if (!(await exists(chainId))) {
      const layer = img.layers[i]!;
      const key = `extract-${randomBytes(8).toString("hex")} ${chainId}`;
      const { mounts } = await snaps.prepare({ snapshotter, key, parent }, ctx.call({ lease }));
      try {
        const diff = await ctx.client(Diff);
        await diff.apply(
          { diff: { mediaType: layer.mediaType, digest: layer.digest, size: BigInt(layer.size) }, mounts },
          ctx.call({ lease }),
        );
        await snaps.commit({ snapshotter, name: chainId, key }, ctx.call({ lease }));
      } catch (err) {
        await snaps.remove({ snapshotter, key }, ctx.call()).catch(() => {});
        if (!(await exists(chainId))) throw err;
      }
    }
    parent = chainId;
  }
  const content = await ctx.client(Content);
  const label = `containerd.io/gc.ref.snapshot.${snapshotter}`;
  await content.update(
    {
      info: { digest: img.configDigest, labels: { [label]: img.chainId } },
      updateMask: { paths: [`labels.${label}`] },
    },
    ctx.call({ lease }),
  );
}

// ---------------------------------------------------------------------------------------------
// Containers

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

/** The runtime options ctr sends: runc's Options (binary name) for the runc v2 runtime, else none. */
function runtimeOptions(f: ContainerFlags): { typeUrl: string; value: Uint8Array } | undefined {
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

/** Runs `fn` under a short-lived lease (so the new snapshot survives GC until the container holds it). */
async function withLease<T>(ctx: CliContext, fn: (lease: string) => Promise<T>): Promise<T> {
  const leases = await ctx.client(Leases);
  const id = `berth-${Date.now()}-${randomBytes(6).toString("hex")}`;
  const expire = new Date(Date.now() + 24 * 3600_000).toISOString().replace(/\.\d+Z$/, "Z");
  await leases.create({ id, labels: { "containerd.io/gc.expire": expire } }, ctx.call());
  try {
    return await fn(id);
  } finally {
    await leases.delete({ id }, ctx.call()).catch(() => {});
  }
}

/** A single overlay mount made read-only (the other kinds are left as they are). */
const readonlyMounts = (mounts: Mount[]): Mount[] =>
  mounts.length === 1 && mounts[0]!.type === "overlay"
    ? [{ ...mounts[0]!, options: [...mounts[0]!.options, "ro"] }]
    : mounts;

/**
 * Creates container `id` from `ref`: the snapshot first (prepared from the image's chain ID), then
 * the spec, built with that rootfs mounted read-only on a temp dir for user and group lookups.
 */
export async function createContainer(
  ctx: CliContext,
  ref: string,
  id: string,
  args: string[],
  f: ContainerFlags,
): Promise<{ spec: Spec; snapshotter: string }> {
  const img = await resolveImage(ctx, ref);
  const snapshotter = f.snapshotter || defaultSnapshotter();
  const labels = { ...(img.config.Labels ?? {}), ...parseLabelArgs(f.label) };
  const options = runtimeOptions(f);
  let spec: Spec | undefined;
  await withLease(ctx, async (lease) => {
    await ensureUnpacked(ctx, img, snapshotter, lease);
    const snaps = await ctx.client(Snapshots);
    const { mounts } = await snaps.prepare(
      { snapshotter, key: id, parent: img.chainId },
      ctx.call({ lease }),
    );
    try {
      spec = f.config
        ? (JSON.parse(readFileSync(f.config, "utf8")) as Spec)
        : await withTempMount(readonlyMounts(mounts), async (root) =>
            buildSpec(ctx.namespace, id, img.config, args, f, root),
          );
      const containers = await ctx.client(Containers);
      await containers.create(
        {
          container: {
            id,
            image: img.name,
            labels,
            runtime: { name: f.runtime, options },
            spec: { typeUrl: SPEC_TYPE_URL, value: Buffer.from(JSON.stringify(spec)) },
            snapshotter,
            snapshotKey: id,
            createdAt: timestampFromDate(new Date()),
            updatedAt: timestampFromDate(new Date()),
          },
        },
        ctx.call({ lease }),
      );
    } catch (err) {
      await snaps.remove({ snapshotter, key: id }, ctx.call()).catch(() => {});
      throw err;
    }
  });
  return { spec: spec as Spec, snapshotter };
}

// ---------------------------------------------------------------------------------------------
// Standard I/O through FIFOs

export interface TaskIO {
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
  /**
   * Start copying our stdin into the task (call once the task exists); `onEnd` runs once our stdin
   * ended and everything was written (the caller then closes the task's stdin with CloseIO).
   */
  startInput(onEnd?: () => void): void;
  /** Resolves when the task's output FIFOs reached EOF (or after `graceMs`). */
  drained(graceMs?: number): Promise<void>;
  close(): void;
}

/** No I/O: the shim connects the process to /dev/null. */
export const NULL_IO: TaskIO = {
  stdin: "",
  stdout: "",
  stderr: "",
  terminal: false,
  startInput() {},
  drained: async () => {},
  close() {},
};

function fifo(p: string): void {
  try {
    mknod(p, S_IFIFO | 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST" && !/exists/i.test(String(err))) throw err;
  }
}

/** Opens FIFOs at given paths (making them when missing) and pipes our stdio through them. */
export function fifoIO(
  paths: { stdin: string; stdout: string; stderr: string },
  terminal: boolean,
  opts: { dir?: string } = {},
): TaskIO {
  for (const p of [paths.stdin, paths.stdout, paths.stderr]) if (p) fifo(p);
  const ends: Promise<void>[] = [];
  const sockets: net.Socket[] = [];
  const reader = (p: string, out: NodeJS.WritableStream) => {
    if (!p) return;
    const fd = openSync(p, fsc.O_RDONLY | fsc.O_NONBLOCK);
    const s = new net.Socket({ fd, readable: true, writable: false });
    sockets.push(s);
    s.on("data", (b: Buffer) => out.write(b));
    ends.push(
      new Promise((resolve) => {
        s.once("end", resolve);
        s.once("close", resolve);
        s.once("error", () => resolve());
      }),
    );
  };
  reader(paths.stdout, process.stdout);
  reader(paths.stderr, process.stderr);
  // Read-write so that opening never blocks for a reader and data waits in the pipe.
  let inFd: number | undefined = paths.stdin ? openSync(paths.stdin, fsc.O_RDWR | fsc.O_NONBLOCK) : undefined;
  let input: net.Socket | undefined;
  return {
    ...paths,
    terminal,
    startInput(onEnd) {
      if (inFd === undefined || input) return;
      const w = new net.Socket({ fd: inFd, readable: false, writable: true });
      inFd = undefined;
      input = w;
      w.on("error", () => {});
      if (onEnd) w.once("close", onEnd);
      process.stdin.on("data", (b: Buffer) => w.write(b));
      process.stdin.once("end", () => w.destroySoon());
      process.stdin.on("error", () => w.destroy());
    },
    async drained(graceMs = 5000) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.all(ends),
        new Promise((r) => {
          timer = setTimeout(r, graceMs);
        }),
      ]);
      clearTimeout(timer);
    },
    close() {
      if (inFd !== undefined) closeSync(inFd);
      inFd = undefined;
      input?.destroy();
      for (const s of sockets) s.destroy();
      process.stdin.pause();
      process.stdin.destroy();
      if (opts.dir) rmSync(opts.dir, { recursive: true, force: true });
    },
  };
}

/**
 * New FIFOs for `id` in a fresh directory under `fifoDir` (default FIFO_ROOT), piped to our stdio.
 * With `keep` (a detached task) they are only made, and outlive this process: the shim holds them
 * open, `tasks attach` reopens them and `tasks delete` removes them.
 */
export function newFifoIO(
  id: string,
  terminal: boolean,
  execId?: string,
  opts: { fifoDir?: string; keep?: boolean } = {},
): TaskIO {
  const root = opts.fifoDir || FIFO_ROOT;
  mkdirSync(root, { recursive: true, mode: 0o700 });
  const dir = path.join(root, randomBytes(8).toString("hex"));
  mkdirSync(dir, { mode: 0o700 });
  const base = path.join(dir, execId ? `${id}-${execId}` : id);
  const paths = {
    stdin: `${base}-stdin`,
    stdout: `${base}-stdout`,
    stderr: terminal ? "" : `${base}-stderr`,
  };
  if (opts.keep) {
    // Detached: the shim wants a reader while it opens the FIFOs, so hold them open (without
    // reading) until we exit; what the task writes then waits in them for `tasks attach`.
    const fds: number[] = [];
    for (const p of [paths.stdin, paths.stdout, paths.stderr]) {
      if (!p) continue;
      fifo(p);
      fds.push(openSync(p, (p === paths.stdin ? fsc.O_RDWR : fsc.O_RDONLY) | fsc.O_NONBLOCK));
    }
    return {
      ...NULL_IO,
      ...paths,
      terminal,
      close() {
        for (const fd of fds.splice(0)) closeSync(fd);
      },
    };
  }
  return fifoIO(paths, terminal, { dir });
}

/** Removes the FIFO directory of a process's I/O paths when berth made it (under FIFO_ROOT). */
export function removeFifoDir(paths: { stdin?: string; stdout?: string; stderr?: string }): void {
  for (const p of [paths.stdin, paths.stdout, paths.stderr]) {
    if (!p) continue;
    const dir = path.dirname(p);
    if (path.dirname(dir) !== FIFO_ROOT) continue;
    rmSync(dir, { recursive: true, force: true });
    return;
  }
}

/** Our console in raw mode for a `-t` process (undefined when berth has no terminal). */
export function rawConsole(): Console | undefined {
  const con = currentConsole();
  con?.setRaw();
  return con;
}

/**
 * Keeps the task's pty sized like our console: `before()` sizes it ahead of Start (an init process
 * has its pty from Create on; an exec's comes with Start, so that one may fail quietly), `after()`
 * once started (as ctr does) and on every SIGWINCH from then on; `undo()` stops listening.
 */
export function consoleResizer(
  con: Console | undefined,
  resize: (width: number, height: number) => Promise<unknown>,
): { before(): Promise<void>; after(): Promise<void>; undo(): void } {
  const once = async (report: boolean) => {
    if (!con) return;
    try {
      const { width, height } = con.size();
      await resize(width, height);
    } catch (err) {
      if (report) process.stderr.write(`berth: resize pty: ${(err as Error).message}\n`);
    }
  };
  const onWinch = () => {
    void once(true);
  };
  return {
    before: () => once(false),
    async after() {
      if (!con) return;
      await once(true);
      process.on("SIGWINCH", onWinch);
    },
    undo() {
      process.off("SIGWINCH", onWinch);
    },
  };
}

/** Signal name or number → number ("SIGKILL", "KILL", "9"). */
export function parseSignal(s: string): number {
  if (/^\d+$/.test(s)) return Number(s);
  const name = s.toUpperCase().startsWith("SIG") ? s.toUpperCase() : `SIG${s.toUpperCase()}`;
  const n = (os.constants.signals as Record<string, number>)[name];
  if (n === undefined) throw new Error(`invalid signal ${JSON.stringify(s)}`);
  return n;
}

/** Forward our termination signals to a task process; returns the undo. */
export function forwardSignals(kill: (signal: number) => Promise<unknown>): () => void {
  const sigs: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"];
  const handlers = sigs.map((s) => {
    const h = () => {
      kill(os.constants.signals[s]).catch(() => {});
    };
    process.on(s, h);
    return [s, h] as const;
  });
  return () => {
    for (const [s, h] of handlers) process.off(s, h);
  };
}

// ---------------------------------------------------------------------------------------------
// berth run

async function run(ctx: CliContext, ref: string, id: string, args: string[], o: Record<string, unknown>) {
  const f = readContainerFlags(o);
  const detach = o.detach === true;
  const rm = o.rm === true;
  if (detach && rm) throw new Error("flags --detach and --rm cannot be specified together");
  if (f.tty && o.nullIo) throw new Error("tty and null-io cannot be used together");
  const { snapshotter } = await createContainer(ctx, ref, id, args, f);
  const tasks = await ctx.client(Tasks);
  const cleanup = async () => {
    if (!rm) return;
    await tasks.delete({ containerId: id }, ctx.call()).catch(() => {});
    const containers = await ctx.client(Containers);
    await containers.delete({ id }, ctx.call()).catch((err: unknown) => ctx.fail(String(err)));
    const snaps = await ctx.client(Snapshots);
    await snaps.remove({ snapshotter, key: id }, ctx.call()).catch(() => {});
  };
  // ctr puts the console in raw mode before it creates the task, and back when it returns
  const con = f.tty ? rawConsole() : undefined;
  let exitStatus = 0;
  try {
    const io = o.nullIo
      ? NULL_IO
      : newFifoIO(id, f.tty === true, undefined, { fifoDir: o.fifoDir as string | undefined, keep: detach });
    try {
      const snaps = await ctx.client(Snapshots);
      const { mounts } = await snaps.mounts({ snapshotter, key: id }, ctx.call());
      const { pid } = await tasks.create(
        {
          containerId: id,
          rootfs: mounts,
          stdin: io.stdin,
          stdout: io.stdout,
          stderr: io.stderr,
          terminal: io.terminal,
        },
        ctx.call(),
      );
      if (o.pidFile) writeFileSync(o.pidFile as string, String(pid));
    } catch (err) {
      io.close();
      removeFifoDir(io);
      await cleanup();
      throw err;
    }
    try {
      if (detach) {
        await tasks.start({ containerId: id }, ctx.call());
        return;
      }
      // Without a terminal, the end of our stdin closes the task's; with one, the pty stays open
      // (closing it would hang up the process), as with ctr.
      io.startInput(
        io.terminal
          ? undefined
          : () => {
              tasks.closeIO({ containerId: id, stdin: true }, ctx.call()).catch(() => {});
            },
      );
      const waiting = tasks.wait({ containerId: id }, ctx.stream());
      waiting.catch(() => {});
      const resizer = consoleResizer(io.terminal ? con : undefined, (width, height) =>
        tasks.resizePty({ containerId: id, width, height }, ctx.call()),
      );
      const undoSig = io.terminal
        ? () => {}
        : forwardSignals((signal) => tasks.kill({ containerId: id, signal }, ctx.call()));
      try {
        await resizer.before();
        await tasks.start({ containerId: id }, ctx.call());
        await resizer.after();
        exitStatus = (await waiting).exitStatus;
        await io.drained();
      } finally {
        undoSig();
        resizer.undo();
      }
    } finally {
      io.close();
      if (!detach) await cleanup();
    }
  } finally {
    con?.reset();
  }
  if (exitStatus !== 0) process.exitCode = exitStatus;
}

export function registerRun(program: Command, wire: Wire): void {
  addContainerFlags(
    program
      .command("run")
      .description("run a container")
      .argument("<image>", "image reference")
      .argument("<id>", "container id")
      .argument("[command...]", "command and arguments (default: the image's)")
      .option("--rm", "remove the container after running")
      .option("-d, --detach", "detach from the task after it has started")
      .option("--null-io", "send all I/O to /dev/null")
      .option("--fifo-dir <dir>", "directory for the I/O FIFOs")
      .option("--pid-file <file>", "file to write the task's pid to"),
  )
    // The container's command may carry its own options (sh -c ...): unknown ones stay arguments.
    .allowUnknownOption()
    .action(
      wire(async (ctx, cmd) => {
        const [ref, id, args] = cmd.processedArgs as [string, string, string[]];
        await run(ctx, ref, id, args ?? [], cmd.opts());
      }),
    );
}
