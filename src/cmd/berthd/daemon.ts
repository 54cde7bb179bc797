// The daemon: config → plugins → gRPC server on the unix socket; clean shutdown on signals.
import { mkdirSync, unlinkSync } from "node:fs";
import type { Server as HttpServer } from "node:http";
import type { Logger } from "../../base/log.js";
import { type Plugin, PluginSet, pluginKey } from "../../base/plugin.js";
import { PluginType } from "../../base/plugin-types.js";
import type { Config } from "../../config/config.js";
import type { MetadataDB } from "../../core/metadata/db.js";
import { Metrics, type MetricsSources } from "../../core/metrics.js";
import type { TaskManager } from "../../core/runtime/manager.js";
import { Config as ConfigService } from "../../gen/berth/config/v1/config_pb.js";
import { H2GrpcServer } from "../../grpc/h2server.js";
import type { GrpcServicePlugin } from "../../plugins/grpc.js";
import { configService } from "../../services/berth-config.js";
import { REVISION, VERSION } from "../../version.js";
import { checkOwnDir } from "./dirs.js";
import { applyOomScore } from "./oom.js";
import { ConfigReloader, type ReloadSource } from "./reload.js";
import { prepareSocketPath, secureSocket } from "./socket.js";

export class Daemon {
  readonly plugins = new PluginSet();
  private server: H2GrpcServer | undefined;
  private http: HttpServer[] = [];
  readonly metrics = new Metrics();
  /** The [metrics] listener: a reload replaces it. */
  metricsServer: HttpServer | undefined;
  private reloader: ConfigReloader | undefined;
  private stopping: Promise<void> | undefined;

  constructor(
    readonly config: Config,
    private readonly registered: Plugin[],
    readonly log: Logger,
    /** Where a config reload reads from; without it the daemon cannot reload. */
    private readonly reloadSource?: ReloadSource,
  ) {}

  /** Re-read the config files and apply what can change live (SIGHUP, the Config/Reload RPC). */
  reload(source: string) {
    if (!this.reloader) return Promise.reject(new Error("config reload: berthd is not serving yet"));
    return this.reloader.reload(source);
  }

  async start(): Promise<void> {
    const cfg = this.config;
    applyOomScore(cfg.oom_score, this.log);
    mkdirSync(cfg.root, { recursive: true, mode: 0o711 });
    mkdirSync(cfg.state, { recursive: true, mode: 0o711 });
    checkOwnDir("root", cfg.root);
    checkOwnDir("state", cfg.state);
    if (cfg.plugin_dir)
      this.log.warn("plugin_dir is ignored: berthd loads no external plugins", {
        plugin_dir: cfg.plugin_dir,
      });
    const address = cfg.grpc.address;
    if (!address) throw new Error("grpc.address must be set");
    // Check for a live daemon before touching any state.
    await prepareSocketPath(address);

    await this.plugins.init(this.registered, {
      daemon: {
        root: cfg.root,
        state: cfg.state,
        address,
        ttrpcAddress: cfg.ttrpc.address || `${address}.ttrpc`,
        ttrpcUid: cfg.ttrpc.uid,
        ttrpcGid: cfg.ttrpc.gid,
        timeouts: cfg.timeouts,
        version: VERSION,
        revision: REVISION,
      },
      disabled: cfg.disabled_plugins,
      required: cfg.required_plugins,
      configFor: (p) => cfg.plugins[pluginKey(p.type, p.id)] ?? p.defaults?.() ?? {},
      configByKey: (k) => cfg.plugins[k],
      log: this.log,
    });

    const server = new H2GrpcServer({
      maxRecvMessageSize: cfg.grpc.max_recv_message_size,
      maxSendMessageSize: cfg.grpc.max_send_message_size,
      onError: (err) => this.log.debug("grpc connection error", { error: err.message }),
      counters: (path, kind) => this.metrics.grpcMethod(path, kind),
    });
    const observe = (path: string, _kind: string, code: number, err?: { message: string }) => {
      if (err) this.log.debug("request failed", { method: path, code, error: err.message });
    };
    for (const l of this.plugins.loaded) {
      if (l.plugin.type !== PluginType.GRPC || l.status.state !== "ok") continue;
      for (const s of (l.instance as GrpcServicePlugin).services) {
        server.addService(s.desc, s.impl as never, observe);
      }
    }
    if (this.reloadSource) {
      const reloader = new ConfigReloader(this.reloadSource, this);
      server.addService(
        ConfigService,
        configService(() => reloader.reload("rpc")),
        observe,
      );
      this.reloader = reloader;
    }
    await this.plugins.serve();
    await server.listen(address);
    secureSocket(address, cfg.grpc.uid, cfg.grpc.gid);
    this.server = server;
    this.metrics.sources = metricsSources(this.plugins);
    this.metrics.setGrpcHistogram(cfg.metrics.grpc_histogram);
    if (cfg.metrics.address) {
      const { serveMetrics } = await import("./http.js");
      this.metricsServer = await serveMetrics(cfg.metrics.address, this.metrics);
      this.log.info("metrics served", { address: cfg.metrics.address });
    }
    if (cfg.debug.address) {
      const { serveDebug } = await import("./http.js");
      this.http.push(await serveDebug(cfg.debug.address, cfg.debug.uid, cfg.debug.gid));
      this.log.info("debug served", { address: cfg.debug.address });
    }
    this.log.info("serving...", { address });
    if (cfg.grpc.tcp_address)
      this.log.warn("grpc.tcp_address is not served yet; only the unix socket is", {
        tcp_address: cfg.grpc.tcp_address,
      });
  }

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      const server = this.server;
      if (server) {
        await server.shutdown(2000);
        try {
          unlinkSync(this.config.grpc.address);
        } catch {
          // already gone
        }
      }
      for (const h of [...this.http, ...(this.metricsServer ? [this.metricsServer] : [])])
        await new Promise((r) => h.close(() => r(undefined)));
      await this.plugins.close();
    })();
    return this.stopping;
  }
}

/** What the scrape-time families read, from the loaded plugins (a disabled one is left out). */
export function metricsSources(plugins: PluginSet): MetricsSources {
  const ok = <T>(type: string, id: string): T | undefined => {
    const l = plugins.find(type, id);
    return l?.status.state === "ok" ? (l.instance as T) : undefined;
  };
  const md = ok<{ db: MetadataDB }>(PluginType.Metadata, "bolt");
  const tasks = ok<TaskManager>(PluginType.RuntimeV2, "task");
  return { ...(md ? { db: md.db } : {}), ...(tasks ? { tasks } : {}) };
}
