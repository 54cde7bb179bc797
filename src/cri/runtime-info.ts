// RuntimeService's runtime-wide calls: Version, Status and UpdateRuntimeConfig.
//
// Network readiness follows containerd: the network is ready once a CNI network config is
// loadable from `cni.conf_dir`; until then Status reports NetworkReady false with the reason
// kubelet looks for (`NetworkPluginNotReady`), and kubelet keeps non-host-network pods pending.
// UpdateRuntimeConfig carries the node's pod CIDR; with `cni.conf_template` set and no network
// config present yet, the template is rendered into conf_dir, as containerd does for clusters
// whose CNI config depends on the node's CIDR.
import { mkdir } from "node:fs/promises";
import { errInvalidArgument } from "../base/errdefs.js";
import { templateDataFor } from "../core/cni/template.js";
import type { NetworkConfigList } from "../core/cni/types.js";
import type { CriConfig, CriDeps, RuntimeMethods } from "./context.js";
import { criState } from "./state.js";

/** The CRI version berth speaks (containerd reports the same "0.1.0" kubelet API version). */
export const KUBE_API_VERSION = "0.1.0";
export const RUNTIME_NAME = "berth";
export const RUNTIME_API_VERSION = "v1";

export const RUNTIME_READY = "RuntimeReady";
export const NETWORK_READY = "NetworkReady";
export const NETWORK_NOT_READY_REASON = "NetworkPluginNotReady";

export interface NetworkStatus {
  ready: boolean;
  networks: readonly NetworkConfigList[];
  /** Why the network is not ready ("" when ready). */
  error: string;
}

export interface RuntimeInfo {
  methods: RuntimeMethods;
  /** The pod CIDR from the last UpdateRuntimeConfig ("" before). */
  podCIDR(): string;
  /** Whether a CNI network config is loadable now. */
  networkStatus(): Promise<NetworkStatus>;
}

const SECRET_KEYS = new Set(["password", "auth", "identitytoken", "registrytoken"]);

/**
 * The effective CRI section for verbose Status, plus where berth keeps its data. Registry
 * credentials are masked: Status is readable by anyone who may list pods.
 */
export function effectiveConfig(config: CriConfig, extra: Record<string, unknown>): string {
  return JSON.stringify({ ...config, ...extra }, (k, v: unknown) =>
    SECRET_KEYS.has(k.toLowerCase()) && typeof v === "string" && v !== "" ? "<redacted>" : v,
  );
}

export function runtimeInfoMethods(deps: CriDeps): RuntimeInfo {
  const cfg: CriConfig = deps.config;
  let podCIDR = "";

  // The CNI manager pods are networked with: readiness and pod setup see the same configs.
  const cni = () => criState(deps).cni;
  const networkStatus = async (): Promise<NetworkStatus> => {
    const st = await cni().status();
    return st.ready
      ? { ready: true, networks: cni().loaded, error: "" }
      : { ready: false, networks: [], error: st.error };
  };

  const methods: RuntimeMethods = {
    version() {
      return {
        version: KUBE_API_VERSION,
        runtimeName: RUNTIME_NAME,
        runtimeVersion: deps.daemon.version,
        runtimeApiVersion: RUNTIME_API_VERSION,
      };
    },

    async status(req) {
      const net = await networkStatus();
      const conditions = [
        { type: RUNTIME_READY, status: true, reason: "", message: "" },
        net.ready
          ? { type: NETWORK_READY, status: true, reason: "", message: "" }
          : {
              type: NETWORK_READY,
              status: false,
              reason: NETWORK_NOT_READY_REASON,
              // containerd's wording, then why (naming conf_dir)
              message: `Network plugin returns error: cni plugin not initialized: ${net.error}`,
            },
      ];
      const info: Record<string, string> = {};
      if (req.verbose) {
        info["config"] = effectiveConfig(cfg, {
          rootDir: deps.rootDir,
          stateDir: deps.stateDir,
          podCIDR,
        });
        info["cniconfig"] = JSON.stringify({
          confDir: cfg.cni.conf_dir,
          binDir: cfg.cni.bin_dir,
          maxConfNum: cfg.cni.max_conf_num,
          networks: net.networks,
        });
        info["lastCNILoadStatus"] = net.ready ? "OK" : net.error;
      }
      return { status: { conditions }, info };
    },

    async updateRuntimeConfig(req) {
      const cidr = req.runtimeConfig?.networkConfig?.podCidr ?? "";
      if (cidr === "") return {};
      try {
        templateDataFor(cidr); // validates: a bad CIDR is the caller's error, template or not
      } catch (err) {
        throw errInvalidArgument((err as Error).message);
      }
      if (cidr !== podCIDR) deps.log.info("pod CIDR updated", { podCIDR: cidr });
      podCIDR = cidr;
      if (cfg.cni.conf_template === "") return {};
      // containerd creates conf_dir for the rendered file when it is missing
      await mkdir(cfg.cni.conf_dir, { recursive: true, mode: 0o755 });
      let written: string | undefined;
      try {
        written = await cni().updatePodCIDR(cidr);
      } catch (err) {
        throw errInvalidArgument(
          `failed to render conf_template ${cfg.cni.conf_template}: ${(err as Error).message}`,
        );
      }
      if (written) deps.log.info("CNI config rendered from conf_template", { file: written, podCIDR: cidr });
      return {};
    },
  };
  return { methods, podCIDR: () => podCIDR, networkStatus };
}
