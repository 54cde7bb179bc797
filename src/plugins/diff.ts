// Diff plugins, with containerd's types and ids:
//   io.containerd.differ.v1.walking        the walking differ over the namespaced content store
//   io.containerd.service.v1.diff-service  differs in the configured order (`default`)
//   io.containerd.grpc.v1.diff             the Diff gRPC service
import { hostPlatform } from "../base/platforms.js";
import type { Plugin } from "../base/plugin.js";
import { PluginType, ServiceId } from "../base/plugin-types.js";
import { type Differ, DiffService } from "../core/diff/service.js";
import { WalkingDiffer } from "../core/diff/walking.js";
import { Diff } from "../gen/containerd/services/diff/v1/diff_pb.js";
import { diffService } from "../services/diff.js";
import type { Metadata } from "./core.js";
import { type GrpcServicePlugin, registration } from "./grpc.js";

export const differPlugin: Plugin = {
  type: PluginType.Diff,
  id: "walking",
  requires: [PluginType.Metadata],
  init(ic): Differ {
    ic.meta.platforms.push(hostPlatform());
    const md = ic.get<Metadata>(PluginType.Metadata, "bolt");
    return new WalkingDiffer(md.content, ic.log);
  },
};

interface DiffServiceConfig {
  /** Differ ids in order of preference. */
  default: string[];
}

export const diffServicePlugin: Plugin<DiffServiceConfig> = {
  type: PluginType.Service,
  id: ServiceId.Diff,
  requires: [PluginType.Diff],
  defaults: () => ({ default: ["walking"] }),
  init(ic): DiffService {
    const differs = ic.getAll<Differ>(PluginType.Diff);
    const ordered = ic.config.default.map((id) => {
      const d = differs.get(id);
      if (!d) throw new Error(`needed differ not loaded: ${id}`);
      return d;
    });
    return new DiffService(ordered);
  },
};

export const diffGrpcPlugin: Plugin = {
  type: PluginType.GRPC,
  id: "diff",
  requires: [PluginType.Service],
  init(ic): GrpcServicePlugin {
    const svc = ic.get<DiffService>(PluginType.Service, ServiceId.Diff);
    return { services: [registration(Diff, diffService(svc))] };
  },
};
