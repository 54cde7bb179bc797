// Runtime and task plugins, with containerd's types and ids:
//   io.containerd.runtime.v2.task          the shim manager (bundles under <state>/…/<ns>/<id>)
//   io.containerd.service.v1.tasks-service the task service over it and the container store
//   io.containerd.grpc.v1.tasks            the Tasks gRPC service
// The runtime plugin also makes berthd a child subreaper (daemonized shims are reparented here)
// and serves containerd.services.events.ttrpc.v1.Events on `<address>.ttrpc`, where the shims
// forward their task events.
import { existsSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseDuration } from "../base/duration.js";
import { errFailedPrecondition } from "../base/errdefs.js";
import type { Plugin } from "../base/plugin.js";
import { PluginType, ServiceId } from "../base/plugin-types.js";
import type { ContainerStore } from "../core/containers/store.js";
import type { Exchange } from "../core/events/exchange.js";
import { shimEventsServer } from "../core/runtime/events.js";
import { DEFAULT_SHIM_TIMEOUTS, type ShimTimeouts, TaskManager } from "../core/runtime/manager.js";
import { Tasks } from "../gen/containerd/services/tasks/v1/tasks_pb.js";
import { tasksService } from "../services/tasks.js";
import { setChildSubreaper } from "../sys/reaper.js";
import { prepareSocketPath, secureSocket } from "../sys/socket.js";
import { type GrpcServicePlugin, registration } from "./grpc.js";

/**
 * bin/berth-publish.js: what shims get as -publish-binary. Found upwards from this module, which
 * runs from dist/src/plugins or from the bundle in dist/bundle.
 */
export const PUBLISH_BINARY = ((): string => {
  const here = dirname(fileURLToPath(import.meta.url));
  for (let dir = here; ; dir = dirname(dir)) {
    const p = join(dir, "bin", "berth-publish.js");
    if (existsSync(p)) return p;
    if (dirname(dir) === dir) return join(here, "../../../bin/berth-publish.js");
  }
})();

/** The shim timeouts from `[timeouts]`; a key that is missing or unreadable keeps its default. */
export function shimTimeouts(table: Record<string, string> = {}): ShimTimeouts {
  const ms = (key: string, dflt: number) => {
    const v = table[key];
    if (v === undefined) return dflt;
    try {
      return Math.max(0, parseDuration(String(v)));
    } catch {
      return dflt;
    }
  };
  const d = DEFAULT_SHIM_TIMEOUTS;
  return {
    load: ms("io.containerd.timeout.shim.load", d.load),
    cleanup: ms("io.containerd.timeout.shim.cleanup", d.cleanup),
    shutdown: ms("io.containerd.timeout.shim.shutdown", d.shutdown),
    call: ms("berth.timeout.shim.call", d.call),
  };
}

export const runtimeV2Plugin: Plugin = {
  type: PluginType.RuntimeV2,
  id: "task",
  requires: [PluginType.Event, PluginType.Metadata],
  async init(ic): Promise<TaskManager> {
    const events = ic.get<Exchange>(PluginType.Event);
    try {
      setChildSubreaper(true);
    } catch (err) {
      ic.log.warn("cannot become a child subreaper; exited shims may stay zombies", {
        error: (err as Error).message,
      });
    }
    mkdirSync(ic.state, { recursive: true, mode: 0o711 });
    mkdirSync(ic.root, { recursive: true, mode: 0o711 });

    const server = shimEventsServer(events, ic.log);
    const ttrpcPath = ic.daemon.ttrpcAddress.replace(/^unix:\/\//, "");
    // Shims forward events here. Opened with the gRPC socket, once tasks are loaded and events
    // have subscribers to reach: a shim's publisher retries meanwhile, as with containerd. The
    // socket gets the gRPC socket's treatment (0660, `[ttrpc] uid/gid`): whoever can connect can
    // publish a /tasks/exit that every subscriber believes.
    ic.onServe(async () => {
      await prepareSocketPath(ttrpcPath);
      await server.listen(ttrpcPath);
      secureSocket(ttrpcPath, ic.daemon.ttrpcUid ?? 0, ic.daemon.ttrpcGid ?? 0);
    });

    const manager = new TaskManager(
      ic.state,
      ic.root,
      {
        address: ic.daemon.address.replace(/^unix:\/\//, ""),
        ttrpcAddress: ttrpcPath,
        publishBinary: PUBLISH_BINARY,
        debug: ic.log.enabled("debug"),
        log: ic.log,
        spawned: new Set(),
      },
      events,
      ic.log,
      shimTimeouts(ic.daemon.timeouts),
    );
    manager.startReaper();
    ic.onClose(async () => {
      await manager.close();
      await server.close();
    });
    return manager;
  },
};

export const tasksServicePlugin: Plugin = {
  type: PluginType.Service,
  id: ServiceId.Tasks,
  requires: [PluginType.RuntimeV2, PluginType.Service, PluginType.Metadata, PluginType.Event],
  async init(ic) {
    const manager = ic.get<TaskManager>(PluginType.RuntimeV2, "task");
    const containers = ic.get<ContainerStore>(PluginType.Service, ServiceId.Containers);
    await manager.loadExisting((ns, id) => {
      try {
        containers.get(ns, id);
        return true;
      } catch {
        return false;
      }
    });
    containers.beforeDelete = (ns, id) => {
      if (manager.has(ns, id))
        throw errFailedPrecondition(`cannot delete container ${JSON.stringify(id)}: it has a task`);
    };
    return tasksService(containers, manager, ic.log);
  },
};

export const tasksGrpcPlugin: Plugin = {
  type: PluginType.GRPC,
  id: "tasks",
  requires: [PluginType.Service],
  init(ic): GrpcServicePlugin {
    const impl = ic.get<ReturnType<typeof tasksService>>(PluginType.Service, ServiceId.Tasks);
    return { services: [registration(Tasks, impl)] };
  },
};

export const taskPlugins: Plugin[] = [runtimeV2Plugin, tasksServicePlugin, tasksGrpcPlugin];
