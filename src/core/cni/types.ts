// Shapes of the CNI specification (1.0, with the older result versions plugins may still print):
// network configuration lists, plugin results and plugin errors. Only the fields the runtime
// reads are typed; everything else in a plugin's JSON is carried through untouched.

/** One plugin's configuration object, as read from a conflist's `plugins` array. */
export interface PluginConf {
  type: string;
  /** Capability names the plugin wants in `runtimeConfig` (e.g. `{ "portMappings": true }`). */
  capabilities?: Record<string, boolean>;
  [key: string]: unknown;
}

/** A network configuration list: a named network made of a chain of plugins. */
export interface NetworkConfigList {
  name: string;
  cniVersion: string;
  disableCheck: boolean;
  plugins: PluginConf[];
  /** The file it came from ("" when built in memory, e.g. the loopback network). */
  source: string;
  /** The list as JSON, the way it is stored in the result cache. */
  bytes: Buffer;
}

/** An interface a plugin created or configured (result `interfaces`). */
export interface CniInterface {
  name: string;
  mac?: string;
  /** The netns path for interfaces inside the sandbox; absent for host-side interfaces. */
  sandbox?: string;
}

/** An address a plugin assigned (result `ips`). `address` is in CIDR form, e.g. 10.88.0.5/24. */
export interface CniIPConfig {
  address: string;
  gateway?: string;
  /** Index into `interfaces`. */
  interface?: number;
}

export interface CniRoute {
  dst: string;
  gw?: string;
}

export interface CniDNS {
  nameservers?: string[];
  domain?: string;
  search?: string[];
  options?: string[];
}

/** A plugin result normalised to the 1.0 shape (whatever version the plugin printed). */
export interface CniResult {
  cniVersion: string;
  interfaces: CniInterface[];
  ips: CniIPConfig[];
  routes: CniRoute[];
  dns: CniDNS;
}

/** The `portMappings` capability: what the portmap plugin reads from `runtimeConfig`. */
export interface PortMapping {
  hostPort: number;
  containerPort: number;
  protocol: string;
  hostIP?: string;
}

/** The `bandwidth` capability (bits per second and bits, as the bandwidth plugin reads them). */
export interface BandwidthLimits {
  ingressRate?: number;
  ingressBurst?: number;
  egressRate?: number;
  egressBurst?: number;
}

/** The `dns` capability. */
export interface DnsCapability {
  servers?: string[];
  searches?: string[];
  options?: string[];
}

/**
 * Values for capability-driven `runtimeConfig`. A plugin receives a key only when its config
 * declares `capabilities: { <key>: true }` (the CNI conventions), so a plugin that does not
 * know `portMappings` never sees it.
 */
export interface CapabilityArgs {
  portMappings?: PortMapping[];
  bandwidth?: BandwidthLimits;
  dns?: DnsCapability;
  /** Static addresses to request (CIDR form), for IPAM plugins that declare `ips`. */
  ips?: string[];
  [capability: string]: unknown;
}
