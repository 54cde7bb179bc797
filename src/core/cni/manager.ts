// CniManager: what the CRI pod code calls. It keeps the loaded network configs (reloading when
// conf_dir changes), sets up the loopback network plus the configured networks (`eth0`, `eth1`,
// … in file order) for a pod, tears them down and checks them, and renders conf_template.
import { existsSync, type FSWatcher, readdirSync, statSync, watch } from "node:fs";
import { readFile, rename, writeFile } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "../../base/log.js";
import { netnsExists } from "../../sys/netns.js";
import { ResultCache } from "./cache.js";
import { loadConfDir, loopbackNetwork, parseConfList } from "./config.js";
import {
  addNetworkList,
  checkNetworkList,
  delNetworkList,
  type ListContext,
  type RuntimeConf,
} from "./netlist.js";
import { renderConfTemplate, TEMPLATE_CONF_FILE, templateDataFor } from "./template.js";
import type { CapabilityArgs, CniDNS, CniResult, CniRoute, NetworkConfigList } from "./types.js";
import { parseResult } from "./version.js";

export interface CniManagerOptions {
  /** Plugin dirs searched in order (containerd's `bin_dir`; CNI_PATH). */
  binDirs: string[];
  /** containerd's `conf_dir`. */
  confDir: string;
  /** containerd's `max_conf_num`: how many config files to use (0: all). */
  maxConfNum: number;
  /** Where results are cached (kept across restarts: put it under the daemon's root). */
  cacheDir: string;
  log?: Logger;
  /** containerd's `conf_template` (a file path); "" or absent: none. */
  confTemplate?: string;
  /** Set up the `lo` interface with the loopback plugin (default true, as containerd does). */
  loopback?: boolean;
}

/** The pod identity passed to plugins in CNI_ARGS. */
export interface PodIdentity {
  namespace: string;
  name: string;
  uid: string;
}

export type CniStatus =
  | { ready: true }
  | {
      ready: false;
      /** The CRI condition reason. */
      reason: "NetworkPluginNotReady";
      /** The CRI condition message, worded as containerd's. */
      message: string;
      /** Why (e.g. `no network config found in /etc/cni/net.d`). */
      error: string;
    };

/** One interface of the pod's result, with the addresses assigned to it. */
export interface InterfaceConfig {
  mac?: string;
  sandbox?: string;
  /** Addresses without prefix length, e.g. 10.88.0.5, with their gateways. */
  ips: { ip: string; address: string; gateway?: string }[];
}

export interface SetupResult {
  /** The pod's primary IP (first IPv4 of eth0, else its first IPv6). */
  ip: string;
  /** eth0's other addresses, in result order (CRI's additional_ips). */
  additionalIps: string[];
  interfaces: Record<string, InterfaceConfig>;
  routes: CniRoute[];
  dns: CniDNS[];
  /** Each network's parsed result, in setup order. */
  networks: { name: string; ifName: string; result: CniResult }[];
}

/** The interface whose addresses are the pod's IPs. */
export const DEFAULT_IFNAME = "eth0";

/** CNI_ARGS for a pod, in a fixed order. */
export function podCniArgs(podId: string, pod: PodIdentity): [string, string][] {
  return [
    ["IgnoreUnknown", "1"],
    ["K8S_POD_NAMESPACE", pod.namespace],
    ["K8S_POD_NAME", pod.name],
    ["K8S_POD_INFRA_CONTAINER_ID", podId],
    ["K8S_POD_UID", pod.uid],
  ];
}

/** The runtimeConfig values for a pod's capabilities; empty ones are left out. */
export function capabilityArgsFor(caps: CapabilityArgs = {}): CapabilityArgs {
  const out: CapabilityArgs = {};
  for (const [k, v] of Object.entries(caps)) {
    if (v === undefined || v === null) continue;
    if (Array.isArray(v) && v.length === 0) continue;
    out[k] = v;
  }
  if (out.portMappings) {
    // Only mappings with a host port reach portmap, protocols lower-case as it expects.
    const pm = out.portMappings
      .filter((m) => m.hostPort > 0)
      .map((m) => ({ ...m, protocol: (m.protocol || "tcp").toLowerCase() }));
    if (pm.length > 0) out.portMappings = pm;
    else delete out.portMappings;
  }
  return out;
}

export class CniManager {
  private readonly opts: CniManagerOptions;
  private readonly cache: ResultCache;
  private networks: NetworkConfigList[] = [];
  private loadError = "cni config not loaded yet";
  private signature: string | undefined;
  /** Reloads run one at a time: a second caller waits for the load in progress, then checks. */
  private reloads: Promise<void> = Promise.resolve();
  private watcher: FSWatcher | undefined;
  private watchTimer: NodeJS.Timeout | undefined;
  private watchWanted = false;

  constructor(opts: CniManagerOptions) {
    this.opts = { loopback: true, ...opts };
    this.cache = new ResultCache(opts.cacheDir);
  }

  /** The configured networks currently in use (without the loopback one). */
  get loaded(): readonly NetworkConfigList[] {
    return this.networks;
  }

  /**
   * A cheap fingerprint of conf_dir (names, sizes, mtimes) to know when to reload. Synchronous:
   * every pod's setup checks it, and with the promise API each readdir and stat waited for a turn
   * of the busy event loop (a median of ~55 ms per setup with eight pods starting at once, all of
   * it on the way to the plugins). A conf dir holds a few files whose metadata is cached.
   */
  private dirSignature(): string {
    try {
      const names = readdirSync(this.opts.confDir).sort();
      const parts: string[] = [];
      for (const n of names) {
        try {
          const s = statSync(path.join(this.opts.confDir, n));
          parts.push(`${n}:${s.size}:${s.mtimeMs}`);
        } catch {
          parts.push(`${n}:gone`);
        }
      }
      return parts.join("|");
    } catch (err) {
      return `error:${(err as NodeJS.ErrnoException).code ?? "?"}`;
    }
  }

  /** A load under way (or queued): later checks wait for it, they do not race it. */
  private loading = 0;

  /** Loads conf_dir again when it changed since the last load. Never throws. */
  reload(force = false): Promise<void> {
    // the common case, nothing changed and nothing loading: no promise chain, no loop turn
    if (!force && this.loading === 0 && this.dirSignature() === this.signature) return Promise.resolve();
    this.loading++;
    this.reloads = this.reloads
      .then(() => this.reloadNow(force))
      .finally(() => {
        this.loading--;
      });
    return this.reloads;
  }

  private async reloadNow(force: boolean): Promise<void> {
    const sig = this.dirSignature();
    if (!force && sig === this.signature) return;
    this.signature = sig;
    try {
      const { networks } = await loadConfDir(this.opts.confDir, this.opts.maxConfNum, this.opts.log);
      this.networks = networks;
      this.loadError = "";
      this.opts.log?.info("loaded CNI network configs", { networks: networks.map((n) => n.name).join(",") });
    } catch (err) {
      this.networks = [];
      this.loadError = (err as Error).message;
      this.opts.log?.warn("no usable CNI network config", { error: this.loadError });
    }
  }

  /**
   * Reload as soon as a file in conf_dir changes, as containerd's watcher does (each use also
   * checks the fingerprint above, so this only makes the change visible sooner, e.g. in Status
   * and the log). A conf_dir that does not exist yet is not watched; the fingerprint covers it.
   */
  watch(): void {
    this.unwatch();
    this.watchWanted = true;
    try {
      const w = watch(this.opts.confDir, { persistent: false }, () => {
        // editors write a file in several steps: load once they are done
        if (this.watchTimer) clearTimeout(this.watchTimer);
        this.watchTimer = setTimeout(() => void this.reload(), 100);
        this.watchTimer.unref();
      });
      // conf_dir removed: the fingerprint before each use notices it come back
      w.on("error", () => {
        w.close();
        if (this.watcher === w) this.watcher = undefined;
      });
      this.watcher = w;
    } catch (err) {
      this.opts.log?.debug("CNI conf_dir not watched", {
        conf_dir: this.opts.confDir,
        error: (err as Error).message,
      });
    }
  }

  /** Stop watching conf_dir. */
  unwatch(): void {
    this.watchWanted = false;
    if (this.watchTimer) clearTimeout(this.watchTimer);
    this.watchTimer = undefined;
    this.watcher?.close();
    this.watcher = undefined;
  }

  /**
   * conf_dir, max_conf_num or conf_template changed by a config reload: later calls use the new
   * values; the configs are loaded again now. Returns the previous values, to undo with.
   */
  reconfigure(
    next: Pick<CniManagerOptions, "confDir" | "maxConfNum" | "confTemplate">,
  ): Pick<CniManagerOptions, "confDir" | "maxConfNum" | "confTemplate"> {
    const { confDir, maxConfNum, confTemplate } = this.opts;
    Object.assign(this.opts, next);
    if (this.watchWanted && confDir !== next.confDir) this.watch();
    void this.reload(true);
    return { confDir, maxConfNum, confTemplate };
  }

  /** Ready once a network config is loadable from conf_dir; otherwise the CRI reason. */
  async status(): Promise<CniStatus> {
    await this.reload();
    if (this.networks.length > 0) return { ready: true };
    return {
      ready: false,
      reason: "NetworkPluginNotReady",
      message: "Network plugin returns error: cni plugin not initialized",
      error: this.loadError,
    };
  }

  private ctx(signal?: AbortSignal): ListContext {
    return { binDirs: this.opts.binDirs, cache: this.cache, log: this.opts.log, signal };
  }

  /** (network, ifName) pairs in setup order: loopback first, then eth0, eth1, … */
  private attachments(): { list: NetworkConfigList; ifName: string }[] {
    const out: { list: NetworkConfigList; ifName: string }[] = [];
    if (this.opts.loopback) out.push({ list: loopbackNetwork(), ifName: "lo" });
    for (const [i, list] of this.networks.entries()) out.push({ list, ifName: `eth${i}` });
    return out;
  }

  private rt(
    podId: string,
    netns: string,
    ifName: string,
    pod: PodIdentity,
    caps: CapabilityArgs,
  ): RuntimeConf {
    return { containerId: podId, netns, ifName, args: podCniArgs(podId, pod), capabilityArgs: caps };
  }

  /**
   * CNI ADD of every network for the pod in `netnsPath`. Fails with the loader's reason when no
   * config is loaded. On failure what was set up so far is torn down again (best effort) so a
   * retry starts clean; the error is the plugin's.
   */
  async setup(
    podId: string,
    netnsPath: string,
    pod: PodIdentity,
    caps: CapabilityArgs = {},
    signal?: AbortSignal,
  ): Promise<SetupResult> {
    await this.reload();
    if (this.networks.length === 0) throw new Error(`cni plugin not initialized: ${this.loadError}`);
    const capabilityArgs = capabilityArgsFor(caps);
    // the networks are independent (an interface each: loopback, the pod's network), so they are
    // added at once; each network's own plugin chain still runs in order
    const attachments = this.attachments();
    const added = await Promise.allSettled(
      attachments.map(async (a) => {
        const raw = await addNetworkList(
          this.ctx(signal),
          a.list,
          this.rt(podId, netnsPath, a.ifName, pod, capabilityArgs),
        );
        return { name: a.list.name, ifName: a.ifName, result: parseResult(raw, a.list.cniVersion) };
      }),
    );
    const failed = added.find((r): r is PromiseRejectedResult => r.status === "rejected");
    const networks: SetupResult["networks"] = added.flatMap((r) =>
      r.status === "fulfilled" ? [r.value] : [],
    );
    if (failed) {
      const err = failed.reason as Error;
      for (const a of [...attachments].reverse()) {
        try {
          await delNetworkList(this.ctx(), a.list, this.rt(podId, netnsPath, a.ifName, pod, capabilityArgs));
        } catch (e) {
          this.opts.log?.warn("CNI cleanup after failed setup failed", {
            network: a.list.name,
            error: (e as Error).message,
          });
        }
      }
      throw err;
    }
    return summarize(networks, netnsPath);
  }

  /**
   * CNI DEL of every network for the pod: the configured ones, and any the pod was added to
   * that are no longer configured (from the result cache, with the config they were added
   * with). Succeeds for a pod that was never set up. `netnsPath` may name a namespace that is
   * already gone; plugins then only release what they hold outside it (IPAM, iptables).
   */
  async teardown(
    podId: string,
    netnsPath: string,
    pod: PodIdentity,
    caps: CapabilityArgs = {},
    signal?: AbortSignal,
  ): Promise<void> {
    await this.reload();
    const capabilityArgs = capabilityArgsFor(caps);
    // A file left behind without its namespace mount (a crash between umount and unlink) makes
    // plugins fail with "not a network namespace": tear down as for a namespace that is gone.
    const ns = netnsPath !== "" && existsSync(netnsPath) && !netnsExists(netnsPath) ? "" : netnsPath;
    const todo = this.attachments();
    const seen = new Set(todo.map((a) => `${a.list.name}\0${a.ifName}`));
    for (const e of await this.cache.forContainer(podId)) {
      if (seen.has(`${e.networkName}\0${e.ifName}`)) continue;
      try {
        todo.push({ list: parseConfList(Buffer.from(e.config, "base64")), ifName: e.ifName });
      } catch (err) {
        this.opts.log?.warn("cached CNI config unreadable", {
          network: e.networkName,
          error: (err as Error).message,
        });
      }
    }
    // independent networks, deleted at once like they were added; errors in configuration order
    const deleted = await Promise.allSettled(
      todo.map((a) =>
        delNetworkList(this.ctx(signal), a.list, this.rt(podId, ns, a.ifName, pod, capabilityArgs)),
      ),
    );
    const errors = deleted.flatMap((r) => (r.status === "rejected" ? [r.reason as Error] : []));
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) throw new Error(errors.map((e) => e.message).join("; "));
  }

  /** CNI CHECK of every network whose list allows it. */
  async check(
    podId: string,
    netnsPath: string,
    pod: PodIdentity,
    caps: CapabilityArgs = {},
    signal?: AbortSignal,
  ): Promise<void> {
    await this.reload();
    if (this.networks.length === 0) throw new Error(`cni plugin not initialized: ${this.loadError}`);
    const capabilityArgs = capabilityArgsFor(caps);
    for (const a of this.attachments())
      await checkNetworkList(
        this.ctx(signal),
        a.list,
        this.rt(podId, netnsPath, a.ifName, pod, capabilityArgs),
      );
  }

  /**
   * UpdateRuntimeConfig's pod CIDR: when no network config is loadable yet and conf_template is
   * set, renders it into `<conf_dir>/10-containerd-net.conflist` and reloads. Returns the file
   * written, or undefined when nothing was to be done (no template, no CIDR, already ready).
   */
  async updatePodCIDR(podCIDR: string): Promise<string | undefined> {
    const tmplFile = this.opts.confTemplate ?? "";
    if (tmplFile === "" || podCIDR.trim() === "") return undefined;
    await this.reload();
    if (this.networks.length > 0) {
      this.opts.log?.info("CNI network config already loaded; conf_template not rendered", {
        template: tmplFile,
      });
      return undefined;
    }
    const text = renderConfTemplate(await readFile(tmplFile, "utf8"), templateDataFor(podCIDR));
    const target = path.join(this.opts.confDir, TEMPLATE_CONF_FILE);
    const tmp = `${target}.tmp`;
    await writeFile(tmp, text, { mode: 0o644 });
    await rename(tmp, target);
    await this.reload(true);
    return target;
  }
}

function summarize(networks: SetupResult["networks"], netnsPath: string): SetupResult {
  const interfaces: Record<string, InterfaceConfig> = {};
  const routes: CniRoute[] = [];
  const dns: CniDNS[] = [];
  for (const { result, ifName } of networks) {
    for (const i of result.interfaces) {
      const cur = interfaces[i.name] ?? { ips: [] };
      if (i.mac) cur.mac = i.mac;
      if (i.sandbox) cur.sandbox = i.sandbox;
      interfaces[i.name] = cur;
    }
    for (const ip of result.ips) {
      const iface = ip.interface !== undefined ? result.interfaces[ip.interface] : undefined;
      // Results before 0.3.0 name no interface: their addresses are the network's own one's.
      if (!iface && result.interfaces.length > 0) continue;
      const name = iface?.name ?? ifName;
      interfaces[name] ??= { ips: [], sandbox: netnsPath };
      const entry: InterfaceConfig["ips"][number] = { ip: ip.address.split("/")[0]!, address: ip.address };
      if (ip.gateway) entry.gateway = ip.gateway;
      interfaces[name]!.ips.push(entry);
    }
    routes.push(...result.routes);
    if (Object.keys(result.dns).length > 0) dns.push(result.dns);
  }
  // The pod's IPs are those of the default interface inside the sandbox.
  const eth0 = interfaces[DEFAULT_IFNAME];
  const ips = eth0?.sandbox ? eth0.ips.map((x) => x.ip) : [];
  const primary = ips.find((ip) => !ip.includes(":")) ?? ips[0] ?? "";
  return {
    ip: primary,
    additionalIps: ips.filter((ip) => ip !== primary),
    interfaces,
    routes,
    dns,
    networks,
  };
}
