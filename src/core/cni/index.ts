// The CNI library for the CRI plugin. Pod code needs only what is exported here:
//
//   const cni = new CniManager({ binDirs, confDir, maxConfNum, cacheDir, log, confTemplate });
//   await cni.status();                      // { ready: true } or the CRI reason and message
//   const netns = await createNetns(dir);    // from src/sys/netns.ts
//   const r = await cni.setup(podId, netns, { namespace, name, uid }, { portMappings, dns, bandwidth });
//   r.ip, r.additionalIps                    // PodSandboxStatus network
//   await cni.check(podId, netns, pod, caps);
//   await cni.teardown(podId, netns, pod, caps);  // idempotent; works after a restart
//   removeNetns(netns);                      // idempotent
//   await cni.updatePodCIDR("10.88.0.0/16");  // UpdateRuntimeConfig with conf_template

export { createNetns, DEFAULT_NETNS_DIR, netnsDirFor, netnsExists, removeNetns } from "../../sys/netns.js";
export { ResultCache } from "./cache.js";
export { loadConfDir, loopbackNetwork, parseConf, parseConfList } from "./config.js";
export { buildEnv, CniPluginError, findPlugin } from "./exec.js";
export {
  CniManager,
  type CniManagerOptions,
  type CniStatus,
  capabilityArgsFor,
  DEFAULT_IFNAME,
  type InterfaceConfig,
  type PodIdentity,
  podCniArgs,
  type SetupResult,
} from "./manager.js";
export { addNetworkList, buildPluginConfig, checkNetworkList, delNetworkList } from "./netlist.js";
export {
  type ConfTemplateData,
  renderConfTemplate,
  TEMPLATE_CONF_FILE,
  TemplateError,
  templateDataFor,
} from "./template.js";
export type * from "./types.js";
