// Transfer plugins, with containerd's types and ids:
//   io.containerd.streaming.v1.manager   streams registered by id
//   io.containerd.transfer.v1.local      daemon-side pulls (registry → image store, unpacked)
//   io.containerd.grpc.v1.streaming      the Streaming gRPC service
//   io.containerd.grpc.v1.transfer       the Transfer gRPC service

import type { Logger } from "../base/log.js";
import type { Plugin } from "../base/plugin.js";
import { PluginType, ServiceId } from "../base/plugin-types.js";
import type { DiffService } from "../core/diff/service.js";
import type { ImageStore } from "../core/images/store.js";
import type { LeaseStore } from "../core/leases/store.js";
import { StreamManager } from "../core/pull/streams.js";
import {
  type CriRegistryConfig,
  type CriRegistrySettings,
  criRegistrySettings,
} from "../core/remotes/cri-registry.js";
import type { SnapshotService } from "../core/snapshots/metadata.js";
import { Streaming } from "../gen/containerd/services/streaming/v1/streaming_pb.js";
import { Transfer } from "../gen/containerd/services/transfer/v1/transfer_pb.js";
import { streamingService } from "../services/streaming.js";
import { type LocalTransfer, type LocalTransferConfig, transferService } from "../services/transfer.js";
import type { Metadata } from "./core.js";
import { CRI_PLUGIN_KEY } from "./cri.js";
import { type GrpcServicePlugin, registration } from "./grpc.js";

export const streamingManagerPlugin: Plugin = {
  type: PluginType.Streaming,
  id: "manager",
  init: () => new StreamManager(),
};

export const localTransferPlugin: Plugin<LocalTransferConfig> = {
  type: PluginType.Transfer,
  id: "local",
  requires: [PluginType.Lease, PluginType.Metadata, PluginType.Service],
  defaults: () => ({
    max_concurrent_downloads: 3,
    max_concurrent_uploaded_layers: 3,
    config_path: "",
    default_snapshotter: "overlayfs",
  }),
  init(ic): LocalTransfer {
    const md = ic.get<Metadata>(PluginType.Metadata, "bolt");
    return {
      deps: {
        content: md.content,
        snapshots: ic.get<SnapshotService>(PluginType.Service, ServiceId.Snapshots),
        differ: ic.get<DiffService>(PluginType.Service, ServiceId.Diff),
        leases: ic.get<LeaseStore>(PluginType.Lease),
        images: ic.get<ImageStore>(PluginType.Service, ServiceId.Images),
        log: ic.log,
      },
      config: ic.config,
      criRegistry: criRegistry(ic.configOf(CRI_PLUGIN_KEY), ic.log),
      log: ic.log,
    };
  },
};

/**
 * The CRI section's registry table, for pulls that name no hosts dir. A table containerd would
 * refuse is not used (the CRI plugin reports the error); pulls then see no registry config.
 */
function criRegistry(section: unknown, log: Logger): CriRegistrySettings | undefined {
  const registry = (section as { registry?: CriRegistryConfig } | undefined)?.registry;
  if (!registry) return undefined;
  try {
    return criRegistrySettings(registry);
  } catch (err) {
    log.warn("CRI registry config is not used", { error: (err as Error).message });
    return undefined;
  }
}

export const streamingGrpcPlugin: Plugin = {
  type: PluginType.GRPC,
  id: "streaming",
  requires: [PluginType.Streaming],
  init(ic): GrpcServicePlugin {
    return {
      services: [registration(Streaming, streamingService(ic.get<StreamManager>(PluginType.Streaming)))],
    };
  },
};

export const transferGrpcPlugin: Plugin = {
  type: PluginType.GRPC,
  id: "transfer",
  requires: [PluginType.Transfer, PluginType.Streaming],
  init(ic): GrpcServicePlugin {
    const local = ic.get<LocalTransfer>(PluginType.Transfer, "local");
    const streams = ic.get<StreamManager>(PluginType.Streaming);
    return { services: [registration(Transfer, transferService(local, streams))] };
  },
};

export const transferPlugins: Plugin[] = [
  streamingManagerPlugin,
  localTransferPlugin,
  streamingGrpcPlugin,
  transferGrpcPlugin,
];
