// Image plugins, with containerd's types and ids:
//   io.containerd.service.v1.images-service  the namespaced image store over the metadata DB
//   io.containerd.grpc.v1.images             the Images gRPC service

import type { Plugin } from "../base/plugin.js";
import { PluginType, ServiceId } from "../base/plugin-types.js";
import type { Exchange } from "../core/events/exchange.js";
import { ImageStore } from "../core/images/store.js";
import type { LeaseStore } from "../core/leases/store.js";
import { Images } from "../gen/containerd/services/images/v1/images_pb.js";
import { imageItem } from "../services/image-wire.js";
import { imagesService } from "../services/images.js";
import type { Metadata } from "./core.js";
import { type GrpcServicePlugin, registration } from "./grpc.js";

export const imagesServicePlugin: Plugin = {
  type: PluginType.Service,
  id: ServiceId.Images,
  requires: [PluginType.Event, PluginType.Metadata, PluginType.Lease],
  init(ic): ImageStore {
    const md = ic.get<Metadata>(PluginType.Metadata, "bolt");
    const store = new ImageStore(md.db, md.namespaces, ic.get<Exchange>(PluginType.Event), imageItem);
    // A sync delete waits for a collection. The GC plugin (initialised after the services, as
    // it needs them) installs its "collect now and wait" on the lease manager; read it at call
    // time so that it is there once the daemon serves.
    const leases = ic.get<LeaseStore>(PluginType.Lease);
    store.collect = async () => {
      await leases.collect?.();
    };
    return store;
  },
};

export const imagesGrpcPlugin: Plugin = {
  type: PluginType.GRPC,
  id: "images",
  requires: [PluginType.Service],
  init(ic): GrpcServicePlugin {
    const store = ic.get<ImageStore>(PluginType.Service, ServiceId.Images);
    return { services: [registration(Images, imagesService(store))] };
  },
};
