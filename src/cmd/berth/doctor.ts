// `berth doctor`: checks the host berthd runs on, without a daemon. One line per check: ok,
// warn or fail, what was found, and for anything not ok the fix. Exit status 1 when a check
// fails. The config is the one berthd would use: `berthd config dump` (the installed berthd next
// to this CLI) prints it merged with imports and defaults, so the CLI needs no config code.
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Command } from "commander";
import { parse } from "smol-toml";
import { CAP_SYS_RESOURCE, cgroupLayout, effectiveCaps, fsSpace, hasCap, which } from "../../sys/host.js";

export type Status = "ok" | "warn" | "fail";

export interface CheckResult {
  name: string;
  status: Status;
  detail: string;
  fix?: string;
}

/** The parts of berthd's effective config the checks read. */
export interface DoctorConfig {
  root: string;
  address: string;
  gid: number;
  criEnabled: boolean;
  cniBinDirs: string[];
  cniConfDir: string;
  restrictOomScoreAdj: boolean;
}

const CRI = "io.containerd.grpc.v1.cri";
/**
 * bin/berthd.js of the same installation: the first directory above this module's that has one
 * (dist/src/cmd/berth, or dist/bundle when the CLI runs bundled).
 */
const BERTHD = (() => {
  const here = dirname(fileURLToPath(import.meta.url));
  for (let dir = here; ; dir = dirname(dir)) {
    const candidate = join(dir, "bin/berthd.js");
    if (existsSync(candidate)) return candidate;
    // not found: the layout tsc gives; running it reports the missing file
    if (dirname(dir) === dir) return join(here, "../../../../bin/berthd.js");
  }
})();

type Table = Record<string, unknown>;
const table = (v: unknown): Table => (typeof v === "object" && v !== null ? (v as Table) : {});

/** Ask berthd for its effective config; throws with berthd's own message (file, line, key). */
export function loadDoctorConfig(configFile?: string): DoctorConfig {
  const args = [BERTHD, ...(configFile ? ["--config", configFile] : []), "config", "dump"];
  const r = spawnSync(process.execPath, args, { encoding: "utf8", timeout: 30_000 });
  if (r.error) throw new Error(`cannot run berthd config dump: ${r.error.message}`);
  if (r.status !== 0) throw new Error((r.stderr || `berthd config dump exited ${r.status}`).trim());
  const cfg = parse(r.stdout) as Table;
  const grpc = table(cfg.grpc);
  const cri = table(table(cfg.plugins)[CRI]);
  const cni = table(cri.cni);
  const disabled = Array.isArray(cfg.disabled_plugins) ? (cfg.disabled_plugins as string[]) : [];
  return {
    root: String(cfg.root),
    address: String(grpc.address),
    gid: Number(grpc.gid ?? 0),
    criEnabled: !disabled.includes(CRI) && !disabled.includes("cri"),
    cniBinDirs: String(cni.bin_dir ?? "")
      .split(":")
      .filter(Boolean),
    cniConfDir: String(cni.conf_dir ?? ""),
    restrictOomScoreAdj: cri.restrict_oom_score_adj === true,
  };
}

const CRI_KEY = `[plugins."${CRI}"]`;

function overlayCheck(): CheckResult {
  const name = "overlayfs";
  const fs = readFileSync("/proc/filesystems", "utf8");
  if (/\toverlay$/m.test(fs)) return { name, status: "ok", detail: "overlay is in /proc/filesystems" };
  const modprobe = which("modprobe") ?? which("modprobe", "/sbin:/usr/sbin");
  if (modprobe && spawnSync(modprobe, ["-n", "overlay"]).status === 0)
    return {
      name,
      status: "warn",
      detail: "the overlay module is not loaded (but can be)",
      fix: "modprobe overlay (the berth.service unit does this before starting)",
    };
  return {
    name,
    status: "fail",
    detail: "overlayfs is not in /proc/filesystems and no overlay module was found",
    fix: 'use a kernel with CONFIG_OVERLAY_FS, or set snapshotter = "native" in the CRI plugin (slow, copies layers)',
  };
}

const WANTED_V1 = ["blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids"];
const WANTED_V2 = ["cpu", "cpuset", "io", "memory", "pids"];

function cgroupCheck(): CheckResult {
  const name = "cgroups";
  const l = cgroupLayout();
  if (l.version === "none")
    return {
      name,
      status: "fail",
      detail: "no cgroup filesystem is mounted",
      fix: "mount cgroup2 on /sys/fs/cgroup",
    };
  const wanted = l.version === "v2" ? WANTED_V2 : WANTED_V1;
  const missing = wanted.filter((c) => !l.controllers.includes(c));
  const layout =
    l.version === "hybrid"
      ? `hybrid (v1 controllers, a v2 tree at ${l.unifiedMount} with ${l.unifiedControllers?.join(",") || "no controllers"})`
      : l.version === "v2"
        ? `v2 (unified at ${l.unifiedMount})`
        : "v1";
  const detail = `${layout}; controllers: ${l.controllers.join(",") || "none"}`;
  if (missing.length > 0)
    return {
      name,
      status: "fail",
      detail: `${detail}; missing ${missing.join(",")}`,
      fix: `enable the ${missing.join(", ")} controller${missing.length > 1 ? "s" : ""} (kernel config or cgroup_enable= boot parameters)`,
    };
  if (l.version !== "v2")
    return {
      name,
      status: "warn",
      detail,
      fix: "containers get cgroup v1 limits; for cgroup v2 (what current Kubernetes expects) boot with systemd.unified_cgroup_hierarchy=1",
    };
  return { name, status: "ok", detail };
}

function runtimeChecks(): CheckResult[] {
  const runtimes = ["runc", "crun"].map((n) => which(n)).filter((p): p is string => !!p);
  const shim = which("containerd-shim-runc-v2");
  return [
    runtimes.length > 0
      ? { name: "oci runtime", status: "ok", detail: runtimes.join(", ") }
      : {
          name: "oci runtime",
          status: "fail",
          detail: "neither runc nor crun is on PATH",
          fix: "install runc (apt-get install runc) or crun",
        },
    shim
      ? { name: "shim", status: "ok", detail: shim }
      : {
          name: "shim",
          status: "fail",
          detail: "containerd-shim-runc-v2 is not on PATH",
          fix: "install containerd's runc shim (Debian: the containerd package) into a PATH directory",
        },
  ];
}

const CNI_NEEDED = ["bridge", "host-local", "loopback", "portmap"];

function cniChecks(cfg: DoctorConfig): CheckResult[] {
  if (!cfg.criEnabled)
    return [{ name: "cni", status: "ok", detail: "the CRI plugin is disabled: no pod networking needed" }];
  const found = (b: string) => cfg.cniBinDirs.some((d) => existsSync(join(d, b)));
  const missing = CNI_NEEDED.filter((b) => !found(b));
  const dirs = cfg.cniBinDirs.join(":");
  const bin: CheckResult =
    missing.length === 0
      ? { name: "cni plugins", status: "ok", detail: `${CNI_NEEDED.join(", ")} in ${dirs}` }
      : {
          name: "cni plugins",
          status: missing.includes("loopback") ? "fail" : "warn",
          detail: `${missing.join(", ")} not found in bin_dir ${dirs || "(empty)"}`,
          fix: `install the CNI plugins there (Debian: containernetworking-plugins puts them in /usr/lib/cni) or set cni.bin_dir under ${CRI_KEY}`,
        };
  let confs: string[] = [];
  try {
    confs = readdirSync(cfg.cniConfDir).filter((f) => /\.(conf|conflist|json)$/.test(f));
  } catch {
    // missing directory: reported below
  }
  const conf: CheckResult =
    confs.length > 0
      ? { name: "cni config", status: "ok", detail: `${confs.sort().join(", ")} in ${cfg.cniConfDir}` }
      : {
          name: "cni config",
          status: "warn",
          detail: `no network config in conf_dir ${cfg.cniConfDir}: pods start without a network (NetworkReady=false)`,
          fix: `put a .conflist in ${cfg.cniConfDir} (or let your network add-on write one), or set cni.conf_template`,
        };
  return [bin, conf];
}

function socketCheck(cfg: DoctorConfig): CheckResult {
  const name = "socket";
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(cfg.address);
  } catch {
    return {
      name,
      status: "ok",
      detail: `${cfg.address} does not exist yet (berthd creates it with mode 0660, group ${cfg.gid})`,
    };
  }
  if (!st.isSocket())
    return {
      name,
      status: "fail",
      detail: `${cfg.address} exists and is not a socket: berthd cannot listen there`,
      fix: `remove it, or set [grpc] address to another path`,
    };
  const mode = st.mode & 0o777;
  const problems: string[] = [];
  if (mode & 0o007)
    problems.push(`mode ${mode.toString(8).padStart(4, "0")} lets every local user drive the daemon`);
  else if (mode !== 0o660) problems.push(`mode ${mode.toString(8).padStart(4, "0")}, expected 0660`);
  if (st.gid !== cfg.gid) problems.push(`group ${st.gid}, the config says gid ${cfg.gid}`);
  if (problems.length === 0)
    return { name, status: "ok", detail: `${cfg.address} mode 0660 group ${st.gid}` };
  return {
    name,
    status: mode & 0o007 ? "fail" : "warn",
    detail: `${cfg.address}: ${problems.join("; ")}`,
    fix: "restart berthd (it sets 0660 and [grpc] gid on the socket), or chmod 0660 / chgrp it",
  };
}

function capabilityCheck(cfg: DoctorConfig): CheckResult {
  const name = "capabilities";
  const caps = effectiveCaps(readFileSync("/proc/self/status", "utf8"));
  if (hasCap(caps, CAP_SYS_RESOURCE))
    return { name, status: "ok", detail: "CAP_SYS_RESOURCE is in the effective set" };
  const why =
    "CAP_SYS_RESOURCE is missing from the effective set (a container or VM withholds it): lowering oom_score_adj fails, for berthd's oom_score and for containers asking for a lower score than berthd's own";
  if (cfg.restrictOomScoreAdj || !cfg.criEnabled)
    return {
      name,
      status: "warn",
      detail: `${why}; ${cfg.criEnabled ? "restrict_oom_score_adj = true already keeps containers at or above berthd's score" : "the CRI plugin is disabled"}`,
      fix: "leave oom_score at 0 (or grant CAP_SYS_RESOURCE)",
    };
  return {
    name,
    status: "fail",
    detail: why,
    fix: `set restrict_oom_score_adj = true under ${CRI_KEY} (or grant CAP_SYS_RESOURCE)`,
  };
}

const GiB = 1024 ** 3;

function nearestExisting(path: string): string {
  let p = path;
  while (!existsSync(p) && dirname(p) !== p) p = dirname(p);
  return p;
}

function diskChecks(cfg: DoctorConfig): CheckResult[] {
  const at = nearestExisting(cfg.root);
  const s = fsSpace(at);
  const where = at === cfg.root ? cfg.root : `${at} (root ${cfg.root} does not exist yet)`;
  const pct = (free: number, total: number) => (total > 0 ? Math.round((free / total) * 100) : 100);
  const freePct = pct(s.bytesFree, s.bytesTotal);
  const disk: CheckResult = {
    name: "disk",
    status: s.bytesFree < GiB || freePct < 5 ? "fail" : s.bytesFree < 5 * GiB || freePct < 10 ? "warn" : "ok",
    detail: `${(s.bytesFree / GiB).toFixed(1)} GiB free (${freePct}%) under ${where}`,
  };
  if (disk.status !== "ok")
    disk.fix =
      "free space (berth gc prune, berth images rm, crictl rmi --prune) or move root to a larger filesystem";
  // filesystems without an inode limit (btrfs, some tmpfs) report 0 total
  const inodePct = pct(s.inodesFree, s.inodesTotal);
  const inodes: CheckResult = {
    name: "inodes",
    status: s.inodesTotal === 0 ? "ok" : inodePct < 2 ? "fail" : inodePct < 10 ? "warn" : "ok",
    detail:
      s.inodesTotal === 0
        ? `no fixed inode limit under ${where}`
        : `${s.inodesFree} of ${s.inodesTotal} inodes free (${inodePct}%) under ${where}`,
  };
  if (inodes.status !== "ok")
    inodes.fix =
      "remove unused images and snapshots (image layers are many small files), or use a filesystem with more inodes";
  return [disk, inodes];
}

function clockCheck(): CheckResult {
  const name = "clock";
  const now = new Date();
  // this file was written by the build: a clock before that year is certainly wrong
  const built = statSync(fileURLToPath(import.meta.url)).mtime.getUTCFullYear();
  if (now.getUTCFullYear() < built)
    return {
      name,
      status: "fail",
      detail: `the clock says ${now.toISOString()}, before this build (${built}): TLS to registries and token expiry will fail`,
      fix: "set the time (timedatectl set-time, or enable NTP: timedatectl set-ntp true)",
    };
  const r = spawnSync("timedatectl", ["show", "-p", "NTPSynchronized", "--value"], {
    encoding: "utf8",
    timeout: 3000,
  });
  const sync = r.status === 0 ? r.stdout.trim() : "";
  if (sync === "no")
    return {
      name,
      status: "warn",
      detail: `${now.toISOString()}; NTP is not synchronized`,
      fix: "enable time sync (timedatectl set-ntp true, systemd-timesyncd or chrony)",
    };
  return {
    name,
    status: "ok",
    detail: `${now.toISOString()}${sync === "yes" ? "; NTP synchronized" : "; NTP status unknown (no timedatectl answer)"}`,
  };
}

/** Runs every check; the config is loaded first, and a config that fails to load is itself a failure. */
export function runDoctor(configFile?: string): CheckResult[] {
  const results: CheckResult[] = [];
  let cfg: DoctorConfig | undefined;
  try {
    cfg = loadDoctorConfig(configFile);
    results.push({
      name: "config",
      status: "ok",
      detail:
        configFile ?? (existsSync("/etc/berth/config.toml") ? "/etc/berth/config.toml" : "built-in defaults"),
    });
  } catch (err) {
    results.push({
      name: "config",
      status: "fail",
      detail: (err as Error).message.replace(/^berthd: /, ""),
      fix: "correct the file at the line and key named",
    });
  }
  const guard = (name: string, f: () => CheckResult | CheckResult[]) => {
    try {
      results.push(...[f()].flat());
    } catch (err) {
      results.push({ name, status: "fail", detail: `check failed: ${(err as Error).message}` });
    }
  };
  guard("overlayfs", overlayCheck);
  guard("cgroups", cgroupCheck);
  guard("oci runtime", runtimeChecks);
  if (cfg) {
    const c = cfg;
    guard("cni", () => cniChecks(c));
    guard("socket", () => socketCheck(c));
    guard("capabilities", () => capabilityCheck(c));
    guard("disk", () => diskChecks(c));
  }
  guard("clock", clockCheck);
  return results;
}

export function formatResults(results: CheckResult[]): string {
  const width = Math.max(...results.map((r) => r.name.length));
  return results
    .map(
      (r) =>
        `${r.status.padEnd(4)}  ${r.name.padEnd(width)}  ${r.detail}${r.fix ? ` — fix: ${r.fix}` : ""}\n`,
    )
    .join("");
}

export function registerDoctor(program: Command): void {
  program
    .command("doctor")
    .description(
      "check this host for what berthd needs (runs locally; no daemon needed); exit 1 if a check fails",
    )
    .option("-c, --config <file>", "berthd's config file (default /etc/berth/config.toml if present)")
    .option("--format <format>", "output format: text or json", "text")
    .action((opts: { config?: string; format?: string }) => {
      const results = runDoctor(opts.config);
      if (opts.format === "json") process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
      else process.stdout.write(formatResults(results));
      if (results.some((r) => r.status === "fail")) process.exitCode = 1;
    });
}
