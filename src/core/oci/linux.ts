// Host facts the OCI spec options read on Linux: the calling process's effective capabilities,
// the device nodes under /dev, and containerd's rule for merging environment lists.
import { type BigIntStats, lstatSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";

/** Capability names by bit number (kernel 5.9's set). */
export const CAPABILITY_NAMES = [
  "CAP_CHOWN",
  "CAP_DAC_OVERRIDE",
  "CAP_DAC_READ_SEARCH",
  "CAP_FOWNER",
  "CAP_FSETID",
  "CAP_KILL",
  "CAP_SETGID",
  "CAP_SETUID",
  "CAP_SETPCAP",
  "CAP_LINUX_IMMUTABLE",
  "CAP_NET_BIND_SERVICE",
  "CAP_NET_BROADCAST",
  "CAP_NET_ADMIN",
  "CAP_NET_RAW",
  "CAP_IPC_LOCK",
  "CAP_IPC_OWNER",
  "CAP_SYS_MODULE",
  "CAP_SYS_RAWIO",
  "CAP_SYS_CHROOT",
  "CAP_SYS_PTRACE",
  "CAP_SYS_PACCT",
  "CAP_SYS_ADMIN",
  "CAP_SYS_BOOT",
  "CAP_SYS_NICE",
  "CAP_SYS_RESOURCE",
  "CAP_SYS_TIME",
  "CAP_SYS_TTY_CONFIG",
  "CAP_MKNOD",
  "CAP_LEASE",
  "CAP_AUDIT_WRITE",
  "CAP_AUDIT_CONTROL",
  "CAP_SETFCAP",
  "CAP_MAC_OVERRIDE",
  "CAP_MAC_ADMIN",
  "CAP_SYSLOG",
  "CAP_WAKE_ALARM",
  "CAP_BLOCK_SUSPEND",
  "CAP_AUDIT_READ",
  "CAP_PERFMON",
  "CAP_BPF",
  "CAP_CHECKPOINT_RESTORE",
] as const;

/** Names of the set bits of a capability bitmap (bits without a known name are left out). */
export function capabilityNames(bitmap: bigint): string[] {
  return CAPABILITY_NAMES.filter((_, i) => (bitmap >> BigInt(i)) & 1n);
}

/** The effective capabilities of this process (CapEff of /proc/self/status), by name. */
export function currentCapabilities(status = readFileSync("/proc/self/status", "utf8")): string[] {
  const line = status.split("\n").find((l) => l.startsWith("CapEff:"));
  if (!line) throw new Error("no CapEff line in /proc/self/status");
  const hex = line.slice(line.indexOf(":") + 1).trim();
  if (!/^[0-9a-fA-F]+$/.test(hex)) throw new Error(`failed to parse line "${line}"`);
  return capabilityNames(BigInt(`0x${hex}`));
}

export interface LinuxDevice {
  path: string;
  type: "c" | "b";
  major: number;
  minor: number;
  fileMode: number;
  uid: number;
  gid: number;
}

/** glibc's major()/minor() split of a dev_t. */
export function splitDev(dev: bigint): { major: number; minor: number } {
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  return { major: Number(major), minor: Number(minor) };
}

const SKIP_DIRS = new Set(["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"]);
const S_IFMT = 0o170000n;
const S_IFCHR = 0o020000n;
const S_IFBLK = 0o060000n;

/** The device node at `p` (not following a symlink), or undefined when it is no char/block device. */
export function deviceAt(p: string): LinuxDevice | undefined {
  let st: BigIntStats | undefined;
  try {
    st = lstatSync(p, { bigint: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
  if (!st) return undefined;
  const fmt = st.mode & S_IFMT;
  if (fmt !== S_IFCHR && fmt !== S_IFBLK) return undefined;
  const { major, minor } = splitDev(st.rdev);
  return {
    path: p,
    type: fmt === S_IFCHR ? "c" : "b",
    major,
    minor,
    fileMode: Number(st.mode & ~S_IFMT),
    uid: Number(st.uid),
    gid: Number(st.gid),
  };
}

/**
 * Every char and block device below `dir` (default /dev), in name order, skipping the pts, shm,
 * fd and mqueue directories, /dev/console, symlinks and FIFOs.
 */
export function hostDevices(dir = "/dev"): LinuxDevice[] {
  const out: LinuxDevice[] = [];
  const entries = readdirSync(dir, { withFileTypes: true }).sort((a, b) =>
    a.name < b.name ? -1 : a.name > b.name ? 1 : 0,
  );
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) {
      if (!SKIP_DIRS.has(e.name)) out.push(...hostDevices(p));
      continue;
    }
    if (e.name === "console") continue;
    const d = deviceAt(p);
    if (d) out.push(d);
  }
  return out;
}

const envKey = (e: string) => (e.includes("=") ? e.slice(0, e.indexOf("=")) : e);

/**
 * `overrides` applied to `defaults`: `K=V` replaces the default with key K (or is appended), a
 * bare `K` removes the default K.
 */
export function replaceOrAppendEnv(defaults: readonly string[], overrides: readonly string[]): string[] {
  const index = new Map<string, number>();
  const out: (string | undefined)[] = [];
  defaults.forEach((e, i) => {
    out.push(e);
    index.set(envKey(e), i);
  });
  for (const v of overrides) {
    const i = index.get(envKey(v));
    if (!v.includes("=")) {
      if (i !== undefined) out[i] = undefined;
      continue;
    }
    if (i !== undefined) out[i] = v;
    else out.push(v);
  }
  return out.filter((e): e is string => e !== undefined && e !== "");
}
