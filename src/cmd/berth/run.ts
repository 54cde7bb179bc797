// `berth run`: make a container from an image (OCI runtime spec with containerd's defaults plus
// the image config, a rootfs snapshot from the image's chain ID), create its task with FIFOs for
// standard I/O, start it, wait and exit with its status. Also the pieces `berth containers create`
// and `berth tasks` share: container flags, spec building, FIFO I/O, signal names.
import { randomBytes } from "node:crypto";
import { closeSync, constants as fsc, mkdirSync, openSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { type Command, Option } from "commander";
import { isNotFound } from "../../core/errdefs.js";
import { hostPlatform, matchesAny, type Platform } from "../../core/pull/platforms.js";
import { chainIds } from "../../core/pull/pull.js";
import { formatReference, parseNormalized } from "../../core/reference.js";
import { MediaTypes } from "../../core/remotes/media.js";
import { OptionsSchema } from "../../gen/containerd/runc/v1/oci_pb.js";
import { Containers } from "../../gen/containerd/services/containers/v1/containers_pb.js";
import { Content } from "../../gen/containerd/services/content/v1/content_pb.js";
import { Images } from "../../gen/containerd/services/images/v1/images_pb.js";
import { Leases } from "../../gen/containerd/services/leases/v1/leases_pb.js";
import { Snapshots } from "../../gen/containerd/services/snapshots/v1/snapshots_pb.js";
import { Tasks } from "../../gen/containerd/services/tasks/v1/tasks_pb.js";
import { mknod, S_IFIFO } from "../../sys/mknod.js";
import type { CliContext, Wire } from "./main.js";
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
  linux: {
    resources?: {
      devices?: { allow: boolean; type?: string; major?: number; minor?: number; access?: string }[];
      memory?: { limit?: number };
      cpu?: { quota?: number; period?: number };
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

/** Every capability the running kernel knows (for --privileged), from its last cap number. */
function allCaps(): string[] {
  const names = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
  ];
  let last = names.length - 1;
  try {
    last = Number(readFileSync("/proc/sys/kernel/cap_last_cap", "utf8").trim());
  } catch {
    // keep the full list
  }
  return names.slice(0, last + 1).map((n) => `CAP_${n}`);
}

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

/** Replace `K=...` entries of `base` by those of `extra` with the same key, append the rest. */
export function mergeEnv(base: readonly string[], extra: readonly string[]): string[] {
  const out = [...base];
  for (const e of extra) {
    const key = e.includes("=") ? e.slice(0, e.indexOf("=")) : e;
    const i = out.findIndex((x) => (x.includes("=") ? x.slice(0, x.indexOf("=")) : x) === key);
    if (i >= 0) out[i] = e;
    else out.push(e);
  }
  return out;
}

/** `uid`, `uid:gid`, `root`; names other than root need the image's /etc/passwd (not supported). */
export function parseUser(user: string): SpecUser {
  const [u = "", g] = user.split(":", 2);
  const num = (s: string, what: string): number => {
    if (s === "root") return 0;
    if (!/^\d+$/.test(s)) throw new Error(`user ${JSON.stringify(user)}: ${what} must be numeric (or root)`);
    return Number(s);
  };
  const uid = num(u, "the user");
  const gid = g === undefined ? (uid === 0 ? 0 : uid) : num(g, "the group");
  return { uid, gid };
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
  privileged?: boolean;
  readOnly?: boolean;
  snapshotter?: string;
  runtime: string;
  runcBinary?: string;
  label: string[];
  tty?: boolean;
  config?: string;
}

/** The spec for `id` from the defaults, the image config, the command line and the flags. */
export function buildSpec(
  ns: string,
  id: string,
  image: ImageConfig,
  args: string[],
  f: ContainerFlags,
): Spec {
  const s = defaultSpec(ns, id);
  const p = s.process;
  // image config
  p.env = mergeEnv(image.Env && image.Env.length > 0 ? image.Env : [DEFAULT_PATH_ENV], []);
  p.args = [...(image.Entrypoint ?? []), ...(args.length > 0 ? args : (image.Cmd ?? []))];
  p.cwd = image.WorkingDir || "/";
  if (image.User) p.user = parseUser(image.User);
  // flags
  let extraEnv: string[] = [];
  if (f.envFile) {
    extraEnv = readFileSync(f.envFile, "utf8")
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l !== "" && !l.startsWith("#"));
  }
  extraEnv = [...extraEnv, ...f.env];
  if (f.tty) {
    p.terminal = true;
    extraEnv.push("TERM=xterm");
  }
  p.env = mergeEnv(p.env, extraEnv);
  if (f.cwd) p.cwd = f.cwd;
  if (f.user) p.user = parseUser(f.user);
  if (f.readOnly) s.root.readonly = true;
  for (const m of f.mount) s.mounts.push(parseMountFlag(m));
  if (f.netHost) {
    s.linux.namespaces = s.linux.namespaces.filter((n) => n.type !== "network");
    for (const file of ["/etc/hosts", "/etc/resolv.conf"]) {
      s.mounts.push({ destination: file, type: "bind", source: file, options: ["rbind", "ro"] });
    }
  }
  for (const w of f.withNs) {
    const i = w.indexOf(":");
    if (i <= 0) throw new Error(`invalid --with-ns ${JSON.stringify(w)}: want type:path`);
    const type = w.slice(0, i);
    const nsPath = w.slice(i + 1);
    const existing = s.linux.namespaces.find((n) => n.type === type);
    if (existing) existing.path = nsPath;
    else s.linux.namespaces.push({ type, path: nsPath });
  }
  s.linux.resources = s.linux.resources ?? {};
  const res = s.linux.resources;
  if (f.memoryLimit !== undefined) {
    const n = Number(f.memoryLimit);
    if (!Number.isSafeInteger(n) || n < 0) throw new Error(`invalid --memory-limit ${f.memoryLimit}`);
    res.memory = { limit: n };
  }
  if (f.cpus !== undefined) {
    const n = Number(f.cpus);
    if (!Number.isFinite(n) || n <= 0) throw new Error(`invalid --cpus ${f.cpus}`);
    res.cpu = { period: 100_000, quota: Math.round(n * 100_000) };
  }
  if (f.privileged) {
    const all = allCaps();
    p.capabilities = { bounding: all, permitted: all, effective: [...all] };
    s.linux.maskedPaths = [];
    s.linux.readonlyPaths = [];
    res.devices = [{ allow: true, access: "rwm" }];
    for (const m of s.mounts) {
      if (m.type === "sysfs" || m.type === "cgroup") m.options = (m.options ?? []).filter((o) => o !== "ro");
    }
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Images

interface Json {
  mediaType?: string;
  manifests?: { mediaType: string; digest: string; size: number; platform?: Platform }[];
  config?: { digest: string; mediaType?: string };
  rootfs?: { diff_ids?: string[] };
}

async function readJson<T>(ctx: CliContext, digest: string): Promise<T> {
  const content = await ctx.client(Content);
  const parts: Uint8Array[] = [];
  for await (const r of content.read({ digest }, ctx.call())) parts.push(r.data);
  return JSON.parse(Buffer.concat(parts).toString("utf8")) as T;
}

const isIndex = (mt: string) => mt === MediaTypes.ociIndex || mt === MediaTypes.dockerManifestList;

/** The host platform's image config and rootfs chain ID of a stored image. */
export async function resolveImage(
  ctx: CliContext,
  ref: string,
): Promise<{ name: string; config: ImageConfig; chainId: string }> {
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
  if (isIndex(target.mediaType)) {
    const want = [hostPlatform()];
    const walk = async (digest: string): Promise<string | undefined> => {
      const idx = await readJson<Json>(ctx, digest);
      for (const m of idx.manifests ?? []) {
        if (isIndex(m.mediaType)) {
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
  return { name, config: cfg.config ?? {}, chainId };
}

// ---------------------------------------------------------------------------------------------
// Containers

/** Adds ctr's container flags (shared by `run` and `containers create`). */
export function addContainerFlags(cmd: Command): Command {
  return cmd
    .option("-t, --tty", "allocate a TTY for the container")
    .option("--env <K=V>", "environment variable to set in the container", collect, [])
    .option("--env-file <file>", "read environment variables from a file")
    .option("--cwd <dir>", "working directory of the process")
    .option("-u, --user <uid[:gid]>", "user id or uid:gid")
    .option("--mount <spec>", "mount: type=bind,src=/host,dst=/ctr,options=rbind:ro", collect, [])
    .option("--net-host", "use the host's network namespace")
    .option("--with-ns <type:path>", "join the namespace at path (e.g. network:/proc/1/ns/net)", collect, [])
    .option("--memory-limit <bytes>", "memory limit in bytes")
    .option("--cpus <n>", "CPU limit (CFS quota)")
    .option("--privileged", "run privileged: all capabilities, all devices, no masked paths")
    .option("--read-only", "mount the root filesystem read-only")
    .option("--snapshotter <name>", "snapshotter [$CONTAINERD_SNAPSHOTTER]")
    .addOption(new Option("--runtime <name>", "runtime name").default(DEFAULT_RUNTIME))
    .option("--runc-binary <path>", "runc-compatible binary for the runc shim (e.g. /usr/bin/crun)")
    .option("--label <K=V>", "container label", collect, [])
    .option("--config <file>", "use this OCI spec (JSON) instead of building one");
}

function readContainerFlags(o: Record<string, unknown>): ContainerFlags {
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
    privileged: o.privileged as boolean | undefined,
    readOnly: o.readOnly as boolean | undefined,
    snapshotter: o.snapshotter as string | undefined,
    runtime: (o.runtime as string) ?? DEFAULT_RUNTIME,
    runcBinary: o.runcBinary as string | undefined,
    label: (o.label as string[]) ?? [],
    config: o.config as string | undefined,
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

/** Creates container `id` from `ref` (snapshot prepared from the image's chain ID). */
export async function createContainer(
  ctx: CliContext,
  ref: string,
  id: string,
  args: string[],
  f: ContainerFlags,
): Promise<{ spec: Spec; snapshotter: string }> {
  const img = await resolveImage(ctx, ref);
  const spec: Spec = f.config
    ? (JSON.parse(readFileSync(f.config, "utf8")) as Spec)
    : buildSpec(ctx.namespace, id, img.config, args, f);
  const snapshotter = f.snapshotter || defaultSnapshotter();
  const labels = { ...(img.config.Labels ?? {}), ...parseLabelArgs(f.label) };
  const options = f.runcBinary
    ? {
        typeUrl: RUNC_OPTIONS_TYPE_URL,
        value: toBinary(OptionsSchema, create(OptionsSchema, { binaryName: f.runcBinary })),
      }
    : undefined;
  await withLease(ctx, async (lease) => {
    const snaps = await ctx.client(Snapshots);
    await snaps.prepare({ snapshotter, key: id, parent: img.chainId }, ctx.call({ lease }));
    const containers = await ctx.client(Containers);
    try {
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
  return { spec, snapshotter };
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

/** New FIFOs for `id` in a fresh directory under FIFO_ROOT. */
export function newFifoIO(id: string, terminal: boolean, execId?: string): TaskIO {
  mkdirSync(FIFO_ROOT, { recursive: true, mode: 0o700 });
  const dir = path.join(FIFO_ROOT, randomBytes(8).toString("hex"));
  mkdirSync(dir, { mode: 0o700 });
  const base = path.join(dir, execId ? `${id}-${execId}` : id);
  return fifoIO(
    { stdin: `${base}-stdin`, stdout: `${base}-stdout`, stderr: terminal ? "" : `${base}-stderr` },
    terminal,
    { dir },
  );
}

/** Put our TTY in raw mode and keep the task's pty size in step; returns the undo. */
export function setupTerminal(resize: (width: number, height: number) => Promise<unknown>): () => void {
  if (!process.stdin.isTTY) return () => {};
  process.stdin.setRawMode(true);
  const onResize = () => {
    const [w, h] = process.stdout.getWindowSize?.() ?? [80, 24];
    resize(w, h).catch(() => {});
  };
  onResize();
  process.on("SIGWINCH", onResize);
  return () => {
    process.off("SIGWINCH", onResize);
    process.stdin.setRawMode(false);
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
  const io = detach || o.nullIo ? NULL_IO : newFifoIO(id, f.tty === true);
  try {
    const snaps = await ctx.client(Snapshots);
    const { mounts } = await snaps.mounts({ snapshotter, key: id }, ctx.call());
    await tasks.create(
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
  } catch (err) {
    io.close();
    await cleanup();
    throw err;
  }
  io.startInput(() => {
    tasks.closeIO({ containerId: id, stdin: true }, ctx.call()).catch(() => {});
  });
  let exitStatus = 0;
  try {
    if (detach) {
      await tasks.start({ containerId: id }, ctx.call());
      return;
    }
    const waiting = tasks.wait({ containerId: id }, ctx.stream());
    waiting.catch(() => {});
    await tasks.start({ containerId: id }, ctx.call());
    const undoTerm = io.terminal
      ? setupTerminal((width, height) => tasks.resizePty({ containerId: id, width, height }, ctx.call()))
      : () => {};
    const undoSig = io.terminal
      ? () => {}
      : forwardSignals((signal) => tasks.kill({ containerId: id, signal }, ctx.call()));
    try {
      exitStatus = (await waiting).exitStatus;
      await io.drained();
    } finally {
      undoSig();
      undoTerm();
    }
  } finally {
    io.close();
    if (!detach) await cleanup();
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
      .option("--null-io", "send all I/O to /dev/null"),
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
