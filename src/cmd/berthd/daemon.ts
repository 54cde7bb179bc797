// The daemon: config → plugins → gRPC server on the unix socket; clean shutdown on signals.
import { mkdirSync, unlinkSync } from "node:fs";
import type { Server as HttpServer } from "node:http";
import type { Logger } from "../../base/log.js";
import { type Plugin, PluginSet, pluginKey } from "../../base/plugin.js";
import { PluginType } from "../../base/plugin-types.js";
import type { Config } from "../../config/config.js";
import { Metrics } from "../../core/metrics.js";
import { H2GrpcServer } from "../../grpc/h2server.js";
import type { GrpcServicePlugin } from "../../plugins/grpc.js";
import { REVISION, VERSION } from "../../version.js";
import { serveDebug, serveMetrics } from "./http.js";
import { applyOomScore } from "./oom.js";
import { prepareSocketPath, secureSocket } from "./socket.js";

export class Daemon {
  readonly plugins = new PluginSet();
  private server: H2GrpcServer | undefined;
  private http: HttpServer[] = [];
  readonly metrics = new Metrics();
  private stopping: Promise<void> | undefined;

  constructor(
    readonly config: Config,
    private readonly registered: Plugin[],
    readonly log: Logger,
  ) {}

  async start(): Promise<void> {
    const cfg = this.config;
    applyOomScore(cfg.oom_score, this.log);
    mkdirSync(cfg.root, { recursive: true, mode: 0o711 });
    mkdirSync(cfg.state, { recursive: true, mode: 0o711 });
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
    });
    const observe = (path: string, kind: string, code: number, err?: { message: string }) => {
      this.metrics.grpcHandled(path, kind, code);
      if (err) this.log.debug("request failed", { method: path, code, error: err.message });
    };
    for (const l of this.plugins.loaded) {
      if (l.plugin.type !== PluginType.GRPC || l.status.state !== "ok") continue;
      for (const s of (l.instance as GrpcServicePlugin).services) {
        server.addService(s.desc, s.impl as never, observe);
      }
    }
    await this.plugins.serve();
    await server.listen(address);
    secureSocket(address, cfg.grpc.uid, cfg.grpc.gid);
    this.server = server;
    if (cfg.metrics.address) {
      this.http.push(await serveMetrics(cfg.metrics.address, this.metrics));
      this.log.info("metrics served", { address: cfg.metrics.address });
    }
    if (cfg.debug.address) {
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
      for (const h of this.http) await new Promise((r) => h.close(() => r(undefined)));
      await this.plugins.close();
    })();
    return this.stopping;
  }
}
