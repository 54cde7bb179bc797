// What bench/cri.ts sets up for each daemon, identically: the images it pushes to the local
// registry (a pause-like sandbox image, a workload image, distinct images for PullImage), the one
// CNI conflist (bridge + host-local + portmap + loopback on a bench-owned bridge and 10.x /24), the
// CRI config section (containerd 1.6's keys, which berthd reads too) and the checks and cleanup of
// what CNI leaves on the host (bridges, IPAM files, result cache entries, iptables chains).
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { busyboxImageWith, pushImage } from "../test/helpers/images.js";
import { freeSubnetOctets } from "../test/helpers/net.js";
import type { Registry } from "../test/helpers/registry.js";

/** Debian's containernetworking-plugins install here (`dpkg -L containernetworking-plugins`). */
export const CNI_BIN_DIR = "/usr/lib/cni";
const BB = "/bin/busybox";
const _MTIME = 1700000000;

export interface BenchImages {
  /** The sandbox image: busybox sleeping as PID 1 (killed with SIGKILL, as pause is). */
  pause: string;
  /** The workload: a shell that exits on SIGTERM at once (so StopContainer takes the TERM path). */
  workload: string;
  /** Distinct single-layer images (~1 MB each) for PullImage, never used by a container. */
  pulls: string[];
}

export async function pushBenchImages(reg: Registry, pulls: number): Promise<BenchImages> {
  await pushImage(reg.url, "bench/pause", "1", busyboxImageWith({ Entrypoint: [BB, "sleep", "3600"] }));
  await pushImage(
    reg.url,
    "bench/workload",
    "1",
    busyboxImageWith({
      // `wait` returns as soon as a trapped signal arrives; the backgrounded sleep dies with PID 1
      Entrypoint: [BB, "sh", "-c", `trap 'exit 0' TERM; ${BB} sleep 3600 & wait`],
    }),
  );
  const refs: string[] = [];
  for (let i = 0; i < pulls; i++) {
    const img = busyboxImageWith(
      { Entrypoint: [BB, "sleep", "3600"] },
      { name: "etc/bench-pull-id", data: `${i}\n` },
    );
    await pushImage(reg.url, `bench/pull-${i}`, "1", img);
    refs.push(`${reg.host}/bench/pull-${i}:1`);
  }
  return { pause: `${reg.host}/bench/pause:1`, workload: `${reg.host}/bench/workload:1`, pulls: refs };
}

export interface BenchNetwork {
  /** The conflist's network name (also host-local's and the CNI result cache's key). */
  name: string;
  bridge: string;
  subnet: string;
  confDir: string;
  ipamDir: string;
}

/** Third octets of 10.213.X.0/24 that no route on the host mentions. */
export function freeSubnets(count: number): string[] {
  return freeSubnetOctets("10.213", count).map((x) => `10.213.${x}.0/24`);
}

/** Bridge names berthbench0, berthbench1, … that no link on the host has yet (ours to delete). */
export function freeBridges(count: number): string[] {
  const out: string[] = [];
  for (let i = 0; i < 64 && out.length < count; i++)
    if (!linkExists(`berthbench${i}`)) out.push(`berthbench${i}`);
  if (out.length < count) throw new Error("no free berthbenchN bridge name");
  return out;
}

/**
 * Writes the one conflist into `dir`/net.d. No gateway address on the bridge and no masquerade:
 * nothing on the host routes to the pods, and bridge/portmap add no iptables rules (portmap only
 * does for pods with port mappings, which the bench does not ask for).
 */
export function writeNetwork(dir: string, name: string, bridge: string, subnet: string): BenchNetwork {
  const confDir = path.join(dir, "net.d");
  const ipamDir = path.join(dir, "ipam");
  mkdirSync(confDir, { recursive: true });
  writeFileSync(
    path.join(confDir, "10-bench.conflist"),
    JSON.stringify(
      {
        cniVersion: "1.0.0",
        name,
        plugins: [
          {
            type: "bridge",
            bridge,
            isGateway: false,
            ipMasq: false,
            ipam: { type: "host-local", dataDir: ipamDir, ranges: [[{ subnet }]] },
          },
          { type: "portmap", capabilities: { portMappings: true } },
          { type: "loopback" },
        ],
      },
      null,
      2,
    ),
  );
  return { name, bridge, subnet, confDir, ipamDir };
}

/** The CRI plugin's section, the same text for containerd 1.6 and berthd. */
export function criConfig(reg: Registry, images: BenchImages, net: BenchNetwork): string {
  const s = 'plugins."io.containerd.grpc.v1.cri"';
  return [
    `[${s}]`,
    `  sandbox_image = ${JSON.stringify(images.pause)}`,
    // root without CAP_SYS_RESOURCE here: a lower oom_score_adj than ours would fail
    "  restrict_oom_score_adj = true",
    // pod netns files live in the daemon's (temp) state dir, not /var/run/netns
    "  netns_mounts_under_state_dir = true",
    `[${s}.containerd]`,
    '  snapshotter = "overlayfs"',
    `[${s}.cni]`,
    `  bin_dir = ${JSON.stringify(CNI_BIN_DIR)}`,
    `  conf_dir = ${JSON.stringify(net.confDir)}`,
    "  max_conf_num = 1",
    `[${s}.registry.mirrors.${JSON.stringify(reg.host)}]`,
    `  endpoint = [${JSON.stringify(reg.url)}]`,
    "",
  ].join("\n");
}

/** Addresses host-local still holds for the network (files named like IPs). */
export function ipamLeases(net: BenchNetwork): string[] {
  const d = path.join(net.ipamDir, net.name);
  if (!existsSync(d)) return [];
  return readdirSync(d).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f));
}

/** libcni's result cache (shared by every CNI user): our network's entries only. */
const CNI_CACHE = "/var/lib/cni/results";
export function cachedResults(net: BenchNetwork): string[] {
  if (!existsSync(CNI_CACHE)) return [];
  return readdirSync(CNI_CACHE).filter((f) => f.startsWith(`${net.name}-`));
}

export function linkExists(name: string): boolean {
  try {
    execFileSync("ip", ["link", "show", "dev", name], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/**
 * Removes what the network may leave once every pod is gone: the bridge (CNI DEL never deletes
 * it), cached results of pods whose DEL never ran. Returns what it found, for the report.
 */
export function removeNetwork(net: BenchNetwork): string[] {
  const found: string[] = [];
  const leases = ipamLeases(net);
  if (leases.length > 0)
    found.push(`${leases.length} host-local leases left (${leases.slice(0, 3).join(", ")})`);
  const cached = cachedResults(net);
  if (cached.length > 0) found.push(`${cached.length} CNI cache entries left`);
  for (const f of cached) rmSync(path.join(CNI_CACHE, f), { force: true });
  if (linkExists(net.bridge)) {
    try {
      execFileSync("ip", ["link", "del", "dev", net.bridge], { stdio: "ignore" });
    } catch (err) {
      found.push(`cannot delete bridge ${net.bridge}: ${(err as Error).message}`);
    }
  }
  return found;
}

/** iptables chains (table:chain) in both the nft and the legacy backend, when the tools exist. */
export function iptablesChains(): Set<string> {
  const out = new Set<string>();
  for (const tool of ["iptables-save", "iptables-legacy-save"]) {
    let text: string;
    try {
      text = execFileSync(tool, [], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
    } catch {
      continue;
    }
    let table = "";
    for (const line of text.split("\n")) {
      if (line.startsWith("*")) table = line.slice(1);
      else if (line.startsWith(":")) out.add(`${tool}:${table}:${line.slice(1).split(" ")[0]}`);
    }
  }
  return out;
}
