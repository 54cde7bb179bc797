// Running one CNI plugin binary: locate it in the bin dirs, pass the CNI_* environment and the
// config on stdin, read the result (or the spec's error object) from stdout.
import { accessSync, constants, statSync } from "node:fs";
import path from "node:path";
import type { Logger } from "../../base/log.js";
import { runCollect } from "../../sys/spawn.js";

export type CniCommand = "ADD" | "DEL" | "CHECK" | "VERSION";

/** A plugin failure, with the spec's error fields when the plugin printed them. */
export class CniPluginError extends Error {
  constructor(
    readonly plugin: string,
    readonly network: string,
    readonly command: CniCommand,
    /** The spec's error code (1–99 reserved by the spec; 0 when the plugin printed none). */
    readonly code: number,
    readonly msg: string,
    readonly details: string,
  ) {
    super(
      `plugin type=${JSON.stringify(plugin)} name=${JSON.stringify(network)} failed (${command.toLowerCase()}): ` +
        (details ? `${msg}: ${details}` : msg),
    );
    this.name = "CniPluginError";
  }
}

/** The arguments that become CNI_* variables. */
export interface CniRuntimeArgs {
  containerId: string;
  netns: string;
  ifName: string;
  /** CNI_ARGS pairs, in order. */
  args: [string, string][];
}

/** The CNI_* environment for one invocation (on top of the daemon's own, for PATH etc.). */
export function buildEnv(
  command: CniCommand,
  rt: CniRuntimeArgs,
  binDirs: string[],
  base: NodeJS.ProcessEnv = process.env,
): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...base };
  // portmap and bridge call iptables/ip by name: make sure the sbin dirs are searched even when
  // the daemon was started with a minimal PATH.
  const p = (env["PATH"] ?? "").split(":").filter(Boolean);
  for (const d of ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
    if (!p.includes(d)) p.push(d);
  env["PATH"] = p.join(":");
  env["CNI_COMMAND"] = command;
  env["CNI_CONTAINERID"] = rt.containerId;
  env["CNI_NETNS"] = rt.netns;
  env["CNI_IFNAME"] = rt.ifName;
  env["CNI_ARGS"] = rt.args.map(([k, v]) => `${k}=${v}`).join(";");
  env["CNI_PATH"] = binDirs.join(":");
  return env;
}

/** The first executable `<dir>/<type>` over binDirs, or a clear error naming the dirs. */
export function findPlugin(type: string, binDirs: string[]): string {
  if (type.includes("/") || type === "." || type === "..")
    throw new Error(`invalid CNI plugin type ${JSON.stringify(type)}`);
  for (const dir of binDirs) {
    const p = path.join(dir, type);
    try {
      if (!statSync(p).isFile()) continue;
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // not in this dir
    }
  }
  throw new Error(`failed to find plugin ${JSON.stringify(type)} in path [${binDirs.join(" ")}]`);
}

export interface ExecOptions {
  signal?: AbortSignal;
  log?: Logger;
}

/** Parses stdout of a failed plugin into the spec's {code,msg,details}, if it is that. */
export function parsePluginError(stdout: string): { code: number; msg: string; details: string } | undefined {
  const text = stdout.trim();
  if (!text.startsWith("{")) return undefined;
  try {
    const o = JSON.parse(text) as Record<string, unknown>;
    if (typeof o["msg"] !== "string" && typeof o["code"] !== "number") return undefined;
    return {
      code: typeof o["code"] === "number" ? o["code"] : 0,
      msg: typeof o["msg"] === "string" ? o["msg"] : "",
      details: typeof o["details"] === "string" ? o["details"] : "",
    };
  } catch {
    return undefined;
  }
}

/**
 * Runs a plugin and returns its parsed stdout (undefined when it printed nothing, as DEL and
 * CHECK do). A non-zero exit becomes a CniPluginError carrying the plugin's error object, or
 * its stderr when it printed none.
 */
export async function execPlugin(
  pluginPath: string,
  network: string,
  command: CniCommand,
  stdin: Buffer,
  env: NodeJS.ProcessEnv,
  opts: ExecOptions = {},
): Promise<unknown> {
  const type = path.basename(pluginPath);
  // posix_spawn, not child_process: a pod runs ~8 plugins and forking the daemon for each
  // blocks the event loop (src/sys/spawn.ts).
  const r = await runCollect(pluginPath, [], { env, stdin, signal: opts.signal });
  const { code, signal } = r;
  const stdout = r.stdout.toString();
  const stderr = r.stderr.toString();
  if (stderr.trim() !== "")
    opts.log?.debug("CNI plugin stderr", { plugin: type, command, stderr: stderr.trim() });
  if (code !== 0) {
    const perr = parsePluginError(stdout);
    if (perr) throw new CniPluginError(type, network, command, perr.code, perr.msg, perr.details);
    const why = signal ? `killed by ${signal}` : `exit status ${code}`;
    const text = (stderr.trim() || stdout.trim()).split("\n").slice(-3).join(" ");
    throw new CniPluginError(type, network, command, 0, why, text);
  }
  const text = stdout.trim();
  if (text === "") return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new CniPluginError(type, network, command, 0, "invalid result JSON", text.slice(0, 200));
  }
}
