// Container plugins, with containerd's types and ids:
//   io.containerd.service.v1.containers-service  the namespaced container store over the metadata DB
//   io.containerd.grpc.v1.containers             the Containers gRPC service

import type { Plugin } from "../base/plugin.js";
import { PluginType, ServiceId } from "../base/plugin-types.js";
import { ContainerStore } from "../core/containers/store.js";
import type { Exchange } from "../core/events/exchange.js";
import { Containers } from "../gen/containerd/services/containers/v1/containers_pb.js";
import { containerItem } from "../services/container-wire.js";
import { containersService } from "../services/containers.js";
import type { Metadata } from "./core.js";
import { type GrpcServicePlugin, registration } from "./grpc.js";

export const containersServicePlugin: Plugin = {
  type: PluginType.Service,
  id: ServiceId.Containers,
  requires: [PluginType.Event, PluginType.Metadata],
  init(ic): ContainerStore {
    const md = ic.get<Metadata>(PluginType.Metadata, "bolt");
    return new ContainerStore(md.db, md.namespaces, ic.get<Exchange>(PluginType.Event), containerItem);
  },
};

export const containersGrpcPlugin: Plugin = {
  type: PluginType.GRPC,
  id: "containers",
  requires: [PluginType.Service],
  init(ic): GrpcServicePlugin {
    const store = ic.get<ContainerStore>(PluginType.Service, ServiceId.Containers);
    return { services: [registration(Containers, containersService(store))] };
  },
};
