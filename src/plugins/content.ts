// Content plugins, with containerd's types and ids:
//   io.containerd.content.v1.content          the local blob store under <root>/io.containerd.content.v1.content
//   io.containerd.service.v1.content-service  the namespaced store (owned by the metadata plugin)
//   io.containerd.grpc.v1.content             the Content gRPC service

import type { Plugin } from "../base/plugin.js";
import { PluginType, ServiceId } from "../base/plugin-types.js";
import { LocalContentStore } from "../core/content/local.js";
import type { MetadataContentStore } from "../core/content/metadata.js";
import { Content } from "../gen/containerd/services/content/v1/content_pb.js";
import { contentService } from "../services/content.js";
import { type GrpcServicePlugin, registration } from "./grpc.js";

/** What the metadata plugin ("bolt") exposes for content. */
export interface MetadataWithContent {
  content: MetadataContentStore;
}

export const contentPlugin: Plugin = {
  type: PluginType.Content,
  id: "content",
  async init(ic) {
    ic.meta.exports["root"] = ic.root;
    const store = await new LocalContentStore(ic.root, ic.log).init();
    ic.onClose(() => store.close());
    return store;
  },
};

export const contentServicePlugin: Plugin = {
  type: PluginType.Service,
  id: ServiceId.Content,
  requires: [PluginType.Metadata],
  init(ic): MetadataContentStore {
    return ic.get<MetadataWithContent>(PluginType.Metadata, "bolt").content;
  },
};

export const contentGrpcPlugin: Plugin = {
  type: PluginType.GRPC,
  id: "content",
  requires: [PluginType.Service, PluginType.Metadata],
  init(ic): GrpcServicePlugin {
    const store =
      ic.getAll<MetadataContentStore>(PluginType.Service).get(ServiceId.Content) ??
      ic.get<MetadataWithContent>(PluginType.Metadata, "bolt").content;
    return { services: [registration(Content, contentService(store))] };
  },
};
