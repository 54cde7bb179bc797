// io.containerd.grpc.v1.berth-gc: berth's GC tools (berth.gc.v1.GC) on the main gRPC socket, over
// the metadata DB, the content store, the snapshotters and (when loaded) the task manager.
import type { Plugin } from "../base/plugin.js";
import { PluginType, ServiceId } from "../base/plugin-types.js";
import type { GcEnv } from "../core/gc/prune.js";
import type { TaskManager } from "../core/runtime/manager.js";
import type { SnapshotService } from "../core/snapshots/metadata.js";
import { GC } from "../gen/berth/gc/v1/gc_pb.js";
import { berthGcService } from "../services/berth-gc.js";
import type { Metadata } from "./core.js";
import { type GrpcServicePlugin, registration } from "./grpc.js";

export const berthGcPlugin: Plugin = {
  type: PluginType.GRPC,
  id: "berth-gc",
  requires: [PluginType.Metadata, PluginType.Service, PluginType.RuntimeV2],
  init(ic): GrpcServicePlugin {
    const md = ic.get<Metadata>(PluginType.Metadata);
    const env: GcEnv = {
      db: md.db,
      content: md.content,
      root: ic.daemon.root,
      state: ic.daemon.state,
      address: ic.daemon.address,
      log: ic.log,
    };
    // Optional parts: without them the tools skip what they would judge.
    env.snapshots = ic.getAll<SnapshotService>(PluginType.Service).get(ServiceId.Snapshots);
    env.tasks = ic.getAll<TaskManager>(PluginType.RuntimeV2).get("task");
    return { services: [registration(GC, berthGcService(env))] };
  },
};
