// The CRI plugin (io.containerd.grpc.v1 "cri"): Kubernetes' RuntimeService and ImageService on
// berthd's main gRPC socket, in the k8s.io namespace, over the daemon's stores and task manager.
// Its config section keeps containerd 1.6's keys (src/cri/config.ts). A registry table
// containerd would refuse makes this plugin report `error` with containerd's message; keys berth
// does not implement are named in the log once at start, never silently ignored.
import type { Logger } from "../base/log.js";
import type { Plugin } from "../base/plugin.js";
import { PluginType } from "../base/plugin-types.js";
import { type CriConfig, criDefaults } from "../cri/config.js";
import type { GrpcServicePlugin } from "./grpc.js";

export { type CriConfig, criDefaults } from "../cri/config.js";

export const CRI_PLUGIN_KEY = `${PluginType.GRPC}.cri`;

/** The CRI plugin's instance: its services, and how a config reload reaches it. */
export interface CriPluginInstance extends GrpcServicePlugin {
  /** Apply the live keys of a checked new section (plugins/cri-live.ts); returns the undo. */
  reconfigure(next: CriConfig): () => void;
}

/**
 * Config keys berth acts on (dotted paths; `*` is any one map key). A key under one of these
 * is read by some part of the CRI plugin; any other key set to a non-default value is reported
 * at start. Keep this list to what the code reads.
 */
export const IMPLEMENTED_KEYS: readonly string[] = [
  "sandbox_image",
  "max_concurrent_downloads",
  "max_container_log_line_size",
  "restrict_oom_score_adj",
  "ignore_image_defined_volumes",
  "netns_mounts_under_state_dir",
  "enable_unprivileged_ports",
  "enable_unprivileged_icmp",
  "device_ownership_from_security_context",
  "unset_seccomp_profile",
  "systemd_cgroup",
  "disable_cgroup",
  "disable_hugetlb_controller",
  "tolerate_missing_hugetlb_controller",
  "stream_server_address",
  "stream_server_port",
  "stream_idle_timeout",
  "enable_tls_streaming",
  "x509_key_pair_streaming",
  // berth applies no AppArmor profile, so turning AppArmor off is what already happens
  "disable_apparmor",
  "cni.bin_dir",
  "cni.conf_dir",
  "cni.max_conf_num",
  "cni.conf_template",
  "containerd.snapshotter",
  "containerd.default_runtime_name",
  "containerd.runtimes.*.runtime_type",
  "containerd.runtimes.*.options",
  "containerd.runtimes.*.pod_annotations",
  "containerd.runtimes.*.container_annotations",
  "registry",
];

/** Dotted paths of the leaves of a TOML table (arrays and empty tables are leaves). */
function leaves(v: unknown, prefix: string, out: Map<string, unknown>): Map<string, unknown> {
  if (v !== null && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length > 0) {
    for (const [k, x] of Object.entries(v)) leaves(x, prefix ? `${prefix}.${k}` : k, out);
  } else out.set(prefix, v);
  return out;
}

function covered(path: string, patterns: readonly string[]): boolean {
  const parts = path.split(".");
  return patterns.some((p) => {
    const pp = p.split(".");
    if (pp.length > parts.length) return false;
    return pp.every((x, i) => x === "*" || x === parts[i]);
  });
}

/** Keys of `config` that differ from the defaults and that berth does not implement. */
export function unimplementedKeys(
  config: CriConfig,
  implemented: readonly string[] = IMPLEMENTED_KEYS,
): string[] {
  const defaults = leaves(criDefaults(), "", new Map());
  const given = leaves(config, "", new Map());
  const out: string[] = [];
  for (const [k, v] of given) {
    if (covered(k, implemented)) continue;
    // a new runtime's keys count against that runtime's defaults (runc's)
    const m = /^containerd\.runtimes\.([^.]+)\.(.*)$/.exec(k);
    const def = defaults.has(k)
      ? defaults.get(k)
      : m
        ? defaults.get(`containerd.runtimes.runc.${m[2]}`)
        : undefined;
    if (JSON.stringify(v) !== JSON.stringify(def)) out.push(k);
  }
  return out.sort();
}

export function logUnimplemented(config: CriConfig, log: Logger): void {
  for (const key of unimplementedKeys(config))
    log.warn(`CRI config key ${key} is not implemented by berth; its value is ignored`, { key });
}

export const criPlugin: Plugin<CriConfig> = {
  type: PluginType.GRPC,
  id: "cri",
  requires: [
    PluginType.Event,
    PluginType.Metadata,
    PluginType.Lease,
    PluginType.Service,
    PluginType.RuntimeV2,
  ],
  defaults: criDefaults,
  async init(ic): Promise<CriPluginInstance> {
    // The CRI's code and its API's descriptors are loaded only for a plugin that starts: a
    // daemon with the plugin disabled (Docker's default config) never parses or builds them.
    const { initCri } = await import("./cri-init.js");
    return initCri(ic);
  },
};
