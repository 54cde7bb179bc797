// The spec's network-list operations: ADD runs the plugins in order chaining prevResult, DEL
// runs them in reverse with the cached ADD result, CHECK runs them in order with it.
import type { Logger } from "../../base/log.js";
import type { ResultCache } from "./cache.js";
import { buildEnv, type CniCommand, type CniRuntimeArgs, execPlugin, findPlugin } from "./exec.js";
import type { CapabilityArgs, NetworkConfigList, PluginConf } from "./types.js";
import { supportsCheck, supportsPrevResultOnDel } from "./version.js";

export interface ListContext {
  binDirs: string[];
  cache: ResultCache;
  log?: Logger;
  signal?: AbortSignal;
}

export interface RuntimeConf extends CniRuntimeArgs {
  capabilityArgs: CapabilityArgs;
}

/**
 * The stdin config of one plugin: its own object with the list's name and cniVersion,
 * the previous result, and `runtimeConfig` holding only the capabilities it declared.
 */
export function buildPluginConfig(
  list: Pick<NetworkConfigList, "name" | "cniVersion">,
  plugin: PluginConf,
  prevResult: unknown,
  capabilityArgs: CapabilityArgs,
): Buffer {
  const conf: Record<string, unknown> = { ...plugin, name: list.name, cniVersion: list.cniVersion };
  if (prevResult !== undefined) conf["prevResult"] = prevResult;
  const rc: Record<string, unknown> = {};
  for (const [cap, on] of Object.entries(plugin.capabilities ?? {})) {
    if (on !== true) continue;
    const v = capabilityArgs[cap];
    if (v !== undefined) rc[cap] = v;
  }
  if (Object.keys(rc).length > 0) conf["runtimeConfig"] = rc;
  else delete conf["runtimeConfig"];
  return Buffer.from(JSON.stringify(conf));
}

async function runPlugin(
  ctx: ListContext,
  command: CniCommand,
  list: NetworkConfigList,
  plugin: PluginConf,
  prev: unknown,
  rt: RuntimeConf,
): Promise<unknown> {
  const pluginPath = findPlugin(plugin.type, ctx.binDirs);
  const stdin = buildPluginConfig(list, plugin, prev, rt.capabilityArgs);
  const env = buildEnv(command, rt, ctx.binDirs);
  return execPlugin(pluginPath, list.name, command, stdin, env, { signal: ctx.signal, log: ctx.log });
}

/** ADD: returns the final (raw) result and caches it. */
export async function addNetworkList(
  ctx: ListContext,
  list: NetworkConfigList,
  rt: RuntimeConf,
): Promise<unknown> {
  let prev: unknown;
  for (const plugin of list.plugins) prev = await runPlugin(ctx, "ADD", list, plugin, prev, rt);
  ctx.cache.put({
    containerId: rt.containerId,
    config: list.bytes.toString("base64"),
    ifName: rt.ifName,
    networkName: list.name,
    cniArgs: rt.args,
    capabilityArgs: rt.capabilityArgs,
    result: prev,
  });
  return prev;
}

/**
 * DEL: plugins in reverse order, each given the cached ADD result (from 0.4.0 on). A network
 * that was never added has no cache entry; the plugins then run without prevResult and, as the
 * spec asks of them, succeed on missing resources. The cache entry goes only once DEL succeeded,
 * so a failed DEL can be retried with the same prevResult.
 */
export async function delNetworkList(
  ctx: ListContext,
  list: NetworkConfigList,
  rt: RuntimeConf,
): Promise<void> {
  const cached = await ctx.cache.get(list.name, rt.containerId, rt.ifName);
  const prev = supportsPrevResultOnDel(list.cniVersion) ? cached?.result : undefined;
  // The capabilities ADD ran with (e.g. the port mappings portmap has to remove) unless the
  // caller knows better.
  const capabilityArgs = { ...(cached?.capabilityArgs ?? {}), ...dropUndefined(rt.capabilityArgs) };
  const delRt = { ...rt, capabilityArgs };
  for (const plugin of [...list.plugins].reverse()) await runPlugin(ctx, "DEL", list, plugin, prev, delRt);
  await ctx.cache.delete(list.name, rt.containerId, rt.ifName);
}

/** CHECK: only for lists of 0.4.0 and later that do not set disableCheck; needs the cached result. */
export async function checkNetworkList(
  ctx: ListContext,
  list: NetworkConfigList,
  rt: RuntimeConf,
): Promise<void> {
  if (!supportsCheck(list.cniVersion) || list.disableCheck) return;
  const cached = await ctx.cache.get(list.name, rt.containerId, rt.ifName);
  if (!cached)
    throw new Error(
      `network ${JSON.stringify(list.name)} (${rt.ifName}): no cached result for container ${rt.containerId}; was it added?`,
    );
  for (const plugin of list.plugins) await runPlugin(ctx, "CHECK", list, plugin, cached.result, rt);
}

function dropUndefined(o: CapabilityArgs): CapabilityArgs {
  const out: CapabilityArgs = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) out[k] = v;
  return out;
}
