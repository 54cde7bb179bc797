// Network configuration loading from a conf dir: `.conflist` files are lists, `.conf`/`.json`
// files are single-plugin configs wrapped into a one-plugin list. Files are taken lowest name
// first, up to maxConfNum of the valid ones; an invalid file is skipped with its reason logged
// so one broken file never hides the next good one.
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "../../base/log.js";
import type { NetworkConfigList, PluginConf } from "./types.js";

export const CONF_EXTENSIONS = [".conf", ".conflist", ".json"] as const;

function isObject(v: unknown): v is Record<string, unknown> {
  return !!v && typeof v === "object" && !Array.isArray(v);
}

function pluginOf(v: unknown, where: string): PluginConf {
  if (!isObject(v)) throw new Error(`${where}: plugin config is not a JSON object`);
  if (typeof v["type"] !== "string" || v["type"] === "") throw new Error(`${where}: plugin has no "type"`);
  if (v["capabilities"] !== undefined && !isObject(v["capabilities"]))
    throw new Error(`${where}: "capabilities" is not an object`);
  return v as PluginConf;
}

/** `disableCheck` is a boolean in the spec; libcni also accepts the strings "true"/"false". */
function parseDisableCheck(v: unknown, where: string): boolean {
  if (v === undefined || v === false || v === "false") return false;
  if (v === true || v === "true") return true;
  throw new Error(`${where}: invalid disableCheck value ${JSON.stringify(v)}`);
}

/** Parses a network configuration list (a `.conflist` file's bytes). */
export function parseConfList(bytes: Buffer | string, source = ""): NetworkConfigList {
  const where = source || "network config list";
  let raw: unknown;
  try {
    raw = JSON.parse(bytes.toString());
  } catch (err) {
    throw new Error(`${where}: invalid JSON: ${(err as Error).message}`);
  }
  if (!isObject(raw)) throw new Error(`${where}: not a JSON object`);
  if (typeof raw["name"] !== "string" || raw["name"] === "") throw new Error(`${where}: no "name"`);
  if (raw["cniVersion"] !== undefined && typeof raw["cniVersion"] !== "string")
    throw new Error(`${where}: "cniVersion" is not a string`);
  if (!Array.isArray(raw["plugins"]) || raw["plugins"].length === 0)
    throw new Error(`${where}: no plugins in list`);
  const plugins = raw["plugins"].map((p, i) => pluginOf(p, `${where}: plugins[${i}]`));
  return {
    name: raw["name"],
    cniVersion: (raw["cniVersion"] as string | undefined) ?? "",
    disableCheck: parseDisableCheck(raw["disableCheck"], where),
    plugins,
    source,
    bytes: Buffer.from(JSON.stringify(raw)),
  };
}

/** Parses a single-plugin network config (`.conf`/`.json`) and wraps it into a list. */
export function parseConf(bytes: Buffer | string, source = ""): NetworkConfigList {
  const where = source || "network config";
  let raw: unknown;
  try {
    raw = JSON.parse(bytes.toString());
  } catch (err) {
    throw new Error(`${where}: invalid JSON: ${(err as Error).message}`);
  }
  if (!isObject(raw)) throw new Error(`${where}: not a JSON object`);
  // A list saved under a .conf/.json name is still a list (libcni would reject it for lack of
  // "type"; the message says what to do).
  if (Array.isArray(raw["plugins"]))
    throw new Error(`${where}: is a network config list; name it *.conflist`);
  const plugin = pluginOf(raw, where);
  if (typeof raw["name"] !== "string" || raw["name"] === "") throw new Error(`${where}: no "name"`);
  const list: Record<string, unknown> = { name: raw["name"], plugins: [plugin] };
  if (typeof raw["cniVersion"] === "string") list["cniVersion"] = raw["cniVersion"];
  return parseConfList(Buffer.from(JSON.stringify(list)), source);
}

export interface LoadedConfigs {
  networks: NetworkConfigList[];
  /** Files that were skipped, with the reason. */
  skipped: { file: string; reason: string }[];
}

/**
 * Loads the network configs of `dir`: files with a CNI extension, lowest name first, at most
 * `maxConfNum` valid ones (0 or less: all, as containerd's max_conf_num = 0 means).
 * Throws `no network config found in <dir>` when none is valid (or the dir does not exist).
 */
export async function loadConfDir(dir: string, maxConfNum: number, log?: Logger): Promise<LoadedConfigs> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === "ENOENT" || e.code === "ENOTDIR")
      throw new Error(`no network config found in ${dir}: directory does not exist`);
    throw new Error(`no network config found in ${dir}: ${e.message}`);
  }
  const files = names
    .filter((n) => (CONF_EXTENSIONS as readonly string[]).includes(path.extname(n)))
    .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const networks: NetworkConfigList[] = [];
  const skipped: { file: string; reason: string }[] = [];
  for (const name of files) {
    if (maxConfNum > 0 && networks.length >= maxConfNum) break;
    const file = path.join(dir, name);
    try {
      const bytes = await readFile(file);
      networks.push(name.endsWith(".conflist") ? parseConfList(bytes, file) : parseConf(bytes, file));
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      // A file that vanished or is a directory is not a config; say why all the same.
      const reason = e.code === "EISDIR" ? "is a directory" : e.message;
      skipped.push({ file, reason });
      log?.warn("skipping invalid CNI network config", { file, error: reason });
    }
  }
  if (networks.length === 0) {
    const detail = skipped.length > 0 ? `: ${skipped.map((s) => s.reason).join("; ")}` : "";
    throw new Error(`no network config found in ${dir}${detail}`);
  }
  return { networks, skipped };
}

/** The loopback network the runtime sets up in every pod (interface `lo`). */
export function loopbackNetwork(): NetworkConfigList {
  return parseConfList(
    JSON.stringify({ cniVersion: "0.3.1", name: "cni-loopback", plugins: [{ type: "loopback" }] }),
  );
}
