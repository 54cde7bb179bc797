// The CRI section of a config reload, checked as the plugin would use it: the part of the CRI
// plugin a reload needs whether or not the plugin runs. It stays out of the CRI plugin's own
// code (cri-init.ts and what it imports), which berthd loads only when the plugin starts.
import { parseDuration } from "../base/duration.js";
import { ConfigKeyError } from "../config/diff.js";
import { parseNormalized } from "../core/reference.js";
import { criRegistrySettings } from "../core/remotes/cri-registry.js";
import type { CriConfig } from "../cri/config.js";

/**
 * Check a CRI section as the plugin would use it; throws a ConfigKeyError (path under `prefix`).
 * Returns notices (deprecated registry tables).
 */
export function checkCriSection(c: CriConfig, prefix: string[]): string[] {
  let warnings: string[];
  try {
    warnings = criRegistrySettings(c.registry).warnings;
  } catch (err) {
    const msg = (err as Error).message;
    // name the table the message is about, so the error points at its line
    const sub = /`(mirrors|configs|auths|headers)/.exec(msg)?.[1] ?? /headers\./.exec(msg)?.[0];
    throw new ConfigKeyError(
      [...prefix, "registry", ...(sub ? [sub.replace(".", "")] : [])],
      msg.replace(/^registry: /, ""),
    );
  }
  try {
    if (parseDuration(c.stream_idle_timeout || "0") < 0) throw new Error("must not be negative");
  } catch (err) {
    throw new ConfigKeyError([...prefix, "stream_idle_timeout"], (err as Error).message);
  }
  try {
    parseNormalized(c.sandbox_image);
  } catch (err) {
    throw new ConfigKeyError([...prefix, "sandbox_image"], (err as Error).message);
  }
  if (c.cni.max_conf_num < 0)
    throw new ConfigKeyError([...prefix, "cni", "max_conf_num"], "must not be negative");
  return warnings;
}
