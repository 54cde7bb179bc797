// Plugin registry and graph init: {type, id, requires, config defaults, init}. Plugins are
// initialised in dependency order; "skip" is not an error; required_plugins are enforced.
import { join } from "node:path";
import type { Logger } from "./log.js";

/** Thrown by an init function when the plugin does not apply on this host. */
export class SkipPlugin extends Error {
  constructor(reason: string) {
    // ctr decides "skip" vs "error" by finding this phrase in the init error message.
    super(`${reason}: skip plugin`);
    this.name = "SkipPlugin";
  }
}

export interface PluginMeta {
  platforms: { os: string; architecture: string; variant?: string }[];
  exports: Record<string, string>;
  capabilities: string[];
}

export interface InitContext<C> {
  type: string;
  id: string;
  /** Per-plugin directory under root: `<root>/<type>.<id>` (created lazily by the plugin). */
  root: string;
  /** Per-plugin directory under state. */
  state: string;
  /** Daemon-wide settings plugins may read. */
  daemon: DaemonInfo;
  config: C;
  log: Logger;
  meta: PluginMeta;
  /**
   * Another plugin's effective config by `<type>.<id>` (undefined when unknown): settings one
   * plugin section holds for several, e.g. the CRI registry tables daemon-side pulls honour.
   */
  configOf(key: string): unknown;
  /** The instance of a plugin this one requires (must be initialised ok). */
  get<T>(type: string, id?: string): T;
  /** All ok instances of a type, by id. */
  getAll<T>(type: string): Map<string, T>;
  /** Register a cleanup to run at shutdown (reverse init order). */
  onClose(fn: () => void | Promise<void>): void;
  /**
   * Register a step to run once every plugin is loaded, just before the gRPC socket opens (in
   * init order): where containerd starts its ttrpc server, for instance.
   */
  onServe(fn: () => void | Promise<void>): void;
  /** The whole set (introspection reports every plugin, including later ones). */
  plugins: PluginSet;
}

export interface DaemonInfo {
  root: string;
  state: string;
  address: string;
  ttrpcAddress: string;
  /** Owner of the ttrpc socket (`[ttrpc] uid/gid`); 0 when unset. */
  ttrpcUid?: number;
  ttrpcGid?: number;
  /** The `[timeouts]` table (Go durations by name, e.g. `io.containerd.timeout.shim.load`). */
  timeouts?: Record<string, string>;
  version: string;
  revision: string;
}

export interface Plugin<C = unknown> {
  type: string;
  id: string;
  /** Plugin types this one needs; "*" means every other plugin. */
  requires?: string[];
  /** Config defaults; what `config default` prints under `[plugins."<type>.<id>"]`. */
  defaults?: () => C;
  init(ic: InitContext<C>): Promise<unknown> | unknown;
}

export type PluginStatus =
  | { state: "ok" }
  | { state: "skip"; reason: string }
  | { state: "error"; reason: string };

export interface LoadedPlugin {
  plugin: Plugin<unknown>;
  status: PluginStatus;
  instance?: unknown;
  meta: PluginMeta;
}

export const pluginKey = (type: string, id: string) => `${type}.${id}`;

/** Topological order: dependencies first, registration order otherwise (stable). */
export function orderPlugins(plugins: Plugin<unknown>[]): Plugin<unknown>[] {
  const out: Plugin<unknown>[] = [];
  const state = new Map<Plugin<unknown>, "visiting" | "done">();
  const visit = (p: Plugin<unknown>, path: string[]) => {
    const s = state.get(p);
    if (s === "done") return;
    if (s === "visiting")
      throw new Error(`plugin dependency cycle: ${[...path, pluginKey(p.type, p.id)].join(" -> ")}`);
    state.set(p, "visiting");
    for (const req of p.requires ?? []) {
      if (req === "*") continue;
      for (const dep of plugins)
        if (dep.type === req && dep !== p) visit(dep, [...path, pluginKey(p.type, p.id)]);
    }
    state.set(p, "done");
    out.push(p);
  };
  const starAll = plugins.filter((p) => p.requires?.includes("*"));
  for (const p of plugins) if (!starAll.includes(p)) visit(p, []);
  for (const p of starAll) visit(p, []);
  return out;
}

export interface InitOptions {
  daemon: DaemonInfo;
  disabled: string[];
  required: string[];
  /** Effective plugin config by `<type>.<id>` (defaults already merged). */
  configFor: (p: Plugin<unknown>) => unknown;
  /** Effective config of any plugin section by `<type>.<id>`. */
  configByKey?: (key: string) => unknown;
  log: Logger;
}

export class PluginSet {
  readonly loaded: LoadedPlugin[] = [];
  private closers: (() => void | Promise<void>)[] = [];
  private servers: (() => void | Promise<void>)[] = [];

  find(type: string, id?: string): LoadedPlugin | undefined {
    return this.loaded.find((l) => l.plugin.type === type && (id === undefined || l.plugin.id === id));
  }

  instance<T>(type: string, id?: string): T {
    const l = this.find(type, id);
    if (!l) throw new Error(`no plugin ${id ? pluginKey(type, id) : type}`);
    if (l.status.state !== "ok")
      throw new Error(`plugin ${pluginKey(l.plugin.type, l.plugin.id)}: ${l.status.reason}`);
    return l.instance as T;
  }

  async init(plugins: Plugin<unknown>[], opts: InitOptions): Promise<void> {
    const disabled = new Set(opts.disabled);
    for (const p of orderPlugins(plugins)) {
      const key = pluginKey(p.type, p.id);
      if (disabled.has(key)) {
        opts.log.info("plugin disabled by config", { id: key });
        continue;
      }
      const meta: PluginMeta = { platforms: [], exports: {}, capabilities: [] };
      const loaded: LoadedPlugin = { plugin: p, status: { state: "ok" }, meta };
      const log = opts.log.child({ id: key });
      const ic: InitContext<unknown> = {
        type: p.type,
        id: p.id,
        root: join(opts.daemon.root, key),
        state: join(opts.daemon.state, key),
        daemon: opts.daemon,
        config: opts.configFor(p),
        configOf: (k) => opts.configByKey?.(k),
        log,
        meta,
        get: <T>(type: string, id?: string) => this.instance<T>(type, id),
        getAll: <T>(type: string) => {
          const m = new Map<string, T>();
          for (const l of this.loaded)
            if (l.plugin.type === type && l.status.state === "ok") m.set(l.plugin.id, l.instance as T);
          return m;
        },
        onClose: (fn) => this.closers.push(fn),
        onServe: (fn) => this.servers.push(fn),
        plugins: this,
      };
      log.debug("loading plugin", { type: p.type });
      try {
        loaded.instance = await p.init(ic);
      } catch (err) {
        if (err instanceof SkipPlugin) {
          loaded.status = { state: "skip", reason: err.message };
          log.info("skip loading plugin", { error: err.message });
        } else {
          const reason = err instanceof Error ? err.message : String(err);
          loaded.status = { state: "error", reason };
          log.warn("failed to load plugin", { error: reason });
        }
      }
      this.loaded.push(loaded);
    }
    for (const req of opts.required) {
      const [type, id] = splitKey(req);
      const l = this.find(type, id);
      if (!l) throw new Error(`required plugin ${req} not included`);
      if (l.status.state !== "ok")
        throw new Error(`required plugin ${req} failed to load: ${l.status.reason}`);
    }
  }

  /** Run the plugins' onServe steps (the daemon calls this just before it opens its socket). */
  async serve(): Promise<void> {
    for (const fn of this.servers.splice(0)) await fn();
  }

  async close(): Promise<void> {
    const fns = this.closers.splice(0).reverse();
    for (const fn of fns) {
      try {
        await fn();
      } catch {
        // shutdown continues: one plugin failing to close must not keep others open
      }
    }
  }
}

/** Split `io.containerd.grpc.v1.cri` into type and id (the id is after the last dot). */
export function splitKey(key: string): [string, string] {
  const i = key.lastIndexOf(".");
  return i < 0 ? ["", key] : [key.slice(0, i), key.slice(i + 1)];
}
