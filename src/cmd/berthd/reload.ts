// Config reload (SIGHUP, berth.config.v1.Config/Reload): read config.toml and its imports again,
// check the whole result, then apply what live-keys.ts lists, all or nothing. It lives with the
// daemon because it reaches into several plugins (CRI, transfer, GC), the logger's sink and the
// metrics listener.
//
// Changes are found by comparing what the files said before with what they say now (flags such as
// --log-level stay out of it), so a key the file never changes is never reported. Keys that cannot
// change live are reported as needing a restart and left alone: the running daemon keeps its
// value until it restarts, and every later reload reports them again.
import { readFileSync } from "node:fs";
import type { Server as HttpServer } from "node:http";
import { create } from "@bufbuild/protobuf";
import { anyPack } from "@bufbuild/protobuf/wkt";
import { parseDuration } from "../../base/duration.js";
import { errorf } from "../../base/errdefs.js";
import { type Logger, type LogSink, parseLevel } from "../../base/log.js";
import { type PluginSet, pluginKey } from "../../base/plugin.js";
import { PluginType } from "../../base/plugin-types.js";
import { type Config, ConfigError, type LoadResult, type Table } from "../../config/config.js";
import { type ConfigChange, ConfigKeyError, diffConfigs, keyError, tomlPath } from "../../config/diff.js";
import { keyAtLine } from "../../config/locate.js";
import type { Exchange } from "../../core/events/exchange.js";
import type { GcScheduler, SchedulerConfig } from "../../core/gc/scheduler.js";
import { type Metrics, recordConfigReload } from "../../core/metrics.js";
import { criRegistrySettings } from "../../core/remotes/cri-registry.js";
import type { CriConfig } from "../../cri/config.js";
import { ConfigReloadedSchema } from "../../gen/berth/config/v1/config_pb.js";
import { CRI_PLUGIN_KEY, type CriPluginInstance } from "../../plugins/cri.js";
import { checkCriSection } from "../../plugins/cri-check.js";
import type { ReloadReport } from "../../services/berth-config.js";
import type { LocalTransfer } from "../../services/transfer.js";

/** The topic of the event published after each applied reload. */
export const CONFIG_RELOAD_TOPIC = "/config/reload";
/** Events carry a namespace (containerd requires one); the daemon-wide ones go in "default". */
const EVENT_NAMESPACE = "default";

const GC_KEY = pluginKey(PluginType.GC, "scheduler");
const q = (k: string) => tomlPath(["plugins", k]);

// The keys each part applies. Together they must cover LIVE_KEYS (a unit test checks).
const METRICS_KEYS = ["metrics.address", "metrics.grpc_histogram"];
const LOG_KEYS = ["debug.level", "debug.format"];
const GC_KEYS = ["pause_threshold", "deletion_threshold", "mutation_threshold", "schedule_delay"].map(
  (k) => `${q(GC_KEY)}.${k}`,
);
const TRANSFER_KEYS = [`${q(CRI_PLUGIN_KEY)}.registry`];
const CRI_KEYS = [
  "registry",
  "sandbox_image",
  "max_container_log_line_size",
  "stream_idle_timeout",
  "cni.conf_dir",
  "cni.max_conf_num",
  "cni.conf_template",
].map((k) => `${q(CRI_PLUGIN_KEY)}.${k}`);
/** Every key some part of the reload applies. */
export const APPLIED_KEYS: readonly string[] = [...METRICS_KEYS, ...LOG_KEYS, ...GC_KEYS, ...CRI_KEYS];

export interface ReloadSource {
  /** Read the config file and its imports again (without command-line overrides). Throws ConfigError. */
  load(): LoadResult;
  /** What the files held when the daemon started: the first reload's baseline. */
  loaded: Config;
  /** The logger's sink: level and format change in place. */
  sink: LogSink;
  /** --log-level: the level while the file sets none. */
  logLevel?: string;
}

/** What the reload reaches in the daemon. */
export interface ReloadTarget {
  readonly plugins: PluginSet;
  readonly log: Logger;
  readonly metrics: Metrics;
  /** The daemon's effective config: applied keys are written into it. */
  readonly config: Config;
  metricsServer: HttpServer | undefined;
}

/** What applying one part did: undone if a later part fails, committed once all succeeded. */
interface Applied {
  rollback(): void | Promise<void>;
  commit?(): void | Promise<void>;
}

interface LivePart {
  name: string;
  /** live-keys.ts entries (or prefixes of them) it applies. */
  keys: string[];
  apply(next: Config): Applied | Promise<Applied>;
}

const covers = (keys: string[], key: string) => keys.some((k) => key === k || key.startsWith(`${k}.`));

const section = <T>(cfg: Config, key: string) => cfg.plugins[key] as T | undefined;

/**
 * Checks of the values each part reads, over the whole new config (not only what changed), so a
 * reload never applies half a file. Throws ConfigKeyError; returns notices.
 */
export function checkConfig(cfg: Config, logLevel?: string): string[] {
  const warnings: string[] = [];
  try {
    parseLevel(cfg.debug.level || logLevel || "info");
  } catch (err) {
    throw new ConfigKeyError(["debug", "level"], (err as Error).message);
  }
  if (!["", "text", "json"].includes(cfg.debug.format))
    throw new ConfigKeyError(
      ["debug", "format"],
      `${JSON.stringify(cfg.debug.format)}: want "text" or "json"`,
    );
  const addr = cfg.metrics.address;
  if (addr && !addr.startsWith("/")) {
    const port = /:(\d+)$/.exec(addr)?.[1];
    if (port === undefined || Number(port) > 65535)
      throw new ConfigKeyError(["metrics", "address"], `${JSON.stringify(addr)}: want host:port`);
  }
  const disabled = new Set(cfg.disabled_plugins);
  const gc = section<SchedulerConfig>(cfg, GC_KEY);
  if (gc && !disabled.has(GC_KEY)) {
    for (const key of ["schedule_delay", "startup_delay"] as const) {
      try {
        parseDuration(gc[key]);
      } catch (err) {
        throw new ConfigKeyError(["plugins", GC_KEY, key], (err as Error).message);
      }
    }
  }
  const cri = section<CriConfig>(cfg, CRI_PLUGIN_KEY);
  if (cri && !disabled.has(CRI_PLUGIN_KEY))
    warnings.push(...checkCriSection(cri, ["plugins", CRI_PLUGIN_KEY]));
  return warnings;
}

/**
 * Sets `path` in `target` to its value in `from`, or deletes it when `from` has none. Tables are
 * replaced whole where the two differ in shape, never filled with empty ones: a plugin may hold
 * the very same objects (the CRI plugin's registry table), and an empty mirror entry means
 * something there.
 */
function copyPath(target: Table, from: Table, path: string[]): void {
  let t = target;
  let f: unknown = from;
  for (const [i, k] of path.entries()) {
    f = (f as Table | undefined)?.[k];
    const last = i === path.length - 1;
    const next = t[k];
    if (last || typeof next !== "object" || next === null || Array.isArray(next)) {
      if (f === undefined) delete t[k];
      else t[k] = structuredClone(f);
      return;
    }
    t = next as Table;
  }
}

export class ConfigReloader {
  private baseline: Config;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly src: ReloadSource,
    private readonly target: ReloadTarget,
  ) {
    this.baseline = structuredClone(src.loaded);
  }

  /** One reload at a time: a second SIGHUP waits for the first, then reads the files again. */
  reload(source: string): Promise<ReloadReport> {
    const run = this.queue.then(() => this.reloadNow(source));
    this.queue = run.catch(() => {});
    return run;
  }

  private async reloadNow(source: string): Promise<ReloadReport> {
    const log = this.target.log;
    try {
      const report = await this.attempt(source);
      recordConfigReload(true);
      return report;
    } catch (err) {
      recordConfigReload(false);
      log.error("config reload failed; nothing changed", { source, error: (err as Error).message });
      throw err;
    }
  }

  private loadChecked(): { res: LoadResult; warnings: string[] } {
    let res: LoadResult;
    try {
      res = this.src.load();
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      let msg = err.message;
      // a syntax error: name the key written on that line too
      if (err.key === undefined && err.line !== undefined) {
        try {
          const key = keyAtLine(readFileSync(err.file, "utf8"), err.line);
          if (key && key.length > 0)
            msg = msg.replace(`${err.file}:${err.line}: `, `${err.file}:${err.line}: ${tomlPath(key)}: `);
        } catch {
          // the message without the key
        }
      }
      throw errorf("invalid argument", `config reload: ${msg}`, err);
    }
    try {
      return { res, warnings: [...res.warnings, ...checkConfig(res.config, this.src.logLevel)] };
    } catch (err) {
      if (err instanceof ConfigKeyError)
        throw errorf("invalid argument", `config reload: ${keyError(res.files, err).message}`, err);
      throw err;
    }
  }

  private async attempt(source: string): Promise<ReloadReport> {
    const log = this.target.log;
    const { res, warnings } = this.loadChecked();
    const next = res.config;
    const changes = diffConfigs(this.baseline, next);
    const parts = this.liveParts();
    // a live key no running part reads (its plugin is disabled or failed) waits for a restart
    const reported: ConfigChange[] = changes.map((c) =>
      c.live && !parts.some((p) => covers(p.keys, c.key)) ? { ...c, live: false } : c,
    );
    const liveKeys = reported.filter((c) => c.live).map((c) => c.key);
    const toApply = parts.filter((p) => liveKeys.some((k) => covers(p.keys, k)));

    const done: { part: LivePart; applied: Applied }[] = [];
    for (const part of toApply) {
      try {
        // only a part that is async is awaited: the synchronous ones swap within one tick
        const r = part.apply(next);
        done.push({ part, applied: r instanceof Promise ? await r : r });
      } catch (err) {
        for (const d of done.reverse()) {
          try {
            await d.applied.rollback();
          } catch (e) {
            log.error("config reload: rollback failed", { part: d.part.name, error: (e as Error).message });
          }
        }
        throw errorf(
          "failed precondition",
          `config reload: applying ${part.name}: ${(err as Error).message}; nothing changed`,
          err,
        );
      }
    }
    for (const d of done) {
      try {
        await d.applied.commit?.();
      } catch (err) {
        log.warn("config reload: cleanup after applying failed", {
          part: d.part.name,
          error: (err as Error).message,
        });
      }
    }
    // The daemon's effective config takes the applied keys.
    for (const c of reported)
      if (c.live) copyPath(this.target.config as unknown as Table, next as unknown as Table, c.path);
    // keys not applied keep their running value in the baseline: reported until a restart
    const baseline = structuredClone(next);
    for (const c of reported)
      if (!c.live) copyPath(baseline as unknown as Table, this.baseline as unknown as Table, c.path);
    this.baseline = baseline;

    const applied = reported.filter((c) => c.live);
    const restart = reported.filter((c) => !c.live);
    for (const w of warnings) log.warn(`config: ${w}`);
    for (const c of restart)
      log.warn("config change needs a restart to take effect", {
        key: c.key,
        old: c.oldValue,
        new: c.newValue,
      });
    log.info("config reloaded", {
      source,
      applied: applied.map((c) => c.key).join(" ") || "none",
      needs_restart: restart.length,
    });
    this.publish(applied, restart);
    return { changes: reported, files: res.files, warnings };
  }

  private publish(applied: ConfigChange[], restart: ConfigChange[]): void {
    const ex = this.target.plugins.find(PluginType.Event);
    if (ex?.status.state !== "ok") return;
    (ex.instance as Exchange).publish(
      EVENT_NAMESPACE,
      CONFIG_RELOAD_TOPIC,
      anyPack(
        ConfigReloadedSchema,
        create(ConfigReloadedSchema, {
          applied: applied.map((c) => c.key),
          needsRestart: restart.map((c) => c.key),
        }),
      ),
    );
  }

  /**
   * The parts that can apply something in this daemon, in apply order: the only one that can fail
   * (binding the metrics address) before those that change what requests see, which then all swap
   * in one tick with no await between them.
   */
  private liveParts(): LivePart[] {
    const t = this.target;
    const parts: LivePart[] = [];
    const ok = <T>(type: string, id: string): T | undefined => {
      const l = t.plugins.find(type, id);
      return l?.status.state === "ok" ? (l.instance as T) : undefined;
    };

    const src = this.src;
    parts.push({
      name: "logging",
      keys: LOG_KEYS,
      apply(next) {
        const sink = src.sink;
        const prev = { level: sink.level, format: sink.format };
        sink.level = parseLevel(next.debug.level || src.logLevel || "info");
        sink.format = (next.debug.format || "text") as LogSink["format"];
        return {
          rollback() {
            sink.level = prev.level;
            sink.format = prev.format;
          },
        };
      },
    });

    parts.push({
      name: "metrics listener",
      keys: METRICS_KEYS,
      async apply(next) {
        const prevHistogram = t.metrics.grpcHistogram;
        const prevAddr = t.config.metrics.address;
        const addr = next.metrics.address;
        const histogram = () => t.metrics.setGrpcHistogram(next.metrics.grpc_histogram);
        if (addr === prevAddr) {
          histogram();
          return { rollback: () => t.metrics.setGrpcHistogram(prevHistogram) };
        }
        // the new listener first: a taken port fails the reload with the old one still serving
        const server = addr ? await (await import("./http.js")).serveMetrics(addr, t.metrics) : undefined;
        const old = t.metricsServer;
        t.metricsServer = server;
        histogram();
        return {
          rollback: () => {
            t.metrics.setGrpcHistogram(prevHistogram);
            t.metricsServer = old;
            server?.close();
          },
          commit: () => {
            old?.close();
            old?.closeAllConnections?.();
            if (addr) t.log.info("metrics served", { address: addr });
          },
        };
      },
    });

    const gc = ok<GcScheduler>(PluginType.GC, "scheduler");
    if (gc)
      parts.push({
        name: "gc scheduler",
        keys: GC_KEYS,
        apply(next) {
          const prev = gc.reconfigure(section<SchedulerConfig>(next, GC_KEY)!);
          return { rollback: () => void gc.reconfigure(prev) };
        },
      });

    // Both readers of the CRI registry table swap in the same tick (no await between these two
    // parts' apply), and each pull reads its holder once when it starts: in-flight pulls keep the
    // settings they began with, later ones get the new, none sees a mix.
    const transfer = ok<LocalTransfer>(PluginType.Transfer, "local");
    if (transfer)
      parts.push({
        name: "transfer registry settings",
        keys: TRANSFER_KEYS,
        apply(next) {
          const prev = transfer.criRegistry;
          const registry = section<CriConfig>(next, CRI_PLUGIN_KEY)?.registry;
          transfer.criRegistry = registry ? criRegistrySettings(structuredClone(registry)) : undefined;
          return {
            rollback() {
              transfer.criRegistry = prev;
            },
          };
        },
      });
    const cri = ok<CriPluginInstance>(PluginType.GRPC, "cri");
    if (cri)
      parts.push({
        name: "CRI plugin",
        keys: CRI_KEYS,
        apply(next) {
          const undo = cri.reconfigure(section<CriConfig>(next, CRI_PLUGIN_KEY)!);
          return { rollback: undo };
        },
      });
    return parts;
  }
}
