// The CRI plugin's start, loaded by criPlugin.init (cri.ts) only when the plugin starts: with
// it come the CRI services, the streaming server, CNI and the Kubernetes API's descriptors.
import { mkdirSync } from "node:fs";
import { hostPlatform } from "../base/platforms.js";
import type { InitContext } from "../base/plugin.js";
import { PluginType, ServiceId } from "../base/plugin-types.js";
import type { ContainerStore } from "../core/containers/store.js";
import type { DiffService } from "../core/diff/service.js";
import type { Exchange } from "../core/events/exchange.js";
import type { ImageStore } from "../core/images/store.js";
import type { LeaseStore } from "../core/leases/store.js";
import { criRegistrySettings } from "../core/remotes/cri-registry.js";
import type { TaskManager } from "../core/runtime/manager.js";
import type { SnapshotService } from "../core/snapshots/metadata.js";
import type { CriConfig } from "../cri/config.js";
import { CRI_NAMESPACE, type CriDeps } from "../cri/context.js";
import { createCriImages } from "../cri/images.js";
import { criServices } from "../cri/service.js";
import { startStreamServer } from "../cri/streaming/methods.js";
import type { Tasks } from "../gen/containerd/services/tasks/v1/tasks_pb.js";
import { ImageService, RuntimeService } from "../gen/k8s.io/cri-api/pkg/apis/runtime/v1/api_pb.js";
import type { ServiceImpl } from "../grpc/service.js";
import type { Metadata } from "./core.js";
import { type CriPluginInstance, logUnimplemented } from "./cri.js";
import { applyCriLive, watchCniConfDir } from "./cri-live.js";
import { registration } from "./grpc.js";

export async function initCri(ic: InitContext<CriConfig>): Promise<CriPluginInstance> {
  ic.meta.platforms.push(hostPlatform());
  // The same checks containerd makes before it serves anything: a bad table is this plugin's error.
  const registry = criRegistrySettings(ic.config.registry);
  for (const w of registry.warnings) ic.log.warn(w);
  logUnimplemented(ic.config, ic.log);
  mkdirSync(ic.root, { recursive: true, mode: 0o711 });
  mkdirSync(ic.state, { recursive: true, mode: 0o711 });

  const md = ic.get<Metadata>(PluginType.Metadata, "bolt");
  const snapshots = ic.get<SnapshotService>(PluginType.Service, ServiceId.Snapshots);
  const snapshotter = ic.config.containerd.snapshotter;
  if (!snapshots.names().includes(snapshotter))
    throw new Error(`failed to find snapshotter ${JSON.stringify(snapshotter)}`);
  let podCIDR = () => "";
  const base: Omit<CriDeps, "criImages"> = {
    config: ic.config,
    namespace: CRI_NAMESPACE,
    rootDir: ic.root,
    stateDir: ic.state,
    daemon: {
      root: ic.daemon.root,
      state: ic.daemon.state,
      address: ic.daemon.address,
      ttrpcAddress: ic.daemon.ttrpcAddress,
      version: ic.daemon.version,
    },
    containers: ic.get<ContainerStore>(PluginType.Service, ServiceId.Containers),
    images: ic.get<ImageStore>(PluginType.Service, ServiceId.Images),
    content: md.content,
    snapshots,
    leases: ic.get<LeaseStore>(PluginType.Lease),
    diff: ic.get<DiffService>(PluginType.Service, ServiceId.Diff),
    taskManager: ic.get<TaskManager>(PluginType.RuntimeV2, "task"),
    tasks: ic.get<ServiceImpl<typeof Tasks>>(PluginType.Service, ServiceId.Tasks),
    events: ic.get<Exchange>(PluginType.Event),
    log: ic.log,
    podCIDR: () => podCIDR(),
    onClose: (fn) => ic.onClose(fn),
  };
  const deps: CriDeps = { ...base, criImages: createCriImages(base) };
  const services = criServices(deps);
  podCIDR = services.info.podCIDR;
  // Exec/Attach/PortForward URLs point at it; a port that cannot be bound fails the plugin
  const streams = await startStreamServer(deps);
  watchCniConfDir(deps, (fn) => ic.onClose(fn));
  return {
    services: [registration(RuntimeService, services.runtime), registration(ImageService, services.image)],
    reconfigure: (next) => applyCriLive(deps, streams, next),
  };
}
