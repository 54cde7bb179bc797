// The registry settings of the CRI plugin's config section
// (`[plugins."io.containerd.grpc.v1.cri".registry]`): config_path (a certs.d tree of hosts.toml)
// or the older mirrors/configs/auths tables, plus headers for every request. berthd's daemon-side
// pulls honour them when a request names no hosts dir of its own, as CRI image pulls will.
//
// Validation follows containerd 1.6: config_path excludes `mirrors` and `configs.*.tls`, `auths`
// (keyed by URL) folds into `configs` (keyed by host), and the old tables are deprecated (warned).
import { errInvalidArgument } from "../../base/errdefs.js";
import {
  type Credentials,
  type HostsOptions,
  type LegacyRegistryConfig,
  legacyCredentials,
} from "./hosts.js";

type AuthConfig = NonNullable<NonNullable<LegacyRegistryConfig["configs"]>[string]["auth"]>;

/** The `registry` table as config.toml spells it (every key optional). */
export interface CriRegistryConfig {
  config_path?: string;
  mirrors?: LegacyRegistryConfig["mirrors"];
  configs?: LegacyRegistryConfig["configs"];
  auths?: Record<string, AuthConfig>;
  headers?: Record<string, string[]>;
}

export interface CriRegistrySettings {
  /** hosts.toml roots (config_path is a `:`-separated list), or none when the legacy tables apply. */
  configPaths: string[];
  /** The legacy tables (mirrors, configs with auths folded in); used only without config_path. */
  legacy?: LegacyRegistryConfig;
  /** Headers sent to every registry host (lower-cased names). */
  headers: Record<string, string[]>;
  /** Deprecation notices, for the daemon log. */
  warnings: string[];
  /** Credentials configured for a host (`configs."host".auth`), if any. */
  credentials(host: string): Credentials | undefined;
}

const nonEmpty = (o: object | undefined): boolean => o !== undefined && Object.keys(o).length > 0;

/** Validate and normalise the CRI registry table; throws an invalid-argument error naming the key. */
export function criRegistrySettings(cfg: CriRegistryConfig | undefined): CriRegistrySettings {
  const c = cfg ?? {};
  const warnings: string[] = [];
  const useConfigPath = (c.config_path ?? "") !== "";
  if (nonEmpty(c.mirrors)) {
    if (useConfigPath)
      throw errInvalidArgument("registry: `mirrors` cannot be set when `config_path` is provided");
    warnings.push("registry: `mirrors` is deprecated, please use `config_path` instead");
  }
  const configs: NonNullable<LegacyRegistryConfig["configs"]> = {};
  for (const [host, rc] of Object.entries(c.configs ?? {})) configs[host] = { ...rc };
  if (Object.values(configs).some((rc) => rc.tls !== undefined)) {
    if (useConfigPath)
      throw errInvalidArgument("registry: `configs.tls` cannot be set when `config_path` is provided");
    warnings.push("registry: `configs.tls` is deprecated, please use `config_path` instead");
  }
  if (nonEmpty(c.auths)) {
    for (const [endpoint, auth] of Object.entries(c.auths ?? {})) {
      let host = endpoint;
      if (endpoint.includes("://")) {
        try {
          host = new URL(endpoint).host;
        } catch {
          throw errInvalidArgument(
            `registry: failed to parse registry url ${JSON.stringify(endpoint)} from \`registry.auths\``,
          );
        }
      }
      configs[host] = { ...configs[host], auth };
    }
    warnings.push("registry: `auths` is deprecated, please use `configs` instead");
  }
  const headers: Record<string, string[]> = {};
  for (const [k, v] of Object.entries(c.headers ?? {})) {
    if (!Array.isArray(v) || v.some((x) => typeof x !== "string"))
      throw errInvalidArgument(`registry: headers.${k} must be an array of strings`);
    headers[k.toLowerCase()] = [...v];
  }
  const legacy: LegacyRegistryConfig | undefined =
    !useConfigPath && (nonEmpty(c.mirrors) || nonEmpty(configs))
      ? { mirrors: c.mirrors ?? {}, configs }
      : undefined;
  // Check every auth entry now, so a bad `auth` string is a startup error, not a pull-time one.
  for (const host of Object.keys(configs)) legacyCredentials({ configs }, host);
  return {
    configPaths: useConfigPath ? c.config_path!.split(":").filter((p) => p !== "") : [],
    legacy,
    headers,
    warnings,
    // Credentials apply with config_path too: containerd's CRI reads `configs.*.auth` either way.
    credentials: (host) => legacyCredentials({ configs }, host),
  };
}

/** HostsOptions for a pull that names no hosts dir of its own. */
export function criHostsOptions(s: CriRegistrySettings, plainHttp: boolean): HostsOptions {
  return s.configPaths.length > 0
    ? { configPaths: s.configPaths, plainHttp }
    : { legacy: s.legacy, plainHttp };
}
